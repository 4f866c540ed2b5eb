"""`kwspot wyoming` as Home Assistant uses it: the real program, a `wyoming` client over TCP and stdio.

Speech goes in as Home Assistant sends it (16 kHz, 16-bit mono, 1024-sample chunks). What the service
detects must be exactly what `kwspot listen` detects on the same audio (same resampler, ring, model and
detector), and on real command clips it must be the right words.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import soxr
from clips import command_stream, pcm16
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncClient, AsyncTcpClient
from wyoming.event import Event, async_write_event
from wyoming.info import Describe, Info
from wyoming.wake import Detect, Detection, NotDetected

from conftest import assert_one_line_error, espeak, kwspot_cmd, run_kwspot, wait_for, write_stream
from kwspot import KEYWORDS
from kwspot.frontend import load_audio

HA_RATE = 16000
CHUNK = 1024  # samples per audio-chunk, as Home Assistant sends them
READ_S = 30.0  # deadline for any one answer (a failure bound, not a measurement)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`kwspot wyoming` as a subprocess, its stderr collected by a thread."""

    def __init__(self, *args: str, uri: str | None = None, ready: str = "serving Wyoming") -> None:
        self.port = free_port()
        self.uri = uri or f"tcp://127.0.0.1:{self.port}"
        env = {**os.environ, "KWSPOT_CONFIG": "", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            kwspot_cmd("wyoming", "--uri", self.uri, *args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=env,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._collect, daemon=True).start()
        wait_for(lambda: ready in self.log or self.proc.poll() is not None, 60, "the server to start")
        assert self.proc.poll() is None, self.log

    def _collect(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def stop(self, signalled: bool = False) -> int:
        if not signalled:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        wait_for(lambda: self.proc.stderr.closed or "stopped" in self.log, 5, "the last log lines")
        return code


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    assert s.stop() == 0, s.log
    assert "Traceback" not in s.log, s.log


async def send_audio(client: AsyncClient, pcm: bytes, rate: int = HA_RATE, width: int = 2, channels: int = 1) -> None:
    await client.write_event(AudioStart(rate=rate, width=width, channels=channels).event())
    step = CHUNK * width * channels
    for i in range(0, len(pcm), step):
        chunk = AudioChunk(rate=rate, width=width, channels=channels, audio=pcm[i : i + step])
        await client.write_event(chunk.event())


async def session(client: AsyncClient, pcm: bytes, names: list[str] | None = None, **fmt) -> list[Event]:
    """detect, stream, audio-stop; then describe as a barrier: every answer to the stream comes before `info`."""
    await client.write_event(Detect(names=names).event())
    await send_audio(client, pcm, **fmt)
    await client.write_event(AudioStop().event())
    await client.write_event(Describe().event())
    answers = []
    while True:
        event = await asyncio.wait_for(client.read_event(), READ_S)
        assert event is not None, "the server closed the connection"
        if Info.is_type(event.type):
            return answers
        answers.append(event)


def over_tcp(port: int, pcm: bytes, names: list[str] | None = None, **fmt) -> list[Event]:
    async def go() -> list[Event]:
        async with AsyncTcpClient("127.0.0.1", port) as client:
            return await session(client, pcm, names, **fmt)

    return asyncio.run(go())


def detections(answers: list[Event]) -> list[tuple[str, int]]:
    found = [Detection.from_event(e) for e in answers if Detection.is_type(e.type)]
    return [(d.name, d.timestamp) for d in found]


def listen_events(tmp_path: Path, pcm: bytes, rate: int = HA_RATE) -> list[tuple[str, int]]:
    """What `kwspot listen` finds in the same audio, as (name, ms)."""
    path = tmp_path / "same.wav"
    soundfile.write(path, np.frombuffer(pcm, dtype="<i2"), rate, subtype="PCM_16")
    result = run_kwspot("listen", "--input", str(path), "--fast", "--format", "jsonl")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    return [(e["keyword"], round(e["t"] * 1000)) for e in events]


@pytest.fixture(scope="module")
def real_stream(speech_commands, tmp_path_factory):
    """Two testing-list clips of every command, shuffled, 1.5 s apart: (words, spans in s, 16 kHz PCM)."""
    words, spans, audio = command_stream(speech_commands, tmp_path_factory.mktemp("wyoming") / "stream.wav")
    return words, spans, pcm16(audio)


def word_at(ms: int, words: list[str], spans: list[tuple[float, float]]) -> str | None:
    """The clip a detection belongs to: it fires at most 1.5 s (the gap) after the clip ends."""
    t = ms / 1000
    for word, (start, end) in zip(words, spans, strict=True):
        if start < t <= end + 1.5:
            return word
    return None


def test_describe_lists_the_models_keywords(server):
    async def go() -> Info:
        async with AsyncTcpClient("127.0.0.1", server.port) as client:
            await client.write_event(Describe().event())
            return Info.from_event(await asyncio.wait_for(client.read_event(), READ_S))

    info = asyncio.run(go())
    assert [p.name for p in info.wake] == ["kwspot"]
    models = info.wake[0].models
    assert [m.name for m in models] == list(KEYWORDS)
    assert all(m.phrase == m.name and m.languages == ["en"] and m.installed for m in models)
    assert all("Speech Commands" in m.attribution.name and m.version for m in models)


def test_real_commands_are_detected_as_listen_detects_them(server, real_stream, tmp_path):
    words, spans, pcm = real_stream
    got = detections(over_tcp(server.port, pcm))
    assert got == listen_events(tmp_path, pcm)
    right = {ms for name, ms in got if word_at(ms, words, spans) == name}
    assert len(right) >= 0.7 * len(words), (got, words)
    assert len(got) - len(right) <= 2, got
    assert '"model":"kwspot"' in server.log  # each detection is logged as the event JSON


def test_detection_arrives_while_streaming(server, real_stream):
    """The detection comes from the stream itself, before any audio-stop: within 5 s of the last chunk."""
    words, spans, pcm = real_stream
    reference = detections(over_tcp(server.port, pcm))
    name, ms = reference[0]
    upto = pcm[: int((ms / 1000 + 0.5) * HA_RATE) * 2]

    async def go() -> Event:
        async with AsyncTcpClient("127.0.0.1", server.port) as client:
            await client.write_event(Detect(names=[name]).event())
            await send_audio(client, upto)
            return await asyncio.wait_for(client.read_event(), 5.0)

    first = Detection.from_event(asyncio.run(go()))
    assert (first.name, first.timestamp) == (name, ms)


def test_detect_names_limit_the_keywords(server, real_stream):
    words, spans, pcm = real_stream
    everything = detections(over_tcp(server.port, pcm))
    for chosen in (["go"], ["yes", "no"]):
        only = detections(over_tcp(server.port, pcm, names=chosen))
        assert only and {name for name, _ in only} <= set(chosen)
        assert {d for d in everything if d[0] in chosen} <= set(only)
    assert detections(over_tcp(server.port, pcm, names=["okay_nabu"])) == []
    assert "okay_nabu" in server.log
    go_only = detections(over_tcp(server.port, pcm, names=["go"]))
    assert detections(over_tcp(server.port, pcm, names="go")) == go_only  # a string is one name, not 'g', 'o'


def test_any_rate_width_and_channels_go_through_the_same_resampler(server, real_stream):
    words, spans, pcm = real_stream
    cut = pcm[: 12 * HA_RATE * 2]
    base = [name for name, _ in detections(over_tcp(server.port, cut))]
    assert base, "the first 12 s hold commands"
    mono16 = np.frombuffer(cut, dtype="<i2").astype(np.float32) / 32768
    audio48 = soxr.resample(mono16, HA_RATE, 48000)
    stereo32 = (np.repeat(audio48[:, None], 2, axis=1) * (2**31 - 1)).astype("<i4").tobytes()
    got = detections(over_tcp(server.port, stereo32, rate=48000, width=4, channels=2))
    assert [name for name, _ in got] == base
    audio22 = soxr.resample(mono16, HA_RATE, 22050)
    unsigned8 = np.clip(audio22 * 128 + 128, 0, 255).astype(np.uint8).tobytes()
    got = detections(over_tcp(server.port, unsigned8, rate=22050, width=1, channels=1))
    assert {name for name, _ in got} <= set(base)


def test_other_speech_is_not_detected(server, tmp_path):
    text = "the weather today is pleasant and the garden looks lovely in the morning light"
    pcm = pcm16(load_audio(espeak(text, tmp_path / "other.wav")))
    answers = over_tcp(server.port, pcm)
    assert [e.type for e in answers] == ["not-detected"]
    assert NotDetected.is_type(answers[0].type)


def test_espeak_speech_is_served_as_listen_serves_it(server, tmp_path):
    clips = [load_audio(espeak(w, tmp_path / f"{w}.wav", voice="en-gb-x-rp", speed=150)) for w in KEYWORDS]
    write_stream(tmp_path / "tts.wav", clips)
    pcm = pcm16(load_audio(tmp_path / "tts.wav"))
    answers = over_tcp(server.port, pcm)
    assert detections(answers) == listen_events(tmp_path, pcm)
    assert bool(detections(answers)) != any(NotDetected.is_type(e.type) for e in answers)


async def _garbage(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    writer.write_eof()  # a cut-off event must not leave the server waiting for the rest
    await writer.drain()
    try:
        rest = await asyncio.wait_for(reader.read(), READ_S)  # the server closes this connection
    except ConnectionResetError:  # ... with our unread garbage still in its buffer
        rest = b""
    writer.close()
    return rest


async def _vanish(port: int, pcm: bytes) -> None:
    """Stream half a session, then reset the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await async_write_event(AudioStart(rate=HA_RATE, width=2, channels=1).event(), writer)
    await async_write_event(AudioChunk(rate=HA_RATE, width=2, channels=1, audio=pcm[: 40 * CHUNK * 2]).event(), writer)
    writer.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
    writer.transport.abort()


GARBAGE = [
    b"\x00\xff\xfe this is not json\n",
    b'["a", "list"]\n',
    b'{"type": "audio-chunk", "data": {"rate": "fast", "width": 2, "channels": 1}}\n',
    b'{"type": "audio-start", "data": {"rate": 16000, "width": 7, "channels": 1}}\n',
    b'{"type": "audio-chunk", "data": {"rate": 16000, "width": 2, "channels": 1}, "payload_length": 3}\nabc',
    b'{"type": "describe", "payload_length": 100}\nshort',
    b"x" * 200_000,  # one endless line
]


def test_garbage_and_vanishing_clients_close_only_their_own_connection(server, real_stream):
    words, spans, pcm = real_stream
    cut = pcm[: 12 * HA_RATE * 2]
    alone = detections(over_tcp(server.port, cut))

    async def together() -> list[list[Event]]:
        async def good() -> list[Event]:
            async with AsyncTcpClient("127.0.0.1", server.port) as client:
                return await session(client, cut)

        jobs = [good() for _ in range(3)]
        jobs += [_garbage(server.port, g) for g in GARBAGE] + [_vanish(server.port, pcm) for _ in range(3)]
        results = await asyncio.gather(*jobs)
        return results[:3]

    for answers in asyncio.run(together()):
        assert detections(answers) == alone
    assert asyncio.run(_garbage(server.port, GARBAGE[0])) == b""
    assert detections(over_tcp(server.port, cut)) == alone  # still serving
    assert server.proc.poll() is None
    assert "bad request" in server.log and "Traceback" not in server.log


@pytest.mark.parametrize("header", [
    b'{"type": "audio-chunk", "data": {"rate": 16000, "width": 2, "channels": 1}, "payload_length": 4000000000}\n',
    b'{"type": "describe", "data_length": 1000000000}\n',
    b'{"type": "audio-chunk", "payload_length": -5}\n',
])
def test_a_client_claiming_a_huge_event_is_cut_off_at_once(server, header):
    """Not buffered until gigabytes arrive (one client could take the server's memory): closed on the header."""
    async def claim() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(header + bytes(65536))  # the start of what it claims, and the connection stays open
        await writer.drain()
        try:
            return await asyncio.wait_for(reader.read(), READ_S)  # the server hangs up without waiting
        except ConnectionResetError:
            return b""
        finally:
            writer.close()

    before = server.log.count("bad request")
    assert asyncio.run(claim()) == b""
    wait_for(lambda: server.log.count("bad request") > before, 5, "the bad request in the log")
    assert "_length" in server.log.splitlines()[-1] and server.proc.poll() is None


def test_past_the_client_limit_a_connection_is_closed_at_once_and_served_again_later(server):
    """At most MAX_CLIENTS connections (each may hold a buffered event); one more is closed, counted, logged."""
    from kwspot.wyoming_server import MAX_CLIENTS

    async def crowd() -> tuple[bytes, bool]:
        held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(MAX_CLIENTS)]
        await asyncio.sleep(0.5)  # all accepted and counted by the server
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            extra = await asyncio.wait_for(reader.read(), READ_S)  # closed without an answer
        except ConnectionResetError:
            extra = b""
        writer.close()
        for _, w in held:
            w.close()
        await asyncio.sleep(0.5)
        async with AsyncTcpClient("127.0.0.1", server.port) as client:  # room again
            await client.write_event(Describe().event())
            answer = await asyncio.wait_for(client.read_event(), READ_S)
        return extra, answer is not None and Info.is_type(answer.type)

    extra, served = asyncio.run(crowd())
    assert extra == b"" and served
    wait_for(lambda: "the most served at once" in server.log, 5, "the refusal in the log")


class PipeClient(AsyncClient):
    """A wyoming client over a subprocess's stdin and stdout."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        super().__init__()
        self._reader, self._writer = proc.stdout, proc.stdin


def test_stdio(tmp_path, real_stream):
    words, spans, pcm = real_stream
    cut = pcm[: 12 * HA_RATE * 2]

    async def go() -> tuple[Info, list[Event], int, bytes]:
        env = {**os.environ, "KWSPOT_CONFIG": ""}
        proc = await asyncio.create_subprocess_exec(
            *kwspot_cmd("wyoming", "--uri", "stdio://"), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        )
        client = PipeClient(proc)
        await client.write_event(Describe().event())
        info = Info.from_event(await asyncio.wait_for(client.read_event(), 60))
        answers = await session(client, cut)
        proc.stdin.close()
        code = await asyncio.wait_for(proc.wait(), READ_S)
        return info, answers, code, await proc.stderr.read()

    info, answers, code, stderr = asyncio.run(go())
    assert [m.name for m in info.wake[0].models] == list(KEYWORDS)
    assert code == 0 and b"Traceback" not in stderr, stderr
    assert detections(answers) == listen_events(tmp_path, cut)


def test_unix_socket_and_a_clean_exit_on_sigterm(tmp_path):
    path = tmp_path / "wyoming.sock"
    s = Server(uri=f"unix://{path}")

    async def go() -> Info:
        reader, writer = await asyncio.open_unix_connection(str(path))
        await async_write_event(Describe().event(), writer)
        from wyoming.event import async_read_event

        info = Info.from_event(await asyncio.wait_for(async_read_event(reader), READ_S))
        await async_write_event(AudioStart(rate=HA_RATE, width=2, channels=1).event(), writer)
        s.proc.send_signal(signal.SIGTERM)  # with a client connected, mid-stream
        assert await asyncio.wait_for(reader.read(), READ_S) == b""
        return info

    assert asyncio.run(go()).wake[0].name == "kwspot"
    assert s.stop(signalled=True) == 0, s.log
    assert not path.exists() and "Traceback" not in s.log and "stopped" in s.log


@pytest.mark.parametrize(
    "args, culprit",
    [
        (["--uri", "http://localhost:10400"], "--uri"),
        (["--uri", "tcp://localhost"], "port"),
        (["--uri", "tcp://localhost:99999"], "port"),
        (["--uri", "unix://"], "--uri"),
        (["--uri", "unix:///tmp/kw.sock", "--zeroconf"], "--zeroconf"),
        (["--uri", "unix://run/kw.sock"], "'run' would be ignored"),  # two slashes: a host, and /kw.sock
        (["--uri", "tcp://127.0.0.1:10400/some/path"], "'/some/path' would be ignored"),
        (["--uri", "unix:///tmp/kw.sock?mode=0600"], "'mode=0600' would be ignored"),
        (["--threshold", "2"], "--threshold"),
        (["--model", "/nonexistent.tflite"], "/nonexistent.tflite"),
    ],
)
def test_bad_arguments_give_one_line(args, culprit):
    assert_one_line_error(run_kwspot("wyoming", *args, timeout=60), culprit)


def test_a_port_in_use_or_a_file_in_the_way_gives_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_kwspot("wyoming", "--uri", f"tcp://127.0.0.1:{port}", timeout=60)
    assert_one_line_error(result, f"127.0.0.1:{port}")
    (tmp_path / "file").write_text("mine")
    assert_one_line_error(run_kwspot("wyoming", "--uri", f"unix://{tmp_path / 'file'}", timeout=60), "not a socket")
    assert (tmp_path / "file").read_text() == "mine"


def test_zeroconf_announces_the_service_for_home_assistant():
    zeroconf = pytest.importorskip("zeroconf", reason="pip install 'kwspot[zeroconf]'")
    name = f"kwspot-test-{os.getpid()}"
    try:
        s = Server("--zeroconf", name)
    except AssertionError as exc:
        if "cannot announce" in str(exc):
            pytest.skip(f"no multicast here: {exc}")
        raise
    try:
        zc = zeroconf.Zeroconf()
        info = zc.get_service_info("_wyoming._tcp.local.", f"{name}._wyoming._tcp.local.", timeout=10000)
        zc.close()
        assert info is not None and info.port == s.port and "127.0.0.1" in info.parsed_addresses()
    finally:
        assert s.stop() == 0, s.log


def test_sighup_rereads_the_detector_settings_for_new_streams(tmp_path, real_stream):
    words, spans, pcm = real_stream
    cut = pcm[: 12 * HA_RATE * 2]
    config = tmp_path / "config.yaml"
    config.write_text("detector: {min_consecutive: 50}\n")  # 5 s above threshold: no word is that long
    s = Server("--config", str(config))
    try:
        assert detections(over_tcp(s.port, cut)) == []
        config.write_text("detector: {min_consecutive: 2}\n")
        s.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reloaded" in s.log, 30, "the reload")
        assert detections(over_tcp(s.port, cut))
        config.write_text("detector: {min_consecutive: many}\n")
        s.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload refused" in s.log, 30, "the refusal")
        assert detections(over_tcp(s.port, cut))  # still serving, with the settings it had
    finally:
        assert s.stop() == 0, s.log


def test_a_reload_that_fails_any_way_is_refused_in_the_log_and_the_server_reports_ready(caplog):
    """Not only KwspotError: whatever reading the new file raises, systemd hears READY=1 again."""
    from kwspot.wyoming_server import _reload

    class Notifier:
        def __init__(self) -> None:
            self.said: list[str] = []

        def reloading(self) -> None:
            self.said.append("reloading")

        def ready(self) -> None:
            self.said.append("ready")

    class Service:
        detector = "running"

    def bad_settings():
        "/tmp/\ud800".encode()  # what a lone surrogate in a path setting raises

    service, notifier = Service(), Notifier()
    with caplog.at_level("ERROR"):
        _reload(service, bad_settings, notifier)
    assert "reload refused, keeping the running configuration: UnicodeEncodeError" in caplog.text
    assert service.detector == "running" and notifier.said == ["reloading", "ready"]


def test_idle_connections_make_room_for_a_client_that_talks(server):
    """MAX_CLIENTS connections that send half an event and stop cannot lock Home Assistant out."""
    from kwspot.wyoming_server import EVICT_IDLE_S, MAX_CLIENTS

    async def crowd() -> bool:
        held = []
        for _ in range(MAX_CLIENTS):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b'{"type":"aud')  # half a header, then nothing
            held.append(writer)
        await asyncio.sleep(EVICT_IDLE_S + 1.0)
        try:
            async with AsyncTcpClient("127.0.0.1", server.port) as client:
                await client.write_event(Describe().event())
                answer = await asyncio.wait_for(client.read_event(), READ_S)
        finally:
            for w in held:
                w.close()
        return answer is not None and Info.is_type(answer.type)

    assert asyncio.run(crowd())


def test_names_a_client_sends_are_logged_once_escaped_and_short():
    forged = "x\n19:40:00 INFO client 7: {\"keyword\":\"stop\"}\n\x1b]0;owned\x07" + "n" * 60000
    server = Server()  # its own: the budget of log lines is the server's

    async def pester() -> None:
        async with AsyncTcpClient("127.0.0.1", server.port) as client:
            for _ in range(500):
                await client.write_event(Detect(names=[forged]).event())
            await client.write_event(Describe().event())
            await asyncio.wait_for(client.read_event(), READ_S)

    try:
        asyncio.run(pester())
    finally:
        assert server.stop() == 0
    logged = server.log
    assert logged.count("asked for") == 1, logged[:2000]
    assert "\x1b" not in logged and "\n19:40:00 INFO client 7" not in logged and len(logged) < 2000, logged[:2000]


def test_an_audio_chunk_of_minutes_is_refused_and_stalls_nobody(server):
    """1 MiB of 1 kHz 8-bit audio is 17 minutes of model work: refused at once, the other clients served."""

    async def hog_then_ask() -> float:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        chunk = AudioChunk(rate=1000, width=1, channels=1, audio=bytes([128]) * (1 << 20)).event()
        await async_write_event(chunk, writer)
        closed = await asyncio.wait_for(reader.read(), READ_S)
        writer.close()
        started = asyncio.get_running_loop().time()
        async with AsyncTcpClient("127.0.0.1", server.port) as client:
            await client.write_event(Describe().event())
            await asyncio.wait_for(client.read_event(), READ_S)
        assert closed == b""
        return asyncio.get_running_loop().time() - started

    assert asyncio.run(hog_then_ask()) < 5.0  # a bound for a loaded machine; the old server never closed it


def test_a_flood_of_bad_requests_is_logged_at_a_bounded_rate():
    from kwspot.wyoming_server import COMPLAINT_BURST

    server = Server()  # its own: the budget of log lines is the server's
    try:
        started = time.monotonic()
        for _ in range(3 * COMPLAINT_BURST):
            assert asyncio.run(_garbage(server.port, GARBAGE[0])) == b""
        took = time.monotonic() - started
    finally:
        assert server.stop() == 0
    logged = [line for line in server.lines if "bad request" in line]
    assert COMPLAINT_BURST <= len(logged) <= COMPLAINT_BURST + took + 1, (took, logged)
    held = sum(int(n) for n in re.findall(r"(\d+) more client warnings not logged", server.log))
    assert held == 3 * COMPLAINT_BURST - len(logged), server.log


@pytest.mark.parametrize("end", ["stdin", "stdout"])
def test_stdio_on_a_regular_file_is_one_line(tmp_path, end):
    request = tmp_path / "describe.jsonl"
    request.write_text('{"type": "describe"}\n')
    out = tmp_path / "out.jsonl"
    with open(request) as stdin, open(out, "w") as stdout:
        result = subprocess.run(kwspot_cmd("wyoming", "--uri", "stdio://"), timeout=60, text=True,
                                stdin=stdin if end == "stdin" else subprocess.PIPE,
                                stdout=stdout if end == "stdout" else subprocess.PIPE, stderr=subprocess.PIPE,
                                env={**os.environ, "KWSPOT_CONFIG": ""})
    assert_one_line_error(result, "stdio://", "not files")


@pytest.mark.parametrize("sent, ended", [('{"type": "audio-start", "data": {"rate": "x"}}\n', "closed: "),
                                         ('{"type": "describe", "data_length": 99}\n{"x', "vanished")])
def test_stdio_whose_client_sends_a_bad_or_cut_event_exits_non_zero_saying_so(sent, ended):
    """Over stdio the server has one client: a stream it had to close is a failed run, not a clean end."""
    result = subprocess.run(kwspot_cmd("wyoming", "--uri", "stdio://"), input=sent, timeout=60, text=True,
                            capture_output=True, env={**os.environ, "KWSPOT_CONFIG": ""})
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert f"stdio: the client's stream {ended}" in result.stderr.splitlines()[-1], result.stderr


def test_stdio_whose_client_ends_its_input_cleanly_exits_0():
    result = subprocess.run(kwspot_cmd("wyoming", "--uri", "stdio://"), input='{"type": "describe"}\n', timeout=60,
                            text=True, capture_output=True, env={**os.environ, "KWSPOT_CONFIG": ""})
    assert result.returncode == 0, result.stderr
    assert '"type": "info"' in result.stdout


def test_stdio_on_dev_null_is_one_line():
    with open(os.devnull, "rb") as null:
        result = subprocess.run(kwspot_cmd("wyoming", "--uri", "stdio://"), timeout=60, text=True, stdin=null,
                                capture_output=True, env={**os.environ, "KWSPOT_CONFIG": ""})
    assert_one_line_error(result, "stdio://", "not files or devices")


def test_a_socket_path_through_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("mine")
    result = run_kwspot("wyoming", "--uri", f"unix://{tmp_path / 'file' / 'x.sock'}", timeout=60)
    assert_one_line_error(result, "x.sock: cannot make a socket there (Not a directory)")


def test_a_client_that_never_reads_does_not_hold_sigterm():
    """Its answers queue up unread; the stop closes the connection by force instead of waiting for the peer."""
    s = Server()
    flood = socket.create_connection(("127.0.0.1", s.port))
    try:
        flood.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        flood.sendall(b'{"type": "describe"}\n' * 3000)  # some 3 MB of answers, never read
        time.sleep(1.0)
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(timeout=20) == 0, s.log
    finally:
        flood.close()
        if s.proc.poll() is None:
            s.proc.kill()


def test_a_stopping_server_leaves_the_socket_of_its_successor(tmp_path):
    path = tmp_path / "w.sock"
    first = Server(uri=f"unix://{path}")
    path.unlink()  # (an operator's mistake) and a second server on the same path
    second = Server(uri=f"unix://{path}")
    try:
        assert first.stop() == 0, first.log
        assert path.is_socket()
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(path))  # the second server is still reachable
    finally:
        assert second.stop() == 0, second.log
    assert not path.exists()


def test_refusals_not_yet_told_are_told_at_exit(caplog):
    from kwspot.detector import DetectorSettings
    from kwspot.model import Model, bundled_model_path
    from kwspot.wyoming_server import MAX_CLIENTS, WakeService

    service = WakeService(Model(bundled_model_path()), DetectorSettings(), 0.1)
    for _ in range(86):
        service.refused.add()
        service.refused.take(time.monotonic())  # the first is told at once, the next ones wait for the interval
    with caplog.at_level("WARNING"):
        service.flush_complaints()
    assert f"85 more clients refused (86 in all): {MAX_CLIENTS} is the most served at once" in caplog.text


def test_the_models_verifier_is_loaded_as_listen_loads_it(tmp_path):
    """A sidecar naming a verifier head: wyoming refuses a missing head in one line, as listen does."""
    from kwspot.model import bundled_model_path

    for name in ("kwspot.tflite", "kwspot.json"):
        shutil.copy(bundled_model_path().with_name(name), tmp_path / name)
    meta = json.loads((tmp_path / "kwspot.json").read_text())
    meta["verifier"] = {"head": "nothere.npz"}
    (tmp_path / "kwspot.json").write_text(json.dumps(meta))
    result = run_kwspot("wyoming", "--uri", "tcp://127.0.0.1:0", "--model", str(tmp_path / "kwspot.tflite"),
                        timeout=60)
    assert_one_line_error(result, "nothere.npz", "verifier head missing")


def test_a_models_verifier_runs_in_wyoming_too(tmp_path):
    pytest.importorskip("pyopen_wakeword", reason="pyopen-wakeword is not installed")
    from kwspot.model import bundled_model_path

    for name in ("kwspot.tflite", "kwspot.json", "kwspot.verifier.npz"):
        shutil.copy(bundled_model_path().with_name(name), tmp_path / name)
    meta = json.loads((tmp_path / "kwspot.json").read_text())
    meta["verifier"] = {"head": "kwspot.verifier.npz"}
    (tmp_path / "kwspot.json").write_text(json.dumps(meta))
    s = Server("--model", str(tmp_path / "kwspot.tflite"))
    try:
        assert "verifier kwspot.verifier.npz checks every event" in s.log, s.log
    finally:
        assert s.stop() == 0, s.log
