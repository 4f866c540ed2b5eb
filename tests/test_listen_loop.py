"""The listen loop and the microphone source, with fake audio: reconnects, overflows, lag, watchdog, reload."""

from __future__ import annotations

import logging
import signal
import time
from types import SimpleNamespace

import numpy as np
import pytest

from kwspot import sinks as registry
from kwspot import sources
from kwspot.config import validate
from kwspot.frontend import SAMPLE_RATE
from kwspot.listen import Listener, ListenRequest
from kwspot.sinks import SinkSpec
from kwspot.sources import MicSource


class FakePortAudioError(Exception):
    pass


class FakeStream:
    """Stands in for sounddevice.InputStream; the test pushes blocks through its callback."""

    instances: list[FakeStream] = []
    fail_open = False

    def __init__(self, callback, samplerate, channels, blocksize, **_):
        if FakeStream.fail_open:
            raise FakePortAudioError("device unavailable")
        self.callback, self.rate, self.channels, self.blocksize = callback, samplerate, channels, blocksize
        self.active = False
        FakeStream.instances.append(self)

    def start(self):
        self.active = True

    def abort(self):
        self.active = False

    def close(self):
        pass

    def push(self, n: int = 1, overflow: bool = False):
        for _ in range(n):
            self.callback(np.full((self.blocksize, self.channels), 0.1, np.float32), self.blocksize, None,
                          SimpleNamespace(input_overflow=overflow))


@pytest.fixture
def fake_sd(monkeypatch):
    FakeStream.instances, FakeStream.fail_open = [], False
    module = SimpleNamespace(InputStream=FakeStream, PortAudioError=FakePortAudioError,
                             _terminate=lambda: None, _initialize=lambda: None)
    monkeypatch.setattr(sources, "import_sounddevice", lambda: module)
    info = {"index": 3, "name": "Fake Mic", "default_samplerate": 16000.0, "max_input_channels": 1}
    monkeypatch.setattr(sources, "resolve_device", lambda device: info)
    monkeypatch.setattr(MicSource, "STALL_S", 0.3)
    monkeypatch.setattr(MicSource, "FIRST_BACKOFF_S", 0.1)
    monkeypatch.setattr(MicSource, "FIRST_AUDIO_S", 0.3)
    return module


class LogRecorder(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def kwlog():
    recorder = LogRecorder()
    logger = logging.getLogger("kwspot")
    logger.addHandler(recorder)
    logger.setLevel(logging.INFO)
    yield recorder.messages
    logger.removeHandler(recorder)


def read_until(source, predicate, seconds=5.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        block = source.read(0.05)
        if predicate(block):
            return block
    raise AssertionError("condition not reached")


def test_mic_opens_at_the_device_rate_and_resamples(fake_sd):
    mic = MicSource(block_ms=50)
    stream = FakeStream.instances[0]
    assert stream.rate == 16000 and stream.blocksize == 800
    stream.push(10)
    got = sum(mic.read(0.05).size for _ in range(10))
    assert 10 * 400 - 800 < got <= 10 * 400  # 16 kHz -> 8 kHz, less soxr's start-up delay (< 100 ms)


def test_mic_survives_a_lost_device_and_comes_back(fake_sd, kwlog):
    mic = MicSource(block_ms=50)
    FakeStream.instances[0].push(5)
    read_until(mic, lambda b: b.size > 0)
    FakeStream.instances[0].active = False  # the device went away
    FakeStream.fail_open = True
    read_until(mic, lambda b: any("still unavailable" in m for m in kwlog))
    assert any("audio input lost" in m for m in kwlog)
    FakeStream.fail_open = False  # plugged back in
    read_until(mic, lambda b: len(FakeStream.instances) == 2)
    assert mic.reconnects == 1 and any("audio input back" in m for m in kwlog)
    FakeStream.instances[1].push(5)
    assert read_until(mic, lambda b: b.size > 0).size > 0


def test_mic_stall_without_error_is_treated_as_lost(fake_sd, kwlog):
    mic = MicSource(block_ms=50)
    read_until(mic, lambda b: len(FakeStream.instances) == 2)  # active but silent: reopened
    assert any("no audio for" in m for m in kwlog)


def test_a_pause_of_kwspot_itself_is_not_a_lost_input(fake_sd, kwlog):
    """SIGSTOP, or a starved machine: the loop did not ask for audio for a while; the input is not to blame."""
    mic = MicSource(block_ms=50)
    stream = FakeStream.instances[0]
    stream.push(10)
    read_until(mic, lambda b: b.size > 0)
    while mic.backlog_samples():
        mic.read(0.01)
    time.sleep(MicSource.STALL_S * 2)  # the loop is away; the stream, stopped with us, pushes nothing
    mic.read(0.01)  # resumed: the loop asks first, the next block comes a moment later
    stream.push(1)
    mic.read(0.01)
    assert len(FakeStream.instances) == 1 and not any("audio input lost" in m for m in kwlog), kwlog


def test_overflows_and_full_queue_are_counted(fake_sd):
    mic = MicSource(block_ms=50)
    stream = FakeStream.instances[0]
    stream.push(3, overflow=True)
    stream.push(mic._max_blocks + 5)
    assert mic.overflows == 3 and mic.dropped_blocks == 8
    assert mic.backlog_samples() > 0
    assert mic.drain() > 0 and mic.backlog_samples() == 0


class FakeSource:
    """A scripted source: a list of blocks (None = end), with counters like MicSource's."""

    description = "fake"
    rate = SAMPLE_RATE

    def __init__(self, blocks, backlog=0):
        self.blocks, self.overflows, self.dropped_blocks, self.backlog = list(blocks), 0, 0, backlog

    def read(self, timeout):
        block = self.blocks.pop(0) if self.blocks else None
        if isinstance(block, str):
            time.sleep(timeout)
            return np.zeros(0, np.float32)
        if block is not None:
            self.overflows += 1
        return block

    def backlog_samples(self):
        return self.backlog

    def drain(self):
        dropped, self.backlog = self.backlog, 0
        return dropped

    def close(self):
        pass


class FakeNotifier:
    def __init__(self):
        self.sent: list[str] = []

    def ready(self):
        self.sent.append("READY")

    def watchdog(self):
        self.sent.append("WATCHDOG")

    def watchdog_interval(self):
        return 0.3

    def reloading(self):
        self.sent.append("RELOADING")

    def stopping(self):
        self.sent.append("STOPPING")


class NullSink:
    """Somewhere for events to go (a listener without any sink refuses to start)."""

    def emit(self, event):
        pass

    def close(self):
        pass


def make_listener(monkeypatch, source, config_path=None):
    monkeypatch.setattr("kwspot.listen.open_source", lambda request, settings: source)
    monkeypatch.setattr(registry, "sink_specs", lambda: (SinkSpec("null", {}, lambda cfg, ctx: NullSink()),))
    settings = validate(None)
    settings["sinks"]["console"] = False
    listener = Listener(ListenRequest(input="fake", config_path=config_path), settings)
    listener.notifier = FakeNotifier()
    return listener


def hop():
    return np.zeros(800, np.float32)


def test_watchdog_is_fed_only_while_audio_flows(monkeypatch):
    blocks = [hop() for _ in range(3)] + ["silent"] * 8  # 8 x 0.25 s with no audio
    listener = make_listener(monkeypatch, FakeSource(blocks))
    assert listener.run() == 0
    sent = listener.notifier.sent
    assert sent[0] == "READY" and sent[-1] == "STOPPING"
    assert sent.count("WATCHDOG") == 1  # one ping while audio flowed, none during the 2 s silence


def test_watchdog_is_fed_while_a_lost_input_is_reopened(monkeypatch):
    """Reconnecting with backoff is kwspot recovering by itself: systemd must not kill it for that."""
    source = FakeSource([hop() for _ in range(3)] + ["silent"] * 8)
    source.reconnecting = True  # as a LiveSource says between a loss and the next open
    listener = make_listener(monkeypatch, source)
    assert listener.run() == 0
    assert listener.notifier.sent.count("WATCHDOG") >= 4  # pings go on through the 2 s without audio


def test_overflows_are_logged_at_most_once_a_second(monkeypatch, kwlog):
    listener = make_listener(monkeypatch, FakeSource([hop() for _ in range(50)]))
    listener.run()
    reports = [m for m in kwlog if m.startswith("input trouble")]
    assert len(reports) == 1 and "1 overflows" in reports[0]


def test_falling_behind_skips_to_the_present(monkeypatch, kwlog):
    source = FakeSource([hop(), hop()], backlog=SAMPLE_RATE)  # a second of audio piled up
    listener = make_listener(monkeypatch, source)
    listener.run()
    assert listener.skipped_samples == SAMPLE_RATE and source.backlog == 0
    assert listener.pipeline.t >= 1.0  # time moved on past the skipped audio


def test_sighup_reloads_thresholds_and_refuses_a_bad_config(monkeypatch, tmp_path, kwlog):
    config = tmp_path / "kw.yaml"
    config.write_text("detector:\n  thresholds: {stop: 0.42}\n")
    listener = make_listener(monkeypatch, FakeSource([hop()] * 3), config_path=str(config))
    config.write_text("detector:\n  thresholds: {stop: 0.55}\n")
    signal.raise_signal(signal.SIGHUP)
    listener.run()
    assert listener.pipeline.detector.threshold("stop") == pytest.approx(0.55)
    assert any("configuration reloaded" in m for m in kwlog)

    config.write_text("detector:\n  thresholds: {stop: 7}\n")
    listener.reload()
    assert any("reload refused" in m for m in kwlog)
    assert listener.pipeline.detector.threshold("stop") == pytest.approx(0.55)  # the old one is kept
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL  # run() gave the handlers back


def test_reload_keeps_an_unchanged_socket_and_swaps_a_changed_one(tmp_path):
    from kwspot.sinks import SinkContext, reconcile
    from kwspot.sinks.jsonl import JsonlSink
    from kwspot.sinks.socket import SocketSink

    ctx = SinkContext("test", tty=False)
    old = validate(None)["sinks"] | {"socket": str(tmp_path / "a.sock")}
    sinks = {"socket": (socket_sink := SocketSink(old["socket"]))}
    try:
        same = reconcile(sinks, old, dict(old), ctx)
        assert same == {"socket": socket_sink}
        with_jsonl = reconcile(same, old, old | {"jsonl": True}, ctx)
        assert with_jsonl["socket"] is socket_sink and isinstance(with_jsonl["jsonl"], JsonlSink)
        moved = reconcile(with_jsonl, old | {"jsonl": True}, old | {"socket": str(tmp_path / "b.sock")}, ctx)
        assert list(moved) == ["socket"] and moved["socket"] is not socket_sink
        assert (tmp_path / "b.sock").exists() and not (tmp_path / "a.sock").exists()
    finally:
        for sink in [socket_sink, *locals().get("moved", {}).values()]:
            sink.close()


def test_a_new_socket_that_cannot_open_leaves_the_running_sinks_alone(tmp_path):
    from kwspot.errors import KwspotError
    from kwspot.sinks import SinkContext, reconcile
    from kwspot.sinks.socket import SocketSink

    old = validate(None)["sinks"] | {"socket": str(tmp_path / "a.sock")}
    sinks = {"socket": SocketSink(old["socket"])}
    try:
        with pytest.raises(KwspotError):
            reconcile(sinks, old, old | {"jsonl": True, "socket": str(tmp_path / "no" / "b.sock")},
                      SinkContext("test", tty=False))
        assert (tmp_path / "a.sock").exists()
    finally:
        sinks["socket"].close()


def test_after_a_silent_open_the_next_opens_wait_less_for_audio(fake_sd, kwlog, monkeypatch):
    """A suspended source: the first open waits FIRST_AUDIO_S (a sound server may be starting), the next ones
    only SILENT_AGAIN_S, since PortAudio's capture thread spins on a core while a silent stream is open."""
    monkeypatch.setattr(MicSource, "FIRST_AUDIO_S", 1.0)
    monkeypatch.setattr(MicSource, "SILENT_AGAIN_S", 0.1)
    opened: list[float] = []
    real_start = FakeStream.start
    monkeypatch.setattr(FakeStream, "start", lambda self: (opened.append(time.monotonic()), real_start(self)))
    mic = MicSource(block_ms=50)
    read_until(mic, lambda b: len(opened) == 3)
    first_open_s, second_open_s = opened[1] - opened[0], opened[2] - opened[1]  # silence + backoff (0.1, 0.2 s)
    assert first_open_s >= 1.0 and second_open_s < 0.6, (opened, kwlog)
    assert "audio input open but silent (no audio for 1 s); next try in 0 s" in kwlog
    assert "audio input open but silent (no audio for 0.1 s); next try in 0 s" in kwlog
    FakeStream.instances[-1].push(3)  # the source works again, then falls silent: lost, reopened at once,
    read_until(mic, lambda b: b.size > 0)
    read_until(mic, lambda b: len(opened) == 4)
    read_until(mic, lambda b: len(opened) == 5)  # and that silent open had the long wait again
    assert opened[4] - opened[3] >= 1.0, (opened, kwlog)


def test_a_retry_restarts_portaudio_only_when_devices_or_servers_changed(fake_sd, kwlog, monkeypatch):
    """Each PortAudio restart keeps ~12 KB (alsa-lib): with the device away for a day at one retry every
    30 s that was 37 MB. A retry restarts it only when the device nodes or the sound servers changed."""
    restarts = []
    fake_sd._terminate = lambda: restarts.append(time.monotonic())
    landscape = ["before"]
    monkeypatch.setattr(sources, "audio_landscape", lambda: tuple(landscape))
    mic = MicSource(block_ms=50)
    FakeStream.instances[0].active = False  # the device went away, and its node with it
    FakeStream.fail_open = True
    landscape[:] = ["gone"]
    read_until(mic, lambda b: sum("still unavailable" in m for m in kwlog) >= 3)
    assert len(restarts) == 1  # once for the change, not once a retry
    landscape[:] = ["back"]  # plugged in again
    FakeStream.fail_open = False
    read_until(mic, lambda b: mic.reconnects == 1)
    assert len(restarts) == 2


def test_time_kwspot_spends_stopped_does_not_count_against_a_sound_system_call(tmp_path):
    """SIGSTOP (or a starved machine) while a guarded call runs: the call did not run either, so its time
    limit must not run out; it used to end the daemon with a false 'audio system hung'."""
    import os
    import subprocess
    import sys

    script = ("import sys, time; from kwspot.sources import guarded\n"
              "def call():\n"
              "    print('started', flush=True)\n"
              "    for _ in range(20): time.sleep(0.05)  # 1 s of its own time: a stop does not shorten it\n"
              "    return 'done'\n"
              "print(guarded(call, 'a slow call', 2.0))\n")
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, cwd=os.getcwd())
    assert child.stdout.readline().strip() == "started"
    time.sleep(0.3)
    child.send_signal(signal.SIGSTOP)
    time.sleep(2.5)  # longer than the whole limit
    child.send_signal(signal.SIGCONT)
    out, err = child.communicate(timeout=30)
    assert child.returncode == 0 and out.strip() == "done", err
