"""A real MQTT broker (Debian's mosquitto) on a free loopback port, and a real subscriber (mosquitto_sub)."""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import wait_for

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)


def need_mosquitto() -> None:
    if MOSQUITTO is None or shutil.which("mosquitto_sub") is None:
        pytest.skip("mosquitto is not installed (Debian: apt-get install mosquitto mosquitto-clients)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """mosquitto with persistence in ``home`` (a persistent subscriber's session survives a restart)."""

    def __init__(self, home: Path, extra: str = "", anonymous: bool = True, client_args: tuple[str, ...] = ()) -> None:
        need_mosquitto()
        self.home = home
        self.client_args = list(client_args)  # what mosquitto_pub/_sub need here (credentials, --cafile)
        self.port = free_port()
        self.log_path = home / "mosquitto.log"
        home.mkdir(parents=True, exist_ok=True)
        self.conf = home / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            f"allow_anonymous {'true' if anonymous else 'false'}\n"
            f"persistence true\npersistence_location {home}/\n"
            f"user {getpass.getuser()}\n"  # as root it would switch to the mosquitto user, who cannot write here
            + extra
        )
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        with self.log_path.open("a") as log:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT)
        wait_for(self.accepting, 10, "mosquitto to listen")

    def accepting(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, self.log_path.read_text()
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None

    def publish(self, topic: str, message: str) -> None:
        cmd = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(self.port), "-t", topic, "-m", message, *self.client_args]
        subprocess.run(cmd, check=True, timeout=10)


class Subscriber:
    """``mosquitto_sub -v`` on a topic filter; ``messages`` are (topic, payload), probes left out.

    With ``client_id``, a persistent session at QoS 1: the broker keeps what arrives while it is away.
    """

    def __init__(self, broker: Broker, topic: str, client_id: str | None = None) -> None:
        self.broker, self.topic = broker, topic
        cmd = ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-t", topic, "-v", "-q", "1"]
        cmd += broker.client_args
        if client_id:
            cmd += ["-c", "-i", client_id]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        threading.Thread(target=self._collect, daemon=True).start()
        self.ready()

    def _collect(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def ready(self) -> None:
        """Publish probes on the filter's own prefix until one comes back: the subscription is live."""
        probe = self.topic.replace("#", "probe").replace("+", "probe")
        deadline = time.monotonic() + 15
        while not any(line.startswith(probe + " ") for line in self.lines):
            assert time.monotonic() < deadline, f"subscriber never saw its probe: {self.lines}"
            self.broker.publish(probe, "probe")
            time.sleep(0.1)

    @property
    def messages(self) -> list[tuple[str, str]]:
        pairs = [tuple(line.split(" ", 1)) for line in list(self.lines) if " " in line]
        return [(t, p) for t, p in pairs if p != "probe"]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
