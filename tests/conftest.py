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


def write_stream(path: Path, parts: list[np.ndarray], gap_s: float = 1.5, noise: float = 0.003, seed: int = 0) -> list:
    """Concatenate 8 kHz clips with gaps over faint noise; returns each clip's (start, end) in seconds."""
    rng = np.random.default_rng(seed)
    gap = np.zeros(int(gap_s * SAMPLE_RATE), np.float32)
    audio, spans, t = [gap], [], gap.size
    for clip in parts:
        spans.append((t / SAMPLE_RATE, (t + clip.size) / SAMPLE_RATE))
        audio += [clip, gap]
        t += clip.size + gap.size
    signal = np.concatenate(audio)
    signal = signal + noise * rng.standard_normal(signal.size).astype(np.float32)
    soundfile.write(path, signal, SAMPLE_RATE, subtype="PCM_16")
    return spans


def trim(audio: np.ndarray, level: float = 0.02) -> np.ndarray:
    """Cut leading and trailing near-silence from a clip."""
    loud = np.flatnonzero(np.abs(audio) > level)
    return audio[loud[0] : loud[-1] + 1] if loud.size else audio

