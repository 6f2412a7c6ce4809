"""DETA's training objective: focal classification, L1 and GIoU box losses on every decoder
layer and on the encoder proposals, with (query, GT) pairs from IoU assignment or, for the
Hungarian baseline, from bipartite matching.

Every term is normalised by N_box, the number of GT boxes in the batch averaged over ranks and
clamped at 1; not by the number of positives, which IoU assignment makes vary a lot.

Sampling-Free mode (``sampling_free=True``; an extrapolation, see ``projects/deta/README.md``):
the focal term becomes plain sigmoid cross-entropy over every logit (the encoder: its objectness
channel only), and the summed decoder and encoder classification losses are each rescaled to
their box losses by a ``GuidedLossScaling``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import box_convert, generalized_box_iou_loss, sigmoid_focal_loss

from assigndet.modeling.losses.sampling_free import GuidedLossScaling, sigmoid_ce_loss
from assigndet.utils.comm import all_reduce_mean
from assigndet.utils.events import current_event_storage

from .assigners import hungarian_match, stage1_assign, stage2_assign

__all__ = ["DETACriterion", "deta_layer_losses", "num_boxes_normaliser"]

Pairs = tuple[Tensor, Tensor]


def _shape(x: object) -> object:
    return tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__


def _check_targets(fn: str, targets: Sequence[Mapping[str, Tensor]], batch: int, k: int) -> None:
    if not isinstance(targets, Sequence) or len(targets) != batch:
        n = len(targets) if isinstance(targets, Sequence) else type(targets).__name__
        raise ValueError(f"{fn}: targets must be a list of {batch} dicts (one per image), got {n}")
    for i, t in enumerate(targets):
        for key in ("labels", "boxes"):
            if not isinstance(t, Mapping) or key not in t:
                raise KeyError(f"{fn}: targets[{i}] has no {key!r}")
        labels, boxes = t["labels"], t["boxes"]
        if (
            not isinstance(labels, Tensor)
            or labels.dim() != 1
            or (labels.is_floating_point() or labels.dtype == torch.bool)
        ):
            raise ValueError(
                f"{fn}: targets[{i}]['labels'] must be a [G] integer tensor, got {_shape(labels)}"
                + (f" of {labels.dtype}" if isinstance(labels, Tensor) else "")
            )
        g = labels.shape[0]
        if not isinstance(boxes, Tensor) or boxes.shape != (g, 4) or not boxes.is_floating_point():
            raise ValueError(
                f"{fn}: targets[{i}]['boxes'] must be a [G, 4] = [{g}, 4] floating tensor of "
                f"normalised (cx, cy, w, h), got {_shape(boxes)}"
            )
        if g and (int(labels.min()) < 0 or int(labels.max()) >= k):
            raise ValueError(
                f"{fn}: targets[{i}]['labels'] must lie in [0, {k}), got "
                f"{sorted(set(labels.tolist()))}"
            )


def _check_predictions(fn: str, prefix: str, logits: object, boxes: object) -> tuple[int, int, int]:
    """``prefix`` names where the two tensors come from, e.g. ``"enc_outputs "``."""
    if not isinstance(logits, Tensor) or logits.dim() != 3:
        raise ValueError(
            f"{fn}: {prefix}pred_logits must be a [B, N, K] tensor, got {_shape(logits)}"
        )
    b, n, k = logits.shape
    if not isinstance(boxes, Tensor) or boxes.shape != (b, n, 4):
        raise ValueError(
            f"{fn}: {prefix}pred_boxes must be [B, N, 4] = [{b}, {n}, 4] like pred_logits, got "
            f"{_shape(boxes)}"
        )
    return b, n, k


def num_boxes_normaliser(targets: Sequence[Mapping[str, Tensor]], device: torch.device) -> Tensor:
    """N_box: the number of GT boxes in the batch, averaged over ranks when torch.distributed is
    initialised (every rank then divides by the same number), clamped at >= 1.

    Returns:
        Tensor[] float32 on ``device``, without gradient.
    """
    count = sum(int(t["labels"].shape[0]) for t in targets)
    return all_reduce_mean(torch.tensor(float(count), device=device)).clamp(min=1.0)


def deta_layer_losses(
    pred_logits: Tensor,
    pred_boxes: Tensor,
    pairs: Sequence[Pairs],
    targets: Sequence[Mapping[str, Tensor]],
    num_boxes: float | Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    sampling_free: bool = False,
) -> dict[str, Tensor]:
    """Unweighted losses of one set of predictions (a decoder layer or the encoder proposals).

    The class target of a query in a pair is the one-hot of its GT's label; a query in two pairs
    takes the label of the later pair; every other query is background (all zeros). Each pair
    adds one L1 and one 1 - GIoU term (a duplicated pair counts twice). Computed in float32.

    Args:
        pred_logits: Tensor[B, N, K] class logits (sigmoid, no background class).
        pred_boxes: Tensor[B, N, 4] normalised (cx, cy, w, h).
        pairs: per image, ``(query_idx [P_i], gt_idx [P_i])`` int64 (as the assigners return).
        targets: per image, ``{"labels": Tensor[G_i] int64 in [0, K), "boxes": Tensor[G_i, 4]}``
            (normalised cx, cy, w, h). For the encoder's binary targets pass all labels 0.
        num_boxes: the normaliser N_box (see ``num_boxes_normaliser``).
        alpha, gamma: focal loss parameters.
        sampling_free: classification by sigmoid cross-entropy (``sigmoid_ce_loss``) instead of
            the focal loss; alpha and gamma are then unused.

    Returns:
        ``{"loss_ce": sum of focal (or cross-entropy) terms over all B*N*K logits / N_box,
        "loss_bbox": sum over pairs of |b_pred - b_gt|_1 / N_box,
        "loss_giou": sum over pairs of (1 - GIoU) / N_box}``, scalar tensors.
    """
    fn = "deta_layer_losses"
    b, n, k = _check_predictions(fn, "", pred_logits, pred_boxes)
    _check_targets(fn, targets, b, k)
    if len(pairs) != b:
        raise ValueError(
            f"{fn}: pairs must hold one (query_idx, gt_idx) per image ({b}), got {len(pairs)}"
        )
    for i, ((q, g), t) in enumerate(zip(pairs, targets)):
        if (
            not (isinstance(q, Tensor) and isinstance(g, Tensor))
            or q.dim() != 1
            or (q.shape != g.shape)
        ):
            raise ValueError(
                f"{fn}: pairs[{i}] must be two [P] index tensors, got {_shape(q)} and {_shape(g)}"
            )
        num_gt = t["labels"].shape[0]
        if q.numel() and (int(q.min()) < 0 or int(q.max()) >= n):
            raise ValueError(f"{fn}: pairs[{i}] query_idx must lie in [0, {n}), got {q.tolist()}")
        if g.numel() and (int(g.min()) < 0 or int(g.max()) >= num_gt):
            raise ValueError(
                f"{fn}: pairs[{i}] gt_idx must lie in [0, {num_gt}) (the image's GT count), got "
                f"{g.tolist()}"
            )
    return _layer_losses(
        pred_logits, pred_boxes, pairs, targets, num_boxes, alpha, gamma, sampling_free
    )


def _layer_losses(
    pred_logits: Tensor,
    pred_boxes: Tensor,
    pairs: Sequence[Pairs],
    targets: Sequence[Mapping[str, Tensor]],
    num_boxes: float | Tensor,
    alpha: float,
    gamma: float,
    sampling_free: bool = False,
) -> dict[str, Tensor]:
    """``deta_layer_losses`` on inputs already checked (no host synchronisation)."""
    b, n, k = pred_logits.shape
    device = pred_logits.device
    batch_idx, query_idx, labels, gt_boxes = [], [], [], []
    for i, ((q, g), t) in enumerate(zip(pairs, targets)):
        q, g = q.to(device), g.to(device)
        batch_idx.append(torch.full_like(q, i))
        query_idx.append(q)
        labels.append(t["labels"].to(device)[g])
        gt_boxes.append(t["boxes"].to(device)[g])
    batch_idx, query_idx = torch.cat(batch_idx), torch.cat(query_idx)
    labels, gt_boxes = torch.cat(labels), torch.cat(gt_boxes).float()

    # One label per query, from its last pair: scatter_reduce "amax" over pair positions is
    # deterministic, unlike an indexed write with repeated indices.
    flat = batch_idx * n + query_idx
    order = torch.arange(flat.numel(), device=device)
    last = torch.full((b * n,), -1, dtype=torch.int64, device=device)
    last.scatter_reduce_(0, flat, order, reduce="amax")
    target_classes = torch.full((b * n,), k, dtype=torch.int64, device=device)
    has_pair = last >= 0
    target_classes[has_pair] = labels[last[has_pair]]
    onehot = torch.nn.functional.one_hot(target_classes, k + 1)[:, :k].view(b, n, k)
    if sampling_free:
        loss_ce = sigmoid_ce_loss(pred_logits, onehot)
    else:
        loss_ce = sigmoid_focal_loss(
            pred_logits.float(), onehot.float(), alpha=alpha, gamma=gamma, reduction="sum"
        )

    matched = pred_boxes[batch_idx, query_idx].float()  # [P, 4], connected to the graph if P = 0
    loss_bbox = (matched - gt_boxes).abs().sum()
    loss_giou = generalized_box_iou_loss(
        box_convert(matched, "cxcywh", "xyxy"),
        box_convert(gt_boxes, "cxcywh", "xyxy"),
        reduction="sum",
    )
    return {
        "loss_ce": loss_ce / num_boxes,
        "loss_bbox": loss_bbox / num_boxes,
        "loss_giou": loss_giou / num_boxes,
    }


class DETACriterion(nn.Module):
    """Losses of the final decoder layer, the auxiliary decoder layers and the encoder
    proposals, each already multiplied by its weight (the trainer sums the dict).

    ``matcher="iou"`` (DETA): the encoder proposals are paired by ``stage1_assign`` on the fixed
    anchors with binary targets (every GT label 0, i.e. the objectness channel); the decoder
    layers are paired once by ``stage2_assign`` on the detached ``init_reference`` and every
    layer, final and auxiliary, uses those pairs. ``matcher="hungarian"`` (baseline): every
    decoder layer is re-matched by ``hungarian_match``, and so are the encoder proposals on binary
    targets.

    Args:
        num_classes: K, the number of class logits of every head.
        matcher: ``"iou"`` or ``"hungarian"``.
        weight_class, weight_bbox, weight_giou: loss weights (official 1, 5, 2).
        focal_alpha, focal_gamma: focal loss parameters.
        max_k: object balancing cap K per GT of both IoU stages, or None for none.
        stage1_iou_thresholds, stage1_batch_size, stage1_positive_fraction: encoder assignment.
        stage2_iou_threshold, stage2_positive_fraction: decoder assignment (at most
            Q * fraction positives).
        cost_class, cost_bbox, cost_giou: Hungarian matching costs.
        sampling_free: Sampling-Free classification (see ``forward``).
        guided: with ``sampling_free``, rescale the classification losses by a
            ``GuidedLossScaling`` each (``guided_dec``, ``guided_enc``); False leaves them raw.
        guidance, delta_clamp: the ``GuidedLossScaling`` options.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: str = "iou",
        weight_class: float = 1.0,
        weight_bbox: float = 5.0,
        weight_giou: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        max_k: int | None = 4,
        stage1_iou_thresholds: tuple[float, float] = (0.3, 0.7),
        stage1_batch_size: int = 256,
        stage1_positive_fraction: float = 0.5,
        stage2_iou_threshold: float = 0.6,
        stage2_positive_fraction: float = 0.25,
        cost_class: float = 2.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        sampling_free: bool = False,
        guided: bool = True,
        guidance: str = "global",
        delta_clamp: Sequence[float] = (),
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"DETACriterion: num_classes must be an int >= 1, got {num_classes!r}")
        if matcher not in ("iou", "hungarian"):
            raise ValueError(
                f"DETACriterion: matcher must be 'iou' or 'hungarian', got {matcher!r}"
            )
        if max_k is not None and (
            isinstance(max_k, bool) or not isinstance(max_k, int) or max_k < 1
        ):
            raise ValueError(f"DETACriterion: max_k must be None or an int >= 1, got {max_k!r}")
        if len(stage1_iou_thresholds) != 2:
            raise ValueError(
                "DETACriterion: stage1_iou_thresholds must be (low, high), got "
                f"{tuple(stage1_iou_thresholds)}"
            )
        self.num_classes = num_classes
        self.matcher = matcher
        self.weights = {"loss_ce": weight_class, "loss_bbox": weight_bbox, "loss_giou": weight_giou}
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.max_k = max_k
        self.stage1_iou_thresholds = tuple(stage1_iou_thresholds)
        self.stage1_batch_size = stage1_batch_size
        self.stage1_positive_fraction = stage1_positive_fraction
        self.stage2_iou_threshold = stage2_iou_threshold
        self.stage2_positive_fraction = stage2_positive_fraction
        self.costs = {"cost_class": cost_class, "cost_bbox": cost_bbox, "cost_giou": cost_giou}
        self.sampling_free = sampling_free
        self.guided_dec: GuidedLossScaling | None = None
        self.guided_enc: GuidedLossScaling | None = None
        if sampling_free and guided:
            # one δ per classifier: the decoder heads share one, the proposal head has its own
            self.guided_dec = GuidedLossScaling(
                guidance=guidance, delta_clamp=delta_clamp, name="deta_dec"
            )
            self.guided_enc = GuidedLossScaling(
                guidance=guidance, delta_clamp=delta_clamp, name="deta_enc"
            )

    def _encoder_pairs(self, anchors: Tensor, gt_boxes: Tensor) -> tuple[Tensor, Tensor]:
        """Stage-1 IoU assignment of one image's ``[S, 4]`` anchors to its ``[G, 4]`` GT."""
        return stage1_assign(
            anchors,
            gt_boxes.to(anchors.device),
            iou_thresholds=self.stage1_iou_thresholds,
            batch_size_per_image=self.stage1_batch_size,
            positive_fraction=self.stage1_positive_fraction,
            max_k=self.max_k,
        )

    def _hungarian(
        self, logits: Tensor, boxes: Tensor, targets: Sequence[Mapping[str, Tensor]]
    ) -> list[Pairs]:
        return [
            hungarian_match(
                logits[i],
                boxes[i],
                t["labels"].to(logits.device),
                t["boxes"].to(boxes.device),
                alpha=self.focal_alpha,
                gamma=self.focal_gamma,
                **self.costs,
            )
            for i, t in enumerate(targets)
        ]

    def _layer(
        self,
        logits: Tensor,
        boxes: Tensor,
        pairs: Sequence[Pairs],
        targets: Sequence[Mapping[str, Tensor]],
        num_boxes: Tensor,
        suffix: str,
    ) -> dict[str, Tensor]:
        losses = _layer_losses(
            logits, boxes, pairs, targets, num_boxes, self.focal_alpha, self.focal_gamma,
            self.sampling_free,
        )
        weights = self.weights
        if self.sampling_free:  # the class weight is applied (or cancelled) on the sum
            weights = {**weights, "loss_ce": 1.0}
        return {name + suffix: value * weights[name] for name, value in losses.items()}

    def _sampling_free_losses(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        """Replace the per-layer cross-entropy entries of ``losses`` (raw, / N_box) by
        ``loss_ce_dec`` (decoder layers summed) and ``loss_ce_enc``, each guided by the weighted
        box losses of the same heads, plus their ``loss_delta_*``. The raw per-layer values go
        to the event storage as ``sf_deta_ce``, ``sf_deta_ce_{t}``, ``sf_deta_ce_enc``."""
        ce = {key: losses.pop(key) for key in [k for k in losses if k.startswith("loss_ce")]}
        storage = current_event_storage()
        if storage is not None:
            values = torch.stack([v.detach().float() for v in ce.values()]).tolist()
            for key, value in zip(ce, values):
                storage.put_scalar("sf_deta_" + key[len("loss_"):], value)
        enc_cls = ce.pop("loss_ce_enc")
        dec_cls = sum(ce.values())
        enc_loc = losses["loss_bbox_enc"] + losses["loss_giou_enc"]
        dec_loc = sum(v for k, v in losses.items() if not k.endswith("_enc"))
        for name, cls, loc, guide in (
            ("dec", dec_cls, dec_loc, self.guided_dec),
            ("enc", enc_cls, enc_loc, self.guided_enc),
        ):
            if guide is None:
                losses[f"loss_ce_{name}"] = cls * self.weights["loss_ce"]
            else:
                scaled = guide(cls, loc)
                losses[f"loss_ce_{name}"] = scaled["loss_cls"]
                losses[f"loss_delta_{name}"] = scaled["loss_delta"]
        return losses

    @torch.no_grad()
    def sampling_free_prior_counts(
        self, anchors: Tensor, targets: Sequence[Mapping[str, Tensor]], num_queries: int
    ) -> dict[str, tuple[Tensor, Tensor]]:
        """Positive and all binary outputs of the two classifiers for one batch, from the
        assignment alone (no network), for the Sampling-Free prior.

        ``"deta_enc"`` (the proposal classifier, channel 0 of every token): with IoU assignment,
        the tokens that ``stage1_assign`` pairs on the fixed anchors, as in training (its random
        draw of at most 128 positives only matters beyond 128); with the Hungarian matcher,
        min(G, S) per image. N = B * S.

        ``"deta_dec"`` (every decoder class head): the decoder's pairs come from the predicted
        proposals, so this is an approximation from counts. With IoU assignment every GT is
        taken to get ``max_k`` positives (1 without balancing, its low-quality match), capped at
        ``int(Q * stage2_positive_fraction)`` per image; with the Hungarian matcher min(G, Q),
        which is exact. N = B * Q * K.

        Args:
            anchors: Tensor[B, S, 4] normalised (cx, cy, w, h), as ``enc_outputs["anchors"]``.
            targets: per image ``{"labels": [G], "boxes": [G, 4]}`` (normalised cx, cy, w, h).
            num_queries: Q.

        Returns:
            ``{"deta_dec": (N^f, N), "deta_enc": (N^f, N)}``, float64 scalar tensors.
        """
        b, s, _ = anchors.shape
        enc_fg = dec_fg = 0
        for i, t in enumerate(targets):
            g = int(t["labels"].shape[0])
            if self.matcher == "iou":
                query_idx, _ = self._encoder_pairs(anchors[i], t["boxes"])
                enc_fg += int(torch.unique(query_idx).numel())  # a token in two pairs is one
                per_gt = self.max_k if self.max_k is not None else 1
                dec_fg += min(g * per_gt, int(num_queries * self.stage2_positive_fraction))
            else:
                enc_fg += min(g, s)
                dec_fg += min(g, num_queries)

        def counts(fg: int, total: int) -> tuple[Tensor, Tensor]:
            return torch.tensor(float(fg), dtype=torch.float64), torch.tensor(
                float(total), dtype=torch.float64
            )

        return {
            "deta_dec": counts(dec_fg, b * num_queries * self.num_classes),
            "deta_enc": counts(enc_fg, b * s),
        }

    def forward(
        self, outputs: Mapping[str, object], targets: Sequence[Mapping[str, Tensor]]
    ) -> dict[str, Tensor]:
        """
        Args:
            outputs: ``pred_logits`` Tensor[B, Q, K], ``pred_boxes`` Tensor[B, Q, 4] (normalised
                cx, cy, w, h) of the final layer; ``init_reference`` Tensor[B, Q, 4] (needed by
                ``matcher="iou"``); ``aux_outputs`` (optional) a list of
                ``{"pred_logits", "pred_boxes"}`` of the earlier decoder layers; ``enc_outputs``
                ``{"pred_logits" [B, S, K], "pred_boxes" [B, S, 4], "anchors" [B, S, 4]}``
                (``anchors`` needed by ``matcher="iou"``).
            targets: per image ``{"labels": Tensor[G] int64 in [0, K), "boxes": Tensor[G, 4]}``
                (normalised cx, cy, w, h of the unpadded image).

        Returns:
            ``loss_ce``, ``loss_bbox``, ``loss_giou`` (final layer), the same with suffix
            ``_{t}`` for ``aux_outputs[t]`` and with suffix ``_enc`` for the encoder, each a
            weighted scalar tensor.

            With ``sampling_free``: the box entries as above; instead of the per-layer ``loss_ce*``
            ``loss_ce_dec`` = g·δ·sum_t CE_t / N_box (every decoder layer's sigmoid cross-entropy
            over all B*Q*K logits, guided by the sum of the decoder's weighted L1 and GIoU
            entries, so its value is δ times that sum) and ``loss_ce_enc`` likewise for the
            encoder (channel 0 only, guided by ``loss_bbox_enc + loss_giou_enc``), plus
            ``loss_delta_dec`` and ``loss_delta_enc`` (-log δ). Unguided: the raw sums times
            ``weight_class``, no δ.
        """
        fn = "DETACriterion"
        iou = self.matcher == "iou"
        required = ["pred_logits", "pred_boxes", "enc_outputs"] + (
            ["init_reference"] if iou else []
        )
        for key in required:
            if key not in outputs:
                raise KeyError(f"{fn}: outputs has no {key!r} (matcher={self.matcher!r})")
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        b, q, k = _check_predictions(fn, "outputs ", logits, boxes)
        if k != self.num_classes:
            raise ValueError(
                f"{fn}: outputs pred_logits must have K = num_classes = {self.num_classes} "
                f"logits, got {k}"
            )
        _check_targets(fn, targets, b, k)

        aux = outputs.get("aux_outputs", [])
        for t, layer in enumerate(aux):
            for key in ("pred_logits", "pred_boxes"):
                if key not in layer:
                    raise KeyError(f"{fn}: outputs['aux_outputs'][{t}] has no {key!r}")
            shape = _check_predictions(
                fn, f"aux_outputs[{t}] ", layer["pred_logits"], layer["pred_boxes"]
            )
            if shape != (b, q, k):
                raise ValueError(
                    f"{fn}: aux_outputs[{t}] pred_logits must be [{b}, {q}, {k}] like the final "
                    f"layer, got {list(shape)}"
                )
        enc = outputs["enc_outputs"]
        for key in ("pred_logits", "pred_boxes") + (("anchors",) if iou else ()):
            if key not in enc:
                raise KeyError(f"{fn}: outputs['enc_outputs'] has no {key!r}")
        eb, s, ek = _check_predictions(fn, "enc_outputs ", enc["pred_logits"], enc["pred_boxes"])
        if (eb, ek) != (b, k):
            raise ValueError(
                f"{fn}: enc_outputs pred_logits must be [B, S, K] = [{b}, S, {k}], got "
                f"{[eb, s, ek]}"
            )

        num_boxes = num_boxes_normaliser(targets, logits.device)
        losses: dict[str, Tensor] = {}
        if iou:
            reference = outputs["init_reference"]
            if not isinstance(reference, Tensor) or reference.shape != (b, q, 4):
                raise ValueError(
                    f"{fn}: init_reference must be [B, Q, 4] = [{b}, {q}, 4], got "
                    f"{_shape(reference)}"
                )
            decoder_pairs = [
                stage2_assign(
                    reference[i].detach(),
                    t["boxes"].to(reference.device),
                    iou_threshold=self.stage2_iou_threshold,
                    positive_fraction=self.stage2_positive_fraction,
                    max_k=self.max_k,
                )
                for i, t in enumerate(targets)
            ]
        layers = [(logits, boxes, "")] + [
            (layer["pred_logits"], layer["pred_boxes"], f"_{t}") for t, layer in enumerate(aux)
        ]
        for layer_logits, layer_boxes, suffix in layers:
            # IoU mode: the pairs of the proposals serve every layer; Hungarian re-matches each
            pairs = (
                decoder_pairs if iou else self._hungarian(layer_logits, layer_boxes, targets)
            )
            losses |= self._layer(layer_logits, layer_boxes, pairs, targets, num_boxes, suffix)

        # Binary objectness targets for the encoder proposals: every GT is class 0.
        binary = [{"labels": torch.zeros_like(t["labels"]), "boxes": t["boxes"]} for t in targets]
        if iou:
            anchors = enc["anchors"]
            if not isinstance(anchors, Tensor) or anchors.shape != (b, s, 4):
                raise ValueError(
                    f"{fn}: enc_outputs anchors must be [B, S, 4] = [{b}, {s}, 4], got "
                    f"{_shape(anchors)}"
                )
            enc_pairs = [
                self._encoder_pairs(anchors[i].detach(), t["boxes"])
                for i, t in enumerate(targets)
            ]
        else:
            enc_pairs = self._hungarian(enc["pred_logits"], enc["pred_boxes"], binary)
        enc_logits = enc["pred_logits"]
        if self.sampling_free:
            # the proposal classifier is binary: only channel 0 (the objectness that selects the
            # queries) is read; the other channels would add K - 1 always-negative logits per
            # token to the guided sum and to the prior
            enc_logits = enc_logits[..., :1]
        losses |= self._layer(enc_logits, enc["pred_boxes"], enc_pairs, binary, num_boxes, "_enc")
        if self.sampling_free:
            return self._sampling_free_losses(losses)
        return losses
