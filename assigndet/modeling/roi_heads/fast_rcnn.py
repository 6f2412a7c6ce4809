"""The Fast R-CNN predictor (class scores and box deltas per RoI), its losses and inference.

Classes follow detectron2: K foreground classes ``0..K-1`` and background **last** (index K), so
``cls_score`` has K + 1 outputs; ``bbox_pred`` has 4 (class-agnostic) or 4K outputs.

Sampling-Free (``sampling_free``, with the RoI heads' sampler switched off) keeps the
cross-entropy and guides it by the box loss with the official two-stage rule
L_cls <- 2 * stopgrad(L_box / L_cls) * L_cls (no learnable δ).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import (
    complete_box_iou_loss,
    distance_box_iou_loss,
    generalized_box_iou_loss,
)

from ...config import CfgNode, configurable
from ...data.num_classes import checked_num_classes
from ...layers import ShapeSpec, cat
from ...ops import batched_nms
from ...structures import Instances, clip_boxes_
from ...utils.events import current_event_storage
from ..box_regression import Box2BoxTransform
from ..losses.sampling_free import GUIDANCE_MODES, guidance_ratio

__all__ = [
    "BOX_REG_LOSS_TYPES",
    "SF_ROI_CLS_FACTOR",
    "FastRCNNOutputLayers",
    "fast_rcnn_inference",
    "fast_rcnn_inference_single_image",
    "log_sampling_free_stats",
]

# The official two-stage RoI rule scales the guided classification loss to twice the box loss
# (a code comment: parity with the biased-sampling baseline).
SF_ROI_CLS_FACTOR = 2.0

BOX_REG_LOSS_TYPES = ("smooth_l1", "giou", "diou", "ciou")

_IOU_LOSSES = {
    "giou": generalized_box_iou_loss,
    "diou": distance_box_iou_loss,
    "ciou": complete_box_iou_loss,
}


def fast_rcnn_inference(
    boxes: list[Tensor],
    scores: list[Tensor],
    image_shapes: list[tuple[int, int]],
    score_thresh: float,
    nms_thresh: float,
    topk_per_image: int,
) -> tuple[list[Instances], list[Tensor]]:
    """Per-class detections of every image from per-RoI boxes and class probabilities.

    Per image: rows with a non-finite box or score are dropped, the background column is
    dropped, boxes are clipped to the image, (RoI, class) pairs with a score > ``score_thresh``
    are kept, NMS runs per class at ``nms_thresh``, and the ``topk_per_image`` best survive (all
    when < 0).

    Args:
        boxes: per image, ``[R_i, 4K]`` class-specific or ``[R_i, 4]`` class-agnostic boxes.
        scores: per image, ``[R_i, K + 1]`` probabilities, background last.
        image_shapes: per image, ``(height, width)``.
        score_thresh, nms_thresh, topk_per_image: see above.

    Returns:
        ``(instances, kept_indices)``: per image, ``Instances`` with ``pred_boxes`` ``[D, 4]``,
        ``scores`` ``[D]`` and ``pred_classes`` ``[D]`` int64 sorted by decreasing score, and the
        ``[D]`` int64 index of the RoI each detection comes from.
    """
    if not len(boxes) == len(scores) == len(image_shapes):
        raise ValueError(
            f"fast_rcnn_inference needs one entry per image in boxes, scores and image_shapes; "
            f"got {len(boxes)}, {len(scores)} and {len(image_shapes)}"
        )
    results = [
        fast_rcnn_inference_single_image(b, s, shape, score_thresh, nms_thresh, topk_per_image)
        for b, s, shape in zip(boxes, scores, image_shapes)
    ]
    return [r[0] for r in results], [r[1] for r in results]


def fast_rcnn_inference_single_image(
    boxes: Tensor,
    scores: Tensor,
    image_shape: tuple[int, int],
    score_thresh: float,
    nms_thresh: float,
    topk_per_image: int,
) -> tuple[Instances, Tensor]:
    """:func:`fast_rcnn_inference` on one image: ``boxes`` ``[R, 4K or 4]``, ``scores``
    ``[R, K + 1]``."""
    if boxes.dim() != 2 or boxes.shape[1] % 4 != 0 or scores.dim() != 2:
        raise ValueError(
            "fast_rcnn_inference needs boxes [R, 4K] or [R, 4] and scores [R, K + 1]; got "
            f"{tuple(boxes.shape)} and {tuple(scores.shape)}"
        )
    num_reg_classes = boxes.shape[1] // 4
    if len(boxes) != len(scores) or num_reg_classes not in (1, scores.shape[1] - 1):
        raise ValueError(
            f"fast_rcnn_inference: boxes {tuple(boxes.shape)} do not fit scores "
            f"{tuple(scores.shape)} (need the same R and 4 or 4K box columns for K + 1 scores)"
        )
    row_ids = torch.arange(len(boxes), device=boxes.device)
    valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
    if not bool(valid.all()):
        boxes, scores, row_ids = boxes[valid], scores[valid], row_ids[valid]

    scores = scores[:, :-1]
    boxes = clip_boxes_(boxes.reshape(-1, 4).clone(), image_shape)
    boxes = boxes.view(-1, num_reg_classes, 4)

    filter_mask = scores > score_thresh  # [R, K]
    filter_inds = filter_mask.nonzero()  # [M, 2]: (row, class)
    if num_reg_classes == 1:
        boxes = boxes[filter_inds[:, 0], 0]
    else:
        boxes = boxes[filter_mask]
    scores = scores[filter_mask].to(boxes.dtype)

    keep = batched_nms(boxes, scores, filter_inds[:, 1], nms_thresh)
    if topk_per_image >= 0:
        keep = keep[:topk_per_image]
    boxes, scores, filter_inds = boxes[keep], scores[keep], filter_inds[keep]

    result = Instances(image_shape)
    result.pred_boxes = boxes
    result.scores = scores
    result.pred_classes = filter_inds[:, 1]
    return result, row_ids[filter_inds[:, 0]]


def _smooth_l1_sum(input: Tensor, target: Tensor, beta: float) -> Tensor:
    """Summed smooth L1 (Huber / beta); ``beta`` < 1e-5 is plain L1 (fvcore's convention)."""
    diff = torch.abs(input - target)
    if beta < 1e-5:
        return diff.sum()
    return torch.where(diff < beta, 0.5 * diff**2 / beta, diff - 0.5 * beta).sum()


class FastRCNNOutputLayers(nn.Module):
    """Two linear layers on a per-RoI feature: ``cls_score`` (K + 1 logits, background last) and
    ``bbox_pred`` (4 or 4K deltas for ``box2box_transform``).

    Hooks for subclasses (detectron2's names): ``forward``, ``losses``, ``box_reg_loss``,
    ``predict_boxes``, ``predict_probs``, ``inference``; plus ``cls_loss`` (the classification
    term of ``losses``).
    """

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec | int,
        *,
        box2box_transform: Box2BoxTransform,
        num_classes: int,
        test_score_thresh: float = 0.0,
        test_nms_thresh: float = 0.5,
        test_topk_per_image: int = 100,
        cls_agnostic_bbox_reg: bool = False,
        smooth_l1_beta: float = 0.0,
        box_reg_loss_type: str = "smooth_l1",
        loss_weight: float | dict[str, float] = 1.0,
        sampling_free: bool = False,
        sf_guided: bool = True,
        sf_guidance: str = "global",
    ) -> None:
        """
        Args:
            input_shape: shape of the per-RoI feature (flattened if it has height/width), or its
                width as an int.
            box2box_transform: the box coder of ``bbox_pred``.
            num_classes: foreground classes K.
            test_score_thresh: minimum detection score at test time.
            test_nms_thresh: per-class NMS IoU threshold at test time.
            test_topk_per_image: detections kept per image (all when < 0).
            cls_agnostic_bbox_reg: one set of deltas for all classes.
            smooth_l1_beta: smooth L1 transition point; 0 is L1.
            box_reg_loss_type: one of ``BOX_REG_LOSS_TYPES``.
            loss_weight: one weight for all losses, or ``{loss name: weight}`` (others 1).
            sampling_free: Sampling-Free: ``loss_cls`` guided by ``loss_box_reg`` (below).
            sf_guided: with ``sampling_free``, apply the guidance; off, the raw loss is kept.
            sf_guidance: ``"global"`` (losses reduced over ranks) or ``"local"`` (this rank's).
        """
        super().__init__()
        if isinstance(input_shape, int):
            input_shape = ShapeSpec(channels=input_shape)
        if box_reg_loss_type not in BOX_REG_LOSS_TYPES:
            raise ValueError(
                f"MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE must be one of {BOX_REG_LOSS_TYPES}; got "
                f"{box_reg_loss_type!r}"
            )
        if num_classes <= 0:
            raise ValueError(f"MODEL.ROI_HEADS.NUM_CLASSES must be > 0; got {num_classes}")
        self.num_classes = num_classes
        input_size = input_shape.channels * (input_shape.width or 1) * (input_shape.height or 1)
        self.cls_score = nn.Linear(input_size, num_classes + 1)
        num_bbox_reg_classes = 1 if cls_agnostic_bbox_reg else num_classes
        box_dim = len(box2box_transform.weights)
        self.bbox_pred = nn.Linear(input_size, num_bbox_reg_classes * box_dim)

        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        for layer in (self.cls_score, self.bbox_pred):
            nn.init.constant_(layer.bias, 0)

        self.box2box_transform = box2box_transform
        self.smooth_l1_beta = smooth_l1_beta
        self.test_score_thresh = test_score_thresh
        self.test_nms_thresh = test_nms_thresh
        self.test_topk_per_image = test_topk_per_image
        self.box_reg_loss_type = box_reg_loss_type
        if isinstance(loss_weight, (int, float)):
            loss_weight = {"loss_cls": float(loss_weight), "loss_box_reg": float(loss_weight)}
        self.loss_weight = dict(loss_weight)
        if sf_guidance not in GUIDANCE_MODES:
            raise ValueError(
                f"MODEL.SAMPLING_FREE.GUIDANCE must be one of {GUIDANCE_MODES}; got {sf_guidance!r}"
            )
        self.sampling_free = sampling_free
        self.sf_guided = sf_guided
        self.sf_guidance = sf_guidance
        # the last valid guidance ratio (the guard of a batch without foreground); a plain
        # attribute, so every rank keeps its own and checkpoints do not hold it
        self._sf_last_ratio: Tensor | None = None
        self.sampling_free_stats: dict[str, Tensor] = {}

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: ShapeSpec | int) -> dict[str, Any]:
        head = cfg.MODEL.ROI_BOX_HEAD
        sf = cfg.MODEL.SAMPLING_FREE
        score_thresh = cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST
        return {
            "input_shape": input_shape,
            "box2box_transform": Box2BoxTransform(weights=head.BBOX_REG_WEIGHTS),
            "num_classes": checked_num_classes(cfg, "MODEL.ROI_HEADS.NUM_CLASSES"),
            "cls_agnostic_bbox_reg": head.CLS_AGNOSTIC_BBOX_REG,
            "smooth_l1_beta": head.SMOOTH_L1_BETA,
            "test_score_thresh": sf.SCORE_THRESH_TEST if sf.ENABLED else score_thresh,
            "test_nms_thresh": cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST,
            "test_topk_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "box_reg_loss_type": head.BBOX_REG_LOSS_TYPE,
            "loss_weight": {"loss_box_reg": head.BBOX_REG_LOSS_WEIGHT},
            "sampling_free": sf.ENABLED,
            "sf_guided": sf.GUIDED,
            "sf_guidance": sf.GUIDANCE,
        }

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x: ``[R, C]`` or ``[R, C, H, W]`` (flattened) -> (scores ``[R, K + 1]``,
        proposal_deltas ``[R, 4]`` or ``[R, 4K]``)."""
        if x.dim() > 2:
            x = torch.flatten(x, start_dim=1)
        return self.cls_score(x), self.bbox_pred(x)

    # ---- training ----------------------------------------------------------------------------

    def losses(
        self, predictions: tuple[Tensor, Tensor], proposals: list[Instances]
    ) -> dict[str, Tensor]:
        """``{"loss_cls", "loss_box_reg"}`` of the RoIs of all images.

        With ``sampling_free`` (and ``sf_guided``) ``loss_cls`` is
        2 * stopgrad(loss_box_reg / L_cls) * L_cls, so its value is twice the box loss; when that
        ratio is invalid (no foreground: a zero box loss) the last valid ratio, or 1.0, is used.
        The ratio and the raw L_cls are kept in ``sampling_free_stats`` for logging
        (:func:`log_sampling_free_stats`).

        Args:
            predictions: the output of ``forward`` on the RoIs of ``proposals``, concatenated.
            proposals: per image, the RoIs with ``proposal_boxes`` (no gradient), ``gt_classes``
                (background = K) and ``gt_boxes`` (optional for images without ground truth).
        """
        scores, proposal_deltas = predictions
        if len(proposals):
            gt_classes = cat([p.gt_classes for p in proposals], dim=0)
            proposal_boxes = cat([p.proposal_boxes for p in proposals], dim=0)
            if proposal_boxes.requires_grad:
                raise ValueError("FastRCNNOutputLayers.losses: proposal_boxes must be detached")
            gt_boxes = cat(
                [p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes for p in proposals], dim=0
            )
        else:
            gt_classes = torch.empty(0, dtype=torch.int64, device=scores.device)
            proposal_boxes = gt_boxes = torch.empty((0, 4), device=proposal_deltas.device)
        _log_classification_stats(scores, gt_classes, self.num_classes)

        losses = {
            "loss_cls": self.cls_loss(scores, gt_classes),
            "loss_box_reg": self.box_reg_loss(
                proposal_boxes, gt_boxes, proposal_deltas, gt_classes
            ),
        }
        losses = {k: v * self.loss_weight.get(k, 1.0) for k, v in losses.items()}
        if self.sampling_free:
            losses["loss_cls"] = self._guide_cls_loss(losses["loss_cls"], losses["loss_box_reg"])
        return losses

    def _guide_cls_loss(self, cls_loss: Tensor, box_loss: Tensor) -> Tensor:
        """The Sampling-Free RoI classification loss (see :meth:`losses`)."""
        self.sampling_free_stats = {"cls_raw": cls_loss.detach().float()}
        if not self.sf_guided:
            return cls_loss
        ratio = guidance_ratio(
            cls_loss, box_loss, self._sf_last_ratio, across_ranks=self.sf_guidance == "global"
        )
        self._sf_last_ratio = ratio
        self.sampling_free_stats["ratio"] = ratio
        return SF_ROI_CLS_FACTOR * ratio * cls_loss.float()

    def cls_loss(self, scores: Tensor, gt_classes: Tensor) -> Tensor:
        """Softmax cross-entropy over K + 1 classes, averaged over the RoIs (0 with no RoI)."""
        if scores.numel() == 0:
            return scores.sum() * 0.0
        return F.cross_entropy(scores, gt_classes, reduction="mean")

    def box_reg_loss(
        self, proposal_boxes: Tensor, gt_boxes: Tensor, pred_deltas: Tensor, gt_classes: Tensor
    ) -> Tensor:
        """Box loss of the foreground RoIs, summed and divided by the number of all RoIs.

        Args:
            proposal_boxes: ``[R, 4]`` RoIs; gt_boxes: ``[R, 4]`` their matched boxes.
            pred_deltas: ``[R, 4]`` or ``[R, 4K]``; gt_classes: ``[R]`` (background = K).
        """
        box_dim = proposal_boxes.shape[1]
        fg_inds = torch.nonzero((gt_classes >= 0) & (gt_classes < self.num_classes))[:, 0]
        if pred_deltas.shape[1] == box_dim:
            fg_pred_deltas = pred_deltas[fg_inds]
        else:
            fg_pred_deltas = pred_deltas.view(-1, self.num_classes, box_dim)[
                fg_inds, gt_classes[fg_inds]
            ]
        fg_proposals = proposal_boxes[fg_inds]
        fg_gt_boxes = gt_boxes[fg_inds]
        if self.box_reg_loss_type == "smooth_l1":
            gt_deltas = self.box2box_transform.get_deltas(fg_proposals, fg_gt_boxes)
            loss = _smooth_l1_sum(fg_pred_deltas, gt_deltas, self.smooth_l1_beta)
        else:
            fg_pred_boxes = self.box2box_transform.apply_deltas(fg_pred_deltas, fg_proposals)
            loss = _IOU_LOSSES[self.box_reg_loss_type](
                fg_pred_boxes, fg_gt_boxes.to(fg_pred_boxes.dtype), reduction="sum"
            )
        return loss / max(gt_classes.numel(), 1.0)

    # ---- inference ---------------------------------------------------------------------------

    def inference(
        self, predictions: tuple[Tensor, Tensor], proposals: list[Instances]
    ) -> tuple[list[Instances], list[Tensor]]:
        """Detections per image (see :func:`fast_rcnn_inference`) at the proposals' image
        sizes, with this predictor's test thresholds."""
        boxes, scores = self.predict_boxes_and_scores(predictions, proposals)
        return self.detect(boxes, scores, [p.image_size for p in proposals])

    def predict_boxes_and_scores(
        self, predictions: tuple[Tensor, Tensor], proposals: list[Instances]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Per image, the decoded boxes (:meth:`predict_boxes`) and the class probabilities
        (:meth:`predict_probs`) that :meth:`detect` turns into detections."""
        boxes = self.predict_boxes(predictions, proposals)
        return boxes, self.predict_probs(predictions, proposals)

    def detect(
        self, boxes: list[Tensor], scores: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> tuple[list[Instances], list[Tensor]]:
        """:func:`fast_rcnn_inference` with this predictor's test thresholds."""
        return fast_rcnn_inference(
            boxes,
            scores,
            image_sizes,
            self.test_score_thresh,
            self.test_nms_thresh,
            self.test_topk_per_image,
        )

    def predict_boxes(
        self, predictions: tuple[Tensor, Tensor], proposals: list[Instances]
    ) -> list[Tensor]:
        """Per image, the decoded boxes ``[R_i, 4]`` (class-agnostic) or ``[R_i, 4K]``."""
        if not len(proposals):
            return []
        _, proposal_deltas = predictions
        num_per_image = [len(p) for p in proposals]
        proposal_boxes = cat([p.proposal_boxes for p in proposals], dim=0)
        boxes = self.box2box_transform.apply_deltas(proposal_deltas, proposal_boxes)
        return list(boxes.split(num_per_image))

    def predict_probs(
        self, predictions: tuple[Tensor, Tensor], proposals: list[Instances]
    ) -> list[Tensor]:
        """Per image, the softmax class probabilities ``[R_i, K + 1]``, background last."""
        scores, _ = predictions
        num_per_image = [len(p) for p in proposals]
        return list(F.softmax(scores, dim=-1).split(num_per_image, dim=0))


def log_sampling_free_stats(predictor: nn.Module, name: str) -> None:
    """Put a predictor's last Sampling-Free statistics in the current event storage (if any)
    as ``sf_<name>_ratio`` and ``sf_<name>_cls_raw`` (e.g. ``name`` = ``"roi_stage0"``)."""
    storage = current_event_storage()
    stats = getattr(predictor, "sampling_free_stats", None)
    if storage is None or not stats:
        return
    for key, value in stats.items():
        storage.put_scalar(f"sf_{name}_{key}", float(value))


def _log_classification_stats(
    pred_logits: Tensor, gt_classes: Tensor, num_classes: int, prefix: str = "fast_rcnn"
) -> None:
    """Put ``cls_accuracy``, ``fg_cls_accuracy`` and ``false_negative`` in the current event
    storage (if any)."""
    storage = current_event_storage()
    num_instances = gt_classes.numel()
    if storage is None or num_instances == 0:
        return
    pred_classes = pred_logits.detach().argmax(dim=1)
    fg = (gt_classes >= 0) & (gt_classes < num_classes)
    num_fg = int(fg.sum())
    fg_pred = pred_classes[fg]
    num_false_negative = int((fg_pred == num_classes).sum())
    num_accurate = int((pred_classes == gt_classes).sum())
    fg_num_accurate = int((fg_pred == gt_classes[fg]).sum())
    storage.put_scalar(f"{prefix}/cls_accuracy", num_accurate / num_instances)
    if num_fg > 0:
        storage.put_scalar(f"{prefix}/fg_cls_accuracy", fg_num_accurate / num_fg)
        storage.put_scalar(f"{prefix}/false_negative", num_false_negative / num_fg)
