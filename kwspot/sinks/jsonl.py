"""JSON lines on stdout: one object per event, flushed per line."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from kwspot.checks import choice
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
            # The reader went away (e.g. `| head -1`): stop writing, keep listening.
            self.closed = True
            log.warning("stdout closed by its reader; JSON lines stopped")

    def close(self) -> None:
        pass


def _build(cfg: SinkSettings, ctx: SinkContext) -> JsonlSink | None:
    return JsonlSink() if cfg["jsonl"] else None


SPEC = SinkSpec("jsonl", {"jsonl": (False, choice(True, False))}, _build)
