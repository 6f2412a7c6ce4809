"""Caffe2/Detectron weight names -> detectron2 names, and suffix-matching of state dicts.

Caffe2 names (``res2_0_branch2a_w``, ``res_conv1_bn_s``, ``conv1_w``, ``fpn_inner_res3_2_sum_w``,
...) are renamed to detectron2 module names (``res2.0.conv1.weight``, ``stem.conv1.norm.weight``,
``stem.conv1.weight``, ``fpn_lateral3.weight``, ...). The renamed (or any) checkpoint is then
matched to the model by ``align_and_update_state_dicts``: each model key takes the longest
checkpoint key that equals it or is a suffix of it starting after a ".", so that e.g. a backbone
checkpoint's ``res2.0.conv1.weight`` lands in ``backbone.bottom_up.res2.0.conv1.weight``.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict

import torch
from tabulate import tabulate

logger = logging.getLogger(__name__)

ShapeMismatch = tuple[str, tuple[int, ...], tuple[int, ...]]

# (pattern, replacement) applied in order after "_" -> "." and the .w/.b expansion.
_NORM_RENAMES = [
    (r"bn\.s$", "norm.weight"),
    (r"bn\.bias$", "norm.bias"),
    (r"bn\.rm$", "norm.running_mean"),
    (r"bn\.running\.mean$", "norm.running_mean"),
    (r"bn\.riv$", "norm.running_var"),
    (r"bn\.running\.var$", "norm.running_var"),
    (r"bn\.gamma$", "norm.weight"),
    (r"bn\.beta$", "norm.bias"),
    (r"gn\.s$", "norm.weight"),
    (r"gn\.bias$", "norm.bias"),
]


def convert_basic_c2_name(name: str) -> str:
    """Rename one Caffe2 backbone blob: ``res2_0_branch2a_bn_s`` -> ``res2.0.conv1.norm.weight``."""
    name = {"pred_b": "linear_b", "pred_w": "linear_w"}.get(name, name)
    name = name.replace("_", ".")
    name = re.sub(r"\.b$", ".bias", name)
    name = re.sub(r"\.w$", ".weight", name)
    for pattern, replacement in _NORM_RENAMES:
        name = re.sub(pattern, replacement, name)
    # Stem: the conv is "conv1_*" and its norm "res_conv1_bn_*".
    name = re.sub(r"^res\.conv1\.norm\.", "conv1.norm.", name)
    name = re.sub(r"^conv1\.", "stem.conv1.", name)
    # Residual blocks.
    name = name.replace(".branch1.", ".shortcut.")
    name = name.replace(".branch2a.", ".conv1.")
    name = name.replace(".branch2b.", ".conv2.")
    name = name.replace(".branch2c.", ".conv3.")
    return name


def _convert_fpn_name(name: str) -> str:
    parts = name.split(".")
    norm = ".norm" if "norm" in parts else ""
    if name.startswith("fpn.inner.res"):
        # e.g. fpn.inner.res3.2.sum.lateral.weight -> fpn_lateral3.weight
        return f"fpn_lateral{int(parts[2][len('res') :])}{norm}.{parts[-1]}"
    if name.startswith("fpn.res"):
        # e.g. fpn.res3.2.sum.weight -> fpn_output3.weight
        return f"fpn_output{int(parts[1][len('res') :])}{norm}.{parts[-1]}"
    return name


def convert_c2_detectron_name(name: str) -> str:
    """Rename one Caffe2 Detectron blob (backbone, FPN, RPN and box head) to detectron2's name."""
    name = convert_basic_c2_name(name)
    name = name.replace("conv.rpn.fpn2", "proposal_generator.rpn_head.conv")
    name = name.replace("conv.rpn", "proposal_generator.rpn_head.conv")
    name = name.replace("rpn.bbox.pred.fpn2", "proposal_generator.rpn_head.anchor_deltas")
    name = name.replace("rpn.cls.logits.fpn2", "proposal_generator.rpn_head.objectness_logits")
    name = name.replace("rpn.bbox.pred", "proposal_generator.rpn_head.anchor_deltas")
    name = name.replace("rpn.cls.logits", "proposal_generator.rpn_head.objectness_logits")
    name = re.sub(r"^bbox\.pred", "bbox_pred", name)
    name = re.sub(r"^cls\.score", "cls_score", name)
    name = re.sub(r"^fc6\.", "box_head.fc1.", name)
    name = re.sub(r"^fc7\.", "box_head.fc2.", name)
    name = re.sub(r"^head\.conv", "box_head.conv", name)
    return _convert_fpn_name(name)


def convert_c2_detectron_names(
    weights: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Rename every Caffe2 blob; returns (renamed weights, {new name: original name}).

    Box predictors change layout: Caffe2 has the background class first, detectron2 last, so
    ``cls_score`` rows move the first row to the end and ``bbox_pred`` drops the 4 background rows.
    """
    renamed: dict[str, torch.Tensor] = {}
    original_names: dict[str, str] = {}
    for original in sorted(weights):
        name = convert_c2_detectron_name(original)
        if name in renamed:
            raise ValueError(
                f"Caffe2 blobs {original_names[name]!r} and {original!r} both map to {name!r}"
            )
        value = weights[original]
        if name.startswith("bbox_pred."):
            value = value[4:]
        elif name.startswith("cls_score."):
            value = torch.cat((value[1:], value[:1]))
        renamed[name] = value
        original_names[name] = original
    return renamed, original_names


def group_keys(keys: list[str]) -> list[str]:
    """Sorted keys, those sharing everything before their last "." merged into one line.

    ``["a.b.weight", "a.b.bias", "c"]`` -> ``["a.b.{bias, weight}", "c"]``.
    """
    groups: dict[str, list[str]] = defaultdict(list)
    lines = []
    for key in sorted(keys):
        head, dot, tail = key.rpartition(".")
        if dot:
            groups[head].append(tail)
        else:
            lines.append(key)
    for head, tails in groups.items():
        lines.append(f"{head}.{tails[0]}" if len(tails) == 1 else f"{head}.{{{', '.join(tails)}}}")
    return sorted(lines)


def _group_by_prefix(rows: list[tuple[str, str, tuple[int, ...]]]) -> list[list[str]]:
    """Collapse rows (model key, checkpoint key, shape) sharing a module prefix into one line."""
    groups: dict[str, list[tuple[str, str, tuple[int, ...]]]] = defaultdict(list)
    for row in sorted(rows):
        groups[row[0].rpartition(".")[0]].append(row)
    return [
        [
            ", ".join(group_keys([m[0] for m in members])),
            ", ".join(group_keys([m[1] for m in members])),
            " ".join(str(tuple(m[2])) for m in members),
        ]
        for members in groups.values()
    ]


def align_and_update_state_dicts(
    model_state_dict: dict[str, torch.Tensor],
    ckpt_state_dict: dict[str, torch.Tensor],
    c2_conversion: bool = False,
) -> tuple[dict[str, torch.Tensor], list[ShapeMismatch]]:
    """Rename checkpoint keys to the model keys they match.

    A model key matches a checkpoint key equal to it or ending it after a "." boundary
    (``backbone.bottom_up.res2.0.conv1.weight`` matches ``res2.0.conv1.weight``); the longest
    match wins. A match whose shape differs is skipped and returned as
    ``(model key, shape in checkpoint, shape in model)``. A checkpoint key matched by two model
    keys raises ValueError. Unmatched checkpoint keys are kept under their own names.

    Returns (the renamed state dict, the shape mismatches).
    """
    if c2_conversion:
        ckpt_state_dict, original_names = convert_c2_detectron_names(ckpt_state_dict)
    else:
        original_names = {k: k for k in ckpt_state_dict}
    ckpt_keys = sorted(ckpt_state_dict)
    # Looking up each "."-boundary suffix of a model key keeps matching linear in the key count.
    ckpt_key_set = set(ckpt_keys)

    result: dict[str, torch.Tensor] = {}
    matched: dict[str, str] = {}  # checkpoint key -> model key
    mismatched: list[ShapeMismatch] = []
    skipped_ckpt_keys: set[str] = set()
    for model_key in sorted(model_state_dict):
        parts = model_key.split(".")
        candidates = [".".join(parts[i:]) for i in range(len(parts))]
        ckpt_key = next((c for c in candidates if c in ckpt_key_set), None)
        if ckpt_key is None:
            continue
        value = ckpt_state_dict[ckpt_key]
        model_shape = tuple(model_state_dict[model_key].shape)
        if tuple(value.shape) != model_shape:
            logger.warning(
                "Shape of %s in checkpoint is %s, while shape of %s in model is %s; not loaded.",
                original_names[ckpt_key],
                tuple(value.shape),
                model_key,
                model_shape,
            )
            mismatched.append((model_key, tuple(value.shape), model_shape))
            skipped_ckpt_keys.add(ckpt_key)
            continue
        if ckpt_key in matched:
            raise ValueError(
                f"ambiguous checkpoint key {original_names[ckpt_key]!r}: it matches both "
                f"{matched[ckpt_key]!r} and {model_key!r} in the model"
            )
        matched[ckpt_key] = model_key
        result[model_key] = value

    rows = [
        (model_key, original_names[c], tuple(result[model_key].shape))
        for c, model_key in sorted(matched.items(), key=lambda kv: kv[1])
    ]
    if rows:
        logger.info(
            "Matched checkpoint names to the model:\n%s",
            tabulate(
                _group_by_prefix(rows),
                headers=["Names in model", "Names in checkpoint", "Shapes"],
                tablefmt="pipe",
            ),
        )
    for key in ckpt_keys:
        if key not in matched and key not in skipped_ckpt_keys:
            result[key] = ckpt_state_dict[key]
    return result, mismatched
