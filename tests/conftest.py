"""Shared test fixtures: the bundled model, speech from espeak-ng, ../shared data."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

from kwspot.frontend import SAMPLE_RATE

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SPEECH_COMMANDS = SHARED / "speech_commands"


def wait_for(predicate, timeout: float = 5.0, what: str = "condition") -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def claim_rate(wav: Path, rate: int) -> bytes:
    """Make a 16-bit mono WAV's header claim ``rate`` (sample and byte rate), in place; returns the file's bytes."""
    data = bytearray(wav.read_bytes())
    data[24:32] = rate.to_bytes(4, "little") + (rate * 2 % 2**32).to_bytes(4, "little")
    wav.write_bytes(data)
    return bytes(data)


def kwspot_cmd(*args: str) -> list[str]:
    """The real program, as a subprocess command line."""
    return [sys.executable, "-m", "kwspot", *args]


def run_kwspot(*args: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "KWSPOT_CONFIG": "", "PYTHONUNBUFFERED": "1", **kwargs.pop("env", {})}
    return subprocess.run(kwspot_cmd(*args), capture_output=True, text=True, timeout=timeout, env=env, **kwargs)


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    """Non-zero exit, no traceback, a one-line message naming the culprit."""
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="session")
def speech_commands() -> Path:
    if not (SPEECH_COMMANDS / "validation_list.txt").is_file():
        pytest.skip(f"Speech Commands data not found at {SPEECH_COMMANDS}")
    return SPEECH_COMMANDS


def espeak(text: str, path: Path, voice: str = "en-us", speed: int = 140) -> Path:
    """Speak ``text`` into a WAV file (22.05 kHz mono) with espeak-ng."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (Debian: apt-get install espeak-ng)")
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(path), text], check=True)
    return path


@pytest.fixture(scope="session")
def speech_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("speech")


def write_stream(path: Path, parts: list[np.ndarray], gap_s: float = 1.5, noise: float = 0.003, seed: int = 0,
                 labels: list[str] | None = None) -> list:
    """8 kHz clips with ``gap_s`` between their spoken parts over faint noise (kwspot's one stream builder);
    writes a WAV and returns each word's spoken (start, end) in seconds."""
    from kwspot.train.streams import build_stream

    clips = list(zip(parts, labels or ["word"] * len(parts), strict=True))
    stream = build_stream(clips, [], np.random.default_rng(seed), snrs=None, gap_s=(gap_s, gap_s), hiss=noise)
    soundfile.write(path, stream.audio, SAMPLE_RATE, subtype="PCM_16")
    return [(w.start, w.end) for w in stream.words]


def trim(audio: np.ndarray) -> np.ndarray:
    """The spoken part of a clip (kwspot's one word-bounds function)."""
    from kwspot.train.data import word_bounds

    start, end = word_bounds(audio)
    return audio[start:end]
