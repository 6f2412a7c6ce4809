"""Weights files that are no checkpoint, resuming past a corrupt one, and interrupted saves."""

from __future__ import annotations

import logging
import os
import pickle

import pytest
import torch
from torch import nn

from assigndet.checkpoint import DetectionCheckpointer, UnreadableCheckpointError


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))


def _saved_pth(path) -> bytes:
    torch.save({"model": _model().state_dict()}, path)
    return path.read_bytes()


@pytest.mark.parametrize(
    "name, content, looks_like",
    [
        ("notes.pth", b"these are not weights\n", "a text file of 22 bytes starting with "
         "'these are not weights'"),
        ("notes.pkl", b"these are not weights\n", "a text file of 22 bytes"),
        ("empty.pth", b"", "an empty file"),
        ("page.pth", b"<!DOCTYPE html><html><body>Not found</body></html>", "an HTML page"),
        ("lfs.pth", b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 10\n",
         "a Git LFS pointer"),
        ("model.h5", b"\x89HDF\r\n\x1a\n" + bytes(64), "an HDF5 file"),
    ],
)
def test_unreadable_weights_name_the_file_and_what_it_looks_like(
    tmp_path, name, content, looks_like
):
    path = tmp_path / name
    path.write_bytes(content)
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UnreadableCheckpointError) as e:
        DetectionCheckpointer(model).load(str(path))
    message = str(e.value)
    assert message.startswith(f"Cannot read weights file '{path}': it is {looks_like}")
    assert "Expected a .pth file written by torch.save or a detectron2 / Caffe2 .pkl" in message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_truncated_files(tmp_path):
    pth = tmp_path / "model.pth"
    data = _saved_pth(pth)
    pth.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableCheckpointError, match=(
        f"'{pth}': it is a zip archive \\(torch.save's format\\) of {len(data) // 2} bytes that "
        "is incomplete or damaged"
    )):
        DetectionCheckpointer(_model()).load(str(pth))
    pkl = tmp_path / "model.pkl"
    blob = pickle.dumps({"model": {"w": 1}}, protocol=2)
    pkl.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(UnreadableCheckpointError, match=(
        f"'{pkl}': it is pickle data \\(protocol 2\\) of {len(blob) // 2} bytes that is "
        "truncated or damaged"
    )):
        DetectionCheckpointer(_model()).load(str(pkl))


def _train_and_save(out_dir, iterations):
    model = _model()
    checkpointer = DetectionCheckpointer(model, str(out_dir))
    for it in iterations:
        with torch.no_grad():
            model[0].weight.fill_(float(it))
        checkpointer.save(f"model_{it:07d}", iteration=it)
        os.utime(out_dir / f"model_{it:07d}.pth", (it, it))  # mtime order = iteration order
    return model


def test_resume_skips_a_corrupt_last_checkpoint(tmp_path, caplog):
    _train_and_save(tmp_path, [9, 19, 29])
    last = tmp_path / "model_0000029.pth"
    last.write_bytes(last.read_bytes()[:100])  # e.g. the disk filled up during the copy
    model = _model(seed=1)
    with caplog.at_level(logging.WARNING):
        extra = DetectionCheckpointer(model, str(tmp_path)).resume_or_load("", resume=True)
    assert extra["iteration"] == 19
    assert torch.all(model[0].weight == 19.0)
    assert f"Cannot resume from {last}: Cannot read weights file" in caplog.text
    assert (
        f"Resuming from {tmp_path / 'model_0000019.pth'}, the newest readable checkpoint, "
        f"instead of {last}" in caplog.text
    )


def test_resume_with_the_last_checkpoint_deleted(tmp_path, caplog):
    _train_and_save(tmp_path, [9, 19])
    (tmp_path / "model_0000019.pth").unlink()
    model = _model(seed=1)
    with caplog.at_level(logging.WARNING):
        extra = DetectionCheckpointer(model, str(tmp_path)).resume_or_load("", resume=True)
    assert extra["iteration"] == 9


def test_resume_with_no_readable_checkpoint_lists_each(tmp_path):
    _train_and_save(tmp_path, [9])
    (tmp_path / "model_0000009.pth").write_text("oops")
    with pytest.raises(UnreadableCheckpointError) as e:
        DetectionCheckpointer(_model(), str(tmp_path)).resume_or_load("", resume=True)
    assert str(e.value).startswith(f"No checkpoint in {tmp_path} can be resumed from:\n")
    assert "model_0000009.pth': it is a text file of 4 bytes" in str(e.value)


def test_resume_without_a_checkpoint_warns(tmp_path, caplog):
    weights = tmp_path / "init.pth"
    _saved_pth(weights)
    checkpointer = DetectionCheckpointer(_model(), str(tmp_path / "run"))
    with caplog.at_level(logging.WARNING):
        assert checkpointer.resume_or_load(str(weights), resume=True) == {}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].getMessage() == (
        f"Asked to resume, but {tmp_path / 'run'} has no last_checkpoint: starting from "
        f"MODEL.WEIGHTS ('{weights}') at iteration 0"
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        checkpointer.resume_or_load(str(weights), resume=False)  # not asked: nothing to warn
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_next_save_removes_files_of_an_interrupted_save(tmp_path):
    _train_and_save(tmp_path, [9])
    stale = [
        tmp_path / ".model_0000019.pth.k2j4x_9a.tmp", tmp_path / ".last_checkpoint.ab12cd34.tmp"
    ]
    for path in stale:
        path.write_bytes(b"partial")
    unrelated = [tmp_path / ".notes.tmp", tmp_path / "model_0000009.pth"]
    unrelated[0].write_text("kept")
    DetectionCheckpointer(_model(), str(tmp_path)).save("model_0000029", iteration=29)
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in unrelated)
    assert sorted(os.listdir(tmp_path)) == [
        ".notes.tmp", "last_checkpoint", "model_0000009.pth", "model_0000029.pth"
    ]
