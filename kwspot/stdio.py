"""The standard streams of the command line: closed ones filled, stdout's own failures told apart."""

from __future__ import annotations

import io
import os
import sys

from kwspot.paths import printable


class StdoutFailed(OSError):
    """Writing to stdout failed (a full disk, an I/O error): the results are lost, and no other file is to blame."""


class _StdoutFile(io.FileIO):
    def write(self, data: bytes) -> int:  # type: ignore[override]
        try:
            return super().write(data)
        except BrokenPipeError:
            raise  # the reader went away (``| head``): not a failure
        except OSError as exc:
            raise StdoutFailed(exc.errno, exc.strerror) from None


def fill_closed_fds() -> None:
    """/dev/null on a closed fd 0, 1 or 2, so that no file kwspot opens lands there (logs or results would go
    into it); ``sys.stdin``/``sys.stdout`` stay None, so what needs them still says so, and a closed stderr
    only loses the log."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)  # the lowest free descriptor: this one
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process


def tag_stdout() -> None:
    """``sys.stdout`` anew over fd 1, the same but that a failed write raises :class:`StdoutFailed`, and that a
    character the locale cannot encode prints as an escape."""
    out = sys.stdout
    try:
        if type(out) is not io.TextIOWrapper or out.fileno() != 1:
            return  # not the interpreter's own (a test's capture)
    except io.UnsupportedOperation:
        return
    buffered = isinstance(out.buffer, io.BufferedWriter)  # not under python -u / PYTHONUNBUFFERED
    if isinstance(out.buffer.raw if buffered else out.buffer, _StdoutFile):
        return  # tagged already
    raw = _StdoutFile(1, "w", closefd=False)
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(raw) if buffered else raw, encoding=out.encoding,
                                  errors="backslashreplace", line_buffering=out.line_buffering,
                                  write_through=out.write_through)


def silence_stdout() -> None:
    """Point fd 1 at /dev/null: what is still buffered goes nowhere, and the interpreter's last flush is quiet."""
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)


def say(line: str) -> None:
    """One line on stderr, its control characters escaped (a file name holding a newline or an escape sequence
    cannot forge a second line or drive the terminal), if stderr can take it (a full disk: the exit status tells)."""
    try:
        print(printable(line), file=sys.stderr, flush=True)
    except OSError:
        pass
