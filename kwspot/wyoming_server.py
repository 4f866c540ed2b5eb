"""``kwspot wyoming``: a Wyoming wake-word service (Home Assistant's voice pipeline, any Wyoming client).

Built on the ``wyoming`` package. ``describe`` gets an ``info`` with one wake
program, ``kwspot``, whose models are the keywords of the loaded model.
``detect`` (optionally with names) chooses the keywords for the connection;
``audio-start`` / ``audio-chunk`` / ``audio-stop`` stream audio in whatever
rate, width and channels the client declares. Each connection runs its own
pipeline (the same resampler, ring, model and detector as ``listen``, with the
configured thresholds) and gets a ``detection`` per event, or ``not-detected``
after ``audio-stop`` if nothing fired. A connection that sends garbage or
vanishes is closed on its own; the others carry on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import errno
import itertools
import logging
import os
import signal
import socket
import stat
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import urlparse

import numpy as np
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.event import Event as WyomingEvent
from wyoming.event import async_get_stdin, async_get_stdout
from wyoming.info import Attribution, Describe, Info, WakeModel, WakeProgram
from wyoming.server import AsyncEventHandler, AsyncServer, AsyncUnixServer
from wyoming.wake import Detect, Detection, NotDetected

from kwspot import __version__, interrupt
from kwspot.argtypes import Number
from kwspot.checks import host_name_ok, show
from kwspot.detector import Detector, DetectorSettings
from kwspot.errors import KwspotError
from kwspot.events import Event
from kwspot.frontend import SAMPLE_RATE, StreamResampler, decode_pcm
from kwspot.logs import Tally
from kwspot.model import Model
from kwspot.notify import SystemdNotifier
from kwspot.paths import checked
from kwspot.pipeline import Pipeline
from kwspot.sources import with_tail
from kwspot.verifier import Verifier
from kwspot.wyoming_events import audio_format, read_event

log = logging.getLogger("kwspot")

DEFAULT_URI = "tcp://0.0.0.0:10400"
DEFAULT_ZEROCONF_NAME = "kwspot"
PROGRAM = "kwspot"
DATA_SET = Attribution(name="Speech Commands (Warden, 2018), CC BY 4.0", url="https://arxiv.org/abs/1804.03209")
PROGRAM_ATTRIBUTION = Attribution(name="kwspot", url="https://pypi.org/project/kwspot/")
MAX_CLIENTS = 64  # connections served at once (each may buffer an event of up to MAX_PAYLOAD_BYTES)
REFUSED_LOG_S = 10.0  # at most one log line this often about refused connections, and about bad requests
EVENT_TIMEOUT_S = 60.0  # a connection that sends no whole event for this long is closed (Home Assistant streams)
WRITE_TIMEOUT_S = 10.0  # a client that does not read its answers for this long is closed
CLOSE_WAIT_S = 1.0  # what is queued for a closing client may take this long to go; then the connection is cut
EVICT_IDLE_S = 5.0  # when full, a connection idle this long makes room for a new one
MAX_CHUNK_S = 10.0  # seconds of audio in one audio-chunk (Home Assistant sends 2 KiB: 64 ms)
COMPLAINT_BURST = 20  # warnings about what clients sent, logged at once before the rate of one a second applies
FEED_SLICE_S = 0.5  # audio fed to the model between turns of the event loop: no client holds the others up


@dataclass
class WakeService:
    """What every connection shares: the model (used from the event loop only) and the settings."""

    model: Model
    detector: DetectorSettings
    hop_s: float
    verifier: Verifier | None = None  # the model's second stage, as in listen (shared: one event loop uses it)
    keywords: list[str] = field(default_factory=list)
    ids: itertools.count = field(default_factory=lambda: itertools.count(1))
    refused: Tally = field(default_factory=lambda: Tally(REFUSED_LOG_S))  # closed at once: MAX_CLIENTS connected
    _tokens: float = COMPLAINT_BURST  # warnings about what clients sent that may be logged now
    _refilled: float = field(default_factory=time.monotonic)
    _held_back: int = 0
    connections: set[WakeConnection] = field(default_factory=set)

    def complain(self, message: str, *args: Any) -> None:
        """A warning about what a client sent: up to COMPLAINT_BURST at once, then one a second at most (one
        client must not flood the log); the ones held back are counted in the next line told."""
        now = time.monotonic()
        self._tokens = min(COMPLAINT_BURST, self._tokens + (now - self._refilled))
        self._refilled = now
        if self._tokens < 1:
            self._held_back += 1
            return
        self._tokens -= 1
        held, self._held_back = self._held_back, 0
        log.warning(message + (f" ({held} more client warnings not logged)" if held else ""), *args)

    def flush_complaints(self) -> None:
        """Say how many client warnings were held back, and refusals not yet told (at exit)."""
        if self._held_back:
            log.warning("%d more client warnings not logged", self._held_back)
            self._held_back = 0
        if untold := self.refused.take(float("inf")):
            log.warning("%d more clients refused (%d in all): %d is the most served at once",
                        untold, self.refused.total, MAX_CLIENTS)

    def idlest(self) -> WakeConnection | None:
        """The connection that has sent nothing for longest, if that is over EVICT_IDLE_S."""
        now = time.monotonic()
        idle = [c for c in self.connections if now - c.last_event > EVICT_IDLE_S]
        return min(idle, key=lambda c: c.last_event) if idle else None

    def __post_init__(self) -> None:
        if not self.keywords:
            self.keywords = list(self.model.keywords)
        self.info = describe(self.model, self.keywords).event()

    def pipeline(self, names: Sequence[str] | None) -> Pipeline:
        """A fresh pipeline that fires only for ``names`` (None: every keyword)."""
        settings = self.detector
        if names is not None:
            muted = {k: float("inf") for k in self.keywords if k not in names}
            settings = dataclasses.replace(settings, thresholds={**(settings.thresholds or {}), **muted})
        return Pipeline(self.model, Detector(self.model.labels, settings), self.hop_s, self.verifier)


def describe(model: Model, keywords: Sequence[str]) -> Info:
    """The ``info`` answer: one wake program whose models are the keywords."""
    version = model.version or model.name
    models = [
        WakeModel(
            name=word,
            description=f'the spoken command "{word}" ({model.path.name})',
            phrase=word,
            attribution=DATA_SET,
            installed=True,
            languages=["en"],
            version=version,
        )
        for word in keywords
    ]
    program = WakeProgram(
        name=PROGRAM,
        description="kwspot: a keyword spotter for short spoken commands",
        attribution=PROGRAM_ATTRIBUTION,
        installed=True,
        version=__version__,
        models=models,
    )
    return Info(wake=[program])


async def close_writer(writer: asyncio.StreamWriter) -> None:
    """Close a client's stream; one whose peer does not read what is still queued is aborted, not waited for
    (``wait_closed`` would wait until the peer reads it: for ever, and a SIGTERM with it)."""
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), CLOSE_WAIT_S)
    except TimeoutError:
        writer.transport.abort()
    except Exception:  # noqa: BLE001, S110 - reset by the peer meanwhile: closed anyway
        pass


class WakeConnection(AsyncEventHandler):
    """One client: its keyword choice, its audio stream and its own pipeline."""

    def __init__(self, service: WakeService, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(reader, writer)
        self.service = service
        self.id = next(service.ids)
        self.names: list[str] | None = None
        self.context: dict[str, Any] | None = None
        self.pipeline: Pipeline | None = None
        self.resampler: StreamResampler | None = None
        self.format: tuple[int, int, int] | None = None
        self.fired = False
        self.last_event = time.monotonic()
        self.warned_names = False
        self.ended = "disconnected"  # how _serve ended: "disconnected" is the client's own clean end

    async def run(self) -> None:
        """Serve until the client leaves; whatever goes wrong closes this connection only."""
        if len(self.service.connections) >= MAX_CLIENTS:
            idle = self.service.idlest()
            if idle is None:
                await self._refuse()
                return
            log.debug("client %d idle for %.0f s: closed to make room", idle.id, time.monotonic() - idle.last_event)
            idle.writer.transport.abort()
        self.service.connections.add(self)
        try:
            await self._serve()
        finally:
            self.service.connections.discard(self)

    async def _refuse(self) -> None:
        """Close at once: MAX_CLIENTS are connected (logged at most every REFUSED_LOG_S, with a count)."""
        refused = self.service.refused
        refused.add()
        if refused.take(time.monotonic()):
            log.warning("%d clients connected, the most served at once: refusing more (%d refused so far)",
                        MAX_CLIENTS, refused.total)
        await close_writer(self.writer)

    async def _serve(self) -> None:
        peer = self.writer.get_extra_info("peername") or "stdio"
        log.debug("client %d connected (%s)", self.id, peer)
        why = "disconnected"
        try:
            while True:
                event = await asyncio.wait_for(read_event(self.reader), EVENT_TIMEOUT_S)
                self.last_event = time.monotonic()
                if event is None or not await self.handle_event(event):
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            why = "vanished"
        except TimeoutError:
            why = f"closed: no whole event in {EVENT_TIMEOUT_S:g} s, or its answers not read in {WRITE_TIMEOUT_S:g} s"
        except Exception as exc:  # a malformed event, wrong field types: this client's problem alone
            why = f"closed: {type(exc).__name__}: {exc}"
            self.service.complain("client %d: bad request, %s", self.id, ascii(why)[1:-1][:200])
        finally:
            await close_writer(self.writer)
        self.ended = why
        log.debug("client %d %s", self.id, why)

    async def write_event(self, event: WyomingEvent) -> None:
        """Answer, but not wait for ever on a client that does not read (TimeoutError closes it)."""
        await asyncio.wait_for(super().write_event(event), WRITE_TIMEOUT_S)

    async def handle_event(self, event: WyomingEvent) -> bool:
        if Describe.is_type(event.type):
            await self.write_event(self.service.info)
        elif Detect.is_type(event.type):
            self._choose(Detect.from_event(event))
        elif AudioStart.is_type(event.type):
            self._start(audio_format(event.data))
        elif AudioChunk.is_type(event.type):
            await self._chunk(event)
        elif AudioStop.is_type(event.type):
            await self._stop()
        else:
            log.debug("client %d: ignoring a %r event", self.id, event.type)
        return True

    def _choose(self, detect: Detect) -> None:
        self.context = detect.context
        asked = [detect.names] if isinstance(detect.names, str) else detect.names  # "stop": one name, not 4
        if not asked:
            self.names = None
        else:
            known = [name for name in asked if name in self.service.keywords]
            unknown = [name for name in asked if name not in self.service.keywords]
            if unknown and not self.warned_names:  # once a connection; client text shown escaped and short
                self.warned_names = True
                self.service.complain("client %d asked for %s; this model knows %s", self.id,
                                      ", ".join(show(name) for name in unknown[:5]) + (", ..." if len(unknown) > 5
                                                                                      else ""),
                                      ", ".join(self.service.keywords))
            self.names = known
        if self.pipeline is not None:  # mid-stream: new keywords from now on
            self.pipeline.detector = self.service.pipeline(self.names).detector
        log.debug("client %d listens for %s", self.id, ", ".join(self.names) if self.names is not None else "all")

    def _start(self, fmt: tuple[int, int, int]) -> None:
        self.pipeline = self.service.pipeline(self.names)
        self.resampler = StreamResampler(fmt[0])
        self.format = fmt
        self.fired = False

    async def _chunk(self, event: WyomingEvent) -> None:
        fmt = audio_format(event.data)
        if self.pipeline is None or self.resampler is None:  # audio without audio-start: start now
            self._start(fmt)
        elif fmt[0] != self.format[0]:  # the rate changed mid-stream: flush, then resample anew
            await self._feed(self.resampler.process(np.zeros(0, np.float32), last=True))
            self.resampler = StreamResampler(fmt[0])
        self.format = fmt
        seconds = len(event.payload or b"") / (fmt[0] * fmt[1] * fmt[2])
        if seconds > MAX_CHUNK_S:
            raise ValueError(f"audio chunk of {seconds:.0f} s; at most {MAX_CHUNK_S:g} s a chunk")
        samples = decode_pcm(event.payload or b"", fmt[1], fmt[2])
        await self._feed(self.resampler.process(samples))

    async def _stop(self) -> None:
        if self.pipeline is not None and self.resampler is not None:
            await self._feed(with_tail(self.resampler.process(np.zeros(0, np.float32), last=True)))
        if not self.fired:
            await self.write_event(NotDetected(context=self.context).event())
        self.pipeline, self.resampler, self.fired = None, None, False

    async def _feed(self, samples: np.ndarray) -> None:
        """Through the pipeline in slices, letting the other connections (and signals) have their turn between."""
        assert self.pipeline is not None
        step = round(FEED_SLICE_S * SAMPLE_RATE)
        for start in range(0, max(len(samples), 1), step):
            if start:
                await asyncio.sleep(0)
            for event in self.pipeline.feed(samples[start : start + step]):
                await self._detected(event)

    async def _detected(self, event: Event) -> None:
        self.fired = True
        log.info("client %d: %s", self.id, event.to_json())
        detection = Detection(name=event.keyword, timestamp=round(event.t * 1000), context=self.context)
        await self.write_event(detection.event())


# ---- the server ------------------------------------------------------------------------------------------------


def check_uri(uri: str, zeroconf: str | None) -> None:
    """Refuse a URI the server cannot use, before the model is loaded."""
    try:
        parsed = urlparse(uri)
    except ValueError as exc:  # e.g. an unclosed [ of an IPv6 address
        raise KwspotError(f"--uri {uri[:80]}: not a URI ({exc})") from None
    if parsed.scheme not in ("tcp", "unix", "stdio"):
        raise KwspotError(f"--uri {uri}: must start with tcp://, unix:// or stdio://")
    if parsed.scheme == "tcp":
        try:
            port = parsed.port
        except ValueError:
            raise KwspotError(f"--uri {uri}: the port must be a number from 0 to 65535") from None
        if not parsed.hostname or port is None:
            raise KwspotError(f"--uri {uri}: give a host and a port, e.g. {DEFAULT_URI}")
        if not host_name_ok(parsed.hostname):
            raise KwspotError(f"--uri {uri[:80]}: {parsed.hostname[:40]!r} is not a host name or address")
    if parsed.scheme == "stdio" and (sys.stdin is None or sys.stdout is None):
        raise KwspotError(f"--uri {uri}: standard input or output is closed")
    if parsed.scheme == "stdio" and not all(_streamable(fd) for fd in (0, 1)):
        raise KwspotError(f"--uri {uri}: standard input and output must be pipes, sockets or a terminal, "
                          "not files or devices")
    unused = {"tcp": (parsed.path if parsed.path.strip("/") else "") or parsed.query or parsed.fragment,
              "unix": parsed.netloc or parsed.query or parsed.fragment,
              "stdio": parsed.netloc or parsed.path or parsed.query}[parsed.scheme]
    if unused:  # e.g. unix://run/x.sock: "run" is a host, and the socket would be /x.sock
        raise KwspotError(f"--uri {uri[:80]}: {unused[:40]!r} would be ignored; e.g. {DEFAULT_URI}, "
                          "unix:///run/kwspot/wyoming.sock (three slashes) or stdio://")
    if parsed.scheme == "unix" and not parsed.path:
        raise KwspotError(f"--uri {uri}: give a socket path, e.g. unix:///run/kwspot/wyoming.sock")
    if parsed.scheme == "unix":
        checked(parsed.path, "socket")
    if zeroconf is not None and parsed.scheme != "tcp":
        raise KwspotError(f"--zeroconf needs a tcp:// URI, not {uri}")
    if zeroconf is not None and not (zeroconf.isprintable() and 0 < len(zeroconf.encode(errors="replace")) <= 63):
        raise KwspotError(f"--zeroconf {zeroconf[:80]!r}: a service name is 1 to 63 bytes of printable text")


class OwnUnixServer(AsyncUnixServer):
    """wyoming's unix server, but at its stop it removes the socket only if it is still its own (a server
    started on the same path since keeps its socket, as kwspot's own socket sink does)."""

    async def start(self, handler_factory: Any) -> None:
        await super().start(handler_factory)
        self._ours = os.stat(self.socket_path).st_ino

    async def stop(self) -> None:
        await AsyncServer.stop(self)
        if self._server is not None:
            self._server.close()
        with contextlib.suppress(OSError):
            if os.lstat(self.socket_path).st_ino == getattr(self, "_ours", None):
                self.socket_path.unlink()


def _streamable(fd: int) -> bool:
    """asyncio can stream it: a pipe, a socket or a terminal (not a file, nor /dev/null, whose reads epoll refuses)."""
    mode = os.fstat(fd).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(fd)


def claim_unix_path(path: str) -> None:
    """Refuse a path that is not a socket or that a live server holds; a stale socket is replaced."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:  # a regular file on the way, a loop of links, no permission
        raise KwspotError(f"{path}: cannot make a socket there ({exc.strerror})") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise KwspotError(f"{path}: exists and is not a socket; refusing to replace it")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            return  # stale; the server unlinks it
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise KwspotError(f"{path}: cannot check the existing socket ({exc.strerror or exc})") from None
            return
    raise KwspotError(f"{path}: another server is already listening there")


async def _announce(port: int, host: str, name: str) -> None:
    """Register the service over mDNS (``_wyoming._tcp``) so Home Assistant discovers it."""
    try:
        from wyoming.zeroconf import HomeAssistantZeroconf
        from zeroconf import Error as ZeroconfError
    except ImportError:
        raise KwspotError("--zeroconf needs the zeroconf package: pip install 'kwspot[zeroconf]'") from None
    try:
        announcer = HomeAssistantZeroconf(port=port, name=name, host=None if host in ("0.0.0.0", "::") else host)
        await announcer.register_server()
    except (OSError, ZeroconfError) as exc:  # ZeroconfError: a name mDNS refuses, a name already taken
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)[:120]
        raise KwspotError(f"--zeroconf: cannot announce the service ({reason})") from None
    log.info("announced as %r over zeroconf (_wyoming._tcp, port %d)", name, port)


def _bound_port(server: AsyncServer) -> int | None:
    """The TCP port the server listens on (the system's choice for port 0); None for other transports."""
    listening = getattr(server, "_server", None)
    sockets = getattr(listening, "sockets", None) or []
    names = [sock.getsockname() for sock in sockets if sock.family in (socket.AF_INET, socket.AF_INET6)]
    return int(names[0][1]) if names else None


async def _watchdog(notifier: SystemdNotifier) -> None:
    """Ping systemd's watchdog while the event loop turns (a stuck loop gets the service restarted)."""
    interval = notifier.watchdog_interval()
    if interval is None:
        return
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval / 3)


def _reload(service: WakeService, settings: Callable[[], DetectorSettings], notifier: SystemdNotifier) -> None:
    """SIGHUP: new detector settings from the config for the connections that start from now on."""
    notifier.reloading()
    try:
        service.detector = settings()
    except KwspotError as exc:
        log.error("reload refused, keeping the running configuration: %s", exc)
    except Exception as exc:  # noqa: BLE001 - whatever a new file does, the running server keeps going
        log.error("reload refused, keeping the running configuration: %s: %s", type(exc).__name__, exc)
    else:
        log.info("detector settings reloaded (new audio streams use them)")
    notifier.ready()


async def serve(service: WakeService, uri: str, zeroconf: str | None = None,
                reload: Callable[[], DetectorSettings] | None = None) -> None:
    """Serve until SIGINT/SIGTERM (or, on stdio, until stdin ends); SIGHUP calls ``reload``."""
    from kwspot.listen import log_verifier

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    if interrupt.requested:  # a Ctrl-C during start-up that Python dropped
        stop.set()
    notifier = SystemdNotifier()
    if reload is not None:
        loop.add_signal_handler(signal.SIGHUP, _reload, service, reload, notifier)
    parsed = urlparse(uri)
    words = ", ".join(service.keywords)
    if parsed.scheme == "stdio":
        connection = WakeConnection(service, await async_get_stdin(), await async_get_stdout())
        task = asyncio.create_task(connection.run())
        log_verifier(service.verifier, service.model)
        log.info("serving Wyoming on stdio with model %s (%s)", service.model.path.name, words)
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        task.cancel()
        if task.done() and not task.cancelled() and connection.ended != "disconnected":
            raise KwspotError(f"stdio: the client's stream {connection.ended}")  # its only client: a failed run
        return
    if parsed.scheme == "unix":
        claim_unix_path(parsed.path)
    server = OwnUnixServer(parsed.path) if parsed.scheme == "unix" else AsyncServer.from_uri(uri)
    try:
        await server.start(partial(WakeConnection, service))
    except OSError as exc:
        raise KwspotError(f"--uri {uri}: cannot listen ({exc.strerror or exc})") from None
    bound = _bound_port(server)
    if bound is not None and bound != parsed.port:  # port 0: the system chose one
        uri = f"tcp://{parsed.netloc.rsplit(':', 1)[0]}:{bound}"
    try:
        if zeroconf is not None:
            await _announce(bound or 0, parsed.hostname or "", zeroconf)
        log_verifier(service.verifier, service.model)  # once start-up has succeeded: bad input stays one line
        log.info("serving Wyoming on %s with model %s (%s)", uri, service.model.path.name, words)
        notifier.ready()
        pinger = asyncio.create_task(_watchdog(notifier))
        await stop.wait()
        pinger.cancel()
        notifier.stopping()
    finally:
        await server.stop()
        service.flush_complaints()


# ---- the command -----------------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    from kwspot.cli import _add_logging

    p.add_argument("--uri", default=DEFAULT_URI, help=f"tcp://HOST:PORT, unix://PATH or stdio:// ({DEFAULT_URI})")
    p.add_argument(
        "--zeroconf", nargs="?", const=DEFAULT_ZEROCONF_NAME, metavar="NAME",
        help=f"announce the service over mDNS for Home Assistant (name default: {DEFAULT_ZEROCONF_NAME})",
    )
    p.add_argument("--config", metavar="FILE", help="config file (model and detector settings)")
    p.add_argument("--model", "-m", metavar="FILE", help="a .tflite model with its .json sidecar")
    p.add_argument("--threshold", type=Number(0.0, 1.0), metavar="P", help="one threshold for every keyword (0 to 1)")
    _add_logging(p)


def run(args: argparse.Namespace) -> int:
    from kwspot.listen import detector_settings, load_model, load_verifier
    from kwspot.logs import setup_logging
    from kwspot.settings import resolve

    given = {"model.path": args.model, "detector.threshold": args.threshold,
             "logging.level": args.log_level, "logging.format": args.log_format}
    flags = {k: v for k, v in given.items() if v is not None}
    settings, path = resolve(args.config, flags)
    check_uri(args.uri, args.zeroconf)
    setup_logging(settings["logging"]["level"], settings["logging"]["format"])
    log.debug("config: %s", path or "built-in defaults")
    model = load_model(settings)
    detector = detector_settings(settings, model, args.threshold is not None, str(path or "config"))
    verifier = load_verifier(settings, model)
    service = WakeService(model, detector, hop_s=settings["detector"]["hop_ms"] / 1000, verifier=verifier)

    def reread() -> DetectorSettings:  # the file again, the flags again (they outlive a reload)
        fresh, where = resolve(args.config, flags)
        return detector_settings(fresh, model, args.threshold is not None, str(where or "config"))

    asyncio.run(serve(service, args.uri, args.zeroconf, reread))
    log.info("stopped")
    return 0
