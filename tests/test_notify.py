"""systemd notifications: READY/WATCHDOG/STATUS datagrams to $NOTIFY_SOCKET, and silence without it."""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from pathlib import Path

import pytest

from kwspot.notify import SystemdNotifier


@pytest.fixture
def server(tmp_path: Path):
    """A fake systemd: a datagram socket at a path."""
    path = tmp_path / "notify"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    s.settimeout(2.0)
    yield path, s
    s.close()


def receive(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_ready_watchdog_status_stopping(server) -> None:
    path, sock = server
    n = SystemdNotifier({"NOTIFY_SOCKET": str(path)})
    assert n.enabled
    assert n.ready()
    assert receive(sock) == ["READY=1"]
    assert n.watchdog()
    assert receive(sock) == ["WATCHDOG=1"]
    assert n.status("listening on hw:1\n2 clients")
    assert receive(sock) == ["STATUS=listening on hw:1 2 clients"]
    assert n.ready(status="ready")
    assert receive(sock) == ["READY=1", "STATUS=ready"]
    assert n.reloading()
    msg = receive(sock)
    assert msg[0] == "RELOADING=1" and msg[1].startswith("MONOTONIC_USEC=") and int(msg[1].split("=")[1]) > 0
    assert n.stopping()
    assert receive(sock) == ["STOPPING=1"]
    n.close()


def test_abstract_socket_name() -> None:
    name = f"kwspot-test-{uuid.uuid4().hex}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    s.settimeout(2.0)
    try:
        n = SystemdNotifier({"NOTIFY_SOCKET": "@" + name})
        assert n.ready()
        assert receive(s) == ["READY=1"]
        assert n.watchdog()
        assert receive(s) == ["WATCHDOG=1"]
    finally:
        s.close()


def test_no_op_without_systemd() -> None:
    n = SystemdNotifier({})
    assert not n.enabled
    assert n.ready() is False and n.watchdog() is False and n.stopping() is False
    assert n.watchdog_interval() is None


def test_default_env_is_os_environ(monkeypatch, server) -> None:
    path, sock = server
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    assert SystemdNotifier().ready()
    assert receive(sock) == ["READY=1"]


def test_send_errors_never_raise(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="kwspot.notify")
    n = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert n.enabled
    assert n.ready() is False
    assert n.watchdog() is False
    assert any("cannot notify systemd" in r.getMessage() for r in caplog.records)
    assert not SystemdNotifier({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled  # unsupported kinds are ignored


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "10000000"}, 10.0),
        ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid())}, 10.0),
        ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "1"}, 0.3),  # a microsecond: pings every 0.1 s, not a busy loop
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "x"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert SystemdNotifier(env).watchdog_interval() == expected


def test_a_reader_that_never_reads_does_not_block_the_sender(tmp_path: Path) -> None:
    """Its queue fills (net.unix.max_dgram_qlen); further messages are dropped, not waited on (SIGTERM stays live)."""
    path = tmp_path / "notify.sock"
    deaf = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    deaf.bind(str(path))
    notifier = SystemdNotifier({"NOTIFY_SOCKET": str(path)})
    done = threading.Event()

    def flood() -> None:
        for _ in range(200):
            notifier.watchdog()
        done.set()

    threading.Thread(target=flood, daemon=True).start()
    try:
        assert done.wait(10), "notify blocked on a full queue"
    finally:
        deaf.close()
        notifier.close()
