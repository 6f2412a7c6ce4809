import logging

import pytest
import torch
from torch import nn

from assigndet.engine import AMPTrainer, HookBase, SimpleTrainer
from assigndet.utils.events import get_event_storage


class Regressor(nn.Module):
    """y = w * x; returns two loss terms; the loss is NaN at iteration ``nan_at``."""

    def __init__(self, nan_at: int | None = None):
        super().__init__()
        self.w = nn.Linear(2, 1)
        self.nan_at = nan_at

    def forward(self, batch):
        x, y = batch
        err = self.w(x).squeeze(1) - y
        loss_a = (err**2).mean()
        loss_b = 0.1 * err.abs().mean()
        if get_event_storage().iter == self.nan_at:
            loss_b = loss_b * float("nan")
        return {"loss_a": loss_a, "loss_b": loss_b}


def _batches():
    g = torch.Generator().manual_seed(0)
    while True:
        x = torch.randn(8, 2, generator=g)
        yield x, x @ torch.tensor([1.5, -2.0]) + 0.5


class Recorder(HookBase):
    def __init__(self, log, name, fail_at=None):
        self.log, self.name, self.fail_at = log, name, fail_at

    def before_train(self):
        self.log.append((self.name, "before_train"))

    def before_step(self):
        self.log.append((self.name, "before_step", self.trainer.iter))

    def after_backward(self):
        grad = self.trainer.model.w.weight.grad
        self.log.append((self.name, "after_backward", grad is not None))

    def after_step(self):
        self.log.append((self.name, "after_step", self.trainer.iter))
        if self.trainer.iter == self.fail_at:
            raise RuntimeError("stop here")

    def after_train(self):
        self.log.append((self.name, "after_train", self.trainer.iter))


def _trainer(model=None, cls=SimpleTrainer, **kwargs):
    model = model or Regressor()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    return cls(model, _batches(), opt, **kwargs)


def test_hook_order_and_loss_decreases():
    log = []
    trainer = _trainer()
    trainer.register_hooks([Recorder(log, "a"), None, Recorder(log, "b")])
    trainer.train(0, 30)
    assert log[:8] == [
        ("a", "before_train"), ("b", "before_train"),
        ("a", "before_step", 0), ("b", "before_step", 0),
        ("a", "after_backward", True), ("b", "after_backward", True),
        ("a", "after_step", 0), ("b", "after_step", 0),
    ]
    assert log[-2:] == [("a", "after_train", 30), ("b", "after_train", 30)]
    hist = trainer.storage.history("total_loss").values()
    assert [it for _, it in hist] == list(range(30))
    assert hist[-1][0] < 0.1 * hist[0][0]
    losses = trainer.storage.latest()
    assert losses["total_loss"][0] == pytest.approx(losses["loss_a"][0] + losses["loss_b"][0])
    assert "data_time" in losses


def test_after_train_runs_on_error():
    log = []
    trainer = _trainer()
    trainer.register_hooks([Recorder(log, "a", fail_at=2)])
    with pytest.raises(RuntimeError, match="stop here"):
        trainer.train(0, 10)
    assert log[-1] == ("a", "after_train", 2)


def test_nan_loss_names_iteration_and_terms():
    trainer = _trainer(Regressor(nan_at=3))
    with pytest.raises(FloatingPointError) as err:
        trainer.train(0, 10)
    msg = str(err.value)
    assert "iteration=3" in msg
    assert "loss_a=" in msg and "loss_b=nan" in msg and "total_loss=nan" in msg


def test_register_rejects_non_hooks():
    with pytest.raises(TypeError, match="Hooks must derive from HookBase, got function"):
        _trainer().register_hooks([lambda: None])


def test_model_must_return_loss_dict():
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Linear(1, 1)

        def forward(self, batch):
            return [self.w(batch[0][:, :1]).sum()]

    opt = torch.optim.SGD(Bad().parameters(), lr=0.1)
    trainer = SimpleTrainer(Bad(), _batches(), opt)
    with pytest.raises(TypeError, match="non-empty dict of scalar loss tensors, got list"):
        trainer.train(0, 1)


def test_amp_on_cpu_runs_in_bfloat16(caplog):
    with caplog.at_level(logging.WARNING):
        trainer = _trainer(cls=AMPTrainer, precision=torch.float16)
    assert "AMP on CPU runs in bfloat16" in caplog.text
    assert trainer.precision == torch.bfloat16 and trainer.grad_scaler is None
    seen = []

    class DtypeProbe(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Linear(2, 1)

        def forward(self, batch):
            out = self.w(batch[0])
            seen.append(out.dtype)
            return {"loss": (out.float().squeeze(1) - batch[1]).pow(2).mean()}

    model = DtypeProbe()
    trainer = AMPTrainer(model, _batches(), torch.optim.SGD(model.parameters(), lr=0.05),
                         precision=torch.bfloat16)
    trainer.train(0, 20)
    assert set(seen) == {torch.bfloat16}
    hist = trainer.storage.history("total_loss").values()
    assert hist[-1][0] < hist[0][0]
    assert model.w.weight.dtype == torch.float32
