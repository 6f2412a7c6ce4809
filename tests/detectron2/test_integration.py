"""assigndet's detectors inside a real detectron2: built by its build_model, fed by its mapper,
trained by its DefaultTrainer, evaluated by its COCOEvaluator, checkpoints in both directions."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip(
    "detectron2", reason="detectron2 is not installed (see the README, 'With detectron2')"
)

import detectron2.config  # noqa: E402
import detectron2.data  # noqa: E402
import detectron2.modeling  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer as D2Checkpointer  # noqa: E402
from detectron2.structures import Boxes  # noqa: E402
from detectron2.structures import ImageList as D2ImageList  # noqa: E402
from detectron2.structures import Instances as D2Instances  # noqa: E402

import assigndet.detectron2 as ad2  # noqa: E402
from assigndet.checkpoint import DetectionCheckpointer  # noqa: E402
from assigndet.config import get_cfg, load_config  # noqa: E402
from assigndet.data import DatasetCatalog, DatasetMapper  # noqa: E402
from assigndet.detectron2.structures import (  # noqa: E402
    image_list_from_d2,
    instances_from_d2,
    instances_to_d2,
    shapes_to_d2,
)
from assigndet.engine import default_argument_parser as assigndet_argument_parser  # noqa: E402
from assigndet.engine.defaults import load_inference_weights  # noqa: E402
from assigndet.layers import ShapeSpec  # noqa: E402
from assigndet.modeling import build_model  # noqa: E402
from assigndet.structures import Instances  # noqa: E402
from assigndet.utils.testing import tiny_dense_detector_cfg  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SMALL_INPUT = [
    "INPUT.MIN_SIZE_TRAIN", (64,), "INPUT.MAX_SIZE_TRAIN", 96, "INPUT.MIN_SIZE_TEST", 64,
    "INPUT.MAX_SIZE_TEST", 96, "DATASETS.TRAIN", ("shapes_mini_train",),
    "DATASETS.TEST", ("shapes_mini_val",), "DATALOADER.NUM_WORKERS", 0,
]


def _module(relative: str):
    spec = importlib.util.spec_from_file_location(Path(relative).stem, REPO / relative)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str((REPO / relative).parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.pop(0)
    return module


def _d2_cfg(ours, tmp_path):
    """detectron2's get_cfg() + add_assigndet_config + our config written as YAML."""
    path = tmp_path / "config.yaml"
    path.write_text(ours.dump())
    cfg = detectron2.config.get_cfg()
    ad2.add_assigndet_config(cfg)
    cfg.merge_from_file(str(path))
    return cfg


def _tiny(name):
    if name == "CenterNet2":
        cfg = _module("tests/projects/centernet2/test_centernet2.py")._tiny_centernet2_cfg()
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = 5
    elif name == "DETA":
        cfg = _module("tests/projects/deta/test_deta_model.py")._tiny_deta_cfg()
        cfg.MODEL.DETA.NUM_CLASSES = 5
    else:
        cfg = tiny_dense_detector_cfg(name, num_classes=5)
    # random weights score low: keep every candidate, so that there are detections to compare
    cfg.MODEL.FCOS.INFERENCE_TH_TEST = 0.0
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.merge_from_list(SMALL_INPUT)
    if name == "CenterNet2":  # P7 (stride 128) needs 2 locations for its GroupNorm
        cfg.merge_from_list(["INPUT.MIN_SIZE_TRAIN", (160,), "INPUT.MAX_SIZE_TRAIN", 256,
                             "INPUT.MIN_SIZE_TEST", 160, "INPUT.MAX_SIZE_TEST", 256])
    return cfg


# ---- structures -------------------------------------------------------------------------------


def test_conversions_share_tensors():
    boxes, classes = torch.rand(3, 4), torch.tensor([0, 2, 1])
    d2 = D2Instances((20, 30), gt_boxes=Boxes(boxes), gt_classes=classes)
    ours = instances_from_d2(d2)
    assert isinstance(ours, Instances) and ours.image_size == (20, 30)
    assert ours.gt_boxes is boxes and ours.gt_classes is classes
    back = instances_to_d2(Instances((20, 30), pred_boxes=boxes, scores=classes.float()))
    assert isinstance(back.pred_boxes, Boxes) and back.pred_boxes.tensor is boxes
    tensor = torch.zeros(2, 3, 32, 32)
    images = image_list_from_d2(D2ImageList(tensor, [(30, 31), (32, 20)]))
    assert images.tensor is tensor and images.image_sizes == [(30, 31), (32, 20)]
    shapes = shapes_to_d2({"p3": ShapeSpec(channels=8, stride=8)})
    assert isinstance(shapes["p3"], detectron2.layers.ShapeSpec)
    assert (shapes["p3"].channels, shapes["p3"].stride) == (8, 8)


# ---- registries and config --------------------------------------------------------------------


def test_registered_under_the_config_names_without_overwriting():
    # supersets: other tests may have registered components of their own in assigndet's
    names = ad2.registered_names()
    assert set(names["META_ARCH"]) >= {
        "ATSS", "ATSS_PSS", "CenterNetDetector", "DETA", "FCOS", "FCOS_PSS"
    }
    assert set(names["PROPOSAL_GENERATOR"]) >= {"CenterNet"}
    assert set(names["ROI_HEADS"]) >= {"CustomCascadeROIHeads", "CustomROIHeads"}
    assert set(names["BACKBONE"]) >= {
        "build_fcos_resnet_fpn_backbone", "build_p67_resnet_fpn_backbone"
    }
    detectrons_own = {"GeneralizedRCNN", "StandardROIHeads", "CascadeROIHeads", "RPN",
                      "build_resnet_backbone", "build_resnet_fpn_backbone"}
    assert not detectrons_own & {n for kind in names.values() for n in kind}
    registry = detectron2.modeling.META_ARCH_REGISTRY
    assert registry.get("GeneralizedRCNN") is detectron2.modeling.GeneralizedRCNN
    # registering again (or reloading) adds what assigndet gained since, changes nothing
    ad2.register_all()
    before = dict(registry._obj_map)
    ad2.register_all()
    importlib.reload(ad2)
    assert all(registry._obj_map[name] is component for name, component in before.items())
    assert registry.get("GeneralizedRCNN") is detectron2.modeling.GeneralizedRCNN


def test_every_config_merges_into_detectron2():
    for path in sorted((REPO / "configs").rglob("*.yaml")):
        cfg = detectron2.config.get_cfg()
        ad2.add_assigndet_config(cfg)
        cfg.merge_from_file(str(path))
        assert cfg.MODEL.META_ARCHITECTURE == load_config(str(path)).MODEL.META_ARCHITECTURE


def test_bad_input_under_detectron2(tmp_path):
    cfg = detectron2.config.get_cfg()
    ad2.add_assigndet_config(cfg)
    with pytest.raises(AssertionError, match="Non-existent key: MODEL.FCOS.NUM_CLASES"):
        cfg.merge_from_list(["MODEL.FCOS.NUM_CLASES", "3"])  # yacs's own check
    typo = tmp_path / "typo.yaml"
    typo.write_text("MODEL:\n  PSS:\n    RANK_WEIGTH: 0.5\n")
    with pytest.raises(KeyError, match="Non-existent config key: MODEL.PSS.RANK_WEIGTH"):
        cfg.merge_from_file(str(typo))
    cfg.MODEL.META_ARCHITECTURE = "NoSuchDetector"
    with pytest.raises(KeyError) as e:
        ad2.build_model(cfg)
    assert "MODEL.META_ARCHITECTURE = 'NoSuchDetector' is registered neither" in str(e.value)
    assert "FCOS_PSS" in str(e.value) and "GeneralizedRCNN" in str(e.value)
    with pytest.raises(KeyError, match="'NoSuchDetector' is registered neither"):
        ad2.AssigndetTrainer.build_model(cfg)
    blocked = subprocess.run(
        [sys.executable, "-c",
         "import sys; sys.modules['detectron2'] = None; import assigndet.detectron2"],
        capture_output=True, text=True,
    )
    assert blocked.returncode != 0
    assert "assigndet.detectron2 needs detectron2, which is not installed" in blocked.stderr
    assert "pip install --no-build-isolation" in blocked.stderr


# ---- parity with standalone -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["FCOS", "FCOS_PSS", "ATSS_PSS", "CenterNet2", "DETA"])
def test_parity_with_standalone(name, tmp_path):
    ours_cfg = _tiny(name)
    d2_cfg = _d2_cfg(ours_cfg, tmp_path)
    torch.manual_seed(0)
    ours = build_model(ours_cfg)
    theirs = ad2.build_model(d2_cfg)
    assert {k: v.shape for k, v in theirs.state_dict().items()} == {
        k: v.shape for k, v in ours.state_dict().items()
    }
    theirs.load_state_dict(ours.state_dict(), strict=True)

    ours.eval()
    theirs.eval()
    record = DatasetCatalog.get("shapes_mini_train")[0]
    image = DatasetMapper(ours_cfg, is_train=False)(record)["image"]
    inputs = [{"image": image, "height": 70, "width": 90}]
    with torch.no_grad():
        expected = ours(inputs)[0]["instances"]
        got = theirs(inputs)[0]["instances"]
    assert isinstance(got.pred_boxes, Boxes)
    assert len(got) == len(expected) > 0
    order_e = torch.argsort(expected.scores, descending=True, stable=True)
    order_g = torch.argsort(got.scores, descending=True, stable=True)
    torch.testing.assert_close(got.scores[order_g], expected.scores[order_e])
    torch.testing.assert_close(
        got.pred_boxes.tensor[order_g], expected.pred_boxes[order_e], rtol=1e-4, atol=1e-4
    )
    assert torch.equal(got.pred_classes[order_g], expected.pred_classes[order_e])

    # then a training step (it moves the BatchNorm statistics) from each library's mapper
    torch.manual_seed(1)
    records = DatasetCatalog.get("shapes_mini_train")[:2]  # two: BatchNorm on 1x1 maps
    d2_batch = [detectron2.data.DatasetMapper(d2_cfg, is_train=True)(r) for r in records]
    assert isinstance(d2_batch[0]["instances"].gt_boxes, Boxes)
    ours_batch = [DatasetMapper(ours_cfg, is_train=True)(r) for r in records]
    for model in (ours, theirs):
        model.train()
    ad2.declare_assigndet_trainer(theirs)  # this step stands in for AssigndetTrainer's
    if name == "CenterNet2":  # detectron2's GeneralizedRCNN logs to an event storage
        from detectron2.utils.events import EventStorage

        with EventStorage():
            d2_losses = theirs(d2_batch)
    else:
        d2_losses = theirs(d2_batch)
    from assigndet.utils.events import EventStorage as OurStorage

    with OurStorage():
        our_losses = ours(ours_batch)
    assert sorted(d2_losses) == sorted(our_losses)
    assert all(math.isfinite(float(v)) for v in d2_losses.values())


def test_official_centernet2_builds_as_detectron2s_generalized_rcnn(tmp_path):
    official = _module("tests/projects/centernet2/test_centernet_config.py")
    (tmp_path / "Base-CenterNet2.yaml").write_text(official.BASE_CENTERNET2)
    (tmp_path / "CenterNet2_R50_1x.yaml").write_text('_BASE_: "Base-CenterNet2.yaml"\n')
    cfg = detectron2.config.get_cfg()
    ad2.add_assigndet_config(cfg)
    cfg.merge_from_file(str(tmp_path / "CenterNet2_R50_1x.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    model = ad2.build_model(cfg)
    assert type(model) is detectron2.modeling.GeneralizedRCNN
    assert isinstance(model.backbone, detectron2.modeling.Backbone)
    ours = get_cfg()
    ours.merge_from_file(str(tmp_path / "CenterNet2_R50_1x.yaml"))
    ours.MODEL.DEVICE = "cpu"
    standalone = build_model(ours)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {
        k: tuple(v.shape) for k, v in standalone.state_dict().items()
    }


# ---- checkpoints ------------------------------------------------------------------------------


def test_checkpoints_cross_over(tmp_path):
    ours_cfg = _tiny("FCOS_PSS")
    d2_cfg = _d2_cfg(ours_cfg, tmp_path)
    torch.manual_seed(3)
    theirs = ad2.build_model(d2_cfg)
    (tmp_path / "d2").mkdir()
    D2Checkpointer(theirs, str(tmp_path / "d2")).save("model_final")
    ours_cfg.MODEL.WEIGHTS = str(tmp_path / "d2" / "model_final.pth")
    ours = build_model(ours_cfg)
    load_inference_weights(ours_cfg, ours)  # strict: no missing, unused or mismatched key
    for k, v in ours.state_dict().items():
        assert torch.equal(v, theirs.state_dict()[k]), k
    image = DatasetMapper(ours_cfg, is_train=False)(DatasetCatalog.get("shapes_mini_val")[0])
    inputs = [{"image": image["image"]}]
    with torch.no_grad():
        expected = theirs.eval()(inputs)[0]["instances"]
        got = ours.eval()(inputs)[0]["instances"]
    assert len(got) == len(expected) > 0
    assert torch.equal(got.pred_boxes, expected.pred_boxes.tensor)
    assert torch.equal(got.scores, expected.scores)

    torch.manual_seed(4)
    DetectionCheckpointer(build_model(ours_cfg), str(tmp_path / "ours")).save("model_final")
    back = ad2.build_model(d2_cfg)
    incompatible = D2Checkpointer(back).load(str(tmp_path / "ours" / "model_final.pth"))
    assert incompatible == {}  # nothing left over
    saved = torch.load(tmp_path / "ours" / "model_final.pth", weights_only=True)["model"]
    for k, v in back.state_dict().items():
        assert torch.equal(v, saved[k]), k


# ---- detectron2's DefaultTrainer --------------------------------------------------------------


def _train_detectron2():
    return _module("tools/train_detectron2.py")


def test_default_trainer_trains_and_evaluates_fcos_pss_on_shapes(tmp_path):
    script = _train_detectron2()
    opts = [str(x) for x in SMALL_INPUT] + [
        "SOLVER.MAX_ITER", "30", "SOLVER.IMS_PER_BATCH", "4", "SOLVER.WARMUP_ITERS", "5",
        "SOLVER.STEPS", "(25,)", "TEST.EVAL_PERIOD", "0",
    ]
    config = str(REPO / "configs/quickstart/fcos_pss_shapes.yaml")
    args = detectron2.engine.default_argument_parser().parse_args(
        ["--config-file", config, *opts, "OUTPUT_DIR", str(tmp_path / "d2")]
    )
    results = script.main(args)
    assert set(results["bbox"]) >= {"AP", "AP50"}
    # the standalone run of the same config and schedule lands within 2 AP
    standalone = _module("train_net.py").main(
        assigndet_argument_parser().parse_args(
            ["--config-file", config, *opts, "OUTPUT_DIR", str(tmp_path / "standalone")]
        )
    )
    assert abs(standalone["bbox"]["AP"] - results["bbox"]["AP"]) < 2.0
    assert (tmp_path / "d2" / "model_final.pth").is_file()
    # detectron2 wrote the shapes splits into its own DatasetCatalog from our generated json
    assert "shapes_mini_train" in detectron2.data.DatasetCatalog.list()
    assert detectron2.data.MetadataCatalog.get("shapes_mini_val").evaluator_type == "coco"

    args = detectron2.engine.default_argument_parser().parse_args(
        ["--config-file", config, "--eval-only", *opts, "OUTPUT_DIR", str(tmp_path / "eval"),
         "MODEL.WEIGHTS", str(tmp_path / "d2" / "model_final.pth")]
    )
    assert script.main(args)["bbox"]["AP"] == pytest.approx(results["bbox"]["AP"])


def test_sampling_free_prior_is_estimated_before_iteration_0(tmp_path, caplog):
    script = _train_detectron2()
    config = str(REPO / "configs/quickstart/fcos_sf_shapes.yaml")
    opts = [str(x) for x in SMALL_INPUT] + [
        "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "OUTPUT_DIR", str(tmp_path / "sf"),
        "MODEL.SAMPLING_FREE.PRIOR_NUM_IMAGES", "8", "TEST.EVAL_PERIOD", "0",
        "DATASETS.TEST", "()",
    ]
    args = detectron2.engine.default_argument_parser().parse_args(["--config-file", config, *opts])
    with caplog.at_level(logging.INFO):
        script.main(args)
    messages = [r.getMessage() for r in caplog.records]
    prior = next(i for i, m in enumerate(messages) if m.startswith("Sampling-Free prior of"))
    first_iteration = next(
        i for i, m in enumerate(messages) if m.startswith("Starting training from iteration 0")
    )
    assert prior < first_iteration


def test_plain_default_trainer_refuses_what_it_would_skip(tmp_path):
    ours_cfg = _tiny("FCOS")
    ours_cfg.SOLVER.OPTIMIZER = "ADAMW"
    d2_cfg = _d2_cfg(ours_cfg, tmp_path)
    model = ad2.build_model(d2_cfg).train()
    record = DatasetCatalog.get("shapes_mini_train")[0]
    batch = [detectron2.data.DatasetMapper(d2_cfg, is_train=True)(record)]
    with pytest.raises(RuntimeError, match="This config needs SOLVER.OPTIMIZER ADAMW, which "
                       "detectron2's DefaultTrainer does not do"):
        model(batch)


def test_benchmark_script_runs(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(_tiny("FCOS_PSS").dump())
    bench = _module("tools/bench_detectron2.py")
    result = bench.main(["--config-file", str(config), "--size", "64", "96", "--runs", "2",
                         "--threads", "1"])
    assert len(result["times"]["standalone"]) == len(result["times"]["detectron2"]) == 2
    assert result["ratio"] > 0 and 0 < result["conversion_share"] < 1
    assert "detectron2 / standalone:" in capsys.readouterr().out


def test_mixin_trains_deta_with_its_resize_crop_and_sets_bf16(tmp_path):
    ours_cfg = _tiny("DETA")
    ours_cfg.merge_from_list([
        "SOLVER.MAX_ITER", 1, "SOLVER.IMS_PER_BATCH", 2, "OUTPUT_DIR", str(tmp_path / "deta"),
        "INPUT.CROP.RESIZE_BEFORE", [48, 56], "INPUT.CROP.SIZE", [40, 48], "TEST.EVAL_PERIOD", 0,
        "DATASETS.TEST", (),
    ])
    assert ours_cfg.INPUT.CROP.ENABLED
    d2_cfg = _d2_cfg(ours_cfg, tmp_path)
    trainer = ad2.AssigndetTrainer(d2_cfg)
    batch = next(iter(trainer.data_loader))
    assert isinstance(batch[0]["instances"], Instances)  # assigndet's mapper: its crop policy
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert (tmp_path / "deta" / "model_final.pth").is_file()

    d2_cfg.defrost()
    d2_cfg.merge_from_list(["SOLVER.AMP.ENABLED", True, "SOLVER.AMP.PRECISION", "bfloat16"])
    assert ad2.AssigndetTrainer(d2_cfg)._trainer.precision == torch.bfloat16


def test_several_cpu_processes_are_refused_with_the_way_out():
    script = _train_detectron2()
    args = detectron2.engine.default_argument_parser().parse_args(["--num-gpus", "2"])
    if torch.cuda.is_available():
        pytest.skip("CUDA is present: detectron2 runs one process per GPU")
    with pytest.raises(SystemExit, match="detectron2's DefaultTrainer runs one process per GPU"):
        script.check_processes(args)
