"""The model's sidecar (``NAME.json`` beside ``NAME.tflite``): the one reader and writer.

The sidecar is the contract between training and the daemon::

    {"labels": ["_silence_", "_unknown_", "yes", ...],   # one per model output
     "sample_rate": 8000, "window_samples": 8000,       # what the model is fed
     "features": {"kind": "logmel", "frame": 256, ...},  # optional: a numpy front end feeds the model
                                                        # (kwspot.features); absent: the raw window
     "thresholds": {"yes": 0.8, ...},                   # optional, per keyword
     "verifier": {"head": "NAME.verifier.npz",          # optional second stage (kwspot.verifier)
                  "threshold": 0.5, "thresholds": {"yes": 0.4, ...}},
     ...}                                               # training facts, free form

Every label that does not start with ``_`` is a keyword: it can fire. Nothing
in the runtime names the words; they all come from here.
"""

from __future__ import annotations

import json
import os
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kwspot.errors import KwspotError
from kwspot.features import LogMelSpec
from kwspot.paths import not_a_file, write_atomic


def keywords_of(labels: Iterable[str]) -> tuple[str, ...]:
    """The labels that fire: every one not starting with ``_``."""
    return tuple(label for label in labels if not label.startswith("_"))


def sidecar_path(model_path: str | Path) -> Path:
    """Where the labels and front-end settings of a model live."""
    return Path(model_path).with_suffix(".json")


@dataclass(frozen=True)
class VerifierFile:
    """The second stage a model asks for: its head file and per-keyword verifier thresholds."""

    head: Path  # beside the sidecar
    threshold: float = 0.5
    thresholds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelFile:
    """A checked sidecar: what the model hears and how it is fed."""

    path: Path  # the sidecar itself
    labels: tuple[str, ...]
    sample_rate: int
    window_samples: int
    thresholds: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)  # the whole JSON object, training facts included
    verifier: VerifierFile | None = None
    features: LogMelSpec | None = None  # None: the model takes the raw window

    @property
    def keywords(self) -> tuple[str, ...]:
        return keywords_of(self.labels)


MAX_SIDECAR_BYTES = 16 << 20  # the bundled model's sidecar is 6 KiB
MAX_WINDOW_S = 10  # a longer window is not a keyword model's (and would be gigabytes of frame indexes)


def _whole(meta: dict[str, Any], key: str, default: int, path: Path, high: int = 10**6) -> int:
    value = meta.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise KwspotError(f"{path}: sidecar '{key}' must be a positive whole number, not {value!r:.40}")
    if value > high:
        raise KwspotError(f"{path}: sidecar '{key}' is {value}, more than {high} (not a keyword model's)")
    return value


def check_thresholds(thresholds: Any, keywords: Iterable[str], where: str) -> dict[str, float]:
    """Per-keyword thresholds as floats, each a keyword of the model and a number from 0 to 1."""
    keywords = tuple(keywords)
    if not isinstance(thresholds, Mapping):
        raise KwspotError(f"{where} must be a mapping of keyword to threshold, not {thresholds!r:.40}")
    out = {}
    for word, value in thresholds.items():
        if word not in keywords:
            shown_words = ", ".join(keywords[:MAX_LISTED]) + (", ..." if len(keywords) > MAX_LISTED else "")
            raise KwspotError(f"{where}.{word!s:.40} is not one of the model's keywords ({shown_words})")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise KwspotError(f"{where}.{word} must be a number from 0 to 1, not {value!r:.40}")
        out[str(word)] = float(value)
    return out


def _verifier(value: Any, keywords: tuple[str, ...], path: Path) -> VerifierFile | None:
    if value is None:
        return None
    head = value.get("head") if isinstance(value, dict) else None
    if not isinstance(head, str) or not head or Path(head).name != head:
        raise KwspotError(f"{path}: sidecar 'verifier' needs a 'head' file name beside it")
    threshold = value.get("threshold", 0.5)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise KwspotError(f"{path}: verifier.threshold must be a number from 0 to 1, not {threshold!r:.40}")
    thresholds = check_thresholds(_mapping_or_none(value.get("thresholds")), keywords, f"{path}: verifier.thresholds")
    return VerifierFile(path.parent / head, float(threshold), thresholds)


def _mapping_or_none(value: Any) -> Any:
    """A thresholds value as written: null means none; anything else is checked as a mapping (0 or [] is wrong)."""
    return {} if value is None else value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are distinct (json would keep the last of a repeated key without a word)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the key {key!r:.40} appears twice")
        out[key] = value
    return out


LABEL_FORBIDDEN = "/ # +"  # MQTT topic separators and wildcards: a label names a topic (hermes)


def label_ok(name: str) -> bool:
    """A label or keyword name events and topics can carry: no control character, line break or lone surrogate
    (a zero-width joiner of Persian or Hindi is fine), no ``/``, ``#`` or ``+``."""
    return (not any(unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") for c in name)
            and not any(c in name for c in LABEL_FORBIDDEN.split()))


MAX_FRAMES = 4000  # frames of a window (the bundled model: 97)
MAX_LISTED = 20  # keywords an error message lists
MAX_FFT = 8192  # 1 s at 8 kHz in one frame; the bundled model uses 256


def _features(value: Any, window_samples: int, sample_rate: int, path: Path) -> LogMelSpec | None:
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("kind") != "logmel":
        raise KwspotError(f"{path}: sidecar 'features' must be {{\"kind\": \"logmel\", ...}}")
    where = f"{path}: features"
    ints = {key: _whole(value, key, 0, path) for key in ("frame", "hop", "fft", "mels")}
    if ints["fft"] < ints["frame"] or ints["frame"] > window_samples:
        raise KwspotError(f"{where}: frame {ints['frame']} must fit both fft {ints['fft']} and the window")
    if (frames := 1 + (window_samples - ints["frame"]) // ints["hop"]) > MAX_FRAMES:  # each a row of fft floats
        raise KwspotError(f"{where}: hop {ints['hop']} gives {frames} frames a window, more than {MAX_FRAMES} "
                          "(a keyword model's front end uses about a hundred)")
    if ints["fft"] > MAX_FFT or ints["mels"] > ints["fft"] // 2 + 1:  # the DFT matrix is frame x fft floats
        raise KwspotError(f"{where}: fft {ints['fft']} and mels {ints['mels']} must be at most {MAX_FFT} and "
                          f"fft/2 + 1 (a keyword model's front end uses a few hundred)")
    reals = {}
    for key in ("fmin", "fmax", "floor"):
        number = value.get(key)
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not 0 <= number < 1e6:
            raise KwspotError(f"{where}.{key} must be a number, not {number!r:.40}")
        reals[key] = float(number)
    if not 0 <= reals["fmin"] < reals["fmax"] <= sample_rate / 2 or reals["floor"] <= 0:
        raise KwspotError(f"{where}: need 0 <= fmin < fmax <= {sample_rate / 2:g} and floor > 0")
    bands = {}
    for key in ("mean", "std"):
        numbers = value.get(key)
        if (not isinstance(numbers, list) or len(numbers) != ints["mels"]
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and abs(x) < 1e6 for x in numbers)):
            raise KwspotError(f"{where}.{key} must be a list of {ints['mels']} numbers")
        bands[key] = tuple(float(x) for x in numbers)
    if min(bands["std"]) <= 0:
        raise KwspotError(f"{where}.std must be positive")
    return LogMelSpec(**ints, **reals, **bands)


def check(meta: Any, path: Path) -> ModelFile:
    """Check a parsed sidecar; every problem is one line naming the file."""
    labels = meta.get("labels") if isinstance(meta, dict) else None
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels):
        raise KwspotError(f"{path}: sidecar has no list of 'labels'")
    if bad := next((x for x in labels if not label_ok(x)), None):
        raise KwspotError(f"{path}: sidecar label {bad!r:.40} must be text without control characters, "
                          f"nor {LABEL_FORBIDDEN}")
    if len(set(labels)) != len(labels):
        raise KwspotError(f"{path}: sidecar 'labels' repeat a name")
    if not keywords_of(labels):
        raise KwspotError(f"{path}: sidecar 'labels' name no keyword (every label starts with '_')")
    thresholds = check_thresholds(_mapping_or_none(meta.get("thresholds")), keywords_of(labels), f"{path}: thresholds")
    sample_rate = _whole(meta, "sample_rate", 8000, path)
    window_samples = _whole(meta, "window_samples", 8000, path, high=MAX_WINDOW_S * sample_rate)
    return ModelFile(
        path=path,
        labels=tuple(labels),
        sample_rate=sample_rate,
        window_samples=window_samples,
        thresholds=thresholds,
        meta=meta,
        verifier=_verifier(meta.get("verifier"), keywords_of(labels), path),
        features=_features(meta.get("features"), window_samples, sample_rate, path),
    )


def read(model_path: str | Path) -> ModelFile:
    """Read and check the sidecar of ``model_path`` (the ``.tflite``)."""
    path = sidecar_path(model_path)
    if os.path.lexists(path) and not path.is_file():  # a device would be read without end, a FIFO wait for ever
        raise KwspotError(f"{path}: {not_a_file(path, 'model sidecar')}")
    try:
        if path.stat().st_size > MAX_SIDECAR_BYTES:
            raise KwspotError(f"{path}: model sidecar over {MAX_SIDECAR_BYTES >> 20} MiB")
        meta = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_unique_keys)
    except FileNotFoundError:
        raise KwspotError(f"{path}: model sidecar missing (labels and front-end settings)") from None
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: JSON nested too deep
        raise KwspotError(f"{path}: unreadable model sidecar ({str(exc):.80})") from None
    return check(meta, path)


def write(model_path: str | Path, meta: dict[str, Any]) -> ModelFile:
    """Check ``meta`` and write it as the sidecar of ``model_path``, atomically (tmp file + rename)."""
    path = sidecar_path(model_path)
    checked = check(meta, path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, (json.dumps(meta, indent=2, default=str) + "\n").encode())
    except OSError as exc:
        raise KwspotError(f"{path}: cannot write the model sidecar ({exc.strerror or exc})") from None
    return checked


def save_verifier(model_path: str | Path, head: str, threshold: float,
                  thresholds: Mapping[str, float]) -> ModelFile:
    """Name a verifier head (a file beside the model) and its thresholds in a model's sidecar."""
    meta = dict(read(model_path).meta)
    meta["verifier"] = {"head": head, "threshold": float(threshold), "thresholds": dict(thresholds)}
    return write(model_path, meta)


def save_thresholds(model_path: str | Path, thresholds: Mapping[str, float]) -> ModelFile:
    """Replace the per-keyword thresholds in a model's sidecar, keeping everything else."""
    meta = dict(read(model_path).meta)
    meta["thresholds"] = dict(thresholds)
    return write(model_path, meta)
