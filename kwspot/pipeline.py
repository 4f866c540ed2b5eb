"""The streaming core: 8 kHz samples -> ring buffer -> model every hop -> detector -> events.

It knows nothing of where audio comes from or where events go: ``listen``
feeds it blocks from a source and hands its events to the sinks, and
``evaluate --stream`` feeds it a generated stream. Both run this same code.
"""

from __future__ import annotations

import numpy as np

from kwspot.detector import Detector
from kwspot.events import Event
from kwspot.frontend import SAMPLE_RATE
from kwspot.model import Model
from kwspot.ring import RingBuffer

DEFAULT_HOP_S = 0.1


class Pipeline:
    """Feed 8 kHz float32 blocks of any size; get the events they complete."""

    def __init__(self, model: Model, detector: Detector, hop_s: float = DEFAULT_HOP_S) -> None:
        self.model = model
        self.detector = detector
        self.hop_samples = max(1, round(hop_s * SAMPLE_RATE))
        self.ring = RingBuffer(model.window_samples)
        self._pending = np.zeros(0, dtype=np.float32)
        self.hops = 0
        self.last_probs = np.zeros(len(model.labels), dtype=np.float32)
        self.level_db = -120.0  # RMS level of the latest hop, dBFS

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
        self.ring.write(np.zeros(min(samples, self.ring.size), dtype=np.float32))
        self.ring.total += max(0, samples - self.ring.size)
        self._pending = np.zeros(0, dtype=np.float32)
        self.detector.reset()

    def score(self, hop: np.ndarray) -> np.ndarray:
        """Take one hop of audio and return the model's probabilities for the last second."""
        self.ring.write(hop)
        self.hops += 1
        self.level_db = level_db(hop)
        self.last_probs = self.model.predict(self.ring.window())
        return self.last_probs

    def _step(self, hop: np.ndarray) -> Event | None:
        detection = self.detector.update(self.score(hop), self.t, self.level_db)
        if detection is None:
            return None
        return Event(detection.keyword, detection.score, detection.t)


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
    rms = float(np.sqrt(np.mean(np.asarray(hop, dtype=np.float64) ** 2))) if len(hop) else 0.0
    return 20.0 * float(np.log10(max(rms, 1e-6)))


def hop_levels(audio: np.ndarray, hop_s: float = DEFAULT_HOP_S) -> np.ndarray:
    """The level of each hop, aligned with :func:`stream_probabilities` (the detector's gate input)."""
    hop = max(1, round(hop_s * SAMPLE_RATE))
    return np.array([level_db(audio[s : s + hop]) for s in range(0, len(audio) - hop + 1, hop)])
