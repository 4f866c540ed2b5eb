"""A short soak (bench/soak.py is the long one): minutes of audio through ``kwspot listen`` at full speed.

The test pipes a repeated stream of keywords into ``--input - --rate 8000`` as fast as the daemon reads it
(the stdin equivalent of ``--fast``, with the socket client connected before the first sample), samples the
daemon's RSS and open fds from /proc while clients connect and hang up, and checks: RSS flat after warm-up,
no fd growth, every event the daemon logged reached the client, and later repetitions give identical events.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

from conftest import SPEECH_COMMANDS, espeak, kwspot_cmd, write_stream
from kwspot import KEYWORDS
from kwspot.frontend import SAMPLE_RATE, load_audio
from kwspot.model import bundled_model_path

pytestmark = pytest.mark.slow
AUDIO_S = 300  # about five minutes of audio in all
HOP = SAMPLE_RATE // 10
MAX_RSS_GROWTH_KB = 3 * 1024


def keyword_clips(tmp_path: Path) -> list[np.ndarray]:
    """Two clips per keyword: Speech Commands testing list if present, else espeak-ng."""
    listing = SPEECH_COMMANDS / "testing_list.txt"
    if listing.is_file():
        listed = listing.read_text().split()
        return [load_audio(SPEECH_COMMANDS / p) for w in KEYWORDS for p in [x for x in listed if
                                                                               x.startswith(w + "/")][:2]]
    return [load_audio(espeak(w, tmp_path / f"{w}.wav")) for w in KEYWORDS for _ in range(2)]


def proc_sample(pid: int) -> tuple[int, int] | None:
    """(VmRSS kB, open fds) of a live process, None once it is exiting."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        rss = re.search(r"^VmRSS:\s+(\d+)", status, re.M)
        return (int(rss[1]), len(os.listdir(f"/proc/{pid}/fd"))) if rss else None
    except OSError:
        return None


def connect(path: Path, daemon: subprocess.Popen, timeout: float = 30) -> socket.socket:
    deadline = time.monotonic() + timeout
    while daemon.poll() is None and time.monotonic() < deadline:
        client = socket.socket(socket.AF_UNIX)
        try:
            client.connect(str(path))
            return client
        except OSError:
            client.close()
            time.sleep(0.02)
    pytest.fail(f"kwspot's socket never came up (exit status {daemon.poll()})")


def test_short_soak_keeps_memory_and_fds_flat_and_delivers_every_event(tmp_path):
    if not bundled_model_path().is_file():
        pytest.skip("no bundled model (models/kwspot.tflite)")
    write_stream(tmp_path / "period.wav", keyword_clips(tmp_path), gap_s=1.5)
    period, _ = soundfile.read(tmp_path / "period.wav", dtype="int16")
    period = np.concatenate((period, np.zeros(-period.size % HOP, np.int16)))  # whole hops: same grid each time
    pcm, period_s = period.astype("<i2").tobytes(), period.size / SAMPLE_RATE
    repeats = max(4, round(AUDIO_S / period_s))

    sock = tmp_path / "kw.sock"
    env = {**os.environ, "KWSPOT_CONFIG": "", "PYTHONUNBUFFERED": "1"}
    daemon = subprocess.Popen(
        kwspot_cmd("listen", "--input", "-", "--rate", "8000", "--socket", str(sock), "--no-console"),
        env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    received, written, stderr = bytearray(), [0], bytearray()
    threading.Thread(target=lambda: stderr.extend(daemon.stderr.read()), daemon=True).start()
    try:
        client = connect(sock, daemon)

        def read() -> None:
            while chunk := client.recv(65536):
                received.extend(chunk)

        def feed() -> None:
            with contextlib.suppress(OSError, ValueError):
                for _ in range(repeats):
                    daemon.stdin.write(pcm)
                    written[0] += len(pcm)
                daemon.stdin.close()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        threading.Thread(target=feed, daemon=True).start()
        samples = []  # (bytes written, rss kB, fds)
        deadline = time.monotonic() + 90
        while daemon.poll() is None and time.monotonic() < deadline:
            if (sample := proc_sample(daemon.pid)) is not None:
                samples.append((written[0], *sample))
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as churn:
                churn.connect(str(sock))  # a client that connects and hangs up at once
            time.sleep(0.02)
        daemon.wait(timeout=30)
        reader.join(timeout=10)
        client.close()
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    time.sleep(0.1)  # the stderr thread's last read
    err = stderr.decode(errors="replace")
    assert daemon.returncode == 0, err

    # Warm-up: the first two repetitions (plus a pipe buffer still in flight).
    warm = [s for s in samples if s[0] >= 2 * len(pcm) + 65536]
    assert len(warm) >= 5, f"too few samples after warm-up ({len(samples)} in all)"
    growth_kb = warm[-1][1] - warm[0][1]
    assert growth_kb < MAX_RSS_GROWTH_KB, f"RSS grew {growth_kb} kB after warm-up: {[s[1] for s in warm]}"
    assert min(s[2] for s in warm[-3:]) <= warm[0][2], f"open fds grew: {[s[2] for s in warm]}"

    events = [line for line in received.decode().splitlines() if line]
    logged = re.search(r"stopped after [\d.]+ s of audio, (\d+) events", err)
    assert logged, err
    assert len(events) == int(logged[1]) > 0, (len(events), logged[0])
    by_rep: dict[int, list] = {}
    for line in events:
        kw, t = re.search(r'"keyword":"(\w+)".*"t":([\d.]+)', line).groups()
        by_rep.setdefault(int(float(t) // period_s), []).append((kw, round(float(t) % period_s, 1)))
    later = [by_rep.get(i, []) for i in range(1, repeats)]
    assert all(rep == later[0] for rep in later), "repetitions of identical audio gave different events"
