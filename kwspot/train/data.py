"""A Speech Commands folder: its clips, its speaker-disjoint splits, and a bounded audio cache.

Numpy only (no TensorFlow): ``kwspot evaluate`` uses it too. Every clip is
read through :func:`kwspot.frontend.load_audio`, the daemon's own front end,
and kept as one 8 kHz second of int16 in a memory-mapped ``.npy`` cache on
disk, so that a 105,000-clip download costs disk (1.7 GB), not memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import signal
import threading
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kwspot import KEYWORDS, SILENCE, UNKNOWN
from kwspot.errors import KwspotError
from kwspot.frontend import SAMPLE_RATE, WINDOW_SAMPLES, fit_window, load_audio
from kwspot.paths import cannot_write_in, checked, not_a_file, shown

log = logging.getLogger("kwspot")

AUDIO_SUFFIXES = (".wav", ".flac")
NOISE_DIR = "_background_noise_"
SPLITS = ("train", "validation", "testing")
NOISE_TRAIN_FRACTION = 0.8  # the first 80% of each noise recording trains; the rest is for evaluation streams
MAX_PERCENTAGE = 2**27 - 1


def which_set(name: str, validation_pct: float = 10.0, testing_pct: float = 10.0) -> str:
    """The dataset's own stable hash split, for files that no list names (``_silence_``, speech)."""
    base = re.sub(r"_nohash_.*$", "", Path(name).name)
    digest = int(hashlib.sha1(base.encode()).hexdigest(), 16)
    pct = (digest % (MAX_PERCENTAGE + 1)) * (100.0 / MAX_PERCENTAGE)
    if pct < validation_pct:
        return "validation"
    if pct < validation_pct + testing_pct:
        return "testing"
    return "train"


def audio_files(folder: Path) -> list[Path]:
    """WAV and FLAC files directly under ``folder``, sorted."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES and not p.name.startswith("."))  # ._x.wav


def speech_files(folder: str | Path, split: str | None = None) -> list[Path]:
    """Continuous-speech files (e.g. librispeech_negatives), split by speaker: 70/10/20."""
    folder = Path(folder)
    if not folder.is_dir():
        raise KwspotError(f"{folder}: no such folder of negative speech")
    files = audio_files(folder)
    if not files:
        raise KwspotError(f"{folder}: holds no WAV or FLAC files")
    if split is None:
        return files
    return [f for f in files if which_set(f.name.split("-")[0] + "_nohash_", 10.0, 20.0) == split]


def phrase_files(folder: str | Path, split: str | None = None) -> list[Path]:
    """Recordings in the sub-folders of ``folder`` (e.g. wake_phrases/<phrase>/), split by the file-name hash."""
    folder = Path(folder)
    if not folder.is_dir():
        raise KwspotError(f"{folder}: no such folder of phrase recordings")
    files = [f for sub in sorted(p for p in folder.iterdir() if p.is_dir()) for f in audio_files(sub)]
    if not files:
        raise KwspotError(f"{folder}: holds no sub-folders of WAV or FLAC files")
    return files if split is None else [f for f in files if which_set(f.name) == split]


@dataclass
class Clip:
    path: Path
    word: str  # the folder name
    label: str  # one of the dataset's labels: a keyword, _unknown_ or _silence_


@dataclass
class Dataset:
    """The clips of a Speech Commands folder, by split, plus its noise recordings, labelled for ``keywords``."""

    root: Path
    clips: dict[str, list[Clip]] = field(default_factory=dict)
    noise_files: list[Path] = field(default_factory=list)
    keywords: tuple[str, ...] = KEYWORDS

    @property
    def labels(self) -> tuple[str, ...]:
        """The model's classes, in output order: ``_silence_``, ``_unknown_``, then the keywords."""
        return labels_for(self.keywords)

    def label_indices(self, split: str) -> np.ndarray:
        index = {label: i for i, label in enumerate(self.labels)}
        return np.array([index[c.label] for c in self.clips[split]], dtype=np.int64)

    def missing_keywords(self) -> list[str]:
        """Keywords with no clip in any split."""
        present = {c.word for clips in self.clips.values() for c in clips}
        return [k for k in self.keywords if k not in present]

    def untrained_keywords(self) -> list[str]:
        """Keywords with no clip in the training split (all of them listed for validation or testing)."""
        present = {c.word for c in self.clips["train"]}
        return [k for k in self.keywords if k not in present]

    def counts(self, split: str) -> dict[str, int]:
        counts = dict.fromkeys(self.labels, 0)
        for clip in self.clips[split]:
            counts[clip.label] += 1
        return counts


MAX_LIST_BYTES = 64 << 20  # a clip list (Speech Commands' full validation list: under 1 MiB)


def _read_list(root: Path, name: str | Path) -> set[str]:
    """The clip keys a list names: ``name`` in the data folder, else as given (from the current folder)."""
    path = root / name if (root / name).is_file() else Path(name)
    if not path.is_file():
        return set()
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_LIST_BYTES + 1)
        if len(raw) > MAX_LIST_BYTES:
            raise KwspotError(f"{shown(path)}: over {MAX_LIST_BYTES >> 20} MiB: not a list of clips")
        text = raw.decode("utf-8-sig")  # a BOM from a Windows editor is no part of the first path
    except OSError as exc:
        raise KwspotError(f"{shown(path)}: unreadable list ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise KwspotError(f"{shown(path)}: not UTF-8 text (line {line})") from None
    return {_clip_key(line.strip().replace("\\", "/")) for line in text.splitlines() if line.strip()}


def _clip_key(relative: str) -> str:
    """"word/file" without the suffix, in Unicode's composed form (a folder copied from macOS is decomposed)."""
    return unicodedata.normalize("NFC", Path(relative).with_suffix("").as_posix())


def labels_for(keywords: tuple[str, ...]) -> tuple[str, ...]:
    return (SILENCE, UNKNOWN, *keywords)


def label_of(word: str, keywords: tuple[str, ...] = KEYWORDS) -> str:
    if word == SILENCE:
        return SILENCE
    return word if word in keywords else UNKNOWN


def scan(root: str | Path, testing_list: str | Path = "testing_list.txt",
         keywords: tuple[str, ...] = KEYWORDS) -> Dataset:
    """Index a Speech Commands folder (WAV or FLAC, any rate) into train/validation/testing.

    Folders named in ``keywords`` are keywords; every other word folder is ``_unknown_``.
    """
    keywords = tuple(unicodedata.normalize("NFC", k) for k in keywords)
    root = Path(root)
    if not root.is_dir():
        raise KwspotError(f"{root}: no such data folder")
    validation = _read_list(root, "validation_list.txt")
    testing = _read_list(root, testing_list)
    if Path(testing_list).name != "testing_list.txt" and not testing:
        raise KwspotError(f"{testing_list}: list missing or empty")
    data = Dataset(root, {split: [] for split in SPLITS}, keywords=keywords)
    found: set[str] = set()
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if folder.name == NOISE_DIR:
            data.noise_files = audio_files(folder)
            continue
        if folder.name.startswith(".") or (folder.name.startswith("_") and folder.name != SILENCE):
            continue
        word = unicodedata.normalize("NFC", folder.name)
        for path in audio_files(folder):
            key = _clip_key(f"{word}/{path.name}")
            found.add(key)
            if folder.name == SILENCE:
                split = which_set(path.name)
            else:
                split = "validation" if key in validation else "testing" if key in testing else "train"
            data.clips[split].append(Clip(path, word, label_of(word, keywords)))
    if unmatched := sorted((validation | testing) - found):  # a clip listed for evaluation must not train unsaid
        log.warning("%s: %d listed clips are not under it (e.g. %s): scored nowhere", shown(root), len(unmatched),
                    shown(unmatched[0])[:80])
    if not any(data.clips.values()):
        raise KwspotError(f"{root}: no WAV or FLAC clips in word folders (Speech Commands layout expected)")
    if len(data.missing_keywords()) == len(keywords):
        raise KwspotError(f"{root}: none of the keyword folders ({', '.join(keywords)}) found")
    return data


def cache_dir() -> Path:
    """``$KWSPOT_CACHE``, else ``$XDG_CACHE_HOME/kwspot`` (where absolute, as the XDG spec says), else
    ``~/.cache/kwspot``; KwspotError if ``$HOME`` is set but empty or relative (the cache would land in the
    current folder or at the root)."""
    if os.environ.get("KWSPOT_CACHE"):
        return Path(os.environ["KWSPOT_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if os.path.isabs(xdg):
        return Path(xdg, "kwspot")
    home = os.environ.get("HOME")
    if home is not None and not os.path.isabs(home):
        raise KwspotError(f"no cache folder: $HOME is {home!r}; set KWSPOT_CACHE (or XDG_CACHE_HOME) to a folder")
    return Path("~/.cache/kwspot").expanduser()


def writable_cache(cache: Path | None = None) -> Path:
    """The cache folder (``cache``, or the default), made if missing; KwspotError unless files can be written there.

    Checked before any work, so that a bad ``--cache`` or ``KWSPOT_CACHE`` is one line, not a traceback later.
    """
    folder = checked(cache or cache_dir(), "cache folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise KwspotError(f"{shown(folder)}: cache folder not writable (not a folder)") from None
    except OSError as exc:
        raise KwspotError(f"{shown(folder)}: cache folder not writable ({exc.strerror or exc})") from None
    if why := cannot_write_in(folder):
        raise KwspotError(f"{shown(folder)}: cache folder not writable ({why})")
    return folder


def _key(paths: list[Path]) -> str:
    h = hashlib.sha1()
    for p in paths:
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def clip_windows(paths: list[Path], cache: Path | None = None, progress: bool = False) -> np.ndarray:
    """One int16 second per clip (short clips padded centred), memory-mapped from a disk cache."""
    if not paths:
        return np.zeros((0, WINDOW_SAMPLES), np.int16)
    folder = cache or cache_dir()
    target = folder / f"clips-{_key(paths)}.npy"
    if os.path.lexists(target) and not target.is_file() and not target.is_symlink():  # np.load on a FIFO waits
        raise KwspotError(f"{shown(target)}: {not_a_file(target, 'cache')}, where the clip cache goes; remove it")
    if os.path.lexists(target):
        try:
            windows = np.load(target, mmap_mode="r")
            if windows.shape == (len(paths), WINDOW_SAMPLES) and windows.dtype == np.int16:
                return windows
        except (OSError, ValueError, EOFError):  # cut short, or not a cache file: made again below
            pass
        log.warning("%s: damaged clip cache, made again", shown(target))
        try:
            target.unlink()
        except OSError as exc:
            raise KwspotError(f"{shown(target)}: damaged clip cache, cannot remove it ({exc.strerror})") from None
    folder.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp.npy")
    with removed_unless_renamed(tmp):
        try:  # the whole file now: a full disk is an error here, not SIGBUS when the mapping is written
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.int16, shape=(len(paths), WINDOW_SAMPLES))
            with open(tmp, "r+b") as f:
                os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as exc:
            raise KwspotError(f"{shown(folder)}: no room for the clip cache ({exc.strerror})") from None
        for i, path in enumerate(_progress(paths, "decoding clips", progress)):
            out[i] = to_int16(fit_window(load_audio(path)))
        out.flush()
        del out
        os.replace(tmp, target)
    return np.load(target, mmap_mode="r")


@contextlib.contextmanager
def removed_unless_renamed(tmp: Path) -> Iterator[None]:
    """Remove the partial file ``tmp`` however the block ends: an error, Ctrl-C, or SIGTERM.

    Its name holds the PID, so no later run would reuse or replace it (up to 1.7 GB for Speech Commands).
    SIGTERM, fatal by default, becomes an exit with status 143 meanwhile, so that the file goes too.
    """
    restore = _sigterm_as_exit()
    try:
        yield
    finally:
        tmp.unlink(missing_ok=True)
        restore()


def _sigterm_as_exit() -> Callable[[], None]:
    """Make SIGTERM raise SystemExit(143) while it has its default action; returns what undoes that."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        return lambda: None

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    return lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _progress(items: list[Path], what: str, show: bool):
    if not show:
        yield from items
        return
    from rich.console import Console
    from rich.progress import track

    yield from track(items, description=what, console=Console(stderr=True))  # stdout is for results


def to_int16(audio: np.ndarray) -> np.ndarray:
    return np.clip(np.round(np.asarray(audio) * 32767.0), -32768, 32767).astype(np.int16)


def to_float(audio: np.ndarray) -> np.ndarray:
    return np.asarray(audio, dtype=np.float32) / 32767.0


MAX_LONG_S = 1800  # of one long recording (noise, speech): a 3-hour file read whole took 2.4 GB while training


def load_long(paths: list[Path], part: str = "all") -> list[np.ndarray]:
    """Long recordings (noise, speech) as float32 8 kHz; ``part`` is "train", "eval" or "all" of each."""
    out = []
    for path in paths:
        audio = load_audio(path, MAX_LONG_S)
        if len(audio) >= MAX_LONG_S * SAMPLE_RATE:
            log.info("%s: its first %d s used (memory stays bounded)", shown(path), MAX_LONG_S)
        cut = int(len(audio) * NOISE_TRAIN_FRACTION)
        if part == "train":
            audio = audio[:cut]
        elif part == "eval":
            audio = audio[cut:]
        if len(audio) >= WINDOW_SAMPLES:
            out.append(audio)
    return out


def word_bounds(window: np.ndarray, frame: int = 160, rel_db: float = 30.0, floor_db: float = 8.0) -> tuple[int, int]:
    """Sample range [start, end) of the spoken word in a clip.

    Frames within ``rel_db`` of the loudest and ``floor_db`` above the clip's own
    noise floor (10th percentile of its non-silent frames) count as the word.
    """
    x = np.asarray(window, dtype=np.float32)
    n = len(x) // frame
    if n == 0:
        return 0, len(x)
    energy = np.sqrt(np.mean(x[: n * frame].reshape(n, frame) ** 2, axis=1)) + 1e-7
    level = 20 * np.log10(energy)
    sounding = level[level > -100]
    floor = float(np.percentile(sounding, 10)) if len(sounding) else -140.0
    active = np.flatnonzero(level > max(level.max() - rel_db, min(floor + floor_db, level.max() - 3)))
    return int(active[0] * frame), int(min(len(x), (active[-1] + 1) * frame))


def seconds(n: int) -> float:
    return n / SAMPLE_RATE
