"""Logging to stderr: plain lines under systemd, timestamped lines elsewhere."""

from __future__ import annotations

import logging
import os
import sys


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now (rich's live display swaps it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def under_systemd() -> bool:
    """True when stderr goes to the journal (journald adds its own timestamps)."""
    return bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"))


def setup_logging(level: str = "info", fmt: str = "auto") -> logging.Logger:
    plain = fmt == "plain" or (fmt == "auto" and under_systemd())
    handler = _StderrHandler()
    pattern = "%(levelname)s %(message)s" if plain else "%(asctime)s %(levelname)s %(message)s"
    handler.setFormatter(logging.Formatter(pattern, datefmt="%H:%M:%S"))
    logger = logging.getLogger("kwspot")
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False
    return logger
