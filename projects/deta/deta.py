"""DETA: the two-stage deformable DETR meta-architecture (``META_ARCHITECTURE: "DETA"``).

Images -> ResNet (frozen BN) -> 3 projected outputs + 2 stride-2 extra levels -> deformable
encoder -> encoder proposals and query selection -> decoder with iterative box refinement -> a
class and a box head per decoder layer. Training assigns targets with IoU assignment and object
balancing (or the Hungarian matcher) in ``DETACriterion``; inference keeps the top-k (query,
class) pairs and runs class-wise NMS.

Boxes inside the model are normalised (cx, cy, w, h) of each image's unpadded input; detections
come out in xyxy pixels of the requested output size.

``MODEL.SAMPLING_FREE.ENABLED`` trains with Sampling-Free classification instead of the focal
loss (``DETACriterion``), with the classifier priors of ``sampling_free_prior_counts`` /
``set_sampling_free_prior``; an extrapolation, see ``projects/deta/README.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_convert

from assigndet.config import CfgNode
from assigndet.data.num_classes import checked_num_classes
from assigndet.layers import prior_bias
from assigndet.modeling import META_ARCH_REGISTRY, build_backbone
from assigndet.modeling.losses import sampling_free_initial_prior
from assigndet.modeling.meta_arch import model_io
from assigndet.ops import batched_nms
from assigndet.structures import ImageList, Instances

from .criterion import DETACriterion
from .position_encoding import sine_position_encoding
from .transformer import DeformableTransformer, encoder_anchor_logits, inverse_sigmoid

__all__ = ["DETA", "MLP", "deta_postprocess"]


class MLP(nn.Module):
    """``num_layers`` Linear layers (``layers.0`` .. ``layers.{n-1}``) with ReLU between them."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


def deta_postprocess(
    pred_logits: Tensor,
    pred_boxes: Tensor,
    output_size: tuple[int, int],
    topk: int,
    nms_threshold: float,
    max_detections: int,
) -> Instances:
    """Detections of one image from its decoder outputs (the official NMS post-processing).

    Args:
        pred_logits: Tensor[Q, K] class logits.
        pred_boxes: Tensor[Q, 4] normalised (cx, cy, w, h).
        output_size: (height, width) the boxes are scaled to; they are not clipped.
        topk: (query, class) pairs kept by sigmoid score before NMS.
        nms_threshold: class-wise NMS IoU; <= 0 keeps the plain top ``max_detections``.
        max_detections: detections kept, by score.

    Returns:
        Instances(pred_boxes [D, 4] xyxy pixels, scores [D], pred_classes [D]), by score.
    """
    num_queries, num_classes = pred_logits.shape
    probs = pred_logits.sigmoid().flatten()
    k = min(topk, probs.numel())
    if nms_threshold <= 0:
        k = min(k, max_detections)
    scores, flat = probs.topk(k)
    query = torch.div(flat, num_classes, rounding_mode="floor")
    classes = flat % num_classes
    height, width = output_size
    scale = pred_boxes.new_tensor([width, height, width, height])
    boxes = box_convert(pred_boxes[query], "cxcywh", "xyxy") * scale
    if nms_threshold > 0:
        keep = batched_nms(boxes, scores, classes, nms_threshold)[:max_detections]
        boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
    result = Instances(output_size)
    result.pred_boxes = boxes
    result.scores = scores
    result.pred_classes = classes
    return result


def _padding_mask(images: ImageList) -> Tensor:
    """Tensor[B, H, W] bool, True at the padded pixels of the batch."""
    batch, _, height, width = images.tensor.shape
    mask = torch.ones(batch, height, width, dtype=torch.bool, device=images.tensor.device)
    for i, (h, w) in enumerate(images.image_sizes):
        mask[i, :h, :w] = False
    return mask


def _level_mask(image_mask: Tensor, size: tuple[int, int]) -> Tensor:
    """The padding mask Tensor[B, H, W] bool resized (nearest) to one level's ``size``."""
    return F.interpolate(image_mask[None].float(), size=size)[0].to(torch.bool)


@META_ARCH_REGISTRY.register()
class DETA(nn.Module):
    """Two-stage deformable DETR with box refinement, trained with IoU assignment (see the module
    docstring and ``projects/deta/README.md``).

    Training returns the weighted losses of ``DETACriterion``; inference returns
    ``[{"instances": Instances(pred_boxes, scores, pred_classes)}]`` at each input's
    "height"/"width".

    Sampling-Free (``MODEL.SAMPLING_FREE.ENABLED``): two sigmoid classifiers, ``"deta_dec"``
    (the class heads of all decoder layers) and ``"deta_enc"`` (the proposal head), each with
    its prior and its guided scaling. Their biases start at ``prior_bias(PRIOR_PROB)`` when
    ``MODEL.SAMPLING_FREE.PRIOR_PROB`` > 0, at 0 when ``PRIOR_INIT`` is False, and otherwise at
    ``MODEL.DETA.PRIOR_PROB``'s until ``set_sampling_free_prior``. Inference is unchanged: it
    has no score threshold (top-k, NMS, the first ``TEST.DETECTIONS_PER_IMAGE``) that
    ``SCORE_THRESH_TEST`` could replace.
    """

    def __init__(self, cfg: CfgNode) -> None:
        super().__init__()
        d = cfg.MODEL.DETA
        model_io.register_pixel_statistics(self, cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD)
        self.size_divisibility = d.SIZE_DIVISIBILITY
        self.num_classes = checked_num_classes(cfg, "MODEL.DETA.NUM_CLASSES")
        self.topk_test = d.TOPK_TEST
        self.nms_thresh_test = d.NMS_THRESH_TEST
        self.max_detections = cfg.TEST.DETECTIONS_PER_IMAGE
        self.in_features = list(d.IN_FEATURES)
        num_levels = d.NUM_FEATURE_LEVELS
        hidden = d.HIDDEN_DIM
        if num_levels < len(self.in_features):
            raise ValueError(
                f"MODEL.DETA.NUM_FEATURE_LEVELS ({num_levels}) must be at least the number of "
                f"MODEL.DETA.IN_FEATURES ({self.in_features})"
            )

        self.backbone = build_backbone(cfg)
        shapes = self.backbone.output_shape()
        missing = [f for f in self.in_features if f not in shapes]
        if missing:
            raise ValueError(
                f"MODEL.DETA.IN_FEATURES {missing} are not backbone outputs {sorted(shapes)}; "
                "set MODEL.RESNETS.OUT_FEATURES accordingly"
            )
        in_channels = [shapes[f].channels for f in self.in_features]
        projections = [nn.Sequential(nn.Conv2d(c, hidden, 1), nn.GroupNorm(32, hidden))
                       for c in in_channels]
        extra_in = in_channels[-1]  # the first extra level reads the raw last backbone output
        for _ in range(num_levels - len(self.in_features)):
            projections.append(nn.Sequential(
                nn.Conv2d(extra_in, hidden, 3, stride=2, padding=1), nn.GroupNorm(32, hidden)
            ))
            extra_in = hidden
        self.input_proj = nn.ModuleList(projections)
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.zeros_(proj[0].bias)

        self.transformer = DeformableTransformer(
            d_model=hidden,
            n_heads=d.NHEADS,
            num_encoder_layers=d.ENC_LAYERS,
            num_decoder_layers=d.DEC_LAYERS,
            d_ffn=d.DIM_FEEDFORWARD,
            num_feature_levels=num_levels,
            enc_n_points=d.ENC_N_POINTS,
            dec_n_points=d.DEC_N_POINTS,
            num_queries=d.NUM_QUERIES,
            assign_first_stage=d.ASSIGN_FIRST_STAGE_NMS,
            topk_per_level=d.PROPOSAL_TOPK_PER_LEVEL,
            nms_threshold=d.PROPOSAL_NMS_THRESH,
        )
        # one class and one box head per decoder layer, plus one for the encoder proposals
        num_heads = d.DEC_LAYERS + 1
        self.class_embed = nn.ModuleList(
            nn.Linear(hidden, self.num_classes) for _ in range(num_heads)
        )
        self.bbox_embed = nn.ModuleList(MLP(hidden, hidden, 4, 3) for _ in range(num_heads))
        sf = cfg.MODEL.SAMPLING_FREE
        self.sampling_free = sf.ENABLED
        self.sf_prior_init = sf.PRIOR_INIT
        prior = sampling_free_initial_prior(cfg, d.PRIOR_PROB) if sf.ENABLED else d.PRIOR_PROB
        bias = prior_bias(prior)
        for cls_head, box_head in zip(self.class_embed, self.bbox_embed):
            nn.init.constant_(cls_head.bias, bias)
            nn.init.zeros_(box_head.layers[-1].weight)
            nn.init.zeros_(box_head.layers[-1].bias)

        if d.MATCHER not in ("iou", "hungarian"):
            raise ValueError(f"MODEL.DETA.MATCHER must be 'iou' or 'hungarian', got {d.MATCHER!r}")
        self.criterion = DETACriterion(
            self.num_classes,
            matcher=d.MATCHER,
            weight_class=d.CLASS_WEIGHT,
            weight_bbox=d.BBOX_WEIGHT,
            weight_giou=d.GIOU_WEIGHT,
            focal_alpha=d.FOCAL_ALPHA,
            focal_gamma=d.FOCAL_GAMMA,
            max_k=d.MAX_K if d.MAX_K > 0 else None,
            stage1_iou_thresholds=tuple(d.STAGE1_IOU_THRESHOLDS),
            stage1_batch_size=d.STAGE1_BATCH_SIZE_PER_IMAGE,
            stage1_positive_fraction=d.STAGE1_POSITIVE_FRACTION,
            stage2_iou_threshold=d.STAGE2_IOU_THRESHOLD,
            stage2_positive_fraction=d.STAGE2_POSITIVE_FRACTION,
            cost_class=d.COST_CLASS,
            cost_bbox=d.COST_BBOX,
            cost_giou=d.COST_GIOU,
            sampling_free=sf.ENABLED,
            guided=sf.GUIDED,
            guidance=sf.GUIDANCE,
            delta_clamp=tuple(sf.DELTA_CLAMP),
        )

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def forward(self, batched_inputs: list[dict[str, Any]]):
        images = self.preprocess_image(batched_inputs)
        outputs = self.predict(images)
        if not self.training:
            return self.postprocess_predictions(outputs, images, batched_inputs)
        gt = model_io.gt_instances(batched_inputs, self.device, type(self).__name__)
        return self.criterion(outputs, self.prepare_targets(gt, images.image_sizes))

    def preprocess_image(self, batched_inputs: list[dict[str, Any]]) -> ImageList:
        """Normalise the images and pad them at the bottom and right into one batch."""
        return model_io.batch_images(
            batched_inputs, self.pixel_mean, self.pixel_std, self.size_divisibility,
            type(self).__name__,
        )

    def prepare_targets(
        self, gt_instances: list[Instances], image_sizes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """``{"labels": [G], "boxes": [G, 4]}`` per image, boxes as normalised (cx, cy, w, h) of
        the unpadded image."""
        targets = []
        for inst, (h, w) in zip(gt_instances, image_sizes, strict=True):
            scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=self.device)
            boxes = box_convert(inst.gt_boxes.float() / scale, "xyxy", "cxcywh")
            targets.append({"labels": inst.gt_classes.long(), "boxes": boxes})
        return targets

    def level_shapes(self, padded_size: tuple[int, int]) -> list[tuple[int, int]]:
        """(H_l, W_l) of every transformer level for a padded batch of ``padded_size``, without
        running the network: ceil(size / stride) (3x3 stride-2 convs with padding 1 and the
        ResNet stages round up), the extra levels doubling the last backbone stride."""
        shapes = self.backbone.output_shape()
        strides = [shapes[f].stride for f in self.in_features]
        while len(strides) < len(self.input_proj):
            strides.append(strides[-1] * 2)
        return [tuple(math.ceil(x / s) for x in padded_size) for s in strides]

    @torch.no_grad()
    def sampling_free_prior_counts(
        self, batched_inputs: list[dict[str, Any]]
    ) -> dict[str, tuple[Tensor, Tensor]]:
        """(positive, all) binary outputs of ``"deta_dec"`` and ``"deta_enc"`` in this batch,
        from the label assignment alone (see ``DETACriterion.sampling_free_prior_counts``):
        the encoder's from the fixed anchors, the decoder's an approximation from the GT count
        (its real assignment depends on the predicted proposals). Empty unless Sampling-Free
        with ``PRIOR_INIT`` is on."""
        if not (self.sampling_free and self.sf_prior_init):
            return {}
        images = self.preprocess_image(batched_inputs)
        gt = model_io.gt_instances(batched_inputs, self.device, type(self).__name__)
        targets = self.prepare_targets(gt, images.image_sizes)
        image_mask = _padding_mask(images)
        shapes = self.level_shapes(tuple(images.tensor.shape[-2:]))
        padding_mask = torch.cat([_level_mask(image_mask, hw).flatten(1) for hw in shapes], 1)
        anchors = encoder_anchor_logits(padding_mask, shapes).sigmoid()
        return self.criterion.sampling_free_prior_counts(
            anchors, targets, self.transformer.num_queries
        )

    def set_sampling_free_prior(self, priors: Mapping[str, float]) -> None:
        """Set the class-head biases to ``prior_bias(p)``: ``"deta_dec"`` every decoder layer's
        head, ``"deta_enc"`` the proposal head (all its channels; only channel 0 is trained)."""
        heads = {"deta_dec": self.class_embed[:-1], "deta_enc": self.class_embed[-1:]}
        unknown = sorted(set(priors) - set(heads))
        if unknown:
            raise KeyError(f"DETA.set_sampling_free_prior: unknown classifiers {unknown}; "
                           f"known: {sorted(heads)}")
        with torch.no_grad():
            for name, prob in priors.items():
                for head in heads[name]:
                    head.bias.fill_(prior_bias(prob))

    def backbone_features(self, images: ImageList) -> dict[str, list[Tensor]]:
        """The transformer's inputs: per level, the projected map ``srcs`` [B, C, H_l, W_l], the
        padding ``masks`` [B, H_l, W_l] and the sine ``pos_embeds`` [B, C, H_l, W_l]."""
        features = self.backbone(images.tensor)
        image_mask = _padding_mask(images)
        srcs = [proj(features[f]) for proj, f in zip(self.input_proj, self.in_features)]
        extra = features[self.in_features[-1]]
        for proj in self.input_proj[len(self.in_features):]:
            extra = proj(extra)
            srcs.append(extra)
        masks, pos_embeds = [], []
        for src in srcs:
            mask = _level_mask(image_mask, src.shape[-2:])
            masks.append(mask)
            pos_embeds.append(sine_position_encoding(mask, src.shape[1] // 2).to(src.dtype))
        return {"srcs": srcs, "masks": masks, "pos_embeds": pos_embeds}

    def head_outputs(self, hidden_states: Tensor, references: Tensor) -> tuple[Tensor, Tensor]:
        """Class logits [T, B, Q, K] and boxes [T, B, Q, 4] of every decoder layer t, each box
        refined from the layer's input reference."""
        logits, boxes = [], []
        for t in range(hidden_states.shape[0]):
            logits.append(self.class_embed[t](hidden_states[t]))
            delta = self.bbox_embed[t](hidden_states[t])
            boxes.append((delta + inverse_sigmoid(references[t])).sigmoid())
        return torch.stack(logits), torch.stack(boxes)

    def predict(self, images: ImageList) -> dict[str, Any]:
        """The network: ``pred_logits`` [B, Q, K], ``pred_boxes`` [B, Q, 4], ``aux_outputs``
        (the earlier decoder layers), ``init_reference`` [B, Q, 4] and ``enc_outputs``."""
        inputs = self.backbone_features(images)
        out = self.transformer(
            inputs["srcs"], inputs["masks"], inputs["pos_embeds"], self.class_embed,
            self.bbox_embed,
        )
        return self.decoder_outputs(out)

    def inference_stages(self) -> list[tuple[str, Callable[[Any], Any]]]:
        """Inference as timed stages (``assigndet.evaluation.timing``), the split of the DETA
        paper's runtime table: ``backbone`` (preprocessing, ResNet, input projections, masks and
        position encodings), ``encoder``, ``query_selection`` (encoder proposals, per-level
        top-k and NMS, query initialisation), ``decoder`` (layers and heads) and
        ``postprocess`` (top-k, class-wise NMS, scaling)."""
        transformer = self.transformer

        def backbone(batched_inputs: list[dict[str, Any]]):
            images = self.preprocess_image(batched_inputs)
            return batched_inputs, images, self.backbone_features(images)

        def encoder(state):
            batched_inputs, images, inputs = state
            encoded = transformer.encode(inputs["srcs"], inputs["masks"], inputs["pos_embeds"])
            return batched_inputs, images, encoded

        def query_selection(state):
            batched_inputs, images, encoded = state
            queries = transformer.select_queries(encoded, self.class_embed, self.bbox_embed)
            return batched_inputs, images, encoded, queries

        def decoder(state):
            batched_inputs, images, encoded, queries = state
            decoded = transformer.decode(encoded, queries, self.bbox_embed)
            outputs = self.decoder_outputs({**decoded, **queries})
            return outputs, images, batched_inputs

        return [
            ("backbone", backbone),
            ("encoder", encoder),
            ("query_selection", query_selection),
            ("decoder", decoder),
            ("postprocess", lambda state: self.postprocess_predictions(*state)),
        ]

    def decoder_outputs(self, transformer_out: dict[str, Any]) -> dict[str, Any]:
        """The criterion's and post-processing's view of the transformer outputs."""
        logits, boxes = self.head_outputs(
            transformer_out["hidden_states"], transformer_out["references"]
        )
        return {
            "pred_logits": logits[-1],
            "pred_boxes": boxes[-1],
            "aux_outputs": [
                {"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])
            ],
            "init_reference": transformer_out["init_reference"],
            "enc_outputs": transformer_out["enc_outputs"],
        }

    def postprocess_predictions(
        self, outputs: dict[str, Any], images: ImageList, batched_inputs: list[dict[str, Any]]
    ) -> list[dict[str, Instances]]:
        """Top-k, class-wise NMS and detections per image, at each input's output size."""
        results = []
        for i, (x, image_size) in enumerate(zip(batched_inputs, images.image_sizes, strict=True)):
            output_size = (x.get("height", image_size[0]), x.get("width", image_size[1]))
            results.append({"instances": deta_postprocess(
                outputs["pred_logits"][i], outputs["pred_boxes"][i], output_size,
                self.topk_test, self.nms_thresh_test, self.max_detections,
            )})
        return results
