"""Logging to stderr: plain lines under systemd, timestamped lines elsewhere."""

from __future__ import annotations

import logging
import os
import sys

from kwspot.paths import printable


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now (rich's live display swaps it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)

    def format(self, record: logging.LogRecord) -> str:
        """The record in one line: a control character in a message (a file name, a peer's text) as its escape."""
        return super().format(logging.makeLogRecord({**record.__dict__, "msg": printable(record.getMessage()),
                                                     "args": None}))


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


class Tally:
    """Repeated happenings (say, clients refused) told in one log line with a count, at most every ``interval_s``."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.total = 0
        self.unreported = 0
        self.reported_at = float("-inf")

    def add(self) -> None:
        self.total += 1
        self.unreported += 1

    def due_at(self) -> float | None:
        """When the untold ones may be told (None: nothing to tell)."""
        return self.reported_at + self.interval_s if self.unreported else None

    def take(self, now: float) -> int:
        """How many to tell now (0: none, or the last line was too recent); they count as told."""
        if not self.unreported or now - self.reported_at < self.interval_s:
            return 0
        n, self.unreported, self.reported_at = self.unreported, 0, now
        return n
