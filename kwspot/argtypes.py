"""Checked command-line values: every numeric flag has a type that knows its range.

``argparse`` calls the type with the raw string; a value that is not a
number, not finite, or out of range becomes an ``argparse`` error (one line,
exit 2, see ``cli.OneLineParser``). The tests find every numeric flag of
every subcommand by looking for these types; :func:`command_line` checks a
shell command given as a flag (``--exec``).
"""

from __future__ import annotations

import argparse
import math


class Number:
    """An argparse type: an int or float within [low, high], never NaN or infinite."""

    def __init__(self, low: float, high: float, integer: bool = False) -> None:
        self.low, self.high, self.integer = low, high, integer
        self.__name__ = "whole number" if integer else "number"  # argparse names the type in its message

    def __call__(self, text: str) -> int | float:
        try:
            value: int | float = int(text) if self.integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{self.__name__} expected, not {text!r}") from None
        if not math.isfinite(value) or not self.low <= value <= self.high:
            low, high = (f"{int(x)}" if self.integer else f"{x:g}" for x in (self.low, self.high))
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, not {text}")
        return value

    def __repr__(self) -> str:
        return f"Number({self.low:g}, {self.high:g}, integer={self.integer})"


class NumberList:
    """A comma-separated list of numbers in range, or one of ``words`` (e.g. ``clean``), kept as text.

    ``item_words`` may stand in the list among the numbers (e.g. ``sidecar,0.6``).
    """

    def __init__(self, low: float, high: float, words: tuple[str, ...] = (), integer: bool = False,
                 item_words: tuple[str, ...] = ()) -> None:
        self.item = Number(low, high, integer)
        self.low, self.high, self.words, self.item_words = low, high, words, item_words
        self.__name__ = "list of whole numbers" if integer else "list of numbers"

    def __call__(self, text: str) -> str:
        if text.strip().lower() in self.words:
            return text
        for part in text.split(","):
            if part.strip() in self.item_words:
                continue
            try:
                self.item(part.strip())
            except argparse.ArgumentTypeError as exc:
                raise argparse.ArgumentTypeError(f"{exc} (in {text!r})" if "," in text else str(exc)) from None
        return text

    def __repr__(self) -> str:
        return f"NumberList({self.low:g}, {self.high:g})"


class NumberRange:
    """Two numbers ``LOW,HIGH``, each within [low, high], LOW not above HIGH: a (LOW, HIGH) tuple of floats."""

    def __init__(self, low: float, high: float) -> None:
        self.item = Number(low, high)
        self.low, self.high = low, high
        self.__name__ = "range"

    def __call__(self, text: str) -> tuple[float, float]:
        parts = text.split(",")
        if len(parts) != 2:
            raise argparse.ArgumentTypeError(f"expected LOW,HIGH such as 0,25, not {text[:40]!r}")
        try:
            low, high = (float(self.item(part.strip())) for part in parts)
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentTypeError(f"LOW,HIGH: {exc} (in {text[:40]!r})") from None
        if low > high:
            raise argparse.ArgumentTypeError(f"expected LOW <= HIGH, not {text[:40]!r}")
        return low, high

    def __repr__(self) -> str:
        return f"NumberRange({self.low:g}, {self.high:g})"


MAX_ARG_BYTES = 131071  # MAX_ARG_STRLEN - 1 on Linux: the longest single argument execve takes


def command_line(text: str) -> str:
    """An argparse type for a shell command line: not blank, no NUL byte, short enough to execute."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty command")
    if "\0" in text:
        raise argparse.ArgumentTypeError("the command contains a NUL byte")
    if len(text.encode("utf-8", "surrogateescape")) > MAX_ARG_BYTES:
        raise argparse.ArgumentTypeError(f"the command is longer than {MAX_ARG_BYTES} bytes")
    return text
