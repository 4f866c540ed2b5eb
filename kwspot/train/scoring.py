"""Scoring detections on a stream with ground truth: replay, hits and false accepts, DET sweep, thresholds.

Keyword ``k`` spoken over [s, e] is *hit* by the first event for ``k`` with
s < t <= e + 1 s + ``SLACK_S`` (t: end of the window that fired); every
other event is a false accept: a duplicate, a wrong keyword, an event on
another word, or one outside any word. Probabilities are replayed through
:class:`kwspot.detector.Detector`, the daemon's own detector, so thresholds
chosen here are the ones ``listen`` applies. No audio, no argument parsing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from kwspot.detector import Detector, DetectorSettings
from kwspot.train.streams import Word

SLACK_S = 0.5
_GRID = np.concatenate((np.arange(0.30, 0.90, 0.05), np.arange(0.90, 0.995, 0.01)))
SWEEP = tuple(sorted({round(float(x), 2) for x in _GRID}))


Verdict = Callable[[str, float], bool]  # (keyword, t) -> whether the verifier lets the event stand


def replay(
    labels: list[str], times: np.ndarray, probs: np.ndarray, settings: DetectorSettings,
    verdict: Verdict | None = None, *, levels: np.ndarray | None = None,
) -> list[tuple[str, float]]:
    """Events (keyword, t) that ``listen``'s detector gives for these probabilities.

    ``levels``: each hop's level (:func:`kwspot.pipeline.hop_levels`), which the isolated-command gate
    needs when ``settings.min_pause_ms`` > 0. ``verdict``: the second stage (e.g.
    :meth:`kwspot.verifier.SignalVerifier.accepts`), asked about each event the detector (and gate)
    releases; a candidate it rejects is dropped, as ``Pipeline`` drops it, and the detector goes on as
    if it had fired.
    """
    det = Detector(labels, settings)
    out = []
    for i, (t, p) in enumerate(zip(times, probs, strict=True)):
        d = det.update(p, float(t), None if levels is None else float(levels[i]))
        if d is not None and (verdict is None or verdict(d.keyword, d.t)):
            out.append((d.keyword, d.t))
    return out


def score(words: list[Word], events: list[tuple[str, float]], seconds: float,
          keywords: Sequence[str]) -> dict[str, Any]:
    """Hits, misses and false accepts (by kind and by keyword) of events against ground truth.

    ``keywords``: the model's keywords; a word with any other label is an other word.
    """
    spoken = [w for w in words if w.label in keywords]
    hit_t: dict[int, float] = {}
    fa_kinds = {"duplicate": 0, "wrong_keyword": 0, "other_word": 0, "outside": 0}
    fa_by_kw = dict.fromkeys(keywords, 0)
    starts = np.array([w.start for w in words])
    for kw, t in events:
        i = int(np.searchsorted(starts, t, side="left")) - 1  # the last word starting before t
        w = words[i] if i >= 0 else None
        inside = w is not None and w.start < t <= w.end + 1.0 + SLACK_S
        if inside and w.label == kw and i not in hit_t:
            hit_t[i] = t - w.end
            continue
        kind = "outside" if not inside else "other_word" if w.label not in keywords else (
            "duplicate" if w.label == kw else "wrong_keyword")
        fa_kinds[kind] += 1
        fa_by_kw[kw] += 1
    n_kw = len(spoken)
    per_kw = {k: {"n": sum(w.label == k for w in words),
                  "hits": sum(1 for i in hit_t if words[i].label == k), "fa": fa_by_kw[k]} for k in keywords}
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
          base: DetectorSettings, grid: tuple[float, ...] = SWEEP, verdict: Verdict | None = None,
          levels: np.ndarray | None = None) -> list[dict[str, Any]]:
    """Score one uniform threshold per grid point: the DET curve (through the gate and verifier, if given)."""
    keywords = Detector(labels).keywords
    rows = []
    for th in grid:
        settings = replace(base, threshold=float(th), thresholds=None)
        events = replay(labels, times, probs, settings, verdict, levels=levels)
        rows.append({"threshold": float(th), **score(words, events, seconds, keywords)})
    return rows


def pick_thresholds(rows: list[dict[str, Any]], target_fa_per_hour: float, floor: float = 0.5) -> dict[str, float]:
    """Per-keyword thresholds from a sweep: most hits for at most ``target_fa_per_hour`` false accepts in all.

    Greedy: every keyword starts at the highest swept threshold; repeatedly
    lower the one whose next step buys the most hits per false accept while the
    total stays in budget. Ties go to the lowest threshold with the same
    counts. Never below ``floor``.
    """
    grid = sorted((r for r in rows if r["threshold"] >= floor), key=lambda r: -r["threshold"])
    keywords = list(grid[0]["per_keyword"])
    budget = target_fa_per_hour * grid[0]["seconds"] / 3600.0
    hits = {k: [r["per_keyword"][k]["hits"] for r in grid] for k in keywords}
    fas = {k: [r["per_keyword"][k]["fa"] for r in grid] for k in keywords}
    state = dict.fromkeys(keywords, 0)
    total = sum(fas[k][0] for k in keywords)
    while True:
        best: tuple[float, int, str, int] | None = None
        for k in keywords:
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
    for k in keywords:
        j = state[k]
        while j + 1 < len(grid) and (hits[k][j + 1], fas[k][j + 1]) == (hits[k][j], fas[k][j]):
            j += 1
        out[k] = float(grid[j]["threshold"])
    return out


