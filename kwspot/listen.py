"""``kwspot listen``: source -> pipeline -> sinks, until a signal says stop.

The loop owns no audio logic: it reads blocks from a source, feeds them to
the pipeline, hands events to the sinks, keeps the systemd watchdog fed
while audio flows, skips ahead when it falls behind, reports overflows at
most once a second, and on SIGHUP reloads thresholds and sinks from
:func:`kwspot.settings.resolve` (the file again, and the same flags). Sinks
come from the registry in :mod:`kwspot.sinks`; those that want it get a
:class:`~kwspot.sinks.Status` after every block.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kwspot.detector import Detector, DetectorSettings
from kwspot.errors import KwspotError
from kwspot.frontend import SAMPLE_RATE
from kwspot.model import Model, bundled_model_path
from kwspot.modelfile import check_thresholds
from kwspot.notify import SystemdNotifier
from kwspot.pipeline import Pipeline, level_db
from kwspot.settings import Settings, resolve
from kwspot.sinks import SinkContext, Status, build_sinks, close_sinks, reconcile, spec_of
from kwspot.sources import FileSource, MicSource, Source, StdinSource
from kwspot.verifier import Verifier

log = logging.getLogger("kwspot")
READ_TIMEOUT_S = 0.25


@dataclass
class ListenRequest:
    """What the command line asked for, beyond the settings."""

    input: str | None = None  # FILE, "-" for raw PCM on stdin, None for the microphone
    fast: bool = False
    stdin_rate: int = 16000
    config_path: str | None = None
    flags: Mapping[str, Any] = field(default_factory=dict)  # settings given as flags: they outlive a reload

    @property
    def cli_threshold(self) -> bool:
        """--threshold given: it overrides the model's own thresholds."""
        return "detector.threshold" in self.flags


def load_model(settings: Settings) -> Model:
    path = settings["model"]["path"] or bundled_model_path()
    return Model(path, threads=settings["model"]["threads"])


def load_verifier(settings: Settings, model: Model) -> Verifier | None:
    """The model's second stage, unless ``detector.verifier`` is off or the model names none."""
    spec = model.file.verifier
    if spec is None or settings["detector"]["verifier"] == "off":
        return None
    verifier = Verifier(spec.head, spec.thresholds, spec.threshold, threads=settings["model"]["threads"])
    log.info("verifier %s checks every event (thresholds %s)", spec.head.name,
             ", ".join(f"{k} {verifier.threshold_of(k):g}" for k in model.keywords))
    return verifier


def detector_settings(settings: Settings, model: Model, cli_threshold: bool = False,
                      where: str = "config") -> DetectorSettings:
    """Thresholds: config per-keyword > model sidecar per-keyword > config default.

    The config's per-keyword thresholds must name keywords of this model.
    """
    det = settings["detector"]
    thresholds = {} if cli_threshold else dict(model.thresholds)
    thresholds.update(check_thresholds(det["thresholds"], model.keywords, f"{where}: detector.thresholds"))
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


class Listener:
    """One listening session: holds the source, pipeline, sinks and counters."""

    def __init__(self, request: ListenRequest, settings: Settings, config_used: Path | None = None) -> None:
        self.request = request
        self.settings = settings
        self._where = str(config_used or "config")
        self._stop = False
        self._reload = False
        self._saved_handlers = self.install_signal_handlers()  # before anything that needs cleaning up
        self.sinks: dict[str, Any] = {}
        self.model = load_model(settings)
        detector = Detector(self.model.labels,
                            detector_settings(settings, self.model, request.cli_threshold, self._where))
        self.pipeline = Pipeline(self.model, detector, hop_s=settings["detector"]["hop_ms"] / 1000,
                                 verifier=load_verifier(settings, self.model))
        self.source = open_source(request, settings)
        self._sink_context = SinkContext(
            self.source.description, sys.stdout.isatty(), model=self.model.name, model_version=self.model.version,
            keywords=self.model.keywords, thresholds={k: detector.threshold(k) for k in self.model.keywords},
        )
        self.sinks = build_sinks(settings["sinks"], self._sink_context)
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
                    self._dispatch(self.pipeline.feed(block), block)
                self._catch_up()
                self._report_problems()
                self._feed_watchdog()
        finally:
            self.close()
        log.info("stopped after %.1f s of audio, %d events", self.pipeline.t, self.events)
        if self.pipeline.verifier is not None:
            log.info("verifier rejected %d of %d events", self.pipeline.rejected, self.pipeline.checks)
        return 0

    def _dispatch(self, events: list, block: np.ndarray) -> None:
        for event in events:
            self.events += 1
            for sink in self.sinks.values():
                sink.emit(event)
        watchers = [sink for name, sink in self.sinks.items() if spec_of(name).wants_status]
        if watchers:
            probs = self.pipeline.last_probs
            top = int(np.argmax(probs))
            status = Status(level_db(block), self.model.labels[top], float(probs[top]), self._problems_text())
            for sink in watchers:
                sink.status(status)

    def _catch_up(self) -> None:
        """If live audio piled up (slow inference, a stall), skip to the present."""
        if self.source.backlog_samples() * 1000 < self.settings["audio"]["max_lag_ms"] * SAMPLE_RATE:
            return
        dropped = self.source.drain()
        self.pipeline.skip(dropped)
        self.skipped_samples += dropped

    def _counters(self) -> dict[str, int]:
        return {
            "overflows": self.source.overflows,
            "dropped": self.source.dropped_blocks,
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
        """SIGHUP: settings again from file and flags; apply detector settings and sinks, or keep the old ones."""
        self.notifier.reloading()
        try:
            settings, path = resolve(self.request.config_path, self.request.flags)
            new_detector = Detector(self.model.labels, detector_settings(
                settings, self.model, self.request.cli_threshold, str(path or "config")))
            verifier_changed = settings["detector"]["verifier"] != self.settings["detector"]["verifier"]
            new_verifier = load_verifier(settings, self.model) if verifier_changed else self.pipeline.verifier
            self.sinks = reconcile(self.sinks, self.settings["sinks"], settings["sinks"], self._sink_context)
        except KwspotError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
        else:
            self.pipeline.detector = new_detector
            if new_verifier is not self.pipeline.verifier:
                self.pipeline.set_verifier(new_verifier)
            self.settings["detector"], self.settings["sinks"] = settings["detector"], settings["sinks"]
            log.info("configuration reloaded from %s: threshold %g, sinks: %s", path or "built-in defaults",
                     settings["detector"]["threshold"], ", ".join(self.sinks) or "none")
        self.notifier.ready()

    def close(self) -> None:
        self.notifier.stopping()
        try:
            self.source.close()
        finally:
            close_sinks(self.sinks)
            for signum, handler in self._saved_handlers.items():
                signal.signal(signum, handler)
