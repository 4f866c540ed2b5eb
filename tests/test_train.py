"""kwspot train on a tiny slice: the data layer, one epoch end to end, and LiteRT export parity with Keras."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile

from kwspot import KEYWORDS, LABELS
from kwspot.errors import KwspotError
from kwspot.frontend import SAMPLE_RATE
from kwspot.train.augment import FRAGMENT, AugmentSettings, Sources, epoch_plan, make_batch
from kwspot.train.data import clip_windows, scan, which_set

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SPEECH_COMMANDS = SHARED / "speech_commands"
NEGATIVES = SHARED / "librispeech_negatives"
HAVE_TF = importlib.util.find_spec("tensorflow") is not None
OTHER_WORDS = ("bed", "cat")


def _write(path: Path, audio: np.ndarray, rate: int = SAMPLE_RATE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), audio, rate)


def _synthetic_word(rng: np.random.Generator, index: int, rate: int) -> np.ndarray:
    """A chirp per class, at a random level and position: learnable, not speech."""
    n = int(0.5 * rate)
    t = np.arange(n) / rate
    f0 = 200 + 150 * index
    word = 0.3 * np.sin(2 * np.pi * (f0 * t + 300 * t**2)) * np.hanning(n)
    out = np.zeros(rate, np.float32)
    start = rng.integers(0, rate - n)
    out[start : start + n] = word
    return out + rng.normal(0, 0.003, rate).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Speech Commands layout with 4 train, 1 validation and 1 testing clip per word, from ../shared or synthetic."""
    root = tmp_path_factory.mktemp("tiny_speech_commands")
    rng = np.random.default_rng(0)
    val, test = [], []
    for index, word in enumerate((*KEYWORDS, *OTHER_WORDS, "_silence_")):
        for i in range(6):
            name = f"{word}/s{index:02d}x{i}_nohash_0.wav"
            if SPEECH_COMMANDS.is_dir():
                source = sorted((SPEECH_COMMANDS / word).glob("*.flac"))[i]
                audio, rate = soundfile.read(str(source), dtype="float32")
                name = f"{word}/{source.stem}.wav"
            else:
                audio, rate = _synthetic_word(rng, index, 16000), 16000
            _write(root / name, audio, rate)  # WAV at the file's rate: any format and rate must work
            if word != "_silence_":
                (val if i == 4 else test if i == 5 else []).append(name)
    (root / "validation_list.txt").write_text("\n".join(val) + "\n")
    (root / "testing_list.txt").write_text("\n".join(test) + "\n")
    noise = rng.normal(0, 0.05, SAMPLE_RATE * 12).astype(np.float32)
    _write(root / "_background_noise_" / "white.wav", noise)
    return root


@pytest.fixture(scope="module")
def tiny_negatives(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("negatives")
    files = sorted(NEGATIVES.glob("*.flac"))[:12] if NEGATIVES.is_dir() else []
    for i, path in enumerate(files):
        audio, rate = soundfile.read(str(path), dtype="float32")
        _write(root / f"{i}-1-0000.flac", audio[: rate * 4], rate)
    if not files:
        rng = np.random.default_rng(5)
        for i in range(12):
            _write(root / f"{i}-1-0000.flac", rng.normal(0, 0.1, SAMPLE_RATE * 4).astype(np.float32))
    return root


def test_scan_splits_by_list_and_labels(tiny_data: Path):
    data = scan(tiny_data)
    listed = [c for c in data.clips["validation"] if c.label != "_silence_"]  # _silence_ is split by hash
    assert len(listed) == len(KEYWORDS) + len(OTHER_WORDS)
    labels = {c.label for c in data.clips["train"]}
    assert labels <= set(LABELS) and "_unknown_" in labels and "yes" in labels
    assert all(c.word in OTHER_WORDS for c in data.clips["train"] if c.label == "_unknown_")
    assert len(data.noise_files) == 1


def test_which_set_is_stable_and_ignores_the_utterance_number():
    assert which_set("abc_nohash_0.wav") == which_set("abc_nohash_3.wav")
    shares = [which_set(f"speaker{i}_nohash_0.wav") for i in range(2000)]
    assert 0.07 < shares.count("testing") / 2000 < 0.13


def test_bad_input_names_the_culprit(tmp_path: Path):
    with pytest.raises(KwspotError, match="no such data folder"):
        scan(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(KwspotError, match="no WAV or FLAC clips"):
        scan(tmp_path / "empty")


def test_cache_is_int16_seconds_and_reused(tiny_data: Path, tmp_path: Path):
    data = scan(tiny_data)
    paths = [c.path for c in data.clips["train"]][:5]
    first = clip_windows(paths, tmp_path)
    assert first.shape == (5, SAMPLE_RATE) and first.dtype == np.int16
    assert len(list(tmp_path.glob("clips-*.npy"))) == 1
    np.testing.assert_array_equal(clip_windows(paths, tmp_path), first)


def test_epoch_plan_balances_classes_and_batches_are_windows(tiny_data: Path, tmp_path: Path):
    data = scan(tiny_data)
    clips = data.clips["train"]
    windows = clip_windows([c.path for c in clips], tmp_path)
    labels = data.label_indices("train")
    noise = [np.random.default_rng(0).normal(0, 0.05, SAMPLE_RATE * 5).astype(np.float32)]
    src = Sources(windows, labels, noise, [])
    rng = np.random.default_rng(0)
    plan = epoch_plan(src, AugmentSettings(), rng)
    counts = np.bincount(plan[:, 2], minlength=len(LABELS))
    per_keyword = counts[[LABELS.index(k) for k in KEYWORDS]]
    assert per_keyword.min() == per_keyword.max()
    assert counts[LABELS.index("_unknown_")] >= 1.5 * per_keyword[0]
    assert (plan[plan[:, 0] == FRAGMENT, 2] == LABELS.index("_unknown_")).all()
    x, y = make_batch(src, plan[:32], AugmentSettings(), rng)
    assert x.shape == (32, SAMPLE_RATE) and x.dtype == np.float32 and np.abs(x).max() <= 1.0
    np.testing.assert_array_equal(y, plan[:32, 2])


def _batch_of_one_word(start: int, stop: int, hz: float, settings: AugmentSettings, repeats: int,
                       speech: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``repeats`` passes over four copies of one ``yes`` clip (a tone over samples [start, stop)), the noise
    recordings silent; the batch and the int16 clip."""
    word = np.zeros(SAMPLE_RATE, np.float32)
    word[start:stop] = 0.3 * np.sin(2 * np.pi * hz * np.arange(stop - start) / SAMPLE_RATE)
    clips = (np.stack([word] * 4) * 32767).astype(np.int16)
    labels = np.full(4, LABELS.index("yes"))
    src = Sources(clips, labels, [np.zeros(SAMPLE_RATE * 5, np.float32)], speech or [])
    plan = np.array([[0, i, labels[i]] for i in range(4)] * repeats)
    return make_batch(src, plan, settings, np.random.default_rng(0))[0], clips[0]


def test_at_speed_changes_tempo_and_pitch_together_and_moves_the_bounds():
    from kwspot.train.augment import at_speed

    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    clip = np.where((t >= 0.25) & (t < 0.75), 0.3 * np.sin(2 * np.pi * 1000 * t), 0).astype(np.float32)
    for speed in (0.85, 1.15):
        out, s, e = at_speed(clip, 2000, 6000, speed)
        assert abs(len(out) - SAMPLE_RATE / speed) <= 2
        assert abs(s - 2000 / speed) <= 1 and abs(e - 6000 / speed) <= 1
        spoken = out[s + 200 : e - 200]
        peak_hz = np.argmax(np.abs(np.fft.rfft(spoken))) * SAMPLE_RATE / len(spoken)
        assert abs(peak_hz - 1000 * speed) < 15
        assert np.abs(out[: s - 100]).max() < 0.01 and np.abs(out[e + 100 :]).max() < 0.01
    out, s, e = at_speed(np.ones(SAMPLE_RATE, np.float32) * 0.1, 0, SAMPLE_RATE, 0.8)  # slowed past a second
    assert e - s == SAMPLE_RATE


@pytest.mark.parametrize("speed", [0.0, 1.0])
def test_speed_keeps_the_spoken_part_whole_inside_the_window(speed: float):
    """--speed: every example still holds the whole word, now longer or shorter; without it, nothing changes."""
    settings = AugmentSettings(noise_prob=0.0, gain_db=(0.0, 0.0), speed_prob=speed)
    x, _ = _batch_of_one_word(1000, 7000, 500.0, settings, repeats=25)
    frames = np.sqrt(np.mean(x.reshape(len(x), -1, 80) ** 2, axis=2))  # 10 ms frames
    sounding = (frames > 0.05).sum(axis=1) / 100
    if not speed:
        assert np.allclose(sounding, 0.75, atol=0.01)
        return
    assert sounding.min() > 0.75 / 1.15 - 0.01 and sounding.max() < 0.75 / 0.85 + 0.01 and np.ptp(sounding) > 0.1


@pytest.mark.parametrize("babble", [0.0, 1.0])
def test_babble_puts_continuous_speech_under_the_words_at_5_to_25_db(babble: float):
    """--babble: the noise under an example is a second of the speech recordings instead of the noise ones."""
    talk = 0.05 * np.sin(2 * np.pi * 1500 * np.arange(SAMPLE_RATE * 5) / SAMPLE_RATE)  # stands in for other talk
    settings = AugmentSettings(noise_prob=1.0, babble_prob=babble, gain_db=(0.0, 0.0), shift=False)
    x, clip = _batch_of_one_word(2000, 6000, 440.0, settings, repeats=10, speech=[talk.astype(np.float32)])
    word = clip.astype(np.float32) / 32768
    under = x - word  # what was mixed under the word
    if not babble:  # the noise recordings here are silent
        assert np.abs(under).max() < 1e-4
        return
    assert (np.argmax(np.abs(np.fft.rfft(under, axis=1)), axis=1) == 1500).all()  # 1 Hz bins: the talk
    snr = 20 * np.log10(np.sqrt(np.mean(word[2000:6000] ** 2)) / np.sqrt(np.mean(under ** 2, axis=1)))
    assert (snr > 4.0).all() and (snr < 26.0).all() and np.ptp(snr) > 5.0


@pytest.mark.skipif(not HAVE_TF, reason="TensorFlow not installed (pip install 'kwspot[train]')")
@pytest.mark.parametrize("arch, warp", [("default", 0.0), ("workshop", 0.0), ("default", 0.1)])
def test_litert_export_matches_keras(arch: str, warp: float):
    from kwspot.train import models
    from kwspot.train.export import convert, litert_predict

    model = models.build(arch, seed=0, warp=warp)
    x = np.random.default_rng(1).normal(0, 0.1, (4, SAMPLE_RATE)).astype(np.float32)
    models.set_normalisation(model, [x])
    keras_probs = np.asarray(model.predict_on_batch(x))
    np.testing.assert_allclose(litert_predict(convert(model, quantise=False), x), keras_probs, atol=1e-4)
    np.testing.assert_allclose(litert_predict(convert(model, quantise=True), x), keras_probs, atol=0.05)


@pytest.mark.skipif(not HAVE_TF, reason="TensorFlow not installed (pip install 'kwspot[train]')")
def test_band_warp_moves_each_windows_spectrum_by_its_own_factor_and_only_while_training():
    from kwspot.train import models

    layer = models.warp_layer_class()(amount=0.2, seed=0)
    x = np.zeros((64, models.FRAMES, models.MELS), np.float32)
    x[:, :, 20] = 1.0  # a formant at band 20 in every window
    assert np.array_equal(np.asarray(layer(x, training=False)), x)
    out = np.asarray(layer(x, training=True))
    peaks = out.mean(axis=1).argmax(axis=1)
    assert peaks.min() < 20 < peaks.max()  # squeezed in some windows, stretched in others
    assert np.all(np.abs(peaks - 20) <= 20 * 0.2 + 2)  # by at most the amount (mel bands are wider up high)
    assert np.allclose(out.sum(axis=2), out.sum(axis=2)[:, :1])  # the same factor for every frame of a window
    assert len({round(float(v), 4) for v in out.sum(axis=(1, 2))}) > 10  # a factor of its own for each window
    with pytest.raises(ValueError, match="no log-mel front end"):
        models.build("workshop", warp=0.1)


@pytest.mark.skipif(not HAVE_TF, reason="TensorFlow not installed (pip install 'kwspot[train]')")
@pytest.mark.parametrize("arch", ["default", "dstcn"])
def test_width_multiplies_the_channels_and_roughly_squares_the_cost(arch: str):
    from kwspot.train import models

    base, wide = models.build(arch, seed=0), models.build(arch, seed=0, width=2.0)
    assert {layer.filters for layer in wide.layers if hasattr(layer, "filters")} == {
        2 * layer.filters for layer in base.layers if hasattr(layer, "filters")}
    ratio = models.count_macs(wide)["network"] / models.count_macs(base)["network"]
    assert 3.0 < ratio < 4.2
    with pytest.raises(ValueError, match="workshop"):
        models.build("workshop", width=1.5)


@pytest.mark.skipif(not HAVE_TF, reason="TensorFlow not installed (pip install 'kwspot[train]')")
def test_train_one_epoch_end_to_end(tiny_data: Path, tiny_negatives: Path, tmp_path: Path):
    from kwspot.model import Model
    from kwspot.train import command

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    out = tmp_path / "models" / "tiny"
    args = parser.parse_args(["--data", str(tiny_data), "--out", str(out), "--epochs", "1", "--seed", "3",
                              "--negatives", str(tiny_negatives), "--cache", str(tmp_path / "cache")])
    assert command.run(args) == 0
    for suffix in (".tflite", ".json", ".md", ".csv"):
        assert out.with_suffix(suffix).is_file(), suffix
    model = Model(out.with_suffix(".tflite"))
    assert model.labels == list(LABELS)
    probs = model.predict(np.zeros(SAMPLE_RATE, np.float32))
    assert probs.shape == (12,) and probs.sum() == pytest.approx(1.0, abs=1e-3)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["arch"] == "default" and meta["macs"]["total"] <= 11_000_000
    assert "testing" in meta["clip_metrics"]
    assert len(out.with_suffix(".csv").read_text().splitlines()) == 2


@pytest.mark.skipif(not HAVE_TF, reason="TensorFlow not installed (pip install 'kwspot[train]')")
@pytest.mark.skipif(shutil.which("flite") is None, reason="flite not installed (apt-get install flite)")
def test_train_with_flite_adds_its_voices_on_both_sides_of_the_labels(tiny_data: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch, capsys):
    from kwspot.train import command, flite

    monkeypatch.setenv("KWSPOT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(flite, "NEAR_MISSES", ("yet",))
    monkeypatch.setattr(flite, "OTHER_WORDS", ("water",))
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    out = tmp_path / "models" / "tiny"
    args = parser.parse_args(["--data", str(tiny_data), "--out", str(out), "--epochs", "1", "--flite", "2",
                              "--cache", str(tmp_path / "cache")])
    assert command.run(args) == 0
    voices = len(flite.VOICES)
    assert f"flite: {2 * voices * flite.NEGATIVE_TAKES} negatives, {2 * voices * len(KEYWORDS)} positives" \
        in capsys.readouterr().err
    assert json.loads(out.with_suffix(".json").read_text())["training"]["flite"] == 2
    assert "flite positives 2 a voice" in out.with_suffix(".md").read_text()


def test_train_without_tensorflow_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch):
    import builtins

    real_import = builtins.__import__

    def no_tf(name: str, *args, **kwargs):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tf)
    from kwspot.train import require_tensorflow

    with pytest.raises(KwspotError, match=r"pip install 'kwspot\[train\]'"):
        require_tensorflow()


def test_teachers_soften_the_labels_by_their_mean_probabilities():
    from kwspot.model import Model, bundled_model_path
    from kwspot.train.distill import Teachers

    path = bundled_model_path()
    rng = np.random.default_rng(2)
    x = rng.normal(0, 0.05, (3, SAMPLE_RATE)).astype(np.float32)
    y = np.array([0, 5, 11])
    teacher = np.stack([Model(path).predict(w) for w in x])
    both = Teachers([path, path], LABELS, 0.25, SAMPLE_RATE)
    np.testing.assert_allclose(both.probabilities(x), teacher, atol=1e-6)  # two equal teachers: their own answer
    targets = both.targets(x, np.eye(12)[y])
    np.testing.assert_allclose(targets, 0.75 * np.eye(12)[y] + 0.25 * teacher, atol=1e-6)
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(Teachers([path], LABELS, 0.0, SAMPLE_RATE).targets(x, np.eye(12)[y]), np.eye(12)[y])


def test_a_teacher_with_other_labels_or_window_is_refused_by_name():
    from kwspot.model import bundled_model_path
    from kwspot.train.distill import Teachers

    with pytest.raises(KwspotError, match=r"kwspot\.tflite: teacher labels .* differ"):
        Teachers([bundled_model_path()], list(reversed(LABELS)), 0.5, SAMPLE_RATE)
    with pytest.raises(KwspotError, match=r"kwspot\.tflite: teacher window of 8000 samples"):
        Teachers([bundled_model_path()], LABELS, 0.5, 2 * SAMPLE_RATE)


def test_plain_labels_stay_integers_and_draw_no_random_number():
    from kwspot.train.loop import LoopSettings, batch_targets

    rng = np.random.default_rng(3)
    x, y = np.ones((4, 8), np.float32), np.array([0, 2, 5, 11])
    state = rng.bit_generator.state
    out_x, target = batch_targets(x, y, 12, LoopSettings(), rng)
    assert out_x is x and target is y and rng.bit_generator.state == state


def test_label_smoothing_spreads_a_share_of_each_target_over_all_labels():
    from kwspot.train.loop import LoopSettings, batch_targets

    y = np.array([0, 7])
    _, target = batch_targets(np.zeros((2, 8), np.float32), y, 12, LoopSettings(label_smoothing=0.12),
                              np.random.default_rng(0))
    expected = np.full((2, 12), 0.01)
    expected[[0, 1], y] = 0.89
    np.testing.assert_allclose(target, expected, atol=1e-6)


def test_mixup_mixes_windows_and_targets_with_the_same_weight_and_keeps_its_own_label_dominant():
    from kwspot.train.loop import LoopSettings, batch_targets

    rng = np.random.default_rng(4)
    n = 64
    y = np.arange(n) % 12
    x = np.eye(n, dtype=np.float32)  # window i is a spike at sample i: its mix shows who it was mixed with
    mixed, target = batch_targets(x, y, 12, LoopSettings(mixup=0.4), rng)
    np.testing.assert_allclose(target.sum(axis=1), 1.0, atol=1e-6)
    own = mixed[np.arange(n), np.arange(n)]
    assert np.all(own >= 0.5) and np.any(own < 0.9)  # its own window dominates; some are really mixed
    for i in range(n):
        other = [j for j in np.flatnonzero(mixed[i]) if j != i]
        partner = y[other[0]] if other else y[i]
        expected = np.zeros(12)
        expected[y[i]] += mixed[i, i]
        expected[partner] += 1.0 - mixed[i, i]
        np.testing.assert_allclose(target[i], expected, atol=1e-5)


class _LoudnessModel:
    """Stands in for a Keras model: takes louder windows more for ``yes``; keeps what it was asked."""

    def predict_on_batch(self, x: np.ndarray) -> np.ndarray:
        self.seen = x
        p = np.zeros((len(x), len(LABELS)), np.float32)
        p[:, LABELS.index("yes")] = np.sqrt(np.mean(x**2, axis=1))
        return p


class _Weights:
    """A stand-in model: just weights to get and set."""

    def __init__(self, *arrays: np.ndarray) -> None:
        self.arrays = [np.array(a, np.float32) for a in arrays]

    def get_weights(self) -> list[np.ndarray]:
        return [a.copy() for a in self.arrays]

    def set_weights(self, arrays: list[np.ndarray]) -> None:
        self.arrays = [np.array(a, np.float32) for a in arrays]


def test_the_weight_average_follows_the_weights_slowly_and_is_worn_only_inside_its_block():
    from kwspot.train.loop import WeightAverage

    model = _Weights([0.0, 0.0], [[1.0]])
    average = WeightAverage(model, decay=0.9)
    model.arrays = [np.array([10.0, 10.0], np.float32), np.array([[1.0]], np.float32)]
    average.update(model)  # decay min(0.9, 2/11): the first steps follow quickly
    assert average.weights[0] == pytest.approx([10.0 * (1 - 2 / 11)] * 2)
    for _ in range(200):
        average.update(model)
    assert average.weights[0] == pytest.approx([10.0, 10.0], abs=1e-3)
    assert average.weights[1][0, 0] == pytest.approx(1.0)
    model.arrays[0] = np.array([20.0, 20.0], np.float32)
    average.update(model)  # now at the full decay: a tenth of the way
    assert average.weights[0] == pytest.approx([11.0, 11.0], abs=1e-3)
    with average.applied(model):
        assert model.arrays[0] == pytest.approx([11.0, 11.0], abs=1e-3)
    assert model.arrays[0] == pytest.approx([20.0, 20.0])


def test_worst_of_keeps_the_negative_draw_most_like_a_command_and_leaves_positives_alone():
    from kwspot.train.augment import SPEECH
    from kwspot.train.loop import worst_negatives

    rng = np.random.default_rng(0)
    speech = [(np.sin(np.arange(SAMPLE_RATE * 20) / 4000.0) ** 2 * rng.normal(0, 0.2, SAMPLE_RATE * 20))
              .astype(np.float32)]  # loud and quiet stretches: draws differ
    clips = (rng.normal(0, 0.1, (2, SAMPLE_RATE)) * 32767).astype(np.int16)
    src = Sources(clips, np.full(2, LABELS.index("yes")), [np.zeros(SAMPLE_RATE * 5, np.float32)], speech)
    unknown = LABELS.index("_unknown_")
    rows = np.array([[0, 0, LABELS.index("yes")], [SPEECH, 11, unknown], [0, 1, LABELS.index("yes")],
                     [SPEECH, 12, unknown], [SPEECH, 13, unknown]])
    settings = AugmentSettings(noise_prob=0.0)
    x, _ = make_batch(src, rows, settings, rng)
    model = _LoudnessModel()
    out = worst_negatives(model, src, rows, x, settings, 5, rng)
    negative = [1, 3, 4]
    candidates = model.seen.reshape(5, 3, SAMPLE_RATE)
    np.testing.assert_array_equal(candidates[0], x[negative])  # the batch's own draw is one of the five
    loudness = np.sqrt(np.mean(candidates**2, axis=2))
    np.testing.assert_array_equal(out[negative], candidates[loudness.argmax(axis=0), np.arange(3)])
    np.testing.assert_array_equal(out[[0, 2]], x[[0, 2]])
    assert (loudness.max(axis=0) > loudness[0]).any()  # the choice made a difference


@pytest.mark.skipif(not HAVE_TF, reason="TensorFlow (the train extra) is not installed")
def test_train_distils_from_a_teacher_end_to_end(tiny_data: Path, tmp_path: Path):
    """With label smoothing and mixup on top (all three soft targets), and the worst of three negative draws,
    through one real epoch."""
    from kwspot.model import bundled_model_path
    from kwspot.train import command

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    out = tmp_path / "student"
    args = parser.parse_args(["--data", str(tiny_data), "--out", str(out), "--epochs", "1",
                              "--teacher", str(bundled_model_path()), "--distill-weight", "0.3",
                              "--label-smoothing", "0.1", "--mixup", "0.2", "--worst-of", "3", "--ema", "0.99",
                              "--cache", str(tmp_path / "cache")])
    assert command.run(args) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["training"]["teacher"] == [str(bundled_model_path())] and meta["training"]["distill_weight"] == 0.3
    training = meta["training"]
    settings = (training["label_smoothing"], training["mixup"], training["worst_of"], training["ema"])
    assert settings == (0.1, 0.2, 3, 0.99)
    card = out.with_suffix(".md").read_text()
    assert "distilled from" in card and "weights averaged (decay 0.99)" in card


@pytest.mark.parametrize("out,needle", [
    ("/proc/no-such-dir/model", "cannot make the output folder"),
    (".", "a directory; --out is a file stem"),
])
def test_a_bad_output_stem_fails_before_any_work(out, needle, tmp_path, capsys, monkeypatch):
    """Not a traceback after an hour of training, when the model is written: one line, at once."""
    from kwspot.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data", str(tmp_path / "not-even-scanned"), "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err, err


def test_a_second_training_into_the_same_model_is_refused_while_the_first_runs(tmp_path, capsys, monkeypatch):
    from kwspot.cli import main
    from kwspot.train.command import _claim

    monkeypatch.setenv("KWSPOT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    out = tmp_path / "models" / "mine"
    args = ["train", "--data", str(tmp_path / "not-even-scanned"), "--out"]
    with _claim(out, tmp_path / "cache"):  # as a running training holds it
        assert main([*args, str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "mine: another kwspot train is writing this model now" in err, err
        assert main([*args, str(tmp_path / "models" / "other")]) == 2  # another model: on to the data, not there
        assert "not-even-scanned" in capsys.readouterr().err
    assert main([*args, str(out)]) == 2  # the first one ended: the lock is gone with it
    assert "not-even-scanned" in capsys.readouterr().err


def test_a_width_for_the_workshop_architecture_is_one_line_before_any_work(tmp_path, capsys):
    from kwspot.cli import main

    args = ["train", "--data", str(tmp_path / "not-even-scanned"), "--out", str(tmp_path / "m")]
    assert main([*args, "--arch", "workshop", "--width", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--width" in err and "workshop" in err, err
    assert main([*args, "--arch", "workshop", "--warp", "0.1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--warp: the workshop architecture has no log-mel front end" in err, err
    with pytest.raises(SystemExit) as stop:
        main([*args, "--width", "0.1"])
    assert stop.value.code == 2 and "--width" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["npz", "object array", "float windows", "text"])
def test_hard_negatives_that_are_not_int16_windows_are_one_line(kind, tmp_path):
    from kwspot.train.command import _load_windows

    path = tmp_path / ("h.npz" if kind == "npz" else "h.npy")
    if kind == "npz":
        np.savez(path, windows=np.zeros((2, 8000), np.int16))
    elif kind == "object array":
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif kind == "float windows":
        np.save(path, np.zeros((2, 8000), np.float32))
    else:
        path.write_text("not numpy\n")
    with pytest.raises(KwspotError, match=r"h\.np[yz]: (unreadable hard negatives|hard negatives must be)") as error:
        _load_windows(path)
    assert "\n" not in str(error.value)


@pytest.mark.skipif(not HAVE_TF, reason="TensorFlow not installed (pip install 'kwspot[train]')")
@pytest.mark.parametrize("at_epoch", [1, 3])
def test_ctrl_c_keeps_the_best_epoch_so_far(tiny_data: Path, tmp_path: Path, monkeypatch, at_epoch: int):
    """Ctrl-C during a long run stops training and keeps the best epoch, unless no epoch has finished."""
    from rich.console import Console

    from kwspot.train import loop, models

    real_epoch = loop._epoch

    def epoch_or_ctrl_c(*args):
        if args[5] == at_epoch:  # the epoch number
            raise KeyboardInterrupt
        return real_epoch(*args)

    monkeypatch.setattr(loop, "_epoch", epoch_or_ctrl_c)
    data = scan(tiny_data)
    windows = clip_windows([c.path for c in data.clips["train"]], tmp_path / "cache")
    src = Sources(windows, data.label_indices("train"), [], [])
    val = (windows[:8].astype(np.float32) / 32768, data.label_indices("train")[:8])
    model = models.build("default", n_labels=len(LABELS))
    settings = loop.LoopSettings(epochs=5, batch=16)
    run = lambda: loop.train(model, src, val, AugmentSettings(), settings, tmp_path / "log.csv",  # noqa: E731
                             Console(file=open(os.devnull, "w")))
    if at_epoch == 1:
        with pytest.raises(KeyboardInterrupt):
            run()
    else:
        best = run()
        assert best["interrupted"] and best["epochs_run"] == 2 and 1 <= best["epoch"] <= 2
        assert len((tmp_path / "log.csv").read_text().splitlines()) == 3  # header and the two finished epochs


@pytest.mark.parametrize("text,expected", [("0,25", (0.0, 25.0)), ("-5,25", (-5.0, 25.0)), ("10,10", (10.0, 10.0))])
def test_snr_range_is_low_then_high_in_decibels(text: str, expected: tuple[float, float]):
    from kwspot.train.command import SNR_RANGE

    assert SNR_RANGE(text) == expected


@pytest.mark.parametrize("text", ["25,0", "5", "a,b", "-40,0", "0,nan", "0,inf", "1,2,3"])
def test_a_bad_snr_range_is_refused_with_what_was_given(text: str):
    import argparse

    from kwspot.train.command import SNR_RANGE

    with pytest.raises(argparse.ArgumentTypeError, match="LOW"):
        SNR_RANGE(text)
