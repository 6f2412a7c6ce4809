import importlib.util
import json
import logging
import math
import os

import pytest
import torch
from toy_detector import ToyDetector, register_tiny_shapes, toy_cfg

from assigndet.config import get_cfg
from assigndet.engine import DefaultTrainer, HookBase, default_argument_parser

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class RecordLR(HookBase):
    def __init__(self, stop_at=None):
        self.lrs = {}
        self.stop_at = stop_at

    def before_step(self):
        self.lrs[self.trainer.iter] = self.trainer.optimizer.param_groups[0]["lr"]

    def after_step(self):
        if self.trainer.iter == self.stop_at:
            raise KeyboardInterrupt("interrupted")


def test_auto_scale_workers():
    cfg = get_cfg()
    cfg.SOLVER.merge_from_list(
        ["REFERENCE_WORLD_SIZE", 8, "IMS_PER_BATCH", 16, "BASE_LR", 0.02, "MAX_ITER", 90000,
         "WARMUP_ITERS", 1000, "STEPS", (60000, 80000), "CHECKPOINT_PERIOD", 5000]
    )
    cfg.TEST.EVAL_PERIOD = 10000
    cfg.freeze()
    scaled = DefaultTrainer.auto_scale_workers(cfg, 2)  # k = 1/4
    assert scaled.SOLVER.IMS_PER_BATCH == 4
    assert scaled.SOLVER.BASE_LR == pytest.approx(0.005)
    assert scaled.SOLVER.MAX_ITER == 360000
    assert scaled.SOLVER.WARMUP_ITERS == 4000
    assert scaled.SOLVER.STEPS == (240000, 320000)
    assert scaled.SOLVER.CHECKPOINT_PERIOD == 20000
    assert scaled.TEST.EVAL_PERIOD == 40000
    assert scaled.SOLVER.REFERENCE_WORLD_SIZE == 2
    assert scaled.is_frozen() and cfg.SOLVER.IMS_PER_BATCH == 16  # the input is untouched
    assert DefaultTrainer.auto_scale_workers(cfg, 8) is cfg
    up = DefaultTrainer.auto_scale_workers(cfg, 16)  # k = 2
    assert (up.SOLVER.IMS_PER_BATCH, up.SOLVER.MAX_ITER, up.SOLVER.STEPS) == (32, 45000,
                                                                              (30000, 40000))
    cfg2 = cfg.clone()
    cfg2.defrost()
    cfg2.SOLVER.IMS_PER_BATCH = 12
    with pytest.raises(ValueError, match="IMS_PER_BATCH=12 must be divisible by"):
        DefaultTrainer.auto_scale_workers(cfg2, 2)


def test_argument_parser(capsys):
    args = default_argument_parser().parse_args(
        ["--config-file", "a.yaml", "--num-gpus", "2", "--resume", "SOLVER.BASE_LR", "0.1",
         "SEED", "-1"]
    )
    assert args.config_file == "a.yaml" and args.num_gpus == 2 and args.resume
    assert args.opts == ["SOLVER.BASE_LR", "0.1", "SEED", "-1"]
    assert args.dist_url.startswith("tcp://127.0.0.1:")
    assert 49152 <= int(args.dist_url.rsplit(":", 1)[1]) <= 65535


def test_train_writes_outputs_and_evaluates(tmp_path, datasets, caplog):
    cfg = toy_cfg(str(tmp_path / "out"), *datasets)
    trainer = DefaultTrainer(cfg)
    trainer.resume_or_load(resume=False)
    with caplog.at_level(logging.INFO):
        results = trainer.train()
    out = tmp_path / "out"
    for name in ("model_0000002.pth", "model_0000005.pth", "model_final.pth", "last_checkpoint",
                 "metrics.json"):
        assert (out / name).is_file(), name
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    assert torch.load(out / "model_0000002.pth", weights_only=False)["iteration"] == 2
    lines = [json.loads(x) for x in (out / "metrics.json").read_text().splitlines()]
    # the last training iteration, then the final evaluation (stamped max_iter, as detectron2)
    assert [m["iteration"] for m in lines] == [5, 6]
    for key in ("total_loss", "loss_cls", "loss_box", "lr", "time", "data_time", "eta_seconds"):
        assert key in lines[0], key
    assert lines[0]["lr"] == pytest.approx(0.005)  # after the step at 4
    assert sorted(lines[1]) == ["bbox/AP", "bbox/AP-circle", "bbox/AP-cross", "bbox/AP-square",
                                "bbox/AP-star", "bbox/AP-triangle", "bbox/AP50", "bbox/AP75",
                                "bbox/APl", "bbox/APm", "bbox/APs", "iteration"]
    assert lines[1]["bbox/AP"] == pytest.approx(results["bbox"]["AP"])
    assert math.isfinite(results["bbox"]["AP"])
    assert (out / "inference" / "coco_instances_results.json").is_file()
    console = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(" eta: ") and "iter: 5" in m and "max_mem:" in m for m in console)
    assert f"Evaluation results for {datasets[1]} in csv format:" in console
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in console


def test_resume_continues_lr_curve(tmp_path, datasets):
    full = RecordLR()
    trainer = DefaultTrainer(toy_cfg(str(tmp_path / "full"), *datasets))
    trainer.register_hooks([full])
    trainer.train()

    out = str(tmp_path / "interrupted")
    stop = RecordLR(stop_at=4)
    trainer = DefaultTrainer(toy_cfg(out, *datasets))
    trainer.register_hooks([stop])
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert not os.path.exists(os.path.join(out, "model_final.pth"))

    resumed = RecordLR()
    trainer = DefaultTrainer(toy_cfg(out, *datasets, **{"MODEL.WEIGHTS": "/does/not/matter.pth"}))
    trainer.resume_or_load(resume=True)  # last_checkpoint wins over MODEL.WEIGHTS
    assert trainer.start_iter == 3
    assert len(trainer.optimizer.state) > 0  # momentum buffers restored
    trainer.register_hooks([resumed])
    trainer.train()
    assert sorted(resumed.lrs) == [3, 4, 5]
    for it in (3, 4, 5):
        assert resumed.lrs[it] == pytest.approx(full.lrs[it])
    metrics = [json.loads(x) for x in open(os.path.join(out, "metrics.json")).read().splitlines()]
    # the interrupted run wrote iteration 4; the resumed one appended 5 and its evaluation
    assert [m["iteration"] for m in metrics] == [4, 5, 6]


def test_missing_weights_and_nan(tmp_path, datasets):
    missing = str(tmp_path / "missing.pth")
    trainer = DefaultTrainer(toy_cfg(str(tmp_path / "a"), *datasets, **{"MODEL.WEIGHTS": missing}))
    with pytest.raises(FileNotFoundError, match=f"{missing} given by MODEL.WEIGHTS does not exist"):
        trainer.resume_or_load(resume=False)

    ToyDetector.nan_at_iter = 2
    try:
        trainer = DefaultTrainer(toy_cfg(str(tmp_path / "b"), *datasets))
        expected = r"iteration=2: total_loss=nan; .*loss_box=nan"
        with pytest.raises(FloatingPointError, match=expected):
            trainer.train()
    finally:
        ToyDetector.nan_at_iter = None
    assert not os.path.exists(tmp_path / "b" / "model_final.pth")


def test_unregistered_meta_architecture(tmp_path, datasets):
    cfg = toy_cfg(str(tmp_path), *datasets, **{"MODEL.META_ARCHITECTURE": "NoSuchDetector"})
    with pytest.raises(KeyError, match="'NoSuchDetector' is not a registered meta-architecture"):
        DefaultTrainer(cfg)


def _load_train_net():
    path = os.path.join(REPO_ROOT, "train_net.py")
    spec = importlib.util.spec_from_file_location("train_net", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_net_main_then_eval_only(tmp_path, datasets, caplog):
    train_net = _load_train_net()
    out = tmp_path / "cli"
    opts = ["MODEL.META_ARCHITECTURE", "ToyDetector", "MODEL.DEVICE", "cpu",
            "MODEL.ROI_HEADS.NUM_CLASSES", "5", "DATASETS.TRAIN", f"('{datasets[0]}',)",
            "DATASETS.TEST", f"('{datasets[1]}',)", "DATALOADER.NUM_WORKERS", "0",
            "INPUT.MIN_SIZE_TRAIN", "(48,)", "INPUT.MAX_SIZE_TRAIN", "80",
            "INPUT.MIN_SIZE_TEST", "48", "INPUT.MAX_SIZE_TEST", "80", "SOLVER.IMS_PER_BATCH", "2",
            "SOLVER.MAX_ITER", "4", "SOLVER.STEPS", "(3,)", "SOLVER.WARMUP_ITERS", "1",
            "SOLVER.BASE_LR", "0.05", "SEED", "3", "OUTPUT_DIR", str(out)]
    train_results = train_net.main(default_argument_parser().parse_args(opts))
    assert (out / "config.yaml").is_file() and (out / "log.txt").is_file()
    saved = get_cfg()
    saved.merge_from_file(str(out / "config.yaml"))
    assert saved.SOLVER.MAX_ITER == 4 and saved.MODEL.META_ARCHITECTURE == "ToyDetector"
    assert "Running with full config" in (out / "log.txt").read_text()

    args = default_argument_parser().parse_args(
        ["--eval-only"] + opts + ["MODEL.WEIGHTS", str(out / "model_final.pth")]
    )
    eval_results = train_net.main(args)
    assert eval_results["bbox"]["AP"] == pytest.approx(train_results["bbox"]["AP"])

    args = default_argument_parser().parse_args(
        ["--eval-only"] + opts + ["MODEL.WEIGHTS", str(tmp_path / "nope.pth")]
    )
    with pytest.raises(FileNotFoundError, match="nope.pth given by MODEL.WEIGHTS does not exist"):
        train_net.main(args)


def _two_rank_training(root: str, names: tuple[str, str], output_dir: str) -> None:
    from assigndet.utils import comm

    register_tiny_shapes(root, names)
    trainer = DefaultTrainer(toy_cfg(output_dir, *names))
    assert comm.get_world_size() == 2
    assert isinstance(trainer.model, torch.nn.parallel.DistributedDataParallel)
    results = trainer.train()
    if comm.is_main_process():
        with open(os.path.join(output_dir, "results.json"), "w") as f:
            json.dump(results, f)
    else:
        assert results == {}


@pytest.mark.slow
def test_two_processes_train_and_evaluate_like_one(tmp_path):
    """Two gloo ranks train (batch 1 each) and evaluate; one process re-evaluating the saved
    weights gets the same AP."""
    from assigndet.engine import launch

    root = str(tmp_path / "shapes")
    names = ("ddp_shapes_train", "ddp_shapes_val")
    out = str(tmp_path / "ddp")
    launch(_two_rank_training, 2, dist_url="auto", args=(root, names, out))
    two_ranks = json.load(open(os.path.join(out, "results.json")))
    metrics = [json.loads(x) for x in open(os.path.join(out, "metrics.json")).read().splitlines()]
    assert metrics[-1]["bbox/AP"] == pytest.approx(two_ranks["bbox"]["AP"])

    register_tiny_shapes(root, names)
    cfg = toy_cfg(str(tmp_path / "single"), *names,
                  **{"MODEL.WEIGHTS": os.path.join(out, "model_final.pth")})
    model = DefaultTrainer.build_model(cfg)
    from assigndet.checkpoint import DetectionCheckpointer

    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    one = DefaultTrainer.test(cfg, model)
    for key, value in one["bbox"].items():
        got = two_ranks["bbox"][key]
        assert (math.isnan(value) and math.isnan(got)) or got == pytest.approx(value), key
