"""Real command clips from ../shared/speech_commands, strung into streams, and raw PCM as clients send it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soxr

from conftest import write_stream
from kwspot import KEYWORDS
from kwspot.frontend import SAMPLE_RATE, load_audio


def command_clips(speech_commands: Path, per_word: int) -> list[tuple[str, Path]]:
    """The first ``per_word`` testing-list clips of each of the ten commands."""
    listed = (speech_commands / "testing_list.txt").read_text().split()
    return [(w, speech_commands / p) for w in KEYWORDS for p in [x for x in listed if x.startswith(w + "/")][:per_word]]


def command_stream(speech_commands: Path, path: Path, per_word: int = 2, seed: int = 7):
    """Those clips shuffled, 1.5 s apart, written to ``path`` (8 kHz); returns (words, spans in s, audio)."""
    clips = command_clips(speech_commands, per_word)
    order = np.random.default_rng(seed).permutation(len(clips))
    spans = write_stream(path, [load_audio(clips[i][1]) for i in order])
    return [clips[i][0] for i in order], spans, load_audio(path)


def pcm16(audio8k: np.ndarray, rate: int = 16000) -> bytes:
    """8 kHz float audio as 16-bit little-endian mono PCM at ``rate``."""
    audio = soxr.resample(audio8k.astype(np.float32), SAMPLE_RATE, rate) if rate != SAMPLE_RATE else audio8k
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
