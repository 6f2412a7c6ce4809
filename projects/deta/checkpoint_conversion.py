"""Official DETA checkpoints (two-stage, ResNet-50) -> the names and classes of our ``DETA``.

The official ``model`` state dict differs from ours in three ways:

- the backbone is a torchvision ResNet under ``backbone.0.body.``; ours is the core ResNet with
  detectron2 names under ``backbone.`` (``layer1`` -> ``res2``, ``bn1`` -> ``conv1.norm``, ...);
- the decoder holds references to the prediction heads, so every ``class_embed.*`` and
  ``bbox_embed.*`` tensor is stored a second time under ``transformer.decoder.``; one copy is kept;
- the class heads have 91 outputs indexed by the raw COCO category id (row 0 and the ids of the
  10 unused categories are never a target). Converted to COCO's 80 contiguous classes, the decoder
  heads keep the rows of the 80 used ids in increasing id order. The encoder head (the last index)
  keeps its first 80 rows instead: the model reads only its row 0, the class-agnostic objectness
  that ranks the proposals, and its other rows were trained as background only.

Input projections, transformer and heads otherwise keep their official names. Every tensor's
shape is checked against the official configuration (d_model 256, FFN 2048, 5 feature levels,
8 heads, 4 sampling points, 91 classes, ResNet-50 bottlenecks); layer and block counts are free.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from assigndet.checkpoint.c2_model_loading import group_keys
from assigndet.checkpoint.serialization import load_pth
from assigndet.checkpoint.torchvision_loading import convert_torchvision_resnet_name
from assigndet.data.datasets.builtin_meta import COCO_CATEGORIES

OFFICIAL_NUM_CLASSES = 91

_BACKBONE_PREFIX = "backbone.0.body."
_ALIAS_PREFIXES = ("transformer.decoder.class_embed.", "transformer.decoder.bbox_embed.")
_IGNORED_SUFFIXES = ("total_params", "total_ops")

# None in an expected shape matches any size.
Shape = tuple[int | None, ...]


@dataclass
class ConversionReport:
    """What happened to each key of an official state dict.

    Attributes:
        mapped: official key -> our key, for every tensor in the converted state dict.
        dropped_aliases: ``transformer.decoder.{class,bbox}_embed.*`` copies of the heads.
        ignored: keys deliberately left out (``total_params`` / ``total_ops`` counters, and the
            torchvision ``fc`` / ``num_batches_tracked`` entries a backbone may carry).
        unmapped: keys with no counterpart in our model.
    """

    mapped: dict[str, str] = field(default_factory=dict)
    dropped_aliases: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)

    def format(self) -> str:
        """A human-readable summary, listing ignored and unmapped keys grouped by module."""
        renamed = sum(old != new for old, new in self.mapped.items())
        lines = [
            f"converted {len(self.mapped)} tensors ({renamed} renamed, "
            f"{len(self.mapped) - renamed} kept as is); dropped {len(self.dropped_aliases)} "
            f"decoder aliases of the heads; ignored {len(self.ignored)}; "
            f"unmapped {len(self.unmapped)}"
        ]
        examples = [(old, new) for old, new in self.mapped.items() if old != new][:3]
        lines += [f"  renamed: {old} -> {new}" for old, new in examples]
        if renamed > len(examples):
            lines.append(f"  renamed: ... ({renamed - len(examples)} more)")
        lines += [f"  ignored: {line}" for line in group_keys(self.ignored)]
        lines += [f"  unmapped: {line}" for line in group_keys(self.unmapped)]
        return "\n".join(lines)


def coco_used_category_ids() -> list[int]:
    """The 80 COCO category ids in use, increasing: the 91-way heads' rows of our 80 classes."""
    return sorted(cid for cid, _ in COCO_CATEGORIES)


def is_official_deta_state_dict(obj: Any) -> bool:
    """Whether ``obj`` looks like the ``model`` entry of an official DETA checkpoint."""
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) for k in obj):
        return False
    return all(
        any(k.startswith(prefix) for k in obj)
        for prefix in ("transformer.", "class_embed.", _BACKBONE_PREFIX)
    )


def unwrap_official_checkpoint(checkpoint: Any) -> dict[str, torch.Tensor]:
    """The official state dict of a loaded checkpoint: its ``model`` entry, or the top level."""
    if is_official_deta_state_dict(checkpoint):
        return dict(checkpoint)
    if isinstance(checkpoint, Mapping) and is_official_deta_state_dict(checkpoint.get("model")):
        return dict(checkpoint["model"])
    if isinstance(checkpoint, Mapping):
        found = f"a dict with keys {sorted(map(str, checkpoint))[:8]}"
    else:
        found = type(checkpoint).__name__
    raise ValueError(
        "neither the checkpoint nor its 'model' entry looks like an official DETA state dict "
        f"(keys under 'transformer.', 'class_embed.' and '{_BACKBONE_PREFIX}'); got {found}"
    )


def load_official_checkpoint(path: str) -> Any:
    """Load an official checkpoint on the CPU without running code from it.

    Official checkpoints store the training options as an ``argparse.Namespace`` under ``args``,
    which ``torch.load(weights_only=True)`` refuses by default. Rebuilding a Namespace only sets
    attributes, so it is admitted; any other non-tensor object is still refused
    (``UnsafeCheckpointError``).
    """
    with torch.serialization.safe_globals([argparse.Namespace]):
        return load_pth(path)


def _linear(name: str, out_features: int | None, in_features: int) -> dict[str, Shape]:
    return {rf"{name}\.weight": (out_features, in_features), rf"{name}\.bias": (out_features,)}


def _norm(name: str, dim: int) -> dict[str, Shape]:
    return {rf"{name}\.weight": (dim,), rf"{name}\.bias": (dim,)}


def _official_shapes(num_classes: int | None) -> list[tuple[re.Pattern, Shape]]:
    """(full-match pattern, shape) of every official key outside the backbone."""
    d, ffn, levels, heads, points = 256, 2048, 5, 8, 4
    table: dict[str, Shape] = {r"transformer\.level_embed": (levels, d)}
    for prefix, attn in (
        (r"transformer\.encoder\.layers\.\d+\.", "self_attn"),
        (r"transformer\.decoder\.layers\.\d+\.", "cross_attn"),
    ):
        table |= _linear(rf"{prefix}{attn}\.sampling_offsets", heads * levels * points * 2, d)
        table |= _linear(rf"{prefix}{attn}\.attention_weights", heads * levels * points, d)
        table |= _linear(rf"{prefix}{attn}\.value_proj", d, d)
        table |= _linear(rf"{prefix}{attn}\.output_proj", d, d)
        table |= _linear(rf"{prefix}linear1", ffn, d) | _linear(rf"{prefix}linear2", d, ffn)
        table |= _norm(rf"{prefix}norm[12]", d)
    dec = r"transformer\.decoder\.layers\.\d+\."
    table[rf"{dec}self_attn\.in_proj_weight"] = (3 * d, d)  # q, k, v stacked
    table[rf"{dec}self_attn\.in_proj_bias"] = (3 * d,)
    table |= _linear(rf"{dec}self_attn\.out_proj", d, d) | _norm(rf"{dec}norm3", d)
    for name, dim in (("enc_output", d), ("pos_trans", 2 * d), ("pix_trans", d)):
        table |= _linear(rf"transformer\.{name}", dim, dim)
        table |= _norm(rf"transformer\.{name}_norm", dim)
    # Levels 0-2 project C3-C5 (1x1); level 3 reads raw C5, level 4 level 3 (3x3, stride 2).
    projections = ((512, 1), (1024, 1), (2048, 1), (2048, 3), (d, 3))
    for level, (in_channels, kernel) in enumerate(projections):
        table[rf"input_proj\.{level}\.0\.weight"] = (d, in_channels, kernel, kernel)
        table[rf"input_proj\.{level}\.0\.bias"] = (d,)
        table |= _norm(rf"input_proj\.{level}\.1", d)
    table |= _linear(r"class_embed\.\d+", num_classes, d)
    table |= _linear(r"bbox_embed\.\d+\.layers\.[01]", d, d)
    table |= _linear(r"bbox_embed\.\d+\.layers\.2", 4, d)
    return [(re.compile(pattern), shape) for pattern, shape in table.items()]


_RESNET_KEY = re.compile(
    r"conv1\.weight|bn1\.(weight|bias|running_mean|running_var)"
    r"|layer(?P<stage>[1-4])\.(?P<block>\d+)\.(?P<module>conv[123]|bn[123]|downsample\.[01])\."
    r"(?P<param>weight|bias|running_mean|running_var)"
)


def _resnet50_shape(name: str) -> Shape | None:
    """Shape of a torchvision ResNet-50 (bottleneck) key, or None if it is not one."""
    match = _RESNET_KEY.fullmatch(name)
    if match is None:
        return None
    if match["stage"] is None:
        return (64, 3, 7, 7) if name == "conv1.weight" else (64,)
    stage, block, module = int(match["stage"]), int(match["block"]), match["module"]
    width = 64 * 2 ** (stage - 1)
    in_channels = (64 if stage == 1 else 2 * width) if block == 0 else 4 * width
    is_conv = module.startswith("conv") or module == "downsample.0"
    if is_conv and match["param"] != "weight":
        return None  # the convs have no bias
    if module == "downsample.0":
        return (4 * width, in_channels, 1, 1)
    if module == "downsample.1":
        return (4 * width,)
    out_channels = 4 * width if module[-1] == "3" else width
    if not is_conv:
        return (out_channels,)
    return {
        "1": (width, in_channels, 1, 1),
        "2": (width, width, 3, 3),
        "3": (4 * width, width, 1, 1),
    }[module[-1]]


def _check_alias(state_dict: Mapping[str, torch.Tensor], alias: str) -> None:
    twin = alias.removeprefix("transformer.decoder.")
    if twin not in state_dict:
        raise ValueError(f"decoder alias {alias!r} has no head {twin!r} in the state dict")
    a, b = state_dict[alias], state_dict[twin]
    if not isinstance(b, torch.Tensor) or a.shape != b.shape or not torch.equal(a, b):
        raise ValueError(
            f"decoder alias {alias!r} differs from {twin!r}: the decoder's copy of a head must "
            "be the head itself, so this is not an official DETA state dict"
        )


def _select_class_rows(converted: dict[str, torch.Tensor], num_decoder_layers: int) -> None:
    """91-way class heads -> 80 rows, in place (heads 0..L-1 decoder, head L encoder)."""
    used_rows = torch.tensor(coco_used_category_ids())
    first_rows = torch.arange(len(used_rows))
    for key, value in list(converted.items()):
        match = re.fullmatch(r"class_embed\.(\d+)\.(weight|bias)", key)
        if match is not None:
            rows = first_rows if int(match[1]) == num_decoder_layers else used_rows
            converted[key] = value.index_select(0, rows.to(value.device))


def _check_head_indices(converted: Mapping[str, torch.Tensor], num_decoder_layers: int) -> None:
    expected = set(range(num_decoder_layers + 1))
    for head in ("class_embed", "bbox_embed"):
        found = {int(m[1]) for k in converted if (m := re.match(rf"{head}\.(\d+)\.", k))}
        if found != expected:
            raise ValueError(
                f"{head} indices {sorted(found)}: a two-stage DETA with {num_decoder_layers} "
                f"decoder layers has {head}.0..{num_decoder_layers} (one per decoder layer, "
                "then the encoder proposal head)"
            )


def convert_official_deta_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    coco_91_to_80: bool = True,
    allow_unmapped: bool = False,
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Rename an official DETA ``model`` state dict to our ``DETA`` and pick its class rows.

    Args:
        state_dict: the official ``model`` entry (638 keys for the released R-50 models).
        coco_91_to_80: turn the 91-way class heads ``[91, 256]`` / ``[91]`` into 80-way ones
            (see the module docstring); False keeps them 91-way, indexed by COCO id.
        allow_unmapped: leave out keys with no counterpart in our model (listed in
            ``report.unmapped``) instead of raising.

    Returns:
        The converted state dict (tensors shared with the input where unchanged) and a report.

    Raises:
        ValueError: a one-stage checkpoint (learned queries), a tensor of an unexpected shape, a
            decoder alias that differs from its head, head indices that do not match the decoder
            layers, or unmapped keys without ``allow_unmapped``.
    """
    one_stage = [
        k for k in state_dict
        if k == "query_embed.weight" or k.startswith("transformer.reference_points.")
    ]  # fmt: skip
    if one_stage:
        raise ValueError(
            f"not a two-stage DETA checkpoint: it has {one_stage}, the learned queries of a "
            "one-stage model, while DETA selects its queries from encoder proposals"
        )
    shapes = _official_shapes(OFFICIAL_NUM_CLASSES if coco_91_to_80 else None)
    report = ConversionReport()
    converted: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith(_IGNORED_SUFFIXES):
            report.ignored.append(key)
            continue
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{key}: expected a tensor, got {type(value).__name__}")
        if key.startswith(_ALIAS_PREFIXES):
            _check_alias(state_dict, key)
            report.dropped_aliases.append(key)
            continue
        new_key, expected = key, None
        if key.startswith(_BACKBONE_PREFIX):
            name = key.removeprefix(_BACKBONE_PREFIX)
            renamed = convert_torchvision_resnet_name(name)
            if renamed is None:
                report.ignored.append(key)
                continue
            new_key, expected = "backbone." + renamed, _resnet50_shape(name)
        else:
            expected = next((s for pattern, s in shapes if pattern.fullmatch(key)), None)
        if expected is None:
            report.unmapped.append(key)
            continue
        shape = tuple(value.shape)
        if len(shape) != len(expected) or any(e not in (None, s) for s, e in zip(shape, expected)):
            wanted = tuple("*" if e is None else e for e in expected)
            raise ValueError(
                f"{key}: shape {shape}, expected {wanted} (official two-stage DETA, ResNet-50)"
            )
        report.mapped[key] = new_key
        converted[new_key] = value
    if report.unmapped and not allow_unmapped:
        raise ValueError(
            f"{len(report.unmapped)} keys have no counterpart in DETA (pass allow_unmapped=True "
            "to leave them out): " + "; ".join(group_keys(report.unmapped))
        )
    num_decoder_layers = len(
        {m[1] for k in converted if (m := re.match(r"transformer\.decoder\.layers\.(\d+)\.", k))}
    )
    _check_head_indices(converted, num_decoder_layers)
    if coco_91_to_80:
        _select_class_rows(converted, num_decoder_layers)
    return converted, report


def compare_with_model_shapes(
    converted: Mapping[str, torch.Tensor], model_shapes: Mapping[str, Sequence[int]]
) -> list[str]:
    """Lines describing every key missing from, unexpected in, or shaped unlike the model.

    Args:
        converted: a converted state dict.
        model_shapes: key -> shape of the model's ``state_dict()``.

    Returns:
        One line per problem (empty when the two agree exactly).
    """
    missing = group_keys(sorted(set(model_shapes) - set(converted)))
    unexpected = group_keys(sorted(set(converted) - set(model_shapes)))
    problems = [f"missing in checkpoint: {k}" for k in missing]
    problems += [f"not in the model: {k}" for k in unexpected]
    for key in sorted(set(converted) & set(model_shapes)):
        if tuple(converted[key].shape) != tuple(model_shapes[key]):
            problems.append(
                f"shape mismatch: {key}: checkpoint {tuple(converted[key].shape)}, "
                f"model {tuple(model_shapes[key])}"
            )
    return problems
