import importlib.util
import os

import pytest

from assigndet.checkpoint import DetectionCheckpointer
from assigndet.config import load_config
from assigndet.modeling import build_model

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MINI = ["DATASETS.TEST", "('shapes_mini_val',)", "INPUT.MIN_SIZE_TEST", "64",
        "INPUT.MAX_SIZE_TEST", "96"]


def _report_tool():
    path = os.path.join(REPO_ROOT, "tools", "nms_free_report.py")
    spec = importlib.util.spec_from_file_location("nms_free_report", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name, modes", [
    ("fcos_pss_shapes", ["end-to-end, no NMS", "one-to-many + NMS"]),
    ("fcos_shapes", ["with NMS", "without NMS"]),
])
def test_report_evaluates_both_modes(tmp_path, capsys, name, modes):
    config = os.path.join(REPO_ROOT, "configs", "quickstart", f"{name}.yaml")
    model = build_model(load_config(config, MINI))
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("untrained")
    weights = str(tmp_path / "untrained.pth")
    report = _report_tool().main(["--config-file", config, "--runs", "1", "--num-images", "2",
                                  *MINI, "MODEL.WEIGHTS", weights])
    assert list(report) == modes
    for values in report.values():
        assert 0.0 <= values["AP"] <= 100.0 and 0.0 <= values["duplicate rate (%)"] <= 100.0
        assert values["network ms"] > 0 and values["post-processing ms"] >= 0
    assert "duplicate rate (%)" in capsys.readouterr().out


def test_report_rejects_other_models_and_missing_weights():
    tool = _report_tool()
    config = os.path.join(REPO_ROOT, "configs", "quickstart", "fcos_shapes.yaml")
    with pytest.raises(ValueError, match="Set MODEL.WEIGHTS"):
        tool.main(["--config-file", config, *MINI])
    with pytest.raises(ValueError, match="this report covers"):
        tool.main(["--config-file", config, "MODEL.META_ARCHITECTURE", "GeneralizedRCNN"])
