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

import ctypes
import gc
import logging
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kwspot import interrupt
from kwspot.detector import Detector, DetectorSettings
from kwspot.errors import KwspotError
from kwspot.frontend import SAMPLE_RATE
from kwspot.model import Model, bundled_model_path
from kwspot.modelfile import check_thresholds
from kwspot.notify import SystemdNotifier
from kwspot.pipeline import Pipeline, level_db
from kwspot.pulse_source import PulseSource, choose_backend
from kwspot.settings import Settings, resolve
from kwspot.sinks import SinkContext, Status, build_sinks, close_sinks, reconcile, sink_alive, spec_of
from kwspot.sources import FileSource, MicSource, Source, StdinSource, is_pipe_like
from kwspot.verifier import Verifier

log = logging.getLogger("kwspot")
READ_TIMEOUT_S = 0.25


@dataclass
class ListenRequest:
    """What the command line asked for, beyond the settings."""

    input: str | None = None  # FILE, a pipe/FIFO, "-" for stdin, None for the microphone
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
    return Verifier(spec.head, spec.thresholds, spec.threshold, threads=settings["model"]["threads"])


def log_verifier(verifier: Verifier | None, model: Model) -> None:
    """Say which second stage runs (once start-up has succeeded: bad input stays one line)."""
    if verifier is None or model.file.verifier is None:
        log.info("verifier: off")
        return
    log.info("verifier %s checks every event (thresholds %s)", model.file.verifier.head.name,
             ", ".join(f"{k} {verifier.threshold_of(k):g}" for k in model.keywords))


def detector_settings(settings: Settings, model: Model, cli_threshold: bool = False,
                      where: str = "config") -> DetectorSettings:
    """Thresholds: --threshold for every keyword; else config per-keyword > model sidecar per-keyword > config default.

    The config's per-keyword thresholds must name keywords of this model (checked even when --threshold wins).
    """
    det = settings["detector"]
    from_file = check_thresholds(det["thresholds"], model.keywords, f"{where}: detector.thresholds")
    thresholds = {} if cli_threshold else {**model.thresholds, **from_file}
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
    if request.input == "-" or (request.input and is_pipe_like(request.input)):
        if request.fast:
            raise KwspotError("--fast needs --input FILE (a pipe goes as fast as it is fed)")
        return StdinSource(rate=request.stdin_rate, block_ms=block_ms, path=request.input)
    if request.input:
        return FileSource(request.input, realtime=not request.fast, block_ms=block_ms)
    audio = settings["audio"]
    if choose_backend(audio["backend"], audio["device"]) == "pulse":
        return PulseSource(audio["device"], audio["rate"], block_ms, audio["max_lag_ms"])
    return MicSource(audio["device"], audio["rate"], block_ms)


NO_SINK = ("events would go nowhere: stdout is not a terminal and no sink is set; add --format jsonl "
           "(JSON lines on stdout), --format console, --socket, --exec CMD, or sinks.mqtt/sinks.actions in the config")


def release_startup_memory() -> None:
    """After start-up: exempt its objects from garbage collection and return its freed heap to the system.

    A full collection over the start-up objects took 8.6 ms here (a stall in the audio loop); frozen, 0.
    """
    gc.freeze()
    try:
        ctypes.CDLL(None).malloc_trim(0)  # glibc; elsewhere there is nothing to call, and nothing lost
    except (OSError, AttributeError):
        pass


class StoppedDuringStart(Exception):
    """SIGINT/SIGTERM came while the input was being opened, and the open failed: leave quietly."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class Listener:
    """One listening session: holds the source, pipeline, sinks and counters."""

    def __init__(self, request: ListenRequest, settings: Settings, config_used: Path | None = None) -> None:
        self.request = request
        self.settings = settings
        self._where = str(config_used or "config")
        self._stop = False
        self._reload = False
        self._started = False
        self._interrupted_start = False  # Ctrl-C before the sinks were up
        self._saved_handlers = self.install_signal_handlers()  # before anything that needs cleaning up
        self.sinks: dict[str, Any] = {}
        self.model = load_model(settings)
        detector = Detector(self.model.labels,
                            detector_settings(settings, self.model, request.cli_threshold, self._where))
        self.pipeline = Pipeline(self.model, detector, hop_s=settings["detector"]["hop_ms"] / 1000,
                                 verifier=load_verifier(settings, self.model))
        try:
            self.source = open_source(request, settings)
        except KwspotError:
            if self._stop:  # asked to stop while the input was opening (a server that never answers): not an error
                raise StoppedDuringStart(128 + signal.SIGINT if self._interrupted_start else 0) from None
            raise
        self._sink_context = SinkContext(
            self.source.description, sys.stdout is not None and sys.stdout.isatty(), model=self.model.name,
            model_version=self.model.version, keywords=self.model.keywords,
            thresholds={k: detector.threshold(k) for k in self.model.keywords},
        )
        self._started = True  # sinks come up (a socket others can see): from now on a signal is an ordinary stop
        try:
            self.sinks = build_sinks(settings["sinks"], self._sink_context)
            if not self.sinks:
                raise KwspotError(NO_SINK)
        except BaseException:
            self.source.close()
            raise
        self.notifier = SystemdNotifier()
        self.events = 0
        self.skipped_samples = 0
        self._last_audio = time.monotonic()
        self._last_ping = 0.0
        self._reported = {"overflows": 0, "dropped": 0, "skipped": 0, "nonfinite": 0}
        self._last_report = 0.0
        self._last_sink_check = 0.0

    # -- signals -------------------------------------------------------------
    def _on_stop(self, signum: int, frame: Any) -> None:
        self._stop = True
        self._interrupted_start = self._interrupted_start or (signum == signal.SIGINT and not self._started)

    def _on_hup(self, signum: int, frame: Any) -> None:
        self._reload = True

    def install_signal_handlers(self) -> dict[int, Any]:
        """SIGINT/SIGTERM stop the loop cleanly, SIGHUP reloads; returns the handlers replaced."""
        handlers = {signal.SIGINT: self._on_stop, signal.SIGTERM: self._on_stop, signal.SIGHUP: self._on_hup}
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # ignored by whoever started us: it stays so
            del handlers[signal.SIGINT]
        saved = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
        if interrupt.requested:  # a Ctrl-C during start-up that Python dropped
            self._on_stop(signal.SIGINT, None)
        return saved

    # -- main loop -----------------------------------------------------------
    def run(self) -> int:
        if self._interrupted_start:  # Ctrl-C during start-up: leave quietly with 130, as a shell expects
            self.close()
            return 128 + signal.SIGINT
        log.info("listening on %s with model %s", self.source.description, self.model.path.name)
        if self.pipeline.verifier is not None:
            log_verifier(self.pipeline.verifier, self.model)
        release_startup_memory()
        self.notifier.ready()
        try:
            while not self._stop:
                if self._reload:
                    self._reload = False
                    self.reload()
                try:
                    block = self.source.read(READ_TIMEOUT_S)
                except KwspotError:
                    if self._stop:  # e.g. stdin closed by whoever also sent SIGTERM: a stop, not bad input
                        break
                    raise
                if block is None:
                    break
                if block.size:
                    self._last_audio = time.monotonic()
                    self._dispatch(self.pipeline.feed(block), block)
                self._catch_up()
                self._report_problems()
                self._feed_watchdog()
                if not self._sinks_alive():
                    log.info("stopping: every sink is gone (%s)", ", ".join(self.sinks))
                    break
        finally:
            self.close()
        log.info("stopped after %.1f s of audio, %d events", self.pipeline.t, self.events)
        if self.pipeline.verifier is not None:
            log.info("verifier rejected %d of %d events", self.pipeline.rejected, self.pipeline.checks)
        return 1 if any(getattr(sink, "failed", False) for sink in self.sinks.values()) else 0  # e.g. a full disk

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

    def _sinks_alive(self) -> bool:
        """Ask the sinks (twice a second) whether their readers are still there; False once none is."""
        now = time.monotonic()
        if now - self._last_sink_check < 0.5:
            return True
        self._last_sink_check = now
        return any([sink_alive(sink) for sink in self.sinks.values()])  # a list: every sink gets its check

    def _counters(self) -> dict[str, int]:
        return {
            "overflows": self.source.overflows,
            "dropped": self.source.dropped_blocks,
            "skipped": self.skipped_samples,
            "nonfinite": getattr(self.source, "nonfinite", 0),
        }

    def _problems_text(self) -> str:
        c = self._counters()
        parts = [f"{c['overflows']} overflows"] if c["overflows"] else []
        if c["dropped"] or c["skipped"]:
            parts.append(f"{c['dropped']} blocks dropped, {c['skipped'] / SAMPLE_RATE:.1f} s skipped")
        if c["nonfinite"]:
            parts.append(f"{c['nonfinite']} NaN/inf samples silenced")
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
                "input trouble in the last second: %d overflows, %d blocks dropped, %.2f s skipped to catch up%s",
                new["overflows"], new["dropped"], new["skipped"] / SAMPLE_RATE,
                f", {new['nonfinite']} NaN/infinite samples replaced by silence" if new["nonfinite"] else "",
            )

    def _feed_watchdog(self) -> None:
        """Ping systemd while audio really flows, or while a lost input is being reopened with backoff (the loop
        turns: kwspot recovers by itself, which a restart every few seconds would not improve); a hung capture
        or loop stops the pings and gets restarted."""
        interval = self.notifier.watchdog_interval()
        now = time.monotonic()
        if interval is None or now - self._last_ping < interval / 3:
            return
        if now - self._last_audio < interval / 2 or getattr(self.source, "reconnecting", False):
            self._last_ping = now
            self.notifier.watchdog()

    def reload(self) -> None:
        """SIGHUP: settings again from file and flags; apply detector settings and sinks, or keep the old ones."""
        self.notifier.reloading()
        try:
            settings, path = resolve(self.request.config_path, self.request.flags)
            if settings["model"]["path"] is not None:  # a model that would not start kwspot refuses the reload
                Model(settings["model"]["path"])  # loaded to be checked only: a new model needs a restart
            new_detector = Detector(self.model.labels, detector_settings(
                settings, self.model, self.request.cli_threshold, str(path or "config")))
            verifier_changed = settings["detector"]["verifier"] != self.settings["detector"]["verifier"]
            new_verifier = load_verifier(settings, self.model) if verifier_changed else self.pipeline.verifier
            self.sinks = reconcile(self.sinks, self.settings["sinks"], settings["sinks"], self._sink_context,
                                   refuse_none="the new configuration has no sink; events would go nowhere")
        except KwspotError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
        except Exception as exc:  # noqa: BLE001 - whatever a new file does, the running daemon keeps going
            log.error("reload refused, keeping the running configuration: %s: %s", type(exc).__name__, exc)
        else:
            later = needs_restart(self.settings, settings)
            settings["detector"]["hop_ms"] = self.settings["detector"]["hop_ms"]  # the running one, until a restart
            self.pipeline.detector = new_detector
            if new_verifier is not self.pipeline.verifier:
                self.pipeline.set_verifier(new_verifier)
                log_verifier(new_verifier, self.model)
            self.settings["detector"], self.settings["sinks"] = settings["detector"], settings["sinks"]
            log.info("configuration reloaded from %s: threshold %g, sinks: %s", path or "built-in defaults",
                     settings["detector"]["threshold"], ", ".join(self.sinks) or "none")
            if later:
                log.warning("not applied until kwspot restarts: %s", ", ".join(later))
        self.notifier.ready()

    def close(self) -> None:
        self.notifier.stopping()
        gc.unfreeze()  # let the exit's collection free start-up objects (soxr's, else nanobind reports leaks)
        try:
            self.source.close()
        finally:
            close_sinks(self.sinks)
            for signum, handler in self._saved_handlers.items():
                signal.signal(signum, handler)


def needs_restart(running: Settings, new: Settings) -> list[str]:
    """The changed settings a reload does not apply (audio, model, hop, logging): ``section.key`` names."""
    changed = [f"{section}.{key}" for section in ("audio", "model", "logging")
               for key, value in new[section].items() if running[section].get(key) != value]
    if new["detector"]["hop_ms"] != running["detector"]["hop_ms"]:
        changed.append("detector.hop_ms")
    return changed
