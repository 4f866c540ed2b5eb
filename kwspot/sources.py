"""Audio sources: microphone, file, stdin. Each delivers mono float32 at 8 kHz.

``read(timeout)`` returns the next block (empty if nothing arrived in time)
or None at the end of the stream. Every source resamples with the same
streaming soxr resampler that matches training's front end.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from kwspot.devices import audio_landscape, import_sounddevice, release_alsa_plugins, resolve_device
from kwspot.errors import KwspotError
from kwspot.frontend import (
    SAMPLE_RATE,
    StreamResampler,
    block_frames,
    open_audio,
    refuse_far_outside,
    sndfile_words,
    to_mono,
)
from kwspot.paths import shown
from kwspot.pipe_source import StdinSource, is_pipe_like

__all__ = ["FileSource", "LiveSource", "MicSource", "Source", "StdinSource", "is_pipe_like", "with_tail"]

log = logging.getLogger("kwspot")
T = TypeVar("T")
EMPTY = np.zeros(0, dtype=np.float32)


def with_tail(samples: np.ndarray) -> np.ndarray:
    """The last samples of a finite stream, plus one second of silence so its last word is judged."""
    return np.concatenate((samples, np.zeros(SAMPLE_RATE, dtype=np.float32)))


class Source(Protocol):
    """Audio in: blocks of 8 kHz float32 samples. The abilities beyond ``read`` have defaults.

    ``overflows`` and ``dropped_blocks`` count input trouble; a live source
    that can fall behind reports its ``backlog_samples()`` and can
    ``drain()`` what piled up (returning how many samples it dropped).
    """

    description: str
    rate: int
    overflows: int = 0
    dropped_blocks: int = 0

    def read(self, timeout: float) -> np.ndarray | None:
        """The next block (may be empty on a timeout), or None at the end of the stream."""
        ...

    def close(self) -> None: ...

    def backlog_samples(self) -> int:
        """Samples waiting to be read (a file or pipe never piles up: 0)."""
        return 0

    def drain(self) -> int:
        """Drop what is waiting; returns the number of samples dropped."""
        return 0


class FileSource(Source):
    """A WAV/FLAC file (any rate, any channels), in real time or as fast as possible.

    It decodes a second at a time (soundfile's per-call cost is larger than the decoding of one
    block) and hands out ``block_ms`` blocks, each when its last sample would have been captured.
    At the end it adds one second of silence so the last word is judged.
    """

    CHUNK_S = 1.0

    def __init__(self, path: str | Path, realtime: bool = True, block_ms: int = 50) -> None:
        self.path = Path(path)
        self._file = open_audio(self.path)
        self.rate = int(self._file.samplerate)
        self.description = f"{shown(self.path)} ({self.rate} Hz, {self._file.channels} ch)"
        self._block = max(1, self.rate * block_ms // 1000)
        self._resampler = StreamResampler(self.rate)
        self._realtime = realtime
        self._start = time.monotonic()
        self._frames_read = 0
        self._tail_sent = False
        self._chunk = np.zeros(0, dtype=np.float32)  # decoded mono frames not yet handed out
        self._eof = False

    def read(self, timeout: float) -> np.ndarray | None:
        if self._tail_sent:
            return None
        if self._realtime:  # a block is due when its last sample would have been captured
            due = self._start + (self._frames_read + self._block) / self.rate
            wait = due - time.monotonic()
            if wait > timeout:
                time.sleep(timeout)
                return EMPTY
            if wait > 0:
                time.sleep(wait)
        if self._chunk.size < self._block and not self._eof:
            self._decode_chunk()
        frames, self._chunk = self._chunk[: self._block], self._chunk[self._block :]
        self._frames_read += len(frames)
        if self._eof and not self._chunk.size:
            self._tail_sent = True
            return with_tail(self._resampler.process(frames, last=True))
        return self._resampler.process(frames)

    def _decode_chunk(self) -> None:
        import soundfile

        want = max(self._block, block_frames(self.rate, self._file.channels, self.CHUNK_S))
        try:
            frames = to_mono(self._file.read(want, dtype="float32", always_2d=True))
        except (soundfile.LibsndfileError, RuntimeError) as exc:
            raise KwspotError(
                f"{shown(self.path)}: unreadable audio past frame {self._frames_read} ({sndfile_words(exc)})"
            ) from None
        refuse_far_outside(self.path, frames)
        self._eof = len(frames) < want
        self._chunk = np.concatenate((self._chunk, frames)) if self._chunk.size else frames

    @property
    def nonfinite(self) -> int:
        return self._resampler.nonfinite

    def close(self) -> None:
        self._file.close()


@contextmanager
def sound_server_fragments(block_ms: int) -> Iterator[None]:
    """While a stream opens: ask PulseAudio/PipeWire (through their ALSA plugins) for fragments of one block.

    Left to itself the plugin wakes the process every ~15 ms; one block per wake-up halves kwspot's CPU
    there. Set only while opening (the plugin reads it then), and never over the user's own setting.
    """
    wanted = {"PULSE_LATENCY_MSEC": str(block_ms), "PIPEWIRE_LATENCY": f"{block_ms * 48}/48000"}
    added = [key for key in wanted if key not in os.environ]
    os.environ.update({key: wanted[key] for key in added})
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


class AudioSystemHung(KwspotError):
    """A call into the sound system never returned (e.g. a frozen sound server): only a restart helps."""


class LiveSource(Source):
    """A live input whose producer thread only puts blocks into a queue; the main loop reads them (a subclass
    whose reads have time limits of their own may instead read in the loop: ``_next_block``).

    A subclass opens its stream in ``_open`` (setting ``rate``, ``description`` and ``_resampler``) and
    hands each captured block to ``_push``. If the stream dies or stops delivering audio, ``read`` closes it
    and reopens it with backoff, logging what happened; it never gives up. Calls that talk to the sound
    system run in a worker thread with a time limit, so a frozen server cannot freeze the loop (or its
    signal handling).
    """

    STALL_S = 2.0  # no audio for this long means the stream is dead
    FIRST_AUDIO_S = 5.0  # a stream just opened may take longer (a sound server starting up)
    SILENT_AGAIN_S = FIRST_AUDIO_S  # ... and after an open that stayed silent (MicSource: less)
    FIRST_BACKOFF_S = 1.0
    MAX_BACKOFF_S = 30.0
    CALL_TIMEOUT_S = 5.0
    hung = False  # set once a sound-system call never returned; it is not touched again
    errors: tuple[type[BaseException], ...] = (KwspotError,)  # what a failed reopen raises

    def __init__(self, block_ms: int) -> None:
        self._block_ms = block_ms
        # SimpleQueue: its put and get are C calls (safe in a PortAudio callback) rather than a Python Condition's
        # dozens of bytecodes, which count on cold caches every block; _push bounds it
        self._queue: queue.SimpleQueue[np.ndarray] = queue.SimpleQueue()
        self._max_blocks = max(4, 4000 // block_ms)
        self.overflows = 0  # blocks the sound system reported as overflowed
        self.dropped_blocks = 0  # blocks lost because the main loop fell behind
        self.reconnects = 0
        self._open_now = False
        self._delivered = False
        self._silent_open = False  # the last stream opened never gave audio (a suspended source)
        self._waiting = False  # silent, but the stream is kept open and waited for (``_wait_for_audio``)
        self._grace = self.FIRST_AUDIO_S  # how long the stream now open may take to give its first audio
        self._last_audio = time.monotonic()
        self._last_read = self._last_audio  # when the main loop last asked for audio
        self._retry_at = 0.0
        self._backoff = self.FIRST_BACKOFF_S

    def _open(self) -> None:
        raise NotImplementedError

    def _next_block(self, timeout: float) -> np.ndarray:
        """The next captured block; queue.Empty if none came within ``timeout``."""
        return self._queue.get(timeout=timeout)

    def _alive(self) -> bool:
        """Whether the stream still runs (it may be alive and silent: see STALL_S)."""
        raise NotImplementedError

    def _stop_stream(self) -> None:
        raise NotImplementedError

    def _reinitialize(self) -> None:
        """Reopen after a loss (a subclass may first restart its library)."""
        self._open()

    def _opened(self) -> None:
        self._open_now = True
        self._delivered = False  # no block from this stream yet
        self._grace = self.SILENT_AGAIN_S if self._silent_open else self.FIRST_AUDIO_S
        self._last_audio = time.monotonic() + self._grace - self.STALL_S

    def _push(self, block: np.ndarray, overflow: bool = False) -> None:
        """Producer side: queue one captured block (mono or frames x channels)."""
        if overflow:
            self.overflows += 1
        if self._queue.qsize() >= self._max_blocks:  # the one producer, so no race past the bound
            self.dropped_blocks += 1
        else:
            self._queue.put(block)

    def _guarded(self, call: Callable[[], T], what: str) -> T:
        """Run a sound-system call in a worker thread; raise AudioSystemHung if it does not return in time."""
        return guarded(call, what, self.CALL_TIMEOUT_S)

    def backlog_samples(self) -> int:
        """Audio waiting in the queue, in 8 kHz samples."""
        return self._queue.qsize() * SAMPLE_RATE * self._block_ms // 1000

    def drain(self) -> int:
        """Throw away what is queued (we fell behind); returns the 8 kHz samples dropped."""
        dropped = 0
        while True:
            try:
                dropped += len(self._queue.get_nowait())
            except queue.Empty:
                return dropped * SAMPLE_RATE // self.rate

    def read(self, timeout: float) -> np.ndarray | None:
        now = time.monotonic()
        if now - self._last_read > self.STALL_S:  # the loop itself did not run (stopped, starved): not the input
            self._last_audio = max(self._last_audio, now)
        self._last_read = now
        if not self._open_now:
            return self._retry(timeout)
        try:
            block = self._next_block(timeout)
        except queue.Empty:
            alive = self._alive()
            stalled = time.monotonic() - self._last_audio > self.STALL_S
            if alive and stalled and self._wait_for_audio():
                return EMPTY
            if not alive or stalled:
                silent_s = self.STALL_S if self._delivered else self._grace
                reason = "stream stopped" if not alive else f"no audio for {silent_s:g} s"
                self._close_stream()
                self._silent_open = alive and not self._delivered
                if self._silent_open:  # open, yet silent since it opened (a suspended source): back off
                    log.warning("audio input open but silent (%s); next try in %.0f s", reason, self._backoff)
                    self._retry_at = time.monotonic() + self._backoff
                    self._backoff = min(self._backoff * 2, self.MAX_BACKOFF_S)
                else:  # it stopped, or worked and then fell silent: try again at once
                    log.warning("audio input lost (%s); reopening", reason)
                    self._retry_at = time.monotonic()
            return EMPTY
        self._last_audio = time.monotonic()
        if self._waiting:
            self._waiting = False
            log.info("audio input back: %s", self.description)
        self._delivered = True
        self._silent_open = False
        self._backoff = self.FIRST_BACKOFF_S
        return self._resampler.process(to_mono(block))

    def _wait_for_audio(self) -> bool:
        """Silent for STALL_S: True to keep the stream open and wait (no call of it can hang), False to close it
        and reopen (the default: a dead stream may never say so)."""
        return False

    @property
    def reconnecting(self) -> bool:
        """Closed after a loss and trying again with backoff, or waiting for a silent stream (the loop still
        turns: not a hang)."""
        return not self._open_now or self._waiting

    def _retry(self, timeout: float) -> np.ndarray:
        wait = self._retry_at - time.monotonic()
        if wait > 0:
            time.sleep(min(wait, timeout))
            return EMPTY
        try:
            self._guarded(self._reinitialize, "reopening the input device")
        except AudioSystemHung:
            raise
        except self.errors as exc:
            log.warning("audio input still unavailable (%s); next try in %.0f s", exc, self._backoff)
            self._retry_at = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, self.MAX_BACKOFF_S)
            return EMPTY
        self.reconnects += 1
        log.info("audio input back: %s", self.description)
        return EMPTY

    def _close_stream(self) -> None:
        was_open, self._open_now = self._open_now, False
        self._waiting = False  # the wait was for this stream
        if was_open and not LiveSource.hung:
            self._guarded(self._stop_stream, "closing the input stream")
        while not self._queue.empty():
            self._queue.get_nowait()

    def close(self) -> None:
        self._close_stream()


def wait_awake(done: threading.Event, timeout_s: float, slice_s: float = 0.25) -> bool:
    """Wait for ``done`` up to ``timeout_s`` of time this process was running: a stretch it spent stopped
    (SIGSTOP, a frozen cgroup, a starved machine) does not count, since the call waited for did not run either."""
    counted = 0.0
    while counted < timeout_s:
        wait_s = min(slice_s, timeout_s - counted)
        started = time.monotonic()
        if done.wait(wait_s):
            return True
        counted += min(time.monotonic() - started, wait_s + 0.05)
    return done.is_set()


def guarded(call: Callable[[], T], what: str, timeout_s: float = LiveSource.CALL_TIMEOUT_S) -> T:
    """``call()`` in a worker thread: its result, its exception, or AudioSystemHung after ``timeout_s``.

    A call into a frozen sound server never returns and cannot be interrupted; the main thread stays free
    for signals, and the process leaves without touching the sound system again (``LiveSource.hung``).
    """
    if LiveSource.hung:
        raise AudioSystemHung("audio system hung earlier; not touching it again")
    done = threading.Event()
    results: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(call())
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)
        finally:
            done.set()

    stderr = os.dup(2)  # sounddevice points fd 2 at /dev/null while PortAudio starts: a hang there would keep it
    try:  # (fd 2 is always open: kwspot.cli.main opens /dev/null on a closed one)
        threading.Thread(target=run, name="audio-call", daemon=True).start()
        finished = wait_awake(done, timeout_s)
        if not finished:
            os.dup2(stderr, 2)  # so that the one-line error below is seen
    finally:
        os.close(stderr)
    if not finished:
        LiveSource.hung = True
        raise AudioSystemHung(
            f"audio system hung: {what} did not return in {timeout_s:g} s "
            "(sound server frozen?); exiting so that kwspot can be restarted"
        )
    if errors:
        raise errors[0]
    return results[0]


class MicSource(LiveSource):
    """A sounddevice (PortAudio) input stream whose callback only copies blocks into the queue.

    The device is opened at its own default rate (or ``rate``) and resampled here, in the main loop.
    """

    SILENT_AGAIN_S = 2.5  # a silent stream makes PortAudio's capture thread spin a core: wait less once seen

    def __init__(self, device: int | str | None = None, rate: int | None = None, block_ms: int = 100) -> None:
        super().__init__(block_ms)
        self._sd = self._guarded(import_sounddevice, "starting PortAudio")  # it probes the sound servers
        self._landscape = audio_landscape()  # what PortAudio found when it started
        self.errors = (KwspotError, self._sd.PortAudioError)
        self._wanted_device = device
        self._wanted_rate = rate
        self._stream: Any = None
        self._guarded(self._open, "opening the input device")

    def _open(self) -> None:
        info = resolve_device(self._wanted_device)
        self.rate = int(self._wanted_rate or info["default_samplerate"])
        self.description = f"{info['name']} (device {info['index']}, {self.rate} Hz)"
        self._resampler = StreamResampler(self.rate)
        last_error: Exception | None = None
        for channels in sorted({1, min(2, int(info["max_input_channels"]))}):
            try:
                with sound_server_fragments(self._block_ms):
                    self._stream = self._sd.InputStream(
                        device=info["index"],
                        samplerate=self.rate,
                        channels=channels,
                        dtype="float32",
                        blocksize=max(1, self.rate * self._block_ms // 1000),
                        callback=self._callback,
                    )
                    self._stream.start()
                break
            except self._sd.PortAudioError as exc:
                last_error, self._stream = exc, None
        if self._stream is None:
            raise KwspotError(f"cannot open input device {info['name']!r} at {self.rate} Hz ({last_error})")
        self._opened()

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        self._push(indata.copy(), overflow=bool(status.input_overflow))

    def _alive(self) -> bool:
        return self._stream is not None and self._stream.active

    def _reinitialize(self) -> None:
        """Restart PortAudio if devices or sound servers changed (so it sees those that came back), then open
        the device."""
        landscape = audio_landscape()
        if landscape != self._landscape:
            self._sd._terminate()
            self._sd._initialize()
            release_alsa_plugins()
            self._landscape = landscape
        self._open()

    def _stop_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.abort()
                stream.close()
            except self._sd.PortAudioError:
                pass
