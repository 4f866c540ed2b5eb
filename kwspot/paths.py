"""File names from the user (flags, config, environment): refuse what no system call can take.

A NUL byte, a name part over 255 bytes or a path over 4095 bytes would
otherwise surface as a ``ValueError`` or ``OSError`` deep inside a library.
Names that are not UTF-8 are fine (Python keeps their bytes); messages show
them with escapes.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

NAME_MAX = 255  # bytes in one part of a path (Linux, most file systems)
PATH_MAX = 4095  # bytes in a whole path


def shown(path: str | os.PathLike[str]) -> str:
    """The path as text that always prints: undecodable bytes and control characters (a newline, a terminal's
    escape sequence) become escapes."""
    return printable(os.fsdecode(path).encode("utf-8", "backslashreplace").decode("utf-8"))


def printable(text: str) -> str:
    """``text`` with each character that is not printable (a newline, a terminal's ESC) as its escape."""
    return text if text.isprintable() else "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def not_a_file(path: Path, what: str) -> str:
    """Why ``path`` (not a regular file) cannot be the ``what`` file, for a message: missing, a directory, a device."""
    article = "an" if what[0] in "aeiou" else "a"
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno != errno.ENOENT:  # a loop of symbolic links, a file used as a folder, no permission
            return f"cannot reach {article} {what} file there ({exc.strerror})"
        return f"a symbolic link to nothing, no {what} file" if path.is_symlink() else f"no such {what} file"
    if stat.S_ISDIR(mode):
        return f"a directory, not {article} {what} file"
    return f"not a regular file (a device, pipe or socket), not {article} {what} file"


def checked(path: str | os.PathLike[str], what: str = "file") -> Path:
    """``path`` as a Path, or KwspotError naming it if no system call could take it."""
    from kwspot.errors import KwspotError

    text = os.fsdecode(path)
    if "\0" in text:
        visible = shown(text.replace("\0", "\\0"))
        raise KwspotError(f"{visible}: {what} name contains a NUL byte")
    try:
        raw = os.fsencode(text)
    except UnicodeEncodeError:  # a lone surrogate (\ud800) that no file name can hold
        raise KwspotError(f"{shown(text)}: {what} name is not valid text (a lone surrogate)") from None
    if len(raw) > PATH_MAX:
        raise KwspotError(f"{shown(text)[:60]}...: {what} path too long ({len(raw)} bytes, at most {PATH_MAX})")
    longest = max(raw.split(b"/"), key=len)
    if len(longest) > NAME_MAX:
        raise KwspotError(
            f"{shown(text)[:60]}...: {what} name too long ({len(longest)} bytes in one part, at most {NAME_MAX})"
        )
    return Path(text)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file beside it and a rename: a reader, a full disk or a
    crash never leaves half a file in place of the old one. A symbolic link is written through (its target
    replaced, the link kept). Mode 0666 less the umask (a daemon of another user may read it). OSError as it
    comes; the temporary file is gone either way."""
    path = Path(os.path.realpath(path))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:200]}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())  # on disk before the rename: a power cut leaves the old file or the new one
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cannot_write_in(folder: Path) -> str | None:
    """Why no file can be made in ``folder`` (missing, not a folder, read-only, full), or None if one can.

    Tried for real: ``os.access`` says yes to root, also where nothing can be made (``/proc``, a read-only mount).
    """
    try:
        with tempfile.TemporaryFile(dir=folder):
            return None
    except OSError as exc:
        return exc.strerror or str(exc)
