"""No silent wrong answers: evaluation and prediction refuse missing or partial weights, and the
command line refuses what it cannot mean."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from assigndet.checkpoint import DetectionCheckpointer
from assigndet.engine import DefaultPredictor, default_argument_parser
from assigndet.engine.defaults import IncompleteWeightsError, load_inference_weights
from assigndet.modeling import build_model
from assigndet.utils.testing import tiny_dense_detector_cfg

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cfg(tmp_path, weights: str = "", num_classes: int = 3):
    cfg = tiny_dense_detector_cfg(num_classes=num_classes)
    cfg.MODEL.WEIGHTS = weights
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    return cfg


def _save(model: nn.Module, path) -> str:
    torch.save({"model": model.state_dict()}, path)
    return str(path)


def test_no_weights_is_refused(tmp_path):
    cfg = _cfg(tmp_path)
    with pytest.raises(IncompleteWeightsError) as e:
        load_inference_weights(cfg, build_model(cfg))
    assert str(e.value) == (
        "No weights to evaluate: MODEL.WEIGHTS is empty. Set MODEL.WEIGHTS path/to/model.pth, "
        "or MODEL.WEIGHTS_ALLOW_PARTIAL True to evaluate the model's random initialisation"
    )
    with pytest.raises(IncompleteWeightsError, match=f"and {cfg.OUTPUT_DIR} has no last_check"):
        load_inference_weights(cfg, build_model(cfg), resume=True)
    cfg.MODEL.WEIGHTS_ALLOW_PARTIAL = True
    load_inference_weights(cfg, build_model(cfg))


def test_weights_of_another_model_list_the_keys(tmp_path):
    other = _save(nn.Sequential(nn.Linear(2, 2)), tmp_path / "other.pth")
    cfg = _cfg(tmp_path, other)
    with pytest.raises(IncompleteWeightsError) as e:
        load_inference_weights(cfg, build_model(cfg))
    message = str(e.value)
    assert message.startswith(
        f"The weights in {other} do not fit the model (FCOS), so part of it would be evaluated "
        "at its random initialisation:\n"
    )
    assert "missing in checkpoint" in message and "head.cls_logits" in message
    assert "unused from checkpoint" in message and "0.{bias, weight}" in message
    assert message.endswith(
        "Use weights trained with this config, or set MODEL.WEIGHTS_ALLOW_PARTIAL True to "
        "evaluate anyway"
    )


def test_shape_mismatch_is_refused_unless_allowed(tmp_path):
    five = _save(build_model(_cfg(tmp_path, num_classes=5)), tmp_path / "five.pth")
    cfg = _cfg(tmp_path, five)
    with pytest.raises(IncompleteWeightsError) as e:
        load_inference_weights(cfg, build_model(cfg))
    assert "shape mismatch (not loaded)" in str(e.value)
    assert "head.cls_logits.weight" in str(e.value) and "(5, 32, 3, 3)" in str(e.value)
    cfg.MODEL.WEIGHTS_ALLOW_PARTIAL = True
    checkpointer = load_inference_weights(cfg, build_model(cfg))
    assert checkpointer.incompatible_keys.incorrect_shapes


def test_complete_weights_load(tmp_path):
    model = build_model(_cfg(tmp_path))
    cfg = _cfg(tmp_path, _save(model, tmp_path / "model.pth"))
    loaded = build_model(cfg)
    load_inference_weights(cfg, loaded)
    for a, b in zip(loaded.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)


def test_default_predictor_takes_a_model_or_refuses_empty_weights(tmp_path):
    cfg = _cfg(tmp_path)
    with pytest.raises(IncompleteWeightsError, match="MODEL.WEIGHTS is empty"):
        DefaultPredictor(cfg)
    model = build_model(cfg).train()
    with torch.no_grad():
        model.head.cls_logits.bias.fill_(5.0)  # every location scores high
    predictor = DefaultPredictor(cfg, model=model)
    assert predictor.model is model and not model.training
    image = np.random.RandomState(0).randint(0, 255, (48, 64, 3), dtype=np.uint8)
    assert len(predictor(image)["instances"]) > 0
    DetectionCheckpointer(model, str(tmp_path)).save("scored")
    cfg.MODEL.WEIGHTS = str(tmp_path / "scored.pth")
    assert len(DefaultPredictor(cfg)(image)["instances"]) == len(predictor(image)["instances"])


def test_eval_only_without_weights_fails(tmp_path):
    env = dict(os.environ, ASSIGNDET_DATASETS=str(tmp_path / "datasets"))
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "train_net.py"), "--config-file",
         os.path.join(REPO_ROOT, "configs/quickstart/fcos_shapes.yaml"), "--eval-only",
         "OUTPUT_DIR", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, cwd=str(tmp_path), env=env,
    )
    assert proc.returncode != 0
    assert "IncompleteWeightsError: No weights to evaluate: MODEL.WEIGHTS is empty" in proc.stderr
    assert "copypaste" not in proc.stdout + proc.stderr  # no AP was reported


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--num-gpus", "0"], "argument --num-gpus: --num-gpus must be at least 1, got 0"),
        (["--num-machines", "-2"], "--num-machines must be at least 1, got -2"),
        (["--config-file", "a.yaml", "SOLVER.BASE_LR", "0.1", "--resume"],
         "--resume comes after the KEY VALUE config overrides, where it would be read as a "
         "config key; put every flag before the first KEY"),
        (["SOLVER.BASE_LR", "0.1", "--num-gpus=2"], "--num-gpus=2 comes after the KEY VALUE"),
    ],
)
def test_command_line_mistakes(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        default_argument_parser().parse_args(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err
