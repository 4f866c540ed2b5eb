"""CPU per audio hour, side by side: kwspot and pymicro-wakeword (one model) on the same audio, in one run.

    .venv/bin/python bench/reference.py [--model FILE] [--minutes 10] [--pin] [--repeats 3]

The audio is one stream of Speech Commands keywords with 1.5 s gaps over faint noise (8 kHz; pymicro-wakeword
gets the same stream resampled to 16 kHz with soxr, outside the timed part). Each engine processes it as fast
as it can, in 100 ms chunks as a live stream would arrive, in this process (pinned to CPU 0 with ``--pin``):
kwspot through ``Pipeline.feed`` (ring buffer, LiteRT model every 100 ms hop, detector), pymicro-wakeword
through ``MicroWakeWordFeatures.process_streaming`` and ``MicroWakeWord.process_streaming`` (its own
TFLite C library, its 10 ms feature frames, one built-in model). CPU = ``time.process_time()`` of the loop;
the engines alternate ``--repeats`` times and the median is shown. What each one detects differs (ten
commands vs one wake word), so this is a reference for the cost of listening, not a comparison of accuracy.
pymicro-wakeword: ``/work/main/.venv/bin/pip install pymicro-wakeword`` (not a kwspot dependency).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soxr
from common import add_model_argument, build_stream, describe_model, fmt, print_table, run_main, to_pcm16

from kwspot.argtypes import Number
from kwspot.detector import Detector
from kwspot.frontend import SAMPLE_RATE
from kwspot.model import Model, bundled_model_path
from kwspot.pipeline import Pipeline

CHUNK_S = 0.1


def kwspot_engine(model_path: Path, audio: np.ndarray) -> Callable[[], int]:
    model = Model(model_path)
    step = int(CHUNK_S * SAMPLE_RATE)

    def run() -> int:
        pipeline = Pipeline(model, Detector(model.labels))
        events = 0
        for start in range(0, audio.size, step):
            events += len(pipeline.feed(audio[start : start + step]))
        return events

    return run


def pymicro_engine(audio: np.ndarray) -> tuple[Callable[[], int], str]:
    from pymicro_wakeword import MicroWakeWord, MicroWakeWordFeatures
    from pymicro_wakeword import Model as Builtin

    pcm = to_pcm16(soxr.resample(audio, SAMPLE_RATE, 16000, quality="HQ"))
    step = 2 * int(CHUNK_S * 16000)
    detector = MicroWakeWord.from_builtin(Builtin.OKAY_NABU)

    def run() -> int:
        features, detections = MicroWakeWordFeatures(), 0
        detector.reset()
        for start in range(0, len(pcm), step):
            for frame in features.process_streaming(pcm[start : start + step]):
                detections += bool(detector.process_streaming(frame))
        return detections

    return run, "okay_nabu"


def timed(run: Callable[[], int]) -> tuple[float, int]:
    start = time.process_time()
    found = run()
    return time.process_time() - start, found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_argument(parser)
    parser.add_argument("--minutes", type=Number(0.1, 1440), default=10.0, help="length of the audio (default 10)")
    parser.add_argument("--repeats", type=Number(1, 100, integer=True), default=3,
                        help="alternating runs per engine; median shown")
    parser.add_argument("--pin", action="store_true", help="run on CPU 0 only")
    args = parser.parse_args()
    if args.pin:
        os.sched_setaffinity(0, {0})
    model = args.model or bundled_model_path()
    stream = build_stream(words=int(args.minutes * 60 / 2.4) + 1, gap_s=1.5)
    audio_h = stream.audio.size / SAMPLE_RATE / 3600
    engines: dict[str, Callable[[], int]] = {"kwspot": kwspot_engine(model, stream.audio)}
    notes = [f"audio: {stream.source}, {len(stream.words)} words, {audio_h * 60:.1f} min",
             f"kwspot model {describe_model(model)}"]
    try:
        engines["pymicro-wakeword"], name = pymicro_engine(stream.audio)
        notes.append(f"pymicro-wakeword: built-in model {name}, 16 kHz, its own TFLite C library")
    except ImportError as exc:
        notes.append(f"pymicro-wakeword not measured: {exc} (pip install pymicro-wakeword)")
    results: dict[str, list[tuple[float, int]]] = {name: [] for name in engines}
    for _ in range(args.repeats):
        for name, run in engines.items():
            results[name].append(timed(run))
    rows, base = [], None
    for name, runs in results.items():
        cpu = statistics.median(c for c, _ in runs)
        per_hour = cpu / audio_h
        base = base or per_hour
        rows.append([name, "CPU 0" if args.pin else "no", fmt(cpu, 2, " s"), fmt(per_hour, 1, " s"),
                     fmt(100 * per_hour / 3600, 3, " %"), fmt(per_hour / base, 2), str(runs[0][1])])
    notes.append(f"median of {args.repeats} alternating runs; 'real time' = CPU-s per audio hour / 3600 s, "
                 "the share of one core the work alone would take live (no wake-ups, no capture)")
    columns = ["engine", "pinned", "CPU", "CPU-s per audio hour", "real time", "vs kwspot", "detections"]
    print_table("CPU per audio hour, same audio, same run", columns, rows, notes)
    return 0


if __name__ == "__main__":
    run_main(main)
