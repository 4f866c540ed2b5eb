"""Capture straight from PulseAudio or PipeWire (pipewire-pulse) through libpulse (``kwspot.libpulse``).

Lighter than PortAudio on a desktop or a Pi with a sound server: no ALSA plugins are probed or
mapped (6.5 MiB less RSS in bench/listen.py). Used for the default input when a server is
reachable (``audio.backend: auto``) or when asked (``pulse``).
"""

from __future__ import annotations

import logging
import os
import queue
import time
from pathlib import Path

import numpy as np

from kwspot import libpulse
from kwspot.devices import pulse_socket_paths
from kwspot.errors import KwspotError
from kwspot.frontend import SAMPLE_RATE, StreamResampler
from kwspot.sources import LiveSource

log = logging.getLogger("kwspot")

DEFAULT_RATE = 48000  # PipeWire's and most cards' own rate: the server need not resample


def server_reachable(env: dict[str, str] | None = None) -> bool:
    """Whether a PulseAudio/PipeWire server is configured or has its socket in place.

    Checked before connecting so that kwspot never makes libpulse autospawn a server (say, under
    systemd, where none belongs).
    """
    env = os.environ if env is None else env
    if env.get("PULSE_SERVER"):  # servers separated by spaces: unix:/path, /path, or a network address
        for server in env["PULSE_SERVER"].split():
            path = server.removeprefix("unix:")
            if not path.startswith("/") or Path(path).is_socket():
                return True
        return False
    return any(path.is_socket() for path in pulse_socket_paths(env))


def choose_backend(backend: str, device: str | int | None, env: dict[str, str] | None = None) -> str:
    """``pulse`` or ``portaudio`` for the ``audio.backend`` setting.

    ``auto`` takes the sound server for the default input only, and only where libpulse is installed:
    device names and indexes given by the user are PortAudio's (`kwspot devices`).
    """
    if backend != "auto":
        return backend
    return "pulse" if device is None and server_reachable(env) and libpulse.available() else "portaudio"


class PulseSource(LiveSource):
    """Mono float32 from a PulseAudio/PipeWire source, read one block at a time by the main loop itself.

    ``device`` is a PulseAudio source name (None: the server's default source). No thread of kwspot's or
    libpulse's runs between reads: the server's fragments wait in the socket until the loop asks for its
    next block, and every read has the loop's time limit. A loss closes the stream and the loop reopens it
    with backoff (``LiveSource``).
    """

    EARLY_S = 0.002  # a probe read starts this long before its block is due
    LATE_S = 0.004  # any other read starts this long after, when its block is already there
    PROBE_EVERY = 20  # blocks between probe reads (the clocks of the card and of this machine drift apart)
    OPEN_TIMEOUT_S = 4.0  # the server must accept the stream in this time (under LiveSource.CALL_TIMEOUT_S)
    SILENT_REOPEN_S = 60.0  # a stream silent this long is reopened all the same (one that broke without a word)

    def __init__(self, device: str | None = None, rate: int | None = None, block_ms: int = 100,
                 max_lag_ms: int = 500) -> None:
        super().__init__(block_ms)
        self._max_lag_s = max_lag_ms / 1000
        self._flushed = 0  # 8 kHz samples of audio waiting in the server that were thrown away (lag)
        libpulse.library()  # a one-line error now if it is missing
        self._device = str(device) if device is not None else None
        self.rate = rate or DEFAULT_RATE
        self._block_bytes = 4 * max(1, self.rate * block_ms // 1000)
        self._stream: libpulse.RecordStream | None = None
        self._guarded(self._open, "connecting to the sound server")

    def _open(self) -> None:
        try:
            stream = libpulse.RecordStream(self._device, self.rate, self._block_bytes, self.OPEN_TIMEOUT_S)
        except libpulse.PulseError as exc:
            where = f"source {self._device!r}" if self._device else "the default source"
            raise KwspotError(f"cannot capture {where} from PulseAudio/PipeWire ({exc})") from None
        self.description = f"{self._device or 'default source'} (PulseAudio/PipeWire device, {self.rate} Hz)"
        self._resampler = StreamResampler(self.rate)
        self._stream = stream
        self._due: float | None = None  # when the next block completes, once known
        self._probe = True  # the next read starts early, to learn the phase
        self._wake: float | None = None  # when the next read should start
        self._count = 0
        self._opened()

    def _next_block(self, timeout: float) -> np.ndarray:
        """The next block, read when it is due.

        The server sends fragments as its source posts them (every 20 ms or less beside a client that asks for
        low latency); they wait in the socket, and most reads start just after their block is complete: they
        return at once, one wake-up a block. The phase of the blocks is learnt from reads that had to wait,
        which ended as their block did. A probe read, every ``PROBE_EVERY`` blocks, starts just before its
        block is due to check the phase; a probe that finds its block complete already (early data, or a
        backlog after a stall) says nothing of the phase, so probes follow every half block, which also
        catches up on a backlog at twice the rate of the audio, until one has to wait.
        """
        stream, now = self._stream, time.monotonic()
        if stream is None:
            raise queue.Empty
        deadline = now + timeout
        if self._wake is not None and self._wake > now:
            time.sleep(min(self._wake, deadline) - now)  # a C call: no thread wakes before then
            if self._wake > deadline:
                raise queue.Empty
        try:
            data = stream.read(self._block_bytes, max(0.0, deadline - time.monotonic()))
        except libpulse.PulseError:
            self._stop_stream()  # the server went away: the loop sees the stream gone and reopens
            raise queue.Empty from None
        now = time.monotonic()
        if data is None:  # no audio in the time given (a suspended source): the loop judges the silence
            self._due, self._probe, self._wake = None, True, None
            raise queue.Empty
        self._count += 1
        block_s = self._block_ms / 1000
        if stream.waited:
            self._due = now + block_s  # this block completed just now
        elif self._probe:
            self._due = None  # complete before its time: phase unknown, or a backlog
            self._skip_backlog(stream)
        else:
            self._due += block_s
        self._probe = self._due is None or (self._count + 1) % self.PROBE_EVERY == 0
        if self._due is None:
            self._wake = now + block_s / 2
        else:
            self._wake = self._due - self.EARLY_S if self._probe else self._due + self.LATE_S
        return np.frombuffer(data, dtype=np.float32)

    def _skip_backlog(self, stream: libpulse.RecordStream) -> None:
        """Audio piled up in the server (kwspot was stopped or starved): past ``max_lag_ms``, throw it away there
        and count it, so that the main loop moves time on (``drain``) instead of running that far behind."""
        try:
            waiting_s = stream.latency_s()
            if waiting_s > self._max_lag_s:
                stream.flush()
                self._flushed += round(waiting_s * SAMPLE_RATE)
        except libpulse.PulseError:
            pass  # no figure: the backlog drains at twice real time

    def backlog_samples(self) -> int:
        """Audio thrown away in the server not yet accounted for (nothing else waits in kwspot)."""
        return self._flushed

    def drain(self) -> int:
        flushed, self._flushed = self._flushed, 0
        return flushed

    def _alive(self) -> bool:
        return self._stream is not None

    def _wait_for_audio(self) -> bool:
        """A silent stream (a suspended source, a frozen server) costs nothing and resumes by itself when its
        source runs again: keep it, rather than reopen with backoff and miss the first words after it."""
        silent_s = time.monotonic() - self._last_audio
        if silent_s > self.SILENT_REOPEN_S:
            return False
        if not self._waiting:
            self._waiting = True
            log.warning("audio input silent for %.0f s (source suspended or sound server not answering); "
                        "waiting for it", silent_s)
        return True

    def _stop_stream(self) -> None:
        """Disconnect (no call waits for the server)."""
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()
