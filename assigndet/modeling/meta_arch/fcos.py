"""FCOS: Fully Convolutional One-Stage object detection (Tian et al., ICCV 2019).

The configuration follows the FCOS reference code and the mmdet FCOS that the PSS paper's
baselines ran in: ResNet-FPN P3-P7, GN towers, centerness on the regression tower, centre
sampling, stride-normalised targets, focal + centerness-weighted GIoU + centerness BCE with
normalisers averaged over ranks, and class-aware NMS at test time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ...config import CfgNode, configurable
from ...layers import ShapeSpec, prior_bias
from ...ops import batched_nms
from ...structures import ImageList, Instances, clip_boxes_
from ..assigners.fcos import FCOSTargets, fcos_assign, fcos_size_ranges
from ..backbone import Backbone, build_backbone
from ..box_ops import ltrb_to_boxes
from ..heads.fcos_head import FCOSHead
from ..losses.fcos import fcos_losses
from ..losses.sampling_free import GuidedLossScaling, sampling_free_initial_prior
from . import model_io
from .build import META_ARCH_REGISTRY

__all__ = ["FCOS", "compute_locations", "flatten_levels", "padded_feature_sizes"]


def compute_locations(
    feature_sizes: list[tuple[int, int]], strides: list[int], device: torch.device
) -> list[Tensor]:
    """Image coordinates of every feature-map cell, per level.

    Cell (i, j) of a level with stride S maps to (S * j + S // 2, S * i + S // 2), the centre
    of its S x S receptive patch: the convention of the FCOS reference code and mmdet's
    point generator (detectron2's anchor offset 0.5 gives the same point for even strides).

    Returns:
        L tensors ``[H_l * W_l, 2]`` of (x, y), row-major like a flattened feature map.
    """
    locations = []
    for (height, width), stride in zip(feature_sizes, strides):
        xs = torch.arange(width, dtype=torch.float32, device=device) * stride + stride // 2
        ys = torch.arange(height, dtype=torch.float32, device=device) * stride + stride // 2
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        locations.append(torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1))
    return locations


def padded_feature_sizes(
    image_size: tuple[int, int], strides: list[int]
) -> list[tuple[int, int]]:
    """(H_l, W_l) of each level for a padded batch of ``image_size``, without running the
    backbone: ceil(size / stride), as its stride-2 convolutions give."""
    height, width = image_size
    return [(-(-height // s), -(-width // s)) for s in strides]


def flatten_levels(maps: list[Tensor]) -> Tensor:
    """L maps ``[N, C, H_l, W_l]`` -> ``[N, sum_l H_l * W_l, C]``, levels concatenated."""
    return torch.cat([m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, m.shape[1]) for m in maps], 1)


@META_ARCH_REGISTRY.register()
class FCOS(nn.Module):
    """FCOS meta-architecture (``MODEL.META_ARCHITECTURE: "FCOS"``).

    Input/output follow detectron2: ``forward(batched_inputs)`` takes a list of dicts with
    ``"image"`` (uint8 ``[C, H, W]`` in INPUT.FORMAT), ``"instances"`` (training:
    ``gt_boxes`` ``[G, 4]`` XYXY, ``gt_classes`` ``[G]``) and optional ``"height"``/``"width"``
    (output size). Training returns ``{"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"}``;
    inference returns ``[{"instances": Instances(pred_boxes, scores, pred_classes)}]`` at the
    output size.

    Test-time score: sigma(cls) * sigma(ctr), as mmdet (where the PSS baselines ran); the FCOS
    reference code ranks by its square root, which orders detections identically. Candidates are
    thresholded on sigma(cls) (on the product with ``thresh_with_ctr``), the top
    ``pre_nms_topk`` per level by score go to class-aware NMS, and the best
    ``max_detections_per_image`` are kept.

    Sampling-Free (``MODEL.SAMPLING_FREE.ENABLED``): the focal loss becomes sigmoid CE over all
    locations and classes, guided by the box loss (``loss_fcos_cls`` = g·δ·CE, plus
    ``loss_fcos_delta`` = -log δ); the class bias starts at the data's prior (estimated by the
    trainer through :meth:`sampling_free_prior_counts`); the test threshold is
    ``MODEL.SAMPLING_FREE.SCORE_THRESH_TEST``.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        head: FCOSHead,
        in_features: list[str],
        fpn_strides: list[int],
        num_classes: int,
        pixel_mean: list[float],
        pixel_std: list[float],
        sizes_of_interest: list[float] = (64, 128, 256, 512),
        center_sampling_radius: float = 1.5,
        norm_reg_targets: bool = True,
        focal_loss_alpha: float = 0.25,
        focal_loss_gamma: float = 2.0,
        loc_loss_type: str = "giou",
        score_threshold: float = 0.05,
        thresh_with_ctr: bool = False,
        pre_nms_topk: int = 1000,
        nms_threshold: float = 0.6,
        max_detections_per_image: int = 100,
        sampling_free: bool = False,
        cls_guidance: GuidedLossScaling | None = None,
    ) -> None:
        """
        Args:
            backbone: gives the maps named in ``in_features``.
            head: predicts class, box and centerness maps from them.
            in_features: pyramid levels read, fine to coarse (e.g. p3..p7).
            fpn_strides: stride of each of them.
            num_classes: foreground classes K.
            pixel_mean, pixel_std: per-channel normalisation (x - mean) / std.
            sizes_of_interest: boundaries of the per-level ranges of max(l, t, r, b); L - 1
                values for L levels.
            center_sampling_radius: centre sampling radius in strides; 0 turns it off.
            norm_reg_targets: regression targets are divided by the stride (the head must
                have been built the same way).
            focal_loss_alpha, focal_loss_gamma: focal loss parameters.
            loc_loss_type: "iou", "linear_iou" or "giou".
            score_threshold: minimum candidate score at test time.
            thresh_with_ctr: threshold sigma(cls) * sigma(ctr) instead of sigma(cls).
            pre_nms_topk: candidates kept per level before NMS.
            nms_threshold: IoU threshold of the class-aware NMS.
            max_detections_per_image: detections kept per image after NMS.
            sampling_free: classification by sigmoid CE instead of the focal loss.
            cls_guidance: guided scaling of the CE by the box loss (Sampling-Free); None for
                none (the focal loss, or the plain-CE ablation).
        """
        super().__init__()
        if len(fpn_strides) != len(in_features):
            raise ValueError(
                f"MODEL.FCOS.FPN_STRIDES {list(fpn_strides)} must give one stride per level of "
                f"MODEL.FCOS.IN_FEATURES {list(in_features)}"
            )
        if len(sizes_of_interest) != len(in_features) - 1:
            raise ValueError(
                f"MODEL.FCOS.SIZES_OF_INTEREST {list(sizes_of_interest)} must have one boundary "
                f"fewer than MODEL.FCOS.IN_FEATURES {list(in_features)}"
            )
        if getattr(head, "norm_reg_targets", norm_reg_targets) != norm_reg_targets:
            raise ValueError(
                f"the FCOS head was built with norm_reg_targets={head.norm_reg_targets} but the "
                f"model with norm_reg_targets={norm_reg_targets} (MODEL.FCOS.NORM_REG_TARGETS)"
            )
        self.backbone = backbone
        self.head = head
        self.in_features = list(in_features)
        self.fpn_strides = [int(s) for s in fpn_strides]
        self.num_classes = num_classes
        self.size_ranges = fcos_size_ranges(list(sizes_of_interest))
        self.center_sampling_radius = center_sampling_radius
        self.norm_reg_targets = norm_reg_targets
        self.focal_loss_alpha = focal_loss_alpha
        self.focal_loss_gamma = focal_loss_gamma
        self.loc_loss_type = loc_loss_type
        self.score_threshold = score_threshold
        self.thresh_with_ctr = thresh_with_ctr
        self.pre_nms_topk = pre_nms_topk
        self.nms_threshold = nms_threshold
        self.max_detections_per_image = max_detections_per_image
        if cls_guidance is not None and not sampling_free:
            raise ValueError(
                "FCOS: cls_guidance scales the Sampling-Free CE; it needs sampling_free"
            )
        self.sampling_free = sampling_free
        self.cls_guidance = cls_guidance
        model_io.register_pixel_statistics(self, pixel_mean, pixel_std)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        fcos = cfg.MODEL.FCOS
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        missing = [f for f in fcos.IN_FEATURES if f not in shapes]
        if missing:
            raise ValueError(
                f"MODEL.FCOS.IN_FEATURES {list(fcos.IN_FEATURES)} names {missing}, which backbone "
                f"{cfg.MODEL.BACKBONE.NAME} does not give; it gives {list(shapes)}"
            )
        feature_shapes: list[ShapeSpec] = [shapes[f] for f in fcos.IN_FEATURES]
        strides = [s.stride for s in feature_shapes]
        if list(fcos.FPN_STRIDES) != strides:
            raise ValueError(
                f"MODEL.FCOS.FPN_STRIDES {list(fcos.FPN_STRIDES)} do not match the strides "
                f"{strides} of {list(fcos.IN_FEATURES)} given by the backbone"
            )
        head_args = FCOSHead.from_config(cfg, feature_shapes)
        sf = cfg.MODEL.SAMPLING_FREE
        score_threshold = fcos.INFERENCE_TH_TEST
        if sf.ENABLED:
            head_args["prior_prob"] = sampling_free_initial_prior(cfg, fcos.PRIOR_PROB)
            score_threshold = sf.SCORE_THRESH_TEST
        return {
            "backbone": backbone,
            "head": FCOSHead(**head_args),
            "in_features": fcos.IN_FEATURES,
            "fpn_strides": fcos.FPN_STRIDES,
            "num_classes": head_args["num_classes"],
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "sizes_of_interest": fcos.SIZES_OF_INTEREST,
            "center_sampling_radius": fcos.POS_RADIUS if fcos.CENTER_SAMPLE else 0.0,
            "norm_reg_targets": fcos.NORM_REG_TARGETS,
            "focal_loss_alpha": fcos.LOSS_ALPHA,
            "focal_loss_gamma": fcos.LOSS_GAMMA,
            "loc_loss_type": fcos.LOC_LOSS_TYPE,
            "score_threshold": score_threshold,
            "thresh_with_ctr": fcos.THRESH_WITH_CTR,
            "pre_nms_topk": fcos.PRE_NMS_TOPK_TEST,
            "nms_threshold": fcos.NMS_TH,
            "max_detections_per_image": min(fcos.POST_NMS_TOPK_TEST, cfg.TEST.DETECTIONS_PER_IMAGE),
            "sampling_free": sf.ENABLED,
            "cls_guidance": (
                GuidedLossScaling(cfg, name=cls._loss_prefix())
                if sf.ENABLED and sf.GUIDED
                else None
            ),
        }

    @classmethod
    def _loss_prefix(cls) -> str:
        """The detector's name in its loss keys (``loss_fcos_cls``) and metrics."""
        return "fcos"

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: list[dict[str, Any]]) -> ImageList:
        """Normalise the images and pad them into one batch (multiples of size_divisibility)."""
        return model_io.batch_images(
            batched_inputs,
            self.pixel_mean,
            self.pixel_std,
            self.backbone.size_divisibility,
            type(self).__name__,
        )

    def forward(self, batched_inputs: list[dict[str, Any]]):
        images = self.preprocess_image(batched_inputs)
        predictions = self.predict(images)
        if self.training:
            locations, cls_logits, box_reg, ctr_logits, _ = predictions
            targets = self.label_locations(locations, self.gt_instances(batched_inputs))
            return self.losses(cls_logits, box_reg, ctr_logits, targets)
        return self.postprocess_predictions(predictions, images, batched_inputs)

    def predict(
        self, images: ImageList
    ) -> tuple[list[Tensor], Tensor, Tensor, Tensor, list[Tensor]]:
        """Backbone and head on a batch.

        Returns:
            ``(locations, cls_logits, box_reg, ctr_logits, box_features)``: L tensors
            ``[R_l, 2]``; ``[N, R, K]``, ``[N, R, 4]`` and ``[N, R]`` with all levels
            concatenated (R = sum of R_l); the box tower's L maps ``[N, C, H_l, W_l]``.
        """
        features = self.backbone(images.tensor)
        features = [features[f] for f in self.in_features]
        cls_maps, reg_maps, ctr_maps, box_features = self.head(features)
        locations = compute_locations(
            [f.shape[-2:] for f in features], self.fpn_strides, self.device
        )
        cls_logits = flatten_levels(cls_maps)
        box_reg = flatten_levels(reg_maps)
        ctr_logits = flatten_levels(ctr_maps)[..., 0]
        return locations, cls_logits, box_reg, ctr_logits, box_features

    def inference_stages(self) -> list[tuple[str, Callable[[Any], Any]]]:
        """Inference as timed stages (``assigndet.evaluation.timing``): ``network``
        (preprocessing and :meth:`predict`) and ``postprocess``
        (:meth:`postprocess_predictions`)."""

        def network(batched_inputs: list[dict[str, Any]]):
            images = self.preprocess_image(batched_inputs)
            return self.predict(images), images, batched_inputs

        return [("network", network), ("postprocess", lambda s: self.postprocess_predictions(*s))]

    def gt_instances(self, batched_inputs: list[dict[str, Any]]) -> list[Instances]:
        """The training inputs' ``instances`` on the model's device."""
        return model_io.gt_instances(batched_inputs, self.device, type(self).__name__)

    def postprocess_predictions(
        self,
        predictions: tuple[list[Tensor], Tensor, Tensor, Tensor, Any],
        images: ImageList,
        batched_inputs: list[dict[str, Any]],
    ) -> list[dict[str, Instances]]:
        """Everything inference does after the network: :meth:`inference` (threshold, top-k,
        decoding, NMS) on the output of :meth:`predict`, then :meth:`postprocess`."""
        locations, cls_logits, box_reg, ctr_logits, _ = predictions
        results = self.inference(locations, cls_logits, box_reg, ctr_logits, images)
        return self.postprocess(results, batched_inputs, images)

    @staticmethod
    def postprocess(
        results: list[Instances], batched_inputs: list[dict[str, Any]], images: ImageList
    ) -> list[dict[str, Instances]]:
        """Rescale each image's detections to its requested output size (height/width)."""
        return model_io.rescale_detections(results, batched_inputs, images.image_sizes)

    def _per_location(self, locations: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Concatenated ``[R, 2]`` locations, ``[R]`` strides and ``[R, 2]`` size ranges."""
        points = torch.cat(locations)
        strides = torch.cat(
            [p.new_full((len(p),), float(s)) for p, s in zip(locations, self.fpn_strides)]
        )
        ranges = torch.cat(
            [p.new_tensor(r).expand(len(p), 2) for p, r in zip(locations, self.size_ranges)]
        )
        return points, strides, ranges

    @torch.no_grad()
    def label_locations(
        self, locations: list[Tensor], gt_instances: list[Instances]
    ) -> FCOSTargets:
        """One-to-many targets of every image, stacked: fields ``[N, R]`` / ``[N, R, 4]``."""
        points, strides, ranges = self._per_location(locations)
        per_image = [
            fcos_assign(
                points,
                strides,
                ranges,
                inst.gt_boxes,
                inst.gt_classes,
                self.num_classes,
                self.center_sampling_radius,
                self.norm_reg_targets,
            )
            for inst in gt_instances
        ]
        return FCOSTargets.stack(per_image)

    def losses(
        self, cls_logits: Tensor, box_reg: Tensor, ctr_logits: Tensor, targets: FCOSTargets
    ) -> dict[str, Tensor]:
        """FCOS losses of the batch from ``[N, R, K]``, ``[N, R, 4]``, ``[N, R]`` predictions:
        ``loss_fcos_cls``, ``loss_fcos_loc``, ``loss_fcos_ctr`` (and ``loss_fcos_delta`` with
        Sampling-Free guidance, where the box loss alone guides, as the paper's FCOS)."""
        losses = self.unguided_losses(cls_logits, box_reg, ctr_logits, targets)
        return self.guide_classification(losses)

    def guide_classification(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        """Sampling-Free guided scaling of ``loss_<prefix>_cls`` by ``loss_<prefix>_loc`` (the
        losses as given when there is no guidance)."""
        if self.cls_guidance is None:
            return losses
        prefix = self._loss_prefix()
        return self.cls_guidance.apply_to(
            losses, f"loss_{prefix}_cls", [f"loss_{prefix}_loc"], f"loss_{prefix}_delta"
        )

    def unguided_losses(
        self, cls_logits: Tensor, box_reg: Tensor, ctr_logits: Tensor, targets: FCOSTargets
    ) -> dict[str, Tensor]:
        """:func:`fcos_losses` of the batch, before any Sampling-Free guidance."""
        return fcos_losses(
            cls_logits.reshape(-1, self.num_classes),
            box_reg.reshape(-1, 4),
            ctr_logits.reshape(-1),
            targets.labels.reshape(-1),
            targets.reg_targets.reshape(-1, 4),
            targets.centerness_targets.reshape(-1),
            self.num_classes,
            self.focal_loss_alpha,
            self.focal_loss_gamma,
            self.loc_loss_type,
            cls_loss_type="ce" if self.sampling_free else "focal",
        )

    @torch.no_grad()
    def sampling_free_prior_counts(
        self, batched_inputs: list[dict[str, Any]]
    ) -> dict[str, tuple[Tensor, int]]:
        """Foreground and all binary class outputs of a training batch under this detector's
        assignment, for the Sampling-Free prior (``assigndet.engine.prior_estimation``).

        Only the assignment runs: the locations follow from the padded input size, each level
        being ceil(size / stride) cells as the backbone's stride-2 convolutions give. Every
        location is a sample (none is ignored), with K outputs.

        Returns:
            ``{"cls": (number of positive locations, N x R x K)}``.
        """
        images = self.preprocess_image(batched_inputs)
        sizes = padded_feature_sizes(tuple(images.tensor.shape[-2:]), self.fpn_strides)
        locations = compute_locations(sizes, self.fpn_strides, self.device)
        labels = self.label_locations(locations, self.gt_instances(batched_inputs)).labels
        num_fg = ((labels >= 0) & (labels < self.num_classes)).sum()
        return {"cls": (num_fg, labels.numel() * self.num_classes)}

    def set_sampling_free_prior(self, priors: dict[str, float]) -> None:
        """Set the class bias to the prior ``priors["cls"]``."""
        nn.init.constant_(self.head.cls_logits.bias, prior_bias(priors["cls"]))

    @torch.no_grad()
    def inference(
        self,
        locations: list[Tensor],
        cls_logits: Tensor,
        box_reg: Tensor,
        ctr_logits: Tensor,
        images: ImageList,
    ) -> list[Instances]:
        """Detections of every image at its (unpadded) input size.

        Args:
            locations: L tensors ``[R_l, 2]``.
            cls_logits: ``[N, R, K]``; box_reg: ``[N, R, 4]``; ctr_logits: ``[N, R]``.
            images: the batch, for the input sizes.
        """
        level_sizes = [len(p) for p in locations]
        strides = [float(s) for s in self.fpn_strides]
        results = []
        for i, image_size in enumerate(images.image_sizes):
            boxes, scores, classes = [], [], []
            for points, stride, cls_l, reg_l, ctr_l in zip(
                locations,
                strides,
                cls_logits[i].split(level_sizes),
                box_reg[i].split(level_sizes),
                ctr_logits[i].split(level_sizes),
            ):
                level_boxes, level_scores, level_classes = self._decode_level(
                    points, stride, cls_l, reg_l, ctr_l
                )
                boxes.append(level_boxes)
                scores.append(level_scores)
                classes.append(level_classes)
            boxes = clip_boxes_(torch.cat(boxes), image_size)
            scores, classes = torch.cat(scores), torch.cat(classes)
            keep = batched_nms(boxes, scores, classes, self.nms_threshold)
            keep = keep[: self.max_detections_per_image]
            result = Instances(image_size, pred_boxes=boxes[keep], scores=scores[keep])
            result.pred_classes = classes[keep]
            results.append(result)
        return results

    def _decode_level(
        self, points: Tensor, stride: float, cls_logits: Tensor, box_reg: Tensor, ctr_logits: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Threshold and top-k of one level of one image: ``[M, 4]`` boxes, ``[M]`` scores and
        ``[M]`` classes, M <= pre_nms_topk."""
        cls_prob = cls_logits.float().sigmoid()  # [R_l, K]
        scores = cls_prob * ctr_logits.float().sigmoid()[:, None]
        passed = (scores if self.thresh_with_ctr else cls_prob) > self.score_threshold
        # failing entries get -1 so that top-k never prefers them over a passing one
        ranked = torch.where(passed, scores, torch.full_like(scores, -1.0)).flatten()
        top_scores, top_idxs = ranked.topk(min(self.pre_nms_topk, ranked.numel()))
        keep = top_scores >= 0
        top_scores, top_idxs = top_scores[keep], top_idxs[keep]
        loc_idxs = top_idxs // self.num_classes
        classes = top_idxs % self.num_classes
        ltrb = box_reg[loc_idxs].float()
        if self.norm_reg_targets:
            ltrb = ltrb * stride
        return ltrb_to_boxes(points[loc_idxs], ltrb), top_scores, classes
