"""``kwspot predict``: classify one-second clips, one line per file."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import soundfile

from kwspot.errors import KwspotError
from kwspot.frontend import (
    StreamResampler,
    block_frames,
    count_nonfinite,
    fit_window,
    open_audio,
    refuse_far_outside,
    to_mono,
    unreadable,
)
from kwspot.model import Model
from kwspot.paths import shown

BLOCK_S = 1.0  # read long files a second at a time: memory stays bounded whatever their length


def loudest_window(path: str | Path, length: int) -> np.ndarray:
    """The clip as ``fit_window`` cuts it (padded, or the loudest ``length`` samples), read in blocks.

    NaN or infinite samples, or samples far outside [-1, 1], are an error: such a clip has no meaningful answer.
    """
    with open_audio(path) as audio:
        resampler = StreamResampler(audio.samplerate)
        block = block_frames(audio.samplerate, audio.channels, BLOCK_S)
        tail = np.zeros(0, dtype=np.float32)  # the last length-1 samples seen, for windows across blocks
        best, best_energy = tail, -1.0
        while True:
            try:
                frames = audio.read(block, dtype="float32", always_2d=True)
            except (soundfile.LibsndfileError, RuntimeError, ValueError) as exc:
                raise unreadable(path, exc) from None
            bad = count_nonfinite(frames)
            if bad:
                raise KwspotError(f"{shown(path)}: {bad} samples are NaN or infinite")
            refuse_far_outside(path, frames)
            samples = resampler.process(to_mono(frames), last=len(frames) < block)
            window = np.concatenate((tail, samples))
            if window.size >= length:
                energy = np.concatenate(([0.0], np.cumsum(window.astype(np.float64) ** 2)))
                sums = energy[length:] - energy[:-length]
                start = int(np.argmax(sums))
                if sums[start] > best_energy:
                    best, best_energy = window[start : start + length].copy(), float(sums[start])
                tail = window[window.size - length + 1 :]
            else:
                tail = window
            if len(frames) < block:
                break
    return best if best_energy >= 0 else fit_window(tail, length)


def predict_file(model: Model, path: str | Path) -> tuple[str, float]:
    """The top label and its probability for one clip (padded or centred to 1 s)."""
    probs = model.predict(loudest_window(path, model.window_samples))
    top = int(np.argmax(probs))
    return model.labels[top], float(probs[top])


def run_predict(model: Model, files: list[str], as_json: bool) -> int:
    """Print one line per file; a bad file gets one error line, the rest still run, and the exit is 2."""
    failed = 0
    for name in files:
        try:
            label, score = predict_file(model, name)
        except KwspotError as exc:
            failed += 1
            print(f"kwspot: error: {exc}", file=sys.stderr, flush=True)
            continue
        if as_json:
            print(json_text({"file": name, "label": label, "score": round(score, 4)}), flush=True)
        else:
            print(f"{shown(name)}\t{label}\t{score:.3f}", flush=True)
    return 2 if failed else 0


def finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float (also inside dicts, lists, numpy scalars) made None."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [finite(v) for v in value]
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def json_text(value: Any, **kwargs: Any) -> str:
    """Strict JSON (as JavaScript or Go read it): NaN and infinities become null."""
    return json.dumps(finite(value), allow_nan=False, **kwargs)


def main_predict(model_path: str | None, files: list[str], as_json: bool) -> int:
    from kwspot.model import bundled_model_path

    model = Model(model_path or bundled_model_path())
    try:
        return run_predict(model, files, as_json)
    except BrokenPipeError:
        sys.stderr.close()
        return 0
