"""JSON lines on stdout: one object per event, flushed per line, written by a thread of their own.

The writer thread takes the lines from a bounded queue, so a reader that stops reading (a stalled pipe)
stalls only this sink: the audio loop, the other sinks and signal handling go on, and lines past the bound
are dropped and counted. A reader that went away, or a stdout that fails (a full disk), ends the sink
with one log line.
"""

from __future__ import annotations

import logging
import queue
import select
import sys
import threading
import time
from typing import TextIO

from kwspot.checks import choice
from kwspot.errors import KwspotError
from kwspot.events import Event
from kwspot.logs import Tally
from kwspot.sinks import SinkContext, SinkSettings, SinkSpec

log = logging.getLogger("kwspot")

MAX_QUEUED = 10000  # lines waiting for a slow reader (about 1 MB); more are dropped
DROP_LOG_S = 10.0
CLOSE_WAIT_S = 2.0  # at exit, wait for the queue to drain while it makes progress at least this often


class JsonlSink:
    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stdout
        self.closed = False
        self.failed = False  # stdout failed (not a reader that left): the run's exit status says so
        self._lines: queue.Queue[str | None] = queue.Queue(MAX_QUEUED)
        self.dropped = Tally(DROP_LOG_S)
        self._writer = threading.Thread(target=self._write_all, name="jsonl-writer", daemon=True)
        self._writer.start()

    def emit(self, event: Event) -> None:
        if self.closed:
            return
        try:
            self._lines.put_nowait(event.to_json() + "\n")
        except queue.Full:
            self.dropped.add()
            if n := self.dropped.take(time.monotonic()):
                log.warning("stdout is not read: %d JSON lines dropped (%d in all)", n, self.dropped.total)

    def _write_all(self) -> None:
        while (line := self._lines.get()) is not None:
            try:
                self._stream.write(line)
                self._stream.flush()
            except (BrokenPipeError, ValueError):
                self._gone("stdout closed by its reader")  # e.g. `| head -1`
                return
            except OSError as exc:
                self.failed = True
                self._gone(f"stdout: {exc.strerror or exc}")
                return

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
            self._gone("stdout closed by its reader")

    def _gone(self, why: str) -> None:
        if not self.closed:
            self.closed = True
            log.warning("%s; JSON lines stopped", why)

    def close(self) -> None:
        """Write what is queued, waiting while the reader takes it (not for a reader that stalled)."""
        ended = False
        left = -1
        while self._writer.is_alive():
            if not ended:
                try:
                    self._lines.put_nowait(None)
                    ended = True
                except queue.Full:
                    pass
            self._writer.join(CLOSE_WAIT_S)
            size = self._lines.qsize()
            if size == left:
                break  # no progress in CLOSE_WAIT_S: the reader stalled; its lines are lost
            left = size


def _build(cfg: SinkSettings, ctx: SinkContext) -> JsonlSink | None:
    if not cfg["jsonl"]:
        return None
    if sys.stdout is None:
        raise KwspotError("stdout is closed; JSON lines need it (or use --socket)")
    return JsonlSink()


SPEC = SinkSpec("jsonl", {"jsonl": (False, choice(True, False))}, _build)
