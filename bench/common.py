"""Helpers shared by the bench scripts: models, word streams, the daemon process, /proc sampling, tables.

Nothing here is a result: every number the scripts print is measured when they run.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile
from rich.console import Console
from rich.table import Table

from kwspot import KEYWORDS, modelfile
from kwspot.errors import KwspotError
from kwspot.frontend import SAMPLE_RATE, load_audio
from kwspot.model import bundled_model_path
from kwspot.paths import printable
from kwspot.train import streams as train_streams
from kwspot.train.streams import Word

REPO = Path(__file__).resolve().parents[1]
SPEECH_COMMANDS = REPO.parent / "shared" / "speech_commands"
WORKSHOP_MODEL = REPO / "models" / "workshop.tflite"
CLK_TCK = os.sysconf("SC_CLK_TCK")
console = Console(width=None if sys.stdout.isatty() else 200)

# A wrapper around ``kwspot`` that writes one line with CLOCK_MONOTONIC (shared by all processes) when the
# first window reaches the model, then restores Model.predict, so the rest of the run is the plain daemon.
FIRST_INFERENCE_MARK = "BENCH-FIRST-INFERENCE"
_HARNESS = f"""
import os, sys, time
from kwspot import model as _m
_orig = _m.Model.predict
def _first(self, window):
    _m.Model.predict = _orig
    os.write(2, b"{FIRST_INFERENCE_MARK} %.6f\\n" % time.monotonic())
    return _orig(self, window)
_m.Model.predict = _first
from kwspot.cli import main
sys.exit(main(sys.argv[1:]))
"""


class Unavailable(Exception):
    """A measurement that cannot be made here (missing model, data or tool); the message says why."""


# ---- models -----------------------------------------------------------------------------------------------


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="a kwspot config for the daemon (say, audio.block_ms: 200); default: none")


def config_flags(args: argparse.Namespace) -> list[str]:
    """The daemon's ``--config`` for ``args.config`` (an absolute path: the daemon runs elsewhere), or none."""
    return ["--config", str(args.config.resolve())] if args.config else []


def add_model_argument(parser: argparse.ArgumentParser, many: bool = False) -> None:
    if many:
        parser.add_argument("--model", "-m", action="append", type=Path, metavar="FILE",
                            help="a .tflite model (repeatable; default: the bundled model, and "
                                 "models/workshop.tflite if present)")
    else:
        parser.add_argument("--model", "-m", type=Path, metavar="FILE",
                            help="a .tflite model with its .json sidecar (default: the bundled model)")


def default_models() -> list[Path]:
    """The bundled model, plus the workshop reference if it is there."""
    models = [bundled_model_path()]
    if WORKSHOP_MODEL.is_file():
        models.append(WORKSHOP_MODEL)
    return models


def check_model(path: Path) -> Path:
    """The model path if it and its sidecar exist, else Unavailable."""
    path = Path(path)
    if not path.is_file():
        raise Unavailable(f"{path}: no such model file")
    if not path.with_suffix(".json").is_file():
        raise Unavailable(f"{path.with_suffix('.json')}: sidecar missing")
    return path


def describe_model(path: Path) -> str:
    """``name (sha256 prefix, size)``: which model a table was measured with."""
    path = Path(path)
    if not path.is_file():
        return f"{path.name} (missing)"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return f"{path.name} (sha256 {digest}…, {path.stat().st_size / 1024:.0f} KiB)"


def sidecar(path: Path) -> dict:
    """The model's sidecar (through kwspot's one reader), or {} if it has none that reads."""
    try:
        return modelfile.read(path).meta
    except KwspotError:
        return {}


# ---- word streams -----------------------------------------------------------------------------------------


@dataclass
class Stream:
    """A word stream from kwspot's own builder (:func:`kwspot.train.streams.build_stream`) and what it is made of."""

    audio: np.ndarray  # float32 at 8 kHz
    words: list[Word]  # label, and the spoken part's start and end in seconds
    source: str

    @property
    def seconds(self) -> float:
        return self.audio.size / SAMPLE_RATE


def keyword_clips(count: int, seed: int = 0) -> tuple[list[tuple[str, np.ndarray]], str]:
    """``count`` keyword clips (cycling through the ten keywords): Speech Commands testing list, else espeak-ng."""
    order = [KEYWORDS[i % len(KEYWORDS)] for i in range(count)]
    listing = SPEECH_COMMANDS / "testing_list.txt"
    if listing.is_file():
        rng = np.random.default_rng(seed)
        by_word: dict[str, list[str]] = {}
        for line in listing.read_text().split():
            by_word.setdefault(line.split("/")[0], []).append(line)
        picks = {w: list(rng.permutation(by_word[w])) for w in KEYWORDS}
        clips = [(w, load_audio(SPEECH_COMMANDS / picks[w][i // len(KEYWORDS) % len(picks[w])]))
                 for i, w in enumerate(order)]
        return clips, "Speech Commands testing_list.txt clips"
    if shutil.which("espeak-ng"):
        cache: dict[str, np.ndarray] = {}
        with tempfile.TemporaryDirectory() as tmp:
            for w in KEYWORDS:
                path = Path(tmp) / f"{w}.wav"
                subprocess.run(["espeak-ng", "-v", "en-us", "-s", "140", "-w", str(path), w], check=True)
                cache[w] = load_audio(path)
        return [(w, cache[w]) for w in order], "espeak-ng words (Speech Commands not found)"
    raise Unavailable(f"no speech: {SPEECH_COMMANDS} is absent and espeak-ng is not installed")


def build_stream(words: int, gap_s: float = 1.5, noise: float = 0.003, seed: int = 0) -> Stream:
    """Keyword clips with ``gap_s`` of silence between spoken parts, over faint white noise, with ground truth."""
    clips, source = keyword_clips(words, seed)
    stream = train_streams.build_stream([(clip, keyword) for keyword, clip in clips], [],
                                        np.random.default_rng(seed), snrs=None, gap_s=(gap_s, gap_s), hiss=noise)
    return Stream(stream.audio, stream.words, source)


def write_wav(path: Path, audio: np.ndarray) -> Path:
    soundfile.write(str(path), audio, SAMPLE_RATE, subtype="PCM_16")
    return path


def to_pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


# ---- the daemon -------------------------------------------------------------------------------------------


def daemon_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this environment) without a user config, with unbuffered output."""
    return {**(os.environ if base is None else base), "KWSPOT_CONFIG": "", "PYTHONUNBUFFERED": "1"}


def kwspot_cmd(*args: str, pin: bool = False, mark_first_inference: bool = False) -> list[str]:
    """``python -m kwspot ARGS``, optionally under ``taskset -c 0`` and with the first-inference mark."""
    head = ["taskset", "-c", "0"] if pin else []
    body = ["-c", _HARNESS] if mark_first_inference else ["-m", "kwspot"]
    return [*head, sys.executable, *body, *args]


class Daemon:
    """A running ``kwspot`` with its stderr collected (with arrival times) by a thread."""

    def __init__(self, cmd: list[str], env: dict[str, str] | None = None, stdin: int | None = None) -> None:
        self.started = time.monotonic()
        self.proc = subprocess.Popen(cmd, env=env or daemon_env(), stdin=stdin, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in iter(self.proc.stderr.readline, b""):
            self.lines.append((time.monotonic(), line.decode(errors="replace").rstrip("\n")))

    def wait_line(self, needle: str, timeout: float = 30) -> tuple[float, str]:
        """Arrival time and text of the first stderr line containing ``needle``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for when, line in list(self.lines):
                if needle in line:
                    return when, line
            if self.proc.poll() is not None:
                self._reader.join(timeout=2)
                if not any(needle in line for _, line in self.lines):
                    raise RuntimeError(f"kwspot exited ({self.proc.returncode}): {self.stderr_tail()}")
            time.sleep(0.005)
        raise RuntimeError(f"no {needle!r} line from kwspot within {timeout:.0f} s: {self.stderr_tail()}")

    def first_inference(self, timeout: float = 30) -> float:
        """CLOCK_MONOTONIC of the first model call (needs ``mark_first_inference``)."""
        return float(self.wait_line(FIRST_INFERENCE_MARK, timeout)[1].split()[-1])

    def warnings(self) -> list[str]:
        """The daemon's WARNING and ERROR log lines so far."""
        return [line for _, line in self.lines if " WARNING " in line or " ERROR " in line]

    def stderr_tail(self, lines: int = 5) -> str:
        return " | ".join(line for _, line in self.lines[-lines:])

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=2)
        return self.proc.returncode


# ---- /proc sampling ---------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of all the process's threads, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_kb(pid: int, key: str) -> int:
    """A kB field of /proc/PID/status; ProcessLookupError once the process is a zombie (no memory fields)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise ProcessLookupError(f"{pid}: no {key} (process exiting)")


def pss_kb(pid: int) -> int:
    """Proportional set size: shared library pages divided among the processes mapping them."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise ProcessLookupError(f"{pid}: no Pss (process exiting)")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class Sample:
    wall: float  # CLOCK_MONOTONIC
    cpu_s: float
    rss_kb: int
    fds: int
    pss_kb: int = 0
    progress: float | None = None  # seconds of audio consumed, where the caller can tell


@dataclass
class Sampler:
    """Samples a process's CPU time, RSS and open fds every ``interval`` seconds in a thread."""

    pid: int
    interval: float = 1.0
    progress: Callable[[], float | None] | None = None
    pss: bool = False  # also read /proc/PID/smaps_rollup (slower)
    samples: list[Sample] = field(default_factory=list)
    peak_kb: int = 0  # VmHWM at the last sample

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> Sample | None:
        try:
            s = Sample(time.monotonic(), cpu_seconds(self.pid), status_kb(self.pid, "VmRSS"), open_fds(self.pid),
                       pss_kb(self.pid) if self.pss else 0, self.progress() if self.progress else None)
            self.peak_kb = max(self.peak_kb, status_kb(self.pid, "VmHWM"))
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return None  # the process is gone
        self.samples.append(s)
        return s

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def cpu_share(self, after: float) -> float:
        """Percent of one core used between the first sample at or after ``after`` and the last sample."""
        window = [s for s in self.samples if s.wall >= after]
        if len(window) < 2:
            return float("nan")
        first, last = window[0], window[-1]
        return 100.0 * (last.cpu_s - first.cpu_s) / (last.wall - first.wall)


def file_position(pid: int, path: Path) -> int | None:
    """Byte offset of the process's open file ``path`` (from /proc/PID/fdinfo), or None."""
    target = str(Path(path).resolve())
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    for line in Path(f"/proc/{pid}/fdinfo/{fd}").read_text().splitlines():
                        if line.startswith("pos:"):
                            return int(line.split()[1])
    except OSError:
        return None
    return None


# ---- socket client ----------------------------------------------------------------------------------------


class EventClient:
    """Connects to the daemon's socket and records every event with its arrival time (CLOCK_MONOTONIC)."""

    def __init__(self, path: Path, daemon: Daemon | None = None, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if daemon is not None and daemon.proc.poll() is not None:
                raise RuntimeError(f"kwspot exited before its socket came up: {daemon.stderr_tail()}")
            sock = socket.socket(socket.AF_UNIX)
            try:
                sock.connect(str(path))
                break
            except OSError:
                sock.close()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{path}: kwspot's socket never came up") from None
                time.sleep(0.01)
        self.sock = sock
        self.events: list[tuple[float, dict]] = []
        self.closed = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        buf = b""
        try:
            while chunk := self.sock.recv(65536):
                now = time.monotonic()
                buf += chunk
                *lines, buf = buf.split(b"\n")
                self.events += [(now, json.loads(line)) for line in lines if line]
        except OSError:
            pass
        self.closed.set()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(timeout=2)


# ---- PulseAudio -------------------------------------------------------------------------------------------

PULSE_TOOLS = ("pulseaudio", "pactl", "parec", "pacat", "paplay")


@contextlib.contextmanager
def pulse_server(rate: int = 48000, pipe: Path | None = None, reader_ms: int = 20) -> Iterator[dict[str, str]]:
    """A private PulseAudio with a null sink ``kwsink`` whose monitor is the default source; yields its env.

    A ``parec --latency-msec=READER_MS`` reader keeps the monitor running (as tests/test_live_pulse.py does);
    the source then posts audio in fragments of at most that, waking every capture client as often.
    With ``pipe``, the default source is instead ``kwpipe``, a pipe source reading 8 kHz S16_LE mono from
    that FIFO: audio written there reaches capture clients like a microphone's, with no playback stream
    in between (the null sink's own buffering, up to seconds, would otherwise add to any latency measured).
    Raises Unavailable if the tools are missing or the server does not start.
    """
    missing = [tool for tool in PULSE_TOOLS if shutil.which(tool) is None]
    if missing:
        raise Unavailable(f"PulseAudio tools missing: {', '.join(missing)}")
    with tempfile.TemporaryDirectory(prefix="kwspot-pulse-") as runtime:
        os.chmod(runtime, 0o700)
        env = {**os.environ, "XDG_RUNTIME_DIR": runtime, "HOME": runtime}
        env.pop("PULSE_SERVER", None)
        server = subprocess.Popen(
            ["pulseaudio", "-n", "--daemonize=no", "--exit-idle-time=-1", "--disallow-exit", "--log-target=stderr",
             "--load=module-native-protocol-unix auth-anonymous=1",
             f"--load=module-null-sink sink_name=kwsink rate={rate}", "--load=module-always-sink"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        reader = None
        try:
            deadline = time.monotonic() + 15
            while subprocess.run(["pactl", "info"], env=env, capture_output=True).returncode != 0:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise Unavailable("PulseAudio did not start")
                time.sleep(0.2)
            default = "kwsink.monitor"
            if pipe is not None:
                loaded = subprocess.run(["pactl", "load-module", "module-pipe-source", "source_name=kwpipe",
                                         f"file={pipe}", "format=s16le", "rate=8000", "channels=1"],
                                        env=env, capture_output=True, text=True)
                if loaded.returncode != 0:
                    raise Unavailable(f"module-pipe-source did not load: {loaded.stderr.strip()}")
                default = "kwpipe"
            subprocess.run(["pactl", "set-default-source", default], env=env, check=True)
            reader = subprocess.Popen(["parec", f"--latency-msec={reader_ms}", "-d", "kwsink.monitor"], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            env["BENCH_PULSE_PID"] = str(server.pid)
            yield env
        finally:
            if reader is not None:
                reader.kill()
                reader.wait()
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


class PacedWriter:
    """Writes 8 kHz PCM16 to a pipe in real time, ``chunk_ms`` at a time, each chunk at the moment it ends
    (as a sound card delivers a period).

    ``wall_at(t)`` is the CLOCK_MONOTONIC at which the sample at ``t`` seconds had really been written: the
    due time, or later if this process was descheduled (on a loaded machine), so such delays of the
    player are not counted as the daemon's latency.
    """

    def __init__(self, pipe: BinaryIO, audio: np.ndarray, chunk_ms: int = 10) -> None:
        self.pipe = pipe
        self.pcm = to_pcm16(audio)
        self.chunk = 2 * SAMPLE_RATE * chunk_ms // 1000
        self.t0 = 0.0
        self.written_at: list[float] = []  # when each chunk's write returned
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> PacedWriter:
        self.t0 = time.monotonic()
        self._thread.start()
        return self

    def wall_at(self, t: float) -> float:
        """When the audio up to ``t`` (the chunk ending at or after ``t``) had been written."""
        index = min(-(-round(t * 2 * SAMPLE_RATE) // self.chunk) - 1, len(self.written_at) - 1)
        return max(self.t0 + t, self.written_at[index]) if index >= 0 else self.t0 + t

    def lateness(self) -> list[float]:
        """Seconds each chunk was written after it was due."""
        ends = [min(len(self.pcm), (i + 1) * self.chunk) / (2 * SAMPLE_RATE) for i in range(len(self.written_at))]
        return [w - (self.t0 + e) for w, e in zip(self.written_at, ends, strict=True)]

    def _run(self) -> None:
        try:
            for pos in range(0, len(self.pcm), self.chunk):
                piece = self.pcm[pos : pos + self.chunk]
                due = self.t0 + (pos + len(piece)) / (2 * SAMPLE_RATE)
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                self.pipe.write(piece)
                self.pipe.flush()
                self.written_at.append(time.monotonic())
        except (BrokenPipeError, ValueError, OSError) as exc:
            self.error = exc

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)


# ---- statistics and output ---------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def fmt(value: float | None, digits: int = 1, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "—"
    return f"{value:.{digits}f}{unit}"


def machine() -> str:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}, load average {load}"


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]], notes: Sequence[str] = ()) -> None:
    table = Table(title=title, title_justify="left")
    for i, name in enumerate(columns):
        table.add_column(name, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    console.print(f"[dim]{machine()}[/dim]")
    for note in notes:
        console.print(f"[dim]note: {note}[/dim]")


def run_main(main: Callable[[], int | None]) -> None:
    """A bench script's entry: what it is given wrong (a missing model or data folder, an output it cannot
    write) is one line ``SCRIPT: error: ...`` and exit status 2, as kwspot's own commands do."""
    script = Path(sys.argv[0]).name
    try:
        code = main()
    except KwspotError as exc:
        print(printable(f"{script}: error: {exc}"), file=sys.stderr)
        code = 2
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(printable(f"{script}: error: {where}{exc.strerror or exc}"), file=sys.stderr)
        code = 2
    raise SystemExit(code or 0)
