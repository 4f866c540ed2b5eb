"""Bad input of every kind: it either works, or ends with one line naming the cause and a non-zero exit.

Never a traceback. Each case runs the real program as a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile

from conftest import assert_one_line_error, claim_rate, run_kwspot
from kwspot.model import bundled_model_path, sidecar_path

DATA = Path(__file__).parent / "data"


def tone(rate: int, seconds: float = 1.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    x = 0.2 * np.sin(2 * np.pi * 440 * t)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def wav(subtype: str, rate: int = 16000, channels: int = 1) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        path = tmp / f"in_{subtype}_{rate}_{channels}.wav"
        soundfile.write(path, tone(rate, channels=channels), rate, subtype=subtype)
        return ["listen", "--input", str(path), "--fast", "--format", "jsonl"]

    return make


def wav_header_rate(rate: int, command: str = "listen") -> Callable[[Path], list[str]]:
    """A good 16-bit WAV whose header claims ``rate`` (written at 8 kHz, then the header's rate patched)."""
    def make(tmp: Path) -> list[str]:
        path = tmp / f"claims_{rate}.wav"
        soundfile.write(path, tone(8000), 8000, subtype="PCM_16")
        claim_rate(path, rate)
        return ["listen", "--input", str(path), "--fast"] if command == "listen" else ["predict", str(path)]

    return make


def listen_file(content: bytes, name: str = "in.wav") -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        (tmp / name).write_bytes(content)
        return ["listen", "--input", str(tmp / name), "--fast"]

    return make


def truncated_wav(tmp: Path) -> list[str]:
    path = tmp / "truncated.wav"
    soundfile.write(path, tone(16000, 2.0), 16000, subtype="PCM_16")
    path.write_bytes(path.read_bytes()[:20000])
    return ["listen", "--input", str(path), "--fast", "--format", "jsonl"]


def with_config_bytes(data: bytes) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        (tmp / "kw.yaml").write_bytes(data)
        return [*wav("PCM_16")(tmp), "--config", str(tmp / "kw.yaml")]

    return make


def with_config(text: str) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        (tmp / "kw.yaml").write_text(text)
        return [*wav("PCM_16")(tmp), "--config", str(tmp / "kw.yaml")]

    return make


def with_config_and_file(text: str, name: str, data: bytes) -> Callable[[Path], list[str]]:
    """A config naming a file (TMP in ``text`` is the test's folder) that holds ``data``."""
    def make(tmp: Path) -> list[str]:
        (tmp / name).write_bytes(data)
        return with_config(text.replace("TMP", str(tmp)))(tmp)

    return make


def with_model(prepare: Callable[[Path], Path]) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        return [*wav("PCM_16")(tmp), "--model", str(prepare(tmp))]

    return make


def sparse_model(tmp: Path) -> Path:
    """A 50 GB model file (sparse: no disk used) with the bundled sidecar."""
    model = copy_model(tmp, "vast")
    os.truncate(model, 50 << 30)
    return model


def sparse_sidecar(tmp: Path) -> Path:
    """The bundled model with a 3 GB sidecar (sparse)."""
    model = copy_model(tmp, "wordy", sidecar='{"labels": [')
    os.truncate(sidecar_path(model), 3 << 30)
    return model


def copy_model(tmp: Path, name: str, cut: int | None = None, sidecar: str | None = "copy") -> Path:
    model = tmp / f"{name}.tflite"
    data = bundled_model_path().read_bytes()
    model.write_bytes(data[:cut] if cut else data)
    if sidecar == "copy":
        shutil.copy(sidecar_path(bundled_model_path()), sidecar_path(model))
    elif sidecar is not None:
        sidecar_path(model).write_text(sidecar)
    return model


def sidecar_at(name: str, target: str | None) -> Callable[[Path], Path]:
    """The bundled model whose sidecar is a link to ``target``, or a FIFO (None)."""
    def prepare(tmp: Path) -> Path:
        model = copy_model(tmp, name, sidecar=None)
        if target is None:
            os.mkfifo(sidecar_path(model))
        else:
            sidecar_path(model).symlink_to(target)
        return model

    return prepare


def bundled_sidecar(**changes: object) -> str:
    """The bundled model's sidecar (its front end included) with some entries changed."""
    return json.dumps({**json.loads(sidecar_path(bundled_model_path()).read_text()), **changes})


def wrong_shape(tmp: Path) -> Path:
    for suffix in (".tflite", ".json"):
        shutil.copy(DATA / f"wrong_shape{suffix}", tmp / f"wrong_shape{suffix}")
    return tmp / "wrong_shape.tflite"


def odd_model(name: str) -> Callable[[Path], Path]:
    """A tiny model from tests/data/odd_models (see make.py there), with the bundled sidecar."""
    def make(tmp: Path) -> Path:
        shutil.copy(DATA / "odd_models" / f"{name}.tflite", tmp / f"{name}.tflite")
        shutil.copy(sidecar_path(bundled_model_path()), tmp / f"{name}.json")
        return tmp / f"{name}.tflite"

    return make


def with_socket(prepare: Callable[[Path], str]) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        return [*wav("PCM_16")(tmp), "--socket", prepare(tmp)]

    return make


_held: list[socket.socket] = []


def live_socket(tmp: Path) -> str:
    """A path where something is listening, as another kwspot would be."""
    path = tmp / "busy.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen()
    _held.append(server)
    return str(path)


def empty_model(tmp: Path) -> Path:
    model = copy_model(tmp, "void")
    model.write_bytes(b"")
    return model


def regular_file(tmp: Path) -> str:
    (tmp / "not-a-socket").write_text("precious data")
    return str(tmp / "not-a-socket")


WORKS = None
CASES = {
    # audio files
    "corrupt wav": (listen_file(b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00" + b"\xff" * 40), ["in.wav"]),
    "empty file": (listen_file(b""), ["in.wav"]),
    "text file": (listen_file(b"hello, I am not audio\n" * 50, "notes.wav"), ["notes.wav"]),
    "random bytes flac": (listen_file(bytes(range(256)) * 40, "noise.flac"), ["noise.flac"]),
    "missing file": (lambda tmp: ["listen", "--input", str(tmp / "gone.wav")], ["gone.wav"]),
    "device with a file": (lambda tmp: ["listen", "--input", "in.wav", "--device", "1"], ["--device", "in.wav"]),
    "backend with stdin": (lambda tmp: ["listen", "--input", "-", "--backend", "pulse"], ["--backend", "--input -"]),
    "rate with a file": (lambda tmp: ["listen", "--input", "in.wav", "--rate", "16000"], ["--rate", "in.wav"]),
    "directory as input": (lambda tmp: ["listen", "--input", str(tmp)], ["a directory, not an audio file"]),
    "device as a clip": (lambda tmp: ["predict", "/dev/zero"], ["/dev/zero", "not a regular file"]),
    "directory as model": (lambda tmp: ["predict", "--model", str(tmp), "x.wav"], ["a directory, not a model file"]),
    "device as config": (lambda tmp: ["listen", "--config", "/dev/null"], ["/dev/null", "not a config file"]),
    "truncated wav": (truncated_wav, WORKS),
    "24-bit wav": (wav("PCM_24"), WORKS),
    "8-bit wav": (wav("PCM_U8"), WORKS),
    "float wav": (wav("FLOAT"), WORKS),
    "stereo wav": (wav("PCM_16", channels=2), WORKS),
    "96 kHz wav": (wav("PCM_16", rate=96000), WORKS),
    "wav claiming 999 Hz": (wav_header_rate(999), ["claims_999.wav", "999 Hz"]),
    "wav claiming 2**31-1 Hz": (wav_header_rate(2**31 - 1), ["claims_2147483647.wav", "2147483647 Hz"]),
    "predict a clip claiming 7 Hz": (wav_header_rate(7, "predict"), ["claims_7.wav", "7 Hz"]),
    "6-channel 44.1 kHz wav": (wav("PCM_16", rate=44100, channels=6), WORKS),
    # config
    "unknown config key": (with_config("detector:\n  treshold: 0.5\n"), ["kw.yaml", "detector.treshold"]),
    "unknown config section": (with_config("speakers:\n  volume: 3\n"), ["kw.yaml", "speakers"]),
    "wrong type": (with_config("detector:\n  refractory_s: soon\n"), ["detector.refractory_s"]),
    "negative threshold": (with_config("detector:\n  threshold: -0.2\n"), ["detector.threshold"]),
    "threshold of unknown word": (with_config("detector:\n  thresholds: {halt: 0.5}\n"), ["kw.yaml", "halt"]),
    "threshold of a word the model lacks": (
        with_config("detector:\n  thresholds: {marvin: 0.5}\n"), ["kw.yaml", "detector.thresholds.marvin", "keywords"]
    ),
    "config not UTF-8": (with_config_bytes("# r\u00e9glages\ndetector: {}\n".encode("latin-1")), ["kw.yaml", "UTF-8"]),
    "YAML alias bomb": (with_config("a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(9))),
        ["kw.yaml", "aliases"]),
    "YAML nested 20000 deep": (with_config("detector: " + "[" * 20000 + "]" * 20000 + "\n"),
                               ["kw.yaml", "nested more than"]),
    "YAML section given twice": (with_config("detector:\n  thresholds: {yes: 0.9}\ndetector:\n  min_pause_ms: 0\n"),
                                 ["kw.yaml", "line 3", "'detector' given twice"]),
    "YAML key given twice": (with_config("detector:\n  threshold: 0.5\n  threshold: 0.6\n"),
                             ["kw.yaml", "'threshold' given twice"]),
    "MQTT password file not UTF-8": (with_config_and_file(
        "sinks:\n  mqtt: {username: u, password_file: TMP/pw}\n", "pw", b"p\xe9ss\n"), ["pw", "UTF-8"]),
    "MQTT password file a device": (with_config("sinks:\n  mqtt: {username: u, password_file: /dev/zero}\n"),
                                    ["/dev/zero", "not a regular file"]),
    "MQTT password file name with NUL": (with_config('sinks:\n  mqtt: {username: u, password_file: "/tmp/p\\0w"}\n'),
                                         ["NUL"]),
    "MQTT host label over 63": (with_config("sinks:\n  mqtt: {host: " + "h" * 100 + ".example}\n"),
                                ["sinks.mqtt.host"]),
    "MQTT client id over 64 KiB": (with_config("sinks:\n  mqtt: {client_id: " + "c" * 70000 + "}\n"),
                                   ["sinks.mqtt.client_id", "bytes"]),
    "MQTT topic over 64 KiB": (with_config("sinks:\n  mqtt: {topic: " + "t" * 70000 + "}\n"),
                               ["sinks.mqtt.topic", "bytes"]),
    "invalid yaml": (with_config("detector: {threshold: [0.5\n"), ["kw.yaml", "YAML"]),
    "YAML date no calendar has": (with_config("detector:\n  threshold: 2001-13-45\n"), ["kw.yaml", "month"]),
    "model path with a lone surrogate": (with_config('model:\n  path: "/tmp/\\ud800.tflite"\n'),
                                         ["\\ud800.tflite", "lone surrogate"]),
    "socket path with a lone surrogate": (with_config('sinks:\n  socket: "/tmp/\\ud800.sock"\n'),
                                          ["\\ud800.sock", "lone surrogate"]),
    "missing config": (lambda tmp: ["listen", "--config", str(tmp / "none.yaml")], ["none.yaml"]),
    # model
    "missing model": (with_model(lambda tmp: tmp / "absent.tflite"), ["absent.tflite"]),
    "truncated model": (with_model(lambda tmp: copy_model(tmp, "cut", cut=4000)), ["cut.tflite"]),
    "garbage model": (with_model(lambda tmp: copy_model(tmp, "junk", cut=1)), ["junk.tflite"]),
    "empty model": (with_model(empty_model), ["void.tflite", "empty file"]),
    "wrong-shape model": (with_model(wrong_shape), ["wrong_shape.tflite", "8000"]),
    "model without sidecar": (with_model(lambda tmp: copy_model(tmp, "bare", sidecar=None)), ["bare.json"]),
    "sidecar without labels": (with_model(lambda tmp: copy_model(tmp, "nolab", sidecar='{"x": 1}')), ["labels"]),
    "sidecar threshold not a number": (with_model(lambda tmp: copy_model(tmp, "thr", sidecar=(
        '{"labels": ["_silence_", "yes"], "thresholds": {"yes": "high"}}'))), ["thr.json", "thresholds.yes"]),
    "sidecar threshold out of range": (with_model(lambda tmp: copy_model(tmp, "thr2", sidecar=(
        '{"labels": ["_silence_", "yes"], "thresholds": {"yes": 7}}'))), ["thr2.json", "0 to 1"]),
    "sidecar threshold for no keyword": (with_model(lambda tmp: copy_model(tmp, "thr3", sidecar=(
        '{"labels": ["_silence_", "yes"], "thresholds": {"halt": 0.5}}'))), ["thr3.json", "halt"]),
    "sidecar window not a number": (with_model(lambda tmp: copy_model(tmp, "win", sidecar=(
        '{"labels": ["_silence_", "yes"], "window_samples": "1s"}'))), ["win.json", "window_samples"]),
    "sidecar window of a billion seconds": (with_model(lambda tmp: copy_model(tmp, "huge", sidecar=bundled_sidecar(
        window_samples=8 * 10**12))), ["huge.json", "window_samples", "more than 80000"]),
    "sidecar sample rate of a terahertz": (with_model(lambda tmp: copy_model(tmp, "thz", sidecar=bundled_sidecar(
        sample_rate=10**12))), ["thz.json", "sample_rate"]),
    "sidecar nested 100000 deep": (with_model(lambda tmp: copy_model(tmp, "deep", sidecar=(
        bundled_sidecar()[:-1] + ', "notes": ' + "[" * 100000 + "]" * 100000 + "}"))), ["deep.json", "unreadable"]),
    "sidecar fft of a million": (with_model(lambda tmp: copy_model(tmp, "fft", sidecar=bundled_sidecar(features={
        **json.loads(bundled_sidecar())["features"], "fft": 10**6}))), ["fft.json", "fft 1000000"]),
    "sidecar a link to /dev/zero": (with_model(sidecar_at("zero", "/dev/zero")), ["zero.json", "not a regular file"]),
    "sidecar a FIFO": (with_model(sidecar_at("fifo", None)), ["fifo.json", "not a regular file"]),
    "sidecar key given twice": (with_model(lambda tmp: copy_model(tmp, "twice", sidecar=(
        bundled_sidecar()[:-1] + ', "thresholds": {"stop": 0.01}}'))), ["twice.json", "'thresholds' appears twice"]),
    "sidecar thresholds 0": (with_model(lambda tmp: copy_model(tmp, "zero_thr", sidecar=bundled_sidecar(
        thresholds=0))), ["zero_thr.json", "thresholds must be a mapping"]),
    "sidecar label with an escape": (with_model(lambda tmp: copy_model(tmp, "esc", sidecar=bundled_sidecar(
        labels=["_silence_", "_unknown_", "st\nop\x1b[31m", *json.loads(bundled_sidecar())["labels"][3:]],
        thresholds={}))), ["esc.json", "without control characters"]),
    "sidecar label with an MQTT wildcard": (with_model(lambda tmp: copy_model(tmp, "hash", sidecar=bundled_sidecar(
        labels=["_silence_", "_unknown_", "st#op", *json.loads(bundled_sidecar())["labels"][3:]],
        thresholds={}))), ["hash.json", "nor / # +"]),
    "sidecar hop of one sample": (with_model(lambda tmp: copy_model(tmp, "hop1", sidecar=bundled_sidecar(features={
        **json.loads(bundled_sidecar())["features"], "hop": 1}))), ["hop1.json", "more than 4000"]),
    "sidecar of a million labels, one bad threshold": (with_model(lambda tmp: copy_model(tmp, "many", sidecar=(
        bundled_sidecar(labels=["_silence_", *[f"w{i}" for i in range(10**6)]], thresholds={"nope": 0.5})))),
        ["many.json", "w19, ..."]),
    "model of 50 GB": (with_model(sparse_model), ["vast.tflite", "over the 256 MiB"]),
    "sidecar of 3 GB": (with_model(sparse_sidecar), ["wordy.json", "over 16 MiB"]),
    "model takes int32": (with_model(odd_model("intin")), ["intin.tflite", "int32"]),
    "model gives int64": (with_model(odd_model("outint")), ["outint.tflite", "int64"]),
    "model gives (1, 1, 12)": (with_model(odd_model("out3")), ["out3.tflite", "(1, 1, 12)"]),
    "model gives (12,)": (with_model(odd_model("out1d")), ["out1d.tflite", "(12,)"]),
    "model gives NaN": (with_model(odd_model("nanout")), ["nanout.tflite", "not probabilities"]),
    "labels do not fit model": (
        with_model(lambda tmp: copy_model(tmp, "few", sidecar=bundled_sidecar(labels=["yes", "no"], thresholds={}))),
        ["few.tflite", "2 labels"]
    ),
    # socket
    "socket in missing directory": (with_socket(lambda tmp: str(tmp / "no" / "dir" / "kw.sock")), ["kw.sock"]),
    "unwritable socket path": (with_socket(lambda tmp: "/proc/kwspot-test.sock"), ["/proc/kwspot-test.sock"]),
    "socket path held by a live daemon": (with_socket(live_socket), ["busy.sock", "already listening"]),
    "socket path is a regular file": (with_socket(regular_file), ["not-a-socket"]),
    "socket path under a regular file": (with_socket(lambda tmp: str(Path(regular_file(tmp)) / "kw.sock")),
                                         ["kw.sock", "not-a-socket is not a directory"]),
    # command line and devices
    "unknown device": (lambda tmp: ["listen", "--device", "no-such-mic-xyz"], ["no-such-mic-xyz"]),
    "device index out of range": (lambda tmp: ["listen", "--device", "999"], ["999"]),
    "capture rate out of range": (lambda tmp: ["listen", "--rate", "5"], ["--rate"]),
    "--fast without a file": (lambda tmp: ["listen", "--fast"], ["--fast"]),
    "threshold above 1": (lambda tmp: [*wav("PCM_16")(tmp), "--threshold", "1.5"], ["--threshold"]),
    "predict a corrupt clip": (
        lambda tmp: ["predict", listen_file(b"RIFFjunk", "clip.wav")(tmp)[2]], ["clip.wav"]
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, tmp_path):
    make, needles = CASES[name]
    result = run_kwspot(*make(tmp_path), timeout=60)
    assert "Traceback" not in result.stderr, result.stderr
    if needles is WORKS:
        assert result.returncode == 0, result.stderr
    else:
        assert_one_line_error(result, *needles)
    if name == "socket path is a regular file":
        assert (tmp_path / "not-a-socket").read_text() == "precious data"


def teardown_module():
    for server in _held:
        server.close()


def alsa_without_devices(tmp: Path) -> Path:
    """ALSA's own configuration minus its hooks: no sound server plugin, no card, so no input device."""
    text = Path("/usr/share/alsa/alsa.conf").read_text()
    start = text.index("@hooks")
    depth, end = 0, text.index("[", start)
    while True:
        depth += {"[": 1, "]": -1}.get(text[end], 0)
        if depth == 0:
            break
        end += 1
    path = tmp / "alsa.conf"
    path.write_text(text[:start] + text[end + 1 :])
    return path


def test_no_input_device_says_what_to_do(tmp_path):
    if not Path("/usr/share/alsa/alsa.conf").is_file():
        pytest.skip("ALSA's alsa.conf not found (Debian: libasound2)")
    if Path("/dev/snd").exists() and any(Path("/dev/snd").glob("pcmC*c")):
        pytest.skip("this machine has a real capture device")
    result = run_kwspot("listen", env={"ALSA_CONFIG_PATH": str(alsa_without_devices(tmp_path))})
    assert_one_line_error(result, "no audio input device", "--device", "--input FILE")
