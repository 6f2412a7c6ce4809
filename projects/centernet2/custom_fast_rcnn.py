"""The RoI predictor of CenterNet2: Fast R-CNN with optional sigmoid cross-entropy, federated
loss, and the probabilistic score sqrt(P(class | object) * first-stage score) at test time."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from assigndet.config import CfgNode, configurable
from assigndet.layers import ShapeSpec, prior_bias
from assigndet.modeling.losses.sampling_free import sampling_free_initial_prior
from assigndet.modeling.losses.sampling_free import sigmoid_ce_loss as exact_sigmoid_ce_sum
from assigndet.modeling.roi_heads import FastRCNNOutputLayers
from assigndet.structures import Instances

from .fed_loss import fed_loss_classes, load_class_freq

__all__ = ["CustomFastRCNNOutputLayers", "multiply_proposal_scores", "sigmoid_ce_loss"]


def multiply_proposal_scores(scores: list[Tensor], proposals: list[Instances]) -> list[Tensor]:
    """CenterNet2's test-time score: ``sqrt(p * q)`` per image, with p the ``[R_i, K + 1]``
    class probabilities and q the proposals' first-stage score ``objectness_logits`` ``[R_i]``
    (which CenterNet fills with sqrt(sigmoid(heatmap)), so the result is p^1/2 * sigmoid^1/4)."""
    return [
        (s * p.objectness_logits[:, None]).sqrt() for s, p in zip(scores, proposals, strict=True)
    ]


def sigmoid_ce_loss(
    logits: Tensor, gt_classes: Tensor, class_subset: Tensor | None = None
) -> Tensor:
    """Binary cross-entropy of the K foreground logits against one-hot labels, summed and
    divided by the number of RoIs; background RoIs (label K) have all-zero targets.

    Args:
        logits: ``[R, K + 1]``; the last (background) column is not used.
        gt_classes: ``[R]`` int64 in ``[0, K]``.
        class_subset: federated loss: only these class indices (background ignored) count.
    """
    num_rois, num_classes = logits.shape[0], logits.shape[1] - 1
    if num_rois == 0:
        return logits.sum() * 0.0
    targets = F.one_hot(gt_classes, num_classes + 1)[:, :num_classes].to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits[:, :-1], targets, reduction="none")
    if class_subset is not None:
        mask = torch.zeros(num_classes + 1, dtype=loss.dtype, device=loss.device)
        mask[class_subset] = 1.0
        loss = loss * mask[:num_classes]
    return loss.sum() / num_rois


def _exact_sigmoid_ce(
    logits: Tensor, gt_classes: Tensor, class_subset: Tensor | None = None
) -> Tensor:
    """:func:`sigmoid_ce_loss` computed by the float32 Sampling-Free sum (accurate for confident
    negatives), divided by the number of RoIs."""
    num_rois, num_classes = logits.shape[0], logits.shape[1] - 1
    if num_rois == 0:
        return logits.sum() * 0.0
    targets = F.one_hot(gt_classes, num_classes + 1)[:, :num_classes]
    valid = None
    if class_subset is not None:
        columns = torch.zeros(num_classes + 1, dtype=torch.bool, device=logits.device)
        columns[class_subset] = True
        valid = columns[:num_classes].expand(num_rois, num_classes)
    return exact_sigmoid_ce_sum(logits[:, :-1], targets.to(logits.dtype), valid) / num_rois


class CustomFastRCNNOutputLayers(FastRCNNOutputLayers):
    """``FastRCNNOutputLayers`` with the ``MODEL.ROI_BOX_HEAD`` options of CenterNet2:
    ``USE_SIGMOID_CE`` (sigmoid probabilities, class bias from ``PRIOR_PROB``), ``USE_FED_LOSS``
    (with ``FED_LOSS_NUM_CAT``, ``FED_LOSS_FREQ_WEIGHT`` and ``CAT_FREQ_PATH``; the sampling
    weights are the buffer ``freq_weight``) and ``MULT_PROPOSAL_SCORE``.

    With Sampling-Free and ``USE_SIGMOID_CE`` the sigmoid loss is the float32
    ``assigndet.modeling.losses.sigmoid_ce_loss`` (summed, / number of RoIs), and the class bias
    starts at the Sampling-Free prior (``sampling_free_initial_prior``)."""

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec | int,
        *,
        use_sigmoid_ce: bool = False,
        prior_prob: float = 0.01,
        use_fed_loss: bool = False,
        fed_loss_num_classes: int = 50,
        freq_weight: Tensor | None = None,
        mult_proposal_score: bool = False,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            input_shape, **kwargs: as ``FastRCNNOutputLayers``.
            use_sigmoid_ce: sigmoid cross-entropy over the K classes instead of softmax.
            prior_prob: initial sigmoid probability of ``cls_score`` with ``use_sigmoid_ce``.
            use_fed_loss: federated loss (needs ``use_sigmoid_ce``).
            fed_loss_num_classes: size of the federated class subset per loss call.
            freq_weight: ``[K]`` sampling weights of the federated loss (None: uniform).
            mult_proposal_score: test-time score ``sqrt(p * first-stage score)``.
        """
        super().__init__(input_shape, **kwargs)
        if use_fed_loss and not use_sigmoid_ce:
            raise ValueError(
                "MODEL.ROI_BOX_HEAD.USE_FED_LOSS needs MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE True"
            )
        self.use_sigmoid_ce = use_sigmoid_ce
        self.use_fed_loss = use_fed_loss
        self.fed_loss_num_classes = fed_loss_num_classes
        self.mult_proposal_score = mult_proposal_score
        if use_sigmoid_ce:
            nn.init.constant_(self.cls_score.bias, prior_bias(prior_prob))
        if freq_weight is not None:
            if freq_weight.shape != (self.num_classes,):
                raise ValueError(
                    f"freq_weight must have one weight per class ({self.num_classes}); got shape "
                    f"{tuple(freq_weight.shape)}"
                )
            self.register_buffer("freq_weight", freq_weight.float())
        else:
            self.freq_weight = None

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: ShapeSpec | int) -> dict[str, Any]:
        ret = super().from_config(cfg, input_shape)
        head = cfg.MODEL.ROI_BOX_HEAD
        if head.USE_EQL_LOSS:
            raise NotImplementedError(
                "MODEL.ROI_BOX_HEAD.USE_EQL_LOSS (equalization loss) is not implemented; use "
                "USE_FED_LOSS for long-tailed datasets"
            )
        freq_weight = None
        if head.USE_FED_LOSS:
            freq_weight = load_class_freq(
                head.CAT_FREQ_PATH, head.FED_LOSS_FREQ_WEIGHT, cfg.MODEL.ROI_HEADS.NUM_CLASSES
            )
        ret.update(
            use_sigmoid_ce=head.USE_SIGMOID_CE,
            prior_prob=sampling_free_initial_prior(cfg, head.PRIOR_PROB),
            use_fed_loss=head.USE_FED_LOSS,
            fed_loss_num_classes=head.FED_LOSS_NUM_CAT,
            freq_weight=freq_weight,
            mult_proposal_score=head.MULT_PROPOSAL_SCORE,
        )
        return ret

    def cls_loss(self, scores: Tensor, gt_classes: Tensor) -> Tensor:
        if not self.use_sigmoid_ce:
            return super().cls_loss(scores, gt_classes)
        subset = None
        if self.use_fed_loss:
            subset = fed_loss_classes(
                gt_classes, self.fed_loss_num_classes, self.num_classes, self.freq_weight
            )
        if self.sampling_free:
            return _exact_sigmoid_ce(scores, gt_classes, subset)
        return sigmoid_ce_loss(scores, gt_classes, subset)

    def predict_probs(
        self, predictions: tuple[Tensor, Tensor], proposals: list[Instances]
    ) -> list[Tensor]:
        """Per image ``[R_i, K + 1]``: sigmoid (with ``USE_SIGMOID_CE``) or softmax."""
        if not self.use_sigmoid_ce:
            return super().predict_probs(predictions, proposals)
        scores, _ = predictions
        return list(scores.sigmoid().split([len(p) for p in proposals], dim=0))

    def predict_boxes_and_scores(
        self, predictions: tuple[Tensor, Tensor], proposals: list[Instances]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """As Fast R-CNN, with the probabilistic score when ``MULT_PROPOSAL_SCORE`` is on (the
        single-stage heads of CenterNet2-F; the cascade multiplies after averaging stages)."""
        boxes = self.predict_boxes(predictions, proposals)
        scores = self.predict_probs(predictions, proposals)
        if self.mult_proposal_score:
            scores = multiply_proposal_scores(scores, proposals)
        return boxes, scores
