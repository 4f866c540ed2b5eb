"""Export a trained Keras model to LiteRT (float32, or dynamic-range when it keeps accuracy) with its sidecar.

A model with the in-graph log-mel layer is exported without it: the ``.tflite`` takes the normalised
features and the sidecar's ``features`` tells the runtime how to compute them (:mod:`kwspot.features`),
which lets the daemon reuse the frames of the previous hop.
"""

from __future__ import annotations

import contextlib
import io
import time
from pathlib import Path
from typing import Any

import numpy as np

from kwspot import modelfile
from kwspot.errors import KwspotError
from kwspot.features import LogMelFrontEnd
from kwspot.frontend import SAMPLE_RATE, WINDOW_SAMPLES
from kwspot.paths import shown, write_atomic
from kwspot.train import require_tensorflow
from kwspot.train.models import feature_network

QUANT_TOLERANCE = 0.003  # keep the quantised model when it loses at most 0.3 points of accuracy


def stem_file(out: Path, suffix: str) -> Path:
    """``out`` + ``suffix``: the stem is kept whole (``base.v2`` -> ``base.v2.tflite``, not ``base.tflite``)."""
    return out.with_name(out.name + suffix)


def convert(model: Any, quantise: bool) -> bytes:
    """LiteRT flatbuffer of ``model``; ``quantise`` = dynamic-range int8 weights (front end stays float)."""
    tf = require_tensorflow()
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantise:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    with contextlib.redirect_stdout(io.StringIO()):  # the converter prints its whole signature
        return converter.convert()


def litert_predict(flatbuffer: bytes, x: np.ndarray) -> np.ndarray:
    """Run a flatbuffer over (n, samples) windows with the LiteRT interpreter."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=flatbuffer, num_threads=1)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    rows = []
    for window in x:
        interp.set_tensor(inp["index"], window[None].astype(np.float32))
        interp.invoke()
        rows.append(interp.get_tensor(out["index"])[0].copy())
    return np.array(rows, dtype=np.float32)


def ms_per_window(path: Path, repeats: int = 300) -> float:
    """Median LiteRT inference time of one window, single thread, through the daemon's Model."""
    from kwspot.model import Model

    model = Model(path, threads=1)
    window = np.random.default_rng(0).normal(0, 0.1, WINDOW_SAMPLES).astype(np.float32)
    for _ in range(20):
        model.predict(window)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.predict(window)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)


def export(model: Any, out: Path, x_val: np.ndarray, y_val: np.ndarray, meta: dict[str, Any]) -> dict[str, Any]:
    """Write ``out``.tflite and ``out``.json (``meta`` holds the ``labels``); returns what was chosen and why."""
    split = feature_network(model)
    if split is not None:
        model, spec = split
        front_end = LogMelFrontEnd(spec, WINDOW_SAMPLES, SAMPLE_RATE)
        x_val = np.stack([front_end(window) for window in x_val])
        meta["features"] = spec.as_json()
    plain = convert(model, quantise=False)
    acc_plain = float(np.mean(np.argmax(litert_predict(plain, x_val), 1) == y_val))
    chosen, kind, acc_quant = plain, "float32", None
    try:
        quant = convert(model, quantise=True)
        acc_quant = float(np.mean(np.argmax(litert_predict(quant, x_val), 1) == y_val))
        if acc_quant >= acc_plain - QUANT_TOLERANCE and len(quant) < len(plain):
            chosen, kind = quant, "dynamic-range int8 weights" + (", numpy log-mel front end" if split else "")
    except Exception as exc:  # noqa: BLE001 - quantisation is optional
        meta.setdefault("notes", []).append(f"quantisation failed: {exc}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tflite = stem_file(out, ".tflite")
    try:
        write_atomic(tflite, chosen)  # a full disk leaves the previous model whole
    except OSError as exc:
        raise KwspotError(f"{shown(tflite)}: cannot write the model ({exc.strerror or exc})") from None
    info = {
        "format": kind,
        "bytes": len(chosen),
        "val_accuracy_float32": round(acc_plain, 4),
        "val_accuracy_quantised": None if acc_quant is None else round(acc_quant, 4),
    }
    sidecar = {"sample_rate": SAMPLE_RATE, "window_samples": WINDOW_SAMPLES, "thresholds": {}, **meta,
               "export": info}
    modelfile.write(tflite, sidecar)
    info["ms_per_window"] = round(ms_per_window(tflite), 3)
    sidecar["export"] = info
    modelfile.write(tflite, sidecar)
    return info
