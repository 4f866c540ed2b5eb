"""``kwspot events``: print the events of a running daemon, one JSON line each."""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import stat
import sys
from pathlib import Path
from typing import TextIO

from kwspot import stdio
from kwspot.errors import KwspotError
from kwspot.paths import checked
from kwspot.sinks.socket import check_owner, check_peer, socket_path_candidates

MAX_LINE = 65536  # bytes; an event is a few hundred


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``kwspot events`` options to ``parser``."""
    parser.add_argument(
        "--socket",
        metavar="PATH",
        default=None,
        help="the daemon's socket (default: $KWSPOT_SOCKET, else $XDG_RUNTIME_DIR/kwspot.sock "
        "or /tmp/kwspot-$UID.sock, else the system service's /run/kwspot/kwspot.sock)",
    )


def run(args: argparse.Namespace) -> int:
    """Entry point for the ``events`` subcommand."""
    return run_events(args.socket)


def resolve_socket_path(socket_path: str | os.PathLike[str] | None) -> Path:
    """The given path, or the first default candidate that exists (else the first candidate)."""
    if socket_path is not None:
        return checked(socket_path, "socket")
    candidates = [checked(p, "socket") for p in socket_path_candidates()]
    for p in candidates:
        if p.exists():
            return p
    return candidates[0]


def connect(path: Path) -> socket.socket:
    """Connect to the daemon at ``path``; KwspotError with a hint if nobody is there."""
    hint = f"start it with: kwspot listen --socket {path}"
    try:
        st = os.stat(path)
    except OSError:
        pass  # connect() says what is wrong
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise KwspotError(f"{path}: not a socket (a {'directory' if stat.S_ISDIR(st.st_mode) else 'file'})")
    check_owner(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except FileNotFoundError:
        sock.close()
        raise KwspotError(f"{path}: no such socket (is the daemon running? {hint})") from None
    except ConnectionRefusedError:
        sock.close()
        raise KwspotError(f"{path}: nobody is listening, a stale socket (the daemon is gone; {hint})") from None
    except PermissionError:
        sock.close()
        raise KwspotError(f"{path}: permission denied (join the socket's group, e.g. kwspot)") from None
    except OSError as e:
        sock.close()
        raise KwspotError(f"{path}: cannot connect: {e.strerror or e}") from None
    try:
        check_peer(sock, path)
    except KwspotError:
        sock.close()
        raise
    return sock


def run_events(socket_path: str | os.PathLike[str] | None = None, out: TextIO | None = None) -> int:
    """Print every event from the daemon as it arrives, flushing each line.

    Returns 0 on Ctrl-C or when ``out`` is a closed pipe (``| grep -m1 stop``),
    1 when the daemon closes the connection; raises KwspotError if no daemon
    can be reached, or if what answers sends something other than events.
    """
    out = sys.stdout if out is None else out
    path = resolve_socket_path(socket_path)
    try:
        sock = connect(path)
        with sock, sock.makefile("rb") as lines:
            while line := lines.readline(MAX_LINE + 1):
                if not line.endswith(b"\n"):
                    if len(line) > MAX_LINE:
                        raise KwspotError(f"{path}: sent a line of over {MAX_LINE} bytes, not a kwspot event")
                    break  # the daemon never sends partial lines; a cut one means it went away
                out.write(event_line(line, path))
                out.flush()
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        _silence_stdout(out)
        return 0
    except ConnectionResetError:
        pass
    except OSError as exc:  # our stdout failed: a full disk (ENOSPC), an I/O error
        _silence_stdout(out)
        raise KwspotError(f"stdout: {exc.strerror or exc}; events stopped") from None
    print(f"kwspot events: daemon closed the connection ({path})", file=sys.stderr)
    return 1


def event_line(line: bytes, path: Path) -> str:
    """A line from the socket as the daemon writes events: one JSON object, ASCII only, so that a program
    pretending to be the daemon cannot send a terminal its escape sequences; KwspotError for anything else."""
    try:
        event = json.loads(line, parse_constant=_not_json, parse_float=_finite)
    except (ValueError, RecursionError):  # RecursionError: nested a few thousand deep
        event = None
    if not isinstance(event, dict):
        raise KwspotError(f"{path}: sent a line that is not a JSON event: {line[:60]!r}")
    return json.dumps(event, separators=(",", ":")) + "\n"


def _not_json(constant: str) -> float:
    """NaN and Infinity: Python's json reads them, but they are not JSON, and jq refuses them."""
    raise ValueError(f"{constant} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999
        raise ValueError(f"{text[:20]} is beyond a double")
    return value


def _silence_stdout(out: TextIO) -> None:
    """After EPIPE on stdout, point it at /dev/null so the interpreter's final flush stays quiet."""
    if out is sys.stdout:
        stdio.silence_stdout()
