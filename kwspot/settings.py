"""Settings in one place: built-in defaults, then the config file, then the command line.

:func:`resolve` is the one function that produces the settings a listening
daemon runs with; start-up calls it, and so does every SIGHUP reload, so
flags given at start (``--socket``, ``--format jsonl``, ``--threshold``)
outlive a reload. The file's format and checks live in :mod:`kwspot.config`.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kwspot.config import load_config, override

Settings = dict[str, dict[str, Any]]


def listen_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The settings ``kwspot listen``'s flags set, as ``section.key`` -> value (only those given)."""
    flags: dict[str, Any] = {
        "audio.backend": args.backend,
        "audio.device": args.device,
        "audio.rate": None if args.input else args.rate,  # with --input, --rate describes the pipe
        "model.path": args.model,
        "detector.threshold": args.threshold,
        "sinks.socket": args.socket,
        "logging.level": args.log_level,
        "logging.format": args.log_format,
    }
    if args.exec:
        flags["sinks.actions"] = {"*": {"command": args.exec, "shell": True}}
    if args.format == "jsonl":
        flags["sinks.jsonl"] = True
    if args.format == "console":
        flags["sinks.console"] = True
    if args.no_console or args.format == "jsonl":
        flags["sinks.console"] = False
    return {name: value for name, value in flags.items() if value is not None}


def resolve(config: str | None, flags: Mapping[str, Any]) -> tuple[Settings, Path | None]:
    """Defaults, then the config file (``config`` or the usual places), then ``flags``; all checked."""
    settings, path = load_config(config)
    for name, value in flags.items():
        override(settings, name, value)
    return settings, path
