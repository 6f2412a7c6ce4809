import json
import logging
import re

import pytest

from assigndet.utils.events import (
    CommonMetricPrinter,
    EventStorage,
    JSONWriter,
    TensorboardXWriter,
    get_event_storage,
)


def test_history_statistics():
    with EventStorage() as storage:
        for i, v in enumerate([1.0, 5.0, 2.0, 8.0]):
            storage.iter = i
            storage.put_scalar("loss", v)
        hist = storage.history("loss")
        assert hist.latest() == 8.0
        assert hist.median(3) == 5.0  # of 5, 2, 8
        assert hist.avg(2) == 5.0
        assert hist.global_avg() == 4.0
        assert storage.latest()["loss"] == (8.0, 3)
        assert storage.latest_with_smoothing_hint(3)["loss"] == (5.0, 3)


def test_put_scalars_name_scope_and_hint():
    with EventStorage(start_iter=7) as storage:
        assert get_event_storage() is storage
        with storage.name_scope("rpn"):
            storage.put_scalars(num_pos=3, num_neg=5)
        storage.put_scalar("lr", 0.1, smoothing_hint=False)
        assert storage.latest()["rpn/num_pos"] == (3.0, 7)
        assert storage.smoothing_hints() == {"rpn/num_pos": True, "rpn/num_neg": True, "lr": False}
        with pytest.raises(ValueError, match="'lr' was put with smoothing_hint=False"):
            storage.put_scalar("lr", 0.2)
        with pytest.raises(KeyError, match="No history metric available for 'nope'"):
            storage.history("nope")


def test_get_event_storage_outside_context():
    with pytest.raises(RuntimeError, match="inside a 'with EventStorage"):
        get_event_storage()


def test_json_writer_lines(tmp_path):
    path = tmp_path / "metrics.json"
    writer = JSONWriter(str(path), window_size=2)
    with EventStorage() as storage:
        for i in range(3):
            storage.iter = i
            storage.put_scalar("loss", float(i + 1))
            storage.put_scalar("lr", 0.5 * (i + 1), smoothing_hint=False)
        storage.put_scalar("bbox/AP", 42.0, smoothing_hint=False)
        writer.write()
        writer.write()  # nothing new: no line
        storage.iter = 3
        storage.put_scalar("loss", 10.0)
        writer.write()
    writer.close()
    lines = path.read_text().splitlines()
    # only the latest value of each name is known at write time: iteration 2 for all three
    assert lines[0] == '{"bbox/AP": 42.0, "iteration": 2, "loss": 2.5, "lr": 1.5}'
    assert json.loads(lines[1]) == {"iteration": 3, "loss": 6.5}  # median of (3, 10)
    assert len(lines) == 2
    # a new writer (a resumed run) appends
    writer = JSONWriter(str(path))
    with EventStorage(start_iter=4) as storage:
        storage.put_scalar("loss", 1.0)
        writer.write()
    writer.close()
    assert json.loads(path.read_text().splitlines()[2]) == {"iteration": 4, "loss": 1.0}


def test_common_metric_printer_line(caplog):
    printer = CommonMetricPrinter(max_iter=100, window_size=20)
    with EventStorage() as storage:
        for i in range(20):
            storage.iter = i
            storage.put_scalars(total_loss=2.1, loss_cls=0.8, data_time=0.02)
            storage.put_scalar("time", 0.41)
            storage.put_scalar("lr", 0.00039, smoothing_hint=False)
        with caplog.at_level(logging.INFO, logger="assigndet"):
            printer.write()
    line = caplog.records[-1].getMessage()
    pattern = (
        r"^ eta: 0:00:32  iter: 19  total_loss: 2\.1  loss_cls: 0\.8  time: 0\.4100  "
        r"data_time: 0\.0200  lr: 0\.00039  max_mem: \d+M$"
    )
    assert re.match(pattern, line), line
    assert storage.latest()["eta_seconds"][0] == pytest.approx(0.41 * 80)


def test_common_metric_printer_silent_after_training(caplog):
    printer = CommonMetricPrinter(max_iter=5)
    with EventStorage(start_iter=5) as storage:
        storage.put_scalar("total_loss", 1.0)
        with caplog.at_level(logging.INFO, logger="assigndet"):
            printer.write()
    assert not caplog.records


def test_tensorboard_writer(tmp_path, caplog):
    try:
        import torch.utils.tensorboard  # noqa: F401

        installed = True
    except ImportError:
        installed = False
    with caplog.at_level(logging.INFO, logger="assigndet"):
        writer = TensorboardXWriter(str(tmp_path))
    with EventStorage() as storage:
        storage.put_scalar("loss", 1.0)
        writer.write()
    writer.close()
    if installed:
        assert any(p.name.startswith("events.out.tfevents") for p in tmp_path.iterdir())
    else:
        assert "tensorboard is not installed" in caplog.text
        assert list(tmp_path.iterdir()) == []


def test_metrics_json_is_strict_json(tmp_path):
    path = tmp_path / "metrics.json"
    writer = JSONWriter(str(path))
    with EventStorage(start_iter=3) as storage:
        storage.put_scalar("loss_cls", float("nan"), smoothing_hint=False)
        storage.put_scalar("loss_box", float("inf"), smoothing_hint=False)
        storage.put_scalar("lr", 0.5, smoothing_hint=False)
        writer.write()
    writer.close()

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    records = [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]
    assert records == [{"iteration": 3, "loss_box": None, "loss_cls": None, "lr": 0.5}]
