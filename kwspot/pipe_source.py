"""Audio on a pipe: stdin (``--input -``), ``/dev/stdin``, a FIFO or a character device.

The first bytes decide what it is: a WAV (``RIFF``/``RF64``) or FLAC
(``fLaC``) stream is decoded with soundfile in a background thread, at its
own rate and channels; anything else is raw 16-bit little-endian mono PCM at
the given rate (``arecord -t raw``). The main loop only ever waits with a
timeout, so signals are handled while a pipe is silent.
"""

from __future__ import annotations

import fcntl
import logging
import os
import queue
import select
import stat
import sys
import threading
from typing import Any, BinaryIO

import numpy as np

from kwspot.errors import KwspotError
from kwspot.frontend import StreamResampler, check_format, refuse_far_outside, sndfile_words, to_mono
from kwspot.paths import checked, shown

log = logging.getLogger("kwspot")
EMPTY = np.zeros(0, dtype=np.float32)
CONTAINERS = {b"RIFF": "WAV", b"RF64": "WAV", b"fLaC": "FLAC"}
UNSUPPORTED = {b"OggS": "Ogg", b"ID3\x03": "MP3", b"ID3\x04": "MP3", b"FORM": "AIFF", b"caff": "CAF",
               b"riff": "Wave64"}
_END = object()


def is_pipe_like(path: str) -> bool:
    """True for a FIFO, character device or socket (read as a stream), False for files and the rest."""
    try:
        mode = os.stat(checked(path, "input")).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISSOCK(mode)


def open_input_fd(path: str, stream: BinaryIO | None) -> tuple[int, str]:
    """The descriptor to read and its name for messages; refuses a closed stdin or a terminal."""
    if stream is not None:
        return stream.fileno(), "stdin"
    if path == "-":
        try:
            if sys.stdin is None:  # closed when Python started (kwspot.cli then put /dev/null there)
                raise OSError
            os.fstat(0)
        except OSError:
            raise KwspotError("stdin is closed; pipe audio into kwspot listen --input -") from None
        fd, name = 0, "stdin"
    else:
        name = shown(path)
        try:  # non-blocking: a FIFO without a writer must not block the open (nor Ctrl-C)
            fd = os.open(checked(path, "input"), os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            raise KwspotError(f"{name}: cannot open input ({exc.strerror})") from None
    if os.isatty(fd):
        raise KwspotError(f"{name} is a terminal; pipe audio into it (raw S16_LE mono, WAV or FLAC)")
    if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY:
        raise KwspotError(f"{name} is open for writing only; pipe audio into kwspot listen --input -")
    return fd, name


class _History:
    """A read-only file over a pipe that can seek back within the last ``keep`` bytes (for libsndfile's FLAC)."""

    def __init__(self, head: bytes, fd: int, keep: int = 1 << 20) -> None:
        self._fd, self._keep = fd, keep
        self._buf = bytearray(head)
        self._base = 0  # stream offset of _buf[0]
        self._pos = 0
        self._eof = False

    def read(self, n: int = -1) -> bytes:
        want = self._pos - self._base + (n if n >= 0 else 1 << 16)
        while len(self._buf) < want and not self._eof:
            chunk = os.read(self._fd, 1 << 16)
            self._eof = not chunk
            self._buf += chunk
        start = self._pos - self._base
        data = bytes(self._buf[start : start + max(0, want - start)])
        self._pos += len(data)
        if len(self._buf) > 2 * self._keep:  # forget all but the last `keep` bytes
            cut = len(self._buf) - self._keep
            del self._buf[:cut]
            self._base += cut
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == os.SEEK_END:  # a pipe has no end yet: far away, and never read there
            self._pos = (1 << 62) + offset
        else:
            target = offset if whence == os.SEEK_SET else self._pos + offset
            self._pos = max(target, self._base)
        return self._pos

    def tell(self) -> int:
        return self._pos


def _pump(head: bytes, src: int, dst: int) -> None:
    """Copy ``head`` and then everything from ``src`` into ``dst`` (so libsndfile sees the whole stream)."""
    try:
        os.write(dst, head)
        while chunk := os.read(src, 1 << 16):
            os.write(dst, chunk)
    except OSError:
        pass
    finally:
        os.close(dst)


class StdinSource:
    """Raw S16_LE mono PCM, WAV or FLAC arriving on a pipe (see the module docstring).

    A :class:`kwspot.sources.Source` (not subclassed: that module imports this one); a pipe
    never overflows nor piles up, so its counters stay 0 and there is nothing to drain.
    """

    overflows = 0
    dropped_blocks = 0

    def __init__(self, rate: int = 16000, block_ms: int = 50, stream: BinaryIO | None = None, path: str = "-") -> None:
        self._fd, self._name = open_input_fd(path, stream)
        self._owns_fd = stream is None and path != "-"
        self.rate = rate
        self.description = f"{self._name} (raw S16_LE mono at {rate} Hz, or WAV/FLAC)"
        self._block_ms = block_ms
        self._bytes = 2 * max(1, rate * block_ms // 1000)
        self._head: bytes | None = b""  # the first bytes, until they tell what the stream is
        self._carry = b""
        self._resampler = StreamResampler(rate)
        self._samples = 0
        self._ended = False
        self._decoded: queue.Queue[Any] | None = None

    @property
    def nonfinite(self) -> int:
        return self._resampler.nonfinite

    def read(self, timeout: float) -> np.ndarray | None:
        if self._ended:
            return None
        if self._decoded is not None:
            return self._read_decoded(timeout)
        return self._read_raw(timeout)

    def _read_raw(self, timeout: float) -> np.ndarray | None:
        ready, _, _ = select.select([self._fd], [], [], timeout)
        if not ready:
            return EMPTY
        try:
            data = os.read(self._fd, self._bytes)
        except BlockingIOError:
            return EMPTY
        if self._head is not None:
            self._head += data
            if data and len(self._head) < 4:
                return EMPTY
            data, self._head = self._head, None
            if data[:4] in UNSUPPORTED:
                kind = UNSUPPORTED[data[:4]]
                raise KwspotError(f"{self._name}: {kind} is not supported on a pipe; send WAV, FLAC or raw PCM")
            if data[:4] in CONTAINERS:
                self._start_decoder(data, CONTAINERS[data[:4]])
                return EMPTY
        if not data:
            return self._end()
        data = self._carry + data
        usable = len(data) - len(data) % 2
        self._carry = data[usable:]
        samples = np.frombuffer(data[:usable], dtype="<i2").astype(np.float32) / 32768.0
        self._samples += samples.size
        return self._resampler.process(samples)

    def _end(self) -> np.ndarray:
        self._ended = True
        if not self._samples:
            raise KwspotError(f"{self._name}: no audio (the input ended before its first sample)")
        from kwspot.sources import with_tail

        return with_tail(self._resampler.process(EMPTY, last=True))

    # -- WAV / FLAC ------------------------------------------------------------
    def _start_decoder(self, head: bytes, kind: str) -> None:
        if self._fd != 0:
            os.set_blocking(self._fd, True)  # a writer is there now; the decoder thread may block
        self._decoded = queue.Queue(maxsize=max(4, 2000 // self._block_ms))
        # The thread holds the queue, not this source: blocked on a silent pipe at exit, it must not keep the
        # source's resampler alive (nanobind reports such objects as leaked).
        threading.Thread(target=_decode, args=(head, kind, self._fd, self._block_ms, self._decoded),
                         name="kwspot-decode", daemon=True).start()

    def _read_decoded(self, timeout: float) -> np.ndarray | None:
        assert self._decoded is not None
        try:
            item = self._decoded.get(timeout=timeout)
        except queue.Empty:
            return EMPTY
        if item is _END:
            return self._end()
        if isinstance(item, Exception):
            raise KwspotError(f"{self._name}: unreadable audio stream ({sndfile_words(item)})")
        if isinstance(item, tuple):
            kind, rate, channels = item
            self.rate, self._resampler = rate, StreamResampler(rate)
            log.info("%s: %s stream, %d Hz, %d ch", self._name, kind, rate, channels)
            self.description = f"{self._name} ({kind}, {rate} Hz, {channels} ch)"
            return EMPTY
        refuse_far_outside(self._name, item)
        self._samples += len(item)
        return self._resampler.process(to_mono(item))

    def backlog_samples(self) -> int:
        return 0

    def drain(self) -> int:
        return 0

    def close(self) -> None:
        if self._owns_fd:
            try:
                os.close(self._fd)
            except OSError:
                pass


def _decode(head: bytes, kind: str, fd: int, block_ms: int, out: queue.Queue[Any]) -> None:
    """Decode a WAV or FLAC stream from ``fd`` (its first bytes already read: ``head``) into ``out``: first
    (kind, rate, channels), then blocks of frames, then ``_END``; or the exception that stopped it."""
    import soundfile

    try:
        if kind == "WAV":  # libsndfile reads WAV from a pipe natively, given the whole stream
            r, w = os.pipe()
            threading.Thread(target=_pump, args=(head, fd, w), name="kwspot-pump", daemon=True).start()
            audio = soundfile.SoundFile(r, closefd=True)
        else:
            audio = soundfile.SoundFile(_History(head, fd))
        with audio:
            if kind == "WAV" and audio.frames == 0:
                raise KwspotError("WAV header announces no samples")
            check_format(int(audio.samplerate), int(audio.channels))
            out.put((kind, int(audio.samplerate), int(audio.channels)))
            block = max(1, int(audio.samplerate) * block_ms // 1000)
            while len(frames := audio.read(block, dtype="float32", always_2d=True)):
                out.put(frames)
        out.put(_END)
    except Exception as exc:  # handed to the main loop, which reports it in one line
        out.put(exc)
