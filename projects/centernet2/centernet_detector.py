"""CenterNet*: the one-stage CenterNet detector of the CenterNet2 paper (``CenterNetDetector``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from assigndet.config import CfgNode
from assigndet.modeling import META_ARCH_REGISTRY, build_backbone
from assigndet.modeling.meta_arch import model_io
from assigndet.modeling.proposal_generator import build_proposal_generator
from assigndet.structures import ImageList, Instances

__all__ = ["CenterNetDetector"]


@META_ARCH_REGISTRY.register()
class CenterNetDetector(nn.Module):
    """Backbone + a CenterNet proposal generator used as a one-stage detector.

    ``MODEL.PROPOSAL_GENERATOR.NAME`` must be "CenterNet" with ``MODEL.CENTERNET.ONLY_PROPOSAL``
    off. Training returns the CenterNet losses; inference returns
    ``[{"instances": Instances(pred_boxes, scores, pred_classes)}]`` rescaled to each input's
    "height"/"width" (clipped, empty boxes dropped). ``pixel_mean`` / ``pixel_std`` are
    persistent buffers, as in the official class, so its checkpoints carry them.
    """

    def __init__(self, cfg: CfgNode) -> None:
        super().__init__()
        if cfg.MODEL.PROPOSAL_GENERATOR.NAME != "CenterNet":
            raise ValueError(
                "CenterNetDetector runs the CenterNet head: set MODEL.PROPOSAL_GENERATOR.NAME to "
                f"'CenterNet' (got {cfg.MODEL.PROPOSAL_GENERATOR.NAME!r})"
            )
        if cfg.MODEL.CENTERNET.ONLY_PROPOSAL:
            raise ValueError(
                "CenterNetDetector needs class outputs: MODEL.CENTERNET.ONLY_PROPOSAL must be "
                "False (it is the first stage of a two-stage model)"
            )
        # persistent: the official CenterNetDetector's checkpoints hold them
        model_io.register_pixel_statistics(
            self, cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD, persistent=True
        )
        self.backbone = build_backbone(cfg)
        self.proposal_generator = build_proposal_generator(cfg, self.backbone.output_shape())

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def forward(self, batched_inputs: list[dict[str, Any]]):
        if not self.training:
            return self.inference(batched_inputs)
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        gt_instances = model_io.gt_instances(batched_inputs, self.device, type(self).__name__)
        _, losses = self.proposal_generator(images, features, gt_instances)
        return losses

    @torch.no_grad()
    def inference(
        self, batched_inputs: list[dict[str, Any]], do_postprocess: bool = True
    ) -> list[dict[str, Instances]] | list[Instances]:
        """Detections of each input: at its output size in ``{"instances": ...}`` dicts, or the
        raw per-image ``Instances`` at input size when ``do_postprocess`` is False."""
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        results, _ = self.proposal_generator(images, features, None)
        if not do_postprocess:
            return results
        return model_io.rescale_detections(results, batched_inputs, images.image_sizes)

    @torch.no_grad()
    def sampling_free_prior_counts(
        self, batched_inputs: list[dict[str, Any]]
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Sampling-Free prior counts of the heatmaps for a training batch (no network run):
        see ``CenterNet.sampling_free_prior_counts``."""
        images = self.preprocess_image(batched_inputs)
        gt_instances = model_io.gt_instances(batched_inputs, self.device, type(self).__name__)
        return self.proposal_generator.sampling_free_prior_counts(images, gt_instances)

    def set_sampling_free_prior(self, priors: dict[str, float]) -> None:
        """Set the heatmap biases from the estimated priors (see
        ``CenterNet.set_sampling_free_prior``)."""
        self.proposal_generator.set_sampling_free_prior(priors)

    def preprocess_image(self, batched_inputs: list[dict[str, Any]]) -> ImageList:
        """Normalise the images and pad them into one batch (multiples of size_divisibility)."""
        return model_io.batch_images(
            batched_inputs,
            self.pixel_mean,
            self.pixel_std,
            self.backbone.size_divisibility,
            type(self).__name__,
        )
