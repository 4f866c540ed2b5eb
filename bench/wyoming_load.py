"""`kwspot wyoming` under load: N clients at once, each streaming a word stream as Home Assistant does.

    .venv/bin/python bench/wyoming_load.py [--words 20] [--clients 1,4,16] [--paced 1,8]

Each client sends 16 kHz 16-bit mono in 1024-sample chunks, then audio-stop. ``--clients``: as fast as
the server takes it; the table gives audio seconds served per wall second over all clients (how many live
streams one server could carry) and the server's CPU seconds per audio second. ``--paced``: each client sends
a chunk when its 64 ms of audio would have been spoken; ``delay`` is a detection's arrival minus the moment
the audio up to its timestamp had been sent (the server's own delay, median and 95th percentile over all
detections). Every client must get the same detections as a lone client; the table says whether they did.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import soxr
from common import build_stream, cpu_seconds, daemon_env, fmt, percentile, print_table, run_main

from kwspot.argtypes import Number, NumberList
from kwspot.frontend import SAMPLE_RATE

RATE, CHUNK = 16000, 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "kwspot", "wyoming", "--uri", f"tcp://127.0.0.1:{port}", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=daemon_env(), stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"the server did not start: {proc.stderr.read()}")


async def client(port: int, pcm: bytes, paced: bool) -> tuple[list[tuple[str, int]], list[float]]:
    """Stream ``pcm``; returns the detections and, when paced, each one's delay in seconds."""
    from wyoming.audio import AudioChunk, AudioStart, AudioStop
    from wyoming.client import AsyncTcpClient
    from wyoming.info import Describe, Info
    from wyoming.wake import Detect, Detection

    async with AsyncTcpClient("127.0.0.1", port) as c:
        found: list[tuple[str, int]] = []
        delays: list[float] = []
        start = time.monotonic()

        async def read() -> None:
            while True:
                event = await c.read_event()
                if event is None or Info.is_type(event.type):
                    return
                if Detection.is_type(event.type):
                    d = Detection.from_event(event)
                    found.append((d.name, d.timestamp))
                    if paced:  # the audio up to the timestamp was all sent at start + timestamp
                        delays.append(time.monotonic() - start - d.timestamp / 1000)

        reader = asyncio.create_task(read())
        await c.write_event(Detect().event())
        await c.write_event(AudioStart(rate=RATE, width=2, channels=1).event())
        step = CHUNK * 2
        for i in range(0, len(pcm), step):
            if paced:
                await asyncio.sleep(max(0.0, start + (i + step) / 2 / RATE - time.monotonic()))
            await c.write_event(AudioChunk(rate=RATE, width=2, channels=1, audio=pcm[i : i + step]).event())
        await c.write_event(AudioStop().event())
        await c.write_event(Describe().event())
        await reader
        return found, delays


async def run_many(port: int, pcm: bytes, n: int, paced: bool) -> list[tuple[list[tuple[str, int]], list[float]]]:
    return await asyncio.gather(*(client(port, pcm, paced) for _ in range(n)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--words", type=Number(1, 10000, integer=True), default=20)
    parser.add_argument("--clients", default="1,4,16", type=NumberList(1, 256, integer=True),
                        help="concurrent clients per row, comma separated (the daemon serves 256 at most)")
    parser.add_argument("--paced", default="1,8", type=NumberList(1, 256, integer=True),
                        help="the same, for clients that send in real time")
    args = parser.parse_args()
    stream = build_stream(args.words)
    audio16 = soxr.resample(stream.audio, SAMPLE_RATE, RATE)
    pcm = (np.clip(audio16, -1, 1) * 32767).astype("<i2").tobytes()
    port = free_port()
    server = start_server(port)
    rows = []
    try:
        alone = asyncio.run(client(port, pcm, False))[0]
        for paced, counts in ((False, args.clients), (True, args.paced)):
            for n in (int(x) for x in counts.split(",") if x):
                cpu0, t0 = cpu_seconds(server.pid), time.monotonic()
                results = asyncio.run(run_many(port, pcm, n, paced))
                wall, cpu = time.monotonic() - t0, cpu_seconds(server.pid) - cpu0
                served = n * stream.seconds
                delays = [d for _, ds in results for d in ds]
                same = all(found == alone for found, _ in results)
                rows.append([
                    f"{n} {'paced' if paced else 'full speed'}", fmt(served, 0), fmt(wall, 1), fmt(served / wall, 0),
                    fmt(cpu / served * 1000, 2, " ms"),
                    fmt(percentile(delays, 50) * 1000, 0, " ms") if paced else "—",
                    fmt(percentile(delays, 95) * 1000, 0, " ms") if paced else "—",
                    f"{len(alone)} {'yes' if same else 'NO'}",
                ])
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    print_table(
        f"kwspot wyoming, {stream.seconds:.0f} s stream of {args.words} words ({stream.source}), pid {os.getpid()}",
        ["clients", "audio s", "wall s", "audio s / s", "CPU / audio s", "delay p50", "delay p95",
         "detections, all same"],
        rows,
        notes=["CPU is the server process's (utime+stime); clients run in this process, on the same cores"],
    )


if __name__ == "__main__":
    run_main(main)
