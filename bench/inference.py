"""Per-window inference time of each model (LiteRT, 1 thread), and the whole per-hop cost of the pipeline.

    .venv/bin/python bench/inference.py [--model FILE ...] [--windows 2000] [--pin]

Columns: ``invoke`` is the interpreter alone; ``predict`` adds kwspot's Python wrapper (the numpy log-mel
front end of a model whose sidecar names one, reusing the previous hop's frames as in the daemon; set_tensor,
invoke, get_tensor); ``per hop`` is ``Pipeline.feed`` for one 100 ms hop (ring buffer, level, predict, detector), i.e.
what the daemon spends per hop before sinks. Windows are real speech-and-noise windows, not zeros.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from common import (
    Unavailable,
    add_model_argument,
    build_stream,
    check_model,
    default_models,
    describe_model,
    fmt,
    percentile,
    print_table,
    run_main,
    sidecar,
)
from common import median as med

from kwspot.argtypes import Number
from kwspot.detector import Detector
from kwspot.frontend import SAMPLE_RATE
from kwspot.model import Model
from kwspot.pipeline import Pipeline


def timed(fn: Callable[[int], object], n: int) -> list[float]:
    """Milliseconds of each of ``n`` calls of ``fn(i)``."""
    out = []
    for i in range(n):
        start = time.perf_counter_ns()
        fn(i)
        out.append((time.perf_counter_ns() - start) / 1e6)
    return out


def measure(path: Path, windows: int, warmup: int, audio: np.ndarray) -> dict[str, list[float]]:
    model = Model(check_model(path), threads=1)
    hop = SAMPLE_RATE // 10
    starts = np.arange(0, audio.size - model.window_samples, hop)
    frames = [audio[s : s + model.window_samples] for s in starts[: max(windows, warmup)]]
    interp = model._interpreter  # the bare interpreter, to separate LiteRT from the Python wrapper
    index = model._input["index"]
    front_end = model.front_end
    inputs = [(w if front_end is None else front_end(w)).reshape(model._input_shape) for w in frames]

    for i in range(warmup):
        model.predict(frames[i % len(frames)])

    def invoke(i: int) -> None:
        interp.set_tensor(index, inputs[i % len(inputs)])
        start = time.perf_counter_ns()
        interp.invoke()
        invoke_ns.append(time.perf_counter_ns() - start)

    invoke_ns: list[int] = []
    timed(invoke, windows)
    predict = timed(lambda i: model.predict(frames[i % len(frames)]), windows)
    pipeline = Pipeline(model, Detector(model.labels))
    pipeline.feed(audio[: model.window_samples])  # fill the ring first
    hops = [audio[s : s + hop] for s in range(model.window_samples, audio.size - hop, hop)]
    per_hop = timed(lambda i: pipeline.feed(hops[i % len(hops)]), windows)
    return {"invoke": [ns / 1e6 for ns in invoke_ns], "predict": predict, "hop": per_hop}


def scaled(value: object, unit: float, suffix: str) -> str:
    """A sidecar number (or a dict of them with a ``total``) in ``unit``s, else a dash."""
    if isinstance(value, dict):
        value = value.get("total", sum(v for v in value.values() if isinstance(v, (int, float))))
    return f"{float(value) / unit:.2f} {suffix}" if isinstance(value, (int, float)) else "—"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_argument(parser, many=True)
    parser.add_argument("--windows", type=Number(1, 10**7, integer=True), default=2000,
                        help="timed windows per model (default 2000)")
    parser.add_argument("--warmup", type=Number(0, 10**7, integer=True), default=200,
                        help="untimed windows first (default 200)")
    parser.add_argument("--pin", action="store_true", help="run on CPU 0 only (sched_setaffinity)")
    args = parser.parse_args()
    if args.pin:
        os.sched_setaffinity(0, {0})
    models = args.model or default_models()
    if not args.model and not models[0].is_file():
        models.append(models.pop(0))  # keep the row (it says why it is empty) but after the ones that run
    try:
        stream = build_stream(words=30, gap_s=0.5)
        audio, source = stream.audio, stream.source
    except Unavailable:
        audio = 0.05 * np.random.default_rng(0).standard_normal(60 * SAMPLE_RATE).astype(np.float32)
        source = "white noise (no speech available)"
    rows, notes = [], [f"windows: {source}; {args.windows} timed after {args.warmup} warm-up; 1 thread"
                       + ("; pinned to CPU 0" if args.pin else "")]
    for path in models:
        try:
            r = measure(path, args.windows, args.warmup, audio)
        except Unavailable as exc:
            rows.append([path.name, *["—"] * 9])
            notes.append(f"{path.name} skipped: {exc}")
            continue
        meta = sidecar(path)
        notes.append(f"model {describe_model(path)}")
        rows.append([
            path.name,
            fmt(med(r["invoke"]), 3), fmt(percentile(r["invoke"], 90), 3),
            fmt(med(r["predict"]), 3), fmt(percentile(r["predict"], 90), 3),
            fmt(med(r["hop"]), 3), fmt(percentile(r["hop"], 90), 3),
            scaled(meta.get("params"), 1e3, "k"), scaled(meta.get("macs"), 1e6, "M"),
            f"{path.stat().st_size / 1024:.0f} KiB",
        ])
    columns = ["model", "invoke med ms", "p90", "predict med ms", "p90", "per hop med ms", "p90",
               "params", "MACs", "file"]
    print_table("Inference time per 1 s window (LiteRT, 1 thread)", columns, rows, notes)
    return 0


if __name__ == "__main__":
    run_main(main)
