"""Dataset dicts from the catalog, and the train / test data loaders built on them."""

from __future__ import annotations

import itertools
import logging
import pickle
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from tabulate import tabulate
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, get_worker_info

from assigndet.utils import comm

from .catalog import DatasetCatalog, MetadataCatalog
from .check import check_dataset, check_images_exist
from .dataset_mapper import DatasetMapper
from .samplers import InferenceSampler, RepeatFactorTrainingSampler, TrainingSampler

logger = logging.getLogger(__name__)




def _has_objects(d: dict) -> bool:
    return any(not a.get("iscrowd", 0) for a in d.get("annotations", []))


def get_detection_dataset_dicts(
    names: str | Sequence[str], filter_empty: bool = True
) -> list[dict[str, Any]]:
    """Concatenate the dataset dicts of registered datasets ``names``.

    With ``filter_empty``, images without any non-crowd annotation are removed (logged with
    counts). A class histogram is logged when the datasets have ``thing_classes``.

    Raises:
        FileNotFoundError: image files do not exist (the first few are listed, with the count).
        ValueError: a dataset is empty, nothing is left after filtering, or the datasets have
            different ``thing_classes``.
    """
    if isinstance(names, str):
        names = [names]
    if len(names) == 0:
        raise ValueError("No dataset names given (e.g. DATASETS.TRAIN is empty)")
    all_dicts = []
    for name in names:
        dicts = DatasetCatalog.get(name)
        if len(dicts) == 0:
            raise ValueError(f"Dataset '{name}' is empty")
        all_dicts.append(dicts)
    dataset_dicts = list(itertools.chain.from_iterable(all_dicts))

    if filter_empty and "annotations" in dataset_dicts[0]:
        before = len(dataset_dicts)
        dataset_dicts = [d for d in dataset_dicts if _has_objects(d)]
        logger.info(
            f"Removed {before - len(dataset_dicts)} images with no usable annotations from "
            f"{list(names)}. {len(dataset_dicts)} images left."
        )
        if not dataset_dicts:
            raise ValueError(
                f"No images with a non-crowd annotation are left in dataset(s) {list(names)} "
                "after filtering (DATALOADER.FILTER_EMPTY_ANNOTATIONS)"
            )
    check_images_exist(dataset_dicts, names)

    classes = [MetadataCatalog.get(n).get("thing_classes") for n in names]
    if any(c is not None for c in classes):
        if any(c != classes[0] for c in classes):
            raise ValueError(
                f"Datasets {list(names)} have different thing_classes: "
                + "; ".join(f"{n}: {c}" for n, c in zip(names, classes))
            )
        if "annotations" in dataset_dicts[0]:
            log_class_histogram(dataset_dicts, classes[0])
    return dataset_dicts


def decode_check_dataset(dataset_dicts: list[dict], names: Sequence[str]) -> None:
    """Decode every image and validate every annotation, split over the ranks; raise a
    ValueError listing the first problems (and their count) on every rank if any is found."""
    rank, world_size = comm.get_rank(), comm.get_world_size()
    classes = MetadataCatalog.get(names[0]).get("thing_classes")
    report = check_dataset(
        dataset_dicts[rank::world_size],
        len(classes) if classes is not None else None,
        progress=comm.is_main_process(),
    )
    problems = list(itertools.chain.from_iterable(comm.all_gather(report.problems)))
    if problems:
        raise ValueError(
            f"DATALOADER.CHECK_IMAGES found {len(problems)} problem(s) in dataset(s) "
            f"{list(names)}, e.g.:\n  " + "\n  ".join(problems[:5])
            + "\nRun tools/check_dataset.py for the full list."
        )
    logger.info(f"DATALOADER.CHECK_IMAGES: {len(dataset_dicts)} images decoded, no problem found")


def log_class_histogram(dataset_dicts: list[dict], class_names: Sequence[str]) -> None:
    """Log how many non-crowd instances of each class ``dataset_dicts`` have."""
    counts = np.zeros(len(class_names), dtype=np.int64)
    for d in dataset_dicts:
        for a in d.get("annotations", []):
            if a.get("iscrowd", 0):
                continue
            c = a["category_id"]
            if not 0 <= c < len(class_names):
                raise ValueError(
                    f"{d.get('file_name')}: category_id {c} is outside [0, {len(class_names)})"
                )
            counts[c] += 1
    rows = [(name, int(n)) for name, n in zip(class_names, counts)]
    rows.append(("total", int(counts.sum())))
    table = tabulate(rows, headers=["category", "#instances"], tablefmt="pipe")
    logger.info(f"Distribution of instances among {len(class_names)} categories:\n{table}")


class DatasetFromList(Dataset):
    """A list as a map-style dataset, stored as one pickled byte buffer so that forked loader
    workers share it instead of slowly copying every Python object they touch."""

    def __init__(self, items: list[Any]) -> None:
        blobs = [np.frombuffer(pickle.dumps(x, protocol=-1), dtype=np.uint8) for x in items]
        self._addr = np.cumsum([len(b) for b in blobs], dtype=np.int64)
        self._buffer = np.concatenate(blobs) if blobs else np.zeros(0, dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._addr)

    def __getitem__(self, idx: int) -> Any:
        start = 0 if idx == 0 else int(self._addr[idx - 1])
        return pickle.loads(memoryview(self._buffer[start : int(self._addr[idx])]))


class MapDataset(Dataset):
    """``map_func`` applied to each item of ``dataset``.

    With ``retry_on_none``, an item mapped to None is replaced by a random other item (training);
    otherwise None is an error. 100 None results in a row is an error either way.
    """

    def __init__(self, dataset: Dataset, map_func: Callable, retry_on_none: bool = True) -> None:
        self.dataset = dataset
        self.map_func = map_func
        self.retry_on_none = retry_on_none
        self._rng = random.Random(42)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, idx: int) -> Any:
        for attempt in range(100):
            out = self.map_func(self.dataset[idx])
            if out is not None:
                return out
            if not self.retry_on_none:
                raise ValueError(f"The mapper returned None for item {idx}")
            if attempt == 2:
                logger.warning(f"The mapper returned None 3 times in a row (last item {idx})")
            idx = self._rng.randrange(len(self.dataset))
        raise RuntimeError("The mapper returned None for 100 items in a row; check the mapper")


class ToIterableDataset(IterableDataset):
    """Map-style ``dataset`` read in the order of ``sampler``.

    With several loader workers, worker ``k`` maps chunks ``k, k + num_workers, ...`` of
    ``chunk_size`` consecutive indices, so each batch comes from one worker.
    """

    def __init__(self, dataset: Dataset, sampler: Sampler | Iterable[int], chunk_size: int = 1):
        self.dataset = dataset
        self.sampler = sampler
        self.chunk_size = chunk_size

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        indices: Iterable[int] = self.sampler
        if info is not None and info.num_workers > 1:
            mine = itertools.islice(
                _chunks(indices, self.chunk_size), info.id, None, info.num_workers
            )
            indices = itertools.chain.from_iterable(mine)
        for idx in indices:
            yield self.dataset[idx]


def _chunks(iterable: Iterable[int], size: int) -> Iterator[tuple[int, ...]]:
    it = iter(iterable)
    while chunk := tuple(itertools.islice(it, size)):
        yield chunk


class AspectRatioGroupedDataset(IterableDataset):
    """Batches of ``batch_size`` mapped dicts, landscape (w > h) and the rest kept apart.

    Each dict goes to the bucket of its image's aspect ratio; a bucket is emitted when full.
    """

    def __init__(self, dataset: Iterable[dict], batch_size: int) -> None:
        self.dataset = dataset
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[list[dict]]:
        buckets: list[list[dict]] = [[], []]
        for d in self.dataset:
            h, w = d["image"].shape[-2:] if "image" in d else (d["height"], d["width"])
            bucket = buckets[0 if w > h else 1]
            bucket.append(d)
            if len(bucket) == self.batch_size:
                yield bucket[:]
                del bucket[:]


def _as_list(batch: list[dict]) -> list[dict]:
    return batch


def worker_init_reset_seed(worker_id: int) -> None:
    """Seed python, numpy and torch in a loader worker from its own torch seed.

    torch gives worker ``k`` the seed ``base_seed + k``; numpy and python would otherwise start
    from the same state in every forked worker.
    """
    seed = torch.initial_seed() % 2**31
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_batch_data_loader(
    dataset: Dataset,
    sampler: Sampler | Iterable[int],
    total_batch_size: int,
    *,
    aspect_ratio_grouping: bool = True,
    num_workers: int = 0,
    world_size: int | None = None,
) -> Iterable[list[dict]]:
    """Batches (lists of ``total_batch_size / world_size`` mapped dicts) of this rank.

    Raises:
        ValueError: ``total_batch_size`` is not a positive multiple of the world size.
    """
    world_size = comm.get_world_size() if world_size is None else world_size
    if total_batch_size <= 0 or total_batch_size % world_size != 0:
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH ({total_batch_size}) must be a positive multiple of the "
            f"number of processes ({world_size})"
        )
    batch_size = total_batch_size // world_size
    iterable = ToIterableDataset(dataset, sampler, chunk_size=batch_size)
    common = {"num_workers": num_workers, "worker_init_fn": worker_init_reset_seed}
    if aspect_ratio_grouping:
        loader = DataLoader(iterable, batch_size=None, collate_fn=_as_list, **common)
        return AspectRatioGroupedDataset(loader, batch_size)
    return DataLoader(
        iterable, batch_size=batch_size, drop_last=True, collate_fn=_as_list, **common
    )


def build_detection_train_loader(
    cfg=None,
    mapper: Callable[[dict], dict | None] | None = None,
    *,
    dataset: list[dict] | Dataset | None = None,
    sampler: Sampler | None = None,
    total_batch_size: int | None = None,
    aspect_ratio_grouping: bool | None = None,
    num_workers: int | None = None,
) -> Iterable[list[dict]]:
    """An endless iterable of training batches (lists of mapped dicts) for this rank.

    Anything not given explicitly comes from ``cfg``: the dataset from ``DATASETS.TRAIN`` (with
    ``DATALOADER.FILTER_EMPTY_ANNOTATIONS``), the mapper ``DatasetMapper(cfg, True)``, the
    sampler from ``DATALOADER.SAMPLER_TRAIN`` seeded with ``SEED`` (a shared random seed when
    negative), the batch size ``SOLVER.IMS_PER_BATCH`` over all ranks (it must divide by the
    world size), ``DATALOADER.ASPECT_RATIO_GROUPING`` and ``DATALOADER.NUM_WORKERS``. With
    ``DATALOADER.CHECK_IMAGES``, every image is decoded and every annotation validated first
    (``decode_check_dataset``).
    """
    if cfg is None and (dataset is None or mapper is None or total_batch_size is None):
        raise TypeError(
            "build_detection_train_loader needs a cfg, or dataset, mapper and total_batch_size"
        )
    if dataset is None:
        dataset = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
        )
        if cfg.DATALOADER.CHECK_IMAGES:
            decode_check_dataset(dataset, cfg.DATASETS.TRAIN)
    if mapper is None:
        mapper = DatasetMapper(cfg, True)
    if isinstance(dataset, list):
        dataset = DatasetFromList(dataset)
    if sampler is None:
        sampler = _build_train_sampler(cfg, dataset)
    if total_batch_size is None:
        total_batch_size = cfg.SOLVER.IMS_PER_BATCH
    if aspect_ratio_grouping is None:
        aspect_ratio_grouping = cfg.DATALOADER.ASPECT_RATIO_GROUPING if cfg is not None else True
    if num_workers is None:
        num_workers = cfg.DATALOADER.NUM_WORKERS if cfg is not None else 0
    return build_batch_data_loader(
        MapDataset(dataset, mapper, retry_on_none=True),
        sampler,
        total_batch_size,
        aspect_ratio_grouping=aspect_ratio_grouping,
        num_workers=num_workers,
    )


def _build_train_sampler(cfg, dataset: Dataset) -> Sampler:
    seed = cfg.SEED if cfg is not None and cfg.SEED >= 0 else None
    name = cfg.DATALOADER.SAMPLER_TRAIN if cfg is not None else "TrainingSampler"
    logger.info(f"Using training sampler {name}")
    if name == "TrainingSampler":
        return TrainingSampler(len(dataset), seed=seed)
    if name == "RepeatFactorTrainingSampler":
        dicts = [dataset[i] for i in range(len(dataset))]
        factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
            dicts, cfg.DATALOADER.REPEAT_THRESHOLD, sqrt=cfg.DATALOADER.REPEAT_SQRT
        )
        return RepeatFactorTrainingSampler(factors, seed=seed)
    raise ValueError(
        f"DATALOADER.SAMPLER_TRAIN must be 'TrainingSampler' or 'RepeatFactorTrainingSampler', "
        f"got '{name}'"
    )


def build_detection_test_loader(
    cfg=None,
    dataset_name: str | Sequence[str] | None = None,
    mapper: Callable[[dict], dict] | None = None,
    *,
    dataset: list[dict] | Dataset | None = None,
    num_workers: int | None = None,
) -> DataLoader:
    """A loader over all images of ``dataset_name`` (unfiltered), this rank's contiguous shard,
    in batches of one: each item is a list holding one mapped dict.

    ``mapper`` defaults to ``DatasetMapper(cfg, False)``; ``num_workers`` to
    ``DATALOADER.NUM_WORKERS``.
    """
    if dataset is None:
        if dataset_name is None:
            raise TypeError("build_detection_test_loader needs a dataset_name or a dataset")
        dataset = get_detection_dataset_dicts(dataset_name, filter_empty=False)
    if mapper is None:
        if cfg is None:
            raise TypeError("build_detection_test_loader needs a cfg or a mapper")
        mapper = DatasetMapper(cfg, False)
    if isinstance(dataset, list):
        dataset = DatasetFromList(dataset)
    if num_workers is None:
        num_workers = cfg.DATALOADER.NUM_WORKERS if cfg is not None else 0
    return DataLoader(
        MapDataset(dataset, mapper, retry_on_none=False),
        batch_size=1,
        sampler=InferenceSampler(len(dataset)),
        num_workers=num_workers,
        collate_fn=_as_list,
    )
