"""Weights files never run code: crafted pickles are refused by the .pkl and .pth loaders."""

import io
import os
import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch

from assigndet.checkpoint import DetectionCheckpointer, UnsafeCheckpointError, load_pkl


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _OpensFile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


PAYLOADS = [(_RunsShell, r"'(posix|nt|os)\.system'"), (_OpensFile, r"'(io|builtins)\.open'")]


@pytest.mark.parametrize("payload, refused_name", PAYLOADS)
@pytest.mark.parametrize("layout", ["zoo", "caffe2"])
def test_pkl_with_code_is_refused(tmp_path, make_resnet, payload, refused_name, layout):
    marker = tmp_path / "marker"
    weights = {"stem.conv1.weight": np.zeros(3, np.float32), "evil": payload(str(marker))}
    data = {"model": weights, "__author__": "someone"} if layout == "zoo" else {"blobs": weights}
    path = tmp_path / "weights.pkl"
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=2)
    with pytest.raises(UnsafeCheckpointError, match=f"refusing to unpickle {refused_name}"):
        DetectionCheckpointer(make_resnet()).load(str(path))
    assert not marker.exists()


@pytest.mark.parametrize("payload, refused_name", PAYLOADS)
def test_pth_with_code_is_refused(tmp_path, make_resnet, payload, refused_name):
    marker = tmp_path / "marker"
    model = make_resnet()
    path = tmp_path / "model_final.pth"
    torch.save({"model": model.state_dict(), "extra": payload(str(marker))}, path)
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpointError, match="refusing to load .*model_final.pth.*GLOBAL"):
        DetectionCheckpointer(make_resnet()).load(str(path))
    assert not marker.exists()


def test_legacy_pth_with_code_is_refused(tmp_path, make_resnet):
    marker = tmp_path / "marker"
    path = tmp_path / "old.pth"
    torch.save(
        {"model": {}, "x": _RunsShell(str(marker))}, path, _use_new_zipfile_serialization=False
    )
    with pytest.raises(UnsafeCheckpointError, match="refusing to load"):
        DetectionCheckpointer(make_resnet()).load(str(path))
    assert not marker.exists()


def test_restricted_unpickler_refuses_other_globals():
    with pytest.raises(UnsafeCheckpointError, match="refusing to unpickle 'collections.Counter'"):
        load_pkl(pickle.dumps({"a": __import__("collections").Counter()}))
    with pytest.raises(UnsafeCheckpointError, match="_codecs.encode with encoding 'rot13'"):
        # A hand-built protocol-2 pickle calling _codecs.encode("x", "rot13").
        load_pkl(b"\x80\x02c_codecs\nencode\nq\x00X\x01\x00\x00\x00xX\x05\x00\x00\x00rot13\x86R.")


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_numpy_weights_roundtrip(protocol):
    data = {
        "model": OrderedDict(
            w=np.random.rand(2, 3).astype(np.float32),
            d=np.arange(4, dtype=np.float64),
            i=np.arange(3, dtype=np.int64),
            s=np.float32(2.5),
            e=np.zeros((0, 5), np.float32),
        ),
        "__author__": "Detectron2 Model Zoo",
        "bytes": b"\x00\xff",
    }
    loaded = load_pkl(io.BytesIO(pickle.dumps(data, protocol=protocol)))
    assert loaded["__author__"] == "Detectron2 Model Zoo" and loaded["bytes"] == b"\x00\xff"
    for key, value in data["model"].items():
        assert (
            np.array_equal(loaded["model"][key], value)
            and loaded["model"][key].dtype == value.dtype
        )
    assert isinstance(loaded["model"], OrderedDict)
