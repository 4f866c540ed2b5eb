"""``kwspot predict``: classify one-second clips, one line per file."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np

from kwspot.errors import KwspotError
from kwspot.frontend import fit_window, load_audio
from kwspot.model import Model

log = logging.getLogger("kwspot")


def predict_file(model: Model, path: str | Path) -> tuple[str, float]:
    """The top label and its probability for one clip (padded or centred to 1 s)."""
    window = fit_window(load_audio(path), model.window_samples)
    probs = model.predict(window)
    top = int(np.argmax(probs))
    return model.labels[top], float(probs[top])


def run_predict(model: Model, files: list[str], as_json: bool) -> int:
    """Print one line per file; a bad file gets one error line, the rest still run, and the exit is 1."""
    failed = 0
    for name in files:
        try:
            label, score = predict_file(model, name)
        except KwspotError as exc:
            failed += 1
            log.error("%s", exc)
            continue
        if as_json:
            print(json.dumps({"file": name, "label": label, "score": round(score, 4)}), flush=True)
        else:
            print(f"{name}\t{label}\t{score:.3f}", flush=True)
    return 1 if failed else 0


def main_predict(model_path: str | None, files: list[str], as_json: bool) -> int:
    from kwspot.model import bundled_model_path

    model = Model(model_path or bundled_model_path())
    try:
        return run_predict(model, files, as_json)
    except BrokenPipeError:
        sys.stderr.close()
        return 0
