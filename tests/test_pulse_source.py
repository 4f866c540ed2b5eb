"""Which capture backend kwspot picks, and its errors when the sound server is not there."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import kwspot_cmd
from kwspot.errors import KwspotError
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
    socket_path = str(runtime / "pulse" / "native")
    assert server_reachable({"PULSE_SERVER": f"unix:{socket_path}"}) and server_reachable({"PULSE_SERVER": socket_path})
    assert not server_reachable({"PULSE_SERVER": "/nonexistent"})  # a path that holds no server
    assert not server_reachable({"PULSE_SERVER": f"unix:{empty}/none"})
    assert server_reachable({"PULSE_SERVER": f"/nonexistent {socket_path}"})  # the next in the list is there
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


class FakeServer:
    """A stand-in for ``libpulse.RecordStream``: float32 audio at ``rate`` arriving in fragments of
    ``fragment_s``, with ``backlog_s`` already waiting when the stream opens; a read waits until its bytes
    have arrived, or its time is up."""

    def __init__(self, fragment_s: float = 0.02, backlog_s: float = 0.0, rate: int = 48000) -> None:
        self.fragment_s, self.backlog_s, self.rate = fragment_s, backlog_s, rate
        self.reads: list[tuple[float, bool]] = []  # (time the read returned, whether it waited)
        self.flushed = 0  # frames thrown away by flush()
        self.opens = 0  # streams opened

    def __call__(self, device: str | None, rate: int, fragment_bytes: int, timeout_s: float):
        self.opens += 1
        server, start = self, time.monotonic() - self.backlog_s
        self.start = start

        class Stream:
            pos = 0
            waited = False

            def read(self, n: int, timeout_s: float) -> bytes | None:
                deadline, self.waited = time.monotonic() + timeout_s, False
                while self.arrived_bytes() < self.pos + n:
                    if time.monotonic() >= deadline:
                        return None
                    self.waited = True
                    fragments = int((time.monotonic() - start) / server.fragment_s) + 1
                    next_fragment = start + fragments * server.fragment_s
                    time.sleep(max(0.0, min(next_fragment, deadline) - time.monotonic()))
                server.reads.append((time.monotonic(), self.waited))
                self.pos += n
                return bytes(n)

            def arrived_bytes(self) -> int:
                return int((time.monotonic() - start) / server.fragment_s) * round(server.fragment_s * server.rate) * 4

            def latency_s(self) -> float:
                return max(0, self.arrived_bytes() - self.pos) / (4 * server.rate)

            def flush(self) -> None:
                server.flushed += max(0, self.arrived_bytes() - self.pos) // 4
                self.pos = max(self.pos, self.arrived_bytes())

            def close(self) -> None:
                pass

        return Stream()


@pytest.fixture
def fake_libpulse(monkeypatch):
    """Installs a FakeServer as the sound server: returns a function that makes one."""
    from kwspot import libpulse

    def install(**kwargs) -> FakeServer:
        server = FakeServer(**kwargs)
        monkeypatch.setattr(libpulse, "RecordStream", server)
        monkeypatch.setattr(libpulse, "library", lambda: None)
        return server

    return install


def test_a_missing_libpulse_is_a_one_line_error(monkeypatch):
    from kwspot import libpulse

    def no_library(name):
        raise OSError(f"{name}: cannot open shared object file: No such file or directory")

    libpulse.library.cache_clear()
    monkeypatch.setattr(libpulse.ctypes, "CDLL", no_library)
    try:
        with pytest.raises(KwspotError, match=r"needs libpulse \(Debian: apt install libpulse0\)"):
            libpulse.library()
        assert not libpulse.available()
        assert choose_backend("auto", None, {"PULSE_SERVER": "tcp:localhost"}) == "portaudio"  # so auto goes around it
    finally:
        libpulse.library.cache_clear()


def test_a_backlog_past_max_lag_is_thrown_away_in_the_server_and_counted(fake_libpulse):
    from kwspot.pulse_source import PulseSource

    server = fake_libpulse(fragment_s=0.02, backlog_s=1.5)  # kwspot was stopped for 1.5 s
    source = PulseSource(block_ms=100, max_lag_ms=500)
    try:
        source.read(0.25)  # the first read finds its block there: a probe, which asks how much waits
        assert source.backlog_samples() >= 8000  # 1.5 s at 8 kHz counted ...
        assert source.drain() >= 8000 and source.backlog_samples() < 4000  # ... and handed to the main loop once
    finally:
        source.close()
    assert server.flushed >= 48000  # thrown away in the server: at least a second at 48 kHz


def test_pulse_capture_reads_once_a_block_beside_short_fragments_and_catches_up_a_backlog(fake_libpulse):
    """Fragments every 20 ms must not wake the loop five times a block (most reads start just after their
    block is complete and do not wait at all); audio waiting at the start (as after a stall) is read faster
    than real time until reading is back at the present."""
    from kwspot.pulse_source import PulseSource

    server = fake_libpulse(fragment_s=0.02, backlog_s=0.4)  # under max_lag_ms: read, not thrown away
    source = PulseSource(block_ms=100)
    try:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            source.read(0.25)  # as the listen loop does
    finally:
        source.close()
    assert server.flushed == 0
    opened = server.reads[0][0]
    blocks_by = [(t - opened, i + 1) for i, (t, _) in enumerate(server.reads)]
    assert any(t < 1.2 and n >= (t + 0.4) / 0.1 - 1 for t, n in blocks_by)  # caught up on the backlog within 1.2 s
    steady = [(t, w) for t, w in server.reads if t - opened > 1.2]
    assert len(steady) >= 5
    assert sum(w for _, w in steady) <= 0.5 * len(steady)  # most reads start when their block is there: no wait
    lateness = [t - (server.start + 0.1 * (i + 1)) for i, (t, _) in enumerate(server.reads) if t - opened > 1.2]
    assert np.median(lateness) < 0.02 and max(lateness) < 0.1  # reads start just after their block completes


def test_devices_gives_no_server_hint_for_a_server_address_that_refuses(tmp_path):
    """``PULSE_SERVER`` at a network address: configured, but nothing answers there (it used to say a server ran)."""
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    result = subprocess.run(kwspot_cmd("devices"), env={**base, "PULSE_SERVER": f"tcp:127.0.0.1:{port}"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "PulseAudio" not in result.stdout


def test_the_audio_landscape_changes_when_a_sound_server_starts_or_restarts(tmp_path):
    from kwspot.devices import audio_landscape

    env = {"XDG_RUNTIME_DIR": str(tmp_path)}
    (tmp_path / "pulse").mkdir()
    without = audio_landscape(env)
    assert audio_landscape(env) == without  # nothing changed
    first = socket.socket(socket.AF_UNIX)
    first.bind(str(tmp_path / "pulse" / "native"))
    started = audio_landscape(env)
    assert started != without
    first.close()
    (tmp_path / "pulse" / "native").unlink()
    second = socket.socket(socket.AF_UNIX)
    second.bind(str(tmp_path / "pulse" / "native"))  # a restarted server: same path, a new socket
    assert audio_landscape(env) not in (without, started)
    second.close()


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_a_stop_while_the_server_does_not_answer_at_start_up_is_a_quiet_exit(signum, code):
    """The open waits up to its time limit for a server that accepts but never answers; a stop asked for
    meanwhile is a stop, not a capture error."""
    with socket.socket() as black_hole:  # accepts connections (the kernel's backlog), never answers
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(8)
        base = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
        env = {**base, "KWSPOT_CONFIG": "", "PULSE_SERVER": f"tcp:127.0.0.1:{black_hole.getsockname()[1]}"}
        daemon = subprocess.Popen(kwspot_cmd("listen", "--backend", "pulse", "--format", "jsonl"), env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(2.0)  # imports done, the open under way
        daemon.send_signal(signum)
        _, err = daemon.communicate(timeout=30)
    assert daemon.returncode == code, err
    assert "error" not in err and "Traceback" not in err, err


def test_a_silent_stream_is_kept_and_only_reopened_after_a_long_silence(fake_libpulse, monkeypatch, caplog):
    from kwspot.pulse_source import PulseSource

    server = fake_libpulse(fragment_s=3600.0)  # a source that gives nothing (suspended)
    monkeypatch.setattr(PulseSource, "STALL_S", 0.5)
    monkeypatch.setattr(PulseSource, "FIRST_AUDIO_S", 0.5)
    monkeypatch.setattr(PulseSource, "SILENT_REOPEN_S", 1.5)
    monkeypatch.setattr(PulseSource, "FIRST_BACKOFF_S", 0.1)
    source = PulseSource(block_ms=100)
    try:
        deadline = time.monotonic() + 1.2
        while time.monotonic() < deadline:
            source.read(0.1)
        assert server.opens == 1 and source.reconnecting  # waited for, on its one stream (and the watchdog fed)
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            source.read(0.1)
        assert server.opens == 2  # reopened once it was silent for SILENT_REOPEN_S
    finally:
        source.close()
    assert "waiting for it" in caplog.text


def test_a_stream_lost_while_waited_for_says_it_is_back_once(monkeypatch, caplog):
    """Waiting for a silent stream, then the server goes: the reopen says 'audio input back', and the first
    audio of the new stream must not say it again (the wait belonged to the stream that went)."""
    from kwspot import libpulse
    from kwspot.pulse_source import PulseSource

    class Stream:
        state = "silent"  # silent -> fails -> audio
        waited = True

        def __init__(self, *args) -> None:
            pass

        def read(self, n: int, timeout_s: float) -> bytes | None:
            if Stream.state == "fails":
                Stream.state = "audio"
                raise libpulse.PulseError("Connection terminated")
            if Stream.state == "silent":
                time.sleep(timeout_s)
                return None
            time.sleep(0.01)
            return bytes(n)

        def close(self) -> None:
            pass

    monkeypatch.setattr(libpulse, "RecordStream", Stream)
    monkeypatch.setattr(libpulse, "library", lambda: None)
    monkeypatch.setattr(PulseSource, "STALL_S", 0.3)
    monkeypatch.setattr(PulseSource, "FIRST_AUDIO_S", 0.3)
    monkeypatch.setattr(PulseSource, "FIRST_BACKOFF_S", 0.05)
    caplog.set_level("INFO", logger="kwspot")
    source = PulseSource(block_ms=100)
    try:
        deadline = time.monotonic() + 5.0
        while "waiting for it" not in caplog.text and time.monotonic() < deadline:
            source.read(0.1)
        Stream.state = "fails"
        got = 0
        while got < 5 and time.monotonic() < deadline:
            got += source.read(0.1).size > 0
    finally:
        source.close()
    assert "waiting for it" in caplog.text and got == 5, caplog.text
    assert caplog.text.count("audio input back") == 1, caplog.text
