"""The streaming core: 8 kHz samples -> ring buffer -> model every hop -> detector -> events.

It knows nothing of where audio comes from or where events go: ``listen``
feeds it blocks from a source and hands its events to the sinks, and
``evaluate --stream`` feeds it a generated stream. Both run this same code.

With a :class:`~kwspot.verifier.Verifier`, a second ring keeps the last
``verifier.window_samples`` of audio, and every event the detector proposes
is checked once on it; an event the verifier rejects is dropped (logged at
debug). The detector's state does not depend on the verdict, so replaying
its candidates and checking each on the same audio
(:class:`kwspot.verifier.SignalVerifier`) gives the same events.

Each hop's RMS level (:func:`level_db`) goes to the detector with its
probabilities, for the isolated-command gate (``min_pause_ms``);
:func:`hop_levels` gives the same levels for a recorded stream.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import numpy as np

from kwspot.detector import Detector
from kwspot.events import Event
from kwspot.frontend import SAMPLE_RATE
from kwspot.model import BadScores, Model
from kwspot.ring import RingBuffer

if TYPE_CHECKING:
    from kwspot.verifier import Verifier

log = logging.getLogger("kwspot")
BAD_WINDOWS_LOG_EVERY = 1000  # after the first, every so many windows with broken scores are told again
DEFAULT_HOP_S = 0.1


class Pipeline:
    """Feed 8 kHz float32 blocks of any size; get the events they complete."""

    def __init__(self, model: Model, detector: Detector, hop_s: float = DEFAULT_HOP_S,
                 verifier: Verifier | None = None) -> None:
        self.model = model
        self.detector = detector
        self.hop_samples = max(1, round(hop_s * SAMPLE_RATE))
        self.ring = RingBuffer(model.window_samples)
        self.verifier: Verifier | None = None
        self.recent: RingBuffer | None = None
        self.set_verifier(verifier)
        self.checks = 0  # candidates the verifier judged
        self.rejected = 0
        self._pending = np.zeros(0, dtype=np.float32)
        self.hops = 0
        self.bad_windows = 0  # windows the model gave no probabilities for (see Model.predict)
        self.level_db = -120.0  # RMS level of the latest hop, dBFS (the gate's input)
        self.last_probs = np.zeros(len(model.labels), dtype=np.float32)

    def set_verifier(self, verifier: Verifier | None) -> None:
        """Check events with ``verifier`` from now on (None: no second stage)."""
        self.verifier = verifier
        self.recent = RingBuffer(verifier.window_samples) if verifier is not None else None
        if self.recent is not None:
            self.recent.total = self.ring.total

    @property
    def t(self) -> float:
        """Seconds of audio taken into the ring so far (end of the newest window)."""
        return self.ring.total / SAMPLE_RATE

    def feed(self, samples: np.ndarray) -> list[Event]:
        """Take samples; run the model for every hop they complete."""
        self._pending = np.concatenate((self._pending, np.asarray(samples, dtype=np.float32).ravel()))
        events: list[Event] = []
        while self._pending.size >= self.hop_samples:
            hop, self._pending = self._pending[: self.hop_samples], self._pending[self.hop_samples :]
            event = self._step(hop)
            if event is not None:
                events.append(event)
        return events

    def skip(self, samples: int) -> None:
        """Account for audio that was dropped (overflow, lag): time moves on, the detector forgets."""
        for ring in (self.ring, self.recent) if self.recent is not None else (self.ring,):
            ring.write(np.zeros(min(samples, ring.size), dtype=np.float32))
            ring.total += max(0, samples - ring.size)
        self._pending = np.zeros(0, dtype=np.float32)
        self.detector.reset()

    def score(self, hop: np.ndarray) -> np.ndarray:
        """Take one hop of audio and return the model's probabilities for the last second."""
        self.ring.write(hop)
        if self.recent is not None:
            self.recent.write(hop)
        self.hops += 1
        self.level_db = level_db(hop)
        try:
            self.last_probs = self.model.predict(self.ring.window())
        except BadScores as exc:  # a model broken on some input: this window fires nothing; the stream goes on
            self.bad_windows += 1
            if self.bad_windows == 1 or self.bad_windows % BAD_WINDOWS_LOG_EVERY == 0:
                log.warning("%s: window taken as no detection (%d such so far)", exc, self.bad_windows)
            self.last_probs = np.zeros(len(self.model.labels), dtype=np.float32)
        return self.last_probs

    def _step(self, hop: np.ndarray) -> Event | None:
        detection = self.detector.update(self.score(hop), self.t, self.level_db)
        if detection is None:
            return None
        if self.verifier is not None and self.recent is not None:
            self.checks += 1
            accepted, score = self.verifier.check(self.recent.window(), detection.keyword)
            if not accepted:
                self.rejected += 1
                log.debug("verifier rejected %s at %.2f s (%.2f < %.2f)", detection.keyword, detection.t, score,
                          self.verifier.threshold_of(detection.keyword))
                return None
        return Event(detection.keyword, detection.score, detection.t, model=self.model.name)


def stream_probabilities(
    model: Model, audio: np.ndarray, hop_s: float = DEFAULT_HOP_S
) -> tuple[np.ndarray, np.ndarray]:
    """Run the model over a whole 8 kHz signal as the stream would see it.

    Returns (t, probs): the end time of each window in seconds, and one row
    of probabilities per window; replaying them through a Detector gives the
    same events as ``Pipeline.feed`` (used for threshold sweeps).
    """
    pipeline = Pipeline(model, Detector(model.labels), hop_s)
    hop = pipeline.hop_samples
    times, rows = [], []
    for start in range(0, len(audio) - hop + 1, hop):
        rows.append(pipeline.score(audio[start : start + hop]))
        times.append(pipeline.t)
    return np.array(times), np.array(rows, dtype=np.float32).reshape(len(rows), len(model.labels))


def level_db(hop: np.ndarray) -> float:
    """RMS level of one hop of audio, dBFS (floored at -120)."""
    x = np.asarray(hop, dtype=np.float64).ravel()
    power = float(np.dot(x, x)) / x.size if x.size else 0.0  # one numpy call: a hop costs little work
    return 10.0 * math.log10(max(power, 1e-12))


def hop_levels(audio: np.ndarray, hop_s: float = DEFAULT_HOP_S) -> np.ndarray:
    """The level of each hop, aligned with :func:`stream_probabilities` (the detector's gate input)."""
    hop = max(1, round(hop_s * SAMPLE_RATE))
    return np.array([level_db(audio[s : s + hop]) for s in range(0, len(audio) - hop + 1, hop)])
