"""One record stream on libpulse's asynchronous API, driven by its owner's schedule (ctypes, no threads).

libpulse-simple runs a mainloop thread that wakes for every fragment the server sends: every 20 ms or
less beside a client that asks for low latency, whatever fragment size kwspot asks for. Here the
mainloop is a plain one that the owning thread turns only when it wants audio; fragments wait in the
socket (or the shared memory the server writes) until then, so the process wakes about once a block.
Every call has a time limit: a frozen or suspended server cannot block the owner.
"""

from __future__ import annotations

import ctypes
import functools
import time

from kwspot.errors import KwspotError

PA_CONTEXT_NOAUTOSPAWN = 0x1  # never start a server (under systemd none belongs)
PA_STREAM_ADJUST_LATENCY = 0x2000  # the source's latency follows fragsize
PA_STREAM_DONT_MOVE = 0x0200  # a named source only: if it goes, the stream ends (not moved to another source)
PA_SAMPLE_FLOAT32LE = 5
CONTEXT_READY, CONTEXT_FAILED, CONTEXT_TERMINATED = 4, 5, 6
STREAM_READY, STREAM_FAILED, STREAM_TERMINATED = 2, 3, 4
OPERATION_RUNNING = 0
DEFAULT = 0xFFFFFFFF  # (uint32_t) -1: the server's default for a buffer attribute

_P = ctypes.c_void_p


class PulseError(Exception):
    """libpulse's own words for a failure (e.g. 'Connection refused', 'No such entity')."""


class _SampleSpec(ctypes.Structure):
    _fields_ = [("format", ctypes.c_int), ("rate", ctypes.c_uint32), ("channels", ctypes.c_uint8)]


class _BufferAttr(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint32) for name in ("maxlength", "tlength", "prebuf", "minreq", "fragsize")]


_PROTOTYPES: dict[str, tuple[object, list[object]]] = {  # name -> (restype, argtypes)
    "pa_mainloop_new": (_P, []),
    "pa_mainloop_get_api": (_P, [_P]),
    "pa_mainloop_prepare": (ctypes.c_int, [_P, ctypes.c_int]),
    "pa_mainloop_poll": (ctypes.c_int, [_P]),
    "pa_mainloop_dispatch": (ctypes.c_int, [_P]),
    "pa_mainloop_iterate": (ctypes.c_int, [_P, ctypes.c_int, _P]),
    "pa_mainloop_free": (None, [_P]),
    "pa_context_new": (_P, [_P, ctypes.c_char_p]),
    "pa_context_connect": (ctypes.c_int, [_P, ctypes.c_char_p, ctypes.c_int, _P]),
    "pa_context_get_state": (ctypes.c_int, [_P]),
    "pa_context_errno": (ctypes.c_int, [_P]),
    "pa_context_disconnect": (None, [_P]),
    "pa_context_unref": (None, [_P]),
    "pa_stream_new": (_P, [_P, ctypes.c_char_p, ctypes.POINTER(_SampleSpec), _P]),
    "pa_stream_connect_record": (ctypes.c_int, [_P, ctypes.c_char_p, ctypes.POINTER(_BufferAttr), ctypes.c_int]),
    "pa_stream_get_state": (ctypes.c_int, [_P]),
    "pa_stream_peek": (ctypes.c_int, [_P, ctypes.POINTER(_P), ctypes.POINTER(ctypes.c_size_t)]),
    "pa_stream_drop": (ctypes.c_int, [_P]),
    "pa_stream_update_timing_info": (_P, [_P, _P, _P]),
    "pa_stream_get_latency": (ctypes.c_int, [_P, ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_int)]),
    "pa_stream_flush": (_P, [_P, _P, _P]),
    "pa_stream_disconnect": (ctypes.c_int, [_P]),
    "pa_stream_unref": (None, [_P]),
    "pa_operation_get_state": (ctypes.c_int, [_P]),
    "pa_operation_unref": (None, [_P]),
    "pa_strerror": (ctypes.c_char_p, [ctypes.c_int]),
}


@functools.cache
def library() -> ctypes.CDLL:
    """libpulse, with the prototypes used here; a one-line error if it is not installed."""
    try:
        lib = ctypes.CDLL("libpulse.so.0")
        for name, (restype, argtypes) in _PROTOTYPES.items():
            function = getattr(lib, name)
            function.restype, function.argtypes = restype, argtypes
    except (OSError, AttributeError) as exc:
        raise KwspotError(f"audio.backend pulse needs libpulse (Debian: apt install libpulse0): {exc}") from None
    return lib


def available() -> bool:
    """Whether libpulse can be loaded here."""
    try:
        library()
    except KwspotError:
        return False
    return True


class Connection:
    """A connection to the PulseAudio/PipeWire server on a main loop of its own, turned only by its owner."""

    def __init__(self, timeout_s: float, name: bytes = b"kwspot") -> None:
        self._lib = lib = library()
        self._stream: int | None = None
        self._mainloop = lib.pa_mainloop_new()
        self._context = lib.pa_context_new(lib.pa_mainloop_get_api(self._mainloop), name)
        try:
            if lib.pa_context_connect(self._context, None, PA_CONTEXT_NOAUTOSPAWN, None) < 0:
                raise self._error()
            self._turn_until(lambda: lib.pa_context_get_state(self._context) == CONTEXT_READY,
                             time.monotonic() + timeout_s)
        except BaseException:
            self.close()
            raise

    def _error(self) -> PulseError:
        return PulseError(self._lib.pa_strerror(self._lib.pa_context_errno(self._context)).decode(errors="replace"))

    def _check(self) -> None:
        """Raise PulseError if the connection or the stream has failed or ended."""
        lib = self._lib
        if lib.pa_context_get_state(self._context) in (CONTEXT_FAILED, CONTEXT_TERMINATED):
            raise self._error()
        if self._stream is not None and lib.pa_stream_get_state(self._stream) in (STREAM_FAILED, STREAM_TERMINATED):
            raise self._error()

    def _turn(self, timeout_s: float) -> None:
        """Dispatch what is due, waiting up to ``timeout_s`` for something to happen."""
        lib, mainloop = self._lib, self._mainloop
        if (lib.pa_mainloop_prepare(mainloop, max(0, int(timeout_s * 1e6))) < 0 or lib.pa_mainloop_poll(mainloop) < 0
                or lib.pa_mainloop_dispatch(mainloop) < 0):
            raise PulseError("libpulse main loop failed")

    def _turn_until(self, done: object, deadline: float) -> None:
        while not done():  # type: ignore[operator]
            self._check()
            left = deadline - time.monotonic()
            if left <= 0:
                raise PulseError("the sound server did not answer in time")
            self._turn(left)

    def close(self) -> None:
        """Disconnect and free everything (no call waits for the server)."""
        lib = self._lib
        if self._stream:
            lib.pa_stream_disconnect(self._stream)
            lib.pa_stream_unref(self._stream)
        self._stream = None
        if self._context:
            lib.pa_context_disconnect(self._context)
            lib.pa_context_unref(self._context)
            self._context = None
        if self._mainloop:
            lib.pa_mainloop_free(self._mainloop)
            self._mainloop = None


class RecordStream(Connection):
    """Mono float32 at ``rate`` from a PulseAudio/PipeWire source (None: the server's default source).

    Owned by one thread at a time; nothing runs between its calls. ``read`` hands out exact blocks.
    """

    def __init__(self, device: str | None, rate: int, fragment_bytes: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        super().__init__(timeout_s)
        self._buffer = bytearray()  # audio taken from libpulse, not yet handed out
        self._bytes_per_s = 4 * rate
        self.waited = False  # whether the last read had to wait for its block
        self._data, self._size = _P(), ctypes.c_size_t()  # pa_stream_peek's answers, made once
        self._data_ref, self._size_ref = ctypes.byref(self._data), ctypes.byref(self._size)
        lib = self._lib
        try:
            spec = _SampleSpec(PA_SAMPLE_FLOAT32LE, rate, 1)
            self._stream = lib.pa_stream_new(self._context, b"keyword spotting", ctypes.byref(spec), None)
            if not self._stream:
                raise self._error()
            attr = _BufferAttr(DEFAULT, DEFAULT, DEFAULT, DEFAULT, fragment_bytes)
            target = device.encode() if device is not None else None
            flags = PA_STREAM_ADJUST_LATENCY | (PA_STREAM_DONT_MOVE if device is not None else 0)
            if lib.pa_stream_connect_record(self._stream, target, ctypes.byref(attr), flags) < 0:
                raise self._error()
            self._turn_until(lambda: lib.pa_stream_get_state(self._stream) == STREAM_READY, deadline)
        except BaseException:
            self.close()
            raise

    def _take(self) -> None:
        """Dispatch what arrived, without waiting, and move the audio libpulse holds into the buffer.

        Run once a block on cold caches, so it makes few calls: no readable-size query (a peek of nothing
        says so), no state check while audio comes (a failed stream's peek fails)."""
        lib, stream = self._lib, self._stream
        while (dispatched := lib.pa_mainloop_iterate(self._mainloop, 0, None)) > 0:
            pass
        if dispatched < 0:
            raise PulseError("libpulse main loop failed")
        peek, drop, data, size = lib.pa_stream_peek, lib.pa_stream_drop, self._data, self._size
        took = False
        while True:
            if peek(stream, self._data_ref, self._size_ref) < 0:
                self._check()
                raise self._error()
            if not size.value:
                break
            # no data with a size is a hole in the stream (audio lost in the server): silence in its place
            self._buffer += ctypes.string_at(data.value, size.value) if data.value else bytes(size.value)
            drop(stream)
            took = True
        if not took:
            self._check()

    def read(self, nbytes: int, timeout_s: float) -> bytes | None:
        """The next ``nbytes`` of audio, waiting up to ``timeout_s`` for them (None if they did not come)."""
        self.waited = False
        deadline = time.monotonic() + timeout_s
        while True:
            self._take()
            if len(self._buffer) >= nbytes:
                block = bytes(self._buffer[:nbytes])
                del self._buffer[:nbytes]
                return block
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.waited = True
            self._turn(left)

    def _finish(self, operation: int | None, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for a server operation to complete, then let it go."""
        if not operation:
            raise self._error()
        try:
            deadline = time.monotonic() + timeout_s
            self._turn_until(lambda: self._lib.pa_operation_get_state(operation) != OPERATION_RUNNING, deadline)
        finally:
            self._lib.pa_operation_unref(operation)

    def latency_s(self, timeout_s: float = 1.0) -> float:
        """Seconds from the capture of the oldest sample not yet handed out until now (the backlog)."""
        self._finish(self._lib.pa_stream_update_timing_info(self._stream, None, None), timeout_s)
        usec, negative = ctypes.c_uint64(), ctypes.c_int()
        if self._lib.pa_stream_get_latency(self._stream, ctypes.byref(usec), ctypes.byref(negative)) < 0:
            raise self._error()
        return (0.0 if negative.value else usec.value / 1e6) + len(self._buffer) / self._bytes_per_s

    def flush(self, timeout_s: float = 1.0) -> None:
        """Throw away the audio waiting in the server and here."""
        self._finish(self._lib.pa_stream_flush(self._stream, None, None), timeout_s)
        self._buffer.clear()


def server_answers(timeout_s: float = 2.0) -> bool:
    """Whether the configured server accepts a connection within ``timeout_s`` (libpulse missing: False)."""
    try:
        Connection(timeout_s).close()
    except (PulseError, KwspotError):
        return False
    return True
