"""A fixed-size ring buffer holding the last second of 8 kHz audio."""

from __future__ import annotations

import numpy as np


class RingBuffer:
    """Keeps the newest ``size`` samples; ``window()`` returns them oldest first."""

    def __init__(self, size: int) -> None:
        self.size = int(size)
        self._data = np.zeros(self.size, dtype=np.float32)
        self._pos = 0  # where the next sample goes
        self.total = 0  # samples written since creation

    def write(self, samples: np.ndarray) -> None:
        samples = np.asarray(samples, dtype=np.float32).ravel()
        self.total += samples.size
        if samples.size >= self.size:
            self._data[:] = samples[-self.size :]
            self._pos = 0
            return
        end = self._pos + samples.size
        if end <= self.size:
            self._data[self._pos : end] = samples
        else:
            split = self.size - self._pos
            self._data[self._pos :] = samples[:split]
            self._data[: end - self.size] = samples[split:]
        self._pos = end % self.size

    def window(self) -> np.ndarray:
        """A copy of the buffer in time order (zeros before the first second is filled)."""
        return np.concatenate((self._data[self._pos :], self._data[: self._pos]))
