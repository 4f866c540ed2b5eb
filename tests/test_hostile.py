"""A hostile user's inputs (issue 9): every numeric flag, every path option, stdin, NaN audio, socket peers.

Each class of input is tested as a class (every flag found by introspecting the parsers, every path
option with the same set of bad paths). Bad input ends in one line ``kwspot: error: ...`` and exit 2:
no traceback, no hang (every run has a timeout), no leftover socket file.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile

from conftest import claim_rate, espeak, kwspot_cmd, run_kwspot, wait_for
from kwspot import modelfile
from kwspot.argtypes import Number, NumberList, NumberRange
from kwspot.cli import build_parser, main
from kwspot.errors import KwspotError
from kwspot.frontend import fit_window, load_audio
from kwspot.model import bundled_model_path, sidecar_path
from kwspot.predict import loudest_window

ROOT = os.geteuid() == 0
# Root reads any file; without these two capabilities it obeys permission bits like everyone else.
UNPRIVILEGED = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if ROOT else []
TONE_S = 1.5


def run(*args: str, prefix: list[str] | None = None, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "KWSPOT_CONFIG": "", "PYTHONUNBUFFERED": "1", **kwargs.pop("env", {})}
    kwargs.setdefault("capture_output", True)
    return subprocess.run([*(prefix or []), *kwspot_cmd(*args)], timeout=timeout, env=env, **kwargs)


def text(out: str | bytes) -> str:
    return out.decode("utf-8", "replace") if isinstance(out, bytes) else out


def assert_exit_2(result: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2, no traceback, exactly one stderr line ``kwspot: error: ...`` containing the needles."""
    err = text(result.stderr)
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, (result.returncode, err)
    assert lines[0].startswith("kwspot: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def tone(path: Path, seconds: float = TONE_S, rate: int = 16000, subtype: str = "PCM_16") -> Path:
    t = np.arange(int(rate * seconds)) / rate
    soundfile.write(os.fsencode(path), (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate,
                    subtype=subtype, format=path.suffix[1:].upper())
    return path


def stopped_after(err: str) -> str:
    """The audio duration from the daemon's last log line ("stopped after 2.5 s of audio ...")."""
    line = next(line for line in err.splitlines() if "stopped after" in line)
    return line.split("stopped after ")[1].split(",")[0]


def sockets_in(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_socket()}


# ---- item 6: every numeric flag of every subcommand -------------------------------------------------------

def numeric_flags() -> list[tuple[str, argparse.Action]]:
    parser = build_parser([], every=True)
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return [
        (name, action)
        for name, sub in subparsers.choices.items()
        for action in sub._actions
        if action.option_strings and action.type is not None
    ]


HOSTILE = ["0", "-1", "nan", "inf", "1e20", "abc"]


def is_invalid(checker: Number | NumberList | NumberRange, value: str) -> bool:
    """What the flag's declared range says of ``value`` (decided here, not by calling the checker)."""
    item = checker.item if isinstance(checker, (NumberList, NumberRange)) else checker
    try:
        number = float(value)
    except ValueError:
        return value.strip().lower() not in getattr(checker, "words", ())
    if not math.isfinite(number) or not item.low <= number <= item.high:
        return True
    return item.integer and not value.lstrip("-").isdigit()


def test_every_numeric_flag_declares_its_range():
    numeric = [(name, a.option_strings) for name, a in numeric_flags() if a.type in (int, float)]
    assert numeric == [], f"numeric flags without a range check (use kwspot.argtypes.Number): {numeric}"
    assert sum(isinstance(a.type, (Number, NumberList)) for _, a in numeric_flags()) >= 20
    ranged = {name for name, a in numeric_flags() if isinstance(a.type, (Number, NumberList))}
    assert {"listen", "wyoming", "train", "evaluate"} <= ranged  # every subcommand's options were introspected


WORD_FLAGS = {
    "listen --exec, empty": (["listen", "--exec="], "--exec"),
    "listen --exec, blank": (["listen", "--exec=  "], "--exec"),
    "listen --exec, NUL byte": (["listen", "--exec=echo \0"], "--exec"),
    "train --keywords, empty word": (["train", "--data=d", "--out=o", "--keywords=eight,,stop"], "--keywords"),
    "train --keywords, repeated": (["train", "--data=d", "--out=o", "--keywords=eight,eight"], "--keywords"),
    "train --keywords, a path": (["train", "--data=d", "--out=o", "--keywords=../eight"], "--keywords"),
    "train --keywords, NUL byte": (["train", "--data=d", "--out=o", "--keywords=ei\0ght"], "--keywords"),
    "train --keywords, over 255 bytes": (["train", "--data=d", "--out=o", f"--keywords={'w' * 256}"], "--keywords"),
}


@pytest.mark.parametrize("case", list(WORD_FLAGS))
def test_flags_that_take_words_refuse_bad_ones_in_one_line(case, capsys):
    """Text flags added with the sinks and training (``--exec``, ``--keywords``): checked by argparse too."""
    argv, flag = WORD_FLAGS[case]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kwspot: error: ") and flag in lines[0], err


@pytest.mark.parametrize("uri,needle", [
    ("unix:///tmp/kw\0.sock", "NUL byte"),
    (f"unix:///tmp/{'s' * 300}.sock", "too long"),
    ("tcp://127.0.0.1:99999", "port"),
    ("udp://127.0.0.1:10400", "tcp://"),
    ("tcp://[::1", "not a URI"),
    (f"tcp://{'h' * 300}:10400", "not a host name"),
    (f"tcp://{'h' * 70}.example:10400", "not a host name"),
])
def test_wyoming_refuses_bad_uris_in_one_line(uri, needle, capsys, monkeypatch):
    monkeypatch.setenv("KWSPOT_CONFIG", "")
    assert main(["wyoming", "--uri", uri]) == 2  # in-process: a NUL byte cannot be passed to a new process
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kwspot: error: ") and needle in lines[0], err


NUMERIC_CASES = [
    (name, max(action.option_strings, key=len), value)
    for name, action in numeric_flags()
    if isinstance(action.type, (Number, NumberList, NumberRange))
    for value in HOSTILE
    if is_invalid(action.type, value)
]


@pytest.mark.parametrize("command,flag,value", NUMERIC_CASES, ids=[" ".join(c) for c in NUMERIC_CASES])
def test_every_invalid_numeric_value_is_one_line(command, flag, value, capsys):
    """The whole class through the real entry point (in-process: ~100 cases)."""
    with pytest.raises(SystemExit) as exit_:
        main([command, f"{flag}={value}"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kwspot: error: ") and flag in lines[0], err


ONE_PER_FLAG = list({(c, f): (c, f, v) for c, f, v in NUMERIC_CASES if v in ("nan", "abc")}.values())


@pytest.mark.parametrize("command,flag,value", ONE_PER_FLAG, ids=[" ".join(c) for c in ONE_PER_FLAG])
def test_each_numeric_flag_as_a_real_process(command, flag, value):
    assert_exit_2(run(command, f"{flag}={value}", text=True, timeout=60), flag, value)


def test_stdin_rate_zero_negative_and_huge_are_refused(tmp_path):
    for value in ("0", "-16000", "100000000000000000000"):
        assert_exit_2(run("listen", "--input", "-", f"--rate={value}", input=b"", timeout=60), "--rate")


SIDECAR_THRESHOLDS = {
    "a word": ({"yes": "high"}, "thresholds.yes"),
    "a boolean": ({"yes": True}, "thresholds.yes"),
    "null": ({"yes": None}, "thresholds.yes"),
    "a list": ({"yes": [0.5]}, "thresholds.yes"),
    "above 1": ({"yes": 1.5}, "thresholds.yes"),
    "negative": ({"yes": -0.1}, "thresholds.yes"),
    "NaN": ({"yes": float("nan")}, "thresholds.yes"),
    "unknown keyword": ({"halt": 0.5}, "thresholds.halt"),
    "not a mapping": ([0.5, 0.6], "thresholds"),
}


@pytest.mark.parametrize("case", list(SIDECAR_THRESHOLDS))
def test_bad_sidecar_thresholds_are_one_line(tmp_path, case):
    thresholds, needle = SIDECAR_THRESHOLDS[case]
    model = tmp_path / "m.tflite"
    shutil.copy(bundled_model_path(), model)
    meta = json.loads(sidecar_path(bundled_model_path()).read_text())
    meta["thresholds"] = thresholds
    sidecar_path(model).write_text(json.dumps(meta))  # json writes NaN as NaN, which Python's reader accepts
    result = run("predict", "--model", str(model), str(tone(tmp_path / "t.wav")), text=True)
    assert_exit_2(result, "m.json", needle)


GOOD_FEATURES = {"kind": "logmel", "frame": 256, "hop": 80, "fft": 256, "mels": 40, "fmin": 20.0, "fmax": 4000.0,
                 "floor": 1e-6, "mean": [0.0] * 40, "std": [1.0] * 40}
SIDECAR_FEATURES = {
    "not a mapping": ("logmel", "sidecar 'features' must be"),
    "another kind": ({**GOOD_FEATURES, "kind": "mfcc"}, "sidecar 'features' must be"),
    "frame as a word": ({**GOOD_FEATURES, "frame": "256"}, "'frame' must be a positive whole number"),
    "hop zero": ({**GOOD_FEATURES, "hop": 0}, "'hop' must be a positive whole number"),
    "frame past fft": ({**GOOD_FEATURES, "frame": 512}, "must fit both fft"),
    "fmax NaN": ({**GOOD_FEATURES, "fmax": float("nan")}, "features.fmax must be a number"),
    "fmax past Nyquist": ({**GOOD_FEATURES, "fmax": 5000.0}, "fmax <= 4000"),
    "mean too short": ({**GOOD_FEATURES, "mean": [0.0] * 39}, "features.mean must be a list of 40 numbers"),
    "std with a word": ({**GOOD_FEATURES, "std": ["x"] * 40}, "features.std must be a list of 40 numbers"),
    "std zero": ({**GOOD_FEATURES, "std": [0.0] * 40}, "features.std must be positive"),
}


FEATURE_MISMATCH = {  # model file -> what its sidecar is changed to say, and the error's words
    "workshop.tflite": ("features on a raw-input model", "model input shape (1, 8000)"),
    "kwspot.tflite": ("no features on a feature model", "model input shape (1, 97, 40)"),
}


@pytest.mark.parametrize("case", [*SIDECAR_FEATURES, *FEATURE_MISMATCH])
def test_bad_sidecar_features_are_one_line(tmp_path, case):
    source = bundled_model_path().with_name(case) if case in FEATURE_MISMATCH else bundled_model_path()
    model = tmp_path / "m.tflite"
    shutil.copy(source, model)
    meta = json.loads(sidecar_path(source).read_text())
    if case in SIDECAR_FEATURES:
        meta["features"], needle = SIDECAR_FEATURES[case]
    elif "features" in meta:
        del meta["features"]
        needle = FEATURE_MISMATCH[case][1]
    else:
        meta["features"], needle = GOOD_FEATURES, FEATURE_MISMATCH[case][1]
    sidecar_path(model).write_text(json.dumps(meta))
    result = run("predict", "--model", str(model), str(tone(tmp_path / "t.wav")), text=True)
    assert_exit_2(result, "m.", needle)


# ---- item 7: every path option, the same bad paths ----------------------------------------------------------

SUFFIX = {"audio": ".wav", "model": ".tflite", "config": ".yaml", "socket": ".sock"}


def _valid(kind: str, path: Path) -> Path:
    """A file that would be accepted by an option of ``kind``."""
    if kind == "audio":
        tone(path)
    elif kind == "model":
        shutil.copy(bundled_model_path(), path)
        shutil.copy(sidecar_path(bundled_model_path()), sidecar_path(path))
        verifier = modelfile.read(bundled_model_path()).verifier
        if verifier is not None:  # the sidecar names its second stage by a file name beside it
            shutil.copy(verifier.head, path.parent / verifier.head.name)
    elif kind == "config":
        path.write_text("detector:\n  threshold: 0.5\n")
    else:  # a stale socket: bound, then closed
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(path))
        s.close()
    return path


PATH_OPTIONS: dict[str, tuple[str, Callable[[Path, str], list[str]]]] = {
    "listen --input": ("audio", lambda tmp, p: ["listen", "--input", p, "--fast", "--format", "jsonl"]),
    "listen --model": ("model", lambda tmp, p: ["listen", "--input", str(tone(tmp / "in.wav")), "--fast",
                                               "--format", "jsonl", "--model", p]),
    "listen --config": ("config", lambda tmp, p: ["listen", "--input", str(tone(tmp / "in.wav")), "--fast",
                                                 "--format", "jsonl", "--config", p]),
    "listen --socket": ("socket", lambda tmp, p: ["listen", "--input", str(tone(tmp / "in.wav")), "--fast",
                                                 "--format", "jsonl", "--socket", p]),
    "events --socket": ("socket", lambda tmp, p: ["events", "--socket", p]),
    "predict FILE": ("audio", lambda tmp, p: ["predict", p]),
    "wyoming --model": ("model", lambda tmp, p: ["wyoming", "--uri", "tcp://127.0.0.1:0", "--model", p]),
    "wyoming --config": ("config", lambda tmp, p: ["wyoming", "--uri", "stdio://", "--config", p]),
}


def long_name(tmp: Path, kind: str) -> tuple[str, str]:
    return str(tmp / ("x" * 300)), "too long"


def long_path(tmp: Path, kind: str) -> tuple[str, str]:
    return str(tmp / "/".join(["y" * 200] * 25)), "too long"


def not_utf8(tmp: Path, kind: str) -> tuple[str, str]:
    return os.fsdecode(os.fsencode(str(tmp)) + b"/missing-\xff\xfe"), "missing-"


def directory(tmp: Path, kind: str) -> tuple[str, str]:
    (tmp / "a-dir").mkdir()
    return str(tmp / "a-dir"), "a-dir"


def unreadable(tmp: Path, kind: str) -> tuple[str, str]:
    path = _valid(kind, tmp / f"locked{SUFFIX[kind]}")
    path.chmod(0)
    return str(path), "locked"


def wrong_content(tmp: Path, kind: str) -> tuple[str, str]:
    path = tmp / f"wrong{SUFFIX[kind]}"
    path.write_text("I am a note, not what you think\n")
    if kind == "model":
        shutil.copy(sidecar_path(bundled_model_path()), sidecar_path(path))
    return str(path), "wrong"


BAD_PATHS = {
    "name over 255 bytes": long_name,
    "path over 4095 bytes": long_path,
    "missing, not UTF-8": not_utf8,
    "a directory": directory,
    "unreadable (mode 000)": unreadable,
    "wrong content (a text file)": wrong_content,
}
WORKS = {("missing, not UTF-8", "listen --socket")}  # a fresh socket may have any name


@pytest.mark.parametrize("bad", list(BAD_PATHS))
@pytest.mark.parametrize("option", list(PATH_OPTIONS))
def test_every_path_option_refuses_bad_paths(tmp_path, option, bad):
    kind, command = PATH_OPTIONS[option]
    if bad.startswith("unreadable") and ROOT and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: permission bits cannot be tested")
    path, needle = BAD_PATHS[bad](tmp_path, kind)
    args = command(tmp_path, path)
    before = sockets_in(tmp_path)
    result = run(*args, prefix=UNPRIVILEGED if bad.startswith("unreadable") else None, stdin=subprocess.DEVNULL)
    if (bad, option) in WORKS:
        assert result.returncode == 0, text(result.stderr)
        assert "Traceback" not in text(result.stderr)
    else:
        assert_exit_2(result, needle)
    assert sockets_in(tmp_path) <= before, "socket file left behind"


@pytest.mark.parametrize("key", ["model.path", "sinks.socket"])
def test_nul_byte_in_a_configured_path(tmp_path, key):
    section, name = key.split(".")
    (tmp_path / "kw.yaml").write_text(f'{section}:\n  {name}: "{tmp_path}/bad\\0name"\n')
    result = run("listen", "--input", str(tone(tmp_path / "in.wav")), "--fast", "--format", "jsonl",
                 "--config", str(tmp_path / "kw.yaml"))
    assert_exit_2(result, "NUL byte", "bad\\0name")
    assert not sockets_in(tmp_path)


def test_names_that_are_not_utf8_work(tmp_path):
    weird = os.fsdecode(os.fsencode(str(tmp_path)) + b"/clip-\xff.wav")
    tone(Path(weird))
    model = _valid("model", Path(os.fsdecode(os.fsencode(str(tmp_path)) + b"/model-\xfe.tflite")))
    result = run("predict", "--model", str(model), weird)
    assert result.returncode == 0 and b"clip-" in result.stdout, result.stderr
    result = run("listen", "--input", weird, "--fast", "--format", "jsonl", "--model", str(model))
    assert result.returncode == 0 and b"Traceback" not in result.stderr, result.stderr


# ---- item 8: stdin ---------------------------------------------------------------------------------------

def test_closed_stdin():
    result = run("listen", "--input", "-", "--format", "jsonl", stdin=None, preexec_fn=lambda: os.close(0))
    assert_exit_2(result, "stdin is closed")


def test_terminal_on_stdin():
    master, slave = os.openpty()
    try:
        result = run("listen", "--input", "-", "--format", "jsonl", stdin=slave)
    finally:
        os.close(master)
        os.close(slave)
    assert_exit_2(result, "terminal")


@pytest.mark.parametrize("container", ["WAV", "FLAC"])
def test_wav_and_flac_on_stdin_are_decoded(tmp_path, container):
    path = tone(tmp_path / f"in.{container.lower()}", seconds=2.5, rate=22050)
    from_file = run("listen", "--input", str(path), "--fast", "--format", "jsonl", text=True)
    piped = run("listen", "--input", "-", "--format", "jsonl", stdin=path.open("rb"))
    assert from_file.returncode == 0 and piped.returncode == 0, text(piped.stderr)
    assert stopped_after(text(piped.stderr)) == stopped_after(from_file.stderr) == "3.5 s of audio"
    assert f"{container} stream, 22050 Hz" in text(piped.stderr)


@pytest.mark.parametrize("rate", [7, 2**31 - 1])
def test_a_piped_wav_claiming_an_absurd_rate_is_refused(tmp_path, rate):
    """As for a file: 16,000 samples 'at 7 Hz' would be 38 minutes of audio, 'at 2**31 Hz' nothing."""
    wav = claim_rate(tone(tmp_path / "in.wav", seconds=2.0, rate=8000), rate)
    result = run("listen", "--input", "-", "--format", "jsonl", input=wav)
    err = text(result.stderr)  # found once the stream's header arrives, after the "listening on" line
    assert result.returncode == 2 and "Traceback" not in err, err
    assert err.splitlines()[-1] == f"kwspot: error: stdin: unreadable audio stream (sample rate {rate} Hz is outside " \
                                   "1000-384000 Hz)", err


def test_dev_stdin_and_a_fifo_are_accepted(tmp_path):
    wav = tone(tmp_path / "in.wav", seconds=2.0)
    pcm = soundfile.read(wav, dtype="int16")[0].tobytes()
    result = run("listen", "--input", "/dev/stdin", "--format", "jsonl", input=pcm)
    assert result.returncode == 0 and stopped_after(text(result.stderr)) == "3.0 s of audio", result.stderr
    fifo = tmp_path / "audio.fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(wav.read_bytes()))
    writer.start()
    result = run("listen", "--input", str(fifo), "--format", "jsonl")
    writer.join(timeout=10)
    assert result.returncode == 0 and stopped_after(text(result.stderr)) == "3.0 s of audio", result.stderr


def header_only_wav(tmp: Path) -> Path:
    path = tmp / "header-only.wav"
    soundfile.write(path, np.zeros(0, np.float32), 16000)
    return path


STDIN_ERRORS = {
    "empty": (lambda tmp: b"", "no audio"),
    "header-only WAV": (lambda tmp: header_only_wav(tmp).read_bytes(), "no samples"),
    "Ogg": (lambda tmp: tone(tmp / "x.ogg", subtype="VORBIS").read_bytes(), "Ogg"),
    "FLAC cut after its header": (lambda tmp: tone(tmp / "x.flac").read_bytes()[:60], "stdin"),
}


@pytest.mark.parametrize("case", list(STDIN_ERRORS))
def test_bad_streams_on_stdin(tmp_path, case):
    make, needle = STDIN_ERRORS[case]
    result = run("listen", "--input", "-", "--format", "jsonl", "--log-level", "warning", input=make(tmp_path))
    assert_exit_2(result, needle)


# ---- item 9: audio values ---------------------------------------------------------------------------------

def nan_wav(tmp: Path, share: float = 1.0) -> Path:
    x = 0.2 * np.sin(np.arange(16000, dtype=np.float32) / 5)
    x[: int(share * x.size)] = np.nan
    x[-10:] = np.inf if share == 1.0 else x[-10:]
    path = tmp / "nan.wav"
    soundfile.write(path, x, 16000, subtype="FLOAT")
    return path


def test_predict_refuses_nan_audio(tmp_path):
    assert_exit_2(run("predict", str(nan_wav(tmp_path)), text=True), "nan.wav", "NaN")


def test_listen_silences_nan_samples_with_a_warning(tmp_path):
    result = run("listen", "--input", str(nan_wav(tmp_path, share=0.5)), "--fast", "--format", "jsonl", text=True)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "NaN/infinite samples replaced by silence" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("command", ["listen", "predict"])
def test_header_only_wav_is_an_error(tmp_path, command):
    args = ["--input", str(header_only_wav(tmp_path)), "--fast"] if command == "listen" else [
        str(header_only_wav(tmp_path))]
    assert_exit_2(run(command, *args, text=True), "header-only.wav", "no samples")


# ---- item 4 and 11: events that go nowhere -----------------------------------------------------------------

def test_no_sink_is_an_error(tmp_path):
    result = run("listen", "--input", str(tone(tmp_path / "in.wav")), text=True)  # stdout: a pipe, not a tty
    assert_exit_2(result, "nowhere", "--format jsonl", "--socket")


def test_exits_when_its_only_sink_is_gone_even_without_events():
    """``kwspot listen --format jsonl | head -1`` on an endless source: stdout closed, nothing left to do."""
    proc = subprocess.Popen(kwspot_cmd("listen", "--input", "-", "--format", "jsonl"), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "KWSPOT_CONFIG": ""})
    try:
        proc.stdin.write(b"\0\0" * 16000)
        proc.stdin.flush()
        proc.stdout.close()  # the reader goes away; the source never ends (stdin stays open)
        err = proc.communicate(timeout=60)[1].decode()
    finally:
        proc.kill()
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert "stdout closed by its reader" in err and "every sink is gone" in err


@pytest.mark.parametrize("other", ["--socket", "--exec"])
def test_a_sink_still_there_keeps_it_running_when_stdout_goes(tmp_path, other):
    """jsonl's reader goes away, but a socket (no client needed) or an action still takes events."""
    extra = ["--socket", str(tmp_path / "kw.sock")] if other == "--socket" else ["--exec", "true"]
    proc = subprocess.Popen(kwspot_cmd("listen", "--input", "-", "--format", "jsonl", *extra), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "KWSPOT_CONFIG": ""})
    try:
        proc.stdin.write(b"\0\0" * 16000)
        proc.stdin.flush()
        proc.stdout.close()
        seen = []
        while not any("JSON lines stopped" in line for line in seen):  # the sink check that saw it has decided
            line = proc.stderr.readline().decode()
            assert line, "".join(seen)
            seen.append(line)
        proc.send_signal(signal.SIGTERM)
        err = "".join(seen) + proc.communicate(timeout=60)[1].decode()
    finally:
        proc.kill()
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert "every sink is gone" not in err and "stopped after" in err, err


def test_head_one_reads_an_event_and_kwspot_exits(speech_commands):
    """An endless stream of "stop"s (as from a microphone); the reader takes one line and closes."""
    clips = sorted((speech_commands / "stop").glob("*.flac"))[:3]
    words = np.concatenate([np.concatenate([load_audio(p), np.zeros(8000, np.float32)]) for p in clips])
    pcm = (words * 32767).astype("<i2").tobytes()
    proc = subprocess.Popen(
        kwspot_cmd("listen", "--input", "-", "--rate", "8000", "--format", "jsonl"),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "KWSPOT_CONFIG": ""},
    )

    def feed() -> None:
        try:
            while True:
                proc.stdin.write(pcm)
        except (BrokenPipeError, ValueError, OSError):
            pass

    threading.Thread(target=feed, daemon=True).start()
    try:
        first = proc.stdout.readline()
        proc.stdout.close()
        err = proc.stderr.read().decode()
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert json.loads(first)["keyword"] == "stop"
    assert proc.returncode == 0 and "Traceback" not in err, err


def _loaded(pid: int, library: str) -> bool:
    try:
        return library in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.parametrize("delay", [0.05, 0.3, 0.8, 1.5])
def test_ctrl_c_during_start_up_is_quiet(tmp_path, delay):
    sock = tmp_path / "kw.sock"
    silent, feed = os.pipe()  # stdin stays open and silent: only the signal may end it
    proc = subprocess.Popen(kwspot_cmd("listen", "--input", "-", "--socket", str(sock), "--format", "jsonl"),
                            stdin=silent, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "KWSPOT_CONFIG": ""})
    os.close(silent)
    try:
        # from kwspot's own start-up on: a Ctrl-C while the interpreter itself starts (site, .pth files) is
        # Python's "Fatal Python error: init_import_site", beyond what kwspot can handle
        wait_for(lambda: _loaded(proc.pid, "_multiarray_umath") or proc.poll() is not None, timeout=60,
                 what="kwspot's imports")
        threading.Event().wait(delay)
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=60)[1].decode()
    finally:
        proc.kill()
        os.close(feed)
    assert "Traceback" not in err and "Error" not in err, err
    if "listening on" in err:
        assert proc.returncode == 0, err  # it had started: an ordinary clean stop
    else:  # 130 before its sinks came up (or killed by SIGINT before Python's handler), 0 once they had
        assert proc.returncode in (130, -signal.SIGINT, 0), (proc.returncode, err)
    assert not sock.exists()


def test_predict_reads_long_files_in_blocks(tmp_path, monkeypatch):
    """Same answer as reading the whole file, from reads of at most one second each."""
    rng = np.random.default_rng(1)
    x = (0.01 * rng.standard_normal(44100 * 30)).astype(np.float32)
    x[44100 * 17 : 44100 * 17 + 11025] += 0.5 * np.sin(np.arange(11025, dtype=np.float32) / 3)
    path = tmp_path / "long.wav"
    soundfile.write(path, x, 44100, subtype="FLOAT")
    reads = []
    original = soundfile.SoundFile.read

    def spy(self, frames=-1, *args, **kwargs):
        reads.append(frames)
        return original(self, frames, *args, **kwargs)

    monkeypatch.setattr(soundfile.SoundFile, "read", spy)
    window = loudest_window(path, 8000)
    assert reads and all(0 < n <= 44100 for n in reads), reads
    monkeypatch.undo()
    np.testing.assert_array_equal(window, fit_window(load_audio(path), 8000))


# ---- item 5: the socket's owner ------------------------------------------------------------------------------

@pytest.fixture
def shared_dir():
    """A directory anyone can write to, like /tmp (sticky)."""
    path = Path(tempfile.mkdtemp(prefix="kwspot-shared-", dir="/tmp"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def planted_socket(folder: Path, uid: int) -> tuple[Path, socket.socket]:
    path = folder / "kwspot.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen()
    os.chown(path, uid, uid)
    return path, server


@pytest.mark.skipif(not ROOT, reason="planting another user's socket needs root")
def test_a_socket_planted_by_another_user_is_refused(shared_dir):
    path, server = planted_socket(shared_dir, 54321)
    try:
        assert_exit_2(run("events", "--socket", str(path), text=True), "uid 54321", "refusing")
    finally:
        server.close()
    # now stale: the daemon must not take it over either (nor remove it)
    result = run("listen", "--input", "-", "--socket", str(path), "--format", "jsonl", input=b"\0\0" * 800)
    assert_exit_2(result, "uid 54321")
    assert path.is_socket()


@pytest.mark.skipif(not ROOT or not Path("/usr/bin/python3").exists() or not shutil.which("setpriv"),
                    reason="needs root, setpriv and /usr/bin/python3 to run a server as another user")
def test_a_server_run_by_another_user_is_refused_even_if_the_file_looks_ours(shared_dir):
    path = shared_dir / "kwspot.sock"
    code = (f"import socket,sys,time; s=socket.socket(socket.AF_UNIX); s.bind({str(path)!r}); s.listen(); "
            "print('up', flush=True); sys.stdin.read()")
    server = subprocess.Popen(["setpriv", "--reuid=54321", "--regid=54321", "--clear-groups", "/usr/bin/python3",
                               "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "up"
        os.chown(path, 0, 0)  # the file now passes the owner check; the peer's credentials must not
        assert_exit_2(run("events", "--socket", str(path), text=True), "served by uid 54321")
    finally:
        server.stdin.close()
        server.wait(timeout=10)


def test_a_world_writable_directory_that_is_not_sticky_is_refused(tmp_path):
    folder = tmp_path / "open"
    folder.mkdir()
    folder.chmod(0o777)
    assert_exit_2(run("events", "--socket", str(folder / "kw.sock"), text=True), "not sticky")
    result = run("listen", "--input", "-", "--socket", str(folder / "kw.sock"), "--format", "jsonl",
                 input=b"\0\0" * 800)
    assert_exit_2(result, "not sticky")
    assert not sockets_in(folder)


# ---- item 10: socket clients that misbehave ------------------------------------------------------------------

def test_a_client_that_writes_nonstop_is_cut_off(tmp_path):
    sock_path = tmp_path / "kw.sock"
    daemon = subprocess.Popen(kwspot_cmd("listen", "--input", "-", "--socket", str(sock_path), "--format", "jsonl"),
                              stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env={**os.environ, "KWSPOT_CONFIG": ""})
    try:
        wait_for(sock_path.exists, timeout=60, what="the socket")
        flood = socket.socket(socket.AF_UNIX)
        flood.connect(str(sock_path))
        flood.settimeout(30)
        sent = 0
        with pytest.raises(OSError):  # EPIPE or ECONNRESET once the daemon hangs up
            while sent < 64 << 20:
                sent += flood.send(b"x" * 65536)
        flood.close()
        assert sent < 64 << 20
        with socket.socket(socket.AF_UNIX) as polite:  # the daemon still serves others
            polite.connect(str(sock_path))
        daemon.send_signal(signal.SIGTERM)
        err = daemon.communicate(timeout=30)[1].decode()
    finally:
        daemon.kill()
    assert daemon.returncode == 0 and "Traceback" not in err, err
    assert sum("disconnecting it" in line for line in err.splitlines()) == 1, err
    assert not sock_path.exists()


def test_clients_refused_past_the_limit_are_logged_with_a_count(tmp_path, caplog):
    import logging

    from kwspot.sinks.socket import SocketSink

    logger = logging.getLogger("kwspot.test-refused")
    path = tmp_path / "kw.sock"
    with caplog.at_level(logging.WARNING, logger=logger.name), SocketSink(path, max_clients=2, logger=logger) as sink:
        kept = [socket.socket(socket.AF_UNIX) for _ in range(2)]
        for s in kept:
            s.connect(str(path))
        wait_for(lambda: sink.client_count == 2, what="two clients")
        for _ in range(300):
            with socket.socket(socket.AF_UNIX) as extra:
                extra.connect(str(path))
                extra.settimeout(10)
                assert extra.recv(1) == b""  # refused: closed at once, never served
        wait_for(lambda: sink.refused == 300, what="300 refusals")
        for s in kept:
            s.close()
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert 1 <= len(lines) <= 2, lines  # one at once, the rest counted for the next interval (10 s)
    assert lines[0].startswith("refused 1 client on") and "2 clients already" in lines[0]


def test_readme_documents_limits_and_the_default_path():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "socat -u UNIX-CONNECT:" in readme and "socat - UNIX-CONNECT" not in readme
    assert "/tmp/kwspot-$UID.sock" in readme and "256 clients" in readme


# ---- the offline tools' own flags: ranged like kwspot's, a missing model is one line ----------------------------

TOOL_FLAGS = {
    "kwspot.train.mine": [("--min-score", "2"), ("--min-score", "nan"), ("--seed", "-1")],
    "kwspot.train.verifier": [("--copies", "0"), ("--hidden", "1e9"), ("--epochs", "x"), ("--workers", "0"),
                              ("--seed", "-1")],
}


@pytest.mark.parametrize("module,flag,value", [(m, f, v) for m, cases in TOOL_FLAGS.items() for f, v in cases])
def test_offline_tool_flags_are_range_checked(tmp_path, module, flag, value):
    required = ["--data", str(tmp_path), "--out", str(tmp_path / "out")]
    if module.endswith("mine"):
        required += ["--model", str(bundled_model_path())]
    result = subprocess.run([sys.executable, "-m", module, *required, flag, value], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"argument {flag}:" in result.stderr.splitlines()[-1], result.stderr


def test_mining_with_a_missing_model_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "kwspot.train.mine", "--model", str(tmp_path / "none.tflite"),
                             "--data", str(tmp_path), "--out", str(tmp_path / "out.npy")],
                            capture_output=True, text=True, timeout=60)
    assert_exit_2(result, "none.tflite", "no such model file")


def test_a_ctrl_c_python_dropped_during_start_up_still_stops_listen(monkeypatch, tmp_path):
    """Python prints and drops a KeyboardInterrupt raised inside an import's lock callback; the record stays."""
    import numpy as np
    import soundfile

    from kwspot import interrupt
    from kwspot.listen import Listener, ListenRequest
    from kwspot.settings import resolve

    wav = tmp_path / "long.wav"
    soundfile.write(wav, np.zeros(8000 * 60, np.float32), 8000)
    monkeypatch.setattr(interrupt, "requested", True)
    saved = signal.getsignal(signal.SIGINT)
    flags = {"sinks.jsonl": True, "sinks.console": False}
    settings, _ = resolve(None, flags)
    listener = Listener(ListenRequest(input=str(wav), flags=flags), settings)  # real time: a minute unless stopped
    assert listener.run() == 128 + signal.SIGINT
    assert signal.getsignal(signal.SIGINT) == saved  # its own handlers put back


def test_a_sidecar_that_cannot_be_written_is_one_line(tmp_path, monkeypatch):
    """``--save-thresholds`` (and training's export) end by writing the sidecar: a full disk or a read-only
    folder there is a KwspotError naming the file, not a traceback after the work."""
    import tempfile

    model = tmp_path / "m.tflite"
    shutil.copy(bundled_model_path(), model)
    shutil.copy(sidecar_path(bundled_model_path()), sidecar_path(model))

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tempfile, "mkstemp", full)
    with pytest.raises(KwspotError, match=r"m\.json: cannot write the model sidecar \(No space left on device\)"):
        modelfile.save_thresholds(model, {"yes": 0.5})


def latin1_locale(tmp: Path) -> dict[str, str] | None:
    """Environment for an ISO-8859-1 locale compiled into ``tmp`` (None where localedef cannot make one)."""
    target = tmp / "loc" / "en_US.ISO-8859-1"
    target.parent.mkdir()
    made = subprocess.run(["localedef", "-i", "en_US", "-f", "ISO-8859-1", str(target)], capture_output=True)
    if not target.is_dir():
        return None
    assert made.returncode in (0, 1), made.stderr  # 1: made, with warnings
    return {"LOCPATH": str(tmp / "loc"), "LC_ALL": "en_US.ISO-8859-1"}


def test_a_keyword_the_locale_cannot_encode_prints_escaped_and_reaches_actions(tmp_path):
    env = latin1_locale(tmp_path)
    if env is None:
        pytest.skip("localedef cannot make an ISO-8859-1 locale here")
    model = tmp_path / "jp.tflite"
    shutil.copy(bundled_model_path(), model)
    meta = json.loads(sidecar_path(bundled_model_path()).read_text())
    meta["labels"] = ["日本語" if label == "yes" else label for label in meta["labels"]]
    meta["thresholds"] = {("日本語" if k == "yes" else k): v for k, v in meta["thresholds"].items()}
    (tmp_path / "jp.json").write_text(json.dumps(meta))
    clip = tmp_path / "yes.wav"
    espeak("yes", clip)
    said = run_kwspot("predict", "--model", str(model), str(clip), env=env)
    assert said.returncode == 0 and "Traceback" not in said.stderr, said.stderr
    assert "\\u65e5\\u672c\\u8a9e" in said.stdout, said.stdout
    log = tmp_path / "actions.txt"
    heard = run_kwspot("listen", "--model", str(model), "--input", str(clip), "--fast", "--format", "console",
                       "--exec", f'printf "%s\\n" "$KWSPOT_KEYWORD" >> {log}', env=env)
    assert heard.returncode == 0 and "Traceback" not in heard.stderr, heard.stderr
    assert log.read_bytes().decode("utf-8").split() == ["日本語"]  # the action got the word, as UTF-8


def test_wyoming_on_a_closed_stdio_is_one_line():
    result = subprocess.run(kwspot_cmd("wyoming", "--uri", "stdio://"), capture_output=True, text=True, timeout=60,
                            env={**os.environ, "KWSPOT_CONFIG": ""}, preexec_fn=lambda: os.close(0))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip() == "kwspot: error: --uri stdio://: standard input or output is closed"


def test_wyoming_on_port_0_logs_the_port_it_got():
    proc = subprocess.Popen(kwspot_cmd("wyoming", "--uri", "tcp://127.0.0.1:0"), stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "KWSPOT_CONFIG": ""})
    try:
        line = ""
        while "serving Wyoming" not in line:
            line = proc.stderr.readline()
            assert line, "the server ended before serving"
        port = int(line.split("tcp://127.0.0.1:")[1].split()[0])
        assert port > 0
        socket.create_connection(("127.0.0.1", port), timeout=5).close()  # it is the port served
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def load_audio_pcm(path: Path) -> bytes:
    """A clip as raw 16-bit PCM at 8 kHz (for ``listen --input - --rate 8000``), with a second of silence after."""
    audio = np.concatenate((load_audio(path), np.zeros(8000, np.float32)))
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def test_a_full_disk_behind_stdout_is_one_warning_and_a_failed_run(tmp_path):
    clip = espeak("yes. . . . stop", tmp_path / "words.wav")
    with open("/dev/full", "w") as full:
        result = subprocess.run(kwspot_cmd("listen", "--input", str(clip), "--fast", "--format", "jsonl"),
                                stdout=full, stderr=subprocess.PIPE, text=True, timeout=60,
                                env={**os.environ, "KWSPOT_CONFIG": ""})
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "stdout: No space left on device; JSON lines stopped" in result.stderr


def test_kwspot_events_into_a_full_disk_is_one_line(tmp_path):
    sock = tmp_path / "kw.sock"
    daemon = subprocess.Popen(kwspot_cmd("listen", "--input", "-", "--rate", "8000", "--socket", str(sock)),
                              stdin=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, env={**os.environ, "KWSPOT_CONFIG": ""})
    try:
        wait_for(sock.exists, 30, "the socket")
        with open("/dev/full", "w") as full:
            reader = subprocess.Popen(kwspot_cmd("events", "--socket", str(sock)), stdout=full,
                                      stderr=subprocess.PIPE, text=True, env={**os.environ, "KWSPOT_CONFIG": ""})
            time.sleep(1.0)  # connected
            daemon.stdin.write(load_audio_pcm(espeak("yes. . . . stop. . . .", tmp_path / "w.wav")))
            daemon.stdin.flush()
            err = reader.communicate(timeout=60)[1]
        assert reader.returncode == 2, err
        assert err.strip() == "kwspot: error: stdout: No space left on device; events stopped"
    finally:
        daemon.kill()
        daemon.wait()


def test_a_stalled_stdout_reader_stalls_neither_the_socket_nor_sigterm(tmp_path):
    """stdout is a pipe nobody reads: JSON lines queue and then drop; socket clients still get every event."""
    sock = tmp_path / "kw.sock"
    read_fd, write_fd = os.pipe()  # never read, and full before kwspot starts: its first JSON line blocks
    os.write(write_fd, b"x" * fcntl.fcntl(write_fd, 1032))  # F_GETPIPE_SZ: the pipe's capacity
    daemon = subprocess.Popen(kwspot_cmd("listen", "--input", "-", "--rate", "8000", "--format", "jsonl",
                                         "--socket", str(sock)),
                              stdin=subprocess.PIPE, stdout=write_fd, stderr=subprocess.PIPE, text=False,
                              env={**os.environ, "KWSPOT_CONFIG": ""})
    os.close(write_fd)
    try:
        wait_for(sock.exists, 30, "the socket")
        client = socket.socket(socket.AF_UNIX)
        client.connect(str(sock))
        words = load_audio_pcm(espeak("yes. . . . stop. . . .", tmp_path / "w.wav"))
        for _ in range(3):
            daemon.stdin.write(words)
        daemon.stdin.flush()
        client.settimeout(30)
        got = b""
        while got.count(b"\n") < 6:
            got += client.recv(65536)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=15) == 0
    finally:
        daemon.kill()
        os.close(read_fd)
    assert "Traceback" not in daemon.stderr.read().decode()
