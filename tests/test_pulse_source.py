"""Which capture backend kwspot picks, and its errors when the sound server is not there."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from conftest import kwspot_cmd
from kwspot.pulse_source import choose_backend, server_reachable


@pytest.fixture
def runtime(tmp_path: Path) -> Path:
    """An XDG_RUNTIME_DIR with a live unix socket where PulseAudio (or pipewire-pulse) puts its own."""
    (tmp_path / "pulse").mkdir()
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "pulse" / "native"))
    yield tmp_path
    listener.close()


def test_a_server_socket_or_address_makes_the_server_reachable(runtime, tmp_path_factory):
    empty = tmp_path_factory.mktemp("empty")
    assert server_reachable({"XDG_RUNTIME_DIR": str(runtime)})
    assert server_reachable({"PULSE_RUNTIME_PATH": str(runtime / "pulse")})
    assert server_reachable({"PULSE_SERVER": "tcp:localhost"})
    assert not server_reachable({"XDG_RUNTIME_DIR": str(empty)})
    (empty / "pulse").mkdir()
    (empty / "pulse" / "native").write_text("")  # a regular file is no server
    assert not server_reachable({"XDG_RUNTIME_DIR": str(empty)})


@pytest.mark.skipif(Path("/run/pulse/native").exists(), reason="a system-wide PulseAudio runs here")
def test_auto_takes_the_server_for_the_default_input_only(runtime, tmp_path_factory):
    with_server = {"XDG_RUNTIME_DIR": str(runtime)}
    without = {"XDG_RUNTIME_DIR": str(tmp_path_factory.mktemp("empty"))}
    assert choose_backend("auto", None, with_server) == "pulse"
    assert choose_backend("auto", None, without) == "portaudio"
    assert choose_backend("auto", "USB", with_server) == "portaudio"  # a named device is PortAudio's
    assert choose_backend("auto", 3, with_server) == "portaudio"
    assert choose_backend("pulse", "alsa_input.usb", without) == "pulse"
    assert choose_backend("portaudio", None, with_server) == "portaudio"


@pytest.mark.parametrize("env", [{"PULSE_SERVER": "unix:/nonexistent/native"}, {"XDG_RUNTIME_DIR": "EMPTY"}])
def test_no_sound_server_is_a_one_line_error(tmp_path, env):
    base = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    env = {k: str(tmp_path) if v == "EMPTY" else v for k, v in env.items()}
    result = subprocess.run(kwspot_cmd("listen", "--backend", "pulse", "--format", "jsonl"),
                            env={**base, "KWSPOT_CONFIG": "", **env},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "kwspot: error: cannot capture the default source from PulseAudio/PipeWire (Connection refused)"
    ]
