"""The isolated-command gate: a detection passes only when its word stands apart, with a pause before and after.

Pure and replayable on stream time: it sees one RMS level (dBFS) per hop,
given by the caller (``Pipeline.level_db``, or :func:`kwspot.pipeline.hop_levels`
for a recorded stream), and the detections the detector proposes.

A hop is *quiet* when it is at least ``drop_db`` below the loudest hop of the
window that fired (the word), or within ``FLOOR_MARGIN_DB`` of the noise floor
(the 10th percentile of the last few seconds). The word is the run of
not-quiet hops around that loudest hop; it passes when at least
``min_pause_s`` of quiet hops lie right before it, then again right after it,
and it lasts at most ``max_word_s``. The detection is held until the pause
after the word is complete, so the gate adds at most the pause to the latency.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

FLOOR_MARGIN_DB = 6.0
HISTORY_S = 4.0
WINDOW_S = 1.0


@dataclass
class _Pending:
    keyword: str
    score: float
    since: float
    peak_db: float
    start: int  # hop index of the word's first hop
    last_loud: int  # hop index of the word's latest not-quiet hop


class PauseGate:
    """Feed ``hop(t, level_db)`` every hop and ``propose(...)`` the detector's detections; released ones come back."""

    def __init__(self, min_pause_s: float, drop_db: float = 15.0, max_word_s: float = 1.2) -> None:
        self.min_pause_s = min_pause_s
        self.drop_db = drop_db
        self.max_word_s = max_word_s
        self.reset()

    def reset(self) -> None:
        self._levels: deque[float] = deque()
        self._n = 0  # hops seen; the newest hop has index n - 1
        self._hop_s = 0.1
        self._last_t: float | None = None
        self._pending: _Pending | None = None

    def _hops(self, seconds: float) -> int:
        return max(1, int(round(seconds / self._hop_s)))

    def _level(self, i: int) -> float | None:
        first = self._n - len(self._levels)
        return self._levels[i - first] if first <= i < self._n else None

    def _floor(self) -> float:
        return float(np.percentile(np.fromiter(self._levels, float), 10)) if self._levels else -120.0

    def _quiet(self, level: float | None, peak_db: float, floor: float) -> bool:
        if level is None:  # before the stream began: silence
            return True
        return level <= peak_db - self.drop_db or level <= floor + FLOOR_MARGIN_DB

    def hop(self, t: float, level_db: float) -> tuple[str, float, float] | None:
        """Take the level of the hop ending at ``t``; return a held detection (keyword, score, t) if it passes now."""
        if self._last_t is not None and t > self._last_t:
            self._hop_s = t - self._last_t
        self._last_t = t
        self._levels.append(float(level_db))
        self._n += 1
        while len(self._levels) > self._hops(HISTORY_S):
            self._levels.popleft()
        return self._check(t)

    def propose(self, keyword: str, score: float, t: float) -> tuple[str, float, float] | None:
        """A detection at ``t`` (after this hop's ``hop`` call): held, passed at once, or dropped."""
        if self._pending is not None or not self._levels:
            return None
        floor = self._floor()
        recent = range(max(self._n - self._hops(WINDOW_S), self._n - len(self._levels)), self._n)
        peak_i = max(recent, key=lambda i: self._level(i) or -np.inf)
        peak = self._level(peak_i) or -120.0
        pause, longest = self._hops(self.min_pause_s), self._hops(self.max_word_s)
        start, run, i = peak_i, 0, peak_i - 1
        while run < pause:
            if peak_i - i > longest + pause:
                return None  # no pause before the word within reach
            if self._quiet(self._level(i), peak, floor):
                run += 1
            else:
                run, start = 0, i
            i -= 1
        self._pending = _Pending(keyword, score, t, peak, start, peak_i)
        for j in range(peak_i + 1, self._n):
            if not self._quiet(self._level(j), peak, floor):
                self._pending.last_loud = j
        return self._check(t)

    def _check(self, t: float) -> tuple[str, float, float] | None:
        p = self._pending
        if p is None:
            return None
        newest = self._n - 1
        if not self._quiet(self._level(newest), p.peak_db, self._floor()):
            p.last_loud = max(p.last_loud, newest)
        if p.last_loud - p.start + 1 > self._hops(self.max_word_s):
            self._pending = None  # not a single word: speech goes on
            return None
        if newest - p.last_loud >= self._hops(self.min_pause_s):
            self._pending = None
            return p.keyword, p.score, t
        return None
