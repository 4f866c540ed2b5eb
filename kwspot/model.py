"""The model runtime: a LiteRT model and its sidecar; numpy in, probabilities out.

A model is two files: ``NAME.tflite`` and ``NAME.json``. The sidecar holds
the class labels and the front-end settings the model was trained with::

    {"labels": ["_silence_", "_unknown_", "yes", ...],
     "sample_rate": 8000, "window_samples": 8000,
     "thresholds": {"yes": 0.8, ...}}      # optional, per keyword

The model takes a float32 batch of raw 8 kHz windows in [-1, 1] of shape
(1, window_samples) and returns one probability per label. No audio I/O.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from kwspot import KEYWORDS
from kwspot.errors import KwspotError
from kwspot.frontend import SAMPLE_RATE, WINDOW_SAMPLES
from kwspot.paths import checked, shown

BUNDLED_MODEL_NAME = "kwspot.tflite"


def bundled_model_path() -> Path:
    """The model shipped with the package (``models/`` in the source tree)."""
    return Path(str(resources.files("kwspot.models").joinpath(BUNDLED_MODEL_NAME)))


def sidecar_path(model_path: str | Path) -> Path:
    """Where the labels and front-end settings of a model live."""
    return Path(model_path).with_suffix(".json")


def load_sidecar(model_path: str | Path) -> dict[str, Any]:
    """Read and check a model's sidecar JSON."""
    path = sidecar_path(model_path)
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise KwspotError(f"{path}: model sidecar missing (labels and front-end settings)") from None
    except (OSError, ValueError) as exc:
        raise KwspotError(f"{path}: unreadable model sidecar ({exc})") from None
    labels = meta.get("labels") if isinstance(meta, dict) else None
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise KwspotError(f"{path}: sidecar has no list of 'labels'")
    if meta.get("sample_rate", SAMPLE_RATE) != SAMPLE_RATE:
        raise KwspotError(f"{path}: model expects {meta['sample_rate']} Hz, kwspot works at {SAMPLE_RATE} Hz")
    check_thresholds(path, meta.get("thresholds", {}), labels)
    return meta


def check_thresholds(path: Path, thresholds: Any, labels: list[str]) -> None:
    """Sidecar thresholds: a mapping of the model's keywords to numbers from 0 to 1."""
    if not isinstance(thresholds, dict):
        raise KwspotError(f"{path}: 'thresholds' must map keywords to numbers from 0 to 1, not {thresholds!r}")
    for word, value in thresholds.items():
        if word not in labels or word not in KEYWORDS:
            raise KwspotError(f"{path}: thresholds.{word}: not one of the model's keywords")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise KwspotError(f"{path}: thresholds.{word} must be a number from 0 to 1, not {value!r}")


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Hide LiteRT's C++ INFO chatter ("Created TensorFlow Lite XNNPACK delegate") on fd 2."""
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class Model:
    """A keyword model: ``predict(window) -> probabilities`` over ``labels``."""

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.path = checked(path, "model")
        if not self.path.is_file():
            raise KwspotError(f"{shown(self.path)}: no such model file")
        self.meta = load_sidecar(self.path)
        self.labels: list[str] = list(self.meta["labels"])
        try:
            content = self.path.read_bytes()  # our own read: a clear error for an unreadable file
        except OSError as exc:
            raise KwspotError(f"{shown(self.path)}: cannot read model ({exc.strerror})") from None
        try:
            with _quiet_stderr():
                self._interpreter = Interpreter(model_content=content, num_threads=threads)
                self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            detail = str(exc).strip().split("\n")[0]
            raise KwspotError(f"{self.path}: not a valid LiteRT model ({detail})") from None
        inputs = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise KwspotError(f"{self.path}: model must have one input and one output")
        self._input = inputs[0]
        self._output = outputs[0]
        shape = tuple(int(d) for d in self._input["shape"])
        if len(shape) != 2 or shape[0] != 1:
            raise KwspotError(f"{self.path}: model input shape {shape}, expected (1, samples)")
        if shape[1] != WINDOW_SAMPLES:
            raise KwspotError(
                f"{self.path}: model input is {shape[1]} samples; kwspot feeds {WINDOW_SAMPLES} (1 s at 8 kHz)"
            )
        self.window_samples = WINDOW_SAMPLES
        out_shape = tuple(int(d) for d in self._output["shape"])
        if out_shape[-1] != len(self.labels):
            raise KwspotError(f"{self.path}: model gives {out_shape[-1]} scores for {len(self.labels)} labels")

    @property
    def thresholds(self) -> dict[str, float]:
        """Per-keyword thresholds stored with the model (may be empty)."""
        return {str(k): float(v) for k, v in self.meta.get("thresholds", {}).items()}

    def predict(self, window: np.ndarray) -> np.ndarray:
        """Probabilities for one raw 8 kHz window of ``window_samples`` floats."""
        window = np.asarray(window, dtype=np.float32).reshape(1, self.window_samples)
        self._interpreter.set_tensor(self._input["index"], window)
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output["index"])[0].astype(np.float32)
