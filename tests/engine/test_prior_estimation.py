"""Sampling-Free's prior estimated from the training data before the first iteration."""

import json
import math
import os

import numpy as np
import pytest
import torch
from toy_detector import register_tiny_shapes

from assigndet.checkpoint import DetectionCheckpointer
from assigndet.engine import DefaultTrainer
from assigndet.engine.prior_estimation import (
    estimate_sampling_free_priors,
    prior_estimation_batches,
)
from assigndet.layers import prior_bias
from assigndet.modeling import build_model
from assigndet.utils import comm
from assigndet.utils.testing import tiny_dense_detector_cfg


def _cfg(train_name, output_dir="", **sf):
    cfg = tiny_dense_detector_cfg("FCOS", num_classes=5)
    cfg.MODEL.WEIGHTS = ""
    cfg.DATASETS.TRAIN = (train_name,)
    cfg.DATASETS.TEST = ()
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.INPUT.MIN_SIZE_TRAIN = (48, 64)
    cfg.INPUT.MAX_SIZE_TRAIN = 96
    cfg.SOLVER.IMS_PER_BATCH = 4
    cfg.SOLVER.MAX_ITER = 1
    cfg.SEED = 3
    cfg.OUTPUT_DIR = output_dir
    cfg.MODEL.SAMPLING_FREE.ENABLED = True
    cfg.MODEL.SAMPLING_FREE.PRIOR_NUM_IMAGES = 6
    for key, value in sf.items():
        setattr(cfg.MODEL.SAMPLING_FREE, key, value)
    return cfg


def _hand_count(cfg, model):
    """Positives and outputs of the estimate's images, from a real forward pass's locations."""
    num_fg = num = 0
    for batch in prior_estimation_batches(cfg):
        locations, cls_logits, *_ = model.predict(model.preprocess_image(batch))
        labels = model.label_locations(locations, model.gt_instances(batch)).labels
        num_fg += int((labels < model.num_classes).sum())
        num += cls_logits.numel()
    return num_fg, num


def test_estimate_matches_the_assignment_and_sets_the_bias(datasets):
    cfg = _cfg(datasets[0])
    model = build_model(cfg).train()
    batches = list(prior_estimation_batches(cfg))
    assert [len(b) for b in batches] == [4, 2]  # 6 images in batches of IMS_PER_BATCH

    state = np.random.get_state()[1].copy()
    priors = estimate_sampling_free_priors(cfg, model)
    assert np.array_equal(np.random.get_state()[1], state)  # the global RNG is left as it was
    num_fg, num = _hand_count(cfg, model)
    assert num_fg > 0
    assert priors == {"cls": pytest.approx(num_fg / num)}
    bias = model.head.cls_logits.bias
    assert torch.allclose(bias, torch.full_like(bias, math.log(num_fg / (num - num_fg))))
    # deterministic: the same images, augmented the same way
    assert estimate_sampling_free_priors(cfg, build_model(cfg).train()) == priors


def test_estimate_is_clamped(datasets):
    cfg = _cfg(datasets[0], PRIOR_PROB_MIN=0.2, PRIOR_PROB_MAX=0.3)
    assert estimate_sampling_free_priors(cfg, build_model(cfg).train()) == {"cls": 0.2}


def test_model_without_the_protocol_is_a_clear_error(datasets):
    cfg = _cfg(datasets[0])
    with pytest.raises(TypeError, match="PRIOR_PROB to a constant"):
        estimate_sampling_free_priors(cfg, torch.nn.Linear(2, 2))
    cfg.MODEL.SAMPLING_FREE.PRIOR_NUM_IMAGES = 0
    with pytest.raises(ValueError, match="PRIOR_NUM_IMAGES must be >= 1"):
        list(prior_estimation_batches(cfg))


def test_trainer_estimates_on_a_fresh_start_but_weights_override(tmp_path, datasets):
    cfg = _cfg(datasets[0], str(tmp_path / "fresh"))
    trainer = DefaultTrainer(cfg)
    trainer.resume_or_load(resume=False)
    expected = estimate_sampling_free_priors(cfg, build_model(cfg).train())["cls"]
    bias = trainer.model.head.cls_logits.bias
    assert torch.allclose(bias, torch.full_like(bias, prior_bias(expected)))

    # a detector checkpoint given as MODEL.WEIGHTS keeps its own classifier bias
    with torch.no_grad():
        trainer.model.head.cls_logits.bias.fill_(-1.5)
    DetectionCheckpointer(trainer.model, str(tmp_path)).save("detector")
    cfg = _cfg(datasets[0], str(tmp_path / "finetune"))
    cfg.MODEL.WEIGHTS = str(tmp_path / "detector.pth")
    finetune = DefaultTrainer(cfg)
    finetune.resume_or_load(resume=False)
    assert torch.all(finetune.model.head.cls_logits.bias == -1.5)


def test_constant_prior_and_plain_ce_skip_the_estimate(tmp_path, datasets):
    for sf, bias in (({"PRIOR_PROB": 1e-3}, prior_bias(1e-3)), ({"PRIOR_INIT": False}, 0.0)):
        trainer = DefaultTrainer(_cfg(datasets[0], str(tmp_path), **sf))
        trainer.resume_or_load(resume=False)
        assert torch.allclose(trainer.model.head.cls_logits.bias, torch.full((5,), bias))


def _two_rank_estimate(root, names, out):
    register_tiny_shapes(root, names)
    cfg = _cfg(names[0])
    cfg.MODEL.SAMPLING_FREE.PRIOR_NUM_IMAGES = 5  # batches of 2: rank 0 gets 2 + 1, rank 1 2
    priors = estimate_sampling_free_priors(cfg, build_model(cfg).train())
    with open(os.path.join(out, f"rank{comm.get_rank()}.json"), "w") as f:
        json.dump(priors, f)


@pytest.mark.slow
def test_two_ranks_estimate_like_one(tmp_path):
    from assigndet.engine import launch

    root = str(tmp_path / "shapes")
    names = ("prior_shapes_train", "prior_shapes_val")
    launch(_two_rank_estimate, 2, dist_url="auto", args=(root, names, str(tmp_path)))
    ranks = [json.load(open(tmp_path / f"rank{r}.json")) for r in range(2)]
    assert ranks[0] == ranks[1]

    # one process with the same per-rank batch size (IMS_PER_BATCH 4 over 2 ranks)
    register_tiny_shapes(root, names)
    cfg = _cfg(names[0])
    cfg.MODEL.SAMPLING_FREE.PRIOR_NUM_IMAGES = 5
    cfg.SOLVER.IMS_PER_BATCH = 2
    one = estimate_sampling_free_priors(cfg, build_model(cfg).train())
    assert ranks[0]["cls"] == pytest.approx(one["cls"])
