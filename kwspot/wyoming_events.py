"""Wyoming events from a client, read and checked with limits: what one connection may send."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from wyoming.event import Event as WyomingEvent

from kwspot import MAX_RATE, MIN_RATE

MAX_CHANNELS = 32
MAX_DATA_BYTES = 1 << 16  # an event's extra JSON data (Home Assistant's are tens of bytes)
MAX_PAYLOAD_BYTES = 1 << 20  # an audio chunk: Home Assistant's are 2 KiB; 1 MiB is 5 s of 48 kHz 16-bit stereo


def audio_format(data: dict[str, Any]) -> tuple[int, int, int]:
    """(rate, width, channels) of an audio-start/-chunk, checked."""
    rate, width, channels = data.get("rate"), data.get("width"), data.get("channels")
    for name, value, low, high in (("rate", rate, MIN_RATE, MAX_RATE), ("width", width, 1, 4),
                                   ("channels", channels, 1, MAX_CHANNELS)):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"audio {name} must be a whole number from {low} to {high}, not {value!r}")
    return rate, width, channels  # type: ignore[return-value]


async def read_event(reader: asyncio.StreamReader) -> WyomingEvent | None:
    """The next event (None at the end), as wyoming's ``async_read_event`` reads it, but with limits.

    A header claiming a payload of gigabytes would otherwise be buffered until it came: one client could
    take the server's memory. ValueError for a header that is not an event or claims too much.
    """
    line = await reader.readline()  # bounded by the reader's limit (64 KiB)
    if not line:
        return None
    header = json.loads(line)
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise ValueError("event header is not a JSON object with a type")
    lengths = {}
    for key, most in (("data_length", MAX_DATA_BYTES), ("payload_length", MAX_PAYLOAD_BYTES)):
        n = header.get(key) or 0
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= most:
            raise ValueError(f"{key} {n!r:.20} is not a whole number of bytes up to {most}")
        lengths[key] = n
    data = header.get("data") or {}
    if not isinstance(data, dict):
        raise ValueError("event data is not a JSON object")
    if lengths["data_length"]:
        extra = json.loads(await reader.readexactly(lengths["data_length"]))
        if not isinstance(extra, dict):
            raise ValueError("event data is not a JSON object")
        data.update(extra)
    payload = await reader.readexactly(lengths["payload_length"]) if lengths["payload_length"] else None
    return WyomingEvent(type=header["type"], data=data, payload=payload)
