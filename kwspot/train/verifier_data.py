"""Examples for the verifier head: 1.5 s windows that end where the stream's events fire, and their embeddings.

A candidate event fires a little after its word ends, so every window puts
the word's end a latency before the window's end, drawn as the validation
streams' events show (``LATENCY_S``). Groups (each cached on disk as float16 embeddings, so reruns are quick):

- ``keywords``: keyword clips of the split (positive), ``copies`` times each;
- ``espeak_keywords``: espeak-ng voices saying the keywords (positive, so that a synthetic voice is no shortcut);
- ``other_words``: the split's other words, at most ``PER_WORD`` clips a word (negative);
- ``fragments``: the first or last 25-55% of a quarter of the keyword clips, near the window's end (negative);
- ``espeak_words``: espeak-ng near misses and common words (negative);
- ``speech``: random stretches of continuous speech of the split's speakers (negative);
- ``wake_phrases``: the split's share of the wake phrases, word end placed as for words (negative);
- ``noise``: background noise alone at random levels (negative);
- ``candidates`` (with a first-stage model): that model's own events on streams of the split's clips over
  noise and clean, its speech and wake phrases, each window ending where the event fired and labelled by
  the word under it (a hit its keyword, a wrong keyword the word said, anything else unknown).

Every word window gets background noise (the training part of the
recordings) at 0-20 dB SNR with probability ``NOISE_PROB`` and a random gain.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from kwspot import UNKNOWN
from kwspot.detector import DetectorSettings
from kwspot.frontend import SAMPLE_RATE, load_audio
from kwspot.model import Model
from kwspot.pipeline import hop_levels, stream_probabilities
from kwspot.train.data import (
    Dataset,
    audio_files,
    cache_dir,
    clip_windows,
    load_long,
    removed_unless_renamed,
    speech_files,
    to_float,
    which_set,
    word_bounds,
)
from kwspot.train.scoring import replay
from kwspot.train.streams import Stream, Word, build_stream

WINDOW_S = 1.5
WINDOW = int(WINDOW_S * SAMPLE_RATE)
# word end (word_bounds) to event on the validation streams: median 0.2 s, 5th-95th percentile -0.13..0.37 s;
# a normal draw (mean, sd) cut at (low, high). A uniform -0.3..0.6 s cost 20 points of keyword accuracy.
LATENCY_S = (0.2, 0.12, -0.15, 0.5)
SNR_DB = (0.0, 20.0)
NOISE_PROB = 0.8
GAIN_DB = (-15.0, 5.0)
PER_WORD = 120
VERSION = 1  # bump when the way examples are made changes

Example = tuple[np.ndarray, str]  # (float32 window of WINDOW samples, label)


def _db(db: float) -> float:
    return float(10.0 ** (db / 20.0))


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


class Maker:
    """Makes windows from clips and recordings, with noise from the training part of the noise recordings."""

    def __init__(self, noise: list[np.ndarray], rng: np.random.Generator) -> None:
        self.noise = noise
        self.rng = rng

    def noise_window(self) -> np.ndarray:
        audio = self.noise[self.rng.integers(0, len(self.noise))]
        start = self.rng.integers(0, len(audio) - WINDOW + 1)
        x = audio[start : start + WINDOW].astype(np.float32)
        return x / max(_rms(x), 1e-6)

    def finish(self, x: np.ndarray, active: np.ndarray) -> np.ndarray:
        """Noise at a random SNR (relative to ``active``, the spoken part), then a random gain."""
        if self.noise and self.rng.random() < NOISE_PROB:
            x = x + self.noise_window() * _rms(active) * _db(-self.rng.uniform(*SNR_DB))
        return np.clip(x * _db(self.rng.uniform(*GAIN_DB)), -1.0, 1.0).astype(np.float32)

    def place(self, audio: np.ndarray, word_end: int) -> np.ndarray:
        """A window whose end lies a drawn latency after ``word_end`` (a sample of ``audio``)."""
        mean, sd, low, high = LATENCY_S
        end = max(1, word_end + int(np.clip(self.rng.normal(mean, sd), low, high) * SAMPLE_RATE))
        x = np.zeros(WINDOW, np.float32)
        piece = audio[max(0, end - WINDOW) : min(end, len(audio))]
        x[WINDOW - (end - max(0, end - WINDOW)) :][: len(piece)] = piece
        return x

    def word(self, clip: np.ndarray) -> np.ndarray:
        s, e = word_bounds(clip)
        return self.finish(self.place(clip, e), clip[s:e])

    def fragment(self, clip: np.ndarray) -> np.ndarray:
        s, e = word_bounds(clip)
        n = max(80, int((e - s) * self.rng.uniform(0.25, 0.55)))
        piece = clip[s : s + n] if self.rng.random() < 0.5 else clip[e - n : e]
        x = np.zeros(WINDOW, np.float32)
        x[WINDOW - n - int(self.rng.uniform(0.0, 0.3) * SAMPLE_RATE) :][:n] = piece
        return self.finish(x, piece)

    def stretch(self, audio: np.ndarray) -> np.ndarray:
        start = self.rng.integers(0, len(audio) - WINDOW + 1)
        x = audio[start : start + WINDOW].astype(np.float32)
        return self.finish(x * (0.1 / max(_rms(x), 1e-4)), x)

    def silence(self) -> np.ndarray:
        return (self.noise_window() * _db(self.rng.uniform(-70.0, -15.0))).astype(np.float32)


def _per_word(data: Dataset, split: str, rng: np.random.Generator) -> list:
    clips = [c for c in data.clips[split] if c.label == UNKNOWN]
    out = []
    for word in sorted({c.word for c in clips}):
        mine = [c for c in clips if c.word == word]
        out += [mine[i] for i in sorted(rng.permutation(len(mine))[:PER_WORD])]
    return out


def wake_phrase_files(folder: Path, split: str) -> list[Path]:
    """The split's share of the wake phrases: the hash of each file name, as the quality benchmark splits them."""
    if not folder.is_dir():
        return []
    files = [f for sub in sorted(p for p in folder.iterdir() if p.is_dir()) for f in audio_files(sub)]
    return [f for f in files if which_set(f.name) == split]


def group_makers(data: Dataset, split: str, speech: Path | None, wake: Path | None, copies: int,
                 espeak: bool, cache: Path | None) -> dict[str, tuple[str, Callable[[Maker], list[Example]]]]:
    """Each group's cache identity and how to make its examples."""
    rng = np.random.default_rng(0)
    keywords = [c for c in data.clips[split] if c.label not in (UNKNOWN, "_silence_")]
    others = _per_word(data, split, rng)
    kw_paths = [c.path for c in keywords]
    fragment_clips = [keywords[i] for i in sorted(rng.permutation(len(keywords))[: len(keywords) // 4])]

    def from_clips(clips: list, n: int, frag: bool = False) -> Callable[[Maker], list[Example]]:
        def make(m: Maker) -> list[Example]:
            windows = clip_windows([c.path for c in clips], cache)
            out = []
            for _ in range(n):
                for c, w in zip(clips, windows, strict=True):
                    x = to_float(w)
                    out.append((m.fragment(x), UNKNOWN) if frag else (m.word(x), c.label))
            return out
        return make

    placed = f"{LATENCY_S}"  # the identity of every group placed by Maker.place
    groups = {
        "keywords": (_paths_key(kw_paths) + f"x{copies}" + placed, from_clips(keywords, copies)),
        "other_words": (_paths_key([c.path for c in others]) + "x3" + placed, from_clips(others, 3)),
        "fragments": (_paths_key(kw_paths) + "f", from_clips(fragment_clips, 1, frag=True)),
        "noise": ("400", lambda m: [(m.silence(), UNKNOWN) for _ in range(400)]),
    }
    if speech is not None:
        files = speech_files(speech, split)

        def speech_make(m: Maker) -> list[Example]:
            audio = load_long(files, "all")
            return [(m.stretch(audio[i % len(audio)]), UNKNOWN) for i in range(2000 if split == "train" else 600)]
        groups["speech"] = (_paths_key(files), speech_make)
    wake_files = wake_phrase_files(wake, split) if wake is not None else []
    if wake_files:
        def wake_make(m: Maker) -> list[Example]:
            return [(m.word(load_audio(f)), UNKNOWN) for f in wake_files]
        groups["wake_phrases"] = (_paths_key(wake_files) + placed, wake_make)
    if espeak and split == "train":
        from kwspot.train.espeak import VOICES, espeak_clips

        words = sorted({c.label for c in keywords})

        def espeak_pos(m: Maker) -> list[Example]:
            clips = [(to_float(w), words[i // len(VOICES)]) for s in range(4)
                     for i, w in enumerate(espeak_clips(words, seed=s))]
            return [(m.word(x), label) for _ in range(2) for x, label in clips]

        def espeak_neg(m: Maker) -> list[Example]:
            return [(m.word(to_float(w)), UNKNOWN) for w in espeak_clips()]
        groups["espeak_keywords"] = (",".join(words) + placed, espeak_pos)
        groups["espeak_words"] = ("default" + placed, espeak_neg)
    return groups


CANDIDATE_THRESHOLD = 0.5  # the first stage's threshold for candidates (under every shipped threshold)
CANDIDATE_PASSES = ((20.0, 10.0, 5.0, 0.0), (20.0, 10.0, 5.0, 0.0), None)  # SNRs of each pass (None: clean)
CANDIDATE_CHUNK = 1000  # clips per stream
WORD_REACH_S = (0.3, 0.8)  # an event this close before a word's start / after its end is about that word


def label_at(words: list[Word], t: float) -> str:
    """The label of the word an event at ``t`` is about, else unknown."""
    for w in words:
        if w.start - WORD_REACH_S[0] <= t <= w.end + WORD_REACH_S[1]:
            return w.label
    return UNKNOWN


def stream_candidates(model: Model, stream: Stream, pause_ms: float) -> list[Example]:
    """The first stage's events on a stream (through the gate if ``pause_ms``), as the windows the daemon's verifier
    would judge."""
    t, p = stream_probabilities(model, stream.audio)
    settings = DetectorSettings(threshold=CANDIDATE_THRESHOLD, min_pause_ms=pause_ms)
    out = []
    for _, te in replay(model.labels, t, p, settings, levels=hop_levels(stream.audio)[: len(t)]):
        end = int(round(te * SAMPLE_RATE))
        piece = stream.audio[max(0, end - WINDOW) : end]
        out.append((np.pad(piece, (WINDOW - len(piece), 0)).astype(np.float32), label_at(stream.words, te)))
    return out


def candidate_group(model_path: Path, data: Dataset, split: str, speech: Path | None, wake: Path | None,
                    pause_ms: float, cache: Path | None) -> tuple[str, Callable[[Maker], list[Example]]]:
    """Cache identity and maker of the ``candidates`` group for the first stage at ``model_path``."""
    clips = [c for c in data.clips[split] if c.label != "_silence_"]
    wake_files = wake_phrase_files(wake, split) if wake is not None else []
    speech_list = speech_files(speech, split) if speech is not None else []
    identity = (hashlib.sha1(model_path.read_bytes()).hexdigest()[:16] + _paths_key([c.path for c in clips])
                + _paths_key(wake_files + speech_list) + f"|{CANDIDATE_THRESHOLD}|{CANDIDATE_PASSES}|{pause_ms}")

    def make(m: Maker) -> list[Example]:
        model = Model(model_path)
        windows = [to_float(w) for w in clip_windows([c.path for c in clips], cache)]
        out: list[Example] = []
        for snrs in CANDIDATE_PASSES:
            order = m.rng.permutation(len(clips))
            for i in range(0, len(order), CANDIDATE_CHUNK):
                items = [(windows[j], clips[j].label) for j in order[i : i + CANDIDATE_CHUNK]]
                out += stream_candidates(model, build_stream(items, m.noise, m.rng, snrs), pause_ms)
        if wake_files:
            items = [(load_audio(f), UNKNOWN) for f in wake_files]
            out += stream_candidates(model, build_stream(items, m.noise, m.rng, (20.0, 10.0, 5.0)), pause_ms)
        if speech_list:
            out += stream_candidates(model, Stream(np.concatenate(load_long(speech_list, "all"))), pause_ms)
        return out
    return identity, make


def _paths_key(paths: list[Path]) -> str:
    h = hashlib.sha1()
    for p in paths:
        h.update(f"{p}|{p.stat().st_size}\n".encode())
    return h.hexdigest()[:16]


_EMBEDDER = None


def _embed_chunk(windows: np.ndarray) -> np.ndarray:
    global _EMBEDDER
    if _EMBEDDER is None:
        from kwspot.verifier import Embedder

        _EMBEDDER = Embedder(WINDOW, threads=1)
    return np.stack([_EMBEDDER.embed(w) for w in windows]).astype(np.float16)


def embed_all(windows: np.ndarray, workers: int = 2) -> np.ndarray:
    """(n, n_embeddings, 96) float16 embeddings of (n, WINDOW) windows, in order."""
    chunks = [windows[i : i + 256] for i in range(0, len(windows), 256)]
    if workers <= 1:
        return np.concatenate([_embed_chunk(c) for c in chunks])
    with ProcessPoolExecutor(workers) as pool:
        return np.concatenate(list(pool.map(_embed_chunk, chunks)))


def group_embeddings(name: str, identity: str, make: Callable[[Maker], list[Example]], noise: list[np.ndarray],
                     split: str, seed: int, workers: int, cache: Path | None,
                     log: Callable[[str], None] = print) -> tuple[np.ndarray, list[str]]:
    """One group's (embeddings, labels), from the cache or made now."""
    key = hashlib.sha1(f"{VERSION}|{name}|{identity}|{split}|{seed}|{WINDOW}".encode()).hexdigest()[:16]
    target = (cache or cache_dir()) / f"verifier-{name}-{split}-{key}.npz"
    if target.is_file():
        with np.load(target) as f:
            return f["x"], [str(s) for s in f["y"]]
    seed_of_group = int.from_bytes(hashlib.sha1(f"{name}|{split}|{seed}".encode()).digest()[:4], "little")
    examples = make(Maker(noise, np.random.default_rng(seed_of_group)))
    log(f"{name} ({split}): embedding {len(examples)} windows")
    x = embed_all(np.stack([w for w, _ in examples]), workers)
    y = [label for _, label in examples]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp.npz")
    with removed_unless_renamed(tmp):
        np.savez(tmp, x=x, y=np.array(y))
        os.replace(tmp, target)
    return x, y


def split_embeddings(data: Dataset, split: str, speech: Path | None, wake: Path | None, copies: int, espeak: bool,
                     seed: int, workers: int, cache: Path | None, log: Callable[[str], None] = print,
                     first_stage: Path | None = None, pause_ms: float = 0.0) -> dict[str, tuple[np.ndarray, list[str]]]:
    """Embeddings and labels of every group of a split (with ``candidates`` when a first stage is given)."""
    noise = load_long(data.noise_files, "train" if split == "train" else "eval")
    out = {}
    groups = group_makers(data, split, speech, wake, copies, espeak, cache)
    if first_stage is not None:
        groups["candidates"] = candidate_group(first_stage, data, split, speech, wake, pause_ms, cache)
    for name, (identity, make) in groups.items():
        out[name] = group_embeddings(name, identity, make, noise, split, seed, workers, cache, log)
    return out
