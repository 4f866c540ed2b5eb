"""CPU share of one core, RSS and start-up time of ``kwspot listen`` running in real time.

    .venv/bin/python bench/listen.py [--model FILE] [--seconds 60] [--pin] [--pulse] [--startup-runs 3] [--baseline DIR]

Modes: ``file`` plays a stream of Speech Commands keywords with 1.5 s gaps over faint noise through
``--input FILE`` (real-time file source); ``pulse`` (with ``--pulse``) starts a private PulseAudio with a
null sink whose monitor is the default source, plays the same stream into the sink with paplay, and kwspot
captures the default device straight from the server (``audio.backend: auto`` picks libpulse);
``pulse-portaudio`` is the same through PortAudio and its ALSA plugin (``--backend portaudio``). The server
also serves a ``parec`` reader (without one a new capture stream gets no audio for ~2 s) asking for
``--neighbour-ms`` of latency (default 20, as a desktop call would): short fragments wake every client of
the monitor more often than a lone capture would (100 is closer to a Pi where kwspot is the only client).
The daemon runs with ``--socket`` and one client attached, as deployed.

CPU: utime+stime of the daemon (all threads, /proc/PID/stat) over the measured window divided by its wall
time, in percent of one core; the window starts ``--warmup`` seconds after the "listening on" log line.
RSS: /proc/PID/status VmRSS sampled every second in that window (median = steady) and VmHWM (peak); PSS from
/proc/PID/smaps_rollup (shared library pages divided among the processes that map them).
Start-up, from the spawn of the process (Popen) to: (a) the "listening on ..." log line, i.e. model loaded,
source open, socket bound; (b) the first model call, marked by a wrapper that patches Model.predict once
and restores it (includes waiting for the first 100 ms hop of audio). Median over ``--startup-runs`` runs.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from common import (
    Daemon,
    EventClient,
    Sampler,
    Unavailable,
    add_config_argument,
    add_model_argument,
    build_stream,
    check_model,
    config_flags,
    cpu_seconds,
    daemon_env,
    describe_model,
    fmt,
    kwspot_cmd,
    median,
    print_table,
    pulse_server,
    run_main,
    write_wav,
)

from kwspot.argtypes import Number
from kwspot.model import bundled_model_path

MIB = 1024.0


BACKEND_FLAGS = {"pulse-portaudio": ["--backend", "portaudio"]}  # mode -> its extra flags


def listen_args(model: Path, sock: Path, wav: Path | None, extra: list[str]) -> list[str]:
    source = ["--input", str(wav)] if wav is not None else []
    return ["listen", *source, "--model", str(model), "--socket", str(sock), "--no-console", "--log-level", "info",
            *extra]


def startup(args: argparse.Namespace, model: Path, wav: Path | None, env: dict[str, str], tmp: Path,
            extra: list[str]) -> dict:
    """Median and worst start-up times over ``args.startup_runs`` fresh processes."""
    ready, first = [], []
    runs = range(args.startup_runs)
    if "BENCH_PULSE_PID" in env:
        # The first capture stream on a fresh PulseAudio gets its first audio ~1.6 s late (measured with a bare
        # sounddevice stream too); a long-running sound server does not do that, so that run is not counted.
        runs = range(-1, args.startup_runs)
    for i in runs:
        sock = tmp / f"start{i}.sock"
        daemon = Daemon(kwspot_cmd(*listen_args(model, sock, wav, extra), pin=args.pin, mark_first_inference=True),
                        env)
        try:
            times = daemon.wait_line("listening on")[0] - daemon.started, daemon.first_inference() - daemon.started
            if i >= 0:
                ready.append(times[0])
                first.append(times[1])
        finally:
            daemon.stop()
    return {"ready": ready, "first": first}


def steady_run(args: argparse.Namespace, model: Path, wav: Path | None, env: dict[str, str], tmp: Path,
               play: list[str] | None, extra: list[str]) -> dict:
    """Run the daemon for warm-up + ``args.seconds``; sample it; return CPU share, RSS and events seen."""
    sock = tmp / "steady.sock"
    daemon = Daemon(kwspot_cmd(*listen_args(model, sock, wav, extra), pin=args.pin), env)
    player = None
    pulse_pid = int(env.get("BENCH_PULSE_PID", 0))
    try:
        with Sampler(daemon.pid, interval=1.0, pss=True) as sampler:
            ready = daemon.wait_line("listening on")[0]
            client = EventClient(sock, daemon)
            if play:
                player = subprocess.Popen(play, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            begin = ready + args.warmup
            time.sleep(max(0.0, begin - time.monotonic()))
            pulse_cpu0 = cpu_seconds(pulse_pid) if pulse_pid else 0.0
            t0 = time.monotonic()
            time.sleep(args.seconds)
            if daemon.proc.poll() is not None:
                raise RuntimeError(f"kwspot exited during the run: {daemon.stderr_tail()}")
            sampler.sample()
            pulse_share = 100 * (cpu_seconds(pulse_pid) - pulse_cpu0) / (time.monotonic() - t0) if pulse_pid else None
        client.close()
    finally:
        if player is not None:
            player.kill()
            player.wait()
        daemon.stop()
    window = [s for s in sampler.samples if s.wall >= begin]
    return {
        "cpu": sampler.cpu_share(begin),
        "rss": median([s.rss_kb / MIB for s in window]),
        "rss_end": window[-1].rss_kb / MIB if window else float("nan"),
        "pss": median([s.pss_kb / MIB for s in window]),
        "peak": sampler.peak_kb / MIB,
        "events": len(client.events),
        "pulse_cpu": pulse_share,
        "measured": window[-1].wall - window[0].wall if len(window) > 1 else 0.0,
    }


def run_mode(mode: str, args: argparse.Namespace, model: Path, tmp: Path, env: dict[str, str]) -> list[str]:
    words = int((args.seconds + args.warmup + 10) / 2.4) + 1
    stream = build_stream(words=words, gap_s=1.5)
    wav = write_wav(tmp / "stream.wav", stream.audio)
    source, play = (wav, None) if mode == "file" else (None, ["paplay", "-d", "kwsink", str(wav)])
    extra = BACKEND_FLAGS.get(mode, []) + config_flags(args)
    variants = [("", env, model)]
    if args.baseline and mode not in BACKEND_FLAGS:  # the same measurement of another tree (may predate the flag)
        # PYTHONSAFEPATH: the working directory (this checkout) must not come before the baseline on sys.path
        baseline_env = {**env, "PYTHONPATH": str(args.baseline.resolve()), "PYTHONSAFEPATH": "1"}
        variants.insert(0, (" (baseline)", baseline_env, args.baseline_model or model))
    rows = []
    for label, variant_env, variant_model in variants:
        starts = startup(args, variant_model, source, variant_env, tmp, extra)
        run = steady_run(args, variant_model, source, variant_env, tmp, play, extra)
        args.notes.append(f"{mode}{label}: {stream.source}, {len(stream.words)} words in {stream.seconds:.0f} s; "
                          f"{run['events']} events reached the client during the run")
        if run["pulse_cpu"] is not None:
            args.notes.append(f"{mode}{label}: the PulseAudio server itself used {run['pulse_cpu']:.1f}% of a core "
                              f"(null sink + monitor + {args.neighbour_ms} ms parec reader; not counted above)")
        rows.append([
            mode + label, "CPU 0" if args.pin else "no", fmt(run["measured"], 0, " s"),
            fmt(run["cpu"], 2, " %"), fmt(run["rss"], 1), fmt(run["rss_end"], 1), fmt(run["peak"], 1),
            fmt(run["pss"], 1), fmt(1000 * median(starts["ready"]), 0), fmt(1000 * median(starts["first"]), 0),
            fmt(1000 * max(starts["first"]), 0),
        ])
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_argument(parser)
    parser.add_argument("--seconds", type=Number(1, 86400), default=60, help="measured seconds per mode (default 60)")
    parser.add_argument("--warmup", type=Number(0, 3600), default=5,
                        help="seconds after start-up not measured (default 5)")
    parser.add_argument("--pin", action="store_true", help="run the daemon under taskset -c 0 (one core)")
    parser.add_argument("--pulse", action="store_true", help="also measure the PulseAudio capture path")
    parser.add_argument("--no-file", action="store_true", help="skip the file-source mode")
    parser.add_argument("--neighbour-ms", type=Number(1, 2000, integer=True), default=20,
                        help="latency the other capture client of the PulseAudio monitor asks for (default 20)")
    parser.add_argument("--startup-runs", type=Number(1, 100, integer=True), default=3,
                        help="fresh processes timed for start-up")
    parser.add_argument("--baseline", type=Path, metavar="DIR",
                        help="also measure the kwspot in DIR/kwspot (e.g. `git archive REV kwspot | tar -x -C DIR`) "
                             "in the same run, for before/after rows")
    add_config_argument(parser)
    parser.add_argument("--baseline-model", type=Path, metavar="FILE",
                        help="the model the baseline runs (default: the same as the other rows; an older tree may "
                             "not read a newer model: `git archive REV models | tar -x -C DIR`, then DIR/models/...)")
    args = parser.parse_args()
    if args.baseline and not (args.baseline / "kwspot" / "__init__.py").is_file():  # else "baseline" measures this tree
        parser.error(f"--baseline {args.baseline}: no kwspot package in it (git archive REV kwspot | tar -x -C DIR)")
    args.notes = []
    if args.pin and shutil.which("taskset") is None:
        parser.error("--pin needs taskset (util-linux)")
    model = args.model or bundled_model_path()
    try:
        check_model(model)
    except Unavailable as exc:
        print_table("kwspot listen", ["mode"], [], [f"nothing measured: {exc}"])
        return 1
    rows = []
    modes = ([] if args.no_file else ["file"]) + (["pulse", "pulse-portaudio"] if args.pulse else [])
    with tempfile.TemporaryDirectory(prefix="kwspot-bench-") as tmpdir:
        tmp = Path(tmpdir)
        for mode in modes:
            try:
                if mode.startswith("pulse"):
                    with pulse_server(reader_ms=args.neighbour_ms) as env:
                        rows += run_mode(mode, args, model, tmp, daemon_env(env))
                else:
                    rows += run_mode(mode, args, model, tmp, daemon_env())
            except Unavailable as exc:
                rows.append([mode, *["—"] * 10])
                args.notes.append(f"{mode} skipped: {exc}")
    columns = ["mode", "pinned", "measured", "CPU of 1 core", "RSS med MiB", "RSS end", "RSS peak", "PSS med",
               "ready ms", "1st inference ms", "worst"]
    notes = [f"model {describe_model(model)}",
             *([f"baseline model {describe_model(args.baseline_model)}"] if args.baseline_model else []), *args.notes,
             f"start-up: median of {args.startup_runs} runs from spawn; 'worst' is the slowest first inference"]
    print_table("kwspot listen in real time", columns, rows, notes)
    return 0


if __name__ == "__main__":
    run_main(main)
