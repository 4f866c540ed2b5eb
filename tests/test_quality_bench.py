"""bench/quality.py counts right: its rows on a tiny synthetic stream with known hits and false accepts."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from kwspot import KEYWORDS, LABELS, UNKNOWN
from kwspot.frontend import SAMPLE_RATE
from kwspot.train.evaluate import metrics
from kwspot.train.mine import peaks
from kwspot.train.scoring import score
from kwspot.train.streams import Word


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("quality", REPO / "bench" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["quality"] = module
    spec.loader.exec_module(module)
    return module


WORDS = [Word("yes", 1.0, 1.5), Word("no", 4.0, 4.4), Word(UNKNOWN, 7.0, 7.5)]
EVENTS = [("yes", 1.7), ("yes", 1.9), ("up", 7.6), ("go", 12.0)]  # a hit, a duplicate, an other word, outside


def test_recall_and_false_accept_rows_count_hits_misses_and_hours(quality):
    r = score(WORDS, EVENTS, seconds=1800.0, keywords=KEYWORDS)
    assert (r["hits"], r["keywords"], r["false_accepts"]) == (1, 2, 3)
    row = quality.recall_row("commands", r)
    assert row.value == "50.0% / 6.0 FA/h"
    assert row.counts == "1/2 hit, 3 FA in 0.50 h"
    row = quality.fa_row("speech", score([], EVENTS, seconds=7200.0, keywords=KEYWORDS))
    assert (row.value, row.counts) == ("2.0 FA/h", "4 in 2.00 h")


def test_clip_rows_count_per_class(quality):
    y = np.array([LABELS.index("yes")] * 3 + [LABELS.index(UNKNOWN)] * 2)
    probs = np.zeros((5, len(LABELS)), np.float32)
    probs[[0, 1], LABELS.index("yes")] = 1.0
    probs[2, LABELS.index("no")] = 1.0  # a yes heard as no
    probs[[3, 4], LABELS.index(UNKNOWN)] = 1.0
    result = {"clips": metrics(probs, y, LABELS), "streams": {}, "ms_per_window": 0.1, "macs": None, "bytes": 1024}
    rows = {row.name.strip(): row for row in quality.rows(result)}
    assert rows["clip accuracy 12-way"].counts == "4/5 clips"
    assert rows["clip accuracy 10-way"].counts == "2/3 clips"
    assert rows["recall yes"].counts == "2/3"
    assert rows["recall _unknown_"].counts == "2/2"


def test_commands_over_other_talk_are_a_row_of_their_own(quality):
    y = np.array([LABELS.index("yes")])
    probs = np.zeros((1, len(LABELS)), np.float32)
    probs[0, LABELS.index("yes")] = 1.0
    result = {"clips": metrics(probs, y, LABELS), "streams": {}, "ms_per_window": 0.1, "macs": None, "bytes": 1024,
              "talk": score(WORDS, EVENTS, seconds=1800.0, keywords=KEYWORDS)}
    rows = {row.name.strip(): row for row in quality.rows(result)}
    talk = rows["commands over other talk (testing speakers, 10 dB SNR): recall / FA/h"]
    assert (talk.value, talk.counts) == ("50.0% / 6.0 FA/h", "1/2 hit, 3 FA in 0.50 h")


def test_concatenate_puts_a_gap_before_and_after_each_part(quality):
    audio = quality.concatenate([np.ones(100, np.float32), np.ones(50, np.float32)], gap_s=0.01)
    gap = SAMPLE_RATE // 100
    assert len(audio) == 3 * gap + 150
    assert audio[:gap].sum() == 0 and audio.sum() == 150


def test_mining_keeps_one_window_per_peak():
    scores = np.array([0.1, 0.5, 0.9, 0.6, 0.1, 0.1, 0.1, 0.1, 0.2, 0.7, 0.1])
    assert peaks(scores, 0.3, spacing=2) == [2, 9]
    assert peaks(scores, 0.95, spacing=2) == []


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed (apt-get install espeak-ng)")
def test_training_voices_are_distinct_voices_and_none_is_held_out_by_the_benchmark(quality, tmp_path):
    """Every training voice really sounds different (espeak-ng ignores an unknown variant silently), and the
    benchmark's voices, and their accents, stay unheard in training."""
    from kwspot.train.espeak import ALL_VOICES

    sounds = set()
    for voice in ALL_VOICES + quality.BENCH_VOICES:
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(tmp_path / "v.wav"), "stop"], check=True)
        sounds.add((tmp_path / "v.wav").read_bytes())
    assert len(sounds) == len(ALL_VOICES) + len(quality.BENCH_VOICES)
    held_out_accents = {v.split("+")[0] for v in quality.BENCH_VOICES} - {"en-us", "en-gb-scotland", "en-029"}
    assert not {v.split("+")[0] for v in ALL_VOICES} & held_out_accents


def test_a_second_synthesiser_has_rows_of_its_own(quality):
    y = np.array([LABELS.index("yes")])
    probs = np.zeros((1, len(LABELS)), np.float32)
    probs[0, LABELS.index("yes")] = 1.0
    result = {"clips": metrics(probs, y, LABELS), "streams": {}, "ms_per_window": 0.1, "macs": None, "bytes": 1024,
              "flite_commands": score(WORDS, EVENTS, seconds=1800.0, keywords=KEYWORDS),
              "flite_sentences": score([], EVENTS[:1], seconds=3600.0, keywords=KEYWORDS)}
    rows = {row.name.strip(): row for row in quality.rows(result)}
    said = rows["flite voice saying the commands (held out): recall / FA/h"]
    assert (said.value, said.counts) == ("50.0% / 6.0 FA/h", "1/2 hit, 3 FA in 0.50 h")
    assert rows["flite sentences without commands (held-out voice)"].counts == "1 in 1.00 h"


@pytest.mark.skipif(shutil.which("flite") is None, reason="flite not installed (apt-get install flite)")
def test_the_flite_streams_hold_each_command_six_times_and_sentences_without_any(quality, tmp_path, monkeypatch):
    from kwspot.train import flite

    monkeypatch.setenv("KWSPOT_CACHE", str(tmp_path))
    noise = [np.zeros(SAMPLE_RATE * 30, np.float32)]
    monkeypatch.setattr(quality, "SENTENCES", ("the soup needs salt", "we watched a film"))
    sentences, commands = quality.synthetic_streams("flite", flite.BENCH_VOICES, ("yes", "up"), noise, 0, takes=6,
                                                    sentence_takes=3)
    said = sorted(w.label for w in commands.words)
    assert said == ["up"] * 6 + ["yes"] * 6
    assert sentences.words == [] and sentences.seconds > 6 * 0.7
