"""The second stage: the verifier's head and verdict, the pipeline dropping what it rejects, replay = pipeline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from kwspot import modelfile
from kwspot.detector import Detector, DetectorSettings
from kwspot.errors import KwspotError
from kwspot.frontend import SAMPLE_RATE
from kwspot.model import bundled_model_path
from kwspot.pipeline import Pipeline, stream_probabilities
from kwspot.train.scoring import replay
from kwspot.verifier import EMBEDDING_DIM, Head, SignalVerifier, Verifier

LABELS = ["_silence_", "_unknown_", "yes", "no"]
N_EMB = 2


class FakeEmbedder:
    """Two 'embeddings' per window: the RMS level of each half, in every one of the 96 dimensions."""

    n_embeddings = N_EMB

    def __init__(self) -> None:
        self.calls = 0

    def embed(self, audio: np.ndarray) -> np.ndarray:
        self.calls += 1
        halves = np.array_split(np.asarray(audio, np.float32), N_EMB)
        return np.repeat([[float(np.sqrt(np.mean(h**2)))] for h in halves], EMBEDDING_DIM, axis=1).astype(np.float32)


def write_head(path: Path, favour: str, loudness_weight: float = 0.0, window_s: float = 0.5) -> Path:
    """A head over (_unknown_, yes, no): a bias towards ``favour``, plus ``yes`` rising with the loudness of the
    window's second half when ``loudness_weight`` is set."""
    labels = ("_unknown_", "yes", "no")
    features = N_EMB * EMBEDDING_DIM
    w0 = np.zeros((features, 2), np.float32)
    w0[EMBEDDING_DIM:, 0] = 1.0  # hidden 0: loudness of the second half
    b0 = np.array([0.0, 1.0], np.float32)  # hidden 1: constant 1
    w1 = np.zeros((2, 3), np.float32)
    w1[1, labels.index(favour)] = 4.0
    w1[0, labels.index("yes")] = loudness_weight
    np.savez(path, labels=np.array(labels), window_s=np.float32(window_s), mean=np.zeros(features, np.float32),
             std=np.ones(features, np.float32), w0=w0, b0=b0, w1=w1, b1=np.zeros(3, np.float32))
    return path


def test_head_gives_a_distribution_over_its_labels(tmp_path):
    head = Head(write_head(tmp_path / "h.npz", "yes"))
    p = head.probs(np.zeros((3, head.features), np.float32))
    assert p.shape == (3, 3)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
    assert head.labels[int(np.argmax(p[0]))] == "yes"


def test_verifier_accepts_what_its_head_favours_and_rejects_the_rest(tmp_path):
    accepting = Verifier(write_head(tmp_path / "a.npz", "yes"), {"yes": 0.6}, embedder=FakeEmbedder())
    rejecting = Verifier(write_head(tmp_path / "r.npz", "_unknown_"), {"yes": 0.6}, embedder=FakeEmbedder())
    audio = np.zeros(3 * SAMPLE_RATE, np.float32)
    ok, score = accepting.check(audio, "yes")
    assert ok and 0.6 <= score <= 1.0
    ok, score = rejecting.check(audio, "yes")
    assert not ok and 0.0 <= score < 0.6
    assert accepting.check(audio, "no")[0] is False  # default threshold 0.5; "no" is not favoured
    assert accepting.check(audio, "left") == (True, 1.0)  # a keyword the head does not know is never vetoed


def test_verifier_takes_the_newest_window_zero_padded_in_front(tmp_path):
    v = Verifier(write_head(tmp_path / "h.npz", "yes"), embedder=FakeEmbedder())
    assert v.window_samples == SAMPLE_RATE // 2
    short = np.ones(100, np.float32)
    window = v.last(short)
    assert window.shape == (v.window_samples,) and window[-100:].all() and not window[:-100].any()
    long = np.arange(3 * SAMPLE_RATE, dtype=np.float32)
    np.testing.assert_array_equal(v.last(long), long[-v.window_samples :])


def test_head_problems_are_one_line_errors(tmp_path):
    with pytest.raises(KwspotError, match="verifier head missing"):
        Head(tmp_path / "none.npz")
    bad = tmp_path / "bad.npz"
    np.savez(bad, labels=np.array(["_unknown_", "yes"]), window_s=np.float32(1.0), mean=np.zeros(4),
             std=np.ones(4), w0=np.zeros((5, 2)), b0=np.zeros(2))
    with pytest.raises(KwspotError, match="do not fit together"):
        Head(bad)
    with pytest.raises(KwspotError, match="takes 192 features"):
        Verifier(write_head(tmp_path / "h.npz", "yes"), embedder=type("E", (), {"n_embeddings": 3})())


@pytest.mark.parametrize("change, needle", [
    ({"window_s": np.float32(np.nan)}, "window_s must be"), ({"window_s": np.float64(1e7)}, "window_s must be"),
    ({"window_s": np.float32(0.0)}, "window_s must be"), ({"window_s": np.float32(-1.5)}, "window_s must be"),
    ({"labels": np.array(5)}, "do not fit together"), ({"std": np.zeros(N_EMB * EMBEDDING_DIM)}, "std"),
    ({"mean": np.full(N_EMB * EMBEDDING_DIM, np.inf)}, "infinite"),
    ({"mean": np.array(["a"] * N_EMB * EMBEDDING_DIM)}, "wrong type"),
    ({"w0": np.zeros(N_EMB * EMBEDDING_DIM, np.float32)}, "do not fit together"),
    ({"w1": np.float32(1.0)}, "do not fit together"),
])
def test_head_values_out_of_range_are_one_line_errors(tmp_path, change, needle):
    good = dict(np.load(write_head(tmp_path / "good.npz", "yes")))
    np.savez(tmp_path / "bad.npz", **{**good, **change})
    with pytest.raises(KwspotError, match=needle):
        Head(tmp_path / "bad.npz")


def test_sidecar_names_its_verifier(tmp_path):
    model = tmp_path / "m.tflite"
    meta = {"labels": LABELS, "verifier": {"head": "m.verifier.npz", "thresholds": {"yes": 0.3}}}
    (tmp_path / "m.json").write_text(json.dumps(meta))
    spec = modelfile.read(model).verifier
    assert spec is not None and spec.head == tmp_path / "m.verifier.npz"
    assert spec.thresholds == {"yes": 0.3} and spec.threshold == 0.5
    for bad, needle in (({"head": "../x.npz"}, "'head' file name"), ({"head": "h.npz", "thresholds": {"up": 0.5}},
                        "not one of the model's keywords"), ({"head": "h.npz", "threshold": 2}, "from 0 to 1")):
        (tmp_path / "m.json").write_text(json.dumps({**meta, "verifier": bad}))
        with pytest.raises(KwspotError, match=needle):
            modelfile.read(model)
    (tmp_path / "m.json").write_text(json.dumps({"labels": LABELS}))
    assert modelfile.read(model).verifier is None


class FakeModel:
    """'yes' when the last window is loud, silence otherwise."""

    labels = LABELS
    window_samples = SAMPLE_RATE
    keywords = ("yes", "no")
    name = "fake"

    def predict(self, window: np.ndarray) -> np.ndarray:
        loud = float(np.sqrt(np.mean(np.asarray(window) ** 2))) > 0.05
        return np.array([0.0, 0.0, 1.0, 0.0] if loud else [1.0, 0.0, 0.0, 0.0], np.float32)


class FakeVerifier:
    window_samples = SAMPLE_RATE

    def __init__(self, accept: bool) -> None:
        self.accept, self.seen = accept, []

    def check(self, audio: np.ndarray, keyword: str) -> tuple[bool, float]:
        self.seen.append((keyword, audio.shape))
        return self.accept, 1.0 if self.accept else 0.0

    def threshold_of(self, keyword: str) -> float:
        return 0.5


def bursts(n: int, seed: int = 0) -> np.ndarray:
    """``n`` loud bursts of 0.4-0.9 s with 2-3 s of faint noise between them, with varying levels."""
    rng = np.random.default_rng(seed)
    parts = []
    for _ in range(n):
        parts.append(0.002 * rng.standard_normal(int(rng.uniform(2, 3) * SAMPLE_RATE)))
        parts.append(rng.uniform(0.15, 0.5) * rng.standard_normal(int(rng.uniform(0.4, 0.9) * SAMPLE_RATE)))
    parts.append(np.zeros(2 * SAMPLE_RATE))
    return np.concatenate(parts).astype(np.float32)


def test_pipeline_drops_what_the_verifier_rejects_and_keeps_what_it_accepts():
    audio = bursts(3)
    plain = Pipeline(FakeModel(), Detector(LABELS)).feed(audio)
    assert len(plain) == 3
    accepting, rejecting = FakeVerifier(True), FakeVerifier(False)
    kept = Pipeline(FakeModel(), Detector(LABELS), verifier=accepting)
    assert [(e.keyword, e.t) for e in kept.feed(audio)] == [(e.keyword, e.t) for e in plain]
    dropped = Pipeline(FakeModel(), Detector(LABELS), verifier=rejecting)
    assert dropped.feed(audio) == []
    assert dropped.checks == dropped.rejected == 3  # one check per candidate
    assert rejecting.seen == [("yes", (SAMPLE_RATE,))] * 3


def test_replay_with_the_verifier_gives_the_pipeline_events(tmp_path):
    """Verdicts that depend on the audio: loud second halves pass. Replay on the whole signal = Pipeline.feed."""
    head = write_head(tmp_path / "h.npz", "_unknown_", loudness_weight=0.2, window_s=1.5)
    verifier = Verifier(head, {"yes": 0.5}, embedder=FakeEmbedder())
    audio = bursts(12, seed=3)
    pipeline = Pipeline(FakeModel(), Detector(LABELS), verifier=verifier)
    live = []
    for start in range(0, len(audio), 333):  # blocks that do not line up with hops
        live += [(e.keyword, e.t) for e in pipeline.feed(audio[start : start + 333])]
    t, p = stream_probabilities(FakeModel(), audio)
    candidates = replay(LABELS, t, p, DetectorSettings())
    replayed = replay(LABELS, t, p, DetectorSettings(), SignalVerifier(verifier, audio).accepts)
    assert live == replayed
    assert 0 < len(replayed) < len(candidates)  # the verifier kept some and dropped some
    assert pipeline.checks == len(candidates)


def test_gate_and_verifier_together_replay_gives_the_pipeline_events(tmp_path):
    """The isolated-command gate (hop levels) and the verifier (verdicts on the audio) in one replay = Pipeline.feed."""
    from kwspot.pipeline import hop_levels

    head = write_head(tmp_path / "h.npz", "_unknown_", loudness_weight=0.2, window_s=1.5)
    verifier = Verifier(head, {"yes": 0.5}, embedder=FakeEmbedder())
    rng = np.random.default_rng(5)
    running = 0.3 * rng.standard_normal(3 * SAMPLE_RATE)  # three seconds without a pause: no isolated command
    audio = np.concatenate((bursts(12, seed=3), running, np.zeros(2 * SAMPLE_RATE))).astype(np.float32)
    settings = DetectorSettings(min_pause_ms=200)
    pipeline = Pipeline(FakeModel(), Detector(LABELS, settings), verifier=verifier)
    live = []
    for start in range(0, len(audio), 333):
        live += [(e.keyword, e.t) for e in pipeline.feed(audio[start : start + 333])]
    t, p = stream_probabilities(FakeModel(), audio)
    levels = hop_levels(audio)
    ungated = replay(LABELS, t, p, DetectorSettings())
    gated = replay(LABELS, t, p, settings, levels=levels)
    replayed = replay(LABELS, t, p, settings, SignalVerifier(verifier, audio).accepts, levels=levels)
    assert live == replayed
    assert len(gated) < len(ungated)  # the gate held back the running stretch
    assert 0 < len(replayed) < len(gated)  # the verifier kept some of what the gate released and dropped some
    assert pipeline.checks == len(gated)


@pytest.fixture
def verified_model(tmp_path) -> Path:
    """A copy of the bundled model whose sidecar names the bundled verifier head (models/kwspot.verifier.npz)."""
    bundled = bundled_model_path()
    for suffix in (".tflite", ".json", ".verifier.npz"):
        shutil.copy(bundled.with_suffix(suffix), tmp_path / f"kwspot{suffix}")
    meta = json.loads((tmp_path / "kwspot.json").read_text())
    meta["verifier"] = {"head": "kwspot.verifier.npz"}
    (tmp_path / "kwspot.json").write_text(json.dumps(meta))
    return tmp_path / "kwspot.tflite"


def test_a_model_without_a_verifier_runs_as_before_and_off_turns_one_off(tmp_path):
    from kwspot.config import validate
    from kwspot.listen import load_verifier
    from kwspot.model import Model

    model = Model(bundled_model_path())
    if model.file.verifier is None:
        assert load_verifier(validate({}), model) is None
    for path in ("kwspot.tflite", "kwspot.json"):
        shutil.copy(bundled_model_path().with_name(path), tmp_path / path)
    meta = json.loads((tmp_path / "kwspot.json").read_text())
    meta["verifier"] = {"head": "kwspot.verifier.npz"}
    (tmp_path / "kwspot.json").write_text(json.dumps(meta))
    copy = Model(tmp_path / "kwspot.tflite")
    assert load_verifier(validate({"detector": {"verifier": False}}), copy) is None  # YAML's bare off
    with pytest.raises(KwspotError, match="verifier head missing"):
        load_verifier(validate({"detector": {"verifier": "auto"}}), copy)
    with pytest.raises(KwspotError, match="detector.verifier must be one of auto, off"):
        validate({"detector": {"verifier": "maybe"}})


def test_real_embedding_models_give_96_dim_embeddings_and_the_bundled_verifier_scores(verified_model):
    pytest.importorskip("pyopen_wakeword", reason="pyopen-wakeword is not installed")
    pytest.importorskip("ai_edge_litert", reason="LiteRT is not installed")
    from kwspot.model import Model
    from kwspot.verifier import Embedder

    embedder = Embedder(int(1.5 * SAMPLE_RATE))
    rng = np.random.default_rng(0)
    noise = (0.05 * rng.standard_normal(embedder.window_samples)).astype(np.float32)
    t = np.arange(embedder.window_samples) / SAMPLE_RATE
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    a, b = embedder.embed(noise), embedder.embed(tone)
    assert a.shape == (embedder.n_embeddings, EMBEDDING_DIM) == b.shape and embedder.n_embeddings >= 1
    assert np.isfinite(a).all() and not np.allclose(a, b)
    np.testing.assert_array_equal(a, embedder.embed(noise))  # deterministic
    spec = Model(verified_model).file.verifier
    assert spec is not None
    verifier = Verifier(spec.head, spec.thresholds, spec.threshold, embedder=embedder)
    ok, score = verifier.check(noise, "yes")
    assert 0.0 <= score <= 1.0 and ok == (score >= verifier.threshold_of("yes"))


def test_evaluate_checks_events_with_the_models_verifier_unless_told_off(verified_model):
    pytest.importorskip("pyopen_wakeword", reason="pyopen-wakeword is not installed")
    from kwspot.model import Model
    from kwspot.train.evaluate import stream_verdict

    model = Model(verified_model)
    audio = (0.05 * np.random.default_rng(1).standard_normal(4 * SAMPLE_RATE)).astype(np.float32)
    assert stream_verdict(model, audio, "off") is None
    verdict = stream_verdict(model, audio, "auto")
    spec = model.file.verifier
    verifier = Verifier(spec.head, spec.thresholds, spec.threshold)
    for keyword, t in (("yes", 2.0), ("right", 3.5), ("stop", 0.7)):
        end = round(t * SAMPLE_RATE)
        assert verdict(keyword, t) == verifier.check(audio[max(0, end - verifier.window_samples) : end], keyword)[0]


def test_candidates_are_the_first_stages_events_labelled_by_the_word_under_them():
    """The verifier's training windows from a first stage: its events (gate on), the audio the daemon's second
    ring holds then, labelled by the word the event is about: a keyword, another word, or nothing at all."""
    from kwspot.pipeline import hop_levels
    from kwspot.train.streams import Stream, Word
    from kwspot.train.verifier_data import WINDOW, stream_candidates

    rng = np.random.default_rng(5)

    def part(seconds: float, level: float) -> np.ndarray:
        return (level * rng.standard_normal(int(seconds * SAMPLE_RATE))).astype(np.float32)

    audio = np.concatenate([part(2, 0.002), part(0.6, 0.3), part(2.5, 0.002), part(0.6, 0.3), part(2.5, 0.002),
                            part(0.6, 0.3), part(2, 0.002)])
    words = [Word("yes", 2.0, 2.6), Word("_unknown_", 5.1, 5.7)]  # the third burst is no word at all
    out = stream_candidates(FakeModel(), Stream(audio, words), pause_ms=200)
    assert [label for _, label in out] == ["yes", "_unknown_", "_unknown_"]
    t, p = stream_probabilities(FakeModel(), audio)
    events = replay(LABELS, t, p, DetectorSettings(threshold=0.5, min_pause_ms=200), levels=hop_levels(audio)[: len(t)])
    assert len(events) == 3
    for (window, _), (_, te), burst_end in zip(out, events, (2.6, 5.7, 8.8), strict=True):
        end = round(te * SAMPLE_RATE)
        assert te >= burst_end + 0.2 - 1e-6  # held by the gate until a pause
        np.testing.assert_array_equal(window, audio[end - WINDOW : end])


def test_a_head_file_that_is_not_a_small_npz_archive_is_one_line(tmp_path, monkeypatch):
    """An .npy array under the .npz name, a broken zip, and an archive over the unpacked size limit."""
    npy = tmp_path / "array.npz"
    with npy.open("wb") as fh:
        np.save(fh, np.zeros(3))
    with pytest.raises(KwspotError, match="array.npz: unreadable verifier head .an .npy array"):
        Head(npy)
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"PK\x03\x04 not a zip after all")
    with pytest.raises(KwspotError, match="broken.npz: unreadable verifier head"):
        Head(broken)
    monkeypatch.setattr("kwspot.verifier.MAX_HEAD_BYTES", 1 << 20)
    big = dict(np.load(write_head(tmp_path / "good.npz", "yes")))
    np.savez_compressed(tmp_path / "big.npz", **big, padding=np.zeros(1 << 19))  # 4 MiB unpacked, a few KiB packed
    with pytest.raises(KwspotError, match="big.npz: unreadable verifier head .over 1 MiB unpacked"):
        Head(tmp_path / "big.npz")
