"""Actions: run a command for a keyword (or ``*`` for every keyword) when it is spoken.

A command is a list of arguments, run without a shell unless ``shell`` is
set (then it is one ``/bin/sh -c`` line). It gets the event as one JSON line
on stdin and ``KWSPOT_KEYWORD``, ``KWSPOT_SCORE``, ``KWSPOT_T``,
``KWSPOT_TIME``, ``KWSPOT_MODEL`` in its environment; what it prints (stdout and stderr) goes
to the log, line by line. At most ``max_running`` commands run at once, in a
process group of their own that is killed after ``timeout_s``. ``emit`` only
queues: a slow or failing command never delays detection. Past ``queue``
waiting commands, new ones are dropped, counted and logged.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from kwspot.checks import number, show
from kwspot.errors import KwspotError
from kwspot.events import Event
from kwspot.sinks import SinkContext, SinkSettings, SinkSpec

ANY = "*"
MAX_LOGGED_LINES = 50  # per run; the rest is read and discarded
MAX_LINE_CHARS = 500


@dataclass(frozen=True)
class Action:
    """One command for one keyword (or ``*``)."""

    keyword: str
    command: tuple[str, ...]  # the arguments; with ``shell``, one shell line
    shell: bool = False

    def __post_init__(self) -> None:
        if not self.command or not all(isinstance(a, str) and a for a in self.command):
            raise KwspotError(f"action for {self.keyword!r}: the command must be a non-empty list of strings")
        if any("\0" in a for a in self.command):
            raise KwspotError(f"action for {self.keyword!r}: the command contains a NUL byte")
        if self.shell and len(self.command) != 1:
            raise KwspotError(f"action for {self.keyword!r}: with shell, give the command as one string")
        if not self.shell and shutil.which(self.command[0]) is None:
            raise KwspotError(f"action for {self.keyword!r}: no such program {self.command[0]!r}")

    @property
    def argv(self) -> list[str]:
        return ["/bin/sh", "-c", self.command[0]] if self.shell else list(self.command)

    @property
    def label(self) -> str:
        text = self.command[0] if self.shell else shlex.join(self.command)
        return f"{self.keyword}: {text if len(text) <= 60 else text[:57] + '...'}"

    def matches(self, keyword: str) -> bool:
        return self.keyword in (ANY, keyword)


class ActionsSink:
    """Runs the matching actions of every event, off the caller's thread."""

    def __init__(
        self,
        actions: Iterable[Action],
        max_running: int = 4,
        timeout_s: float = 30.0,
        queue: int = 32,
        logger: logging.Logger | None = None,
    ) -> None:
        self.actions = list(actions)
        self.timeout_s = float(timeout_s)
        self.queue = int(queue)
        self.log = logger or logging.getLogger("kwspot")
        self.started = 0
        self.dropped = 0
        self._waiting = 0
        self._running: set[subprocess.Popen] = set()
        self._cond = threading.Condition()
        self._closing = False
        self._pool = ThreadPoolExecutor(max_workers=max(1, int(max_running)), thread_name_prefix="kwspot-action")

    def emit(self, event: Event) -> None:
        for action in self.actions:
            if action.matches(event.keyword):
                self._submit(action, event)

    def _submit(self, action: Action, event: Event) -> None:
        with self._cond:
            if self._closing:
                return
            if self._waiting >= self.queue:
                self.dropped += 1
                self.log.warning("action %s: dropped, %d commands already waiting (%d dropped in all)",
                                 action.label, self._waiting, self.dropped)
                return
            self._waiting += 1
        self._pool.submit(self._run, action, event)

    def _run(self, action: Action, event: Event) -> None:
        with self._cond:
            self._waiting -= 1
            if self._closing:
                self.dropped += 1
                self._cond.notify_all()
                return
        ours = {"KWSPOT_KEYWORD": event.keyword, "KWSPOT_SCORE": f"{event.score:.4f}", "KWSPOT_T": f"{event.t:.3f}",
                "KWSPOT_TIME": event.time, "KWSPOT_MODEL": event.model}
        # bytes: a keyword the locale cannot encode still reaches the action, as UTF-8
        env = {**os.environb, **{k.encode(): v.encode("utf-8", "surrogateescape") for k, v in ours.items()}}
        try:
            proc = subprocess.Popen(
                action.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                start_new_session=True, text=True, encoding="utf-8", errors="replace",
            )
        except (OSError, ValueError) as exc:  # ValueError: an argument the locale cannot encode, or a NUL
            self.log.error("action %s: cannot run it (%s)", action.label, getattr(exc, "strerror", None) or exc)
            return
        with self._cond:
            self._running.add(proc)
            self.started += 1
        timed_out = threading.Event()
        timer = threading.Timer(self.timeout_s, lambda: (timed_out.set(), _kill_group(proc)))
        timer.daemon = True
        timer.start()
        try:
            self._talk(action, event, proc)
        finally:
            timer.cancel()
            with self._cond:
                self._running.discard(proc)
                self._cond.notify_all()
        if timed_out.is_set():
            self.log.warning("action %s: killed after %g s (timeout_s)", action.label, self.timeout_s)
        elif proc.returncode:
            self.log.warning("action %s: exited with status %d", action.label, proc.returncode)

    def _talk(self, action: Action, event: Event, proc: subprocess.Popen) -> None:
        """Event JSON in; output, line by line, to the log; then wait for the end."""
        try:
            proc.stdin.write(event.to_json() + "\n")
            proc.stdin.close()
        except OSError:  # it did not read its stdin: fine
            pass
        for n, line in enumerate(proc.stdout):
            if n < MAX_LOGGED_LINES:
                self.log.info("action %s: %s", action.label, line.rstrip("\n")[:MAX_LINE_CHARS])
            elif n == MAX_LOGGED_LINES:
                self.log.info("action %s: (more output not logged)", action.label)
        proc.stdout.close()
        proc.wait()

    def running(self) -> int:
        with self._cond:
            return len(self._running)

    def close(self, wait_s: float = 5.0) -> None:
        """Let queued and running commands finish for up to ``wait_s``, then kill what is left."""
        with self._cond:
            self._cond.wait_for(lambda: not self._running and not self._waiting, timeout=wait_s)
            self._closing = True
            left = list(self._running)
        for proc in left:
            _kill_group(proc)
        if left:
            self.log.warning("%d action%s still running at exit killed", len(left), "" if len(left) == 1 else "s")
        before = self.dropped
        self._pool.shutdown(wait=True)
        skipped = self.dropped - before
        if skipped:
            self.log.warning("%d waiting action%s not run", skipped, "" if skipped == 1 else "s")


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def parse_actions(raw: object, where: str = "actions") -> list[Action]:
    """Actions from the config: ``{keyword: [arg, ...]}`` or ``{keyword: {command: ..., shell: bool}}``."""
    if not isinstance(raw, dict):
        raise KwspotError(f"config: {where} must map a keyword (or '*') to a command, not {show(raw)}")
    actions = []
    for keyword, spec in raw.items():
        name = f"{where}.{show(keyword)}" if not isinstance(keyword, str) else f"{where}.{keyword}"
        if not isinstance(keyword, str) or not keyword:
            raise KwspotError(f"config: {name} is not a keyword")
        shell = False
        if isinstance(spec, dict):
            unknown = set(spec) - {"command", "shell"}
            if unknown:
                raise KwspotError(f"config: {name}: unknown key {show(sorted(map(str, unknown))[0])} "
                                  "(known: command, shell)")
            shell = spec.get("shell", False)
            if not isinstance(shell, bool):
                raise KwspotError(f"config: {name}.shell must be true or false, not {show(shell)}")
            spec = spec.get("command")
        command = [spec] if isinstance(spec, str) and shell else spec
        if not isinstance(command, (list, tuple)):
            raise KwspotError(f"config: {name}: the command must be a list of arguments (or shell: true), "
                              f"not {show(command)}")
        try:
            actions.append(Action(keyword, tuple(command), shell))
        except KwspotError as exc:
            raise KwspotError(f"config: {name}: {str(exc).split(': ', 1)[1]}") from None
    return actions


def check_actions(key: str, value: Any) -> dict[str, dict[str, Any]]:
    """``sinks.actions``, checked and in one shape: keyword -> {command: [...], shell: bool}."""
    if value is None:
        return {}
    return {a.keyword: {"command": list(a.command), "shell": a.shell} for a in parse_actions(value, key)}


def _build(cfg: SinkSettings, ctx: SinkContext) -> ActionsSink | None:
    if not cfg["actions"]:
        return None
    actions = parse_actions(cfg["actions"], "sinks.actions")
    for action in actions:
        if ctx.keywords and action.keyword != ANY and action.keyword not in ctx.keywords:
            raise KwspotError(f"sinks.actions.{action.keyword}: the model has no such keyword "
                              f"(it has {', '.join(ctx.keywords)})")
    return ActionsSink(actions, max_running=cfg["actions_max_running"], timeout_s=cfg["actions_timeout_s"])


def _retire(sink: ActionsSink) -> None:
    """A reload replaced it: running commands may finish (up to their timeout), off the audio loop's thread."""
    threading.Thread(target=sink.close, kwargs={"wait_s": sink.timeout_s}, name="kwspot-actions-retire",
                     daemon=True).start()


SPEC = SinkSpec(
    "actions",
    {
        "actions": ({}, check_actions),
        "actions_max_running": (4, number(1, 64, integer=True)),
        "actions_timeout_s": (30.0, number(0.1, 86400.0)),
    },
    _build,
    retire=_retire,
)
