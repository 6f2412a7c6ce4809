"""What assigndet's trainer does beyond a plain step, for detectron2's ``DefaultTrainer``.

``AssigndetTrainerMixin`` goes before ``DefaultTrainer`` in a trainer's bases:

- ``build_optimizer``: assigndet's (SOLVER.OPTIMIZER, BACKBONE_MULTIPLIER, LR_MULTIPLIER_*, and
  the gradient clipping of ``SOLVER.CLIP_GRADIENTS``);
- ``build_train_loader``: assigndet's loader where the config uses an augmentation detectron2's
  mapper lacks (DETA's ``INPUT.CROP.RESIZE_BEFORE``), otherwise detectron2's;
- ``resume_or_load``: Sampling-Free's prior estimated from the training data before iteration 0
  (MODEL.SAMPLING_FREE.PRIOR_PROB < 0), then MODEL.WEIGHTS, as assigndet's trainer does;
- SOLVER.AMP.PRECISION bfloat16 for detectron2's ``AMPTrainer``.

A model whose config needs one of these refuses to train under a trainer without the mixin.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from detectron2.engine import DefaultTrainer
from detectron2.evaluation import COCOEvaluator
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from assigndet.engine.defaults import amp_dtype

from .datasets import register_in_assigndet
from .registration import check_meta_architecture, declare_assigndet_trainer, uses_resize_crop
from .structures import image_list_from_d2

__all__ = ["AssigndetTrainer", "AssigndetTrainerMixin"]

logger = logging.getLogger(__name__)


class _GeneralizedRCNNPriors:
    """Sampling-Free's prior interface for detectron2's own ``GeneralizedRCNN``: the counts of
    its (assigndet) proposal generator, as assigndet's ``GeneralizedRCNN`` gives them."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def sampling_free_prior_counts(self, batched_inputs: list[dict[str, Any]]) -> dict:
        counts = getattr(self.model.proposal_generator, "sampling_free_prior_counts", None)
        if counts is None:
            return {}
        images = image_list_from_d2(self.model.preprocess_image(batched_inputs))
        return counts(images, [x["instances"].to(self.model.device) for x in batched_inputs])

    def set_sampling_free_prior(self, priors: dict[str, float]) -> None:
        if priors:
            self.model.proposal_generator.set_sampling_free_prior(priors)


class AssigndetTrainerMixin:
    """Put before detectron2's ``DefaultTrainer`` (or a subclass of it) in the bases."""

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        if cfg.SOLVER.AMP.ENABLED and hasattr(self._trainer, "precision"):
            self._trainer.precision = amp_dtype(cfg.SOLVER.AMP.PRECISION)

    @classmethod
    def build_model(cls, cfg) -> nn.Module:
        check_meta_architecture(cfg)
        model = super().build_model(cfg)
        declare_assigndet_trainer(model)
        return model

    @classmethod
    def build_optimizer(cls, cfg, model: nn.Module):
        from assigndet.solver import build_optimizer

        return build_optimizer(cfg, model)

    @classmethod
    def build_train_loader(cls, cfg):
        if not uses_resize_crop(cfg):
            return super().build_train_loader(cfg)
        from assigndet.data import build_detection_train_loader

        logger.info("INPUT.CROP.RESIZE_BEFORE: training with assigndet's loader and mapper")
        register_in_assigndet(cfg.DATASETS.TRAIN)
        return build_detection_train_loader(cfg)

    def resume_or_load(self, resume: bool = True) -> None:
        sf = self.cfg.MODEL.SAMPLING_FREE
        fresh_start = not (resume and self.checkpointer.has_checkpoint())
        if fresh_start and sf.ENABLED and sf.PRIOR_INIT and sf.PRIOR_PROB < 0:
            from assigndet.engine.prior_estimation import estimate_sampling_free_priors

            register_in_assigndet(self.cfg.DATASETS.TRAIN)
            model = self.model
            if isinstance(model, DistributedDataParallel):
                model = model.module
            if not hasattr(model, "sampling_free_prior_counts"):
                model = _GeneralizedRCNNPriors(model)
            estimate_sampling_free_priors(self.cfg, model)
        super().resume_or_load(resume=resume)


class AssigndetTrainer(AssigndetTrainerMixin, DefaultTrainer):
    """detectron2's ``DefaultTrainer`` with the mixin, evaluating with detectron2's
    ``COCOEvaluator`` (writing to OUTPUT_DIR/inference)."""

    @classmethod
    def build_evaluator(cls, cfg, dataset_name: str, output_folder: str | None = None):
        return COCOEvaluator(
            dataset_name, output_dir=output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
        )
