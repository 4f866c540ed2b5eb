"""Defects of ``kwspot train``, ``evaluate`` and ``predict`` found by a hostile tester (report h2), fixed.

Tiny synthetic data only; nothing here needs TensorFlow except the one end-to-end run, skipped without it.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from conftest import run_kwspot
from kwspot.errors import KwspotError
from kwspot.model import bundled_model_path

HAVE_TF = importlib.util.find_spec("tensorflow") is not None
WORDS = ("yes", "no", "other")


def _strict(text: str) -> object:
    """JSON as JavaScript or Go read it: NaN and Infinity are errors."""
    def refuse(name: str) -> None:
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def _make_data(root: Path, words: tuple[str, ...] = WORDS, n: int = 3) -> Path:
    """A Speech Commands layout: ``n`` clips a word; clip 0 listed for validation, clip 1 for testing."""
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    for index, word in enumerate(words):
        (root / word).mkdir(parents=True)
        for i in range(n):
            tone = 0.3 * np.sin(2 * np.pi * (200 + 80 * index) * t) * np.exp(-(((t - 0.5) / 0.15) ** 2))
            x = tone + 0.01 * rng.standard_normal(t.size)
            soundfile.write(str(root / word / f"spk{i}_nohash_0.wav"), x.astype(np.float32), 16000, subtype="PCM_16")
    (root / "validation_list.txt").write_text("".join(f"{w}/spk0_nohash_0.wav\n" for w in words))
    (root / "testing_list.txt").write_text("".join(f"{w}/spk1_nohash_0.wav\n" for w in words)
                                           + "other/spk2_nohash_0.wav\n")
    return root


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    return _make_data(tmp_path / "d1")


@pytest.fixture()
def model_copy(tmp_path: Path) -> Path:
    """The bundled model and its sidecar, copied where they may be changed."""
    folder = tmp_path / "m"
    folder.mkdir()
    src = bundled_model_path()
    shutil.copy(src, folder / "m.tflite")
    shutil.copy(src.with_suffix(".json"), folder / "m.json")
    return folder / "m.tflite"


def _kwspot(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    from kwspot.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _one_line(err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture()
def no_tensorflow(monkeypatch: pytest.MonkeyPatch) -> None:
    """``train`` refuses before TensorFlow loads: loading it here is a failure, not a slow test."""
    import kwspot.train
    import kwspot.train.export
    import kwspot.train.loop
    import kwspot.train.models  # noqa: F401 - bound to the real function before the patch, so it does not leak

    def loaded() -> None:
        raise KwspotError("TensorFlow would load now")

    monkeypatch.setattr(kwspot.train, "require_tensorflow", loaded)


# 2: an interrupted decode leaves no partial cache file


@pytest.mark.parametrize("stop", [KeyboardInterrupt, KwspotError])
def test_an_interrupted_clip_decode_leaves_no_partial_file(stop, data: Path, tmp_path: Path, monkeypatch):
    import kwspot.train.data as data_module

    real, calls = data_module.load_audio, []

    def then_stop(path):
        calls.append(path)
        if len(calls) == 2:
            raise stop("stop")
        return real(path)

    monkeypatch.setattr(data_module, "load_audio", then_stop)
    cache = tmp_path / "cache"
    with pytest.raises(stop):
        data_module.clip_windows(sorted(data.glob("*/*.wav")), cache)
    assert list(cache.iterdir()) == []


def test_a_full_cache_disk_is_one_line_and_leaves_no_file(data: Path, tmp_path: Path, monkeypatch):
    """The cache file is allocated whole before it is mapped: no SIGBUS when the disk fills mid-write."""
    import errno

    import kwspot.train.data as data_module

    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(data_module.os, "posix_fallocate", full)
    cache = tmp_path / "cache"
    with pytest.raises(KwspotError, match="cache: no room for the clip cache \\(No space left on device\\)"):
        data_module.clip_windows(sorted(data.glob("*/*.wav")), cache)
    assert list(cache.iterdir()) == []


@pytest.mark.parametrize("damage", ["cut", "garbage", "other shape"])
def test_a_damaged_clip_cache_is_made_again(damage: str, data: Path, tmp_path: Path, caplog):
    import kwspot.train.data as data_module

    paths = sorted(data.glob("*/*.wav"))
    first = np.array(data_module.clip_windows(paths, tmp_path))
    (cached,) = tmp_path.glob("clips-*.npy")
    if damage == "cut":
        cached.write_bytes(cached.read_bytes()[:1000])
    elif damage == "garbage":
        cached.write_text("x\n")
    else:
        np.save(cached, np.zeros((2, 3), np.int16))
    np.testing.assert_array_equal(data_module.clip_windows(paths, tmp_path), first)
    assert "damaged clip cache, made again" in caplog.text


def test_a_folder_where_the_clip_cache_goes_is_one_line(data: Path, tmp_path: Path):
    import kwspot.train.data as data_module

    paths = sorted(data.glob("*/*.wav"))
    data_module.clip_windows(paths, tmp_path)
    (cached,) = tmp_path.glob("clips-*.npy")
    cached.unlink()
    cached.mkdir()
    with pytest.raises(KwspotError, match="a directory, not a cache file, where the clip cache goes; remove it"):
        data_module.clip_windows(paths, tmp_path)


SIGTERM_SCRIPT = """
import os, signal, sys
from pathlib import Path
import kwspot.train.data as data
real, calls = data.load_audio, []
def then_term(path):
    calls.append(path)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGTERM)
    return real(path)
data.load_audio = then_term
data.clip_windows([Path(p) for p in sys.argv[2:]], Path(sys.argv[1]))
"""


def test_sigterm_during_clip_decode_leaves_no_partial_file(data: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    files = [str(p) for p in sorted(data.glob("*/*.wav"))]
    result = subprocess.run([sys.executable, "-c", SIGTERM_SCRIPT, str(cache), *files],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 128 + signal.SIGTERM, result
    assert "Traceback" not in result.stderr
    assert list(cache.iterdir()) == []


# 8: an unusable cache folder is one line, before any work (in train: before TensorFlow)


def _bad_cache(tmp_path: Path, kind: str) -> Path:
    (tmp_path / "cachefile").write_text("")
    return tmp_path / "cachefile" if kind == "a file" else tmp_path / "cachefile" / "sub"


@pytest.mark.parametrize("kind", ["a file", "under a file"])
def test_an_unusable_cache_folder_is_one_line_in_evaluate(kind, tmp_path: Path, capsys):
    cache = _bad_cache(tmp_path, kind)
    code, _, err = _kwspot(capsys, "evaluate", "--data", str(tmp_path / "not-scanned"), "--cache", str(cache))
    assert code == 2
    _one_line(err, f"{cache}: cache folder not writable (")


def test_an_unusable_cache_folder_from_the_environment_is_one_line(tmp_path: Path, capsys, monkeypatch):
    cache = _bad_cache(tmp_path, "under a file")
    monkeypatch.setenv("KWSPOT_CACHE", str(cache))
    code, _, err = _kwspot(capsys, "evaluate", "--data", str(tmp_path / "not-scanned"))
    assert code == 2
    _one_line(err, f"{cache}: cache folder not writable (Not a directory)")


@pytest.mark.parametrize("kind", ["a file", "under a file"])
def test_an_unusable_cache_folder_is_one_line_in_train(kind, data: Path, tmp_path: Path, capsys, no_tensorflow):
    cache = _bad_cache(tmp_path, kind)
    code, _, err = _kwspot(capsys, "train", "--data", str(data), "--out", str(tmp_path / "out" / "m"),
                           "--keywords", "yes,no", "--cache", str(cache))
    assert code == 2
    _one_line(err, f"{cache}: cache folder not writable (")


def test_a_writable_cache_folder_is_made_and_kept(tmp_path: Path):
    from kwspot.train.data import writable_cache

    assert writable_cache(tmp_path / "new" / "cache") == tmp_path / "new" / "cache"
    assert list((tmp_path / "new" / "cache").iterdir()) == []  # the probe leaves nothing behind


# 9: a clip list that is not UTF-8 names its file and line


@pytest.mark.parametrize("name", ["validation_list.txt", "testing_list.txt"])
def test_a_list_that_is_not_utf8_names_the_file_and_line(name, data: Path, capsys):
    from kwspot.train.data import scan

    (data / name).write_bytes(b"yes/spk1_nohash_0.wav\nno/\xe9t\xe9.wav\n")
    with pytest.raises(KwspotError, match=rf"{name}: not UTF-8 text \(line 2\)$"):
        scan(data, keywords=("yes", "no"))
    code, _, err = _kwspot(capsys, "evaluate", "--data", str(data), "--cache", str(data.parent / "cache"))
    assert code == 2
    _one_line(err, f"{data / name}: not UTF-8 text (line 2)")


# 11: train refuses a keyword with no clip in the training split


def test_train_refuses_a_keyword_with_no_training_clips(data: Path, tmp_path: Path, capsys, no_tensorflow):
    with (data / "testing_list.txt").open("a") as f:
        f.write("".join(f"no/spk{i}_nohash_0.wav\n" for i in range(3)))
    code, _, err = _kwspot(capsys, "train", "--data", str(data), "--out", str(tmp_path / "out" / "m"),
                           "--keywords", "yes,no", "--cache", str(tmp_path / "cache"))
    assert code == 2
    _one_line(err, f"{data}: no training clips for keyword(s) no")


def test_train_refuses_data_without_validation_clips(data: Path, tmp_path: Path, capsys, no_tensorflow):
    (data / "validation_list.txt").unlink(missing_ok=True)
    code, _, err = _kwspot(capsys, "train", "--data", str(data), "--out", str(tmp_path / "out" / "m"),
                           "--keywords", "yes,no", "--cache", str(tmp_path / "cache"))
    assert code == 2
    _one_line(err, f"{data}: no validation clips")


def test_a_clip_list_over_the_size_limit_is_one_line(data: Path, capsys, monkeypatch):
    monkeypatch.setattr("kwspot.train.data.MAX_LIST_BYTES", 1 << 20)
    (data / "testing_list.txt").write_text("yes/spk1_nohash_0.wav\n" * 50000)  # 1.1 MB
    code, _, err = _kwspot(capsys, "evaluate", "--data", str(data), "--cache", str(data.parent / "cache"))
    assert code == 2
    _one_line(err, f"{data / 'testing_list.txt'}: over 1 MiB: not a list of clips")


# 12: an output stem with a dot in it is kept whole


def test_stem_file_appends_the_suffix():
    from kwspot.train.export import stem_file

    assert stem_file(Path("out/base.v2"), ".tflite") == Path("out/base.v2.tflite")
    assert stem_file(Path("out/base"), ".csv") == Path("out/base.csv")


def _export_without_tensorflow(monkeypatch) -> tuple[bytes, dict]:
    """``export.export`` with the bundled model standing in for the converted network: (its bytes, its sidecar)."""
    from kwspot.train import export

    lite = bundled_model_path().read_bytes()
    meta = json.loads(bundled_model_path().with_suffix(".json").read_text())
    monkeypatch.setattr(export, "feature_network", lambda model: None)
    monkeypatch.setattr(export, "convert", lambda model, quantise: lite)
    monkeypatch.setattr(export, "litert_predict", lambda flatbuffer, x: np.eye(12, dtype=np.float32)[:2])
    return lite, meta


def test_export_keeps_a_dotted_stem_whole(tmp_path: Path, monkeypatch):
    from kwspot.train import export

    lite, meta = _export_without_tensorflow(monkeypatch)
    monkeypatch.setattr(export, "ms_per_window", lambda path: 0.5)
    (tmp_path / "base.tflite").write_bytes(b"the other model")
    export.export(object(), tmp_path / "base.v2", np.zeros((2, 8000), np.float32), np.arange(2), meta)
    assert (tmp_path / "base.v2.tflite").read_bytes() == lite
    assert json.loads((tmp_path / "base.v2.json").read_text())["export"]["ms_per_window"] == 0.5
    assert (tmp_path / "base.tflite").read_bytes() == b"the other model"
    assert not (tmp_path / "base.json").exists()


@pytest.mark.skipif(not HAVE_TF, reason="TensorFlow not installed (pip install 'kwspot[train]')")
def test_train_keeps_a_dotted_stem_whole(data: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    code, _, err = _kwspot(capsys, "train", "--data", str(data), "--out", str(out / "base.v2"), "--keywords",
                           "yes,no", "--epochs", "1", "--arch", "workshop", "--cache", str(tmp_path / "cache"))
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [f"base.v2.{s}" for s in ("csv", "json", "md", "tflite")]
    assert "# Model card: base.v2 " in (out / "base.v2.md").read_text()


# 16: clip mode on a model without _silence_ or _unknown_ names the sidecar


@pytest.mark.parametrize("label", ["_silence_", "_unknown_"])
def test_clip_evaluate_on_a_model_without_silence_or_unknown_names_the_sidecar(label, model_copy: Path, data: Path,
                                                                             capsys):
    sidecar = model_copy.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    meta["labels"] = ["_quiet_" if x == label else x for x in meta["labels"]]
    sidecar.write_text(json.dumps(meta))
    code, _, err = _kwspot(capsys, "evaluate", "--data", str(data), "--model", str(model_copy),
                           "--cache", str(data.parent / "cache"))
    assert code == 2
    _one_line(err, f"{sidecar}: evaluate needs the labels _silence_ and _unknown_")


# 17: --json output is strict JSON: null, never NaN


def test_json_text_writes_null_for_nan_and_infinity():
    from kwspot.predict import json_text

    value = {"a": float("nan"), "b": [np.float32(np.inf), np.float64(0.5), np.int64(3)], "c": (1.0, -np.inf)}
    assert _strict(json_text(value)) == {"a": None, "b": [None, 0.5, 3], "c": [1.0, None]}


class _NanModel:
    labels = ["_silence_", "_unknown_", "yes"]
    window_samples = 8000

    def predict(self, window: np.ndarray) -> np.ndarray:
        return np.full(3, np.nan, np.float32)


def test_predict_json_writes_null_for_a_nan_score(tmp_path: Path, capsys):
    from kwspot.predict import run_predict

    wav = tmp_path / "stop.wav"
    soundfile.write(str(wav), np.zeros(8000, np.float32), 8000)
    assert run_predict(_NanModel(), [str(wav)], as_json=True) == 0  # type: ignore[arg-type]
    row = _strict(capsys.readouterr().out)
    assert row == {"file": str(wav), "label": "_silence_", "score": None}


def test_stream_evaluate_json_without_keywords_is_strict_json(data: Path, capsys):
    code, out, err = _kwspot(capsys, "evaluate", "--data", str(data), "--stream", "--words", "unknown", "--json",
                             "--cache", str(data.parent / "cache"))
    assert code == 0, err
    result = _strict(out)
    assert result["words"]["recall"] is None and result["words"]["fa_per_keyword"] is None  # type: ignore[index]


# 18: --save-thresholds needs a stream and a target, and a stream with a keyword in it


@pytest.mark.parametrize("flags", [[], ["--stream"], ["--target-fa-per-hour", "5"]])
def test_save_thresholds_without_stream_and_target_is_refused(flags, model_copy: Path, data: Path, capsys):
    before = model_copy.with_suffix(".json").read_bytes()
    code, _, err = _kwspot(capsys, "evaluate", "--data", str(data), "--model", str(model_copy), "--save-thresholds",
                           *flags, "--cache", str(data.parent / "cache"))
    assert code == 2
    _one_line(err, "--save-thresholds needs --stream and --target-fa-per-hour")
    assert model_copy.with_suffix(".json").read_bytes() == before


@pytest.mark.parametrize("flags", [["--target-fa-per-hour", "5"], ["--snr", "clean"], ["--min-pause-ms", "150"],
                                   ["--speech", "somewhere"], ["--seed", "3"], ["--verifier", "off"]])
def test_a_stream_option_without_stream_is_refused_not_ignored(flags, data: Path, capsys):
    code, _, err = _kwspot(capsys, "evaluate", "--data", str(data), *flags, "--cache", str(data.parent / "cache"))
    assert code == 2
    _one_line(err, f"{flags[0]} is a stream-mode option: add --stream")


def test_stream_options_at_their_defaults_are_not_refused(data: Path, capsys):
    code, _, err = _kwspot(capsys, "evaluate", "--data", str(data), "--snr", "20,10,5", "--words", "all",
                           "--cache", str(data.parent / "cache"))
    assert code == 0, err


def test_save_thresholds_from_a_stream_without_keywords_is_refused(model_copy: Path, data: Path, capsys):
    before = model_copy.with_suffix(".json").read_bytes()
    code, _, err = _kwspot(capsys, "evaluate", "--data", str(data), "--model", str(model_copy), "--stream",
                           "--words", "unknown", "--save-thresholds", "--target-fa-per-hour", "5", "--snr", "clean",
                           "--cache", str(data.parent / "cache"))  # clean: the data has no noise (else a warning)
    assert code == 2
    _one_line(err, "--save-thresholds: the testing stream holds no keyword")
    assert model_copy.with_suffix(".json").read_bytes() == before


# 19: stream minutes are bounded at parse time


@pytest.mark.parametrize("flag", ["--minutes", "--other-words-minutes"])
def test_stream_minutes_are_bounded(flag, capsys):
    from kwspot.train.evaluate import MAX_STREAM_MINUTES

    with pytest.raises(SystemExit) as exit_:
        _kwspot(capsys, "evaluate", "--data", "d", "--stream", flag, "10080")
    assert exit_.value.code == 2
    _one_line(capsys.readouterr().err, flag, f"must be between 0 and {MAX_STREAM_MINUTES:g}, not 10080")
    assert MAX_STREAM_MINUTES * 2 * 12e6 < 8e9  # both at their most: the stream's build stays under 8 GB


# 22: predict and listen refuse samples far outside [-1, 1]


def test_predict_and_listen_refuse_samples_far_outside_full_scale(tmp_path: Path, capsys):
    huge = tmp_path / "huge.wav"
    x = 0.3 * np.sin(np.arange(16000) / 5.0)
    soundfile.write(str(huge), (x * 1e30).astype(np.float32), 16000, subtype="FLOAT")
    loud = tmp_path / "loud.wav"
    soundfile.write(str(loud), (x * 4).astype(np.float32), 16000, subtype="FLOAT")  # over full scale, but audio
    with np.errstate(all="raise"):
        code, out, err = _kwspot(capsys, "predict", str(huge), str(loud))
    assert code == 2
    _one_line(err, f"{huge}: samples far outside [-1, 1]")
    assert out.startswith(f"{loud}\t")
    listened = run_kwspot("listen", "--input", str(huge), "--fast", "--format", "jsonl", timeout=60)
    assert listened.returncode != 0 and listened.stdout == ""  # no event from garbage, as predict says
    assert f"{huge}: samples far outside [-1, 1]" in listened.stderr and "Traceback" not in listened.stderr


# second round


def test_a_stream_over_noise_without_noise_is_refused_not_measured_clean(data: Path, capsys):
    code, _, err = _kwspot(capsys, "evaluate", "--data", str(data), "--stream", "--snr", "5",
                           "--cache", str(data.parent / "cache"))
    assert code == 2
    _one_line(err, f"{data}: no background noise to mix the words at 5 dB SNR")


def test_a_list_named_validation_something_is_read_not_replaced(data: Path, capsys):
    """Only the data folder's own validation_list.txt means "the validation split"; any other list is read."""
    two = data / "validation_two.txt"
    two.write_text("yes/spk2_nohash_0.wav\nno/spk2_nohash_0.wav\n")
    code, out, err = _kwspot(capsys, "evaluate", "--data", str(data), "--list", str(two), "--json",
                             "--cache", str(data.parent / "cache"))
    assert code == 0, err
    assert json.loads(out)["n"] == 2
    code, out, err = _kwspot(capsys, "evaluate", "--data", str(data), "--list", "validation_list.txt", "--json",
                             "--cache", str(data.parent / "cache"))
    assert code == 0 and json.loads(out)["n"] == len(WORDS), err


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_an_output_that_is_not_a_file_is_refused_before_training(kind, data: Path, tmp_path: Path, capsys,
                                                                   no_tensorflow):
    out = tmp_path / "out"
    out.mkdir()
    target = out / "m.csv"
    target.mkdir() if kind == "folder" else os.mkfifo(target)
    code, _, err = _kwspot(capsys, "train", "--data", str(data), "--out", str(out / "m"), "--keywords", "yes,no",
                           "--cache", str(tmp_path / "cache"))
    assert code == 2
    _one_line(err, f"{target}: ")


def test_a_model_write_that_fails_keeps_the_previous_model(tmp_path: Path, monkeypatch):
    from kwspot.train import export

    _, meta = _export_without_tensorflow(monkeypatch)
    (tmp_path / "m.tflite").write_bytes(b"the previous model")

    def full(src: object, dst: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(KwspotError, match="m.tflite: cannot write the model \\(No space left on device\\)"):
        export.export(object(), tmp_path / "m", np.zeros((2, 8000), np.float32), np.arange(2), meta)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tflite"]
    assert (tmp_path / "m.tflite").read_bytes() == b"the previous model"


def test_hard_negatives_that_are_a_fifo_are_refused(data: Path, tmp_path: Path, capsys, no_tensorflow):
    fifo = tmp_path / "hard.npy"
    os.mkfifo(fifo)
    code, _, err = _kwspot(capsys, "train", "--data", str(data), "--out", str(tmp_path / "o" / "m"), "--keywords",
                           "yes,no", "--hard-negatives", str(fifo), "--cache", str(tmp_path / "cache"))
    assert code == 2
    _one_line(err, f"{fifo}: not a regular file")


def test_a_clip_list_from_windows_is_read_and_an_unmatched_line_is_told(data: Path, caplog):
    from kwspot.train.data import scan

    (data / "validation_list.txt").write_bytes(
        "\ufeffyes\\spk0_nohash_0.wav\r\nno/spk0_nohash_0.wav\r\nother/spk0_nohash_0.wav\r\nyes/gone.wav\r\n"
        .encode())
    (data / "yes" / "._spk0_nohash_0.wav").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    with caplog.at_level("WARNING"):
        found = scan(data, keywords=("yes", "no"))
    assert sorted(c.path.name for c in found.clips["validation"]) == ["spk0_nohash_0.wav"] * 3
    assert not any(c.path.name.startswith("._") for split in found.clips.values() for c in split)
    assert "1 listed clips are not under it (e.g. yes/gone): scored nowhere" in caplog.text


def test_a_clip_list_is_found_in_the_current_folder_too(data: Path, tmp_path: Path, capsys, monkeypatch):
    (tmp_path / "mine.txt").write_text("yes/spk2_nohash_0.wav\nno/spk2_nohash_0.wav\n")
    monkeypatch.chdir(tmp_path)
    code, out, err = _kwspot(capsys, "evaluate", "--data", str(data), "--list", "mine.txt", "--json",
                             "--cache", str(tmp_path / "cache"))
    assert code == 0 and json.loads(out)["n"] == 2, err


def test_babble_without_speech_to_mix_is_refused(data: Path, tmp_path: Path, capsys, no_tensorflow):
    code, _, err = _kwspot(capsys, "train", "--data", str(data), "--out", str(tmp_path / "o" / "m"), "--keywords",
                           "yes,no", "--babble", "0.3", "--cache", str(tmp_path / "cache"))
    assert code == 2
    _one_line(err, "--babble mixes speech under the words: it needs --negatives DIR")


@pytest.mark.skipif(not HAVE_TF, reason="TensorFlow not installed (pip install 'kwspot[train]')")
def test_an_interrupted_training_keeps_the_previous_epoch_log(data: Path, tmp_path: Path, capsys, monkeypatch):
    from kwspot.train import loop

    out = tmp_path / "out"
    out.mkdir()
    (out / "m.csv").write_text("the previous run's log\n")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_epoch", interrupted)
    code, _, err = _kwspot(capsys, "train", "--data", str(data), "--out", str(out / "m"), "--keywords", "yes,no",
                           "--epochs", "1", "--arch", "workshop", "--cache", str(tmp_path / "cache"))
    assert code == 130, err
    assert sorted(p.name for p in out.iterdir()) == ["m.csv"]
    assert (out / "m.csv").read_text() == "the previous run's log\n"


def test_a_long_recording_is_read_only_up_to_the_bound(tmp_path: Path, monkeypatch, caplog):
    import kwspot.train.data as data_module

    path = tmp_path / "rain.wav"
    soundfile.write(path, np.full(16000 * 5, 0.1, np.float32), 16000, subtype="PCM_16")  # 5 s
    monkeypatch.setattr(data_module, "MAX_LONG_S", 2)
    with caplog.at_level("INFO"):
        (audio,) = data_module.load_long([path])
    assert len(audio) == 2 * 8000 and "its first 2 s used" in caplog.text
