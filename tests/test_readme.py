"""The README's examples, run as written: the Python predictor and "Train on your own data"."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from assigndet.checkpoint import DetectionCheckpointer
from assigndet.config import load_config
from assigndet.data import DatasetCatalog, generate_shapes_dataset
from assigndet.data.datasets import datasets_root
from assigndet.modeling import build_model

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _indented_block_after(marker: str) -> str:
    """The first indented block after the line starting with ``marker``."""
    lines = README[README.index(marker) :].splitlines()[1:]
    start = next(i for i, line in enumerate(lines) if line.startswith("    "))
    block = []
    for line in lines[start:]:
        if line and not line.startswith("    "):
            break
        block.append(line)
    return textwrap.dedent("\n".join(block)).strip()


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A working directory laid out as the repository's: configs/ and datasets/ beside."""
    (tmp_path / "configs").symlink_to(REPO / "configs")
    (tmp_path / "datasets").symlink_to(os.path.abspath(datasets_root()))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_python_example_predicts_with_the_weights_it_loads(workdir, capsys):
    example = _indented_block_after("From Python")
    assert "DefaultPredictor(cfg)" in example and "MODEL.WEIGHTS" in example
    DatasetCatalog.get("shapes_val")  # generates the images the example reads
    cfg = load_config("configs/quickstart/fcos_shapes.yaml", ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    counts = []
    for bias in (None, 2.0):  # at its 1 % prior FCOS finds nothing; with this bias it does
        if bias is not None:
            with torch.no_grad():
                model.head.cls_logits.bias.fill_(bias)
        DetectionCheckpointer(model, "output/demo").save("model_final")
        exec(compile(example, "README.md", "exec"), {})
        printed = capsys.readouterr().out
        assert " detections: " in printed
        counts.append(int(printed.split()[0]))
    assert counts[0] == 0 and counts[1] > 0, counts


def _own_data(root: Path, num_classes: int) -> None:
    """``mydata/`` as the README lays it out: a generated COCO json of ``num_classes`` classes
    per split, with its images."""
    images = root / "mydata" / "images"
    images.mkdir(parents=True)
    for split, seed in (("train", 1), ("val", 2)):
        json_file, image_root = generate_shapes_dataset(
            str(root / "generated"), split, 6, seed, min_short=48, max_short=64, min_size=8.0,
            empty_prob=0.0,
        )
        data = json.loads(Path(json_file).read_text())
        data["categories"] = [c for c in data["categories"] if c["id"] <= num_classes]
        data["annotations"] = [a for a in data["annotations"] if a["category_id"] <= num_classes]
        for image in data["images"]:
            name = f"{split}_{image['file_name']}"
            shutil.copy(os.path.join(image_root, image["file_name"]), images / name)
            image["file_name"] = name
        annotations = root / "mydata" / "annotations" / f"{split}.json"
        annotations.parent.mkdir(parents=True, exist_ok=True)
        annotations.write_text(json.dumps(data))


def _documented_command() -> list[str]:
    section = README[README.index("## Train on your own data") :]
    block = _indented_block_after("Name the dataset in the config as")
    assert section.index("Name the dataset in the config as") < section.index("## Datasets")
    return shlex.split(block.replace("\\\n", " "))


QUICK = [  # the documented command, shortened to 10 iterations on small images
    "SOLVER.MAX_ITER", "10", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "2",
    "SOLVER.STEPS", "(8,)", "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "96",
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96", "DATALOADER.NUM_WORKERS", "0",
]


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, *command[1:]], capture_output=True, text=True, timeout=600, cwd=cwd,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_train_on_your_own_data_as_documented(workdir):
    command = _documented_command()
    assert command[:2] == ["python", "train_net.py"]
    (workdir / "train_net.py").symlink_to(REPO / "train_net.py")
    _own_data(workdir, num_classes=3)

    proc = _run(command + QUICK, workdir)
    log = proc.stdout + proc.stderr
    out = workdir / "output" / "mydata"
    assert load_config(str(out / "config.yaml")).MODEL.FCOS.NUM_CLASSES == 3
    assert (out / "model_final.pth").is_file()
    records = [json.loads(line) for line in open(out / "metrics.json")]
    assert max(r["iteration"] for r in records if "total_loss" in r) == 9
    assert re.search(r"copypaste: AP,AP50", log)  # evaluated on the val json

    # the same names in the two processes of --num-gpus 2, with the trained weights
    flags = ["--num-gpus", "2", "--dist-url", "auto", "--eval-only"]
    proc = _run(
        command[:4] + flags + command[4:] + QUICK
        + ["MODEL.WEIGHTS", str(out / "model_final.pth"), "OUTPUT_DIR", str(workdir / "eval")],
        workdir,
    )
    assert re.search(r"copypaste: AP,AP50", proc.stdout + proc.stderr)
