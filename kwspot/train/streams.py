"""Long test streams with ground truth: words laid end to end with random gaps, over noise.

The one stream builder of kwspot: ``kwspot evaluate --stream``, the bench
scripts and the tests all make their streams with :func:`build_stream`.
A stream from a Speech Commands split (:func:`split_streams`) takes the
listed clips, the evaluation part of each noise recording (which training
never sees) with each word at a chosen SNR, and optionally continuous
speech that holds none of the keywords.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kwspot import UNKNOWN
from kwspot.errors import KwspotError
from kwspot.frontend import SAMPLE_RATE
from kwspot.train.data import Dataset, word_bounds

CLIP_SECONDS = 2.95  # stream time per clip: a gap of 1.5-3.5 s plus the spoken part


@dataclass
class Word:
    label: str  # a keyword or _unknown_
    start: float  # seconds, spoken part
    end: float
    snr_db: float | None = None


@dataclass
class Stream:
    audio: np.ndarray
    words: list[Word] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE


def build_stream(
    clips: list[tuple[np.ndarray, str]],
    noise: list[np.ndarray],
    rng: np.random.Generator,
    snrs: tuple[float, ...] | None = (20.0, 10.0, 5.0),
    gap_s: tuple[float, float] = (1.5, 3.5),
    noise_dbfs: float = -35.0,
    speech: list[np.ndarray] | None = None,
    hiss: float = 0.0,
) -> Stream:
    """Clips (8 kHz, with their label) in the given order, gaps between spoken parts drawn from ``gap_s``.

    ``snrs=None``: no added noise (a clean stream). ``speech``: continuous speech appended after the words.
    ``hiss``: white noise of this RMS over everything (a faint microphone floor).
    """
    pieces: list[np.ndarray] = [np.zeros(int(SAMPLE_RATE * gap_s[0]), np.float32)]
    words: list[Word] = []
    spans: list[tuple[int, int]] = []  # each clip's samples, for its gain
    pos, prev_tail = len(pieces[0]), 0
    for window, label in clips:
        s, e = word_bounds(window)
        lead = max(0, int(rng.uniform(*gap_s) * SAMPLE_RATE) - prev_tail - s) if words else 0
        pieces.append(np.zeros(lead, np.float32))
        pos += lead
        snr = None if snrs is None else float(rng.choice(snrs))
        words.append(Word(label, (pos + s) / SAMPLE_RATE, (pos + e) / SAMPLE_RATE, snr))
        spans.append((pos, pos + len(window)))
        pieces.append(np.asarray(window, np.float32))
        pos += len(window)
        prev_tail = len(window) - e
    pieces.append(np.zeros(int(SAMPLE_RATE * gap_s[0]), np.float32))
    for part in speech or []:
        pieces += [np.asarray(part, np.float32), np.zeros(SAMPLE_RATE // 2, np.float32)]
    audio = np.concatenate(pieces)
    if snrs is not None and noise:
        bed = noise_bed(noise, len(audio), rng) * _db(noise_dbfs)
        gains = np.ones(len(audio), np.float32)
        for w, (a, b) in zip(words, spans, strict=True):
            x = audio[int(w.start * SAMPLE_RATE) : int(w.end * SAMPLE_RATE)].astype(np.float64)
            rms = float(np.sqrt(np.mean(x**2))) if len(x) else 0.0
            gains[a:b] = _db(noise_dbfs + (w.snr_db or 0.0)) / max(rms, 1e-6)
        audio = np.clip(audio * _smooth(gains) + bed, -1.0, 1.0).astype(np.float32)
    if hiss:
        audio = np.clip(audio + hiss * rng.standard_normal(audio.size), -1.0, 1.0).astype(np.float32)
    return Stream(audio, words)


def _smooth(gains: np.ndarray) -> np.ndarray:
    """Gain curve without clicks: 10 ms moving average."""
    k = SAMPLE_RATE // 100
    return np.convolve(gains, np.ones(k, np.float32) / k, mode="same").astype(np.float32)


def noise_bed(noise: list[np.ndarray], n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` samples of noise pieced from random stretches of the recordings, each at RMS 1."""
    out = np.zeros(n, np.float32)
    pos = 0
    while pos < n:
        src = noise[rng.integers(0, len(noise))]
        length = min(n - pos, int(rng.uniform(5, 20) * SAMPLE_RATE), len(src))
        start = rng.integers(0, len(src) - length + 1)
        piece = src[start : start + length].astype(np.float32)
        out[pos : pos + length] = piece / max(float(np.sqrt(np.mean(piece.astype(np.float64) ** 2))), 1e-6)
        pos += length
    return out


def _db(db: float) -> float:
    return float(10.0 ** (db / 20.0))


@dataclass(frozen=True)
class StreamSpec:
    """Which stream to make of a split."""

    words: str = "all"  # all, keywords or unknown: which listed clips to speak
    snrs: tuple[float, ...] | None = (20.0, 10.0, 5.0)  # None: clean
    minutes: float = 0.0  # repeat the clips until the stream is this long
    other_words_minutes: float = 0.0  # then this much of the split's other words
    speech: tuple[Path, ...] = ()  # folders of continuous speech without the keywords
    phrases: tuple[Path, ...] = ()  # folders of folders of short recordings without them (e.g. wake phrases)
    cache: Path | None = None


def parse_snrs(text: str) -> tuple[float, ...] | None:
    """"20,10,5" -> (20.0, 10.0, 5.0); "clean" -> None."""
    if text.strip().lower() == "clean":
        return None
    try:
        return tuple(float(s) for s in text.split(","))
    except ValueError:
        raise KwspotError(f"--snr: expected dB values such as 20,10,5 or 'clean', not {text[:40]!r}") from None


def split_streams(data: Dataset, split: str, spec: StreamSpec, rng: np.random.Generator) -> tuple[Stream, Stream]:
    """The word stream and the speech stream (may be empty) of a split.

    The speech stream is the split's continuous speech, then the split's share (by file-name hash) of
    each phrase recording, half a second apart.
    """
    from kwspot.train.data import clip_windows, load_long, phrase_files, speech_files, to_float

    clips = [c for c in data.clips[split] if c.label != "_silence_"]
    if spec.words == "keywords":
        clips = [c for c in clips if c.label != UNKNOWN]
    elif spec.words == "unknown":
        clips = [c for c in clips if c.label == UNKNOWN]
    if not clips:
        raise KwspotError(f"{data.root}: no {spec.words} clips in the {split} split for a stream")
    windows = clip_windows([c.path for c in clips], spec.cache)
    order = list(rng.permutation(len(clips)))
    while spec.minutes and len(order) * CLIP_SECONDS < spec.minutes * 60:
        order += list(rng.permutation(len(clips)))
    others = [i for i, c in enumerate(clips) if c.label == UNKNOWN]
    extra: list[int] = []
    while others and len(extra) * CLIP_SECONDS < spec.other_words_minutes * 60:
        extra += [others[i] for i in rng.permutation(len(others))]
    items = [(to_float(windows[i]), clips[i].label) for i in order + extra]
    noise = load_long(data.noise_files, "eval")
    if spec.snrs is not None and not any(part.any() for part in noise):  # else the stream would be clean, unsaid
        snrs = "/".join(f"{x:g}" for x in spec.snrs)
        raise KwspotError(f"{data.root}: no background noise to mix the words at {snrs} dB SNR "
                          "(_background_noise_/ missing, or its recordings silent or shorter than the evaluation "
                          "part); measure clean streams (--snr clean) or add noise recordings")
    words = build_stream(items, noise, rng, spec.snrs)
    speech_parts: list[np.ndarray] = []
    for folder in spec.speech:
        speech_parts += load_long(speech_files(folder, split), "all")
    for folder in spec.phrases:
        for part in load_long(phrase_files(folder, split), "all"):
            speech_parts += [part, np.zeros(SAMPLE_RATE // 2, np.float32)]
    speech = Stream(np.concatenate(speech_parts) if speech_parts else np.zeros(0, np.float32))
    return words, speech
