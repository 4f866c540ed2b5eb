"""``kwspot listen``: source -> pipeline -> sinks, until a signal says stop.

The loop owns no audio logic: it reads blocks from a source, feeds them to
the pipeline, hands events to the sinks, keeps the systemd watchdog fed
while audio flows, skips ahead when it falls behind, reports overflows at
most once a second, and reloads thresholds and sinks on SIGHUP.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from kwspot.config import load_config
from kwspot.detector import Detector, DetectorSettings
from kwspot.errors import KwspotError
from kwspot.frontend import SAMPLE_RATE
from kwspot.model import Model, bundled_model_path
from kwspot.notify import SystemdNotifier
from kwspot.pipeline import Pipeline
from kwspot.sinks import Sink
from kwspot.sinks.jsonl import JsonlSink
from kwspot.sinks.socket import SocketSink
from kwspot.sources import FileSource, MicSource, Source, StdinSource

log = logging.getLogger("kwspot")
Settings = dict[str, dict[str, Any]]
READ_TIMEOUT_S = 0.25


@dataclass
class ListenRequest:
    """What the command line asked for, beyond the settings."""

    input: str | None = None  # FILE, "-" for raw PCM on stdin, None for the microphone
    fast: bool = False
    stdin_rate: int = 16000
    config_path: str | None = None
    cli_threshold: bool = False  # --threshold given: it overrides the model's own thresholds


def load_model(settings: Settings) -> Model:
    path = settings["model"]["path"] or bundled_model_path()
    return Model(path, threads=settings["model"]["threads"])


def detector_settings(settings: Settings, model: Model, cli_threshold: bool = False) -> DetectorSettings:
    """Thresholds: config per-keyword > model sidecar per-keyword > config default."""
    det = settings["detector"]
    thresholds = {} if cli_threshold else dict(model.thresholds)
    thresholds.update(det["thresholds"])
    return DetectorSettings(
        threshold=det["threshold"],
        thresholds=thresholds,
        smoothing_hops=det["smoothing_hops"],
        min_consecutive=det["min_consecutive"],
        refractory_s=det["refractory_s"],
        min_pause_ms=det["min_pause_ms"],
    )


def open_source(request: ListenRequest, settings: Settings) -> Source:
    block_ms = settings["audio"]["block_ms"]
    if request.input == "-":
        return StdinSource(rate=request.stdin_rate, block_ms=block_ms)
    if request.input:
        return FileSource(request.input, realtime=not request.fast, block_ms=block_ms)
    return MicSource(settings["audio"]["device"], settings["audio"]["rate"], block_ms)


def socket_sink(sinks_cfg: dict[str, Any]) -> SocketSink:
    return SocketSink(
        sinks_cfg["socket"],
        mode=int(sinks_cfg["socket_mode"], 8),
        max_client_buffer=sinks_cfg["client_buffer_kb"] * 1024,
        logger=log,
    )


SOCKET_KEYS = ("socket", "socket_mode", "client_buffer_kb")


def build_sinks(settings: Settings, source: Source) -> list[Sink]:
    sinks_cfg = settings["sinks"]
    sinks: list[Sink] = []
    console = sinks_cfg["console"]
    if console is True or (console == "auto" and sys.stdout.isatty() and not sinks_cfg["jsonl"]):
        from kwspot.sinks.console import ConsoleSink  # rich only when someone watches

        sinks.append(ConsoleSink(source.description))
    if sinks_cfg["jsonl"]:
        sinks.append(JsonlSink())
    if sinks_cfg["socket"]:
        sinks.append(socket_sink(sinks_cfg))
    return sinks


def reconcile_sinks(sinks: list[Sink], old: dict[str, Any], new: dict[str, Any]) -> list[Sink]:
    """The sinks a reloaded config asks for, keeping those whose settings did not change.

    A new socket that cannot be opened raises KwspotError before anything is closed.
    """
    socket_changed = any(old[k] != new[k] for k in SOCKET_KEYS)
    fresh_socket = None
    if socket_changed and new["socket"] and new["socket"] != old["socket"]:
        fresh_socket = socket_sink(new)
    kept: list[Sink] = []
    for sink in sinks:
        if isinstance(sink, SocketSink) and socket_changed:
            sink.close(linger=0)  # never hold the audio loop for a slow reader
        elif isinstance(sink, JsonlSink) and not new["jsonl"]:
            sink.close()
        else:
            kept.append(sink)
    if new["jsonl"] and not old["jsonl"]:
        kept.append(JsonlSink())
    if socket_changed and new["socket"]:
        kept.append(fresh_socket or socket_sink(new))
    return kept


class Listener:
    """One listening session: holds the source, pipeline, sinks and counters."""

    def __init__(self, request: ListenRequest, settings: Settings) -> None:
        self.request = request
        self.settings = settings
        self._stop = False
        self._reload = False
        self._saved_handlers = self.install_signal_handlers()  # before anything that needs cleaning up
        self.model = load_model(settings)
        detector = Detector(self.model.labels, detector_settings(settings, self.model, request.cli_threshold))
        self.pipeline = Pipeline(self.model, detector, hop_s=settings["detector"]["hop_ms"] / 1000)
        self.source = open_source(request, settings)
        self.sinks: list[Sink] = []
        self.sinks = build_sinks(settings, self.source)
        self.notifier = SystemdNotifier()
        self.events = 0
        self.skipped_samples = 0
        self._last_audio = time.monotonic()
        self._last_ping = 0.0
        self._reported = {"overflows": 0, "dropped": 0, "skipped": 0}
        self._last_report = 0.0

    # -- signals -------------------------------------------------------------
    def _on_stop(self, signum: int, frame: Any) -> None:
        self._stop = True

    def _on_hup(self, signum: int, frame: Any) -> None:
        self._reload = True

    def install_signal_handlers(self) -> dict[int, Any]:
        """SIGINT/SIGTERM stop the loop cleanly, SIGHUP reloads; returns the handlers replaced."""
        handlers = {signal.SIGINT: self._on_stop, signal.SIGTERM: self._on_stop, signal.SIGHUP: self._on_hup}
        return {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}

    # -- main loop -----------------------------------------------------------
    def run(self) -> int:
        log.info("listening on %s with model %s", self.source.description, self.model.path.name)
        self.notifier.ready()
        try:
            while not self._stop:
                if self._reload:
                    self._reload = False
                    self.reload()
                block = self.source.read(READ_TIMEOUT_S)
                if block is None:
                    break
                if block.size:
                    self._last_audio = time.monotonic()
                    self._dispatch(self.pipeline.feed(block))
                self._catch_up()
                self._report_problems()
                self._feed_watchdog()
        finally:
            self.close()
        log.info("stopped after %.1f s of audio, %d events", self.pipeline.t, self.events)
        return 0

    def _dispatch(self, events: list) -> None:
        for event in events:
            self.events += 1
            for sink in self.sinks:
                sink.emit(event)
        for sink in self.sinks:
            if hasattr(sink, "status"):
                top = int(np.argmax(self.pipeline.last_probs))
                sink.status(
                    self.pipeline.level_db, self.model.labels[top], float(self.pipeline.last_probs[top]),
                    self._problems_text(),
                )

    def _catch_up(self) -> None:
        """If live audio piled up (slow inference, a stall), skip to the present."""
        backlog = getattr(self.source, "backlog_samples", None)
        if backlog is None or backlog() * 1000 < self.settings["audio"]["max_lag_ms"] * SAMPLE_RATE:
            return
        dropped = self.source.drain()  # type: ignore[attr-defined]
        self.pipeline.skip(dropped)
        self.skipped_samples += dropped

    def _counters(self) -> dict[str, int]:
        return {
            "overflows": getattr(self.source, "overflows", 0),
            "dropped": getattr(self.source, "dropped_blocks", 0),
            "skipped": self.skipped_samples,
        }

    def _problems_text(self) -> str:
        c = self._counters()
        parts = [f"{c['overflows']} overflows"] if c["overflows"] else []
        if c["dropped"] or c["skipped"]:
            parts.append(f"{c['dropped']} blocks dropped, {c['skipped'] / SAMPLE_RATE:.1f} s skipped")
        return ", ".join(parts)

    def _report_problems(self) -> None:
        now = time.monotonic()
        if now - self._last_report < 1.0:
            return
        counters = self._counters()
        new = {k: counters[k] - self._reported[k] for k in counters}
        if any(new.values()):
            self._last_report = now
            self._reported = counters
            log.warning(
                "input trouble in the last second: %d overflows, %d blocks dropped, %.2f s skipped to catch up",
                new["overflows"], new["dropped"], new["skipped"] / SAMPLE_RATE,
            )

    def _feed_watchdog(self) -> None:
        """Ping systemd only while audio really flows, so a hung capture gets restarted."""
        interval = self.notifier.watchdog_interval()
        now = time.monotonic()
        if interval is None or now - self._last_ping < interval / 3:
            return
        if now - self._last_audio < interval / 2:
            self._last_ping = now
            self.notifier.watchdog()

    def reload(self) -> None:
        """SIGHUP: re-read the config; apply detector settings and sinks, or keep the old ones."""
        self.notifier.reloading()
        try:
            settings, path = load_config(self.request.config_path)
            settings["sinks"]["console"] = self.settings["sinks"]["console"]
            new_detector = Detector(
                self.model.labels, detector_settings(settings, self.model, self.request.cli_threshold)
            )
            self.sinks = reconcile_sinks(self.sinks, self.settings["sinks"], settings["sinks"])
        except KwspotError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
        else:
            self.pipeline.detector = new_detector
            self.settings["detector"], self.settings["sinks"] = settings["detector"], settings["sinks"]
            log.info("configuration reloaded from %s", path or "built-in defaults")
        self.notifier.ready()

    def close(self) -> None:
        self.notifier.stopping()
        try:
            self.source.close()
        finally:
            for sink in self.sinks:
                sink.close()
            for signum, handler in self._saved_handlers.items():
                signal.signal(signum, handler)
