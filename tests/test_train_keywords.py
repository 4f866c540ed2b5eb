"""``kwspot train --keywords``: a tiny model for other words, trained here, hears those words in a stream.

The words are synthetic (a chirp per word folder) so that a few epochs on a
few clips learn them; the model then goes through the real ``kwspot listen``
and ``kwspot predict`` as subprocesses, with a per-keyword threshold set in
config.yaml by name.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile

from conftest import run_kwspot, write_stream
from kwspot.frontend import SAMPLE_RATE

HAVE_TF = importlib.util.find_spec("tensorflow") is not None
KEYWORDS = ("eight", "stop")
OTHERS = ("bed", "cat")
PER_WORD = 24  # clips per word folder: 20 train, 2 validation, 2 testing


def chirp(word: str, rng: np.random.Generator) -> np.ndarray:
    """One second holding a word-specific chirp at a random place and level over faint noise."""
    f0 = {"eight": 300.0, "stop": 1100.0, "bed": 700.0, "cat": 1600.0}[word]
    n = int(0.45 * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    sweep = np.sin(2 * np.pi * (f0 * t + (400 if word in KEYWORDS else -300) * t**2)) * np.hanning(n)
    out = rng.normal(0, 0.002, SAMPLE_RATE).astype(np.float32)
    start = rng.integers(500, SAMPLE_RATE - n - 500)
    out[start : start + n] += rng.uniform(0.15, 0.4) * sweep.astype(np.float32)
    return out


@pytest.fixture(scope="module")
def chirp_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Speech Commands layout with two keyword folders, two other words, silence and a noise recording."""
    root = tmp_path_factory.mktemp("chirps")
    rng = np.random.default_rng(0)
    val, test = [], []
    for word in (*KEYWORDS, *OTHERS, "_silence_"):
        (root / word).mkdir()
        for i in range(PER_WORD):
            name = f"{word}/s{i:02d}_nohash_0.wav"
            audio = rng.normal(0, 0.002, SAMPLE_RATE).astype(np.float32) if word == "_silence_" else chirp(word, rng)
            soundfile.write(root / name, audio, SAMPLE_RATE)
            if word != "_silence_":
                (val if i in (20, 21) else test if i in (22, 23) else []).append(name)
    (root / "validation_list.txt").write_text("\n".join(val) + "\n")
    (root / "testing_list.txt").write_text("\n".join(test) + "\n")
    (root / "_background_noise_").mkdir()
    soundfile.write(root / "_background_noise_" / "hum.wav", rng.normal(0, 0.01, SAMPLE_RATE * 20), SAMPLE_RATE)
    return root


@pytest.mark.skipif(not HAVE_TF, reason="TensorFlow not installed (pip install 'kwspot[train]')")
def test_a_model_trained_on_other_words_hears_them_through_listen(chirp_data: Path, tmp_path: Path):
    from kwspot.cli import main

    out = tmp_path / "mine"
    assert main(["train", "--data", str(chirp_data), "--out", str(out), "--keywords", ",".join(KEYWORDS),
                 "--epochs", "25", "--batch", "32", "--lr", "3e-3", "--patience", "25",
                 "--cache", str(tmp_path / "cache")]) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["labels"] == ["_silence_", "_unknown_", *KEYWORDS]
    assert "eight" in out.with_suffix(".md").read_text()

    rng = np.random.default_rng(7)
    words = ["eight", "stop", "bed", "stop", "eight", "cat", "eight", "stop"]
    spans = write_stream(tmp_path / "stream.wav", [chirp(w, rng) for w in words], labels=words)
    config = tmp_path / "kw.yaml"
    config.write_text("detector:\n  threshold: 0.6\n  thresholds: {stop: 0.6}\n")
    result = run_kwspot("listen", "--input", str(tmp_path / "stream.wav"), "--fast", "--format", "jsonl",
                        "--model", str(out.with_suffix(".tflite")), "--config", str(config))
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert {e["keyword"] for e in events} <= set(KEYWORDS)
    hits = sum(any(e["keyword"] == w and s < e["t"] <= end + 1.5 for e in events)
               for w, (s, end) in zip(words, spans, strict=True) if w in KEYWORDS)
    assert hits >= 5, (hits, events)  # of 6 keywords spoken
    assert len(events) <= 8, events

    predicted = run_kwspot("predict", "--json", "--model", str(out.with_suffix(".tflite")),
                           str(chirp_data / "stop" / "s23_nohash_0.wav"))
    assert predicted.returncode == 0 and json.loads(predicted.stdout)["label"] in (*KEYWORDS, "_unknown_")

    evaluated = run_kwspot("evaluate", "--data", str(chirp_data), "--model", str(out.with_suffix(".tflite")),
                           "--json", "--cache", str(tmp_path / "cache"))
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["labels"] == meta["labels"]
    streamed = run_kwspot("evaluate", "--stream", "--snr", "clean", "--data", str(chirp_data), "--model",
                          str(out.with_suffix(".tflite")), "--json", "--cache", str(tmp_path / "cache"),
                          "--target-fa-per-hour", "60", "--save-thresholds")
    assert streamed.returncode == 0, streamed.stderr
    report = json.loads(streamed.stdout)
    assert set(report["words"]["per_keyword"]) == set(KEYWORDS) and report["words"]["keywords"] == 4
    assert set(json.loads(out.with_suffix(".json").read_text())["thresholds"]) == set(KEYWORDS)

    config.write_text("detector:\n  thresholds: {yes: 0.6}\n")  # a word this model does not have
    refused = run_kwspot("listen", "--input", str(tmp_path / "stream.wav"), "--fast", "--format", "jsonl",
                         "--model", str(out.with_suffix(".tflite")), "--config", str(config))
    assert refused.returncode == 2 and "detector.thresholds.yes" in refused.stderr and "eight, stop" in refused.stderr


def test_keywords_flag_names_missing_folders(chirp_data: Path, tmp_path: Path):
    result = run_kwspot("train", "--data", str(chirp_data), "--out", str(tmp_path / "m"), "--keywords", "eight,marvin")
    assert result.returncode == 2 and "marvin" in result.stderr and "Traceback" not in result.stderr
    result = run_kwspot("train", "--data", str(chirp_data), "--out", str(tmp_path / "m"), "--keywords", "_x,eight")
    assert result.returncode == 2 and "--keywords" in result.stderr
