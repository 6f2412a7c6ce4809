"""``GeneralizedRCNN``: backbone + proposal generator + RoI heads (detectron2's two-stage model).

State-dict keys: ``backbone.*``, ``proposal_generator.*``, ``roi_heads.*``. ``pixel_mean`` and
``pixel_std`` are non-persistent buffers, so they are not saved (the checkpointer ignores them in
older checkpoints that have them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ...config import CfgNode, configurable
from ...structures import ImageList, Instances
from ..backbone import Backbone, build_backbone
from ..proposal_generator import build_proposal_generator
from ..roi_heads import build_roi_heads
from . import model_io
from .build import META_ARCH_REGISTRY

__all__ = ["GeneralizedRCNN"]


@META_ARCH_REGISTRY.register()
class GeneralizedRCNN(nn.Module):
    """Two-stage detector (``MODEL.META_ARCHITECTURE: "GeneralizedRCNN"``).

    ``forward(batched_inputs)`` takes detectron2's list of dicts: ``"image"`` (uint8
    ``[C, H, W]`` in INPUT.FORMAT), ``"instances"`` (training: ``gt_boxes`` ``[G, 4]``,
    ``gt_classes`` ``[G]``), optional ``"height"``/``"width"`` (output size) and, without a
    proposal generator (MODEL.PROPOSAL_GENERATOR.NAME "PrecomputedProposals"), ``"proposals"``
    (``Instances`` with ``proposal_boxes`` and ``objectness_logits``). Training returns the
    proposal generator's and the RoI heads' losses in one dict; inference returns
    ``[{"instances": Instances(pred_boxes, scores, pred_classes)}]`` at the output size.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        proposal_generator: nn.Module | None,
        roi_heads: nn.Module,
        pixel_mean: list[float],
        pixel_std: list[float],
        input_format: str | None = None,
    ) -> None:
        """
        Args:
            backbone: gives the feature maps.
            proposal_generator: ``(images, features, gt_instances)`` -> ``(proposals, losses)``;
                None reads ``"proposals"`` from the inputs.
            roi_heads: ``(images, features, proposals, targets)`` -> ``(results, losses)``.
            pixel_mean, pixel_std: per-channel normalisation (x - mean) / std.
            input_format: channel order of the input images ("BGR" or "RGB"), informative.
        """
        super().__init__()
        self.backbone = backbone
        self.proposal_generator = proposal_generator
        self.roi_heads = roi_heads
        self.input_format = input_format
        model_io.register_pixel_statistics(self, pixel_mean, pixel_std)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        return {
            "backbone": backbone,
            "proposal_generator": build_proposal_generator(cfg, shapes),
            "roi_heads": build_roi_heads(cfg, shapes),
            "input_format": cfg.INPUT.FORMAT,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def forward(self, batched_inputs: list[dict[str, Any]]):
        """Losses in training (``dict[str, Tensor]``), detections in eval mode."""
        if not self.training:
            return self.inference(batched_inputs)
        images = self.preprocess_image(batched_inputs)
        gt_instances = model_io.gt_instances(batched_inputs, self.device, type(self).__name__)
        features = self.backbone(images.tensor)
        proposals, proposal_losses = self._proposals(batched_inputs, images, features, gt_instances)
        _, detector_losses = self.roi_heads(images, features, proposals, gt_instances)
        losses = {}
        losses.update(detector_losses)
        losses.update(proposal_losses)
        return losses

    def inference(
        self,
        batched_inputs: list[dict[str, Any]],
        detected_instances: list[Instances] | None = None,
        do_postprocess: bool = True,
    ) -> list[dict[str, Instances]] | list[Instances]:
        """Detections of every image.

        Args:
            batched_inputs: as in ``forward``.
            detected_instances: per image, known boxes to run only the non-box branches on
                (``roi_heads.forward_with_given_boxes``) instead of detecting.
            do_postprocess: rescale to each input's ``"height"``/``"width"`` and wrap as
                ``{"instances": ...}``; otherwise return the ``Instances`` at the input size.
        """
        if self.training:
            raise RuntimeError("GeneralizedRCNN.inference needs eval mode (call model.eval())")
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        if detected_instances is None:
            proposals, _ = self._proposals(batched_inputs, images, features, None)
            results, _ = self.roi_heads(images, features, proposals, None)
        else:
            detected_instances = [x.to(self.device) for x in detected_instances]
            results = self.roi_heads.forward_with_given_boxes(features, detected_instances)
        if do_postprocess:
            return self._postprocess(results, batched_inputs, images.image_sizes)
        return results

    def inference_stages(self) -> list[tuple[str, Callable[[Any], Any]]]:
        """Inference as timed stages (``assigndet.evaluation.timing``): ``backbone``
        (preprocessing and backbone), ``first_stage`` (proposals), ``second_stage`` (the RoI
        heads' network: pooling, box heads, every cascade stage, score fusion) and
        ``postprocess`` (score threshold, NMS, top-k, rescaling). Together they give exactly
        :meth:`inference`'s detections."""

        def backbone(batched_inputs: list[dict[str, Any]]):
            images = self.preprocess_image(batched_inputs)
            return batched_inputs, images, self.backbone(images.tensor)

        def first_stage(state):
            batched_inputs, images, features = state
            proposals, _ = self._proposals(batched_inputs, images, features, None)
            return batched_inputs, images, features, proposals

        def second_stage(state):
            batched_inputs, images, features, proposals = state
            box_outputs = self.roi_heads.predict_box_outputs(features, proposals)
            return batched_inputs, images, features, box_outputs

        def postprocess(state):
            batched_inputs, images, features, box_outputs = state
            results = self.roi_heads.detect_from_box_outputs(box_outputs)
            results = self.roi_heads.forward_with_given_boxes(features, results)
            return self._postprocess(results, batched_inputs, images.image_sizes)

        return [
            ("backbone", backbone),
            ("first_stage", first_stage),
            ("second_stage", second_stage),
            ("postprocess", postprocess),
        ]

    def _proposals(
        self,
        batched_inputs: list[dict[str, Any]],
        images: ImageList,
        features: dict[str, torch.Tensor],
        gt_instances: list[Instances] | None,
    ) -> tuple[list[Instances], dict[str, torch.Tensor]]:
        """The first stage's proposals (and losses in training), or precomputed ones."""
        if self.proposal_generator is not None:
            return self.proposal_generator(images, features, gt_instances)
        missing = [i for i, x in enumerate(batched_inputs) if "proposals" not in x]
        if missing:
            raise KeyError(
                f"{type(self).__name__} has no proposal generator, so its inputs need "
                f"'proposals'; inputs {missing} have none"
            )
        return [x["proposals"].to(self.device) for x in batched_inputs], {}

    @torch.no_grad()
    def sampling_free_prior_counts(
        self, batched_inputs: list[dict[str, Any]]
    ) -> dict[str, tuple[Any, Any]]:
        """The Sampling-Free prior counts of the first stage's sigmoid classifiers for a
        training batch (see ``assigndet.engine.prior_estimation``); empty when the proposal
        generator has none. The softmax RoI classifier keeps its zero bias, as the official
        Sampling-Free code."""
        counts = getattr(self.proposal_generator, "sampling_free_prior_counts", None)
        if counts is None:
            return {}
        images = self.preprocess_image(batched_inputs)
        return counts(images, model_io.gt_instances(batched_inputs, self.device, "GeneralizedRCNN"))

    def set_sampling_free_prior(self, priors: dict[str, float]) -> None:
        """Set the biases of the classifiers named in ``priors`` to their prior."""
        if priors:
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

    @staticmethod
    def _postprocess(
        instances: list[Instances],
        batched_inputs: list[dict[str, Any]],
        image_sizes: list[tuple[int, int]],
    ) -> list[dict[str, Instances]]:
        """Rescale each image's detections to its requested output size (height/width)."""
        return model_io.rescale_detections(instances, batched_inputs, image_sizes)
