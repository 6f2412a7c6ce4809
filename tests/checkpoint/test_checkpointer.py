"""DetectionCheckpointer: atomic saves, resume, .pth layouts and the report of what did not load."""

import logging
import os

import pytest
import torch

from assigndet.checkpoint import DetectionCheckpointer, PeriodicCheckpointer, atomic_write


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def _files(folder):
    return sorted(os.listdir(folder))


def test_save_load_roundtrip_with_optimizer_scheduler(tmp_path, make_resnet):
    model = make_resnet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3)
    model(torch.randn(1, 3, 32, 32))["res5"].sum().backward()
    optimizer.step()
    scheduler.step()
    ckpt = DetectionCheckpointer(model, str(tmp_path), optimizer=optimizer, scheduler=scheduler)
    ckpt.save("model_0000009", iteration=9)
    assert _files(tmp_path) == ["last_checkpoint", "model_0000009.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    saved = torch.load(tmp_path / "model_0000009.pth", weights_only=True)
    assert set(saved) == {"model", "optimizer", "scheduler", "iteration"}

    other = make_resnet()
    other_opt = torch.optim.SGD(other.parameters(), lr=0.1, momentum=0.9)
    other_sched = torch.optim.lr_scheduler.StepLR(other_opt, step_size=3)
    loader = DetectionCheckpointer(other, str(tmp_path), optimizer=other_opt, scheduler=other_sched)
    assert loader.has_checkpoint()
    assert loader.get_checkpoint_file() == os.path.join(str(tmp_path), "model_0000009.pth")
    extra = loader.resume_or_load("ignored-when-resuming.pth", resume=True)
    assert extra == {"iteration": 9}
    assert _same_weights(model, other)
    assert other_sched.last_epoch == 1
    assert other_opt.state_dict()["state"][0]["momentum_buffer"].equal(
        optimizer.state_dict()["state"][0]["momentum_buffer"]
    )
    assert not loader.incompatible_keys


def test_resume_false_loads_only_model(tmp_path, make_resnet):
    model = make_resnet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    DetectionCheckpointer(model, str(tmp_path), optimizer=optimizer).save("a", iteration=3)
    other = make_resnet()
    other_opt = torch.optim.SGD(other.parameters(), lr=0.01)
    ckpt = DetectionCheckpointer(other, str(tmp_path), optimizer=other_opt)
    extra = ckpt.resume_or_load(str(tmp_path / "a.pth"), resume=False)
    assert _same_weights(model, other)
    assert other_opt.param_groups[0]["lr"] == 0.01
    assert extra["iteration"] == 3 and "optimizer" in extra


def test_empty_path_loads_nothing(make_resnet):
    assert DetectionCheckpointer(make_resnet()).load("") == {}


def test_missing_file_names_path_and_key(tmp_path, make_resnet):
    ckpt = DetectionCheckpointer(make_resnet(), str(tmp_path / "out"))
    missing = str(tmp_path / "nope" / "model_final.pth")
    with pytest.raises(FileNotFoundError, match=f"not found: '{missing}'"):
        ckpt.load(missing)
    with pytest.raises(FileNotFoundError, match="model_final.pth.*MODEL.WEIGHTS"):
        ckpt.resume_or_load(missing, resume=True)  # no last_checkpoint: falls back to the path


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("simulated crash while writing")


class _BrokenStateDict:
    def state_dict(self):
        raise RuntimeError("simulated crash in state_dict")

    def load_state_dict(self, state):
        pass


def test_atomic_save_keeps_previous_checkpoint(tmp_path, make_resnet):
    model = make_resnet()
    ckpt = DetectionCheckpointer(model, str(tmp_path))
    ckpt.save("model_final", iteration=1)
    before = (tmp_path / "model_final.pth").read_bytes()

    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    # The crash comes after the temporary file was created and the model serialised.
    with pytest.raises(RuntimeError, match="simulated crash while writing"):
        ckpt.save("model_final", iteration=2, bad=_Unpicklable())
    assert (tmp_path / "model_final.pth").read_bytes() == before
    assert _files(tmp_path) == ["last_checkpoint", "model_final.pth"]

    ckpt.add_checkpointable("broken", _BrokenStateDict())
    with pytest.raises(RuntimeError, match="simulated crash in state_dict"):
        ckpt.save("model_final", iteration=3)
    assert (tmp_path / "model_final.pth").read_bytes() == before
    assert _files(tmp_path) == ["last_checkpoint", "model_final.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"


def test_atomic_write_failure_leaves_no_temp_file(tmp_path):
    target = tmp_path / "last_checkpoint"
    atomic_write(str(target), lambda f: f.write("model_a.pth"), binary=False)

    def crash(f):
        f.write("model_b")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(str(target), crash, binary=False)
    assert target.read_text() == "model_a.pth"
    assert _files(tmp_path) == ["last_checkpoint"]


def test_save_to_disk_false_and_periodic(tmp_path, make_resnet):
    model = make_resnet()
    DetectionCheckpointer(model, str(tmp_path / "off"), save_to_disk=False).save("x")
    assert not (tmp_path / "off").exists()
    ckpt = DetectionCheckpointer(model, str(tmp_path))
    periodic = PeriodicCheckpointer(ckpt, period=2, max_iter=4, max_to_keep=1)
    for it in range(4):
        periodic.step(it)
    assert _files(tmp_path) == ["last_checkpoint", "model_0000003.pth", "model_final.pth"]
    assert torch.load(tmp_path / "model_final.pth", weights_only=True)["iteration"] == 3


def test_detectron2_v05_layout_and_bare_and_ddp_state_dicts(tmp_path, make_resnet):
    model = make_resnet()
    sd = model.state_dict()
    trainer_state = {"iteration": 7, "hooks": {"LRScheduler": {"base_lrs": [0.01]}}}
    torch.save({"model": sd, "trainer": trainer_state, "iteration": 7}, tmp_path / "d2.pth")
    torch.save(sd, tmp_path / "bare.pth")
    torch.save({"model": {"module." + k: v for k, v in sd.items()}}, tmp_path / "ddp.pth")
    for name in ["d2.pth", "bare.pth", "ddp.pth"]:
        other = make_resnet()
        ckpt = DetectionCheckpointer(other)
        extra = ckpt.load(str(tmp_path / name))
        assert _same_weights(model, other), name
        assert not ckpt.incompatible_keys, name
        if name == "d2.pth":
            assert extra == {"trainer": trainer_state, "iteration": 7}


def test_report_missing_unexpected_and_shape_mismatch(tmp_path, make_resnet, caplog):
    model = make_resnet()
    sd = dict(model.state_dict())
    sd["res3.0.conv1.weight"] = torch.zeros(5, 5, 1, 1)
    sd["extra_head.weight"] = torch.zeros(3)
    sd["extra_head.bias"] = torch.zeros(3)
    del sd["res2.0.conv1.norm.bias"]
    torch.save({"model": sd}, tmp_path / "partial.pth")

    target = make_resnet()
    kept = target.state_dict()["res3.0.conv1.weight"].clone()
    ckpt = DetectionCheckpointer(target)
    with caplog.at_level(logging.WARNING, logger="assigndet.checkpoint"):
        ckpt.load(str(tmp_path / "partial.pth"))
    report = ckpt.incompatible_keys
    assert report.missing_keys == ["res2.0.conv1.norm.bias"]
    assert report.unexpected_keys == ["extra_head.bias", "extra_head.weight"]
    assert report.incorrect_shapes == [("res3.0.conv1.weight", (5, 5, 1, 1), (16, 32, 1, 1))]
    assert torch.equal(target.state_dict()["res3.0.conv1.weight"], kept)

    lines = caplog.text.splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert table[0].split("|")[1].strip() == "Problem"
    rows = {tuple(c.strip() for c in line.split("|")[1:-1]) for line in table[2:]}
    assert rows == {
        ("shape mismatch (not loaded)", "res3.0.conv1.weight", "(5, 5, 1, 1)", "(16, 32, 1, 1)"),
        ("missing in checkpoint", "res2.0.conv1.norm.bias", "", ""),
        ("unused from checkpoint", "extra_head.{bias, weight}", "", ""),
    }


def test_non_tensor_entries_are_rejected(tmp_path, make_resnet):
    torch.save({"model": {"stem.conv1.weight": [1, 2, 3]}}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="'stem.conv1.weight' is a list, expected a tensor"):
        DetectionCheckpointer(make_resnet()).load(str(tmp_path / "bad.pth"))
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="list.pth: expected a state dict"):
        DetectionCheckpointer(make_resnet()).load(str(tmp_path / "list.pth"))
