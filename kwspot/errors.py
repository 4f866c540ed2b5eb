"""The one exception type that the command line turns into a one-line error."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class KwspotError(Exception):
    """A problem with the user's input (file, config, model, device, socket).

    The message names the culprit; the command line prints it on one line
    and exits with status 2, never with a traceback.
    """


def exit_status(run: Callable[[T], int], args: T) -> int:
    """Run a tool's main part; a KwspotError becomes its one line on stderr and exit status 2."""
    try:
        return run(args)
    except KwspotError as exc:
        print(f"kwspot: error: {exc}", file=sys.stderr)
        return 2
