"""Training examples cut the way the stream cuts them, in numpy, one batch at a time.

An epoch is a *plan*: rows of (kind, index, label). A batch is built from its
rows on the fly, so memory stays one batch of float32 windows whatever the
size of the data. Kinds:

- ``CLIP``: a word clip (keyword, other word or ``_silence_`` clip) shifted to a
  random offset, the spoken part kept whole inside the window;
- ``FRAGMENT``: the first or last 25-55% of a keyword, labelled ``_unknown_``
  (the stream sees these as a word enters or leaves the window);
- ``SPEECH``: a second of continuous speech (``--negatives``), ``_unknown_``;
- ``NOISE``: a second of background noise at a random level, ``_silence_``;
- ``PHRASE``: a second cut from a short recording of other speech (``--phrases``,
  e.g. wake phrases) around its spoken part, ``_unknown_``.

With probability ``speed_prob`` a word (keyword, other word or fragment) is first
played at another speed (``speed_range``: tempo and pitch together, through the
resampler the stream uses), as a slower or quicker speaker with a longer or
shorter vocal tract would say it.

Every non-silence example then goes through another channel with probability
``channel_prob`` (:mod:`kwspot.train.channel`: room reverb, band limit and EQ,
level), then gets background noise at a random SNR with probability
``noise_prob``, then a random gain. With probability ``babble_prob`` that noise is
a second of continuous speech (``--negatives``) instead, at ``babble_snr_db``:
keywords said over other talk, so that a source of negatives is heard under
positives too (the model cannot learn "this recording channel means unknown").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kwspot import SILENCE, UNKNOWN
from kwspot.frontend import SAMPLE_RATE, WINDOW_SAMPLES, resample
from kwspot.train.channel import EXTRA_ATTENUATION_DB, other_channel
from kwspot.train.data import labels_for, to_float, word_bounds

CLIP, FRAGMENT, SPEECH, NOISE, PHRASE = range(5)
SILENCE_INDEX = labels_for(()).index(SILENCE)
UNKNOWN_INDEX = labels_for(()).index(UNKNOWN)
FIRST_KEYWORD = 2  # label indices from here on are keywords


@dataclass
class AugmentSettings:
    noise_prob: float = 0.8
    snr_db: tuple[float, float] = (0.0, 25.0)
    gain_db: tuple[float, float] = (-12.0, 6.0)
    silence_db: tuple[float, float] = (-50.0, 0.0)  # relative to noise at -20 dBFS RMS
    unknown_ratio: float = 2.0  # _unknown_ examples per epoch, relative to one keyword class
    silence_ratio: float = 1.0
    fragments: bool = True
    shift: bool = True
    balance_words: bool = False  # other-word clips drawn word by word, not clip by clip
    channel_prob: float = 0.0  # share of non-silence examples sent through a random room/microphone channel
    babble_prob: float = 0.0  # share of noisy examples whose noise is continuous speech (other talk)
    babble_snr_db: tuple[float, float] = (5.0, 25.0)
    speed_prob: float = 0.0  # share of word examples played at another speed
    speed_range: tuple[float, float] = (0.85, 1.15)


class Sources:
    """The raw material: int16 clip windows with labels, noise and speech recordings.

    ``extra``: more int16 windows (e.g. espeak-ng words), ``_unknown_`` unless
    ``extra_labels`` says otherwise; their indices follow those of ``clips``, and
    they are kept apart so that ``clips`` can stay a memory map. ``words``: the
    word (folder) of each clip of ``clips``, for balancing other words per word.
    ``phrases``: short recordings of other speech, cut around their spoken part.
    ``n_hard``: the last ``n_hard`` of ``extra`` are mined hard negatives, with their own share.
    """

    def __init__(self, clips: np.ndarray, labels: np.ndarray, noise: list[np.ndarray], speech: list[np.ndarray],
                 extra: np.ndarray | None = None, extra_labels: np.ndarray | None = None,
                 words: list[str] | None = None, phrases: list[np.ndarray] | None = None, n_hard: int = 0) -> None:
        self.clips = clips
        self.extra = np.zeros((0, WINDOW_SAMPLES), np.int16) if extra is None else extra
        self.n_main = len(clips)
        more = np.full(len(self.extra), UNKNOWN_INDEX) if extra_labels is None else np.asarray(extra_labels, np.int64)
        self.labels = np.concatenate((np.asarray(labels, dtype=np.int64), more))
        self.noise = noise
        self.speech = speech
        self.words = words
        self.phrases = phrases or []
        self.phrase_bounds = [word_bounds(p) for p in self.phrases]
        self.n_hard = n_hard
        bounds = [word_bounds(to_float(c)) for c in clips] + [word_bounds(to_float(c)) for c in self.extra]
        self.bounds = np.array(bounds, dtype=np.int64).reshape(len(self.labels), 2)

    def clip(self, index: int) -> np.ndarray:
        return to_float(self.clips[index] if index < self.n_main else self.extra[index - self.n_main])


def _keyword_ids(src: Sources) -> list[int]:
    """The keyword label indices that have clips."""
    return [int(k) for k in np.unique(src.labels) if k >= FIRST_KEYWORD]


def epoch_plan(src: Sources, settings: AugmentSettings, rng: np.random.Generator) -> np.ndarray:
    """Rows of (kind, index, label) for one epoch: classes balanced, shuffled."""
    rows: list[np.ndarray] = []
    keyword_ids = _keyword_ids(src)
    per_class = [np.flatnonzero(src.labels == k) for k in keyword_ids]
    target = max((len(ix) for ix in per_class), default=0)
    for k, ix in zip(keyword_ids, per_class, strict=True):
        if len(ix):
            rows.append(_rows(CLIP, _fill(ix, target, rng), k))
    n_unknown = int(settings.unknown_ratio * target)
    unknown = np.flatnonzero(src.labels == UNKNOWN_INDEX)
    words, tts = unknown[unknown < src.n_main], unknown[unknown >= src.n_main]
    first_hard = len(src.labels) - src.n_hard
    tts, hard = tts[tts < first_hard], tts[tts >= first_hard]
    keywords = np.flatnonzero(np.isin(src.labels, keyword_ids))
    shares = {CLIP: 0.3 if len(words) else 0.0, FRAGMENT: 0.3 if settings.fragments else 0.0}
    shares[SPEECH] = 0.4 if src.speech else 0.0
    shares[-1] = 0.15 if len(tts) else 0.0
    shares[PHRASE] = 0.2 if src.phrases else 0.0
    shares[-2] = 0.2 if len(hard) else 0.0
    total = sum(shares.values()) or 1.0
    if shares[CLIP] and settings.balance_words and src.words is not None:
        rows.append(_rows(CLIP, _per_word(words, src.words, int(n_unknown * shares[CLIP] / total), rng),
                          UNKNOWN_INDEX))
    elif shares[CLIP]:
        rows.append(_rows(CLIP, _fill(words, int(n_unknown * shares[CLIP] / total), rng), UNKNOWN_INDEX))
    if shares[-2]:
        rows.append(_rows(CLIP, _fill(hard, int(n_unknown * shares[-2] / total), rng), UNKNOWN_INDEX))
    if shares[PHRASE]:
        rows.append(_rows(PHRASE, rng.integers(0, 1 << 30, int(n_unknown * shares[PHRASE] / total)), UNKNOWN_INDEX))
    if shares[-1]:
        rows.append(_rows(CLIP, _fill(tts, int(n_unknown * shares[-1] / total), rng), UNKNOWN_INDEX))
    if shares[FRAGMENT] and len(keywords):
        rows.append(_rows(FRAGMENT, rng.choice(keywords, int(n_unknown * shares[FRAGMENT] / total)), UNKNOWN_INDEX))
    if shares[SPEECH]:
        rows.append(_rows(SPEECH, rng.integers(0, 1 << 30, int(n_unknown * shares[SPEECH] / total)), UNKNOWN_INDEX))
    n_silence = int(settings.silence_ratio * target)
    silence_clips = np.flatnonzero(src.labels == SILENCE_INDEX)
    n_clips = min(len(silence_clips), n_silence // 2) if src.noise else n_silence
    if len(silence_clips):
        rows.append(_rows(CLIP, _fill(silence_clips, n_clips, rng), SILENCE_INDEX))
    if src.noise:
        rows.append(_rows(NOISE, rng.integers(0, 1 << 30, n_silence - n_clips), SILENCE_INDEX))
    plan = np.concatenate(rows) if rows else np.zeros((0, 3), np.int64)
    return plan[rng.permutation(len(plan))]


def _fill(ix: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """All of ``ix`` (as far as ``n`` allows), topped up at random to ``n``."""
    if len(ix) == 0 or n <= 0:
        return np.zeros(0, np.int64)
    reps = np.tile(ix, n // len(ix))
    return np.concatenate((reps, rng.choice(ix, n - len(reps), replace=False)))


def _per_word(ix: np.ndarray, words: list[str], n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` of the clips ``ix``, as many for each word (every clip of a word before any twice)."""
    by_word: dict[str, list[int]] = {}
    for i in ix:
        by_word.setdefault(words[int(i)], []).append(int(i))
    names = sorted(by_word)
    if not names or n <= 0:
        return np.zeros(0, np.int64)
    counts = np.full(len(names), n // len(names))
    counts[rng.permutation(len(names))[: n % len(names)]] += 1
    return np.concatenate([_fill(np.array(by_word[w]), int(c), rng) for w, c in zip(names, counts, strict=True)])


def _rows(kind: int, index: np.ndarray, label: int) -> np.ndarray:
    index = np.asarray(index, dtype=np.int64)
    return np.stack((np.full(len(index), kind), index, np.full(len(index), label)), axis=1)


def make_batch(
    src: Sources, plan: np.ndarray, settings: AugmentSettings, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Waveforms (n, 8000) float32 and integer labels for some rows of a plan."""
    x = np.zeros((len(plan), WINDOW_SAMPLES), np.float32)
    for i, (kind, index, label) in enumerate(plan):
        x[i] = example(src, int(kind), int(index), int(label), settings, rng)
    return x, plan[:, 2].astype(np.int64)


def example(
    src: Sources, kind: int, index: int, label: int, settings: AugmentSettings, rng: np.random.Generator
) -> np.ndarray:
    """One augmented window."""
    if kind == NOISE:
        return _noise_window(src, rng) * _db(rng.uniform(*settings.silence_db)) if rng.random() > 0.03 else _zeros()
    if kind == PHRASE:
        x, active = _phrase_window(src, index, rng)
    elif kind == SPEECH:
        x = _speech_window(src, rng, index)
        active = x
    else:
        clip = src.clip(index)
        s, e = (int(v) for v in src.bounds[index])
        if label == SILENCE_INDEX and kind != FRAGMENT:
            return clip * _db(rng.uniform(*settings.gain_db))
        if settings.speed_prob and rng.random() < settings.speed_prob:
            clip, s, e = at_speed(clip, s, e, rng.uniform(*settings.speed_range))
        if kind == FRAGMENT:
            x, active = _fragment(clip[s:e], rng)
        else:
            x = _window_of(clip, -int(rng.integers(-s, WINDOW_SAMPLES - e + 1)) if settings.shift else 0)
            active = clip[s:e]
    extra_db = 0.0
    if settings.channel_prob and rng.random() < settings.channel_prob:
        x = other_channel(x, rng)
        extra_db = rng.uniform(*EXTRA_ATTENUATION_DB)
    if src.noise and rng.random() < settings.noise_prob:
        babble = bool(src.speech) and settings.babble_prob > 0 and rng.random() < settings.babble_prob
        noise = _speech_window(src, rng) if babble else _noise_window(src, rng)
        snr = rng.uniform(*(settings.babble_snr_db if babble else settings.snr_db))
        x = x + noise * (_rms(active) / max(_rms(noise), 1e-6) * _db(-snr))
    x = x * _db(rng.uniform(*settings.gain_db) + extra_db)
    return np.clip(x, -1.0, 1.0).astype(np.float32)


def _phrase_window(src: Sources, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One second of a phrase recording holding part of its spoken part (a stream window passing over it)."""
    i = index % len(src.phrases)
    audio, (s, e) = src.phrases[i], src.phrase_bounds[i]
    centre = int(rng.integers(s, max(s + 1, e)))
    start = centre - int(rng.uniform(0.2, 0.8) * WINDOW_SAMPLES)
    x = np.zeros(WINDOW_SAMPLES, np.float32)
    a, b = max(0, start), min(len(audio), start + WINDOW_SAMPLES)
    x[a - start : b - start] = audio[a:b]
    return x, audio[s:e]


def _fragment(word: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n = max(80, int(len(word) * rng.uniform(0.25, 0.55)))
    head = rng.random() < 0.5
    piece = word[:n] if head else word[-n:]
    if rng.random() < 0.5:  # at the window's edge, as the stream sees a word entering or leaving
        where = WINDOW_SAMPLES - len(piece) if head else 0
    else:
        where = rng.integers(0, WINDOW_SAMPLES - len(piece) + 1)
    return _place(piece, where), piece


def _place(piece: np.ndarray, where: int) -> np.ndarray:
    x = np.zeros(WINDOW_SAMPLES, np.float32)
    piece = piece[:WINDOW_SAMPLES]
    where = int(min(max(where, 0), WINDOW_SAMPLES - len(piece)))
    x[where : where + len(piece)] = piece
    return x


def _window_of(clip: np.ndarray, start: int) -> np.ndarray:
    """The window of the clip that begins at sample ``start`` (zeros outside the clip), as a stream window cuts it."""
    x = np.zeros(WINDOW_SAMPLES, np.float32)
    a, b = max(0, start), min(len(clip), start + WINDOW_SAMPLES)
    if b > a:
        x[a - start : b - start] = clip[a:b]
    return x


def at_speed(clip: np.ndarray, s: int, e: int, speed: float) -> tuple[np.ndarray, int, int]:
    """The clip played ``speed`` times as fast (tempo and pitch), with its spoken part's new bounds."""
    out = resample(clip, SAMPLE_RATE * speed, SAMPLE_RATE)
    e2 = max(1, min(len(out), int(np.ceil(e / speed))))
    s2 = min(int(s / speed), e2 - 1)
    if e2 - s2 > WINDOW_SAMPLES:  # slowed past a window: keep its first second
        e2 = s2 + WINDOW_SAMPLES
    return out, s2, e2


def _noise_window(src: Sources, rng: np.random.Generator) -> np.ndarray:
    audio = src.noise[rng.integers(0, len(src.noise))]
    start = rng.integers(0, len(audio) - WINDOW_SAMPLES + 1)
    x = audio[start : start + WINDOW_SAMPLES].astype(np.float32)
    return x / max(_rms(x), 1e-6) * 0.1


def _speech_window(src: Sources, rng: np.random.Generator, index: int | None = None) -> np.ndarray:
    """A second of continuous speech (recording ``index``, or one at random) at 0.1 RMS."""
    audio = src.speech[rng.integers(0, len(src.speech)) if index is None else index % len(src.speech)]
    start = rng.integers(0, len(audio) - WINDOW_SAMPLES + 1)
    x = audio[start : start + WINDOW_SAMPLES].astype(np.float32)
    return x * (0.1 / max(_rms(x), 1e-4))


def _zeros() -> np.ndarray:
    return np.zeros(WINDOW_SAMPLES, np.float32)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


def _db(db: float) -> float:
    return float(10.0 ** (db / 20.0))


def fixed_set(src: Sources, settings: AugmentSettings, seed: int, n_speech: int = 300, n_noise: int = 100,
              fragment_share: float = 0.2, max_clips: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    """A fixed held-out set: the clips (``max_clips`` at most; shifted, some noisy), fragments, speech, noise."""
    rng = np.random.default_rng(seed)
    keywords = np.flatnonzero(src.labels >= FIRST_KEYWORD)
    chosen = np.arange(len(src.labels))
    if len(chosen) > max_clips:
        chosen = np.sort(rng.permutation(len(chosen))[:max_clips])
    rows = [_rows(CLIP, chosen[src.labels[chosen] == k], k) for k in np.unique(src.labels[chosen])]
    if settings.fragments and len(keywords):
        rows.append(_rows(FRAGMENT, rng.choice(keywords, int(fragment_share * len(keywords))), UNKNOWN_INDEX))
    if src.speech:
        rows.append(_rows(SPEECH, rng.integers(0, 1 << 30, n_speech), UNKNOWN_INDEX))
    if src.noise:
        rows.append(_rows(NOISE, rng.integers(0, 1 << 30, n_noise), SILENCE_INDEX))
    plan = np.concatenate(rows)
    return make_batch(src, plan, settings, rng)
