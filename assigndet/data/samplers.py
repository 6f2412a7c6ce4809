"""Index samplers. Each takes ``rank`` / ``world_size`` (default: this process's) and yields
the indices of that rank only."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from assigndet.utils import comm


def _rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    rank = comm.get_rank() if rank is None else rank
    world_size = comm.get_world_size() if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size), got rank={rank}, {world_size=}")
    return rank, world_size


class _InfiniteShardedSampler(Sampler[int]):
    """Endless epochs drawn from one generator seeded with ``seed`` (the same on every rank);
    rank ``r`` takes items ``r, r + world_size, ...`` of the stream. Subclasses give one epoch's
    order in ``_epoch_order``."""

    def __init__(self, seed: int | None, rank: int | None, world_size: int | None) -> None:
        self._seed = int(comm.shared_random_seed() if seed is None else seed)
        self._rank, self._world_size = _rank_and_world(rank, world_size)

    def _epoch_order(self, g: torch.Generator) -> list[int]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[int]:
        yield from itertools.islice(self._infinite_indices(), self._rank, None, self._world_size)

    def _infinite_indices(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self._seed)
        while True:
            yield from self._epoch_order(g)


class TrainingSampler(_InfiniteShardedSampler):
    """An endless stream of indices of a dataset of ``size`` items, sharded over ranks.

    All ranks draw the same sequence of random permutations (one per epoch) from ``seed``;
    rank ``r`` takes items ``r, r + world_size, ...`` of it, so within an epoch the ranks see
    disjoint items that together cover the dataset.

    Args:
        size: number of items.
        shuffle: permute each epoch (else 0, 1, ..., size-1 repeated).
        seed: shared by all ranks; None draws one with ``comm.shared_random_seed()`` (which all
            ranks must then call together).
    """

    def __init__(
        self,
        size: int,
        shuffle: bool = True,
        seed: int | None = None,
        *,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if size <= 0:
            raise ValueError(f"TrainingSampler needs a dataset of size > 0, got {size}")
        super().__init__(seed, rank, world_size)
        self._size = size
        self._shuffle = shuffle

    def _epoch_order(self, g: torch.Generator) -> list[int]:
        if self._shuffle:
            return torch.randperm(self._size, generator=g).tolist()
        return list(range(self._size))


class RepeatFactorTrainingSampler(_InfiniteShardedSampler):
    """Like ``TrainingSampler``, but image ``i`` appears about ``repeat_factors[i]`` times per
    epoch (stochastic rounding of the fractional part, re-drawn each epoch; LVIS's scheme).

    Args:
        repeat_factors: float ``[N]``, each >= 0 (see ``repeat_factors_from_category_frequency``).
    """

    def __init__(
        self,
        repeat_factors: torch.Tensor,
        shuffle: bool = True,
        seed: int | None = None,
        *,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if len(repeat_factors) == 0:
            raise ValueError("RepeatFactorTrainingSampler needs at least one repeat factor")
        super().__init__(seed, rank, world_size)
        self._shuffle = shuffle
        factors = torch.as_tensor(repeat_factors, dtype=torch.float64)
        self._int_part = torch.trunc(factors)
        self._frac_part = factors - self._int_part

    @staticmethod
    def repeat_factors_from_category_frequency(
        dataset_dicts: list[dict], repeat_thresh: float, sqrt: bool = True
    ) -> torch.Tensor:
        """Per-image factor ``max over its classes c of max(1, sqrt(t / f(c)))`` (or ``t / f(c)``),
        ``f(c)`` the fraction of images containing class ``c``. Returns float ``[N]``."""
        image_count: dict[int, int] = defaultdict(int)
        for d in dataset_dicts:
            for c in {a["category_id"] for a in d["annotations"]}:
                image_count[c] += 1
        num_images = len(dataset_dicts)
        category_rep = {}
        for c, count in image_count.items():
            ratio = repeat_thresh / (count / num_images)
            category_rep[c] = max(1.0, math.sqrt(ratio) if sqrt else ratio)
        factors = [
            max((category_rep[a["category_id"]] for a in d["annotations"]), default=1.0)
            for d in dataset_dicts
        ]
        return torch.tensor(factors, dtype=torch.float32)

    def _epoch_indices(self, g: torch.Generator) -> torch.Tensor:
        rands = torch.rand(len(self._frac_part), generator=g, dtype=torch.float64)
        reps = (self._int_part + (rands < self._frac_part).double()).long().numpy()
        # numpy's repeat: torch.repeat_interleave costs ~1 ms per call even on tiny inputs.
        return torch.from_numpy(np.repeat(np.arange(len(reps)), reps))

    def _epoch_order(self, g: torch.Generator) -> list[int]:
        indices = self._epoch_indices(g)
        if self._shuffle:
            indices = indices[torch.randperm(len(indices), generator=g)]
        return indices.tolist()


class InferenceSampler(Sampler[int]):
    """Each index of ``range(size)`` exactly once over all ranks: rank ``r`` gets a contiguous
    shard, the first ``size % world_size`` shards one item longer than the others."""

    def __init__(
        self, size: int, *, rank: int | None = None, world_size: int | None = None
    ) -> None:
        if size < 0:
            raise ValueError(f"InferenceSampler needs size >= 0, got {size}")
        self._size = size
        rank, world_size = _rank_and_world(rank, world_size)
        shard, extra = divmod(size, world_size)
        begin = rank * shard + min(rank, extra)
        self._local_indices = range(begin, begin + shard + (1 if rank < extra else 0))

    def __iter__(self) -> Iterator[int]:
        yield from self._local_indices

    def __len__(self) -> int:
        return len(self._local_indices)
