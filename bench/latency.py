"""End-to-end latency: from the end of a spoken word to its event arriving on the daemon's socket.

    .venv/bin/python bench/latency.py [--model FILE] [--words 30] [--modes stdin,file,pulse] [--pin]

A stream of keyword clips (Speech Commands testing list) with 1.5 s gaps over faint noise is played in real
time while a socket client timestamps each event line on arrival (CLOCK_MONOTONIC). A word's end is the end
of its last 10 ms frame within 30 dB of the clip's loudest frame (trailing silence trimmed).

Modes, and what "the word ended at" means in each:
- ``stdin``: ``--input - --rate 8000``; this script writes 10 ms of PCM at the moment those 10 ms end, as a
  sound card delivers periods; the end time is known exactly. Closest to a microphone.
- ``file``: ``--input FILE`` in real time; stream time 0 is taken as the arrival of the "listening on" log line
  (the file source starts its clock a few ms earlier, and delivers each 50 ms block at its start, so this mode
  reads up to ~50 ms low compared to a microphone).
- ``pulse``: a private PulseAudio whose default source is a pipe source (module-pipe-source); this script
  writes the stream into its FIFO paced as in ``stdin`` mode, and kwspot captures the default device through
  PortAudio/ALSA as it would a microphone. (A null sink's monitor, as in bench/listen.py, is not used here: the
  null sink buffers playback by up to its 2 s maximum latency, which varied from run to run.)

An event counts for a word if it names that keyword and arrives between the word's start and the next word's
start; ``algorithmic`` is the event's own ``t`` minus the word end (audio the detector waited for), and
``after audio`` is the arrival minus the moment the audio up to ``t`` was delivered (the daemon's own delay).
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from common import (
    Daemon,
    EventClient,
    PacedWriter,
    Stream,
    Unavailable,
    add_config_argument,
    add_model_argument,
    build_stream,
    check_model,
    config_flags,
    daemon_env,
    describe_model,
    fmt,
    kwspot_cmd,
    median,
    percentile,
    print_table,
    pulse_server,
    run_main,
    write_wav,
)

from kwspot.argtypes import Number
from kwspot.frontend import SAMPLE_RATE
from kwspot.model import bundled_model_path

MODES = ("stdin", "file", "pulse")


def match(stream: Stream, events: list[tuple[float, dict]], wall_at: Callable[[float], float],
          offset: float | None) -> dict:
    """Pair events with words by arrival time; latencies in ms."""
    latencies, algorithmic, processing, by_word = [], [], [], {}
    starts = [wall_at(w.start) for w in stream.words] + [float("inf")]
    used: set[int] = set()
    for i, word in enumerate(stream.words):
        inside = [(j, a, e) for j, (a, e) in enumerate(events) if starts[i] <= a < starts[i + 1]]
        hit = next(((j, a, e) for j, a, e in inside if e["keyword"] == word.label), None)
        if hit is None:
            continue
        j, arrival, event = hit
        used.add(j)
        latencies.append(1000 * (arrival - wall_at(word.end)))
        by_word[i] = latencies[-1]
        if offset is not None:
            algorithmic.append(1000 * (event["t"] - offset - word.end))
            processing.append(1000 * (arrival - wall_at(event["t"] - offset)))
    return {"lat": latencies, "alg": algorithmic, "proc": processing, "wrong": len(events) - len(used),
            "by_word": by_word}


def run_mode(mode: str, args: argparse.Namespace, model: Path, stream: Stream, tmp: Path) -> dict:
    sock = tmp / f"{mode}.sock"
    base = ["listen", "--model", str(model), "--socket", str(sock), "--no-console", "--log-level", "info"]
    base += config_flags(args)
    if mode == "stdin":
        daemon = Daemon(kwspot_cmd(*base, "--input", "-", "--rate", "8000", pin=args.pin), daemon_env(),
                        stdin=subprocess.PIPE)
        try:
            daemon.wait_line("listening on")
            client = EventClient(sock, daemon)
            writer = PacedWriter(daemon.proc.stdin, stream.audio).start()
            writer.join()
            time.sleep(1.5)
            result = {**match(stream, client.events, writer.wall_at, 0.0), "late": writer.lateness()}
            client.close()
        finally:
            daemon.stop()
        return {**result, "warnings": daemon.warnings()}
    if mode == "file":
        wav = write_wav(tmp / "stream.wav", stream.audio)
        daemon = Daemon(kwspot_cmd(*base, "--input", str(wav), pin=args.pin), daemon_env())
        try:
            t0 = daemon.wait_line("listening on")[0]
            client = EventClient(sock, daemon)
            daemon.proc.wait(timeout=stream.seconds + 30)
            client.closed.wait(timeout=5)
            result = match(stream, client.events, lambda t: t0 + t, 0.0)
            client.close()
        finally:
            daemon.stop()
        return {**result, "warnings": daemon.warnings()}
    fifo = tmp / "mic.fifo"
    with pulse_server(pipe=fifo) as env:
        daemon = Daemon(kwspot_cmd(*base, pin=args.pin), daemon_env(env))
        mic = open(fifo, "wb", buffering=0)  # the pipe source holds the read end open
        try:
            daemon.wait_line("listening on")
            client = EventClient(sock, daemon)
            silence = PacedWriter(mic, np.zeros(2 * SAMPLE_RATE, np.float32)).start()  # capture settles
            silence.join()
            writer = PacedWriter(mic, stream.audio).start()
            writer.join()
            time.sleep(1.5)
            result = {**match(stream, client.events, writer.wall_at, None), "late": writer.lateness()}
            client.close()
        finally:
            mic.close()
            daemon.stop()
        return {**result, "warnings": daemon.warnings()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_argument(parser)
    parser.add_argument("--words", type=Number(1, 10000, integer=True), default=30,
                        help="keywords in the stream (default 30, ~75 s)")
    parser.add_argument("--modes", default="stdin,file,pulse", help="comma-separated, of: " + ", ".join(MODES))
    parser.add_argument("--pin", action="store_true", help="run the daemon under taskset -c 0")
    add_config_argument(parser)
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if bad := set(modes) - set(MODES):
        parser.error(f"unknown mode(s): {', '.join(sorted(bad))}")
    model = args.model or bundled_model_path()
    notes = [f"model {describe_model(model)}"]
    rows = []
    try:
        check_model(model)
        stream = build_stream(words=args.words, gap_s=1.5)
    except Unavailable as exc:
        print_table("End-to-end latency", ["mode"], [], [f"nothing measured: {exc}"])
        return 1
    notes.append(f"stream: {stream.source}, {len(stream.words)} words in {stream.seconds:.0f} s, 1.5 s gaps")
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="kwspot-latency-") as tmpdir:
        for mode in modes:
            try:
                r = results[mode] = run_mode(mode, args, model, stream, Path(tmpdir))
            except Unavailable as exc:
                rows.append([mode, *["—"] * 9])
                notes.append(f"{mode} skipped: {exc}")
                continue
            lat, alg = r["lat"], r["alg"]
            notes += [f"{mode}: kwspot logged: {w}" for w in r["warnings"][:3]]
            if r.get("late"):
                notes.append(f"{mode}: the player wrote its 10 ms chunks late by {1000 * median(r['late']):.1f} ms "
                             f"median, {1000 * max(r['late']):.0f} ms at worst (machine load; already corrected)")
            ref = results.get("stdin", {}).get("by_word", {})
            extra = [v - ref[i] for i, v in r["by_word"].items() if i in ref] if mode != "stdin" else []
            rows.append([
                mode, f"{len(lat)}/{len(stream.words)}", str(r["wrong"]),
                fmt(median(lat), 0), fmt(percentile(lat, 90), 0),
                fmt(min(lat) if lat else None, 0), fmt(max(lat) if lat else None, 0), fmt(median(alg), 0),
                fmt(median(r["proc"]), 0),
                fmt(median(extra), 0) + (f" (n={len(extra)})" if extra else ""),
            ])
    notes.append("latency = event arrival on the socket - end of the word (ms); algorithmic = event t - word end; "
                 "after audio = event arrival - when the audio up to the event's t was delivered; "
                 "vs stdin = median per-word difference from the stdin mode (same words)")
    columns = ["mode", "detected", "other events", "median ms", "p90 ms", "min", "max", "algorithmic med",
               "after audio med", "vs stdin ms"]
    print_table("End-to-end latency, word end -> event on the socket", columns, rows, notes)
    return 0


if __name__ == "__main__":
    run_main(main)
