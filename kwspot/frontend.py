"""The signal front end shared by training, prediction and streaming.

Everything the model sees goes through here: audio is read as float32 in
[-1, 1], mixed down to mono, and resampled to 8 kHz with soxr (the same
resampler, at the same quality, offline and streaming). The model itself
takes the raw 8 kHz window; its log-mel features live inside the model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soxr

from kwspot import MAX_RATE, MIN_RATE
from kwspot.errors import KwspotError
from kwspot.paths import checked, not_a_file, shown

if TYPE_CHECKING:
    import soundfile

SAMPLE_RATE = 8000
WINDOW_SAMPLES = SAMPLE_RATE  # one second
RESAMPLE_QUALITY = "HQ"


def to_mono(audio: np.ndarray) -> np.ndarray:
    """Average the channels of a (frames, channels) array into float32 mono."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        return audio
    if audio.shape[1] == 1:
        return audio[:, 0]  # a view: no averaging for the common mono case (every block, in real time)
    return audio.mean(axis=1, dtype=np.float32)


def resample(audio: np.ndarray, rate: float, to: float = SAMPLE_RATE) -> np.ndarray:
    """Resample mono float32 audio from ``rate`` to ``to`` (8 kHz unless told) in one go."""
    audio = np.asarray(audio, dtype=np.float32)
    if rate == to or audio.size == 0:
        return audio
    return soxr.resample(audio, rate, to, quality=RESAMPLE_QUALITY).astype(np.float32)


def sndfile_words(exc: Exception) -> str:
    """libsndfile's own words for ``exc``, without soundfile's "Error opening <what>:" (the caller names it)."""
    return (getattr(exc, "error_string", None) or str(exc)).strip().split("\n")[0]


def unreadable(path: str | Path, exc: Exception) -> KwspotError:
    """The one-line error for an audio file soundfile cannot read."""
    return KwspotError(f"{shown(path)}: not a readable audio file ({sndfile_words(exc)})")


MAX_CHANNELS = 64  # mixed to mono; a file with more is no recording of a room, and would cost memory per frame


def check_format(rate: int, channels: int, name: str = "") -> None:
    """KwspotError (naming ``name`` where given) if the rate or channel count is not one kwspot takes in."""
    where = f"{name}: " if name else ""
    if not MIN_RATE <= rate <= MAX_RATE:
        raise KwspotError(f"{where}sample rate {rate} Hz is outside {MIN_RATE}-{MAX_RATE} Hz")
    if channels > MAX_CHANNELS:
        raise KwspotError(f"{where}{channels} channels; kwspot mixes at most {MAX_CHANNELS} to mono")


def block_frames(rate: int, channels: int, seconds: float) -> int:
    """Frames to read at a time so that a block holds about ``seconds`` of mono samples: memory stays bounded."""
    return max(1, int(rate * seconds) // max(1, channels))


def open_audio(path: str | Path) -> soundfile.SoundFile:
    """Open a WAV/FLAC file for reading in blocks; KwspotError naming it if it cannot be read or is empty."""
    import soundfile  # only where files are read: 3 MiB the microphone daemon does without
    path = checked(path, "audio file")
    if not path.is_file():
        raise KwspotError(f"{shown(path)}: {not_a_file(path, 'audio')}")
    try:
        with open(path, "rb"):  # the system's reason (permissions, ...) rather than libsndfile's "System error."
            pass
    except OSError as exc:
        raise KwspotError(f"{shown(path)}: cannot open audio file ({exc.strerror})") from None
    try:
        audio = soundfile.SoundFile(os.fsencode(path))  # bytes: soundfile cannot encode names that are not UTF-8
    except (soundfile.LibsndfileError, RuntimeError, ValueError) as exc:
        raise unreadable(path, exc) from None
    if audio.frames == 0:
        audio.close()
        raise KwspotError(f"{shown(path)}: audio file holds no samples")
    try:
        check_format(int(audio.samplerate), int(audio.channels), shown(path))
    except KwspotError:
        audio.close()
        raise
    return audio


# Float audio is full scale at 1. A little over happens (a mix with no headroom), but 60 dB over full scale is no
# recording: it is data of another scale (e.g. int16 counts stored as float) or garbage, whose features are
# meaningless and, near 1e19, overflow float32 in the power spectrum.
MAX_SAMPLE = 1e3


def refuse_far_outside(path: str | Path, frames: np.ndarray) -> None:
    """KwspotError naming the file if any of its float samples is 60 dB or more over full scale (but finite:
    NaN and infinite samples are the callers' to count)."""
    huge = int(np.count_nonzero((np.abs(frames) > MAX_SAMPLE) & np.isfinite(frames)))
    if huge:
        raise KwspotError(f"{shown(path)}: samples far outside [-1, 1] ({huge} of magnitude over {MAX_SAMPLE:g})")


def count_nonfinite(audio: np.ndarray) -> int:
    """How many samples are NaN or infinite (0 for ordinary audio, checked cheaply)."""
    if np.isfinite(audio).all():
        return 0
    return int(audio.size - np.count_nonzero(np.isfinite(audio)))


def read_audio(path: str | Path, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Read a WAV/FLAC file (its first ``max_seconds`` where given) as float32 mono at its own rate; refuse NaN or
    infinite samples."""
    import soundfile

    with open_audio(path) as f:
        try:
            frames = -1 if max_seconds is None else int(f.samplerate * max_seconds)
            audio = f.read(frames, dtype="float32", always_2d=True)
        except (soundfile.LibsndfileError, RuntimeError, ValueError) as exc:
            raise unreadable(path, exc) from None
        rate = int(f.samplerate)
    bad = count_nonfinite(audio)
    if bad:
        raise KwspotError(f"{shown(path)}: {bad} of {audio.size} samples are NaN or infinite")
    refuse_far_outside(path, audio)
    return to_mono(audio), rate


def load_audio(path: str | Path, max_seconds: float | None = None) -> np.ndarray:
    """Read an audio file (its first ``max_seconds`` where given) and return it as float32 mono at 8 kHz."""
    audio, rate = read_audio(path, max_seconds)
    return resample(audio, rate)


def fit_window(audio: np.ndarray, length: int = WINDOW_SAMPLES) -> np.ndarray:
    """Pad a short clip (centred) or cut the loudest ``length`` samples of a long one."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.size == length:
        return audio
    if audio.size < length:
        before = (length - audio.size) // 2
        return np.pad(audio, (before, length - audio.size - before))
    energy = np.concatenate(([0.0], np.cumsum(audio.astype(np.float64) ** 2)))
    window_energy = energy[length:] - energy[:-length]
    start = int(np.argmax(window_energy))
    return audio[start : start + length]


class StreamResampler:
    """Resample a live stream block by block to 8 kHz, keeping soxr's state.

    NaN or infinite samples are replaced by silence and counted in ``nonfinite``.

    Fed the blocks of a signal in order, it yields the same samples that
    :func:`resample` gives for the whole signal at once.
    """

    def __init__(self, rate: int) -> None:
        self.rate = int(rate)
        self.nonfinite = 0  # NaN/infinite samples replaced by silence (they would poison soxr's state)
        self._stream = (
            None
            if self.rate == SAMPLE_RATE
            else soxr.ResampleStream(self.rate, SAMPLE_RATE, 1, dtype="float32", quality=RESAMPLE_QUALITY)
        )

    def process(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        """Resample one mono float32 block; ``last`` flushes what soxr holds back."""
        block = np.ascontiguousarray(block, dtype=np.float32)
        bad = count_nonfinite(block)
        if bad:
            self.nonfinite += bad
            block = np.nan_to_num(block, nan=0.0, posinf=0.0, neginf=0.0)
        if self._stream is None:
            return block
        return self._stream.resample_chunk(block, last=last)


def decode_pcm(data: bytes, width: int, channels: int) -> np.ndarray:
    """Little-endian integer PCM (8-bit unsigned, 16/24/32-bit signed) -> float32 mono in [-1, 1].

    ``data`` must hold whole frames (``width * channels`` bytes each).
    """
    if width not in (1, 2, 3, 4) or channels < 1:
        raise ValueError(f"cannot decode {width}-byte samples in {channels} channels")
    if len(data) % (width * channels):
        raise ValueError(f"{len(data)} bytes are not whole frames of {width * channels} bytes")
    raw = np.frombuffer(data, dtype=np.uint8)
    if width == 1:
        samples = (raw.astype(np.float32) - 128.0) / 128.0
    elif width == 3:
        triples = raw.reshape(-1, 3).astype(np.int32)
        ints = triples[:, 0] | (triples[:, 1] << 8) | (triples[:, 2] << 16)
        samples = (np.where(ints >= 1 << 23, ints - (1 << 24), ints)).astype(np.float32) / float(1 << 23)
    else:
        dtype = "<i2" if width == 2 else "<i4"
        samples = np.frombuffer(data, dtype=dtype).astype(np.float32) / float(1 << (8 * width - 1))
    return to_mono(samples.reshape(-1, channels))
