"""Where events go: console, JSON lines on stdout, a unix socket.

Every sink has the same two methods; ``emit`` must never block the audio
loop for long (a slow consumer is the sink's problem, not the loop's).
"""

from __future__ import annotations

from typing import Protocol

from kwspot.events import Event


class Sink(Protocol):
    def emit(self, event: Event) -> None:
        """Deliver one event; must return quickly."""

    def close(self) -> None:
        """Release what the sink holds (files, sockets, threads)."""
