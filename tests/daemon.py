"""`kwspot listen` as a subprocess fed raw PCM on stdin by the test, its output collected by threads."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path

import yaml

from conftest import kwspot_cmd


def write_config(path: Path, **sinks) -> Path:
    """A config with JSON lines on stdout, no console, and the given sinks settings."""
    path.write_text(yaml.safe_dump({"sinks": {"jsonl": True, "console": False, **sinks}}))
    return path


class Daemon:
    """``kwspot listen --input -`` fed raw PCM by the test; its stdout and stderr lines read in threads."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "KWSPOT_CONFIG": "", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(kwspot_cmd("listen", "--input", "-", *args), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        self.out: list[str] = []
        self.err: list[str] = []
        for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._collect, args=(stream, lines), daemon=True).start()

    @staticmethod
    def _collect(stream, lines: list[str]) -> None:
        for line in stream:
            lines.append(line.decode(errors="replace").rstrip("\n"))

    @property
    def events(self) -> list[dict]:
        return [json.loads(line) for line in list(self.out)]

    @property
    def log(self) -> str:
        return "\n".join(self.err)

    def logged(self, needle: str) -> bool:
        return any(needle in line for line in self.err)

    def feed(self, pcm: bytes) -> None:
        self.proc.stdin.write(pcm)
        self.proc.stdin.flush()

    def finish(self, timeout: float = 60) -> int:
        """End of input: the daemon drains, closes its sinks and exits."""
        self.proc.stdin.close()
        return self.proc.wait(timeout=timeout)
