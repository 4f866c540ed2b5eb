"""The real program as a subprocess: predict, listen on files and stdin, and its errors."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import soundfile

from conftest import assert_one_line_error, espeak, kwspot_cmd, run_kwspot, trim, write_stream
from kwspot import KEYWORDS
from kwspot.frontend import SAMPLE_RATE, load_audio


def test_help_and_version():
    result = run_kwspot("--version")
    assert result.returncode == 0 and result.stdout.startswith("kwspot ")
    result = run_kwspot("listen", "--help")
    assert result.returncode == 0 and "--socket" in result.stdout


def keyword_clips(speech_commands, per_word: int) -> list:
    listed = (speech_commands / "testing_list.txt").read_text().split()
    clips = []
    for word in KEYWORDS:
        clips += [(word, speech_commands / p) for p in listed if p.startswith(word + "/")][:per_word]
    return clips


def test_predict_json_on_real_clips(speech_commands):
    clips = keyword_clips(speech_commands, per_word=3)
    result = run_kwspot("predict", "--json", *[str(p) for _, p in clips])
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["file"] for r in rows] == [str(p) for _, p in clips]
    assert all(0.0 <= r["score"] <= 1.0 for r in rows)
    correct = sum(r["label"] == word for (word, _), r in zip(clips, rows, strict=True))
    assert correct >= 0.8 * len(clips), rows


def test_predict_pads_short_and_centres_long_clips(tmp_path, speech_commands):
    word, path = keyword_clips(speech_commands, per_word=1)[8]  # "stop"
    clip = trim(load_audio(path))
    short, long = tmp_path / "short.wav", tmp_path / "long.wav"
    soundfile.write(short, clip, SAMPLE_RATE)
    soundfile.write(long, np.concatenate([np.zeros(24000), clip, np.zeros(16000)]).astype(np.float32), SAMPLE_RATE)
    result = run_kwspot("predict", "--json", str(short), str(long))
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["label"] for line in result.stdout.splitlines()] == [word, word]


def test_predict_reports_a_bad_file_and_goes_on(tmp_path, speech_commands):
    bad = tmp_path / "corrupt.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage")
    _, good = keyword_clips(speech_commands, per_word=1)[0]
    result = run_kwspot("predict", str(bad), str(good))
    assert result.returncode == 2
    assert str(good) in result.stdout
    assert_one_line_error(result, "corrupt.wav")


def events_from(stdout: str) -> list[dict]:
    events = [json.loads(line) for line in stdout.splitlines()]
    for e in events:
        assert set(e) >= {"keyword", "score", "t", "time"} and e["keyword"] in KEYWORDS and 0 <= e["score"] <= 1
    assert [e["t"] for e in events] == sorted(e["t"] for e in events)
    return events


def match(events: list[dict], spans: list, words: list[str], late_s: float = 1.5) -> tuple[int, int]:
    """(hits, false accepts): an event counts once, for the word whose spoken span (plus 1 s for the window
    to pass it, and 0.5 s slack, as kwspot.train.scoring counts) it falls into."""
    hits, used = 0, set()
    for (start, end), word in zip(spans, words, strict=True):
        for i, e in enumerate(events):
            if i not in used and e["keyword"] == word and start < e["t"] <= end + late_s:
                hits += 1
                used.add(i)
                break
    return hits, len(events) - len(used)


@pytest.mark.slow
def test_listen_on_a_stream_of_real_words(tmp_path, speech_commands):
    clips = keyword_clips(speech_commands, per_word=3)
    words = [w for w, _ in clips]
    order = np.random.default_rng(1).permutation(len(clips))
    words = [words[i] for i in order]
    spans = write_stream(tmp_path / "stream.wav", [load_audio(clips[i][1]) for i in order], gap_s=1.5)
    result = run_kwspot("listen", "--input", str(tmp_path / "stream.wav"), "--fast", "--format", "jsonl")
    assert result.returncode == 0, result.stderr
    events = events_from(result.stdout)
    hits, false = match(events, spans, words)
    assert hits >= 0.7 * len(words), (hits, events)
    assert false <= 2, events


def test_listen_reads_raw_pcm_on_stdin_like_a_file(tmp_path, speech_commands):
    clips = keyword_clips(speech_commands, per_word=1)
    words = [w for w, _ in clips]
    spans = write_stream(tmp_path / "s.wav", [load_audio(p) for _, p in clips])
    audio, _ = soundfile.read(tmp_path / "s.wav", dtype="int16")
    import soxr

    pcm16k = soxr.resample(audio.astype(np.float32) / 32768, SAMPLE_RATE, 16000)
    raw = (np.clip(pcm16k, -1, 1) * 32767).astype("<i2").tobytes()
    result = subprocess.run(
        kwspot_cmd("listen", "--input", "-", "--rate", "16000", "--format", "jsonl"),
        input=raw, capture_output=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    events = events_from(result.stdout.decode())
    hits, false = match(events, spans, words)
    assert hits >= 6 and false <= 2, events


def test_listen_on_espeak_speech_emits_only_valid_events(tmp_path):
    path = espeak("stop. go. yes. the weather is lovely today", tmp_path / "tts.wav")
    result = run_kwspot("listen", "--input", str(path), "--fast", "--format", "jsonl")
    assert result.returncode == 0, result.stderr
    events = events_from(result.stdout)
    assert {e["keyword"] for e in events} <= {"stop", "go", "yes", "no", "on", "off", "up", "down", "left", "right"}
    assert len(events) <= 5


def test_listen_on_silence_and_noise_stays_quiet(tmp_path):
    rng = np.random.default_rng(3)
    audio = np.concatenate([np.zeros(5 * SAMPLE_RATE), 0.05 * rng.standard_normal(10 * SAMPLE_RATE)])
    soundfile.write(tmp_path / "quiet.wav", audio.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
    result = run_kwspot("listen", "--input", str(tmp_path / "quiet.wav"), "--fast", "--format", "jsonl")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""




@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_signals_stop_cleanly(tmp_path, sig):
    import os
    import signal
    import time

    sock = tmp_path / "kw.sock"
    daemon = subprocess.Popen(kwspot_cmd("listen", "--input", "-", "--socket", str(sock), "--format", "jsonl"),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "KWSPOT_CONFIG": ""})
    deadline = time.monotonic() + 30
    while not sock.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sock.exists()
    daemon.send_signal(getattr(signal, sig))
    _, err = daemon.communicate(timeout=20)
    assert daemon.returncode == 0, err
    assert not sock.exists() and "Traceback" not in err and "stopped after" in err
