"""SIGHUP on the real daemon: flags outlive a reload; a bad config is refused and the daemon goes on."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import kwspot_cmd, wait_for, write_stream
from kwspot.frontend import load_audio

RATE = 8000


class Daemon:
    """``kwspot listen --input -`` fed raw 8 kHz PCM by the test; its stdout and stderr read in threads."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "KWSPOT_CONFIG": "", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(kwspot_cmd("listen", "--input", "-", "--rate", str(RATE), *args),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        self.out: list[str] = []
        self.err: list[str] = []
        for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._read, args=(stream, lines), daemon=True).start()

    @staticmethod
    def _read(stream, lines: list[str]) -> None:
        for line in iter(stream.readline, b""):
            lines.append(line.decode(errors="replace").rstrip("\n"))

    def feed(self, audio: np.ndarray) -> None:
        self.proc.stdin.write((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
        self.proc.stdin.flush()

    def logged(self, needle: str) -> bool:
        return any(needle in line for line in self.err)

    def hup_and_wait(self, needle: str) -> None:
        seen = len(self.err)
        self.proc.send_signal(signal.SIGHUP)
        # keep audio flowing so the loop wakes up and handles the signal
        deadline = time.monotonic() + 10
        while not any(needle in line for line in self.err[seen:]):
            assert time.monotonic() < deadline, f"no {needle!r} in {self.err}"
            self.feed(np.zeros(RATE // 10, np.float32))
            time.sleep(0.05)

    def finish(self) -> int:
        self.proc.stdin.close()
        return self.proc.wait(timeout=60)


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
    daemon = Daemon("--config", str(config), "--socket", str(sock), "--format", "jsonl", "--threshold", "0.05")
    try:
        daemon.feed(np.zeros(RATE, np.float32))
        wait_for(lambda: daemon.logged("serving events on"), 30, "the socket")  # bound and listening
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(str(sock))
        daemon.hup_and_wait("configuration reloaded")
        reloaded = next(line for line in daemon.err if "configuration reloaded" in line)
        assert "threshold 0.05" in reloaded and "jsonl" in reloaded and "socket" in reloaded, reloaded
        assert sock.exists()
        daemon.feed(speech(speech_commands, tmp_path))
        assert daemon.finish() == 0, daemon.err
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
    received = b""
    client.settimeout(5)
    while chunk := client.recv(65536):
        received += chunk
    client.close()
    stdout_events = [json.loads(line) for line in daemon.out]
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
])
def test_a_bad_config_on_sighup_is_refused_and_the_daemon_goes_on(tmp_path, bad, needle):
    sock = tmp_path / "kw.sock"
    config = tmp_path / "kw.yaml"
    config.write_text("detector:\n  threshold: 0.7\n")
    daemon = Daemon("--config", str(config), "--socket", str(sock), "--format", "jsonl")
    try:
        daemon.feed(np.zeros(RATE, np.float32))
        wait_for(sock.exists, 30, "the socket")
        config.write_bytes(bad)
        daemon.hup_and_wait("reload refused")
        refused = next(line for line in daemon.err if "reload refused" in line)
        assert needle in refused and len(refused) < 300, refused
        daemon.feed(np.zeros(RATE, np.float32))
        assert daemon.proc.poll() is None and sock.exists()
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(timeout=30) == 0, daemon.err
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
    assert not sock.exists()
    assert not any("Traceback" in line for line in daemon.err), daemon.err
