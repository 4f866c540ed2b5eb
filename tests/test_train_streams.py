"""Stream builder ground truth (kwspot.train.streams), scoring and the DET sweep (kwspot.train.scoring)
on synthetic cases with known answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kwspot import LABELS
from kwspot.detector import DetectorSettings
from kwspot.frontend import SAMPLE_RATE, WINDOW_SAMPLES
from kwspot.train.scoring import pick_thresholds, replay, score, sweep
from kwspot.train.streams import Word, build_stream

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SR = SAMPLE_RATE


def burst(start: int, stop: int, amp: float = 0.3) -> np.ndarray:
    """A one-second window holding a tone between two sample positions."""
    x = np.zeros(WINDOW_SAMPLES, np.float32)
    t = np.arange(stop - start) / SR
    x[start:stop] = amp * np.sin(2 * np.pi * 440 * t)
    return x


def test_build_stream_ground_truth_matches_the_audio():
    rng = np.random.default_rng(0)
    clips = [(burst(2000, 5000), "yes"), (burst(1000, 3000), "_unknown_"), (burst(4000, 7800), "go")]
    stream = build_stream(clips, [], rng, snrs=None, gap_s=(2.0, 2.0))
    assert [w.label for w in stream.words] == ["yes", "_unknown_", "go"]
    loud = np.abs(stream.audio) > 0.01
    for w in stream.words:
        a, b = int(w.start * SR), int(w.end * SR)
        assert loud[a + 200 : b - 200].mean() > 0.9  # the word is where the truth says
        assert b - a == pytest.approx({"yes": 3000, "_unknown_": 2000, "go": 3800}[w.label], abs=320)
    for prev, nxt in zip(stream.words, stream.words[1:], strict=False):
        assert nxt.start - prev.end == pytest.approx(2.0, abs=0.05)
    between = loud[int(stream.words[0].end * SR) + 200 : int(stream.words[1].start * SR) - 200]
    assert not between.any()  # nothing but silence between words


def test_build_stream_mixes_noise_at_the_asked_snr():
    rng = np.random.default_rng(1)
    noise = [np.random.default_rng(2).normal(0, 0.1, SR * 30).astype(np.float32)]
    clips = [(burst(2000, 6000, amp=0.05), "yes") for _ in range(4)]
    stream = build_stream(clips, noise, rng, snrs=(10.0,), gap_s=(2.0, 2.0), noise_dbfs=-40.0)
    noise_rms = 10 ** (-40 / 20)
    for w in stream.words:
        x = stream.audio[int(w.start * SR) + 400 : int(w.end * SR) - 400].astype(np.float64)
        snr = 10 * np.log10(np.mean(x**2) / noise_rms**2 - 1)
        assert snr == pytest.approx(10.0, abs=1.0)
        assert w.snr_db == 10.0


def test_score_counts_hits_and_every_kind_of_false_accept():
    words = [Word("yes", 1.0, 1.5), Word("no", 5.0, 5.4), Word("_unknown_", 9.0, 9.5), Word("go", 13.0, 13.3)]
    events = [("yes", 1.7), ("yes", 2.2), ("up", 5.6), ("no", 5.9), ("left", 9.8), ("stop", 20.0)]
    r = score(words, events, seconds=3600.0, keywords=("yes", "no", "up", "left", "stop", "go"))
    assert r["hits"] == 2 and r["keywords"] == 3
    assert r["recall"] == pytest.approx(2 / 3)
    assert r["fa_kinds"] == {"duplicate": 1, "wrong_keyword": 1, "other_word": 1, "outside": 1}
    assert r["fa_per_hour"] == pytest.approx(4.0)
    assert r["latency_median_s"] == pytest.approx(0.35)  # median of 1.7 - 1.5 and 5.9 - 5.4
    assert r["per_keyword"]["yes"] == {"n": 1, "hits": 1, "fa": 1}


def _synthetic_probs() -> tuple[np.ndarray, np.ndarray, list[Word]]:
    """Two 'yes' scored 0.9 and 0.6, and a 'no' at 0.7 where nothing was said."""
    times = np.round(np.arange(1, 301) * 0.1, 3)
    probs = np.zeros((len(times), len(LABELS)), np.float32)
    probs[:, LABELS.index("_silence_")] = 1.0
    yes, no = LABELS.index("yes"), LABELS.index("no")

    def put(t0: float, t1: float, label: int, p: float) -> None:
        m = (times >= t0) & (times < t1)
        probs[m] = (1 - p) / (len(LABELS) - 1)
        probs[m, label] = p

    put(2.0, 2.5, yes, 0.9)
    put(8.0, 8.5, yes, 0.6)
    put(20.0, 20.5, no, 0.7)
    words = [Word("yes", 1.2, 1.8), Word("yes", 7.2, 7.8)]
    return times, probs, words


def test_det_sweep_has_the_known_answer():
    times, probs, words = _synthetic_probs()
    base = DetectorSettings(0.5, None, smoothing_hops=1, min_consecutive=1, refractory_s=1.0)
    rows = {r["threshold"]: r for r in sweep(list(LABELS), times, probs, words, 30.0, base, (0.5, 0.65, 0.75, 0.95))}
    assert (rows[0.5]["recall"], rows[0.5]["false_accepts"]) == (1.0, 1)
    assert (rows[0.65]["recall"], rows[0.65]["false_accepts"]) == (0.5, 1)
    assert (rows[0.75]["recall"], rows[0.75]["false_accepts"]) == (0.5, 0)
    assert (rows[0.95]["recall"], rows[0.95]["false_accepts"]) == (0.0, 0)
    assert rows[0.5]["fa_per_hour"] == pytest.approx(120.0)
    picked = pick_thresholds(list(rows.values()), target_fa_per_hour=10.0)
    assert picked["no"] == 0.75  # lowest threshold at which 'no' stops firing
    assert picked["yes"] == 0.5  # 'yes' never false-accepts: the lowest threshold keeps its recall


def test_replay_is_the_listen_detector():
    times, probs, _ = _synthetic_probs()
    events = replay(list(LABELS), times, probs, DetectorSettings(0.5, None, 1, 1, 1.0))
    assert [k for k, _ in events] == ["yes", "yes", "no"]
    assert events[0][1] == pytest.approx(2.0)


def test_stream_probabilities_replay_equals_pipeline():
    """Sweeping on replayed probabilities gives the events that listen's Pipeline gives."""
    from kwspot.detector import Detector
    from kwspot.model import Model, bundled_model_path
    from kwspot.pipeline import Pipeline, stream_probabilities

    path = bundled_model_path()
    if not path.is_file():
        pytest.skip(f"no bundled model at {path}")
    model = Model(path)
    rng = np.random.default_rng(3)
    audio = rng.normal(0, 0.05, SR * 6).astype(np.float32)
    settings = DetectorSettings(threshold=0.05, smoothing_hops=1, min_consecutive=1, refractory_s=0.5)
    pipe = Pipeline(model, Detector(model.labels, settings))
    live = [(e.keyword, round(e.t, 3)) for i in range(0, len(audio), 700) for e in pipe.feed(audio[i : i + 700])]
    t, p = stream_probabilities(model, audio)
    assert [(k, round(x, 3)) for k, x in replay(model.labels, t, p, settings)] == live


def test_scoring_knows_only_the_models_keywords():
    """A model for other words: its words are the keywords, everything else is another word."""
    words = [Word("eight", 1.0, 1.5), Word("_unknown_", 5.0, 5.4)]
    r = score(words, [("eight", 1.8), ("stop", 5.6)], seconds=60.0, keywords=("eight", "stop"))
    assert r["hits"] == 1 and r["keywords"] == 1 and r["other_words"] == 1
    assert r["fa_kinds"]["other_word"] == 1 and set(r["per_keyword"]) == {"eight", "stop"}


class _LoudIsYes:
    """A stand-in model: ``yes`` when the window holds sound, else ``_silence_``."""

    name = "loud-is-yes"
    labels = list(LABELS)
    window_samples = SR

    def predict(self, window: np.ndarray) -> np.ndarray:
        p = np.zeros(len(LABELS), np.float32)
        p[LABELS.index("yes" if np.abs(window).max() > 0.01 else "_silence_")] = 1.0
        return p


def test_gated_replay_with_hop_levels_equals_pipeline():
    """With the isolated-command gate on, replaying probabilities and hop levels gives listen's events."""
    from kwspot.detector import Detector
    from kwspot.pipeline import Pipeline, hop_levels, stream_probabilities

    model = _LoudIsYes()
    rng = np.random.default_rng(4)
    audio = np.zeros(SR * 12, np.float32)
    for start, length in ((1.0, 0.5), (4.0, 0.6), (7.0, 3.0)):  # two words standing apart, then running speech
        a = int(start * SR)
        audio[a : a + int(length * SR)] = rng.normal(0, 0.1, int(length * SR))
    settings = DetectorSettings(threshold=0.5, smoothing_hops=1, min_consecutive=1, refractory_s=0.5,
                                min_pause_ms=200)
    pipe = Pipeline(model, Detector(model.labels, settings))
    live = [(e.keyword, round(e.t, 3)) for i in range(0, len(audio), 700) for e in pipe.feed(audio[i : i + 700])]
    assert [k for k, _ in live] == ["yes", "yes"]  # the running speech does not pass
    t, p = stream_probabilities(model, audio)
    assert [(k, round(x, 3)) for k, x in replay(model.labels, t, p, settings, levels=hop_levels(audio))] == live
