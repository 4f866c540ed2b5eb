"""Value checks for settings: each takes (name, value) and returns the value or raises one line.

Error messages show at most a short prefix of a bad value, never its whole
expansion (a hostile config must not make the error itself expensive).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kwspot.errors import KwspotError

Check = Callable[[str, Any], Any]
SHOW_CHARS = 60


def show(value: Any) -> str:
    """A bounded repr of ``value`` for an error message."""
    if isinstance(value, (dict, list, tuple)) and len(value) > 8:
        return f"<{type(value).__name__} of {len(value)} items>"
    text = repr(value)
    return text if len(text) <= SHOW_CHARS else text[: SHOW_CHARS - 3] + "..."


def optional(check: Check) -> Check:
    return lambda key, value: None if value is None else check(key, value)


def number(low: float, high: float, integer: bool = False) -> Check:
    def check(key: str, value: Any) -> Any:
        kind = int if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kind):
            raise KwspotError(f"config: {key} must be {'a whole number' if integer else 'a number'}, not {show(value)}")
        if not low <= value <= high:
            raise KwspotError(f"config: {key} must be between {low:g} and {high:g}, not {show(value)}")
        return value

    return check


def choice(*options: Any) -> Check:
    def check(key: str, value: Any) -> Any:
        if isinstance(value, (dict, list)) or value not in options:
            raise KwspotError(f"config: {key} must be one of {', '.join(map(str, options))}, not {show(value)}")
        return value

    return check


def string(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise KwspotError(f"config: {key} must be a non-empty string, not {show(value)}")
    return value


def octal_mode(key: str, value: Any) -> str:
    if not isinstance(value, str) or len(value) not in (3, 4) or any(c not in "01234567" for c in value):
        raise KwspotError(f"config: {key} must be an octal mode in quotes such as \"0660\", not {show(value)}")
    return value


def host_name_ok(text: str) -> bool:
    """Whether a network library can look ``text`` up: no NUL, at most 253 characters, labels of at most 63."""
    try:
        return "\0" not in text and 0 < len(text) <= 253 and bool(text.encode("idna"))
    except UnicodeError:
        return False
