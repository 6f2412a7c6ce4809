"""Sampling-Free's optimal bias initialization, estimated from the training data.

Before the first iteration the trainer maps ``MODEL.SAMPLING_FREE.PRIOR_NUM_IMAGES`` training
images (a seeded sample, with the training augmentations under a seeded RNG) and runs only the
model's label assignment on them: no network. Each sigmoid classifier's prior is the fraction of
its binary outputs that are foreground, summed over all images and ranks
(:func:`~assigndet.modeling.losses.optimal_prior_prob`), and its bias is set to match.

A model takes part through two methods:

- ``sampling_free_prior_counts(batched_inputs) -> {name: (num_foreground, num_samples)}``
  per sigmoid classifier for one batch of training inputs;
- ``set_sampling_free_prior({name: prob})``, which sets those classifiers' biases.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from assigndet.config import CfgNode
from assigndet.data import DatasetMapper, get_detection_dataset_dicts
from assigndet.modeling.losses import optimal_prior_prob
from assigndet.utils import comm

__all__ = ["estimate_sampling_free_priors", "prior_estimation_batches"]

logger = logging.getLogger(__name__)


def prior_estimation_batches(cfg: CfgNode) -> Iterator[list[dict[str, Any]]]:
    """This rank's share of the estimate's training inputs, in batches of the per-rank size.

    The sample is the first ``PRIOR_NUM_IMAGES`` of a permutation of ``DATASETS.TRAIN`` seeded
    by ``SEED`` (0 when negative), cut into batches of ``IMS_PER_BATCH / world size`` images
    (padded together, as in training); batch b goes to rank b mod world size. Image i of the
    sample is mapped with the global numpy RNG seeded by (seed, i) and the RNG is restored
    afterwards, so the estimate depends only on the seed and the per-rank batch size.
    """
    sf = cfg.MODEL.SAMPLING_FREE
    if sf.PRIOR_NUM_IMAGES < 1:
        raise ValueError(
            f"MODEL.SAMPLING_FREE.PRIOR_NUM_IMAGES must be >= 1; got {sf.PRIOR_NUM_IMAGES}"
        )
    dicts = get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
    )
    seed = cfg.SEED if cfg.SEED >= 0 else 0
    order = torch.randperm(len(dicts), generator=torch.Generator().manual_seed(seed))
    sample = order[: sf.PRIOR_NUM_IMAGES].tolist()
    world, rank = comm.get_world_size(), comm.get_rank()
    batch_size = max(cfg.SOLVER.IMS_PER_BATCH // world, 1)
    mapper = DatasetMapper(cfg, True)
    numpy_state = np.random.get_state()
    try:
        for start in range(rank * batch_size, len(sample), world * batch_size):
            batch = []
            for position in range(start, min(start + batch_size, len(sample))):
                np.random.seed((seed * 1_000_003 + position) % 2**32)
                mapped = mapper(dicts[sample[position]])
                if mapped is not None:
                    batch.append(mapped)
            if batch:
                yield batch
    finally:
        np.random.set_state(numpy_state)


@torch.no_grad()
def estimate_sampling_free_priors(cfg: CfgNode, model: nn.Module) -> dict[str, float]:
    """Estimate each sigmoid classifier's prior from the data and set its bias.

    A collective when distributed: every rank must call it.

    Args:
        cfg: the training config (``MODEL.SAMPLING_FREE``, ``DATASETS.TRAIN``, ``SEED``...).
        model: the model (DDP-wrapped or not) with ``sampling_free_prior_counts`` and
            ``set_sampling_free_prior``.

    Returns:
        ``{classifier name: prior}``, as set on the model; empty when the model has none.
    """
    model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    missing = [
        m
        for m in ("sampling_free_prior_counts", "set_sampling_free_prior")
        if not hasattr(model, m)
    ]
    if missing:
        raise TypeError(
            f"MODEL.SAMPLING_FREE.ENABLED with PRIOR_PROB < 0 needs the model to estimate its "
            f"prior, but {type(model).__name__} lacks {missing}; set MODEL.SAMPLING_FREE.PRIOR_PROB"
            " to a constant instead"
        )
    totals: dict[str, list[float]] = {}
    num_images = 0
    for batch in prior_estimation_batches(cfg):
        num_images += len(batch)
        for name, (num_fg, num) in model.sampling_free_prior_counts(batch).items():
            total = totals.setdefault(name, [0.0, 0.0])
            total[0] += float(num_fg)
            total[1] += float(num)
    # every rank takes part, also one whose share of the sample was empty
    summed: dict[str, list[float]] = {}
    for rank_totals in comm.all_gather(totals):
        for name, (num_fg, num) in rank_totals.items():
            total = summed.setdefault(name, [0.0, 0.0])
            total[0] += num_fg
            total[1] += num
    num_images = sum(comm.all_gather(num_images))
    sf = cfg.MODEL.SAMPLING_FREE
    priors = {}
    for name, (num_fg, num) in sorted(summed.items()):
        if num <= 0:
            raise ValueError(
                f"Sampling-Free prior of '{name}': no valid sample in {num_images} images of "
                f"{list(cfg.DATASETS.TRAIN)}"
            )
        priors[name] = optimal_prior_prob(num_fg, num, sf.PRIOR_PROB_MIN, sf.PRIOR_PROB_MAX)
        logger.info(
            "Sampling-Free prior of '%s': %.4g foreground of %.4g samples in %d images -> "
            "prior %.3g (N/N^f = %.4g, bias %.3f)",
            name,
            num_fg,
            num,
            num_images,
            priors[name],
            num / max(num_fg, 1e-12),
            -np.log(1 / priors[name] - 1),
        )
    if not priors:
        logger.warning(
            "Sampling-Free: %s has no sigmoid classifier whose prior can be estimated; its "
            "biases are left as built", type(model).__name__,
        )
    model.set_sampling_free_prior(priors)
    return priors
