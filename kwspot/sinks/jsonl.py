"""JSON lines on stdout: one object per event, flushed per line."""

from __future__ import annotations

import logging
import select
import sys
from typing import TextIO

from kwspot.checks import choice
from kwspot.errors import KwspotError
from kwspot.events import Event
from kwspot.sinks import SinkContext, SinkSettings, SinkSpec

log = logging.getLogger("kwspot")


class JsonlSink:
    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stdout
        self.closed = False

    def emit(self, event: Event) -> None:
        if self.closed:
            return
        try:
            self._stream.write(event.to_json() + "\n")
            self._stream.flush()
        except (BrokenPipeError, ValueError):
            self._gone()  # the reader went away (e.g. `| head -1`)

    def check(self) -> None:
        """Notice a reader that went away even when no event is due (a widowed pipe polls as POLLERR)."""
        if self.closed:
            return
        try:
            fd = self._stream.fileno()
        except (OSError, ValueError, AttributeError):
            return
        poll = select.poll()
        poll.register(fd, 0)
        if any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poll.poll(0)):
            self._gone()

    def _gone(self) -> None:
        self.closed = True
        log.warning("stdout closed by its reader; JSON lines stopped")

    def close(self) -> None:
        pass


def _build(cfg: SinkSettings, ctx: SinkContext) -> JsonlSink | None:
    if not cfg["jsonl"]:
        return None
    if sys.stdout is None:
        raise KwspotError("stdout is closed; JSON lines need it (or use --socket)")
    return JsonlSink()


SPEC = SinkSpec("jsonl", {"jsonl": (False, choice(True, False))}, _build)
