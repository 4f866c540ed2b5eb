"""Soak: hours of audio through ``kwspot listen`` as fast as it goes, with the socket sink and a client.

    .venv/bin/python bench/soak.py [--hours 2] [--model FILE] [--via stdin|file] [--interval 2] [--churn 2]

The audio is a ~5 min stream of real keywords (Speech Commands testing list) with 1.5 s gaps over faint noise,
repeated. ``--via stdin`` (default) pipes the repetitions into ``--input - --rate 8000`` from this process, so
no big file is written and the client is connected before the first sample; ``--via file`` writes the whole
stream to a temporary WAV (115 MB for 2 h) and runs ``--input FILE --fast``. Both run at full speed.

Every ``--interval`` seconds: VmRSS and the open fds of the daemon (/proc/PID), and ``--churn`` extra clients
that connect and hang up (a leak there shows as fd growth). Warm-up is the first repetition of the stream.
Reported: RSS after warm-up vs at the end and its maximum, fd counts, events vs the keywords played, events per
repetition (repetitions 2.. see identical samples on the same hop grid, so they must give identical events),
and whether the client got every event the daemon logged. Exit status 1 if a check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile
from common import (
    Daemon,
    EventClient,
    Sampler,
    Stream,
    Unavailable,
    add_model_argument,
    build_stream,
    check_model,
    daemon_env,
    describe_model,
    file_position,
    fmt,
    kwspot_cmd,
    print_table,
    run_main,
    to_pcm16,
)

from kwspot.argtypes import Number
from kwspot.frontend import SAMPLE_RATE
from kwspot.model import bundled_model_path

HOP = SAMPLE_RATE // 10  # the daemon's default hop; each repetition is a whole number of hops
MIB = 1024.0


def period_stream(minutes: float) -> Stream:
    """About ``minutes`` of keywords, padded with noise to a whole number of hops."""
    stream = build_stream(words=max(1, round(minutes * 60 / 2.5)), gap_s=1.5)
    pad = -stream.audio.size % HOP
    tail = 0.003 * np.random.default_rng(1).standard_normal(pad).astype(np.float32)
    stream.audio = np.concatenate((stream.audio, tail))
    return stream


def churn(path: Path, count: int) -> None:
    """``count`` clients that connect and hang up at once."""
    for _ in range(count):
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
            s.connect(str(path))


def feed(pipe: BinaryIO, pcm: bytes, repeats: int, written: list[int]) -> None:
    """Write ``pcm`` ``repeats`` times into ``pipe`` (blocking when the daemon is busy), then close it."""
    try:
        for _ in range(repeats):
            for pos in range(0, len(pcm), 1 << 16):
                written[0] += pipe.write(pcm[pos : pos + (1 << 16)])
        pipe.close()
    except (BrokenPipeError, OSError, ValueError):
        pass


def run(args: argparse.Namespace, model: Path, stream: Stream, repeats: int, tmp: Path) -> dict:
    sock = tmp / "soak.sock"
    base = ["listen", "--model", str(model), "--socket", str(sock), "--no-console", "--log-level", "info"]
    written = [0]
    if args.via == "stdin":
        daemon = Daemon(kwspot_cmd(*base, "--input", "-", "--rate", "8000"), daemon_env(), stdin=subprocess.PIPE)

        def progress() -> float:  # seconds of audio written, less what a full pipe buffer may still hold
            return max(0, written[0] - 65536) / (2 * SAMPLE_RATE)
    else:
        wav = tmp / "soak.wav"
        with soundfile.SoundFile(str(wav), "w", SAMPLE_RATE, 1, "PCM_16") as out:
            for _ in range(repeats):
                out.write(stream.audio)
        daemon = Daemon(kwspot_cmd(*base, "--input", str(wav), "--fast"), daemon_env())

        def progress() -> float:  # seconds of audio the daemon has read from the WAV
            return max(0, (file_position(daemon.pid, wav) or 0) - 44) / (2 * SAMPLE_RATE)
    try:
        client = EventClient(sock, daemon)
        start = time.monotonic()
        with Sampler(daemon.pid, interval=args.interval, progress=progress) as sampler:
            if args.via == "stdin":
                pcm = to_pcm16(stream.audio)
                threading.Thread(target=feed, args=(daemon.proc.stdin, pcm, repeats, written), daemon=True).start()
            while daemon.proc.poll() is None:
                churn(sock, args.churn)
                time.sleep(args.interval)
        wall = time.monotonic() - start
        client.closed.wait(timeout=10)
        client.close()
    finally:
        daemon.stop()
    logged = re.search(r"stopped after ([\d.]+) s of audio, (\d+) events", " ".join(line for _, line in daemon.lines))
    return {"samples": sampler.samples, "peak": sampler.peak_kb, "wall": wall, "events": client.events,
            "logged": (float(logged[1]), int(logged[2])) if logged else None, "rc": daemon.proc.returncode}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_argument(parser)
    parser.add_argument("--hours", type=Number(0.001, 1000), default=2.0, help="hours of audio (default 2)")
    parser.add_argument("--period-minutes", type=Number(0.1, 1440), default=5.0, help="length of the repeated stream")
    parser.add_argument("--via", choices=["stdin", "file"], default="stdin", help="how the audio gets in")
    parser.add_argument("--interval", type=Number(0.1, 3600), default=2.0, help="seconds between samples (default 2)")
    parser.add_argument("--churn", type=Number(0, 1000, integer=True), default=2,
                        help="clients that connect and hang up per sample")
    parser.add_argument("--max-growth-mb", type=Number(0, 100000), default=5.0, help="RSS growth allowed after warm-up")
    args = parser.parse_args()
    model = args.model or bundled_model_path()
    try:
        check_model(model)
        stream = period_stream(args.period_minutes)
    except Unavailable as exc:
        print_table("Soak", ["check"], [], [f"nothing measured: {exc}"])
        return 1
    repeats = max(2, round(args.hours * 3600 / stream.seconds))
    with tempfile.TemporaryDirectory(prefix="kwspot-soak-") as tmpdir:
        r = run(args, model, stream, repeats, Path(tmpdir))

    samples = r["samples"]
    warm = next((s for s in samples if (s.progress or 0) >= stream.seconds), samples[len(samples) // 10])
    after = [s for s in samples if s.wall >= warm.wall]
    end = after[-1]
    growth = (end.rss_kb - warm.rss_kb) / MIB
    per_rep = Counter(int(e["t"] // stream.seconds) for _, e in r["events"])
    counts = [per_rep.get(i, 0) for i in range(repeats)]
    keyed = [sorted((e["keyword"], round(e["t"] % stream.seconds, 1)) for _, e in r["events"]
                    if int(e["t"] // stream.seconds) == i) for i in range(repeats)]
    differing = sum(k != keyed[1] for k in keyed[2:]) if repeats > 2 else 0
    logged = r["logged"]
    audio_h = logged[0] / 3600 if logged else repeats * stream.seconds / 3600
    checks = {
        "RSS flat": growth <= args.max_growth_mb,
        "no fd growth": end.fds <= warm.fds,
        "client got every event": logged is not None and logged[1] == len(r["events"]),
        "repetitions agree": differing == 0,
        "clean exit": r["rc"] == 0,
    }
    rows = [
        ["audio", f"{audio_h:.2f} h in {r['wall']:.0f} s ({audio_h * 3600 / r['wall']:.0f}x real time)"],
        ["RSS after warm-up", f"{warm.rss_kb / MIB:.1f} MiB (after {warm.wall - samples[0].wall:.0f} s)"],
        ["RSS at end", f"{end.rss_kb / MIB:.1f} MiB (growth {growth:+.2f} MiB)"],
        ["RSS max after warm-up / peak", f"{max(s.rss_kb for s in after) / MIB:.1f} / {r['peak'] / MIB:.1f} MiB"],
        ["open fds after warm-up / end / max", f"{warm.fds} / {end.fds} / {max(s.fds for s in after)}"],
        ["samples", f"{len(samples)} every {args.interval:g} s, {args.churn} client(s) churned each"],
        ["events (client / daemon log)", f"{len(r['events'])} / {logged[1] if logged else '—'}"],
        ["keywords played", f"{len(stream.words) * repeats} ({len(stream.words)} x {repeats} repetitions)"],
        ["events per repetition", f"min {min(counts)}, max {max(counts)}, first {counts[0]}; "
                                  f"{differing} of {max(0, repeats - 2)} later ones differ from the 2nd"],
        *[[name, "ok" if ok else "FAILED"] for name, ok in checks.items()],
    ]
    notes = [f"model {describe_model(model)}", f"{stream.source}; via {args.via}; "
             f"detection rate {fmt(100 * len(r['events']) / max(1, len(stream.words) * repeats), 0)}% "
             "of keywords played (a model-quality figure, not a soak check)"]
    print_table("Soak", ["measure", "value"], rows, notes)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    run_main(main)
