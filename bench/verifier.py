"""The verifier on the first stage's events: hits kept and false accepts removed, per material, with counts.

    nice .venv/bin/python bench/verifier.py --split validation [--save]   # --save: thresholds, validation only
    nice .venv/bin/python bench/verifier.py --split testing

Materials of the split: the listed clips as a command stream at SNR 20/10/5 dB and clean (other words
included), the split's other words once each over noise, its share of ``wake_phrases``, and the
``librispeech_negatives`` speakers of the split as one continuous stream. The first stage is the model
with its sidecar thresholds (``Pipeline``'s own probabilities, replayed through the daemon's detector);
each of its events is checked once by the verifier on the audio the daemon's second ring would hold.
First-stage probabilities are cached on disk, so a rerun only runs the verifier (one check per event).
``--save`` picks, per keyword, the highest verifier threshold that keeps all but ``--max-hit-loss`` of
that keyword's validation hits, and writes it into the model's sidecar.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import numpy as np
from common import SPEECH_COMMANDS, print_table, run_main

from kwspot import UNKNOWN
from kwspot.argtypes import Number
from kwspot.config import DEFAULTS
from kwspot.detector import DetectorSettings
from kwspot.frontend import load_audio
from kwspot.model import Model, bundled_model_path
from kwspot.modelfile import save_verifier
from kwspot.pipeline import hop_levels, stream_probabilities
from kwspot.train.data import cache_dir, load_long, scan, speech_files
from kwspot.train.scoring import pick_thresholds, replay, score, sweep
from kwspot.train.streams import Stream, StreamSpec, Word, build_stream, split_streams
from kwspot.train.verifier_data import wake_phrase_files
from kwspot.verifier import SignalVerifier, Verifier

GRID = tuple(round(x, 2) for x in np.arange(0.0, 1.0, 0.05))


def materials(split: str, data_dir: Path, keywords: tuple[str, ...]) -> dict[str, Stream]:
    data = scan(data_dir, keywords=keywords)
    shared = data_dir.parent
    out = {}
    out["commands 20/10/5 dB"] = split_streams(data, split, StreamSpec(), np.random.default_rng(0))[0]
    out["commands clean"] = split_streams(data, split, StreamSpec(snrs=None), np.random.default_rng(1))[0]
    out["other words 20/10/5 dB"] = split_streams(data, split, StreamSpec(words="unknown"),
                                                  np.random.default_rng(2))[0]
    wake = wake_phrase_files(shared / "wake_phrases", split)
    if wake:
        noise = load_long(data.noise_files, "eval")
        out["wake phrases"] = build_stream([(load_audio(f), UNKNOWN) for f in wake], noise,
                                           np.random.default_rng(3), snrs=None)
    speech = shared / "librispeech_negatives"
    if speech.is_dir():
        out["read speech"] = Stream(np.concatenate(load_long(speech_files(speech, split), "all")))
    return out


def first_stage(model: Model, name: str, stream: Stream) -> tuple[np.ndarray, np.ndarray]:
    """Pipeline probabilities of a stream, cached by model file and audio."""
    h = hashlib.sha1(model.path.read_bytes())
    h.update(np.ascontiguousarray(stream.audio).tobytes())
    target = cache_dir() / f"bench-verifier-probs-{h.hexdigest()[:16]}.npz"
    if target.is_file():
        with np.load(target) as f:
            return f["t"], f["p"]
    t0 = time.time()
    t, p = stream_probabilities(model, stream.audio)
    print(f"{name}: first stage over {stream.seconds / 60:.1f} min in {time.time() - t0:.0f} s", flush=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    np.savez(target, t=t, p=p)
    return t, p


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split", default="validation", choices=("validation", "testing"))
    parser.add_argument("--data", type=Path, default=SPEECH_COMMANDS)
    parser.add_argument("--model", type=Path, default=None, help="model .tflite (default: the bundled model)")
    parser.add_argument("--save", action="store_true", help="write per-keyword verifier thresholds (validation)")
    parser.add_argument("--max-hit-loss", type=Number(0, 1), default=0.02,
                        help="share of a keyword's hits --save may lose")
    parser.add_argument("--min-pause-ms", type=Number(0, 10000), default=None,
                        help="isolated-command gate of the first stage (default: config.yaml's)")
    args = parser.parse_args()
    if args.save and args.split != "validation":
        parser.error("--save picks thresholds on the validation split only")
    model = Model(args.model or bundled_model_path())
    spec = model.file.verifier
    if spec is None:
        parser.error(f"{model.file.path}: names no verifier (train one: python -m kwspot.train.verifier)")
    verifier = Verifier(spec.head, spec.thresholds, spec.threshold)
    pause = DEFAULTS["detector"]["min_pause_ms"] if args.min_pause_ms is None else args.min_pause_ms
    base = DetectorSettings(thresholds=model.thresholds, min_pause_ms=pause)
    kws = model.keywords
    cands: dict[str, list[tuple[str, float, float]]] = {}  # material -> (keyword, t, verifier score)
    streams = materials(args.split, args.data, kws)
    check_ms: list[float] = []
    probs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    signals: dict[str, SignalVerifier] = {}
    levels: dict[str, np.ndarray] = {}
    for name, stream in streams.items():
        t, p = probs[name] = first_stage(model, name, stream)
        levels[name] = hop_levels(stream.audio)[: len(t)]
        sv = signals[name] = SignalVerifier(verifier, stream.audio)
        rows = []
        for kw, te in replay(model.labels, t, p, base, levels=levels[name]):
            t0 = time.perf_counter()
            s = sv.score(kw, te)
            check_ms.append((time.perf_counter() - t0) * 1000)
            rows.append((kw, te, s))
        cands[name] = rows

    def result(name: str, thr: dict[str, float]) -> dict:
        stream = streams[name]
        events = [(kw, te) for kw, te, s in cands[name] if s >= thr.get(kw, 0.0)]
        return score(stream.words, events, stream.seconds, kws)

    none = dict.fromkeys(kws, 0.0)
    if args.save:
        chosen = {}
        for kw in kws:
            def hits(th: float, kw: str = kw) -> int:
                return sum(result(n, {**none, kw: th})["per_keyword"][kw]["hits"] for n in streams)
            floor = hits(0.0) * (1 - args.max_hit_loss)
            chosen[kw] = float(max([th for th in GRID if hits(th) >= floor] or [0.0]))
        save_verifier(model.path, spec.head.name, spec.threshold, chosen)
        verifier.thresholds = chosen
        print(f"saved verifier thresholds in {model.file.path}: {chosen}")
    thr = {kw: verifier.threshold_of(kw) for kw in kws}
    table = []
    totals = np.zeros(4, int)
    seconds = 0.0
    for name, stream in streams.items():
        a, b = result(name, none), result(name, thr)
        seconds += stream.seconds
        totals += (a["hits"], b["hits"], a["false_accepts"], b["false_accepts"])
        h = stream.seconds / 3600
        table.append([name, f"{stream.seconds / 60:.1f}", str(a["keywords"]), f"{a['hits']} -> {b['hits']}",
                      f"{a['false_accepts']} -> {b['false_accepts']}",
                      f"{a['false_accepts'] / h:.1f} -> {b['false_accepts'] / h:.1f}"])
    table.append(["all", f"{seconds / 60:.1f}", "", f"{totals[0]} -> {totals[1]}", f"{totals[2]} -> {totals[3]}",
                  f"{totals[2] / (seconds / 3600):.1f} -> {totals[3] / (seconds / 3600):.1f}"])
    n_checks = sum(len(c) for c in cands.values())
    print_table(f"verifier on the first stage's events, {args.split} material ({model.path.name})",
                ["material", "min", "keywords", "hits", "false accepts", "FA/h"], table,
                [f"verifier thresholds: {thr}",
                 f"checks: {n_checks} in {seconds / 3600:.2f} h = {n_checks / (seconds / 3600):.0f} an hour; "
                 f"{np.median(check_ms):.1f} ms a check (median, 1 thread) -> "
                 f"{n_checks / (seconds / 3600) * np.median(check_ms) / 36000:.3f} ms per 100 ms hop on average"])
    sweep_rows = []
    for th in GRID[::2]:
        r = [result(n, dict.fromkeys(kws, th)) for n in streams]
        sweep_rows.append([f"{th:.1f}", str(sum(x["hits"] for x in r)), str(sum(x["false_accepts"] for x in r))]
                     + [f"{x['hits']}/{x['false_accepts']}" for x in r])
    print_table("one verifier threshold for all keywords: hits / false accepts", ["threshold", "hits", "FA",
                *streams], sweep_rows)
    print_table("the same false-accept budget spent by first-stage thresholds alone or with the verifier "
                "(first-stage thresholds picked on this material)", ["first stage", "verifier", "FA budget",
                "hits", "false accepts"], budget_rows(model, streams, probs, levels, signals, base, totals))


def budget_rows(model: Model, streams: dict[str, Stream], probs: dict, levels: dict[str, np.ndarray],
                signals: dict[str, SignalVerifier], base: DetectorSettings, totals: np.ndarray) -> list[list[str]]:
    """All materials end to end (10 s apart): first-stage thresholds picked for the false accepts of the first
    stage alone and of the first stage with the verifier, each without and with the verifier."""
    times, rows, hop_db, words, spans, off = [], [], [], [], [], 0.0
    for name, stream in streams.items():
        t, p = probs[name]
        times.append(t + off)
        rows.append(p)
        hop_db.append(levels[name])
        words += [Word(w.label, w.start + off, w.end + off, w.snr_db) for w in stream.words]
        spans.append((off, off + stream.seconds, signals[name]))
        off += stream.seconds + 10.0
    t_all, p_all, lv_all = np.concatenate(times), np.concatenate(rows), np.concatenate(hop_db)
    seconds = sum(s.seconds for s in streams.values())

    def verdict(kw: str, t: float) -> bool:
        start, _, sv = next(s for s in spans if s[0] <= t <= s[1])
        return sv.accepts(kw, t - start)

    out = []
    for budget, use in ((b, v) for b in sorted({int(totals[3]), int(totals[2])}) for v in (None, verdict)):
        grid = sweep(model.labels, t_all, p_all, words, seconds, base, verdict=use, levels=lv_all)
        chosen = pick_thresholds(grid, budget / (seconds / 3600))
        settings = DetectorSettings(thresholds=chosen, min_pause_ms=base.min_pause_ms)
        r = score(words, replay(model.labels, t_all, p_all, settings, use, levels=lv_all), seconds, model.keywords)
        out.append(["re-picked", "on" if use else "off", str(budget), str(r["hits"]), str(r["false_accepts"])])
    return out


if __name__ == "__main__":
    run_main(main)
