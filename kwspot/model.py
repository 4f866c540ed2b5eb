"""The model runtime: a LiteRT model and its sidecar; numpy in, probabilities out.

A model is two files: ``NAME.tflite`` and ``NAME.json``; the sidecar
(:mod:`kwspot.modelfile`) says which labels the outputs are, which of them
fire, and how long a window the model takes. ``predict`` takes one raw
8 kHz window in [-1, 1] and returns one probability per label. The LiteRT
model takes that window as (1, window_samples), or, where the sidecar names
a log-mel front end (:mod:`kwspot.features`), its features as (1, frames,
mels), computed here in numpy. No audio I/O.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

import numpy as np

from kwspot import modelfile
from kwspot.errors import KwspotError
from kwspot.features import LogMelFrontEnd
from kwspot.frontend import SAMPLE_RATE
from kwspot.modelfile import sidecar_path  # noqa: F401 - re-exported for callers of kwspot.model
from kwspot.paths import checked, not_a_file, shown

BUNDLED_MODEL_NAME = "kwspot.tflite"


def bundled_model_path() -> Path:
    """The model shipped with the package (``models/`` in the source tree)."""
    return Path(str(resources.files("kwspot.models").joinpath(BUNDLED_MODEL_NAME)))


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Hide LiteRT's C++ INFO chatter ("Created TensorFlow Lite XNNPACK delegate") on fd 2."""
    try:
        saved = os.dup(2)
    except OSError:  # fd 2 is closed: nothing to hide it from
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def model_file(path: str | Path) -> Path:
    """``path`` as a Path if it names a regular file, else KwspotError saying what it is instead."""
    file = checked(path, "model")
    if not file.is_file():
        raise KwspotError(f"{shown(file)}: {not_a_file(file, 'model')}")
    return file


SCORE_SLACK = 1e-3  # how far outside 0..1 a float32 softmax may round
MAX_MODEL_BYTES = 256 << 20  # the bundled model is 0.3 MiB; a file past this is not a keyword model


class BadScores(KwspotError):
    """The model gave a window scores that are not probabilities (NaN, or outside 0..1): a broken model."""


class Model:
    """A keyword model: ``predict(window) -> probabilities`` over ``labels``."""

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.path = model_file(path)
        self.file = modelfile.read(self.path)
        if self.file.sample_rate != SAMPLE_RATE:
            raise KwspotError(
                f"{self.file.path}: model expects {self.file.sample_rate} Hz, kwspot works at {SAMPLE_RATE} Hz"
            )
        self.meta = self.file.meta
        self.labels: list[str] = list(self.file.labels)
        self.keywords: tuple[str, ...] = self.file.keywords
        try:
            if (size := self.path.stat().st_size) > MAX_MODEL_BYTES:
                raise KwspotError(f"{shown(self.path)}: {size:,} bytes, over the "
                                  f"{MAX_MODEL_BYTES >> 20} MiB a keyword model may have")
            content = self.path.read_bytes()  # our own read: a clear error for an unreadable file
            if not content:
                raise KwspotError(f"{shown(self.path)}: empty file, not a LiteRT model")
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
        self.window_samples = self.file.window_samples
        spec = self.file.features
        self.front_end = None if spec is None else LogMelFrontEnd(spec, self.window_samples, SAMPLE_RATE)
        expected = (1, self.window_samples) if spec is None else (1, spec.frames(self.window_samples), spec.mels)
        shape = tuple(int(d) for d in self._input["shape"])
        if shape != expected:
            fed = "samples" if spec is None else "log-mel frames x bands"
            raise KwspotError(f"{self.path}: model input shape {shape}; its sidecar says {expected} ({fed})")
        self._input_shape = expected
        out_shape = tuple(int(d) for d in self._output["shape"])
        if out_shape != (1, len(self.labels)):
            raise KwspotError(f"{self.path}: model gives scores of shape {out_shape}; its sidecar names "
                              f"{len(self.labels)} labels, so (1, {len(self.labels)})")
        for what, detail in (("input", self._input), ("output", self._output)):
            if np.dtype(detail["dtype"]) != np.float32:
                raise KwspotError(f"{self.path}: model {what} is {np.dtype(detail['dtype'])}, kwspot needs float32")
        self._check_scores()

    def _check_scores(self) -> None:
        """One window of silence must give probabilities (finite, 0..1): a model that gives anything else is refused."""
        try:
            self._invoke(np.zeros(self._input_shape, np.float32))
        except (ValueError, RuntimeError) as exc:
            raise KwspotError(f"{self.path}: model does not run ({str(exc).strip().splitlines()[0]})") from None

    @property
    def name(self) -> str:
        """What events call the model: its file name without ``.tflite``."""
        return self.path.stem

    @property
    def version(self) -> str:
        """When it was trained (from the sidecar), or "" if the sidecar does not say."""
        return str(self.meta.get("trained", ""))

    @property
    def thresholds(self) -> dict[str, float]:
        """Per-keyword thresholds stored with the model (may be empty)."""
        return dict(self.file.thresholds)

    def predict_batch(self, windows: np.ndarray) -> np.ndarray:
        """Probabilities (n, labels) for n unrelated raw windows (n, window_samples), features computed together."""
        windows = np.asarray(windows, dtype=np.float32).reshape(-1, self.window_samples)
        fed = windows if self.front_end is None else self.front_end.batch(windows)
        return np.stack([self._invoke(x) for x in fed]) if len(fed) else np.zeros((0, len(self.labels)), np.float32)

    def predict(self, window: np.ndarray) -> np.ndarray:
        """Probabilities for one raw 8 kHz window of ``window_samples`` floats."""
        window = np.asarray(window, dtype=np.float32).reshape(self.window_samples)
        return self._invoke(window if self.front_end is None else self.front_end(window))

    def _invoke(self, fed: np.ndarray) -> np.ndarray:
        """The network on one window's input (raw samples, or features), as float32 probabilities; KwspotError
        if they are not (NaN, or outside 0..1): a model broken on some input is refused there, not obeyed."""
        self._interpreter.set_tensor(self._input["index"], fed.reshape(self._input_shape))
        self._interpreter.invoke()
        scores = self._interpreter.get_tensor(self._output["index"])[0].astype(np.float32)
        wrong = scores[~((scores >= -SCORE_SLACK) & (scores <= 1.0 + SCORE_SLACK))]  # NaN compares False: wrong
        if wrong.size:
            raise BadScores(f"{self.path}: model gives scores that are not probabilities (e.g. {float(wrong[0]):g})")
        return scores
