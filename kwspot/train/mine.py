"""Hard-negative mining: windows of negative training material that a model takes for a command.

    python -m kwspot.train.mine --model M --data DIR --negatives DIR --phrases DIR --out hard.npy

The model runs over the TRAINING share of every source of negatives (continuous
speech by speaker, phrase recordings by file-name hash, the training split's
other words laid end to end over the training part of the noise), hop by hop
as the daemon runs it (:func:`kwspot.pipeline.stream_probabilities`). Every
window whose best command scores at least ``--min-score``, and is the highest
within half a second, is kept as int16; ``kwspot train --hard-negatives``
trains on them as ``_unknown_``. Numpy and LiteRT only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from kwspot import UNKNOWN
from kwspot.argtypes import Number
from kwspot.errors import exit_status
from kwspot.frontend import SAMPLE_RATE, WINDOW_SAMPLES, load_audio
from kwspot.model import Model
from kwspot.pipeline import stream_probabilities
from kwspot.train.data import clip_windows, load_long, phrase_files, scan, speech_files, to_float, to_int16
from kwspot.train.streams import build_stream


def peaks(scores: np.ndarray, min_score: float, spacing: int) -> list[int]:
    """Indices of scores at least ``min_score`` that are the largest within ``spacing`` on each side."""
    out = []
    for i in np.flatnonzero(scores >= min_score):
        a, b = max(0, i - spacing), min(len(scores), i + spacing + 1)
        if scores[i] >= scores[a:b].max() and (not out or i - out[-1] > spacing):
            out.append(int(i))
    return out


def mine(model: Model, audio: np.ndarray, min_score: float) -> np.ndarray:
    """The 1 s windows of ``audio`` that score as a command (int16)."""
    if len(audio) < WINDOW_SAMPLES:
        return np.zeros((0, WINDOW_SAMPLES), np.int16)
    t, p = stream_probabilities(model, audio)
    kw = [model.labels.index(k) for k in model.keywords]
    best = p[:, kw].max(axis=1)
    ends = [int(round(t[i] * SAMPLE_RATE)) for i in peaks(best, min_score, 5)]
    windows = [audio[e - WINDOW_SAMPLES : e] for e in ends if e >= WINDOW_SAMPLES]
    return to_int16(np.array(windows)).reshape(-1, WINDOW_SAMPLES)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--negatives", type=Path, action="append", default=[])
    parser.add_argument("--phrases", type=Path, action="append", default=[])
    parser.add_argument("--min-score", type=Number(0.0, 1.0), default=0.3)
    parser.add_argument("--seed", type=Number(0, 2**32 - 1, integer=True), default=0)
    parser.add_argument("--out", type=Path, required=True)
    return exit_status(run, parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    model = Model(args.model)
    data = scan(args.data, keywords=model.keywords)  # other words: those that are not the model's keywords
    rng = np.random.default_rng(args.seed)
    sources: dict[str, list[np.ndarray]] = {}
    sources["speech"] = [a for f in args.negatives for a in load_long(speech_files(f, "train"), "all")]
    sources["phrases"] = [np.concatenate([load_audio(p) for p in phrase_files(f, "train")]) for f in args.phrases]
    clips = [c for c in data.clips["train"] if c.label == UNKNOWN]
    windows = clip_windows([c.path for c in clips])
    noise = load_long(data.noise_files, "train")
    items = [(to_float(windows[i]), UNKNOWN) for i in rng.permutation(len(clips))]
    sources["other words"] = [build_stream(items, noise, rng).audio, build_stream(items, noise, rng, None).audio]
    found = []
    for name, parts in sources.items():
        got = [mine(model, a, args.min_score) for a in parts]
        n = sum(len(g) for g in got)
        seconds = sum(len(a) for a in parts) / SAMPLE_RATE
        print(f"{name}: {n} windows from {seconds / 60:.1f} min")
        found += got
    out = np.concatenate(found) if found else np.zeros((0, WINDOW_SAMPLES), np.int16)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.out, out)
    print(f"wrote {args.out}: {len(out)} windows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
