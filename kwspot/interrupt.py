"""Ctrl-C during start-up, remembered as well as raised.

Python prints and drops a KeyboardInterrupt raised inside some of its own callbacks (an import's module
lock: "Exception ignored in ..."), and start-up imports a lot; the daemon would then start and listen as if
never asked to stop. So the signal is recorded, and a long-running command checks the record when it
installs its own handlers.
"""

from __future__ import annotations

import signal
from types import FrameType

requested = False


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    global requested
    requested = True
    raise KeyboardInterrupt


def install() -> None:
    """Record SIGINT (and still raise KeyboardInterrupt) until a command installs its own handler; an ignored
    SIGINT (a background job of a shell script, ``nohup``) stays ignored."""
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _on_sigint)
