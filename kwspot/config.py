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
import re
from pathlib import Path
from typing import Any

import yaml

from kwspot import MAX_RATE, MIN_RATE
from kwspot.checks import Check, choice, number, optional, show, string
from kwspot.errors import KwspotError
from kwspot.paths import checked, not_a_file
from kwspot.sinks import sink_specs

SYSTEM_CONFIG = Path("/etc/kwspot/config.yaml")
MAX_CONFIG_BYTES = 256 * 1024

DEFAULTS: dict[str, dict[str, Any]] = {
    "audio": {"backend": "auto", "device": None, "rate": None, "block_ms": 100, "max_lag_ms": 500},
    "model": {"path": None, "threads": 1},
    "detector": {
        "hop_ms": 100,
        "threshold": 0.8,
        "thresholds": {},
        "smoothing_hops": 3,
        "min_consecutive": 2,
        "refractory_s": 1.0,
        "min_pause_ms": 200,
        "verifier": "auto",
    },
    "sinks": {key: default for spec in sink_specs() for key, (default, _) in spec.keys.items()},
    "logging": {"level": "info", "format": "auto"},
}


MAX_DEVICE_CHARS = 256


def _device(key: str, value: Any) -> int | str:
    """A device index, or a name (part of a PortAudio name, or a PulseAudio source name): printable text."""
    named = isinstance(value, str) and 0 < len(value) <= MAX_DEVICE_CHARS and value.isprintable()
    if not named and (isinstance(value, bool) or not isinstance(value, int)):
        raise KwspotError(f"config: {key} must be a device index or part of a device name (printable, at most "
                          f"{MAX_DEVICE_CHARS} characters), not {show(value)}")
    return value


def _verifier(key: str, value: Any) -> str:
    """auto or off; YAML reads a bare ``off`` as false."""
    value = "off" if value is False else value
    return choice("auto", "off")(key, value)


def _thresholds(key: str, value: Any) -> dict[str, float]:
    """Keyword names and numbers; whether each name is a keyword is checked once the model is loaded."""
    if not isinstance(value, dict):
        raise KwspotError(f"config: {key} must be a mapping of keyword to threshold, not {show(value)}")
    for word, threshold in value.items():
        if not isinstance(word, str) or not word or word.startswith("_"):
            raise KwspotError(f"config: {key}.{show(word)} is not a keyword name")
        number(0.0, 1.0)(f"{key}.{word}", threshold)
    return {k: float(v) for k, v in value.items()}


CHECKS: dict[str, Check] = {
    "audio.backend": choice("auto", "pulse", "portaudio"),
    "audio.device": optional(_device),
    "audio.rate": optional(number(MIN_RATE, MAX_RATE, integer=True)),
    "audio.block_ms": number(5, 500, integer=True),
    "audio.max_lag_ms": number(100, 10000, integer=True),
    "model.path": optional(string),
    "model.threads": number(1, 16, integer=True),
    "detector.hop_ms": number(10, 1000, integer=True),
    "detector.threshold": number(0.0, 1.0),
    "detector.thresholds": _thresholds,
    "detector.smoothing_hops": number(1, 50, integer=True),
    "detector.min_consecutive": number(1, 50, integer=True),
    "detector.refractory_s": number(0.0, 60.0),
    "detector.min_pause_ms": number(0, 2000),
    "detector.verifier": _verifier,
    **{f"sinks.{key}": check for spec in sink_specs() for key, (_, check) in spec.keys.items()},
    "logging.level": choice("debug", "info", "warning", "error"),
    "logging.format": choice("auto", "plain", "time"),
}


def user_config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "kwspot" / "config.yaml"


def find_config(explicit: str | None) -> Path | None:
    """The config file to use, or None for built-in defaults."""
    if explicit:
        path = checked(explicit, "config file")
        if not path.is_file():
            raise KwspotError(f"{path}: {not_a_file(path, 'config')}")
        return path
    env = os.environ.get("KWSPOT_CONFIG")
    if env:
        if not checked(env, "config file").is_file():
            raise KwspotError(f"{env}: {not_a_file(Path(env), 'config')} (from $KWSPOT_CONFIG)")
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
            raise KwspotError(f"{source}: unknown section {show(section)} (known: {', '.join(DEFAULTS)})")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise KwspotError(f"{source}: section '{section}' must be a mapping")
        for key, value in values.items():
            name = f"{section}.{key}"
            if name not in CHECKS:
                raise KwspotError(f"{source}: unknown key {show(name)}")
            try:
                settings[section][key] = CHECKS[name](name, value)
            except KwspotError as exc:
                raise KwspotError(str(exc).replace("config:", f"{source}:", 1)) from None
    return settings


MAX_DEPTH = 20  # a kwspot config nests 4 deep (sinks.actions.WORD.command); a deeper file is not one


class _Loader(yaml.SafeLoader):
    """Safe YAML with these changes for a config file.

    Aliases (``*name``) are refused, so an alias bomb costs nothing; nesting is
    bounded (``MAX_DEPTH``), so a file of brackets cannot exhaust the stack; a key
    given twice in one mapping is an error (YAML forbids it; PyYAML would keep the
    last silently); plain keys that YAML 1.1 would read as booleans or null (``on:``,
    ``no:``, ``off:``, ``yes:``) stay the words they are, so every keyword can be
    named unquoted; a number in exponent form without a dot (``5e-1``, ``1e3``) is
    a number, as in YAML 1.2, not the string YAML 1.1 makes of it.
    """

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed", mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(None, None, f"nested more than {MAX_DEPTH} deep", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            plain = isinstance(key_node, yaml.ScalarNode) and key_node.style is None
            if plain and key_node.tag in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:null"):
                key_node.tag = "tag:yaml.org,2002:str"
            if isinstance(key_node, yaml.ScalarNode):
                key = (key_node.tag, key_node.value)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key_node.value[:40]!r} given twice", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
                              list("-+0123456789"))


def parse_yaml(data: bytes, path: Path) -> Any:
    """A config file's bytes as YAML: UTF-8 only, bounded, no aliases; one line per problem."""
    if len(data) > MAX_CONFIG_BYTES:
        raise KwspotError(f"{path}: config file over {MAX_CONFIG_BYTES // 1024} KiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise KwspotError(f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at line {line})") from None
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = str(getattr(exc, "problem", "") or "")[:80]
        raise KwspotError(f"{path}: not valid YAML{where}" + (f" ({problem})" if problem else "")) from None
    except (ValueError, OverflowError) as exc:  # a tagged or implicit value its type cannot hold (2001-13-45)
        raise KwspotError(f"{path}: not valid YAML (a value: {str(exc)[:80]})") from None


def load_config(explicit: str | None = None) -> tuple[dict[str, dict[str, Any]], Path | None]:
    """Find, read and validate the config file; returns (settings, path used)."""
    path = find_config(explicit)
    if path is None:
        return copy.deepcopy(DEFAULTS), None
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise KwspotError(f"{path}: cannot read config ({exc.strerror})") from None
    return validate(parse_yaml(data, path), str(path)), path


def override(settings: dict[str, dict[str, Any]], name: str, value: Any) -> None:
    """Apply one command-line override (``section.key``), checked like the file."""
    if value is None:
        return
    section, key = name.split(".")
    try:
        settings[section][key] = CHECKS[name](f"--{key.replace('_', '-')}", value)
    except KwspotError as exc:  # the flag leads the line: it is no file's
        raise KwspotError(str(exc).removeprefix("config: ")) from None
