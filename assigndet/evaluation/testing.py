"""Printing and checking evaluation results."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

__all__ = ["print_csv_format", "verify_results"]

logger = logging.getLogger(__name__)


def print_csv_format(results: Mapping) -> None:
    """Log detectron2's three ``copypaste:`` lines per task (per-class ``AP-x`` keys skipped)::

        copypaste: Task: bbox
        copypaste: AP,AP50,AP75,APs,APm,APl
        copypaste: 40.1234,60.0000,...
    """
    for task, res in results.items():
        if isinstance(res, Mapping):
            important = [(k, v) for k, v in res.items() if "-" not in k]
            logger.info("copypaste: Task: %s", task)
            logger.info("copypaste: %s", ",".join(k for k, _ in important))
            logger.info("copypaste: %s", ",".join(f"{v:.4f}" for _, v in important))
        else:
            logger.info("copypaste: %s=%s", task, res)


def verify_results(cfg, results: Mapping) -> bool:
    """Check ``results`` against ``cfg.TEST.EXPECTED_RESULTS`` ([[task, metric, value, tolerance],
    ...]); logs each mismatch and returns whether all matched."""
    expected = cfg.TEST.EXPECTED_RESULTS
    if not expected:
        return True
    ok = True
    for entry in expected:
        if len(entry) != 4:
            raise ValueError(
                f"TEST.EXPECTED_RESULTS entries are [task, metric, value, tolerance], got {entry}"
            )
        task, metric, value, tolerance = entry
        actual = results.get(task, {}).get(metric)
        if actual is None or not math.isfinite(actual) or abs(actual - value) > tolerance:
            ok = False
            logger.error(
                "Result %s/%s = %s, expected %s +- %s", task, metric, actual, value, tolerance
            )
    if ok:
        logger.info("Results verification passed.")
    else:
        logger.error("Results verification failed; results: %s", dict(results))
    return ok
