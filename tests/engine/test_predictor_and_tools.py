import importlib.util
import json
import os

import cv2
import numpy as np
import pytest
import torch
from toy_detector import toy_cfg

from assigndet.checkpoint import DetectionCheckpointer
from assigndet.engine import DefaultPredictor
from assigndet.modeling import build_model

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _tool(name):
    path = os.path.join(REPO_ROOT, "tools", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def trained(tmp_path, datasets):
    """A toy config whose MODEL.WEIGHTS is a saved checkpoint, written as a YAML file."""
    cfg = toy_cfg(str(tmp_path / "out"), *datasets)
    model = build_model(cfg)
    DetectionCheckpointer(model, str(tmp_path)).save("toy")
    cfg.MODEL.WEIGHTS = str(tmp_path / "toy.pth")
    path = tmp_path / "toy.yaml"
    path.write_text(cfg.dump())
    return cfg, str(path), model


def test_default_predictor(trained):
    cfg, _, model = trained
    predictor = DefaultPredictor(cfg)
    for a, b in zip(predictor.model.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    image = np.random.RandomState(0).randint(0, 255, (60, 90, 3), dtype=np.uint8)
    out = predictor(image)
    assert out["instances"].image_size == (60, 90)
    assert len(out["instances"]) == 5
    with pytest.raises(ValueError, match=r"expects an HxWx3 BGR image, got shape \(60, 90\)"):
        predictor(image[:, :, 0])
    cfg = cfg.clone()
    cfg.MODEL.WEIGHTS = "/no/such/weights.pth"
    with pytest.raises(FileNotFoundError, match="/no/such/weights.pth given by MODEL.WEIGHTS"):
        DefaultPredictor(cfg)


def test_demo_writes_drawn_images(tmp_path, trained):
    _, config, _ = trained
    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(2):
        cv2.imwrite(str(images / f"im{i}.jpg"), np.full((50, 70, 3), 40 * i, np.uint8))
    written = _tool("demo").main(
        ["--config-file", config, "--input", str(images / "*.jpg"), "--output",
         str(tmp_path / "demo"), "--confidence-threshold", "0.0"]
    )
    assert [os.path.basename(p) for p in written] == ["im0.png", "im1.png"]
    drawn = cv2.imread(written[0])
    assert drawn.shape == (50, 70, 3) and (drawn != 0).any()  # boxes drawn on a black image
    with pytest.raises(FileNotFoundError, match="matches no file"):
        _tool("demo").main(["--config-file", config, "--input", str(images / "*.png"),
                            "--output", str(tmp_path / "demo")])


def test_visualize_and_plot_metrics(tmp_path, trained):
    _, config, _ = trained
    metrics = tmp_path / "metrics.json"
    metrics.write_text("\n".join(json.dumps(r) for r in [
        {"iteration": 19, "total_loss": 2.0, "loss_cls": 1.5, "lr": 0.1},
        {"iteration": 39, "total_loss": 1.0, "loss_cls": 0.7, "lr": 0.1},
        {"iteration": 40, "bbox/AP": 3.0},
    ]) + "\n")
    written = _tool("visualize").main(
        ["--config-file", config, "--output", str(tmp_path / "vis"), "--num-images", "2",
         "--metrics", str(metrics)]
    )
    assert len(written) == 3 and written[-1].endswith("loss_curves.png")
    picture = cv2.imread(written[0])
    assert picture.shape[1] > 2 * 48  # prediction and ground truth side by side
    assert cv2.imread(written[-1]).shape[:2] == (450, 800)
    out = _tool("plot_metrics").main([str(metrics), "--output", str(tmp_path / "p.png")])
    assert os.path.isfile(out)
    with pytest.raises(ValueError, match="has no requested scalars to plot"):
        _tool("plot_metrics").main([str(metrics), "--keys", "nope"])


def test_benchmark_train_and_eval(trained, capsys):
    _, config, _ = trained
    bench = _tool("benchmark")
    common = ["--config-file", config, "--runs", "2", "--num-iter", "2", "--warmup", "1",
              "--num-batches", "2"]
    result = bench.main(common + ["--task", "train"])
    train = result["train"]
    assert train["runs"] == 2 and 0 < train["min"] <= train["median"] <= train["max"]
    assert result["peak_memory_mb"] > 0
    table = capsys.readouterr().out
    assert "s / iter (train)" in table and "peak RSS" in table
    result = bench.main(common + ["--task", "eval"])
    assert result["task"] == "eval" and result["total"]["median"] > 0
    assert "s / image (total)" in capsys.readouterr().out
    result = bench.main(common + ["--task", "eval", "--input-size", "40", "56"])
    assert result["total"]["median"] > 0


def test_benchmark_against_a_baseline(trained, capsys):
    _, config, _ = trained
    result = _tool("benchmark").main(
        ["--config-file", config, "--baseline-config-file", config, "--task", "eval",
         "--runs", "2", "--num-iter", "2", "--warmup", "1", "--num-batches", "2"]
    )
    assert set(result["ratio"]) == {"total"}  # the toy detector has no network / post split
    for name, ratio in result["ratio"].items():
        expected = result[name]["median"] / result["baseline"][name]["median"]
        assert ratio == pytest.approx(expected) and ratio > 0
    assert "model / baseline" in capsys.readouterr().out
