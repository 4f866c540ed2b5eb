"""The daemon's socket under load: 50 clients, 5 never reading, and clients that come and go.

The real program reads raw PCM on stdin, so all clients connect before any audio flows.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import soundfile

from conftest import kwspot_cmd, wait_for, write_stream
from kwspot import KEYWORDS
from kwspot.frontend import SAMPLE_RATE, load_audio


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def connect(path: Path) -> socket.socket:
    client = socket.socket(socket.AF_UNIX)
    client.connect(str(path))
    return client


def read_all(client: socket.socket, into: list[bytes]) -> None:
    while chunk := client.recv(65536):
        into.append(chunk)


@pytest.mark.slow
def test_fifty_clients_five_never_reading_and_churn(tmp_path, speech_commands):
    listed = (speech_commands / "testing_list.txt").read_text().split()
    paths = [p for w in KEYWORDS for p in [q for q in listed if q.startswith(w + "/")][:3]]
    clips = [load_audio(speech_commands / p) for p in paths]
    write_stream(tmp_path / "s.wav", clips, gap_s=1.2)
    pcm = soundfile.read(tmp_path / "s.wav", dtype="int16")[0].astype("<i2").tobytes()

    sock = tmp_path / "kw.sock"
    daemon = subprocess.Popen(
        kwspot_cmd("listen", "--input", "-", "--rate", str(SAMPLE_RATE), "--socket", str(sock), "--format", "jsonl"),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "KWSPOT_CONFIG": ""},
    )
    try:
        wait_for(sock.exists, timeout=30)
        time.sleep(0.5)
        baseline = open_fds(daemon.pid)
        readers, received, threads = [], [], []
        for _ in range(45):
            client, chunks = connect(sock), []
            readers.append(client)
            received.append(chunks)
            threads.append(threading.Thread(target=read_all, args=(client, chunks), daemon=True))
            threads[-1].start()
        idle = [connect(sock) for _ in range(5)]  # connected, never read
        wait_for(lambda: open_fds(daemon.pid) == baseline + 50, timeout=30)

        for _ in range(100):  # clients that connect and vanish
            connect(sock).close()
        half = len(pcm) // 2
        daemon.stdin.write(pcm[:half])
        daemon.stdin.flush()
        for _ in range(100):
            vanishing = connect(sock)
            vanishing.shutdown(socket.SHUT_RDWR)
            vanishing.close()
        wait_for(lambda: open_fds(daemon.pid) == baseline + 50, timeout=30)

        daemon.stdin.write(pcm[half:])
        daemon.stdin.close()  # end of audio: the daemon finishes and closes every client
        daemon.stdin = None
        out, err = daemon.communicate(timeout=300)
    finally:
        if daemon.poll() is None:
            daemon.kill()
    assert daemon.returncode == 0, err.decode()
    events = out.decode().splitlines()
    assert len(events) >= 20, err.decode()  # 30 words were spoken
    for t in threads:
        t.join(timeout=10)
    for chunks in received:
        assert b"".join(chunks).decode().splitlines() == events
    assert all(json.loads(line)["keyword"] in KEYWORDS for line in events)
    for client in readers + idle:
        client.close()
    assert "Traceback" not in err.decode()
    assert not sock.exists()
