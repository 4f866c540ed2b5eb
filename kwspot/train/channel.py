"""Another room and microphone for a training window, so that the channel does not give the label away.

Speech Commands clips are close-talk phone recordings; the negatives
(LibriSpeech, wake phrases) and the rooms kwspot listens in are not. Each
transform keeps the window's RMS level (the gain comes afterwards):

- reverb: a synthetic room impulse response, a direct path plus exponentially
  decaying noise (RT60 0.1-0.8 s, direct-to-reverberant ratio -3 to +15 dB);
- band limit and EQ: a high-pass at 60-400 Hz, a low-pass at 1.8-3.9 kHz
  (telephone to full band at 8 kHz), a random tilt of +-6 dB;
- level: :data:`EXTRA_ATTENUATION_DB`, a further attenuation the caller adds
  to its gain (quiet, far talkers), so the level range widens.
"""

from __future__ import annotations

import numpy as np

from kwspot.frontend import SAMPLE_RATE

REVERB_PROB = 0.6
EQ_PROB = 0.6
EXTRA_ATTENUATION_DB = (-18.0, 0.0)


def room_impulse(rng: np.random.Generator) -> np.ndarray:
    """A synthetic room impulse response at 8 kHz, direct path first."""
    rt60 = rng.uniform(0.1, 0.8)
    n = int(min(rt60, 0.5) * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    tail = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)
    tail[: int(rng.uniform(0.002, 0.01) * SAMPLE_RATE)] = 0.0  # first reflections come after the direct path
    drr_db = rng.uniform(-3.0, 15.0)
    tail *= 10 ** (-drr_db / 20) / max(float(np.sqrt(np.sum(tail**2))), 1e-9)
    tail[0] = 1.0
    return tail


def reverb(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h = room_impulse(rng)
    n = len(x) + len(h) - 1
    size = 1 << (n - 1).bit_length()
    y = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(h, size), size)[: len(x)]
    return y.astype(np.float32)


def eq(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Band limit and tilt in the frequency domain (smooth second-order-like skirts)."""
    spec = np.fft.rfft(x)
    f = np.fft.rfftfreq(len(x), 1.0 / SAMPLE_RATE)
    lo, hi = rng.uniform(60.0, 400.0), rng.uniform(1800.0, 3900.0)
    gain = 1.0 / np.sqrt(1.0 + (lo / np.maximum(f, 1.0)) ** 4)
    gain *= 1.0 / np.sqrt(1.0 + (f / hi) ** 4)
    tilt_db = rng.uniform(-6.0, 6.0) * (f / (SAMPLE_RATE / 2) - 0.5)
    y = np.fft.irfft(spec * gain * 10 ** (tilt_db / 20), len(x))
    return y.astype(np.float32)


def other_channel(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``x`` as another room and microphone would give it, at the same RMS."""
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    if rms <= 0:
        return x
    y = x
    if rng.random() < REVERB_PROB:
        y = reverb(y, rng)
    if rng.random() < EQ_PROB:
        y = eq(y, rng)
    y_rms = float(np.sqrt(np.mean(np.square(y, dtype=np.float64))))
    return (y * (rms / max(y_rms, 1e-9))).astype(np.float32)
