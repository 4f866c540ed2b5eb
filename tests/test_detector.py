import numpy as np
import pytest

from kwspot import LABELS, SILENCE, UNKNOWN
from kwspot.detector import Detector, DetectorSettings


def onehot(label: str, p: float = 0.95) -> np.ndarray:
    probs = np.full(len(LABELS), (1 - p) / (len(LABELS) - 1), np.float32)
    probs[LABELS.index(label)] = p
    return probs


def run(det: Detector, frames: list[np.ndarray], hop: float = 0.1) -> list:
    return [d for i, f in enumerate(frames) if (d := det.update(f, (i + 1) * hop))]


def test_a_word_fires_once_with_score_and_time():
    det = Detector(LABELS, DetectorSettings(threshold=0.8, smoothing_hops=2, min_consecutive=2, refractory_s=1.0))
    frames = [onehot(SILENCE)] * 5 + [onehot("stop")] * 6 + [onehot(SILENCE)] * 5
    hits = run(det, frames)
    assert [h.keyword for h in hits] == ["stop"]
    assert hits[0].score >= 0.8
    # smoothing over 2 hops + 2 consecutive: the second smoothed frame above threshold fires
    assert hits[0].t == pytest.approx(0.8)


@pytest.mark.parametrize("label", [SILENCE, UNKNOWN])
def test_silence_and_unknown_never_fire(label):
    det = Detector(LABELS, DetectorSettings(threshold=0.0, min_consecutive=1, refractory_s=0.0))
    assert run(det, [onehot(label, 1.0)] * 50) == []


def test_below_threshold_does_not_fire():
    det = Detector(LABELS, DetectorSettings(threshold=0.9, min_consecutive=1))
    assert run(det, [onehot("go", 0.85)] * 20) == []


def test_per_keyword_threshold_overrides_default():
    det = Detector(LABELS, DetectorSettings(threshold=0.9, thresholds={"go": 0.5}, min_consecutive=1))
    assert [h.keyword for h in run(det, [onehot("go", 0.6)] * 3)] == ["go"]
    assert det.threshold("go") == 0.5 and det.threshold("yes") == pytest.approx(0.9)


def test_min_consecutive_rejects_a_single_spike():
    det = Detector(LABELS, DetectorSettings(smoothing_hops=1, min_consecutive=3))
    frames = [onehot(SILENCE), onehot("yes"), onehot("yes"), onehot(SILENCE)] * 5
    assert run(det, frames) == []


def test_refractory_suppresses_a_second_word_too_soon():
    settings = DetectorSettings(smoothing_hops=1, min_consecutive=1, refractory_s=1.0)
    det = Detector(LABELS, settings)
    frames = [onehot("yes"), onehot(SILENCE), onehot("no"), onehot(SILENCE)] + [onehot(SILENCE)] * 10 + [onehot("no")]
    hits = run(det, frames)
    assert [h.keyword for h in hits] == ["yes", "no"]
    assert hits[1].t == pytest.approx(1.5)


def test_a_long_word_fires_once_until_it_drops_below_threshold():
    det = Detector(LABELS, DetectorSettings(smoothing_hops=1, min_consecutive=1, refractory_s=0.2))
    frames = [onehot("left")] * 30 + [onehot(SILENCE)] + [onehot("left")]
    assert [h.t for h in run(det, frames)] == [pytest.approx(0.1), pytest.approx(3.2)]


def test_reset_forgets_history():
    det = Detector(LABELS, DetectorSettings(smoothing_hops=1, min_consecutive=2))
    det.update(onehot("up"), 0.1)
    det.reset()
    assert det.update(onehot("up"), 0.2) is None
    assert det.update(onehot("up"), 0.3) is not None


def test_wrong_probability_shape_is_refused():
    with pytest.raises(ValueError):
        Detector(LABELS).update(np.ones(3), 0.1)
