"""The isolated-command gate (detector.min_pause_ms): pure, on synthetic probabilities and hop levels."""

from __future__ import annotations

import numpy as np
import pytest

from kwspot import LABELS, UNKNOWN
from kwspot.detector import Detector, DetectorSettings

HOP = 0.1
QUIET, LOUD = -60.0, -20.0


def onehot(label: str, p: float = 0.95) -> np.ndarray:
    probs = np.full(len(LABELS), (1 - p) / (len(LABELS) - 1), np.float32)
    probs[LABELS.index(label)] = p
    return probs


def scene(levels: list[float], yes_hops: range) -> tuple[list[np.ndarray], list[float]]:
    """Hop levels, and probabilities saying ``yes`` on ``yes_hops`` and ``_unknown_`` elsewhere."""
    return [onehot("yes") if i in yes_hops else onehot(UNKNOWN) for i in range(len(levels))], levels


def events(pause_ms: float, probs: list[np.ndarray], levels: list[float]) -> list[tuple[str, float]]:
    det = Detector(LABELS, DetectorSettings(min_pause_ms=pause_ms))
    out = []
    for i, (p, level) in enumerate(zip(probs, levels, strict=True)):
        d = det.update(p, round((i + 1) * HOP, 3), level)
        if d is not None:
            out.append((d.keyword, d.t))
    return out


def test_an_isolated_word_passes_no_later_than_the_pause_after_it():
    levels = [QUIET] * 20 + [LOUD] * 5 + [QUIET] * 20  # the word: hops 20-24, ends at t = 2.5 s
    probs, levels = scene(levels, range(22, 30))
    plain, gated = events(0, probs, levels), events(200, probs, levels)
    assert [k for k, _ in plain] == [k for k, _ in gated] == ["yes"]
    word_end = 2.5
    assert gated[0][1] >= word_end + 0.2 - 1e-9  # waited for the pause after the word
    assert gated[0][1] <= max(plain[0][1], word_end + 0.2) + 1e-9  # and no longer


def test_a_word_inside_running_speech_is_dropped():
    rng = np.random.default_rng(0)
    levels = [QUIET] * 10 + list(LOUD + rng.uniform(-4, 4, 60)) + [QUIET] * 10
    probs, levels = scene(levels, range(40, 47))
    assert [k for k, _ in events(0, probs, levels)] == ["yes"]
    assert events(200, probs, levels) == []


def test_no_pause_before_the_word_drops_it():
    levels = [QUIET] * 10 + [LOUD] * 25 + [QUIET] * 20  # speech runs straight into the word
    probs, levels = scene(levels, range(32, 38))
    assert len(events(0, probs, levels)) == 1
    assert events(300, probs, levels) == []


def test_a_quieter_pause_in_noise_counts_as_a_pause():
    noise = list(-40 + np.random.default_rng(1).uniform(-1.5, 1.5, 60))
    levels = noise[:20] + [-25.0] * 6 + noise[20:40]
    probs, levels = scene(levels, range(23, 30))
    assert [k for k, _ in events(200, probs, levels)] == ["yes"]


def test_gate_off_ignores_levels_and_gate_on_needs_them():
    probs, levels = scene([QUIET] * 10 + [LOUD] * 5 + [QUIET] * 10, range(12, 18))
    assert events(0, probs, levels) == events(0, probs, [0.0] * len(levels))
    det = Detector(LABELS, DetectorSettings(min_pause_ms=200))
    with pytest.raises(ValueError, match="level"):
        det.update(onehot("yes"), 0.1)


def test_reset_forgets_a_held_detection():
    levels = [QUIET] * 20 + [LOUD] * 5 + [QUIET] * 20
    probs, levels = scene(levels, range(22, 30))
    det = Detector(LABELS, DetectorSettings(min_pause_ms=200))
    for i in range(25):
        assert det.update(probs[i], (i + 1) * HOP, levels[i]) is None
    det.reset()
    out = [det.update(onehot(UNKNOWN), (i + 1) * HOP, QUIET) for i in range(25, 45)]
    assert all(d is None for d in out)
