"""Distillation: the labels of each training batch softened by what teacher models (earlier runs) say of it.

A teacher is a trained ``.tflite`` with the student's labels; several teachers are averaged (an ensemble of
seeds, say). The target of an example becomes ``(1 - weight) * one_hot(label) + weight * mean(teachers)``,
so the student learns which wrong answers are nearly right, at no cost when it listens.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kwspot.errors import KwspotError
from kwspot.model import Model
from kwspot.paths import shown


class Teachers:
    """Teacher models, checked against the student's labels, giving soft targets for a batch."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[str], weight: float, window_samples: int) -> None:
        self.weight = weight
        self.models = [Model(path) for path in paths]
        for model in self.models:
            if list(model.labels) != list(labels):
                raise KwspotError(f"{shown(model.path)}: teacher labels {model.labels} differ from the student's "
                                  f"{list(labels)}")
            if model.window_samples != window_samples:
                raise KwspotError(f"{shown(model.path)}: teacher window of {model.window_samples} samples, "
                                  f"the student's is {window_samples}")

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """The teachers' mean probabilities for a batch of raw windows (n, samples)."""
        return np.mean([model.predict_batch(x) for model in self.models], axis=0)

    def targets(self, x: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Soft targets (n, labels) for windows ``x`` whose own targets (one-hot or already soft) are ``target``."""
        return (1.0 - self.weight) * target + self.weight * self.probabilities(x)
