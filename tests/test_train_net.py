"""train_net.py as users run it: a subprocess with detectron2's command line."""

import os
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, tmp_path):
    env = dict(os.environ, ASSIGNDET_DATASETS=str(tmp_path / "datasets"))
    return subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "train_net.py"), *args],
        capture_output=True, text=True, timeout=120, cwd=str(tmp_path), env=env,
    )


def test_eval_only_with_missing_weights(tmp_path):
    missing = str(tmp_path / "missing_model.pth")
    proc = _run(["--eval-only", "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path / "out"),
                 "MODEL.WEIGHTS", missing], tmp_path)
    assert proc.returncode != 0
    assert f"FileNotFoundError: Weights file {missing} given by MODEL.WEIGHTS does not exist" \
        in proc.stderr
    assert (tmp_path / "out" / "config.yaml").is_file()


def test_unregistered_meta_architecture(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("MODEL:\n  META_ARCHITECTURE: NoSuchDetector\n  DEVICE: cpu\n")
    proc = _run(["--config-file", str(config), "OUTPUT_DIR", str(tmp_path / "out")], tmp_path)
    assert proc.returncode != 0
    assert "MODEL.META_ARCHITECTURE = 'NoSuchDetector' is not a registered meta-architecture" \
        in proc.stderr


def test_unknown_key_on_command_line(tmp_path):
    proc = _run(["SOLVER.BASE_LRR", "0.1"], tmp_path)
    assert proc.returncode != 0
    assert "SOLVER.BASE_LRR" in proc.stderr
