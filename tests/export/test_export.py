"""The NMS-free export: ONNX (run by onnxruntime) and TorchScript against export_forward."""

import glob
import importlib.util
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from assigndet.checkpoint import DetectionCheckpointer
from assigndet.config import get_cfg
from assigndet.data import generate_shapes_dataset
from assigndet.export import (
    check_export_size,
    default_export_size,
    export_onnx,
    export_torchscript,
    fit_image,
    size_divisibility,
)
from assigndet.modeling import build_model
from assigndet.utils.testing import tiny_dense_detector_cfg

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HEIGHT, WIDTH = 64, 96
NUM_DETECTIONS = 40
# torch.jit.script / save / load warn that TorchScript is deprecated; it still works in torch 2.x
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*is deprecated:FutureWarning")


def _session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _tiny_cfg(meta_arch="FCOS_PSS", **overrides):
    cfg = tiny_dense_detector_cfg(meta_arch, num_classes=3)
    cfg.INPUT.MIN_SIZE_TEST = HEIGHT
    cfg.INPUT.MAX_SIZE_TEST = WIDTH
    cfg.TEST.DETECTIONS_PER_IMAGE = NUM_DETECTIONS
    cfg.merge_from_list([x for kv in overrides.items() for x in kv])
    return cfg


def _build(meta_arch="FCOS_PSS", **overrides):
    torch.manual_seed(0)
    model = build_model(_tiny_cfg(meta_arch, **overrides))
    # boxes of one stride each way, so that no untrained detection is empty after clipping
    torch.nn.init.constant_(model.head.bbox_pred.bias, 1.0)
    return model.eval()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two generated shapes images (read by cv2, BGR) fitted to the export size: [2, 3, H, W]."""
    root = tmp_path_factory.mktemp("shapes")
    _, image_root = generate_shapes_dataset(
        str(root), "export", 2, seed=0, min_short=64, max_short=64, max_objects=3
    )
    files = sorted(glob.glob(os.path.join(image_root, "*.jpg")))
    assert len(files) == 2
    mean = get_cfg().MODEL.PIXEL_MEAN
    batch = []
    for path in files:
        canvas, (sx, sy) = fit_image(cv2.imread(path, cv2.IMREAD_COLOR), HEIGHT, WIDTH, mean)
        assert canvas.shape == (HEIGHT, WIDTH, 3) and 0 < sx <= 1.5 and 0 < sy <= 1.5
        batch.append(canvas.transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(batch))


def _untied(scores, tol=1e-5):
    """[N, D] True where a score differs from both its neighbours: there the order of the
    detections is the same in any correct top-k. The last one is never trusted (its successor
    outside the top D may tie with it)."""
    gap = np.abs(np.diff(scores, axis=1)) > tol * np.abs(scores[:, 1:]).clip(min=1e-12)
    before = np.concatenate([np.ones_like(gap[:, :1]), gap], axis=1)
    after = np.concatenate([gap, np.zeros_like(gap[:, :1])], axis=1)
    return before & after


def _assert_matches(outputs, expected):
    boxes, scores, classes = (np.asarray(o) for o in outputs)
    ref_boxes, ref_scores, ref_classes = (t.numpy() for t in expected)
    assert boxes.shape == ref_boxes.shape and scores.shape == ref_scores.shape
    assert classes.dtype == np.int64 and classes.shape == ref_classes.shape
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-4, atol=1e-7)
    keep = _untied(ref_scores)
    assert keep.mean() > 0.8
    np.testing.assert_allclose(boxes[keep], ref_boxes[keep], rtol=0, atol=1e-4)
    np.testing.assert_array_equal(classes[keep], ref_classes[keep])


def _expected(model, batch):
    with torch.no_grad():
        return model.export_forward(torch.from_numpy(batch))


@pytest.mark.parametrize("meta_arch", ["FCOS_PSS", "ATSS_PSS"])
def test_onnx_runs_in_onnxruntime_like_pytorch(tmp_path, images, meta_arch):
    model = _build(meta_arch)
    path = str(tmp_path / "model.onnx")
    summary = export_onnx(model, HEIGHT, WIDTH, path)
    assert summary.nms_ops == [] and "NonMaxSuppression" not in summary.op_counts
    assert summary.num_nodes == sum(summary.op_counts.values()) > 0
    assert {"Conv", "TopK", "GatherElements"} <= set(summary.op_counts)
    assert summary.input_shape == ("batch", 3, HEIGHT, WIDTH)

    graph = onnx.load(path).graph
    assert [i.name for i in graph.input] == ["images"]
    assert [o.name for o in graph.output] == ["boxes", "scores", "classes"]
    assert all(n.op_type != "NonMaxSuppression" for n in graph.node)

    session = _session(path)
    for batch in (images, images[1:]):  # 2 images, then 1: the batch size is dynamic
        outputs = session.run(None, {"images": batch})
        assert outputs[0].shape == (len(batch), NUM_DETECTIONS, 4)
        _assert_matches(outputs, _expected(model, batch))
    boxes = outputs[0]
    assert np.all(boxes[..., 2:] > boxes[..., :2])  # non-degenerate after clipping
    assert boxes.min() >= 0 and boxes[..., 0::2].max() <= WIDTH and boxes[..., 1::2].max() <= HEIGHT


def test_torchscript_round_trip(tmp_path, images):
    model = _build()
    path = str(tmp_path / "model.pt")
    summary = export_torchscript(model, HEIGHT, WIDTH, path)
    assert summary.nms_ops == [] and summary.num_nodes > 0
    assert "aten::topk" in summary.op_counts
    loaded = torch.jit.load(path)
    for batch in (images, images[:1]):
        with torch.no_grad():
            outputs = [t.numpy() for t in loaded(torch.from_numpy(batch))]
        _assert_matches(outputs, _expected(model, batch))
    with pytest.raises(torch.jit.Error, match=r"images must be \[N, 3, 64, 96\]"):
        loaded(torch.zeros(1, 3, HEIGHT, HEIGHT))


def test_export_refuses_graphs_with_nms(tmp_path):
    with pytest.raises(ValueError, match="MODEL.META_ARCHITECTURE 'FCOS' has no export_forward"):
        export_onnx(_build("FCOS"), HEIGHT, WIDTH, str(tmp_path / "fcos.onnx"))
    with pytest.raises(ValueError, match="MODEL.PSS.USE_NMS is True"):
        export_torchscript(_build(**{"MODEL.PSS.USE_NMS": True}), HEIGHT, WIDTH,
                           str(tmp_path / "nms.pt"))
    assert not list(tmp_path.iterdir())


def test_export_size_rules():
    assert size_divisibility(_build()) == 32
    assert default_export_size(800, 1333, 32) == (800, 1344)
    assert default_export_size(176, 320, 32) == (192, 320)
    assert default_export_size(100, 90, 1) == (100, 100)
    with pytest.raises(ValueError, match="INPUT.MIN_SIZE_TEST 0"):
        default_export_size(0, 1333, 32)
    check_export_size(64, 96, 32)
    with pytest.raises(ValueError, match="export height 100 is not a positive multiple of the "
                                         r"backbone's size divisibility 32 \(e.g. 128\)"):
        check_export_size(100, 96, 32)
    with pytest.raises(ValueError, match="export width 0"):
        check_export_size(64, 0, 32)


def test_fit_image_keeps_aspect_and_pads():
    image = np.full((30, 60, 3), 200, dtype=np.uint8)
    canvas, (sx, sy) = fit_image(image, 64, 96, (1.0, 2.0, 3.0))
    assert canvas.dtype == np.float32 and canvas.shape == (64, 96, 3)
    assert (sx, sy) == (96 / 60, 48 / 30)
    assert np.all(canvas[:48] == 200)
    assert np.array_equal(canvas[48:].reshape(-1, 3)[0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"\[h, w, 3\]"):
        fit_image(image[..., 0], 64, 96)


def _write_config(tmp_path, meta_arch="FCOS_PSS", **overrides):
    """A tiny config YAML whose MODEL.WEIGHTS is a checkpoint of the same model."""
    cfg = _tiny_cfg(meta_arch, **overrides)
    model = _build(meta_arch, **overrides)
    DetectionCheckpointer(model, str(tmp_path)).save("tiny")
    cfg.MODEL.WEIGHTS = str(tmp_path / "tiny.pth")
    path = tmp_path / f"{meta_arch.lower()}.yaml"
    path.write_text(cfg.dump())
    return str(path), model


def _tool():
    spec = importlib.util.spec_from_file_location("export_tool",
                                                  os.path.join(REPO_ROOT, "tools", "export.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_writes_a_loadable_onnx_file(tmp_path, images):
    config, model = _write_config(tmp_path)
    output = tmp_path / "out" / "fcos_pss.onnx"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "tools", "export.py"), "--config-file", config,
         "--format", "onnx", "--output", str(output)],
        capture_output=True, text=True, timeout=120, cwd=str(tmp_path), env=env,
    )
    assert proc.returncode == 0, proc.stderr
    log = proc.stdout + proc.stderr
    assert "no NonMaxSuppression node" in log and f"at {HEIGHT} x {WIDTH}" in log
    assert output.is_file()
    session = _session(str(output))
    _assert_matches(session.run(None, {"images": images}), _expected(model, images))


def test_cli_torchscript_and_errors(tmp_path, images):
    tool = _tool()
    config, model = _write_config(tmp_path)
    output = tmp_path / "fcos_pss.pt"
    summary = tool.main(["--config-file", config, "--format", "torchscript", "--output",
                         str(output), "--height", "64", "--width", "96"])
    assert summary.format == "torchscript" and output.is_file()
    with torch.no_grad():
        outputs = [t.numpy() for t in torch.jit.load(str(output))(torch.from_numpy(images))]
    _assert_matches(outputs, _expected(model, images))

    args = ["--config-file", config, "--format", "onnx", "--output", str(tmp_path / "x.onnx")]
    with pytest.raises(ValueError, match="export height 100 is not a positive multiple .* 32"):
        tool.main([*args, "--height", "100"])
    with pytest.raises(ValueError, match="MODEL.PSS.USE_NMS is True"):
        tool.main([*args, "MODEL.PSS.USE_NMS", "True"])
    with pytest.raises(ValueError, match="MODEL.META_ARCHITECTURE 'FCOS' has no export_forward"):
        tool.main([*args, "MODEL.META_ARCHITECTURE", "FCOS"])
    missing = str(tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError, match=re.escape(f"{missing} given by MODEL.WEIGHTS")):
        tool.main([*args, "MODEL.WEIGHTS", missing])
    assert not (tmp_path / "x.onnx").exists()
