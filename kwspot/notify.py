"""systemd ``sd_notify`` without dependencies: READY, WATCHDOG, STATUS, STOPPING.

Under ``Type=notify`` systemd sets ``$NOTIFY_SOCKET`` (a path, or ``@name``
for an abstract socket); each message is one datagram of ``KEY=VALUE``
lines. Without that variable every method is a no-op, and send errors are
only logged at debug level: telling systemd must never break the daemon.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("kwspot.notify")


MIN_WATCHDOG_S = 0.3  # a shorter WatchdogSec cannot be met anyway; pinging faster than every 0.1 s would busy-loop


class SystemdNotifier:
    """Send state changes to systemd if we run under it.

    ``env`` defaults to ``os.environ``; pass a dict in tests.
    """

    def __init__(self, env: Mapping[str, str] | None = None, logger: logging.Logger | None = None) -> None:
        self._env = os.environ if env is None else env
        self.log = logger or log
        self._sock: socket.socket | None = None
        self.address: str | None = None
        raw = self._env.get("NOTIFY_SOCKET", "")
        if raw.startswith("@"):
            self.address = "\0" + raw[1:]  # abstract namespace
        elif raw.startswith("/"):
            self.address = raw
        elif raw:
            self.log.debug("NOTIFY_SOCKET=%r not supported (only paths and @names); not notifying", raw)

    @property
    def enabled(self) -> bool:
        """True if ``$NOTIFY_SOCKET`` named a socket we can talk to."""
        return self.address is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` lines as one datagram; True if it was sent."""
        if self.address is None:
            return False
        msg = "\n".join(assignments).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(msg, socket.MSG_DONTWAIT, self.address)  # a reader that reads nothing must not block us
        except OSError as e:
            self.log.debug("cannot notify systemd at %r: %s", self.address, e)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """READY=1: start-up is over (``Type=notify`` units count as started only now)."""
        extra = [_status_line(status)] if status is not None else []
        return self.notify("READY=1", *extra)

    def watchdog(self) -> bool:
        """WATCHDOG=1: we are alive; send every ``watchdog_interval() / 2`` s while audio flows."""
        return self.notify("WATCHDOG=1")

    def status(self, text: str) -> bool:
        """STATUS=...: one line shown by ``systemctl status``."""
        return self.notify(_status_line(text))

    def reloading(self) -> bool:
        """RELOADING=1 (e.g. on SIGHUP); send ``ready()`` when the reload is done."""
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self) -> bool:
        """STOPPING=1: we are shutting down on purpose."""
        return self.notify("STOPPING=1")

    def watchdog_interval(self) -> float | None:
        """systemd's ``WatchdogSec=`` in seconds, or None if no watchdog is set for this process."""
        usec = self._env.get("WATCHDOG_USEC")
        if not usec:
            return None
        pid = self._env.get("WATCHDOG_PID")
        if pid:
            try:
                if int(pid) != os.getpid():
                    return None
            except ValueError:
                return None
        try:
            value = int(usec)
        except ValueError:
            return None
        return max(value / 1e6, MIN_WATCHDOG_S) if value > 0 else None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _status_line(text: str) -> str:
    return "STATUS=" + " ".join(str(text).split())
