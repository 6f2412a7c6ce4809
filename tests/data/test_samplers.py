import itertools
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from assigndet.data import InferenceSampler, RepeatFactorTrainingSampler, TrainingSampler


@pytest.mark.parametrize("size, world", [(10, 2), (7, 3), (2, 4), (0, 2), (5, 1)])
def test_inference_sampler_contiguous_exact_cover(size, world):
    shards = [list(InferenceSampler(size, rank=r, world_size=world)) for r in range(world)]
    assert sum(shards, []) == list(range(size))  # contiguous, in rank order, each once
    assert [len(InferenceSampler(size, rank=r, world_size=world)) for r in range(world)] == [
        len(s) for s in shards
    ]
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_training_sampler_first_epoch_is_split_between_ranks():
    size, world = 11, 2
    streams = [
        list(itertools.islice(TrainingSampler(size, seed=5, rank=r, world_size=world), 100))
        for r in range(world)
    ]
    # Rank r takes positions r, r + world, ... of one shared permutation sequence.
    full = list(itertools.islice(TrainingSampler(size, seed=5, rank=0, world_size=1), 200))
    assert streams[0] == full[0::2][:100] and streams[1] == full[1::2][:100]
    epoch = full[:size]
    assert sorted(epoch) == list(range(size))
    first = set(streams[0][: (size + 1) // 2]) | set(streams[1][: size // 2])
    assert first == set(range(size))
    assert not set(streams[0][: (size + 1) // 2]) & set(streams[1][: size // 2])
    # Endless, and a new permutation every epoch.
    assert full[size : 2 * size] != epoch and sorted(full[size : 2 * size]) == sorted(epoch)


def test_training_sampler_seeded():
    a = list(itertools.islice(TrainingSampler(50, seed=1, rank=0, world_size=1), 120))
    b = list(itertools.islice(TrainingSampler(50, seed=1, rank=0, world_size=1), 120))
    c = list(itertools.islice(TrainingSampler(50, seed=2, rank=0, world_size=1), 120))
    assert a == b and a != c
    ordered = list(itertools.islice(TrainingSampler(4, shuffle=False, seed=0), 6))
    assert ordered == [0, 1, 2, 3, 0, 1]


def test_sampler_argument_errors():
    with pytest.raises(ValueError, match="size > 0"):
        TrainingSampler(0, seed=0)
    with pytest.raises(ValueError, match="rank=2"):
        InferenceSampler(5, rank=2, world_size=2)


def test_repeat_factors_and_stream():
    dicts = [
        {"annotations": [{"category_id": 0}]},
        {"annotations": [{"category_id": 0}]},
        {"annotations": [{"category_id": 0}]},
        {"annotations": [{"category_id": 0}, {"category_id": 1}]},
    ]
    factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(dicts, 0.5)
    # f(0) = 1 -> 1; f(1) = 0.25 -> sqrt(0.5 / 0.25) = 1.414
    torch.testing.assert_close(factors, torch.tensor([1.0, 1.0, 1.0, 2**0.5]))
    plain = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(dicts, 0.5, False)
    torch.testing.assert_close(plain, torch.tensor([1.0, 1.0, 1.0, 2.0]))

    sampler = RepeatFactorTrainingSampler(factors, seed=0, rank=0, world_size=1)
    stream = list(itertools.islice(sampler, 4000))
    counts = torch.bincount(torch.tensor(stream), minlength=4).float()
    ratio = counts[3] / counts[:3].mean()
    assert 1.3 < ratio < 1.53
    shard = list(itertools.islice(RepeatFactorTrainingSampler(factors, seed=0, rank=1,
                                                              world_size=2), 50))  # fmt: skip
    assert shard == stream[1::2][:50]


def _dist_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        train = list(itertools.islice(TrainingSampler(9), 10))  # seed None: shared by the ranks
        infer = list(InferenceSampler(9))
        torch.save({"train": train, "infer": infer}, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_ranks_with_gloo(tmp_path):
    init_file = os.path.join(tempfile.mkdtemp(), "init")
    mp.start_processes(_dist_worker, args=(2, init_file, str(tmp_path)), nprocs=2,
                       start_method="fork")  # fmt: skip
    r0, r1 = (torch.load(tmp_path / f"{r}.pt") for r in range(2))
    assert r0["infer"] + r1["infer"] == list(range(9))
    first_epoch = set(r0["train"][:5]) | set(r1["train"][:4])
    assert first_epoch == set(range(9))
