"""Settings: built-in defaults, one YAML file, then command-line overrides.

The file is looked up in this order, and the first that exists is used:
``--config``, ``$KWSPOT_CONFIG``, ``/etc/kwspot/config.yaml``,
``$XDG_CONFIG_HOME/kwspot/config.yaml`` (``~/.config/...``). Keys missing
from the file keep their defaults; an unknown key or a bad value is an
error naming the key. ``config.yaml`` at the top of the repository shows
every setting with its default and a comment.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from kwspot import KEYWORDS
from kwspot.errors import KwspotError

SYSTEM_CONFIG = Path("/etc/kwspot/config.yaml")

DEFAULTS: dict[str, dict[str, Any]] = {
    "audio": {"device": None, "rate": None, "block_ms": 50, "max_lag_ms": 500},
    "model": {"path": None, "threads": 1},
    "detector": {
        "hop_ms": 100,
        "threshold": 0.8,
        "thresholds": {},
        "smoothing_hops": 3,
        "min_consecutive": 2,
        "refractory_s": 1.0,
        "min_pause_ms": 200,
    },
    "sinks": {"console": "auto", "jsonl": False, "socket": None, "socket_mode": "0660", "client_buffer_kb": 64},
    "logging": {"level": "info", "format": "auto"},
}


def _optional(check: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    return lambda key, value: None if value is None else check(key, value)


def _number(low: float, high: float, integer: bool = False) -> Callable[[str, Any], Any]:
    def check(key: str, value: Any) -> Any:
        kind = int if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kind):
            raise KwspotError(f"config: {key} must be {'a whole number' if integer else 'a number'}, not {value!r}")
        if not low <= value <= high:
            raise KwspotError(f"config: {key} must be between {low:g} and {high:g}, not {value!r}")
        return value

    return check


def _choice(*options: Any) -> Callable[[str, Any], Any]:
    def check(key: str, value: Any) -> Any:
        if value not in options:
            raise KwspotError(f"config: {key} must be one of {', '.join(map(str, options))}, not {value!r}")
        return value

    return check


def _string(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise KwspotError(f"config: {key} must be a non-empty string, not {value!r}")
    return value


def _device(key: str, value: Any) -> int | str:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise KwspotError(f"config: {key} must be a device index or part of a device name, not {value!r}")
    return value


def _mode(key: str, value: Any) -> str:
    if not isinstance(value, str) or len(value) not in (3, 4) or any(c not in "01234567" for c in value):
        raise KwspotError(f"config: {key} must be an octal mode in quotes such as \"0660\", not {value!r}")
    return value


def _thresholds(key: str, value: Any) -> dict[str, float]:
    if not isinstance(value, dict):
        raise KwspotError(f"config: {key} must be a mapping of keyword to threshold, not {value!r}")
    for word, threshold in value.items():
        if word not in KEYWORDS:
            raise KwspotError(f"config: {key}.{word} is not one of the keywords ({', '.join(KEYWORDS)})")
        _number(0.0, 1.0)(f"{key}.{word}", threshold)
    return {str(k): float(v) for k, v in value.items()}


CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "audio.device": _optional(_device),
    "audio.rate": _optional(_number(1000, 384000, integer=True)),
    "audio.block_ms": _number(5, 500, integer=True),
    "audio.max_lag_ms": _number(100, 10000, integer=True),
    "model.path": _optional(_string),
    "model.threads": _number(1, 16, integer=True),
    "detector.hop_ms": _number(10, 1000, integer=True),
    "detector.threshold": _number(0.0, 1.0),
    "detector.thresholds": _thresholds,
    "detector.smoothing_hops": _number(1, 50, integer=True),
    "detector.min_consecutive": _number(1, 50, integer=True),
    "detector.refractory_s": _number(0.0, 60.0),
    "detector.min_pause_ms": _number(0, 2000),
    "sinks.console": _choice("auto", True, False),
    "sinks.jsonl": _choice(True, False),
    "sinks.socket": _optional(_string),
    "sinks.socket_mode": _mode,
    "sinks.client_buffer_kb": _number(1, 65536, integer=True),
    "logging.level": _choice("debug", "info", "warning", "error"),
    "logging.format": _choice("auto", "plain", "time"),
}


def user_config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "kwspot" / "config.yaml"


def find_config(explicit: str | None) -> Path | None:
    """The config file to use, or None for built-in defaults."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise KwspotError(f"{path}: no such config file")
        return path
    env = os.environ.get("KWSPOT_CONFIG")
    if env:
        if not Path(env).is_file():
            raise KwspotError(f"{env}: no such config file (from $KWSPOT_CONFIG)")
        return Path(env)
    for candidate in (SYSTEM_CONFIG, user_config_path()):
        if candidate.is_file():
            return candidate
    return None


def validate(raw: Any, source: str = "config") -> dict[str, dict[str, Any]]:
    """Merge a parsed YAML mapping over the defaults, checking every key."""
    settings = copy.deepcopy(DEFAULTS)
    if raw is None:
        return settings
    if not isinstance(raw, dict):
        raise KwspotError(f"{source}: must be a mapping of sections ({', '.join(DEFAULTS)})")
    for section, values in raw.items():
        if section not in DEFAULTS:
            raise KwspotError(f"{source}: unknown section '{section}' (known: {', '.join(DEFAULTS)})")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise KwspotError(f"{source}: section '{section}' must be a mapping")
        for key, value in values.items():
            name = f"{section}.{key}"
            if name not in CHECKS:
                raise KwspotError(f"{source}: unknown key '{name}'")
            try:
                settings[section][key] = CHECKS[name](name, value)
            except KwspotError as exc:
                raise KwspotError(str(exc).replace("config:", f"{source}:", 1)) from None
    return settings


def load_config(explicit: str | None = None) -> tuple[dict[str, dict[str, Any]], Path | None]:
    """Find, read and validate the config file; returns (settings, path used)."""
    path = find_config(explicit)
    if path is None:
        return copy.deepcopy(DEFAULTS), None
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise KwspotError(f"{path}: cannot read config ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise KwspotError(f"{path}: not valid YAML{where}") from None
    return validate(raw, str(path)), path


def override(settings: dict[str, dict[str, Any]], name: str, value: Any) -> None:
    """Apply one command-line override (``section.key``), checked like the file."""
    if value is None:
        return
    section, key = name.split(".")
    settings[section][key] = CHECKS[name](f"--{key.replace('_', '-')}", value)
