"""Turn per-window probabilities into command events.

A small pure class in the manner of TensorFlow's ``RecognizeCommands``:
average the probabilities over the last few hops, require the keyword to
be the top class above its threshold for a number of consecutive hops,
then stay quiet for a refractory period. A keyword that fired must also
fall back below its threshold before it can fire again, so one long word
gives one event. Labels starting with ``_`` (``_silence_``, ``_unknown_``)
never fire.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from kwspot.gate import PauseGate
from kwspot.modelfile import keywords_of


@dataclass(frozen=True)
class DetectorSettings:
    """How eager the detector is; defaults are stated in config.yaml."""

    threshold: float = 0.8
    thresholds: Mapping[str, float] | None = None  # per keyword, overriding ``threshold``
    smoothing_hops: int = 3
    min_consecutive: int = 2
    refractory_s: float = 1.0
    min_pause_ms: float = 0.0  # isolated-command gate (kwspot.gate): quiet this long before and after; 0 = off


@dataclass(frozen=True)
class Detection:
    keyword: str
    score: float
    t: float


class Detector:
    """Feed ``update(probs, t)`` once per hop; it returns a Detection or None."""

    def __init__(self, labels: Sequence[str], settings: DetectorSettings = DetectorSettings()) -> None:
        self.labels = list(labels)
        self.settings = settings
        self.keywords = keywords_of(self.labels)
        self._keyword_mask = np.array([label in self.keywords for label in self.labels])
        per_keyword = dict(settings.thresholds or {})
        self._thresholds = np.array(
            [per_keyword.get(label, settings.threshold) if label in self.keywords else np.inf for label in self.labels],
            dtype=np.float32,
        )
        self._history = np.zeros((max(1, settings.smoothing_hops), len(self.labels)), dtype=np.float32)
        self._filled = 0  # rows of _history written since the last reset
        self._streak_label = -1
        self._streak = 0
        self._last_fire_t = -np.inf
        self._latched = -1  # label index that fired and has not yet dropped below threshold
        self.smoothed = np.zeros(len(self.labels), dtype=np.float32)
        self.gate = PauseGate(settings.min_pause_ms / 1000.0) if settings.min_pause_ms > 0 else None

    def reset(self) -> None:
        """Forget everything (e.g. after a gap in the audio)."""
        self._history[:] = 0.0
        self._filled = 0
        self._streak_label, self._streak, self._latched = -1, 0, -1
        self._last_fire_t = -np.inf
        self.smoothed = np.zeros(len(self.labels), dtype=np.float32)
        if self.gate is not None:
            self.gate.reset()

    def threshold(self, keyword: str) -> float:
        return float(self._thresholds[self.labels.index(keyword)])

    def update(self, probs: np.ndarray, t: float, level_db: float | None = None) -> Detection | None:
        """Take the probabilities of the window ending at ``t`` seconds (and, for the gate, its newest hop's level)."""
        if self.gate is None:
            return self._update(probs, t)
        if level_db is None:
            raise ValueError("min_pause_ms needs the level of each hop (level_db)")
        released = self.gate.hop(t, level_db)
        proposed = self._update(probs, t)
        if proposed is not None and released is None:
            released = self.gate.propose(proposed.keyword, proposed.score, t)
        return None if released is None else Detection(*released)

    def _update(self, probs: np.ndarray, t: float) -> Detection | None:
        probs = np.asarray(probs, dtype=np.float32)
        if probs.shape != (len(self.labels),):
            raise ValueError(f"expected {len(self.labels)} probabilities, got shape {probs.shape}")
        # the last smoothing_hops rows in a ring (unwritten rows are zeros): one sum per hop
        self._history[self._filled % len(self._history)] = probs
        self._filled += 1
        self.smoothed = self._history.sum(axis=0) / np.float32(min(self._filled, len(self._history)))
        top = int(np.argmax(self.smoothed))
        score = float(self.smoothed[top])

        if self._latched >= 0 and self.smoothed[self._latched] < self._thresholds[self._latched]:
            self._latched = -1

        if not self._keyword_mask[top] or score < self._thresholds[top]:
            self._streak_label, self._streak = -1, 0
            return None
        self._streak = self._streak + 1 if top == self._streak_label else 1
        self._streak_label = top
        if self._streak < self.settings.min_consecutive:
            return None
        if top == self._latched or t - self._last_fire_t < self.settings.refractory_s:
            return None
        self._last_fire_t = t
        self._latched = top
        return Detection(self.labels[top], score, t)
