"""The log-mel front end of a model whose sidecar names one, in numpy: a raw window in, features out.

It computes what the training graph's ``LogMel`` layer computes (``tf.signal.stft`` with a periodic Hann
window, power, an HTK mel matrix, log, per-band normalisation) to within 2e-3 (tests/test_features.py). Outside the
model, it can reuse work: the daemon's window moves by one hop at a time, so when the new window is the
old one moved by whole frames (checked sample for sample), only the frames that are new are computed
(10 of 97 at the default hop, the rest copied): a tenth of the work of the front end in the graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LogMelSpec:
    """What a sidecar's ``features`` says: framing, mel bands, and the per-band mean and std."""

    frame: int
    hop: int
    fft: int
    mels: int
    fmin: float
    fmax: float
    floor: float
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def frames(self, window_samples: int) -> int:
        return 1 + (window_samples - self.frame) // self.hop

    def as_json(self) -> dict[str, Any]:
        return {"kind": "logmel", "frame": self.frame, "hop": self.hop, "fft": self.fft, "mels": self.mels,
                "fmin": self.fmin, "fmax": self.fmax, "floor": self.floor,
                "mean": list(self.mean), "std": list(self.std)}


def hann(length: int) -> np.ndarray:
    """The periodic Hann window (``tf.signal.hann_window``'s default)."""
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(length) / length)).astype(np.float32)


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """The HTK mel scale, as ``tf.signal`` uses it."""
    return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)


def mel_matrix(bins: int, mels: int, sample_rate: int, fmin: float, fmax: float) -> np.ndarray:
    """(bins, mels) triangular HTK-mel weights, as ``tf.signal.linear_to_mel_weight_matrix`` builds them."""
    spectrum = hz_to_mel(np.linspace(0.0, sample_rate / 2.0, bins)[1:])[:, None]  # the DC bin gets no weight
    edges = np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), mels + 2)
    lower, center, upper = edges[:-2][None, :], edges[1:-1][None, :], edges[2:][None, :]
    rising = (spectrum - lower) / (center - lower)
    falling = (upper - spectrum) / (upper - center)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    return np.pad(weights, [[1, 0], [0, 0]]).astype(np.float32)


class LogMelFrontEnd:
    """Raw 8 kHz window -> normalised log-mel features (frames, mels), float32."""

    def __init__(self, spec: LogMelSpec, window_samples: int, sample_rate: int) -> None:
        self.spec = spec
        self.window_samples = window_samples
        self.frames = spec.frames(window_samples)
        # The windowed real DFT as one matrix (frame -> [real | imaginary]): one matmul per call instead of
        # windowing, rfft and taking parts. Few numpy calls matter: woken every 100 ms on cold caches, each
        # call costs tens of microseconds (measured), more than the arithmetic.
        bins = spec.fft // 2 + 1
        angles = 2.0 * np.pi * np.outer(np.arange(spec.frame), np.arange(bins)) / spec.fft
        self._dft = (hann(spec.frame)[:, None] * np.concatenate((np.cos(angles), -np.sin(angles)), axis=1)).astype(
            np.float32)
        self._bins = bins
        self._mel = mel_matrix(bins, spec.mels, sample_rate, spec.fmin, spec.fmax)
        self._scale = (1.0 / np.asarray(spec.std, dtype=np.float32)).astype(np.float32)
        self._offset = (-np.asarray(spec.mean, dtype=np.float32) * self._scale).astype(np.float32)
        self._frame_index = np.arange(self.frames)[:, None] * spec.hop + np.arange(spec.frame)[None, :]
        self._last_audio: np.ndarray | None = None
        self._last_features: np.ndarray | None = None
        self._last_moved = 0
        self.reused_frames = 0  # frames copied from the previous window rather than computed

    def _compute(self, audio: np.ndarray, first: int) -> np.ndarray:
        """Features of frames ``first`` .. the last of a window (or of each window of a batch)."""
        frames = audio[..., self._frame_index[first:]]
        parts = (frames.reshape(-1, self.spec.frame) @ self._dft).reshape(*frames.shape[:-1], -1)  # one 2-D product
        np.square(parts, out=parts)
        power = parts[..., : self._bins] + parts[..., self._bins :]
        mel = power @ self._mel
        mel += self.spec.floor
        np.log(mel, out=mel)
        mel *= self._scale
        mel += self._offset
        return mel

    def _shift(self, audio: np.ndarray) -> int:
        """By how many whole frames this window moved on from the last one (0: not a move we can reuse).

        The last move is tried first (one comparison: the daemon's window moves by one hop each time); else
        each frame offset whose first samples match.
        """
        last = self._last_audio
        if last is None:
            return 0
        hop, size = self.spec.hop, len(audio)
        tried = self._last_moved
        if tried and np.array_equal(audio[: size - tried * hop], last[tried * hop :]):
            return tried
        head = min(16, self.spec.frame)
        starts = np.lib.stride_tricks.sliding_window_view(last, head)[hop::hop][: self.frames - 1]
        for index in np.flatnonzero((starts == audio[:head]).all(axis=1)):
            moved = int(index) + 1
            if moved != tried and np.array_equal(audio[: size - moved * hop], last[moved * hop :]):
                return moved
        return 0

    def batch(self, windows: np.ndarray) -> np.ndarray:
        """Features (n, frames, mels) of n unrelated windows (n, samples), computed together."""
        return self._compute(np.ascontiguousarray(windows, dtype=np.float32).reshape(-1, self.window_samples), 0)

    def __call__(self, window: np.ndarray) -> np.ndarray:
        audio = np.ascontiguousarray(window, dtype=np.float32).reshape(self.window_samples)
        moved = self._shift(audio)
        if moved:  # a move is only found against a last window, whose features are kept with it
            first_new = self.frames - moved
            features = np.concatenate((self._last_features[moved:], self._compute(audio, first_new)))
            self.reused_frames += first_new
        else:
            features = self._compute(audio, 0)
        self._last_audio, self._last_features, self._last_moved = audio.copy(), features, moved
        return features
