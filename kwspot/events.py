"""The event a detection becomes, and its JSON line."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone


def utc_now_iso() -> str:
    """Wall-clock time in ISO 8601 UTC with milliseconds, e.g. 2026-11-25T03:40:00.123Z."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Event:
    """One spoken command: which, how sure, and when.

    ``t`` is seconds of audio since the stream started, at the end of the
    window that fired; ``time`` is the wall clock when it fired; ``model``
    names the model that heard it (its file name without ``.tflite``).
    """

    keyword: str
    score: float
    t: float
    time: str = field(default_factory=utc_now_iso)
    model: str = ""

    def to_dict(self) -> dict[str, object]:
        return {
            "keyword": self.keyword,
            "score": round(float(self.score), 4),
            "t": round(float(self.t), 3),
            "time": self.time,
            "model": self.model,
        }

    def to_json(self) -> str:
        """One line of JSON, without the newline."""
        return json.dumps(self.to_dict(), separators=(",", ":"))
