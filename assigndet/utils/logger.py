"""Logging set-up with detectron2's formats, and rate-limited logging.

Console (rank 0 only): ``[MM/DD HH:MM:SS name]: message`` (WARNING/ERROR tagged, in colour when
termcolor is installed and the stream is a terminal). File: ``[MM/DD HH:MM:SS] name LEVEL: message``
in ``OUTPUT_DIR/log.txt``; rank r > 0 writes ``log.txt.rank{r}``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import Counter

__all__ = ["log_every_n_seconds", "log_first_n", "setup_logger"]

_DATE_FORMAT = "%m/%d %H:%M:%S"
# handlers installed by setup_logger, per logger name, so a second call replaces rather than adds
_INSTALLED: dict[str, tuple[tuple, list[logging.Handler]]] = {}


class _ColorfulFormatter(logging.Formatter):
    def __init__(self, *args, use_color: bool, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._use_color = use_color

    def formatMessage(self, record: logging.LogRecord) -> str:
        message = super().formatMessage(record)
        if record.levelno < logging.WARNING:
            return message
        tag = "ERROR" if record.levelno >= logging.ERROR else "WARNING"
        if self._use_color:
            from termcolor import colored

            tag = colored(tag, "red", attrs=["blink", "underline"] if tag == "ERROR" else ["blink"])
        return f"{tag} {message}"


def _log_file_path(output: str, distributed_rank: int) -> str:
    if output.endswith((".txt", ".log")):
        filename = output
    else:
        filename = os.path.join(output, "log.txt")
    if distributed_rank > 0:
        filename = f"{filename}.rank{distributed_rank}"
    return filename


def setup_logger(
    output: str | None = None,
    distributed_rank: int = 0,
    *,
    color: bool = True,
    name: str = "assigndet",
    abbrev_name: str | None = None,
) -> logging.Logger:
    """Configure logger ``name`` at DEBUG level, not propagating to the root logger.

    Args:
        output: a folder (the log goes to ``output/log.txt``) or a file ending in .txt/.log;
            None writes no file.
        distributed_rank: only rank 0 logs to the console; rank r > 0 logs to ``<file>.rank{r}``.
        color: colour the WARNING/ERROR tags when termcolor is installed and stdout is a terminal.
        abbrev_name: a shorter name shown on the console in place of ``name``.

    Calling it again with the same arguments changes nothing; with other arguments it replaces
    the handlers installed by the previous call.
    """
    logger = logging.getLogger(name)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    key = (output, distributed_rank, color, abbrev_name)
    previous = _INSTALLED.get(name)
    if previous is not None:
        if previous[0] == key and all(h in logger.handlers for h in previous[1]):
            return logger
        for handler in previous[1]:
            logger.removeHandler(handler)
            handler.close()

    handlers: list[logging.Handler] = []
    if distributed_rank == 0:
        console = logging.StreamHandler(stream=sys.stdout)
        console.setLevel(logging.DEBUG)
        try:
            import termcolor  # noqa: F401

            use_color = color and sys.stdout.isatty()
        except ImportError:
            use_color = False
        shown = abbrev_name or name
        console.setFormatter(
            _ColorfulFormatter(
                f"[%(asctime)s {shown}%(subname)s]: %(message)s",
                datefmt=_DATE_FORMAT,
                use_color=use_color,
            )
        )
        console.addFilter(_SubnameFilter(name))
        handlers.append(console)
    if output is not None:
        filename = _log_file_path(output, distributed_rank)
        os.makedirs(os.path.dirname(os.path.abspath(filename)), exist_ok=True)
        file_handler = logging.FileHandler(filename, mode="a")
        file_handler.setLevel(logging.DEBUG)
        file_handler.setFormatter(
            logging.Formatter(
                "[%(asctime)s] %(name)s %(levelname)s: %(message)s", datefmt=_DATE_FORMAT
            )
        )
        handlers.append(file_handler)
    for handler in handlers:
        logger.addHandler(handler)
    _INSTALLED[name] = (key, handlers)
    return logger


class _SubnameFilter(logging.Filter):
    """Adds ``record.subname``: the record's logger name below the configured root (``.engine``)."""

    def __init__(self, root: str) -> None:
        super().__init__()
        self._root = root

    def filter(self, record: logging.LogRecord) -> bool:
        record.subname = record.name[len(self._root):] if record.name.startswith(self._root) else ""
        return True


_LOG_COUNTER: Counter = Counter()
_LOG_TIMER: dict[tuple, float] = {}


def _caller_key() -> tuple[str, int]:
    frame = sys._getframe(2)
    return frame.f_code.co_filename, frame.f_lineno


def log_first_n(level: int, msg: str, n: int = 1, *, name: str = "assigndet") -> None:
    """Log ``msg`` only the first ``n`` times this call site runs."""
    key = _caller_key()
    _LOG_COUNTER[key] += 1
    if _LOG_COUNTER[key] <= n:
        logging.getLogger(name).log(level, msg)


def log_every_n_seconds(level: int, msg: str, n: float = 1.0, *, name: str = "assigndet") -> None:
    """Log ``msg`` at most once every ``n`` seconds from this call site."""
    key = _caller_key()
    now = time.perf_counter()
    last = _LOG_TIMER.get(key)
    if last is None or now - last >= n:
        logging.getLogger(name).log(level, msg)
        _LOG_TIMER[key] = now
