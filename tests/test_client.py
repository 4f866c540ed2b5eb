"""``kwspot events``: the client that prints a running daemon's events."""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import wait_for
from kwspot import client
from kwspot.errors import KwspotError
from kwspot.events import Event
from kwspot.sinks.socket import SYSTEM_SOCKET, SocketSink

# The client as its own process, without depending on how kwspot/cli.py wires it.
CLIENT = "import sys; from kwspot.client import run_events; sys.exit(run_events(sys.argv[1]))"


@pytest.fixture
def sink(tmp_path: Path):
    s = SocketSink(tmp_path / "kwspot.sock")
    yield s
    s.close(linger=0)


class LineCollector(io.StringIO):
    """A stdout that records each flush, to check that every line is flushed at once."""

    def __init__(self) -> None:
        super().__init__()
        self.flushed: list[str] = []

    def flush(self) -> None:
        self.flushed.append(self.getvalue())


def test_prints_each_event_and_exits_1_when_the_daemon_goes(sink: SocketSink, capsys) -> None:
    out = LineCollector()
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(client.run_events(sink.path, out=out)))
    t.start()
    wait_for(lambda: sink.client_count == 1, what="client connected")
    events = [Event("stop", 0.93, t=1.25), Event("go", 0.88, t=3.5)]
    for e in events:
        sink.emit(e)
    wait_for(lambda: len(out.flushed) == 2, what="two flushed lines")
    assert [json.loads(line) for line in out.flushed[0].splitlines()] == [events[0].to_dict()]
    sink.close()
    t.join(timeout=5)
    assert result == [1]
    assert [json.loads(line) for line in out.getvalue().splitlines()] == [e.to_dict() for e in events]
    assert "daemon closed the connection" in capsys.readouterr().err


def test_missing_socket_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "none.sock"
    with pytest.raises(KwspotError) as exc:
        client.run_events(path, out=io.StringIO())
    msg = str(exc.value)
    assert str(path) in msg and f"kwspot listen --socket {path}" in msg and "\n" not in msg


def test_stale_socket_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()
    with pytest.raises(KwspotError, match="nobody is listening") as exc:
        client.run_events(path, out=io.StringIO())
    assert f"kwspot listen --socket {path}" in str(exc.value)


def test_broken_stdout_exits_0(sink: SocketSink) -> None:
    class ClosedPipe(io.StringIO):
        def write(self, s: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(client.run_events(sink.path, out=ClosedPipe())))
    t.start()
    wait_for(lambda: sink.client_count == 1, what="client connected")
    sink.emit(Event("stop", 0.9, t=1.0))
    t.join(timeout=5)
    assert result == [0]


def test_default_path_finds_the_system_service(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KWSPOT_SOCKET", raising=False)
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    # nothing running anywhere: the user's own default is the one named in the error
    if not SYSTEM_SOCKET.exists():
        assert client.resolve_socket_path(None) == tmp_path / "kwspot.sock"
    with SocketSink(tmp_path / "kwspot.sock"):
        assert client.resolve_socket_path(None) == tmp_path / "kwspot.sock"
    assert client.resolve_socket_path("/x/y.sock") == Path("/x/y.sock")


def test_add_arguments_and_run(sink: SocketSink, monkeypatch) -> None:
    parser = argparse.ArgumentParser()
    client.add_arguments(parser)
    args = parser.parse_args(["--socket", str(sink.path)])
    assert args.socket == str(sink.path)
    assert parser.parse_args([]).socket is None
    seen: list = []
    monkeypatch.setattr(client, "run_events", lambda path, out=None: seen.append(path) or 0)
    assert client.run(args) == 0 and seen == [str(sink.path)]


def spawn_client(path: Path, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-c", CLIENT, str(path)], env=env, text=True, **kwargs)


def test_pipe_to_grep_m1_exits_quietly(sink: SocketSink, tmp_path: Path) -> None:
    """``kwspot events | grep -m1 stop``: grep exits, the client follows with status 0 and no traceback."""
    proc = spawn_client(sink.path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: sink.client_count == 1, what="client connected")
    sink.emit(Event("go", 0.9, t=0.5))
    sink.emit(Event("stop", 0.9, t=1.0))
    assert json.loads(proc.stdout.readline())["keyword"] == "go"
    assert json.loads(proc.stdout.readline())["keyword"] == "stop"
    proc.stdout.close()  # what grep -m1 does after its match
    deadline = time.monotonic() + 5
    while proc.poll() is None and time.monotonic() < deadline:
        sink.emit(Event("up", 0.9, t=2.0))  # the next write hits the closed pipe
        time.sleep(0.01)
    assert proc.wait(timeout=5) == 0
    assert proc.stderr.read() == ""


def test_ctrl_c_exits_0_quietly(sink: SocketSink) -> None:
    proc = spawn_client(sink.path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: sink.client_count == 1, what="client connected")
    sink.emit(Event("yes", 0.9, t=0.5))
    assert json.loads(proc.stdout.readline())["keyword"] == "yes"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=5) == 0
    assert proc.stderr.read() == ""


def test_daemon_gone_subprocess(tmp_path: Path) -> None:
    sink = SocketSink(tmp_path / "kwspot.sock")
    proc = spawn_client(sink.path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: sink.client_count == 1, what="client connected")
    sink.emit(Event("no", 0.9, t=0.5))
    sink.close()
    out, err = proc.communicate(timeout=5)
    assert proc.returncode == 1
    assert json.loads(out)["keyword"] == "no"
    assert err.strip().count("\n") == 0 and "daemon closed the connection" in err


def fake_daemon(path: Path, data: bytes) -> threading.Thread:
    """A program on the daemon's socket that sends ``data`` to its first client, then hangs up."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def serve() -> None:
        conn, _ = server.accept()
        with conn, server:
            try:
                conn.sendall(data)
            except OSError:  # the client hung up first, as it should on a bad line
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("data,needle", [
    (b"x" * 200_000, "a line of over 65536 bytes"),  # no newline ever: must not be buffered without end
    (b"hello, I am not a daemon\n", "not a JSON event"),
    (b"[1, 2]\n", "not a JSON event"),
    (b"[" * 50_000 + b"\n", "not a JSON event"),  # nested past Python's recursion limit
    (b'{"keyword": "\x1b[2J"}\n', "not a JSON event"),  # a raw control character is not JSON
    (b"\xff\xfe\n", "not a JSON event"),
    (b'{"keyword": "stop", "score": NaN}\n', "not a JSON event"),  # Python reads it; jq does not
    (b'{"keyword": "stop", "score": -Infinity}\n', "not a JSON event"),
    (b'{"keyword": "stop", "score": 1e999}\n', "not a JSON event"),  # beyond a double
])
def test_a_peer_that_sends_no_events_is_a_one_line_error(tmp_path: Path, data: bytes, needle: str) -> None:
    path = tmp_path / "fake.sock"
    fake_daemon(path, data)
    out = io.StringIO()
    with pytest.raises(KwspotError, match=needle) as error:
        client.run_events(path, out=out)
    assert str(error.value).startswith(f"{path}: sent a line") and "\n" not in str(error.value)
    assert out.getvalue() == ""


def test_events_reach_the_terminal_as_ascii_json_without_escape_sequences(tmp_path: Path) -> None:
    path = tmp_path / "fake.sock"
    genuine = Event("go", 0.91, 12.3, model="kwspot").to_json() + "\n"
    fake_daemon(path, genuine.encode() + b'{"keyword": "\\u001b]0;owned\\u0007\\u009b2J", "score": 1}\n')
    out = io.StringIO()
    assert client.run_events(path, out=out) == 1
    first, second = out.getvalue().splitlines()
    assert first + "\n" == genuine  # a daemon's own line passes byte for byte
    assert second.isascii() and second.isprintable()  # escaped, for jq to decode, not for the terminal to obey
    assert json.loads(second)["keyword"] == "\x1b]0;owned\x07\x9b2J"
