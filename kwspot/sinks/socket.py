"""Unix stream socket sink: every connected client receives every event as a JSON line.

A background thread runs a ``selectors`` loop that accepts clients, writes
their buffered lines when they become writable and notices peers that went
away. ``emit`` appends the line to each client's bounded buffer and tries one
non-blocking write (so events reach readers at once, without waiting for that
thread to get the GIL); whatever the socket does not take stays buffered for
the thread. Nothing ever blocks on a client, so one that stops reading can
never stall the audio loop or the other clients: once its buffer is full, new
events are dropped for that client (counted, and logged at most once a second
per client), never the client itself, and it only ever receives whole lines.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import selectors
import socket
import stat
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from kwspot.checks import number, octal_mode, optional, string
from kwspot.errors import KwspotError
from kwspot.events import Event
from kwspot.logs import Tally
from kwspot.paths import checked
from kwspot.sinks import SinkContext, SinkSettings, SinkSpec

SOCKET_NAME = "kwspot.sock"
SYSTEM_SOCKET = Path("/run/kwspot") / SOCKET_NAME
_MAX_PATH_BYTES = 107  # sizeof(sun_path) - 1 on Linux
_MSG_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)  # never SIGPIPE, even if the CLI restored SIG_DFL
_DROP_LOG_INTERVAL = 1.0
_REFUSED_LOG_INTERVAL = 10.0  # clients refused past max_clients: one log line with a count, at most this often
MAX_CLIENT_INPUT = 64 * 1024  # clients need not send anything; one that sends more than this is cut off
_LISTENER = object()
_WAKER = object()


def default_socket_path() -> Path:
    """The socket path used when ``--socket`` names none.

    ``$KWSPOT_SOCKET`` if set; under systemd with ``RuntimeDirectory=``
    (``$RUNTIME_DIRECTORY`` set), ``$RUNTIME_DIRECTORY/kwspot.sock``; else
    ``$XDG_RUNTIME_DIR/kwspot.sock``; else ``/tmp/kwspot-$UID.sock``.
    """
    env = os.environ.get("KWSPOT_SOCKET")
    if env:
        return Path(env)
    runtime = os.environ.get("RUNTIME_DIRECTORY")
    if runtime:
        return Path(runtime.split(":")[0]) / SOCKET_NAME
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / SOCKET_NAME
    return Path(f"/tmp/kwspot-{os.getuid()}.sock")


def socket_path_candidates() -> list[Path]:
    """Where a client looks for a daemon, in order, when no path is given.

    ``$KWSPOT_SOCKET`` alone if set; otherwise the daemon's default for this
    environment, then the system service's ``/run/kwspot/kwspot.sock`` (a
    user's shell does not see the service's ``$RUNTIME_DIRECTORY``).
    """
    first = default_socket_path()
    if os.environ.get("KWSPOT_SOCKET"):
        return [first]
    return [first] if first == SYSTEM_SOCKET else [first, SYSTEM_SOCKET]


@dataclass(eq=False)
class _Client:
    id: int
    sock: socket.socket
    buf: bytearray = field(default_factory=bytearray)
    dropped: int = 0  # events dropped for this client, in total
    unreported: int = 0  # dropped since the last log line
    last_report: float = float("-inf")
    reading: bool = True  # False once the peer shut down its sending side
    received: int = 0  # bytes the client sent (and we discarded)
    events: int = selectors.EVENT_READ  # what the selector watches for it (changed under the lock)
    gone: str | None = None  # why it is to be dropped (a write failed)


class SocketSink:
    """Serve events on a unix stream socket at ``path`` (see the module docstring).

    ``client_count``, ``accepted`` (clients ever accepted) and ``dropped``
    (events dropped over all clients) are for tests and status lines. ``close()`` stops the thread, disconnects the
    clients and removes the socket file if it is still the one we created.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        mode: int = 0o660,
        max_client_buffer: int = 64 * 1024,
        logger: logging.Logger | None = None,
        max_clients: int = 256,
    ) -> None:
        self.path = Path(path)
        self.mode = mode
        self.max_client_buffer = max_client_buffer
        self.max_clients = max_clients
        self.log = logger or logging.getLogger("kwspot.socket")
        self.dropped = 0
        self.accepted = 0
        try:
            self._abspath = os.path.abspath(self.path)
        except FileNotFoundError:  # a relative path, and the current folder was deleted
            raise KwspotError(f"{self.path}: cannot create socket: the current folder no longer exists") from None
        self._lock = threading.Lock()  # guards clients, their buffers, their sockets' writes and c.events
        self._clients: dict[int, _Client] = {}
        self._closed = False
        self._stopping = False
        self._linger = 0.5
        self._accept_paused_until = 0.0
        self._refused = Tally(_REFUSED_LOG_INTERVAL)  # clients refused past max_clients
        self._listener = self._bind()
        try:
            st = os.stat(self._abspath)
            self._inode = (st.st_dev, st.st_ino)
            _BOUND_HERE.add(self._inode)
            self._wake_r, self._wake_w = socket.socketpair()
            for s in (self._wake_r, self._wake_w):
                s.setblocking(False)
            self._sel = selectors.DefaultSelector()
            self._sel.register(self._listener, selectors.EVENT_READ, _LISTENER)
            self._sel.register(self._wake_r, selectors.EVENT_READ, _WAKER)
        except BaseException:
            self._listener.close()
            _unlink_quietly(self._abspath)
            raise
        self._thread = threading.Thread(target=self._run, name="kwspot-socket", daemon=True)
        self._thread.start()
        self.log.info("serving events on %s", self.path)

    # ---- public API -------------------------------------------------------

    @property
    def refused(self) -> int:
        """Clients refused past ``max_clients``, in total."""
        return self._refused.total

    @property
    def client_count(self) -> int:
        with self._lock:
            return len(self._clients)

    def emit(self, event: Event) -> None:
        """Send one event to every client without ever blocking; buffer or drop what does not fit."""
        if self._closed or not self._clients:
            return
        data = (event.to_json() + "\n").encode()
        wake = False
        with self._lock:
            for c in self._clients.values():
                if c.gone:
                    continue
                if len(c.buf) + len(data) > self.max_client_buffer:
                    self._send_locked(c)  # make room if it can take some now
                if len(c.buf) + len(data) > self.max_client_buffer:
                    c.dropped += 1
                    c.unreported += 1
                    self.dropped += 1
                    wake = wake or c.unreported == 1  # the thread logs it
                    continue
                c.buf += data
                self._send_locked(c)
                # the thread must watch for writability, or drop a client whose write failed
                wake = wake or bool(c.gone) or (bool(c.buf) and not c.events & selectors.EVENT_WRITE)
        if wake:
            self._wake()

    def close(self, linger: float = 0.5) -> None:
        """Stop serving: give readers up to ``linger`` s to take what is buffered, then close everything.

        The socket file is removed only if it is still the one we created.
        """
        if self._closed:
            return
        self._closed = True
        self._linger = linger
        self._stopping = True
        self._wake()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=linger + 5.0)
        with self._lock:
            clients = list(self._clients.values())
            self._clients.clear()
            for c in clients:
                c.sock.close()
        self._sel.close()
        for s in (self._listener, self._wake_r, self._wake_w):
            s.close()
        _BOUND_HERE.discard(self._inode)
        try:
            st = os.stat(self._abspath)
        except OSError:
            return
        if (st.st_dev, st.st_ino) == self._inode:
            _unlink_quietly(self._abspath)
        else:
            self.log.debug("%s was replaced by someone else; leaving it", self.path)

    def __enter__(self) -> SocketSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- binding ----------------------------------------------------------
    def _bind(self) -> socket.socket:
        path = self.path = checked(self.path, "socket")
        if len(os.fsencode(str(path))) > _MAX_PATH_BYTES:
            raise KwspotError(f"{path}: socket path too long (at most {_MAX_PATH_BYTES} bytes)")
        parent = Path(self._abspath).parent
        if not parent.is_dir():
            what = "is not a directory" if os.path.lexists(parent) else "does not exist"
            raise KwspotError(f"{path}: cannot create socket: {parent} {what}")
        check_owner(path)
        self._remove_stale()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(path))
        except OSError as e:
            sock.close()
            if e.errno == errno.EADDRINUSE:  # lost a race with another daemon
                raise KwspotError(f"{path}: another program is already listening there") from None
            raise KwspotError(f"{path}: cannot create socket: {e.strerror or e}") from None
        try:
            os.chmod(self._abspath, self.mode)  # before listen(): nobody can connect in between
            sock.listen(64)
            sock.setblocking(False)
        except OSError as e:
            sock.close()
            _unlink_quietly(self._abspath)
            raise KwspotError(f"{path}: cannot set up socket: {e.strerror or e}") from None
        return sock

    def _remove_stale(self) -> None:
        """Replace a dead socket file; refuse a live daemon's or a non-socket."""
        path = self.path
        try:
            st = os.lstat(self._abspath)
        except FileNotFoundError:
            return
        except OSError as e:
            raise KwspotError(f"{path}: cannot check the existing file: {e.strerror}") from None
        if not stat.S_ISSOCK(st.st_mode):
            raise KwspotError(f"{path}: exists and is not a socket; refusing to replace it")
        if (st.st_dev, st.st_ino) in _BOUND_HERE:  # this daemon's own: taking it over could lose it (see above)
            raise KwspotError(f"{path}: this kwspot already serves events there; a new socket_mode or "
                              "client_buffer_kb on the same path takes effect at a restart")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(self._abspath)
        except ConnectionRefusedError:
            pass  # stale: nobody listening
        except (TimeoutError, BlockingIOError):  # backlog full: very much alive
            raise KwspotError(f"{path}: another program is already listening there") from None
        except OSError as e:
            raise KwspotError(f"{path}: cannot check the existing socket: {e.strerror or e}") from None
        else:
            raise KwspotError(f"{path}: another program is already listening there")
        finally:
            probe.close()
        try:
            os.unlink(self._abspath)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise KwspotError(f"{path}: cannot remove the stale socket: {e.strerror}") from None
        self.log.info("replaced stale socket %s", path)

    # ---- the loop (background thread) ---------------------------------------

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0", _MSG_NOSIGNAL)
        except OSError:
            pass  # full (a wake-up is already pending) or closed

    def _run(self) -> None:
        linger_until: float | None = None
        try:
            while True:
                if self._stopping:
                    if linger_until is None:
                        linger_until = time.monotonic() + self._linger
                        if not self._accept_paused_until:
                            self._sel.unregister(self._listener)
                        self._accept_paused_until = 0.0
                    if not self._output_pending() or time.monotonic() >= linger_until:
                        return
                timeout = self._timeout()
                if linger_until is not None:
                    remaining = max(0.0, linger_until - time.monotonic())
                    timeout = remaining if timeout is None else min(timeout, remaining)
                for key, mask in self._sel.select(timeout):
                    if key.data is _LISTENER:
                        self._accept()
                    elif key.data is _WAKER:
                        self._drain_waker()
                    else:
                        c: _Client = key.data
                        if mask & selectors.EVENT_READ and not self._read(c):
                            continue
                        if mask & selectors.EVENT_WRITE:
                            self._flush(c)
                self._housekeeping()
        except Exception:  # pragma: no cover - a bug here must not die silently
            self.log.exception("socket sink thread crashed; events are no longer served on %s", self.path)

    def _housekeeping(self) -> None:
        """Watch writability where emit() left data, drop dead peers, log drops, resume accepting."""
        with self._lock:
            clients = list(self._clients.values())
        for c in clients:
            if c.gone:
                self._drop(c, c.gone)
            elif not c.reading and _peer_hung_up(c.sock):
                self._drop(c, "disconnected")
            else:
                with self._lock:
                    self._set_events_locked(c)
        self._report_drops()
        self._report_refused()
        if self._accept_paused_until and time.monotonic() >= self._accept_paused_until and not self._stopping:
            self._accept_paused_until = 0.0
            self._sel.register(self._listener, selectors.EVENT_READ, _LISTENER)

    def _output_pending(self) -> bool:
        with self._lock:
            return any(c.buf and not c.gone for c in self._clients.values())

    def _timeout(self) -> float | None:
        now = time.monotonic()
        deadlines = []
        with self._lock:
            for c in self._clients.values():
                if c.unreported:
                    deadlines.append(c.last_report + _DROP_LOG_INTERVAL)
                if not c.reading:
                    deadlines.append(now + 1.0)  # poll half-closed peers for a full close
        if self._accept_paused_until:
            deadlines.append(self._accept_paused_until)
        if (refused_due := self._refused.due_at()) is not None:
            deadlines.append(refused_due)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - now)

    def _drain_waker(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self.log.warning("cannot accept clients on %s: %s; pausing 1 s", self.path, e.strerror)
                    self._sel.unregister(self._listener)
                    self._accept_paused_until = time.monotonic() + 1.0
                return  # ECONNABORTED and friends: the client already left
            if len(self._clients) >= self.max_clients:
                self._reap_hung_up()
            if len(self._clients) >= self.max_clients:
                self._refused.add()
                self._report_refused()
                sock.close()
                continue
            sock.setblocking(False)
            c = _Client(self.accepted + 1, sock)
            self._sel.register(sock, selectors.EVENT_READ, c)
            with self._lock:
                self._clients[sock.fileno()] = c
                self.accepted += 1  # counted once it is served: a reader of the count may emit to it at once
                n = len(self._clients)
            self.log.debug("client %d connected (%d connected)", c.id, n)

    def _reap_hung_up(self) -> None:
        """At the limit: drop the clients that have closed but whose close the loop has not read yet."""
        with self._lock:
            clients = list(self._clients.values())
        for c in clients:
            if _peer_hung_up(c.sock):
                self._drop(c, "disconnected")

    def _read(self, c: _Client) -> bool:
        """Discard what the client sent; False if the client is gone."""
        try:
            data = c.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError as e:
            self._drop(c, e.strerror or str(e))
            return False
        if data:
            c.received += len(data)
            if c.received <= MAX_CLIENT_INPUT:
                return True
            self.log.warning(
                "client %d sent %d bytes (clients need not send anything); disconnecting it", c.id, c.received
            )
            self._drop(c, "sent too much")
            return False
        # EOF: gone entirely, or only shut down its sending side (socat, nc with stdin at EOF)?
        if _peer_hung_up(c.sock):
            self._drop(c, "disconnected")
            return False
        with self._lock:
            c.reading = False
            self._set_events_locked(c)
        return True

    def _flush(self, c: _Client) -> None:
        """The socket is writable: send what it takes, stop watching once the buffer is empty."""
        with self._lock:
            self._send_locked(c)
            if not c.gone:
                self._set_events_locked(c)
        if c.gone:
            self._drop(c, c.gone)

    def _send_locked(self, c: _Client) -> None:
        """One non-blocking write of the client's buffer (caller holds the lock)."""
        if not c.buf or c.gone:
            return
        try:
            n = c.sock.send(c.buf, _MSG_NOSIGNAL)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:  # EPIPE, ECONNRESET: the reader vanished
            c.gone = e.strerror or str(e)
            c.buf.clear()
            return
        del c.buf[:n]

    def _set_events_locked(self, c: _Client) -> None:
        """Make the selector watch what the client needs now (loop thread, lock held)."""
        if c.gone or self._clients.get(c.sock.fileno()) is not c:
            return
        events = (selectors.EVENT_READ if c.reading else 0) | (selectors.EVENT_WRITE if c.buf else 0)
        if events == c.events:
            return
        if c.events and events:
            self._sel.modify(c.sock, events, c)
        elif events:
            self._sel.register(c.sock, events, c)
        else:
            self._sel.unregister(c.sock)
        c.events = events

    def _drop(self, c: _Client, why: str) -> None:
        with self._lock:
            if self._clients.get(c.sock.fileno()) is not c:
                return
            del self._clients[c.sock.fileno()]
            n = len(self._clients)
            if c.events:
                self._sel.unregister(c.sock)
                c.events = 0
            c.sock.close()
        extra = f", {c.dropped} events dropped in all" if c.dropped else ""
        self.log.debug("client %d gone (%s%s); %d connected", c.id, why, extra, n)

    def _report_drops(self) -> None:
        now = time.monotonic()
        reports = []
        with self._lock:
            for c in self._clients.values():
                if c.unreported and now - c.last_report >= _DROP_LOG_INTERVAL:
                    reports.append((c.id, c.unreported))
                    c.unreported = 0
                    c.last_report = now
        for cid, n in reports:
            self.log.warning("client %d: %d event%s dropped, not reading", cid, n, "" if n == 1 else "s")

    def _report_refused(self) -> None:
        """Clients refused past the limit: one line with a count, at most every ``_REFUSED_LOG_INTERVAL`` s."""
        n = self._refused.take(time.monotonic())
        if not n:
            return
        self.log.warning(
            "refused %d client%s on %s: %d clients already (the limit); next report in %.0f s at the earliest",
            n, "" if n == 1 else "s", self.path, self.max_clients, _REFUSED_LOG_INTERVAL,
        )


# Socket files this process bound and still listens on. A reload that keeps the path but changes its settings
# is refused with that reason (not "another program"): replacing the socket before the whole reload succeeds
# would leave the running sink without its path if another sink then failed.
_BOUND_HERE: set[tuple[int, int]] = set()


def check_owner(path: str | os.PathLike[str]) -> None:
    """Refuse a socket that another user may have planted: in a directory anyone can write to
    (``/tmp``), the socket file must belong to us or to root, and the directory must be sticky."""
    parent = Path(os.path.abspath(path)).parent
    try:
        dir_mode = os.stat(parent).st_mode
    except OSError:
        return  # no directory: the caller reports that
    if not stat.S_ISDIR(dir_mode) or not dir_mode & stat.S_IWOTH:
        return  # no directory (the caller reports that), or only its owner or group can put files there
    if not dir_mode & stat.S_ISVTX:
        raise KwspotError(f"{path}: its directory {parent} is writable by anyone and not sticky; choose another path")
    try:
        st = os.lstat(path)
    except OSError:
        return  # nothing there yet
    if st.st_uid not in (os.getuid(), 0):
        raise KwspotError(
            f"{path}: belongs to uid {st.st_uid}, not to you, in {parent} where anyone can create files; "
            "refusing it (set XDG_RUNTIME_DIR or choose another path)"
        )


def check_peer(sock: socket.socket, path: str | os.PathLike[str]) -> None:
    """After connecting in a directory anyone can write to: the listening process must run as us or root."""
    parent = Path(os.path.abspath(path)).parent
    try:
        if not os.stat(parent).st_mode & stat.S_IWOTH:
            return
        _, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    except OSError:
        return
    if uid not in (os.getuid(), 0):
        raise KwspotError(f"{path}: served by uid {uid}, not by you or root; refusing its events")


def _peer_hung_up(sock: socket.socket) -> bool:
    """True if the peer closed both directions (POLLHUP), not just its sending side."""
    p = select.poll()
    p.register(sock.fileno(), 0)
    return any(ev & (select.POLLHUP | select.POLLERR | select.POLLNVAL) for _, ev in p.poll(0))


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _build(cfg: SinkSettings, ctx: SinkContext) -> SocketSink | None:
    if not cfg["socket"]:
        return None
    return SocketSink(cfg["socket"], mode=int(cfg["socket_mode"], 8),
                      max_client_buffer=cfg["client_buffer_kb"] * 1024, logger=logging.getLogger("kwspot"))


SPEC = SinkSpec(
    "socket",
    {
        "socket": (None, optional(string)),
        "socket_mode": ("0660", octal_mode),
        "client_buffer_kb": (64, number(1, 65536, integer=True)),
    },
    _build,
    retire=lambda sink: sink.close(linger=0),  # never hold the audio loop for a slow reader
)
