"""Where events go, and the registry of sinks.

A sink has ``emit(event)`` (must return quickly: a slow consumer is the
sink's problem, not the loop's) and ``close()``. Each sink module declares a
:class:`SinkSpec`: its keys under ``sinks:`` in the config (default and
check), how it is built from those settings, whether a reload may replace
it, and whether it wants the live :class:`Status`. Adding a sink is one
module with a ``SPEC`` plus one line in :data:`SINK_MODULES`.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Protocol

from kwspot.errors import KwspotError
from kwspot.events import Event

SINK_MODULES = (
    "kwspot.sinks.console",
    "kwspot.sinks.jsonl",
    "kwspot.sinks.socket",
    "kwspot.sinks.mqtt",
    "kwspot.sinks.actions",
)

log = logging.getLogger("kwspot")
SinkSettings = Mapping[str, Any]  # the ``sinks:`` section


class Sink(Protocol):
    def emit(self, event: Event) -> None:
        """Deliver one event; must return quickly."""

    def close(self) -> None:
        """Release what the sink holds (files, sockets, threads)."""


def sink_alive(sink: Sink) -> bool:
    """False once a sink can deliver nothing more, ever (jsonl: stdout's reader went away).

    A sink whose consumer can vanish for good has ``check()`` (look now, even
    with no event due) and a ``closed`` flag; a sink with neither (console,
    socket with or without clients, mqtt, actions) stays alive while the daemon runs.
    """
    check = getattr(sink, "check", None)
    if check is not None:
        check()
    return not getattr(sink, "closed", False)


@dataclass(frozen=True)
class Status:
    """What a live view shows besides events, once per block of audio."""

    level_db: float  # RMS level of the latest audio, dBFS
    top_label: str
    top_score: float
    problems: str = ""  # input trouble so far, e.g. "3 overflows"


@dataclass(frozen=True)
class SinkContext:
    """What a sink may need besides its settings."""

    source: str  # the audio source's description
    tty: bool  # stdout is a terminal
    model: str = ""  # the model's name, as in events
    model_version: str = ""
    keywords: tuple[str, ...] = ()  # what the model can fire
    thresholds: Mapping[str, float] = field(default_factory=dict)  # per keyword, as the detector runs them


@dataclass(frozen=True)
class SinkSpec:
    name: str
    keys: Mapping[str, tuple[Any, Callable[[str, Any], Any]]]  # config key -> (default, check)
    build: Callable[[SinkSettings, SinkContext], Sink | None]  # None: the settings ask for no such sink
    reloadable: bool = True  # False: built once at start, a reload leaves it alone
    wants_status: bool = False  # gets ``status(Status)`` after every block
    retire: Callable[[Any], None] = lambda sink: sink.close()  # how a reload closes a replaced one


@cache
def sink_specs() -> tuple[SinkSpec, ...]:
    """Every registered sink's spec, in :data:`SINK_MODULES` order."""
    return tuple(importlib.import_module(name).SPEC for name in SINK_MODULES)


def spec_of(name: str) -> SinkSpec:
    return next(spec for spec in sink_specs() if spec.name == name)


def build_sinks(cfg: SinkSettings, ctx: SinkContext) -> dict[str, Sink]:
    """The sinks ``cfg`` asks for, by name; if one cannot be built, those built are closed again."""
    sinks: dict[str, Sink] = {}
    try:
        for spec in sink_specs():
            sink = spec.build(cfg, ctx)
            if sink is not None:
                sinks[spec.name] = sink
    except BaseException:
        close_sinks(sinks)
        raise
    return sinks


def reconcile(sinks: dict[str, Sink], old: SinkSettings, new: SinkSettings, ctx: SinkContext,
              refuse_none: str = "") -> dict[str, Sink]:
    """The sinks a reloaded config asks for, keeping each whose own settings did not change.

    New sinks are built first; if one fails (KwspotError), or none would be
    left and ``refuse_none`` gives the reason to refuse that, they are closed
    and the running ones are left as they were.
    """
    kept: dict[str, Sink] = {}
    fresh: dict[str, Sink] = {}
    try:
        for spec in sink_specs():
            running = sinks.get(spec.name)
            same = all(old[key] == new[key] for key in spec.keys)
            if not spec.reloadable or same:
                if running is not None:
                    kept[spec.name] = running
                continue
            sink = spec.build(new, ctx)
            if sink is not None:
                fresh[spec.name] = sink
        if refuse_none and not (kept or fresh):
            raise KwspotError(refuse_none)
    except BaseException:
        close_sinks(fresh)
        raise
    for name, sink in sinks.items():
        if name not in kept:
            spec_of(name).retire(sink)
    return {spec.name: s for spec in sink_specs() if (s := kept.get(spec.name) or fresh.get(spec.name)) is not None}


def close_sinks(sinks: Mapping[str, Sink]) -> None:
    for name, sink in sinks.items():
        try:
            sink.close()
        except Exception as exc:  # noqa: BLE001 - closing the others matters more
            log.warning("closing the %s sink failed: %s", name, exc)
