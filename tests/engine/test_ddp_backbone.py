"""Two gloo processes train a ResNet-18 + FPN under DistributedDataParallel and stay in sync."""

import torch
from torch.nn.parallel import DistributedDataParallel

from assigndet.config import get_cfg
from assigndet.engine.launch import launch
from assigndet.modeling import build_backbone
from assigndet.utils import comm
from assigndet.utils.testing import num_threads

WORLD_SIZE = 2
LR = 0.1


def _model() -> torch.nn.Module:
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.NORM = "GN"  # per-sample statistics: no SyncBN needed across ranks
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.FPN.NORM = "GN"
    torch.manual_seed(0)
    return build_backbone(cfg)


def _inputs(rank: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(100 + rank)
    return torch.randn(1, 3, 64, 64, generator=generator)


def _loss(features: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum((f**2).mean() for f in features.values())


THREADS = 1  # every rank and the single-process reference: float sums depend on the split


def _train_one_step(out_dir: str) -> None:
    torch.set_num_threads(THREADS)
    rank = comm.get_rank()
    assert comm.get_world_size() == WORLD_SIZE
    model = _model()
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=LR)
    _loss(ddp(_inputs(rank))).backward()
    optimizer.step()
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    torch.save(params, f"{out_dir}/rank{rank}.pt")


def test_ddp_step_keeps_ranks_identical(tmp_path):
    launch(
        _train_one_step,
        WORLD_SIZE,
        dist_url="auto",
        args=(str(tmp_path),),
    )
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert list(rank0) == list(rank1)
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)

    # The same step in one process on the mean of the per-rank losses gives the same weights.
    with num_threads(THREADS):
        reference = _model()
        initial = {k: v.detach().clone() for k, v in reference.named_parameters()}
        optimizer = torch.optim.SGD(reference.parameters(), lr=LR)
        loss = sum(_loss(reference(_inputs(r))) for r in range(WORLD_SIZE)) / WORLD_SIZE
        loss.backward()
        optimizer.step()
    for name, param in reference.named_parameters():
        assert torch.allclose(rank0[name], param, rtol=1e-4, atol=1e-6), name
    assert any(not torch.equal(rank0[k], initial[k]) for k in initial)
    assert "fpn_output2.norm.weight" in rank0 and "bottom_up.res2.0.conv1.norm.weight" in rank0
