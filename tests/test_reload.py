"""SIGHUP on the real daemon: flags outlive a reload; a bad config is refused and the daemon goes on."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from clips import pcm16
from daemon import Daemon

from conftest import wait_for, write_stream
from kwspot.frontend import load_audio
from kwspot.model import bundled_model_path, sidecar_path

RATE = 8000


class ReloadingDaemon(Daemon):
    """The daemon at 8 kHz, fed float audio, told to reload by SIGHUP."""

    def __init__(self, *args: str) -> None:
        super().__init__("--rate", str(RATE), *args)

    def play(self, audio: np.ndarray) -> None:
        self.feed(pcm16(audio, RATE))

    def hup_and_wait(self, needle: str) -> None:
        seen = len(self.err)
        self.proc.send_signal(signal.SIGHUP)
        # keep audio flowing so the loop wakes up and handles the signal
        deadline = time.monotonic() + 10
        while not any(needle in line for line in self.err[seen:]):
            assert time.monotonic() < deadline, f"no {needle!r} in {self.err}"
            self.play(np.zeros(RATE // 10, np.float32))
            time.sleep(0.05)


def speech(speech_commands: Path, tmp_path: Path) -> np.ndarray:
    """Six keyword clips of the testing list in a stream, then silence."""
    listed = (speech_commands / "testing_list.txt").read_text().split()
    clips = [load_audio(speech_commands / next(p for p in listed if p.startswith(w + "/")))
             for w in ("yes", "stop", "go", "left", "down", "no")]
    write_stream(tmp_path / "words.wav", clips)
    return np.concatenate((load_audio(tmp_path / "words.wav"), np.zeros(2 * RATE, np.float32)))


def test_sighup_keeps_the_socket_jsonl_and_threshold_from_the_command_line(tmp_path, speech_commands):
    sock = tmp_path / "kw.sock"
    config = tmp_path / "kw.yaml"
    config.write_text("detector:\n  threshold: 0.99\nsinks:\n  jsonl: false\n  socket: null\n")
    daemon = ReloadingDaemon("--config", str(config), "--socket", str(sock), "--format", "jsonl", "--threshold", "0.05")
    try:
        daemon.play(np.zeros(RATE, np.float32))
        wait_for(lambda: daemon.logged("serving events on"), 30, "the socket")  # bound and listening
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(str(sock))
        daemon.hup_and_wait("configuration reloaded")
        reloaded = next(line for line in daemon.err if "configuration reloaded" in line)
        assert "threshold 0.05" in reloaded and "jsonl" in reloaded and "socket" in reloaded, reloaded
        assert sock.exists()
        daemon.play(speech(speech_commands, tmp_path))
        assert daemon.finish() == 0, daemon.err
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
    received = b""
    client.settimeout(5)
    while chunk := client.recv(65536):
        received += chunk
    client.close()
    stdout_events = daemon.events
    socket_events = [json.loads(line) for line in received.decode().splitlines()]
    assert stdout_events, daemon.err  # JSON lines still flow after the reload
    assert [e["keyword"] for e in socket_events] == [e["keyword"] for e in stdout_events]  # and the same client
    assert not sock.exists()


@pytest.mark.parametrize("bad, needle", [
    ("# r\u00e9glages\ndetector: {threshold: 0.5}\n".encode("latin-1"), "not UTF-8"),
    (("a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(9))).encode(),
     "aliases"),
    (b"detector:\n  thresholds: {marvin: 0.5}\n", "detector.thresholds.marvin"),
    (b"detector: " + b"[" * 20000 + b"]" * 20000 + b"\n", "nested more than"),
    (b"sinks:\n  mqtt: {username: u, password_file: TMP/pw.latin1}\n", "not UTF-8"),
    (b"model:\n  path: TMP/absent.tflite\n", "absent.tflite: no such model file"),
    (b"model:\n  path: TMP/text.tflite\n", "text.tflite: not a valid LiteRT model"),
    (b"model:\n  path: TMP/alone.tflite\n", "alone.json: model sidecar missing"),
    # the same socket path (from --socket) with another mode: this daemon's own socket, not another program's
    (b'sinks:\n  socket_mode: "0600"\n', "this kwspot already serves events there; a new socket_mode"),
])
def test_a_bad_config_on_sighup_is_refused_and_the_daemon_goes_on(tmp_path, bad, needle):
    sock = tmp_path / "kw.sock"
    config = tmp_path / "kw.yaml"
    config.write_text("detector:\n  threshold: 0.7\n")
    daemon = ReloadingDaemon("--config", str(config), "--socket", str(sock), "--format", "jsonl")
    try:
        daemon.play(np.zeros(RATE, np.float32))
        wait_for(sock.exists, 30, "the socket")
        (tmp_path / "pw.latin1").write_bytes(b"p\xe9ss\n")
        (tmp_path / "text.tflite").write_text("not a model\n")  # a model that would not start kwspot
        shutil.copy(sidecar_path(bundled_model_path()), tmp_path / "text.json")
        shutil.copy(bundled_model_path(), tmp_path / "alone.tflite")  # no sidecar
        config.write_bytes(bad.replace(b"TMP", str(tmp_path).encode()))
        daemon.hup_and_wait("reload refused")
        refused = next(line for line in daemon.err if "reload refused" in line)
        assert needle in refused and len(refused) < 300, refused
        daemon.play(np.zeros(RATE, np.float32))
        assert daemon.proc.poll() is None and sock.exists()
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(sock))  # the running socket still serves
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(timeout=30) == 0, daemon.err
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
    assert not sock.exists()
    assert not any("Traceback" in line for line in daemon.err), daemon.err


def test_sighup_says_which_changed_settings_wait_for_a_restart(tmp_path):
    config = tmp_path / "kw.yaml"
    config.write_text("detector:\n  threshold: 0.7\n")
    daemon = ReloadingDaemon("--config", str(config), "--format", "jsonl")
    try:
        daemon.play(np.zeros(RATE, np.float32))
        wait_for(lambda: daemon.logged("listening on"), 30, "start-up")
        config.write_text("detector:\n  threshold: 0.6\n  hop_ms: 50\n"
                          "audio:\n  block_ms: 50\nlogging:\n  level: warning\n")
        daemon.hup_and_wait("not applied until kwspot restarts")
        line = next(line for line in daemon.err if "not applied until" in line)
        assert line.endswith("audio.block_ms, logging.level, detector.hop_ms"), line
        assert any("configuration reloaded" in line and "threshold 0.6" in line for line in daemon.err), daemon.err
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(timeout=30) == 0, daemon.err
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
