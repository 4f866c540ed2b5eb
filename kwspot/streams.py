"""Stream evaluation: long generated streams with ground truth, scored through the daemon's own code.

A stream is listed clips laid end to end with random gaps over background
noise (the evaluation part of each noise recording, which training never
sees), each word at a chosen SNR; optionally followed by continuous speech
that holds none of the keywords. The model runs over it hop by hop
(:func:`kwspot.pipeline.stream_probabilities`, the same ring buffer and
model call as ``listen``) and the probabilities are replayed through
:class:`kwspot.detector.Detector` (the same detector) for every threshold of
a sweep.

Scoring: keyword ``k`` spoken over [s, e] is *hit* by the first event for
``k`` with s < t <= e + 1 s + ``SLACK_S`` (t: end of the window that fired);
every other event is a false accept: a duplicate, a wrong keyword, an event
on another word, or one outside any word.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from kwspot import KEYWORDS, UNKNOWN
from kwspot.detector import Detector, DetectorSettings
from kwspot.errors import KwspotError
from kwspot.frontend import SAMPLE_RATE, WINDOW_SAMPLES

SLACK_S = 0.5
CLIP_SECONDS = 2.95  # stream time per clip: a gap of 1.5-3.5 s plus the spoken part
_GRID = np.concatenate((np.arange(0.30, 0.90, 0.05), np.arange(0.90, 0.995, 0.01)))
SWEEP = tuple(sorted({round(float(x), 2) for x in _GRID}))


@dataclass
class Word:
    label: str  # a keyword or _unknown_
    start: float  # seconds, spoken part
    end: float
    snr_db: float | None = None


@dataclass
class Stream:
    audio: np.ndarray
    words: list[Word] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE


def build_stream(
    clips: list[tuple[np.ndarray, str]],
    noise: list[np.ndarray],
    rng: np.random.Generator,
    snrs: tuple[float, ...] | None = (20.0, 10.0, 5.0),
    gap_s: tuple[float, float] = (1.5, 3.5),
    noise_dbfs: float = -35.0,
    speech: list[np.ndarray] | None = None,
) -> Stream:
    """Clips (1 s windows with their label) in the given order, gaps between spoken parts drawn from ``gap_s``.

    ``snrs=None``: no added noise (a clean stream). ``speech``: continuous speech appended after the words.
    """
    from kwspot.train.data import word_bounds

    pieces: list[np.ndarray] = [np.zeros(int(SAMPLE_RATE * gap_s[0]), np.float32)]
    words: list[Word] = []
    spans: list[tuple[int, int]] = []  # each clip's samples, for its gain
    pos, prev_tail = len(pieces[0]), 0
    for window, label in clips:
        s, e = word_bounds(window)
        lead = max(0, int(rng.uniform(*gap_s) * SAMPLE_RATE) - prev_tail - s) if words else 0
        pieces.append(np.zeros(lead, np.float32))
        pos += lead
        snr = None if snrs is None else float(rng.choice(snrs))
        words.append(Word(label, (pos + s) / SAMPLE_RATE, (pos + e) / SAMPLE_RATE, snr))
        spans.append((pos, pos + len(window)))
        pieces.append(np.asarray(window, np.float32))
        pos += len(window)
        prev_tail = len(window) - e
    pieces.append(np.zeros(int(SAMPLE_RATE * gap_s[0]), np.float32))
    for part in speech or []:
        pieces += [np.asarray(part, np.float32), np.zeros(SAMPLE_RATE // 2, np.float32)]
    audio = np.concatenate(pieces)
    if snrs is not None and noise:
        bed = noise_bed(noise, len(audio), rng) * _db(noise_dbfs)
        gains = np.ones(len(audio), np.float32)
        for w, (a, b) in zip(words, spans, strict=True):
            x = audio[int(w.start * SAMPLE_RATE) : int(w.end * SAMPLE_RATE)].astype(np.float64)
            rms = float(np.sqrt(np.mean(x**2))) if len(x) else 0.0
            gains[a:b] = _db(noise_dbfs + (w.snr_db or 0.0)) / max(rms, 1e-6)
        audio = np.clip(audio * _smooth(gains) + bed, -1.0, 1.0).astype(np.float32)
    return Stream(audio, words)


def _smooth(gains: np.ndarray) -> np.ndarray:
    """Gain curve without clicks: 10 ms moving average."""
    k = SAMPLE_RATE // 100
    return np.convolve(gains, np.ones(k, np.float32) / k, mode="same").astype(np.float32)


def noise_bed(noise: list[np.ndarray], n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` samples of noise pieced from random stretches of the recordings, each at RMS 1."""
    out = np.zeros(n, np.float32)
    pos = 0
    while pos < n:
        src = noise[rng.integers(0, len(noise))]
        length = min(n - pos, int(rng.uniform(5, 20) * SAMPLE_RATE), len(src))
        start = rng.integers(0, len(src) - length + 1)
        piece = src[start : start + length].astype(np.float32)
        out[pos : pos + length] = piece / max(float(np.sqrt(np.mean(piece.astype(np.float64) ** 2))), 1e-6)
        pos += length
    return out


def _db(db: float) -> float:
    return float(10.0 ** (db / 20.0))


def replay(
    labels: list[str], times: np.ndarray, probs: np.ndarray, settings: DetectorSettings,
    levels: np.ndarray | None = None,
) -> list[tuple[str, float]]:
    """Events (keyword, t) that ``listen``'s detector gives for these probabilities (and hop levels, for the gate)."""
    det = Detector(labels, settings)
    out = []
    for i, (t, p) in enumerate(zip(times, probs, strict=True)):
        d = det.update(p, float(t), None if levels is None else float(levels[i]))
        if d is not None:
            out.append((d.keyword, d.t))
    return out


def score(words: list[Word], events: list[tuple[str, float]], seconds: float) -> dict[str, Any]:
    """Hits, misses and false accepts (by kind and by keyword) of events against ground truth."""
    keywords = [w for w in words if w.label in KEYWORDS]
    hit_t: dict[int, float] = {}
    fa_kinds = {"duplicate": 0, "wrong_keyword": 0, "other_word": 0, "outside": 0}
    fa_by_kw = dict.fromkeys(KEYWORDS, 0)
    starts = np.array([w.start for w in words])
    for kw, t in events:
        i = int(np.searchsorted(starts, t, side="left")) - 1  # the last word starting before t
        w = words[i] if i >= 0 else None
        inside = w is not None and w.start < t <= w.end + 1.0 + SLACK_S
        if inside and w.label == kw and i not in hit_t:
            hit_t[i] = t - w.end
            continue
        kind = "outside" if not inside else "other_word" if w.label == UNKNOWN else (
            "duplicate" if w.label == kw else "wrong_keyword")
        fa_kinds[kind] += 1
        fa_by_kw[kw] += 1
    n_kw = len(keywords)
    per_kw = {k: {"n": sum(w.label == k for w in words),
                  "hits": sum(1 for i in hit_t if words[i].label == k), "fa": fa_by_kw[k]} for k in KEYWORDS}
    fa = sum(fa_kinds.values())
    latencies = np.array(list(hit_t.values()))
    return {
        "seconds": seconds,
        "keywords": n_kw,
        "other_words": len(words) - n_kw,
        "hits": len(hit_t),
        "recall": len(hit_t) / n_kw if n_kw else float("nan"),
        "false_accepts": fa,
        "fa_per_hour": fa / (seconds / 3600.0),
        "fa_per_keyword": fa / n_kw if n_kw else float("nan"),
        "fa_kinds": fa_kinds,
        "latency_median_s": float(np.median(latencies)) if len(latencies) else None,
        "latency_p90_s": float(np.percentile(latencies, 90)) if len(latencies) else None,
        "per_keyword": per_kw,
    }


def sweep(labels: list[str], times: np.ndarray, probs: np.ndarray, words: list[Word], seconds: float,
          base: DetectorSettings, grid: tuple[float, ...] = SWEEP,
          levels: np.ndarray | None = None) -> list[dict[str, Any]]:
    """Score one uniform threshold per grid point: the DET curve."""
    rows = []
    for th in grid:
        settings = replace(base, threshold=float(th), thresholds=None)
        rows.append({"threshold": float(th), **score(words, replay(labels, times, probs, settings, levels), seconds)})
    return rows


def pick_thresholds(rows: list[dict[str, Any]], target_fa_per_hour: float, floor: float = 0.5) -> dict[str, float]:
    """Per-keyword thresholds from a sweep: most hits for at most ``target_fa_per_hour`` false accepts in all.

    Greedy: every keyword starts at the highest swept threshold; repeatedly
    lower the one whose next step buys the most hits per false accept while the
    total stays in budget. Ties go to the lowest threshold with the same
    counts. Never below ``floor``.
    """
    grid = sorted((r for r in rows if r["threshold"] >= floor), key=lambda r: -r["threshold"])
    budget = target_fa_per_hour * grid[0]["seconds"] / 3600.0
    hits = {k: [r["per_keyword"][k]["hits"] for r in grid] for k in KEYWORDS}
    fas = {k: [r["per_keyword"][k]["fa"] for r in grid] for k in KEYWORDS}
    state = dict.fromkeys(KEYWORDS, 0)
    total = sum(fas[k][0] for k in KEYWORDS)
    while True:
        best: tuple[float, int, str, int] | None = None
        for k in KEYWORDS:
            i = state[k]
            for j in range(i + 1, len(grid)):
                gain, cost = hits[k][j] - hits[k][i], fas[k][j] - fas[k][i]
                if gain <= 0 or total + cost > budget:
                    continue
                rank = (gain / max(cost, 0.5), gain, k, j)
                if best is None or rank[:2] > best[:2]:
                    best = rank
        if best is None:
            break
        _, _, k, j = best
        total += fas[k][j] - fas[k][state[k]]
        state[k] = j
    out = {}
    for k in KEYWORDS:
        j = state[k]
        while j + 1 < len(grid) and (hits[k][j + 1], fas[k][j + 1]) == (hits[k][j], fas[k][j]):
            j += 1
        out[k] = float(grid[j]["threshold"])
    return out


def add_stream_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("stream mode")
    g.add_argument("--stream", action="store_true", help="score detection on a generated stream of the listed clips")
    g.add_argument("--snr", default="20,10,5", help="SNRs in dB for the words, comma separated, or 'clean'")
    g.add_argument("--words", default="all", choices=("all", "keywords", "unknown"), help="which listed clips to speak")
    g.add_argument("--minutes", type=float, default=0.0, help="repeat the clips until the stream is this long")
    g.add_argument("--other-words-minutes", type=float, default=0.0,
                   help="append this many minutes of the split's other (non-keyword) words, repeated")
    g.add_argument("--speech", action="append", type=Path, default=[], metavar="DIR",
                   help="continuous speech with none of the keywords (its split's files): false accepts on speech")
    g.add_argument("--threshold", type=float, default=None, help="one threshold for all keywords (default: model's)")
    g.add_argument("--target-fa-per-hour", type=float, default=None,
                   help="choose per-keyword thresholds meeting this false-accept rate (all audio of the stream)")
    g.add_argument("--save-thresholds", action="store_true",
                   help="write the chosen thresholds into the model's sidecar")
    g.add_argument("--seed", type=int, default=0, help="stream seed")
    g.add_argument("--hop-ms", type=float, default=100.0)
    g.add_argument("--smoothing-hops", type=int, default=DetectorSettings.smoothing_hops)
    g.add_argument("--min-consecutive", type=int, default=DetectorSettings.min_consecutive)
    g.add_argument("--refractory-s", type=float, default=DetectorSettings.refractory_s)
    g.add_argument("--min-pause-ms", type=float, default=DetectorSettings.min_pause_ms,
                   help="isolated-command gate: quiet this long before and after a command (0: off)")
    g.add_argument("--phrases", action="append", type=Path, default=[], metavar="DIR",
                   help="folder of folders of short recordings without keywords (the split's share, by file-name "
                        "hash), appended to the continuous speech")


def stream_for(data: Any, split: str, args: argparse.Namespace, rng: np.random.Generator) -> tuple[Stream, Stream]:
    """The word stream and the speech stream (may be empty) of a split, as the options ask."""
    from kwspot.train.data import clip_windows, load_long, speech_files, to_float

    clips = [c for c in data.clips[split] if c.label != "_silence_"]
    if args.words == "keywords":
        clips = [c for c in clips if c.label in KEYWORDS]
    elif args.words == "unknown":
        clips = [c for c in clips if c.label == UNKNOWN]
    if not clips:
        raise KwspotError(f"{data.root}: no {args.words} clips in the {split} split for a stream")
    windows = clip_windows([c.path for c in clips], args.cache)
    order = list(rng.permutation(len(clips)))
    while args.minutes and len(order) * CLIP_SECONDS < args.minutes * 60:
        order += list(rng.permutation(len(clips)))
    others = [i for i, c in enumerate(clips) if c.label == UNKNOWN]
    extra: list[int] = []
    while others and len(extra) * CLIP_SECONDS < getattr(args, "other_words_minutes", 0.0) * 60:
        extra += [others[i] for i in rng.permutation(len(others))]
    items = [(to_float(windows[i]), clips[i].label) for i in order + extra]
    noise = load_long(data.noise_files, "eval")
    snrs = None if args.snr.strip().lower() == "clean" else tuple(float(s) for s in args.snr.split(","))
    words = build_stream(items, noise, rng, snrs)
    speech_parts: list[np.ndarray] = []
    for folder in args.speech:
        speech_parts += load_long(speech_files(folder, split), "all")
    for folder in getattr(args, "phrases", []):
        from kwspot.train.data import phrase_files

        for part in load_long(phrase_files(folder, split), "all"):
            speech_parts += [part, np.zeros(SAMPLE_RATE // 2, np.float32)]
    speech = Stream(np.concatenate(speech_parts) if speech_parts else np.zeros(0, np.float32))
    return words, speech


def run_stream(model: Any, data: Any, split: str, args: argparse.Namespace) -> int:
    from kwspot.pipeline import hop_levels, stream_probabilities

    console = Console(stderr=args.json)
    rng = np.random.default_rng(args.seed)
    words, speech = stream_for(data, split, args, rng)
    hop = args.hop_ms / 1000.0
    with console.status("running the model over the stream"):
        t_w, p_w = stream_probabilities(model, words.audio, hop)
        t_s, p_s = stream_probabilities(model, speech.audio, hop) if len(speech.audio) >= WINDOW_SAMPLES else (
            np.zeros(0), np.zeros((0, len(model.labels)), np.float32))
    base = DetectorSettings(args.threshold if args.threshold is not None else 0.8,
                            None if args.threshold is not None else model.thresholds or None,
                            args.smoothing_hops, args.min_consecutive, args.refractory_s,
                            getattr(args, "min_pause_ms", 0.0))
    gated = base.min_pause_ms > 0
    l_w = hop_levels(words.audio, hop) if gated else None
    l_s = hop_levels(speech.audio, hop) if gated and len(t_s) else None
    result: dict[str, Any] = {"split": split, "settings": {"threshold": base.threshold,
                                                         "thresholds": dict(base.thresholds or {})}}
    result["words"] = score(words.words, replay(model.labels, t_w, p_w, base, l_w), words.seconds)
    if len(t_s):
        result["speech"] = score([], replay(model.labels, t_s, p_s, base, l_s), speech.seconds)
    # the sweep treats the speech as more stream: one FA rate over all audio
    times = np.concatenate((t_w, t_s + words.seconds + 10.0)) if len(t_s) else t_w
    probs = np.concatenate((p_w, p_s)) if len(t_s) else p_w
    levels = None
    if gated:  # ten seconds of silence between the two streams, as the time gap says
        gap = np.full(int(round(10.0 / hop)), -120.0)
        levels = np.concatenate((l_w, gap, l_s)) if l_s is not None else l_w
        if l_s is not None:
            times = np.concatenate((t_w, t_w[-1] + hop * np.arange(1, len(gap) + 1), t_s + words.seconds + 10.0))
            probs = np.concatenate((p_w, np.tile(_silence_row(model.labels), (len(gap), 1)), p_s))
    total_s = words.seconds + speech.seconds
    rows = sweep(model.labels, times, probs, words.words, total_s, base, levels=levels)
    result["sweep"] = [{k: r[k] for k in ("threshold", "recall", "fa_per_hour", "false_accepts")} for r in rows]
    if args.target_fa_per_hour is not None:
        chosen = pick_thresholds(rows, args.target_fa_per_hour)
        settings = replace(base, threshold=0.8, thresholds=chosen)
        events = replay(model.labels, times, probs, settings, levels)
        result["target"] = {"fa_per_hour": args.target_fa_per_hour, "thresholds": chosen,
                            "result": _brief(score(words.words, events, total_s))}
        if args.save_thresholds:
            _save_thresholds(model.path, chosen)
    if args.json:
        print(json.dumps(result, indent=2, default=float))
    else:
        print_stream_report(result, Console())
    if args.plot is not None:
        plot_det(rows, args.plot)
    return 0


def _silence_row(labels: list[str]) -> np.ndarray:
    row = np.zeros(len(labels), np.float32)
    row[labels.index("_silence_")] = 1.0
    return row


def _brief(r: dict[str, Any]) -> dict[str, Any]:
    return {k: r[k] for k in ("recall", "false_accepts", "fa_per_hour", "fa_per_keyword", "fa_kinds",
                              "latency_median_s")}


def _save_thresholds(model_path: Path, thresholds: dict[str, float]) -> None:
    from kwspot.model import load_sidecar, sidecar_path

    meta = load_sidecar(model_path)
    meta["thresholds"] = thresholds
    sidecar_path(model_path).write_text(json.dumps(meta, indent=2) + "\n")


def print_stream_report(result: dict[str, Any], console: Console) -> None:
    w = result["words"]
    lat = f"{w['latency_median_s']:.2f} s" if w["latency_median_s"] is not None else "n/a"
    console.print(f"[bold]{result['split']} stream[/]: {w['seconds'] / 60:.1f} min, {w['keywords']} keywords, "
                  f"{w['other_words']} other words")
    console.print(f"  recall [bold]{w['recall']:.4f}[/], false accepts {w['false_accepts']} "
                  f"({w['fa_per_hour']:.1f}/hour, {w['fa_per_keyword']:.2%} of keywords) {w['fa_kinds']}, "
                  f"median latency {lat} after the word")
    if "speech" in result:
        s = result["speech"]
        console.print(f"  continuous speech: {s['seconds'] / 60:.1f} min, {s['false_accepts']} false accepts "
                      f"({s['fa_per_hour']:.1f}/hour)")
    table = Table(title="DET sweep (one threshold for all keywords; false accepts over all audio)")
    for col in ("threshold", "recall", "miss", "FA", "FA/hour"):
        table.add_column(col, justify="right")
    for r in result["sweep"]:
        table.add_row(f"{r['threshold']:.2f}", f"{r['recall']:.4f}", f"{1 - r['recall']:.4f}",
                      str(r["false_accepts"]), f"{r['fa_per_hour']:.1f}")
    console.print(table)
    if "target" in result:
        t = result["target"]
        console.print(f"thresholds for at most {t['fa_per_hour']:g} false accepts an hour: "
                      f"recall {t['result']['recall']:.4f}, {t['result']['fa_per_hour']:.1f} FA/hour")
        console.print("# config.yaml\ndetector:\n  thresholds: {"
                      + ", ".join(f"{k}: {v:.2f}" for k, v in t["thresholds"].items()) + "}", markup=False)


def plot_det(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    fa = [max(r["fa_per_hour"], 0.1) for r in rows]
    ax.plot(fa, [1 - r["recall"] for r in rows], marker="o", ms=3)
    for r, x in zip(rows, fa, strict=True):
        if round(r["threshold"] * 100) % 10 == 0:
            ax.annotate(f"{r['threshold']:.1f}", (x, 1 - r["recall"]), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("false accepts per hour")
    ax.set_ylabel("miss rate")
    ax.set_title("DET curve")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
