"""Capture straight from PulseAudio or PipeWire (pipewire-pulse) through libpulse (``kwspot.libpulse``).

Lighter than PortAudio on a desktop or a Pi with a sound server: no ALSA plugins are probed or
mapped (6.5 MiB less RSS in bench/listen.py). Used for the default input when a server is
reachable (``audio.backend: auto``) or when asked (``pulse``).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np

from kwspot import libpulse
from kwspot.devices import pulse_socket_paths
from kwspot.errors import KwspotError
from kwspot.frontend import SAMPLE_RATE, StreamResampler
from kwspot.sources import LiveSource

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
    """Mono float32 from a PulseAudio/PipeWire source, read one block at a time by a reader thread.

    ``device`` is a PulseAudio source name (None: the server's default source). Each connection is owned
    by its reader thread, which frees it; a loss ends the thread and the main loop reopens with backoff.
    """

    EARLY_S = 0.002  # a probe read starts this long before its block is due
    LATE_S = 0.004  # any other read starts this long after, when its block is already there
    PROBE_EVERY = 20  # blocks between probe reads (the clocks of the card and of this machine drift apart)
    OPEN_TIMEOUT_S = 4.0  # the server must accept the stream in this time (under LiveSource.CALL_TIMEOUT_S)

    def __init__(self, device: str | None = None, rate: int | None = None, block_ms: int = 100,
                 max_lag_ms: int = 500) -> None:
        super().__init__(block_ms)
        self._max_lag_s = max_lag_ms / 1000
        self._flushed = 0  # 8 kHz samples of audio waiting in the server that the reader threw away (lag)
        self._flushed_lock = threading.Lock()
        libpulse.library()  # a one-line error now if it is missing
        self._device = str(device) if device is not None else None
        self.rate = rate or DEFAULT_RATE
        self._reader: threading.Thread | None = None
        self._stop = threading.Event()
        self._guarded(self._open, "connecting to the sound server")

    def _open(self) -> None:
        block_bytes = 4 * max(1, self.rate * self._block_ms // 1000)
        try:
            stream = libpulse.RecordStream(self._device, self.rate, block_bytes, self.OPEN_TIMEOUT_S)
        except libpulse.PulseError as exc:
            where = f"source {self._device!r}" if self._device else "the default source"
            raise KwspotError(f"cannot capture {where} from PulseAudio/PipeWire ({exc})") from None
        self.description = f"{self._device or 'default source'} (PulseAudio/PipeWire device, {self.rate} Hz)"
        self._resampler = StreamResampler(self.rate)
        self._stop = threading.Event()
        self._reader = threading.Thread(
            target=self._capture, args=(stream, block_bytes, self._stop), name="pulse-capture", daemon=True
        )
        self._reader.start()
        self._opened()

    def _capture(self, stream: libpulse.RecordStream, block_bytes: int, stop: threading.Event) -> None:
        """Reader thread: one read a block, until stopped or the server goes.

        The server sends fragments as its source posts them (every 20 ms or less beside a client that asks for
        low latency); they wait for this thread, which sleeps between reads, and most reads start just after
        their block is complete: they return at once, one wake-up a block. The phase of the blocks is learnt
        from reads that had to wait, which ended as their block did. A probe read, every ``PROBE_EVERY``
        blocks, starts just before its block is due to check the phase; a probe that finds its block complete
        already (early data, or a backlog after a stall) says nothing of the phase, so probes follow every half
        block, which also catches up on a backlog at twice the rate of the audio, until one has to wait.
        """
        block_s = self._block_ms / 1000
        due: float | None = None  # when the next block completes, once known
        probe = True  # this read starts early, to learn the phase
        count = 0
        try:
            while not stop.is_set():
                data = stream.read(block_bytes, timeout_s=block_s)
                now = time.monotonic()
                if data is None:  # no audio for a block (a suspended source): the main loop judges the silence
                    due, probe = None, True
                    continue
                if not stop.is_set():
                    self._push(np.frombuffer(data, dtype=np.float32))
                count += 1
                if stream.waited:
                    due = now + block_s  # this block completed just now
                elif probe:
                    due = None  # complete before its time: phase unknown, or a backlog
                    self._skip_backlog(stream)
                else:
                    due += block_s
                probe = due is None or (count + 1) % self.PROBE_EVERY == 0
                wake = now + block_s / 2 if due is None else due - self.EARLY_S if probe else due + self.LATE_S
                time.sleep(max(0.0, wake - time.monotonic()))  # a C call: cheaper than an Event's wait
        except libpulse.PulseError:
            pass  # the main loop sees the thread gone and reopens
        finally:
            stream.close()

    def _skip_backlog(self, stream: libpulse.RecordStream) -> None:
        """Audio piled up in the server (kwspot was stopped or starved): past ``max_lag_ms``, throw it away there
        and count it, so that the main loop moves time on (``drain``) instead of running that far behind."""
        try:
            waiting_s = stream.latency_s()
            if waiting_s > self._max_lag_s:
                stream.flush()
                with self._flushed_lock:
                    self._flushed += round(waiting_s * SAMPLE_RATE)
        except libpulse.PulseError:
            pass  # no figure: the backlog drains at twice real time, as before

    def backlog_samples(self) -> int:
        """Audio waiting in the queue, and audio thrown away in the server not yet accounted for."""
        return super().backlog_samples() + self._flushed

    def drain(self) -> int:
        with self._flushed_lock:
            flushed, self._flushed = self._flushed, 0
        return super().drain() + flushed

    def _alive(self) -> bool:
        return self._reader is not None and self._reader.is_alive()

    def _stop_stream(self) -> None:
        """Stop the reader: it frees its connection after its current read (at most a block)."""
        self._stop.set()
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.join(timeout=2 * self._block_ms / 1000 + 1.0)
