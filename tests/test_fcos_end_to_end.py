"""FCOS through the whole library: train on generated shapes, evaluate, reload, resume, two ranks.

The runs use the quickstart config on the small ``shapes_mini_*`` splits (64-96 px images), so
each stays within seconds to a minute on two CPU cores.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from assigndet.config import load_config
from assigndet.engine import DefaultTrainer, HookBase, default_argument_parser

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO_ROOT, "configs", "quickstart", "fcos_shapes.yaml")


def mini_opts(output_dir, max_iter: int, **overrides) -> list[str]:
    opts = {
        "DATASETS.TRAIN": "('shapes_mini_train',)",
        "DATASETS.TEST": "('shapes_mini_val',)",
        "INPUT.MIN_SIZE_TRAIN": "(64, 80, 96)",
        "INPUT.MAX_SIZE_TRAIN": "160",
        "INPUT.MIN_SIZE_TEST": "80",
        "INPUT.MAX_SIZE_TEST": "160",
        "DATALOADER.NUM_WORKERS": "0",
        "SOLVER.IMS_PER_BATCH": "8",
        "SOLVER.MAX_ITER": str(max_iter),
        "SOLVER.STEPS": f"({int(max_iter * 0.8)},)",
        "SOLVER.WARMUP_ITERS": str(min(20, max_iter // 2)),
        "OUTPUT_DIR": str(output_dir),
    }
    opts.update({k: str(v) for k, v in overrides.items()})
    return [x for kv in opts.items() for x in kv]


def _metrics(output_dir) -> list[dict]:
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f]


def _load_train_net():
    path = os.path.join(REPO_ROOT, "train_net.py")
    spec = importlib.util.spec_from_file_location("train_net", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_training_learns_and_eval_only_reproduces(tmp_path):
    out = tmp_path / "train"
    cfg = load_config(CONFIG, mini_opts(out, 200, **{"SOLVER.CHECKPOINT_PERIOD": 100000}))
    untrained = DefaultTrainer.test(cfg, DefaultTrainer.build_model(cfg))["bbox"]["AP"]

    train_net = _load_train_net()
    args = default_argument_parser().parse_args(["--config-file", CONFIG, *mini_opts(out, 200)])
    trained = train_net.main(args)["bbox"]["AP"]

    losses = [m["total_loss"] for m in _metrics(out) if "total_loss" in m]
    assert losses[-1] < 0.75 * losses[0]  # the first entry is the mean of iterations 0-19
    # 64 training images of 64-96 px and 200 iterations: AP ~8 on unseen images, from ~0
    assert untrained < 1.0
    assert trained > untrained + 5.0, (untrained, trained)

    args = default_argument_parser().parse_args(
        ["--config-file", CONFIG, "--eval-only",
         *mini_opts(tmp_path / "eval", 200, **{"MODEL.WEIGHTS": out / "model_final.pth"})]
    )
    assert train_net.main(args)["bbox"]["AP"] == pytest.approx(trained, abs=1e-9)


class _StopAt(HookBase):
    """Interrupts training after iteration ``stop_at``, as a killed job would; records the lr."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.stop_at = stop_at
        self.lrs: dict[int, float] = {}

    def after_step(self) -> None:
        it = self.trainer.iter
        self.lrs[it] = self.trainer.optimizer.param_groups[0]["lr"]
        if it == self.stop_at:
            raise KeyboardInterrupt


def test_resume_continues_from_the_saved_iteration(tmp_path):
    def run(out, stop_at=None, resume=False):
        cfg = load_config(CONFIG, mini_opts(out, 12, **{"SOLVER.CHECKPOINT_PERIOD": 5,
                                                        "SOLVER.STEPS": "(6, 9)",
                                                        "SOLVER.WARMUP_ITERS": 3,
                                                        "TEST.EVAL_PERIOD": 0,
                                                        "DATASETS.TEST": "()"}))
        trainer = DefaultTrainer(cfg)
        trainer.resume_or_load(resume=resume)
        hook = _StopAt(stop_at)
        trainer.register_hooks([hook])
        if stop_at is None:
            trainer.train()
        else:
            with pytest.raises(KeyboardInterrupt):
                trainer.train()
        return trainer, hook

    _, full = run(tmp_path / "full")
    _, _ = run(tmp_path / "cut", stop_at=7)
    assert (tmp_path / "cut" / "last_checkpoint").read_text() == "model_0000004.pth"
    trainer, resumed = run(tmp_path / "cut", resume=True)
    assert trainer.start_iter == 5
    assert sorted(resumed.lrs) == list(range(5, 12))
    for it, lr in resumed.lrs.items():
        assert lr == pytest.approx(full.lrs[it]), it
    a = torch.load(tmp_path / "full" / "model_final.pth", weights_only=False)["model"]
    b = torch.load(tmp_path / "cut" / "model_final.pth", weights_only=False)["model"]
    assert a.keys() == b.keys()


def _copypaste_values(log: str) -> list[str]:
    """The value lines that follow detectron2's ``copypaste: AP,AP50,...`` header lines."""
    lines = [line.split("copypaste: ", 1)[1] for line in log.splitlines() if "copypaste: " in line]
    return [v for h, v in zip(lines, lines[1:]) if h.startswith("AP,")]


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process(tmp_path):
    """``train_net.py --num-gpus 2`` on CPU trains and evaluates with both ranks; one process
    evaluating the saved weights gets the same detections and the same AP."""
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def train_net(*args):
        proc = subprocess.run(
            [sys.executable, os.path.join(REPO_ROOT, "train_net.py"), "--config-file", CONFIG,
             *args],
            capture_output=True, text=True, timeout=600, cwd=str(tmp_path), env=env,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout + proc.stderr

    two_out, one_out = tmp_path / "two", tmp_path / "one"
    two_log = train_net("--num-gpus", "2", "--dist-url", "auto", *mini_opts(two_out, 30))
    assert "Rank of current process: 1. World size: 2" in (two_out / "log.txt.rank1").read_text()
    weights = two_out / "model_final.pth"
    one_log = train_net("--eval-only", *mini_opts(one_out, 30, **{"MODEL.WEIGHTS": weights}))

    def detections(folder):
        with open(folder / "inference" / "coco_instances_results.json") as f:
            found = json.load(f)
        return sorted((d["image_id"], d["category_id"], round(d["score"], 4)) for d in found)

    assert len(detections(two_out)) > 0
    assert detections(one_out) == detections(two_out)
    two_ap, one_ap = _copypaste_values(two_log), _copypaste_values(one_log)
    assert len(two_ap) == len(one_ap) == 1
    assert one_ap == two_ap
