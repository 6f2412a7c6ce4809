"""Converting official DETA checkpoints, on a synthetic state dict of official keys and shapes.

The synthetic ``model`` follows the fact sheet's state-dict layout (R-50 two-stage DETA, 638 keys).
Every tensor outside the class heads is one distinct number broadcast to its official shape (a
stride-0 view: 48M elements that cost one float each in memory and on disk), so that a key
mapped to the wrong tensor shows. Class-head rows hold ``1000 * head + row``, so the selected
rows can be read back.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import runpy
import sys

import pytest
import torch

from assigndet.checkpoint import DetectionCheckpointer
from assigndet.checkpoint.serialization import UnsafeCheckpointError, load_pth
from assigndet.config import load_config
from assigndet.modeling import build_model
from assigndet.projects.deta.checkpoint_conversion import (
    ConversionReport,
    coco_used_category_ids,
    compare_with_model_shapes,
    convert_official_deta_state_dict,
    load_official_checkpoint,
    unwrap_official_checkpoint,
)

REPO_ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
)
TOOL = os.path.join(REPO_ROOT, "tools", "convert_deta_checkpoint.py")

D, FFN, NUM_LAYERS, NUM_HEADS_OUT = 256, 2048, 6, 7
RESNET50_BLOCKS = (3, 4, 6, 3)
HEADS = ("class_embed.", "bbox_embed.")
FROZEN_PREFIXES = ("backbone.0.body.conv1.", "backbone.0.body.layer1.")
ALIASES = ("transformer.decoder.class_embed.", "transformer.decoder.bbox_embed.")
FROZEN_BN = ("weight", "bias", "running_mean", "running_var")
UNUSED_COCO_IDS = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}


def resnet50_shapes(torchvision_names: bool) -> dict[str, tuple[int, ...]]:
    """ResNet-50 keys and shapes: torchvision names, or the core ResNet's detectron2 names."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv_bn(conv: str, bn: str, shape: tuple[int, ...]) -> None:
        shapes[f"{conv}.weight"] = shape
        shapes.update({f"{bn}.{p}": (shape[0],) for p in FROZEN_BN})

    if torchvision_names:
        conv_bn("conv1", "bn1", (64, 3, 7, 7))
    else:
        conv_bn("stem.conv1", "stem.conv1.norm", (64, 3, 7, 7))
    in_channels = 64
    for i, num_blocks in enumerate(RESNET50_BLOCKS):
        width = 64 * 2**i
        for b in range(num_blocks):
            block = f"layer{i + 1}.{b}" if torchvision_names else f"res{i + 2}.{b}"
            block_in = in_channels if b == 0 else 4 * width
            for k, shape in (
                (1, (width, block_in, 1, 1)),
                (2, (width, width, 3, 3)),
                (3, (4 * width, width, 1, 1)),
            ):
                bn = f"{block}.bn{k}" if torchvision_names else f"{block}.conv{k}.norm"
                conv_bn(f"{block}.conv{k}", bn, shape)
            if b == 0:
                shortcut = (4 * width, block_in, 1, 1)
                if torchvision_names:
                    conv_bn(f"{block}.downsample.0", f"{block}.downsample.1", shortcut)
                else:
                    conv_bn(f"{block}.shortcut", f"{block}.shortcut.norm", shortcut)
        in_channels = 4 * width
    return shapes


def detection_shapes(num_classes: int) -> dict[str, tuple[int, ...]]:
    """Keys and shapes outside the backbone, named alike in the official model and ours."""
    shapes: dict[str, tuple[int, ...]] = {}

    def linear(name: str, out_features: int, in_features: int) -> None:
        shapes[f"{name}.weight"] = (out_features, in_features)
        shapes[f"{name}.bias"] = (out_features,)

    def norm(name: str, dim: int = D) -> None:
        shapes[f"{name}.weight"] = shapes[f"{name}.bias"] = (dim,)

    def msda(name: str) -> None:
        linear(f"{name}.sampling_offsets", 320, D)
        linear(f"{name}.attention_weights", 160, D)
        linear(f"{name}.value_proj", D, D)
        linear(f"{name}.output_proj", D, D)

    for n in range(NUM_LAYERS):
        layer = f"transformer.encoder.layers.{n}"
        msda(f"{layer}.self_attn")
        norm(f"{layer}.norm1")
        linear(f"{layer}.linear1", FFN, D)
        linear(f"{layer}.linear2", D, FFN)
        norm(f"{layer}.norm2")
    for n in range(NUM_LAYERS):
        layer = f"transformer.decoder.layers.{n}"
        msda(f"{layer}.cross_attn")
        norm(f"{layer}.norm1")
        shapes[f"{layer}.self_attn.in_proj_weight"] = (768, D)
        shapes[f"{layer}.self_attn.in_proj_bias"] = (768,)
        linear(f"{layer}.self_attn.out_proj", D, D)
        norm(f"{layer}.norm2")
        linear(f"{layer}.linear1", FFN, D)
        linear(f"{layer}.linear2", D, FFN)
        norm(f"{layer}.norm3")
    shapes["transformer.level_embed"] = (5, D)
    linear("transformer.enc_output", D, D)
    norm("transformer.enc_output_norm")
    linear("transformer.pos_trans", 2 * D, 2 * D)
    norm("transformer.pos_trans_norm", 2 * D)
    linear("transformer.pix_trans", D, D)
    norm("transformer.pix_trans_norm")
    for n in range(NUM_HEADS_OUT):
        linear(f"class_embed.{n}", num_classes, D)
    for n in range(NUM_HEADS_OUT):
        for k, out_features in enumerate((D, D, 4)):
            linear(f"bbox_embed.{n}.layers.{k}", out_features, D)
    conv_shapes = [(D, 512, 1, 1), (D, 1024, 1, 1), (D, 2048, 1, 1), (D, 2048, 3, 3), (D, D, 3, 3)]
    for level, shape in enumerate(conv_shapes):
        shapes[f"input_proj.{level}.0.weight"] = shape
        shapes[f"input_proj.{level}.0.bias"] = (D,)
        norm(f"input_proj.{level}.1")
    return shapes


def class_rows(head: int, rows: torch.Tensor) -> torch.Tensor:
    """The value every class-head entry of ``rows`` holds in the synthetic checkpoint."""
    return 1000.0 * head + rows.double()


def official_state_dict() -> dict[str, torch.Tensor]:
    """The synthetic official ``model``: transformer (with the head aliases), heads, input
    projections, backbone."""
    shapes = detection_shapes(91)
    shapes.update({f"backbone.0.body.{k}": s for k, s in resnet50_shapes(True).items()})
    tensors = {}
    for i, (key, shape) in enumerate(shapes.items()):
        if key.startswith("class_embed."):
            head = int(key.split(".")[1])
            rows = class_rows(head, torch.arange(91)).float()
            tensors[key] = rows[:, None].repeat(1, D) if key.endswith("weight") else rows
        else:
            tensors[key] = torch.tensor(float(i)).expand(shape)
    state = {k: v for k, v in tensors.items() if k.startswith("transformer.")}
    # The decoder's references to the heads: the same tensors a second time.
    state.update({f"transformer.decoder.{k}": v for k, v in tensors.items() if k.startswith(HEADS)})
    for prefix in ("class_embed.", "bbox_embed.", "input_proj.", "backbone."):
        state.update({k: v for k, v in tensors.items() if k.startswith(prefix)})
    return state


@pytest.fixture(scope="module")
def official() -> dict[str, torch.Tensor]:
    return official_state_dict()


def expected_shapes(num_classes: int = 80) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of our DETA's state dict."""
    shapes = detection_shapes(num_classes)
    shapes.update({f"backbone.{k}": s for k, s in resnet50_shapes(False).items()})
    return shapes


def _tool():
    spec = importlib.util.spec_from_file_location("convert_deta_checkpoint", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_synthetic_checkpoint_matches_the_fact_sheet(official):
    assert len(official) == 638
    assert list(official)[0].startswith("transformer.")
    assert list(official)[-1].startswith("backbone.")
    # The official FrozenBatchNorm2d keeps all four tensors as buffers, not parameters.
    params = {
        k: v.numel()
        for k, v in official.items()
        if not k.startswith(ALIASES) and not re.search(r"\.(bn\d|downsample\.1)\.", "." + k)
    }
    frozen = sum(n for k, n in params.items() if k.startswith(FROZEN_PREFIXES))
    assert round(sum(params.values()) / 1e5) == 484  # "~48.4M parameters"
    assert round((sum(params.values()) - frozen) / 1e5) == 482  # "48.2M trainable"


def test_every_key_is_accounted_for(official):
    converted, report = convert_official_deta_state_dict(official)
    expected = expected_shapes(80)
    assert {k: tuple(v.shape) for k, v in converted.items()} == expected
    assert compare_with_model_shapes(converted, expected) == []
    assert report.unmapped == [] and report.ignored == []
    assert len(report.dropped_aliases) == 56
    assert all(k.startswith("transformer.decoder.") for k in report.dropped_aliases)
    assert not any(k.startswith(ALIASES) for k in converted)
    assert set(report.mapped) | set(report.dropped_aliases) == set(official)
    assert sorted(report.mapped.values()) == sorted(converted)
    assert sum(k != v for k, v in report.mapped.items()) == 265  # the backbone


def test_backbone_names_and_values(official):
    converted, report = convert_official_deta_state_dict(official)
    by_hand = {
        "backbone.0.body.conv1.weight": "backbone.stem.conv1.weight",
        "backbone.0.body.bn1.running_var": "backbone.stem.conv1.norm.running_var",
        "backbone.0.body.layer1.0.downsample.0.weight": "backbone.res2.0.shortcut.weight",
        "backbone.0.body.layer1.0.downsample.1.bias": "backbone.res2.0.shortcut.norm.bias",
        "backbone.0.body.layer3.5.bn2.running_mean": "backbone.res4.5.conv2.norm.running_mean",
        "backbone.0.body.layer4.2.conv3.weight": "backbone.res5.2.conv3.weight",
        "input_proj.3.0.weight": "input_proj.3.0.weight",
        "transformer.decoder.layers.5.self_attn.in_proj_weight": (
            "transformer.decoder.layers.5.self_attn.in_proj_weight"
        ),
    }
    assert {k: report.mapped[k] for k in by_hand} == by_hand
    # Each distinct number lands under the new name of its key (class heads checked below).
    for old, new in report.mapped.items():
        if not old.startswith("class_embed."):
            assert converted[new] is official[old]


def test_coco_91_to_80_rows(official):
    ids = coco_used_category_ids()
    assert len(ids) == 80 and ids == sorted(set(range(1, 91)) - UNUSED_COCO_IDS)
    converted, _ = convert_official_deta_state_dict(official)
    for head in range(6):
        want = class_rows(head, torch.tensor(ids)).float()
        assert converted[f"class_embed.{head}.weight"].shape == (80, D)
        torch.testing.assert_close(converted[f"class_embed.{head}.weight"][:, 7], want)
        torch.testing.assert_close(converted[f"class_embed.{head}.bias"], want)
    # person (id 1) is class 0, bicycle (2) class 1, stop sign (13) class 11, toothbrush (90) 79.
    assert converted["class_embed.0.bias"][[0, 1, 11, 79]].tolist() == [1, 2, 13, 90]
    # The encoder head keeps its first 80 rows: row 0 is the objectness channel.
    want = class_rows(6, torch.arange(80)).float()
    torch.testing.assert_close(converted["class_embed.6.weight"][:, 0], want)
    torch.testing.assert_close(converted["class_embed.6.bias"], want)


def test_keep_91_classes(official):
    converted, _ = convert_official_deta_state_dict(official, coco_91_to_80=False)
    assert {k: tuple(v.shape) for k, v in converted.items()} == expected_shapes(91)
    for head in range(7):
        assert converted[f"class_embed.{head}.weight"] is official[f"class_embed.{head}.weight"]


def test_counters_are_ignored(official):
    counters = ["total_params", "transformer.total_ops", "backbone.0.body.total_params"]
    state = {**official, **{k: torch.zeros(1, dtype=torch.float64) for k in counters}}
    converted, report = convert_official_deta_state_dict(state)
    assert report.ignored == counters
    assert set(converted) == set(expected_shapes(80))
    assert "ignored: " in report.format()


def test_tampered_alias_raises(official):
    alias = "transformer.decoder.bbox_embed.3.layers.2.weight"
    tampered = official[alias].clone()
    tampered[1, 2] += 1
    with pytest.raises(ValueError, match=r"transformer\.decoder\.bbox_embed\.3\.layers\.2\.weight"):
        convert_official_deta_state_dict({**official, alias: tampered})
    orphan = {k: v for k, v in official.items() if k != "class_embed.4.bias"}
    with pytest.raises(ValueError, match=r"no head 'class_embed\.4\.bias'"):
        convert_official_deta_state_dict(orphan)


@pytest.mark.parametrize(
    "key, shape",
    [("query_embed.weight", (900, 512)), ("transformer.reference_points.weight", (2, D))],
)
def test_one_stage_checkpoint_raises(official, key, shape):
    with pytest.raises(ValueError, match=rf"not a two-stage DETA checkpoint.*{key}"):
        convert_official_deta_state_dict({**official, key: torch.zeros(shape)})


@pytest.mark.parametrize(
    "key, shape, expected",
    [
        ("input_proj.3.0.weight", (D, D, 3, 3), (D, 2048, 3, 3)),
        ("class_embed.2.weight", (80, D), (91, D)),
        ("bbox_embed.1.layers.2.weight", (D, D), (4, D)),
        ("transformer.level_embed", (4, D), (5, D)),
        ("transformer.encoder.layers.0.self_attn.sampling_offsets.weight", (256, D), (320, D)),
        ("backbone.0.body.layer2.0.conv1.weight", (128, 512, 1, 1), (128, 256, 1, 1)),
        ("backbone.0.body.layer3.1.bn3.running_var", (256,), (1024,)),
    ],
)
def test_wrong_shape_raises(official, key, shape, expected):
    state = {**official, key: torch.zeros(shape)}
    if key.startswith(HEADS):
        state[f"transformer.decoder.{key}"] = state[key]
    message = f"{key}: shape {tuple(shape)}, expected {tuple(expected)}"
    with pytest.raises(ValueError, match=re.escape(message)):
        convert_official_deta_state_dict(state)


def test_class_rows_free_with_91_classes_kept(official):
    # An official model trained on another class count converts with its own rows.
    state = {**official}
    for head in range(7):
        for name, shape in (("weight", (20, D)), ("bias", (20,))):
            key = f"class_embed.{head}.{name}"
            state[key] = state[f"transformer.decoder.{key}"] = torch.zeros(shape)
    converted, _ = convert_official_deta_state_dict(state, coco_91_to_80=False)
    assert converted["class_embed.6.weight"].shape == (20, D)


def test_unmapped_keys(official):
    extra = {
        "backbone.0.body.patch_embed.proj.weight": torch.zeros(96, 3, 4, 4),
        "backbone.0.body.layer1.0.conv1.bias": torch.zeros(64),
        "transformer.decoder.layers.0.norm4.weight": torch.zeros(D),
        "dn_embed.weight": torch.zeros(10, D),
    }
    state = {**official, **extra}
    with pytest.raises(ValueError, match="4 keys have no counterpart.*dn_embed.weight"):
        convert_official_deta_state_dict(state)
    converted, report = convert_official_deta_state_dict(state, allow_unmapped=True)
    assert sorted(report.unmapped) == sorted(extra)
    assert set(converted) == set(expected_shapes(80))
    assert "unmapped: dn_embed.weight" in report.format()


def test_head_indices_must_follow_the_decoder(official):
    state = {k: v for k, v in official.items() if "bbox_embed.6." not in k}
    with pytest.raises(ValueError, match=r"bbox_embed indices \[0, 1, 2, 3, 4, 5\]"):
        convert_official_deta_state_dict(state)


def test_unwrap(official):
    for checkpoint in (official, {"model": official, "epoch": 11}):
        unwrapped = unwrap_official_checkpoint(checkpoint)
        assert list(unwrapped) == list(official)
        assert all(unwrapped[k] is v for k, v in official.items())
    with pytest.raises(ValueError, match="'model' entry looks like an official DETA"):
        unwrap_official_checkpoint({"state_dict": official})
    converted, _ = convert_official_deta_state_dict(official)
    with pytest.raises(ValueError, match="official DETA state dict"):
        unwrap_official_checkpoint({"model": converted})


def test_compare_with_model_shapes(official):
    converted, _ = convert_official_deta_state_dict(official)
    model = expected_shapes(80)
    model["transformer.extra.weight"] = (3,)
    model["class_embed.0.weight"] = (91, D)
    del model["bbox_embed.6.layers.0.bias"]
    assert compare_with_model_shapes(converted, model) == [
        "missing in checkpoint: transformer.extra.weight",
        "not in the model: bbox_embed.6.layers.0.bias",
        "shape mismatch: class_embed.0.weight: checkpoint (80, 256), model (91, 256)",
    ]


class NotAllowed:
    pass


def test_loader_admits_the_args_namespace_only(official, tmp_path):
    path = str(tmp_path / "official.pth")
    torch.save({"model": {}, "args": argparse.Namespace(lr=2e-4, two_stage=True)}, path)
    with pytest.raises(UnsafeCheckpointError):
        load_pth(path)  # the library's loader alone refuses the Namespace
    assert load_official_checkpoint(path)["args"].lr == 2e-4
    torch.save({"model": {}, "args": NotAllowed()}, path)
    with pytest.raises(UnsafeCheckpointError, match="NotAllowed"):
        load_official_checkpoint(path)


def official_checkpoint(model: dict[str, torch.Tensor]) -> dict:
    """What the official training script saves."""
    return {
        "model": model,
        "optimizer": {"state": {}, "param_groups": [{"lr": 2e-4, "params": [0, 1]}]},
        "lr_scheduler": {"step_size": 10, "gamma": 0.1, "last_epoch": 12},
        "epoch": 11,
        "args": argparse.Namespace(lr=2e-4, two_stage=True, lr_linear_proj_names=["a", "b"]),
    }


@pytest.mark.parametrize("wrapped", [True, False])
def test_tool_end_to_end(official, tmp_path, capsys, wrapped):
    src, out = str(tmp_path / "official.pth"), str(tmp_path / "out" / "deta.pth")
    os.makedirs(os.path.dirname(out))
    torch.save(official_checkpoint(official) if wrapped else official, src)
    assert _tool().main([src, out]) == 0
    printed = capsys.readouterr().out
    assert "converted 582 tensors (265 renamed" in printed and "class heads: 80 outputs" in printed
    saved = load_pth(out)
    assert saved["__author__"] == "DETA official (converted)" and not saved["matching_heuristics"]
    assert {k: tuple(v.shape) for k, v in saved["model"].items()} == expected_shapes(80)
    converted, _ = convert_official_deta_state_dict(official)
    for key, value in converted.items():
        assert torch.equal(saved["model"][key], value), key
    assert os.listdir(os.path.dirname(out)) == ["deta.pth"]  # no temporary file left


def test_tool_runs_as_a_script_from_elsewhere(official, tmp_path, monkeypatch, capsys):
    torch.save(official_checkpoint(official), tmp_path / "official.pth")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [TOOL, "official.pth", "deta91.pth", "--keep-91-classes"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(TOOL, run_name="__main__")
    assert exit_info.value.code == 0
    assert load_pth(str(tmp_path / "deta91.pth"))["model"]["class_embed.0.weight"].shape == (91, D)
    assert "class heads: 91 outputs" in capsys.readouterr().out


def test_tool_failures(official, tmp_path, capsys):
    tool = _tool()
    src, out = str(tmp_path / "official.pth"), str(tmp_path / "deta.pth")
    torch.save({"model": {**official, "query_embed.weight": torch.zeros(900, 512)}}, src)
    assert tool.main([src, out]) == 1
    assert "not a two-stage DETA checkpoint" in capsys.readouterr().err
    assert tool.main([str(tmp_path / "absent.pth"), out]) == 1
    assert "absent.pth" in capsys.readouterr().err
    assert not os.path.exists(out)


def _plausible_weights(official: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The synthetic checkpoint with small random values (unit BN variances) instead of the
    marker constants, which overflow a forward pass; aliases stay shared."""
    generator = torch.Generator().manual_seed(0)
    replaced: dict[int, torch.Tensor] = {}
    weights = {}
    for key, value in official.items():
        if id(value) not in replaced:
            if key.endswith("running_var"):
                replaced[id(value)] = torch.ones(value.shape)
            else:
                replaced[id(value)] = 0.02 * torch.randn(value.shape, generator=generator)
        weights[key] = replaced[id(value)]
    return weights


def test_tool_check_config_and_the_converted_model_runs(official, tmp_path, capsys):
    """--check-config builds the model of configs/deta_r50_1x.yaml; the converted file then loads
    through MODEL.WEIGHTS with no missing or unexpected key and the model detects."""
    tool = _tool()
    config = os.path.join(REPO_ROOT, "configs", "deta_r50_1x.yaml")
    src, out = str(tmp_path / "official.pth"), str(tmp_path / "deta.pth")
    weights = _plausible_weights(official)
    torch.save(official_checkpoint(weights), src)
    assert tool.main([src, out, "--check-config", config, "--keep-91-classes"]) == 1
    err = capsys.readouterr().err
    assert "shape mismatch: class_embed.6.bias: checkpoint (91,), model (80,)" in err
    assert not os.path.exists(out)
    assert tool.main([src, out, "--check-config", config]) == 0
    assert "every key and shape matches the model of" in capsys.readouterr().out

    cfg = load_config(config, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", out])
    model = build_model(cfg).eval()
    checkpointer = DetectionCheckpointer(model)
    checkpointer.load(cfg.MODEL.WEIGHTS)
    assert not checkpointer.incompatible_keys
    used_rows = weights["class_embed.0.bias"][coco_used_category_ids()]
    torch.testing.assert_close(model.class_embed[0].bias, used_rows)
    image = torch.randint(0, 255, (3, 256, 320), dtype=torch.uint8)
    with torch.no_grad():
        inst = model([{"image": image, "height": 256, "width": 320}])[0]["instances"]
    assert len(inst) == 100 and torch.isfinite(inst.scores).all()


def test_report_format():
    report = ConversionReport(
        mapped={
            "backbone.0.body.conv1.weight": "backbone.stem.conv1.weight",
            "a.weight": "a.weight",
        },
        dropped_aliases=["transformer.decoder.class_embed.0.weight"],
        ignored=["x.total_ops", "x.total_params"],
    )
    assert report.format().splitlines() == [
        "converted 2 tensors (1 renamed, 1 kept as is); dropped 1 decoder aliases of the heads; "
        "ignored 2; unmapped 0",
        "  renamed: backbone.0.body.conv1.weight -> backbone.stem.conv1.weight",
        "  ignored: x.{total_ops, total_params}",
    ]
