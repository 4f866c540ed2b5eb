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
import select
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from kwspot.argtypes import MAX_ARG_BYTES
from kwspot.checks import number, show
from kwspot.errors import KwspotError
from kwspot.events import Event
from kwspot.sinks import SinkContext, SinkSettings, SinkSpec

ANY = "*"
MAX_LOGGED_LINES = 50  # per run; the rest is read and discarded
MAX_LINE_CHARS = 500
MAX_LINE_BYTES = 4 * MAX_LINE_CHARS  # UTF-8: enough bytes for MAX_LINE_CHARS characters; the rest is discarded
READ_BYTES = 65536  # output is read in blocks of at most this, never whole
POLL_S = 0.1  # how often a reading worker looks for close()
ENV_ROOM = 4096  # bytes of execve's ARG_MAX kept for the KWSPOT_* variables and the like


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
        _check_executable(self.keyword, self.argv)
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
        self._starting = 0  # between waiting and running: close() must not miss these
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
            self._starting += 1
        ours = {"KWSPOT_KEYWORD": event.keyword, "KWSPOT_SCORE": f"{event.score:.4f}", "KWSPOT_T": f"{event.t:.3f}",
                "KWSPOT_TIME": event.time, "KWSPOT_MODEL": event.model}
        env = {**os.environb, **{k.encode(): _env_value(v) for k, v in ours.items()}}
        try:
            proc = subprocess.Popen(
                action.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,
            )
        except (OSError, ValueError) as exc:  # ValueError: an argument the locale cannot encode, or a NUL
            self.log.error("action %s: cannot run it (%s)", action.label, getattr(exc, "strerror", None) or exc)
            with self._cond:
                self._starting -= 1
                self._cond.notify_all()  # close() may be waiting for this one
            return
        with self._cond:
            self._starting -= 1
            self._running.add(proc)
            self.started += 1
        try:
            if killed := self._talk(action, event, proc):
                self.log.warning("action %s: %s", action.label, killed)
            elif proc.returncode and not self._closing:  # killed at close: close() says so, once for all
                self.log.warning("action %s: %s", action.label, _ended(proc.returncode))
        finally:  # only now does it stop counting as running: its end is logged by then
            with self._cond:
                self._running.discard(proc)
                self._cond.notify_all()

    def _talk(self, action: Action, event: Event, proc: subprocess.Popen) -> str | None:
        """Event JSON in; output to the log until EOF, the timeout or close; then the end. Says why it (or what
        it left behind) was killed at the timeout, or None."""
        deadline = time.monotonic() + self.timeout_s
        try:
            proc.stdin.write((event.to_json() + "\n").encode())  # JSON: ASCII
            proc.stdin.close()
        except OSError:  # it did not read its stdin: fine
            pass
        at_eof = self._read(action, proc, deadline)
        proc.stdout.close()  # a child that left the process group may still hold it open: not our business
        if self._closing:
            _kill_group(proc)
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.wait()
            return f"killed after {self.timeout_s:g} s (timeout_s)"
        if not at_eof and not self._closing:  # the command ended, but a child of its group still held the output
            _kill_group(proc)  # at the deadline: the command's children go with it, as documented
            return (f"{_ended(proc.returncode)}, but its children still held its output after {self.timeout_s:g} s "
                    "(timeout_s): killed")
        return None

    def _read(self, action: Action, proc: subprocess.Popen, deadline: float) -> bool:
        """The output in blocks, logged line by line, until EOF (True), ``deadline`` or close(): memory stays
        bounded."""
        out = _Output(self.log, action.label)
        fd = proc.stdout.fileno()
        poll = select.poll()
        poll.register(fd, select.POLLIN)
        while not self._closing and (left := deadline - time.monotonic()) > 0:
            if poll.poll(min(left, POLL_S) * 1000):
                block = os.read(fd, READ_BYTES)
                if not block:
                    out.finish()
                    return True
                out.feed(block)
        out.finish()
        return False

    def running(self) -> int:
        with self._cond:
            return len(self._running)

    def close(self, wait_s: float = 5.0) -> None:
        """Let queued and running commands finish for up to ``wait_s``, then kill what is left."""
        with self._cond:
            self._cond.wait_for(lambda: not (self._running or self._waiting or self._starting), timeout=wait_s)
            self._closing = True
            left = list(self._running)
            skipped = self._waiting  # each will see _closing and not run (counted now: a freed worker is quick)
        for proc in left:
            _kill_group(proc)
        if left:
            self.log.warning("%d action%s still running at exit killed", len(left), "" if len(left) == 1 else "s")
        self._pool.shutdown(wait=True)
        if skipped:
            self.log.warning("%d waiting action%s not run", skipped, "" if skipped == 1 else "s")


class _Output:
    """An action's output, cut into lines as it comes: the first ``MAX_LOGGED_LINES`` logged, each shortened."""

    def __init__(self, log: logging.Logger, label: str) -> None:
        self.log, self.label = log, label
        self.lines = 0
        self.line = bytearray()  # the line so far, at most MAX_LINE_BYTES of it
        self.cr = False  # the last block ended in CR: an LF first in the next one ends no line

    def feed(self, block: bytes) -> None:
        if self.lines > MAX_LOGGED_LINES:
            return  # read and discarded
        if self.cr and block.startswith(b"\n"):
            block = block[1:]
        self.cr = block.endswith(b"\r")
        *ended, rest = block.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        for part in ended:
            self._add(part)
            self._end()
        self._add(rest)

    def finish(self) -> None:
        if self.line:
            self._end()

    def _add(self, part: bytes) -> None:
        room = MAX_LINE_BYTES - len(self.line)
        if room > 0:
            self.line += part[:room]

    def _end(self) -> None:
        if self.lines < MAX_LOGGED_LINES:
            text = self.line.decode("utf-8", "replace")[:MAX_LINE_CHARS]
            shown = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)  # no terminal escapes in logs
            self.log.info("action %s: %s", self.label, shown)
        elif self.lines == MAX_LOGGED_LINES:
            self.log.info("action %s: (more output not logged)", self.label)
        self.lines += 1
        self.line.clear()


def _ended(returncode: int) -> str:
    """How a command ended, for the log: "exited with status 3", "killed by signal 9 (SIGKILL)"."""
    if returncode >= 0:
        return f"exited with status {returncode}"
    try:
        name = f" ({signal.Signals(-returncode).name})"
    except ValueError:
        name = ""
    return f"killed by signal {-returncode}{name}"


def _env_value(value: str) -> bytes:
    """An environment value as UTF-8 bytes: a name the locale could not decode gets its bytes back; a lone
    surrogate, which no encoding holds, is written as its escape (``\\ud800``)."""
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace")


def _check_executable(keyword: str, argv: list[str]) -> None:
    """Refuse what execve can never take: an argument it cannot encode, or one (or all) too long."""
    try:
        sizes = [len(os.fsencode(a)) for a in argv]
    except UnicodeEncodeError as exc:
        raise KwspotError(f"action for {keyword!r}: the command has a character that cannot be passed to a "
                          f"program ({exc.object[exc.start:exc.end]!r})") from None
    if max(sizes) > MAX_ARG_BYTES:
        raise KwspotError(f"action for {keyword!r}: an argument is longer than {MAX_ARG_BYTES} bytes")
    room = os.sysconf("SC_ARG_MAX") - sum(len(k) + len(v) + 2 for k, v in os.environb.items()) - ENV_ROOM
    if sum(sizes) + len(sizes) > room:
        raise KwspotError(f"action for {keyword!r}: the command is longer than the {room} bytes execve takes here")


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
