"""Live capture through a real sound server: PulseAudio with a null sink whose monitor is the default source.

kwspot listens on the default device (no --input); the test plays speech into the sink with
paplay and reads the events from kwspot's socket.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import kwspot_cmd, write_stream

from kwspot.frontend import load_audio

pytestmark = pytest.mark.live
TOOLS = ("pulseaudio", "pactl", "paplay", "parec")


@pytest.fixture
def pulse(tmp_path_factory) -> Iterator[dict[str, str]]:
    """A private PulseAudio server; yields the environment that reaches it."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"PulseAudio tools missing: {', '.join(missing)} (Debian: pulseaudio pulseaudio-utils)")
    runtime = tmp_path_factory.mktemp("pulse-runtime")
    runtime.chmod(0o700)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "HOME": str(runtime), "PULSE_SERVER": ""}
    env.pop("PULSE_SERVER")
    server = subprocess.Popen(
        ["pulseaudio", "-n", "--daemonize=no", "--exit-idle-time=-1", "--disallow-exit", "--log-target=stderr",
         "--load=module-native-protocol-unix auth-anonymous=1",
         "--load=module-null-sink sink_name=kwsink rate=48000",
         "--load=module-always-sink"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 15
    while subprocess.run(["pactl", "info"], env=env, capture_output=True).returncode != 0:
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            pytest.skip(f"PulseAudio did not start: {server.stderr.read().decode()[-300:]}")
        time.sleep(0.2)
    subprocess.run(["pactl", "set-default-source", "kwsink.monitor"], env=env, check=True)
    # One low-latency reader keeps the monitor source running; without it a new capture
    # stream gets no audio for about 2 s.
    reader = subprocess.Popen(["parec", "--latency-msec=20", "-d", "kwsink.monitor"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    yield env
    reader.kill()
    server.terminate()
    server.wait(timeout=10)


def connect(path: Path, daemon: subprocess.Popen, timeout: float = 30) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        if daemon.poll() is not None:
            pytest.fail(f"kwspot exited early: {daemon.stderr.read()}")
        try:
            client = socket.socket(socket.AF_UNIX)
            client.connect(str(path))
            return client
        except OSError:
            client.close()
            if time.monotonic() > deadline:
                pytest.fail("kwspot's socket never came up")
            time.sleep(0.1)


def read_events(client: socket.socket, seconds: float) -> list[dict]:
    client.settimeout(0.2)
    data, deadline = b"", time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chunk = client.recv(65536)
        except TimeoutError:
            continue
        if not chunk:
            break
        data += chunk
    return [json.loads(line) for line in data.decode().splitlines()]


def test_default_device_through_pulseaudio_reports_keywords(pulse, tmp_path, speech_commands):
    words = ["stop", "go", "yes", "left", "up"]
    listed = (speech_commands / "testing_list.txt").read_text().split()
    clips = [load_audio(speech_commands / next(p for p in listed if p.startswith(w + "/"))) for w in words]
    write_stream(tmp_path / "words.wav", clips, gap_s=1.5)
    sock = tmp_path / "kw.sock"
    daemon = subprocess.Popen(
        kwspot_cmd("listen", "--socket", str(sock), "--no-console", "--log-level", "debug"),
        env={**pulse, "KWSPOT_CONFIG": ""}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        client = connect(sock, daemon)
        time.sleep(1.0)
        subprocess.run(["paplay", "-d", "kwsink", str(tmp_path / "words.wav")], env=pulse, check=True, timeout=60)
        events = read_events(client, seconds=2.5)
        client.close()
    finally:
        daemon.send_signal(signal.SIGTERM)
        out, err = daemon.communicate(timeout=20)
    assert daemon.returncode == 0, err
    assert not sock.exists(), "socket file left behind"
    heard = [e["keyword"] for e in events]
    assert sum(w in heard for w in words) >= 4, (heard, err)
    assert len(heard) <= len(words) + 1, heard
    assert np.all(np.diff([e["t"] for e in events]) > 0)
