"""Dataset evaluators and the inference loop that feeds them."""

from __future__ import annotations

import datetime
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager

import torch
from torch import nn

from assigndet.utils import comm
from assigndet.utils.logger import log_every_n_seconds

__all__ = ["DatasetEvaluator", "DatasetEvaluators", "inference_context", "inference_on_dataset"]

logger = logging.getLogger(__name__)


class DatasetEvaluator:
    """Accumulates model outputs over a dataset and computes metrics.

    ``reset()`` before a pass, ``process(inputs, outputs)`` per batch (the model's input and
    output lists), ``evaluate()`` at the end: a dict ``{task: {metric: value}}`` on the main
    process (other ranks may return an empty dict).
    """

    def reset(self) -> None:
        pass

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        raise NotImplementedError

    def evaluate(self) -> dict:
        raise NotImplementedError


class DatasetEvaluators(DatasetEvaluator):
    """Several evaluators run over the same pass; their results are merged (keys must differ)."""

    def __init__(self, evaluators: Sequence[DatasetEvaluator]) -> None:
        self._evaluators = list(evaluators)

    def reset(self) -> None:
        for e in self._evaluators:
            e.reset()

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        for e in self._evaluators:
            e.process(inputs, outputs)

    def evaluate(self) -> dict:
        results: dict = OrderedDict()
        for e in self._evaluators:
            result = e.evaluate()
            if comm.is_main_process() and result is not None:
                for k, v in result.items():
                    if k in results:
                        raise ValueError(
                            f"Two evaluators ({type(e).__name__} and an earlier one) both "
                            f"returned results for '{k}'"
                        )
                    results[k] = v
        return results


@contextmanager
def inference_context(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode for the block, then restore its previous mode."""
    training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(training)


def inference_on_dataset(
    model: nn.Module | None,
    data_loader: Iterable,
    evaluator: DatasetEvaluator | Sequence[DatasetEvaluator] | None,
) -> dict:
    """Run ``model`` (eval mode, no_grad) over ``data_loader`` and return ``evaluator.evaluate()``.

    The first min(5, N - 1) batches are excluded from timing. Progress ("Inference done i/N")
    is logged at most every 5 s; at the end the total time and pure compute time per batch are
    logged. Works on every rank of a distributed job; the evaluator gathers.
    """
    num_devices = comm.get_world_size()
    total = len(data_loader)  # type: ignore[arg-type]
    logger.info("Start inference on %d batches", total)
    if evaluator is None:
        evaluator = DatasetEvaluators([])
    elif not isinstance(evaluator, DatasetEvaluator):
        evaluator = DatasetEvaluators(evaluator)
    evaluator.reset()

    num_warmup = max(min(5, total - 1), 0)
    start_time = time.perf_counter()
    data_time = compute_time = eval_time = 0.0
    with ExitStack() as stack:
        if isinstance(model, nn.Module):
            stack.enter_context(inference_context(model))
        stack.enter_context(torch.no_grad())
        data_start = time.perf_counter()
        for idx, inputs in enumerate(data_loader):
            data_time += time.perf_counter() - data_start
            if idx == num_warmup:
                start_time = time.perf_counter()
                data_time = compute_time = eval_time = 0.0
            compute_start = time.perf_counter()
            outputs = model(inputs)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            compute_time += time.perf_counter() - compute_start
            eval_start = time.perf_counter()
            evaluator.process(inputs, outputs)
            eval_time += time.perf_counter() - eval_start

            timed = idx + 1 - num_warmup * int(idx >= num_warmup)
            compute_per_iter = compute_time / timed
            if idx >= num_warmup * 2 or compute_per_iter > 5:
                per_iter = (time.perf_counter() - start_time) / timed
                eta = datetime.timedelta(seconds=int(per_iter * (total - idx - 1)))
                log_every_n_seconds(
                    logging.INFO,
                    f"Inference done {idx + 1}/{total}. {per_iter:.4f} s/iter (data "
                    f"{data_time / timed:.4f}, compute {compute_per_iter:.4f}, eval "
                    f"{eval_time / timed:.4f}). ETA={eta}",
                    n=5,
                    name=__name__,
                )
            data_start = time.perf_counter()

    total_time = time.perf_counter() - start_time
    timed_batches = max(total - num_warmup, 1)
    logger.info(
        "Total inference time: %s (%.6f s / iter per device, on %d devices)",
        datetime.timedelta(seconds=int(total_time)), total_time / timed_batches, num_devices,
    )
    logger.info(
        "Total inference pure compute time: %s (%.6f s / iter per device, on %d devices)",
        datetime.timedelta(seconds=int(compute_time)), compute_time / timed_batches, num_devices,
    )
    results = evaluator.evaluate()
    return {} if results is None else results
