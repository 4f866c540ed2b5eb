"""The MQTT sink against a real mosquitto broker and a real mosquitto_sub subscriber."""

from __future__ import annotations

import json
import logging
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
from broker import Broker, Subscriber, need_mosquitto
from clips import command_stream, pcm16
from daemon import Daemon, write_config

from conftest import assert_one_line_error, run_kwspot, wait_for
from kwspot.errors import KwspotError
from kwspot.events import Event
from kwspot.frontend import SAMPLE_RATE
from kwspot.sinks import mqtt as mqtt_module
from kwspot.sinks.mqtt import MqttSink, check_mqtt

WORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]


def events(n: int, start: int = 0) -> list[Event]:
    return [Event(WORDS[i % len(WORDS)], 0.9, float(i)) for i in range(start, start + n)]


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path / "broker")
    yield b
    b.stop()


@pytest.fixture
def logs(caplog):
    caplog.set_level(logging.DEBUG, logger="kwspot")
    return caplog


def payloads(sub: Subscriber) -> list[dict]:
    return [json.loads(p) for _, p in sub.messages]


def test_every_event_reaches_a_subscriber_as_json_on_the_site_topic(broker):
    sub = Subscriber(broker, "kwspot/#")
    sink = MqttSink("127.0.0.1", broker.port, site="kitchen")
    sent = events(25)
    for e in sent:
        sink.emit(e)
    wait_for(lambda: len(sub.messages) == len(sent), 15, "every event")
    sink.close()
    assert {t for t, _ in sub.messages} == {"kwspot/kitchen/detected"}
    assert payloads(sub) == [e.to_dict() for e in sent]
    assert sink.dropped == 0 and sink.published == len(sent)
    sub.stop()


def test_hermes_mode_publishes_rhasspys_hotword_message(broker):
    sub = Subscriber(broker, "hermes/hotword/+/detected")
    sink = MqttSink("127.0.0.1", broker.port, site="default", hermes=True, model_id="kwspot",
                    model_version="v1", thresholds={"stop": 0.92})
    sink.emit(Event("stop", 0.97, 3.2))
    sink.emit(Event("go", 0.91, 5.0))
    wait_for(lambda: len(sub.messages) == 2, 15, "two hotword messages")
    sink.close()
    (t1, p1), (t2, _) = sub.messages
    assert (t1, t2) == ("hermes/hotword/stop/detected", "hermes/hotword/go/detected")
    message = json.loads(p1)
    assert message["modelId"] == "kwspot" and message["modelVersion"] == "v1" and message["siteId"] == "default"
    assert message["currentSensitivity"] == pytest.approx(0.08)
    assert {"modelType", "sessionId", "sendAudioCaptured", "lang"} <= set(message)
    sub.stop()


def test_a_broker_restart_loses_nothing_at_qos_1(broker, logs):
    sub = Subscriber(broker, "kwspot/#", "kwspot-test-sub")  # persistent: the broker keeps its messages
    sink = MqttSink("127.0.0.1", broker.port, qos=1, site="pi")
    sent = events(30)
    for e in sent[:10]:
        sink.emit(e)
    wait_for(lambda: len(sub.messages) == 10, 15, "the first ten")
    broker.stop()
    wait_for(lambda: "lost the broker" in logs.text, 15, "the sink to notice")
    for e in sent[10:20]:  # the broker is down: emit returns at once, events wait in the queue
        sink.emit(e)
    broker.start()
    for e in sent[20:]:
        sink.emit(e)
    wait_for(lambda: len({p["t"] for p in payloads(sub)}) == 30, 30, "all thirty after the restart")
    sink.close()
    assert {p["t"] for p in payloads(sub)} == {e.t for e in sent}  # nothing lost (QoS 1 may send one twice)
    assert sink.dropped == 0
    assert f"connected to 127.0.0.1:{broker.port} again" in logs.text
    sub.stop()


def test_a_full_queue_drops_the_oldest_counts_and_logs_them(broker, logs):
    sub = Subscriber(broker, "kwspot/#", "kwspot-test-sub2")
    broker.stop()
    sink = MqttSink("127.0.0.1", broker.port, qos=1, queue=5)
    sent = events(12)
    for e in sent:
        sink.emit(e)
    assert sink.dropped == 7
    assert "1 event dropped" in logs.text  # at once for the first, then at most every few seconds
    broker.start()
    wait_for(lambda: len(sub.messages) >= 5, 30, "the five newest")
    sink.close()
    assert "7 in all" in logs.text
    assert [p["t"] for p in payloads(sub)] == [e.t for e in sent[7:]]
    sub.stop()


def test_a_broker_that_never_answers_never_stalls_the_caller(logs):
    with socket.socket() as silent:  # accepts TCP connections (backlog) but never speaks MQTT
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        sink = MqttSink("127.0.0.1", silent.getsockname()[1], queue=50)
        for e in events(1000):
            sink.emit(e)
        assert sink.dropped == 950 and sink.published == 0
        sink.close(linger_s=0.5)
    assert "50 queued events not sent at exit" in logs.text and "1000 in all" in logs.text  # and the 950


def test_nothing_listening_is_logged_and_retried(logs):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sink = MqttSink("127.0.0.1", port)
    sink.emit(events(1)[0])
    wait_for(lambda: "unreachable (Connection refused)" in logs.text, 15, "a log line")
    sink.close(linger_s=0.1)
    assert sink.dropped == 1
    assert f"1 queued event not sent at exit (broker at 127.0.0.1:{port} away); 1 in all" in logs.text
    assert "queue of" not in logs.text  # the queue was never full


def test_paho_s_own_messages_stay_out_of_the_log(logs):
    """paho's "Client is not connected" while the broker is away: debug only, not an ERROR every few seconds."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sink = MqttSink("127.0.0.1", port)
    wait_for(lambda: "Client is not connected" in logs.text, 15, "paho's complaint")
    sink.close(linger_s=0.1)
    paho = [r for r in logs.records if "Client is not connected" in r.getMessage()]
    assert {(r.name, r.levelno) for r in paho} == {("kwspot", logging.DEBUG)}


def test_a_peer_that_is_no_mqtt_broker_is_logged_with_the_reason(logs, monkeypatch):
    """One that answers HTTP and hangs up; one that never answers (CONNACK_TIMEOUT_S cut to 1 s)."""
    monkeypatch.setattr(mqtt_module, "CONNACK_TIMEOUT_S", 1)
    with socket.socket() as http, socket.socket() as silent:
        for s in (http, silent):
            s.bind(("127.0.0.1", 0))
            s.listen(8)

        def answer() -> None:
            with http.accept()[0] as c:
                c.recv(100)
                c.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")

        threading.Thread(target=answer, daemon=True).start()
        sinks = [MqttSink("127.0.0.1", s.getsockname()[1]) for s in (http, silent)]
        wait_for(lambda: "closed the connection before CONNACK" in logs.text, 15, "the HTTP server's hang-up")
        wait_for(lambda: "sent no CONNACK within 1 s" in logs.text, 15, "the silent server's silence")
        for sink in sinks:
            sink.close(linger_s=0.1)
    assert "unreachable" not in logs.text


def test_a_certificate_that_does_not_verify_is_logged_with_the_reason(tmp_path, logs):
    need_mosquitto()
    ca, cert, key = make_certificates(tmp_path)
    tls = Broker(tmp_path / "broker", extra=f"cafile {ca}\ncertfile {cert}\nkeyfile {key}\n")
    try:
        sink = MqttSink("127.0.0.1", tls.port, tls=True)  # the system's CAs: they never signed this one
        wait_for(lambda: "failed TLS verification (" in logs.text, 15, "the verification error")
        sink.close(linger_s=0.1)
        assert "unreachable" not in logs.text
    finally:
        tls.stop()


def test_a_publish_that_raises_loses_that_event_only(broker, logs):
    """paho refuses a topic (a keyword that is no UTF-8): counted, logged once, and the next events still go out."""
    sub = Subscriber(broker, "hermes/hotword/+/detected")
    sink = MqttSink("127.0.0.1", broker.port, hermes=True)
    for keyword in ("\ud800", "\udc80", "\ud800", "go"):
        sink.emit(Event(keyword, 0.9, 1.0))
    wait_for(lambda: sub.messages, 15, "the good event")
    sink.close()
    assert [t for t, _ in sub.messages] == ["hermes/hotword/go/detected"]
    assert sink.dropped == 3 and sink.published == 1 and sink._thread.is_alive() is False
    drops = [r.getMessage() for r in logs.records if "failed: UnicodeEncodeError" in r.getMessage()]
    assert len(drops) == 2 and "1 event dropped" in drops[0] and "2 events dropped" in drops[1]  # once, then at most
    assert "3 in all" in drops[1] and "Traceback" not in logs.text  # every few seconds (here: at close)


@pytest.mark.parametrize("name", ["site", "topic", "client_id"])
def test_text_mqtt_cannot_carry_is_refused(name):
    with pytest.raises(KwspotError, match=f"sinks.mqtt.{name} must be UTF-8 text"):
        check_mqtt("sinks.mqtt", {name: "kw\ud800"})


def test_username_and_password_file(tmp_path, logs):
    need_mosquitto()
    passwords = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwords), "kw", "s3cret"], check=True, timeout=10)
    broker = Broker(tmp_path / "broker", extra=f"password_file {passwords}\n", anonymous=False,
                    client_args=("-u", "kw", "-P", "s3cret"))
    try:
        sub = Subscriber(broker, "kwspot/#")
        (tmp_path / "good").write_text("s3cret\n")
        (tmp_path / "bad").write_text("guess\n")
        good = MqttSink("127.0.0.1", broker.port, username="kw", password_file=str(tmp_path / "good"))
        bad = MqttSink("127.0.0.1", broker.port, username="kw", password_file=str(tmp_path / "bad"))
        good.emit(Event("stop", 0.9, 1.0))
        bad.emit(Event("go", 0.9, 2.0))
        wait_for(lambda: sub.messages and "refused" in logs.text, 15, "one in, one refused")
        good.close()
        bad.close(linger_s=0.1)
        assert [p["keyword"] for p in payloads(sub)] == ["stop"]
        assert "Not authorized" in logs.text and bad.dropped == 1
        sub.stop()
    finally:
        broker.stop()


def make_certificates(home: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 (openssl)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    ca_key, ca, key, csr, cert = (home / n for n in ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt"))

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca), "-days", "2",
        "-subj", "/CN=kwspot test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    ext = home / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-out", str(cert),
        "-days", "2", "-extfile", str(ext))
    return ca, cert, key


def test_tls_on_request(tmp_path):
    need_mosquitto()
    ca, cert, key = make_certificates(tmp_path)
    tls = Broker(tmp_path / "broker", extra=f"cafile {ca}\ncertfile {cert}\nkeyfile {key}\n",
                 client_args=("--cafile", str(ca)))
    try:
        sub = Subscriber(tls, "kwspot/#")
        sink = MqttSink("127.0.0.1", tls.port, tls=True, ca_file=str(ca), site="s")
        sink.emit(Event("yes", 0.95, 1.5))
        wait_for(lambda: sub.messages, 15, "the event over TLS")
        sink.close()
        assert [(p["keyword"], p["t"]) for p in payloads(sub)] == [("yes", 1.5)]
        sub.stop()
    finally:
        tls.stop()


@pytest.mark.parametrize(
    "kwargs, culprit",
    [
        ({"username": "kw", "password_file": "/nonexistent/pw"}, "/nonexistent/pw"),
        ({"password_file": "/etc/hostname"}, "username"),
        ({"tls": True, "ca_file": "/nonexistent/ca.crt"}, "/nonexistent/ca.crt"),
    ],
)
def test_bad_settings_are_one_line_errors(kwargs, culprit):
    with pytest.raises(KwspotError, match=culprit):
        MqttSink("127.0.0.1", 1, **kwargs)


# ---- the daemon: `kwspot listen` with the mqtt sink -------------------------------------------------------------


def mqtt_settings(broker: Broker, **extra) -> dict:
    return {"host": "127.0.0.1", "port": broker.port, "site": "den", **extra}


@pytest.mark.slow
def test_listen_publishes_every_event_of_a_stream(tmp_path, speech_commands, broker):
    sub = Subscriber(broker, "kwspot/#")
    command_stream(speech_commands, tmp_path / "stream.wav")
    config = write_config(tmp_path / "config.yaml", mqtt=mqtt_settings(broker))
    result = run_kwspot("listen", "--config", str(config), "--input", str(tmp_path / "stream.wav"), "--fast")
    assert result.returncode == 0, result.stderr
    printed = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(printed) >= 10, printed
    wait_for(lambda: len(sub.messages) >= len(printed), 15, "every event")
    assert payloads(sub) == printed
    assert {t for t, _ in sub.messages} == {"kwspot/den/detected"} and {e["model"] for e in printed} == {"kwspot"}
    sub.stop()


def split_at_gaps(audio, spans, parts: int) -> list:
    """Cut a stream in the middle of the gaps after every len(spans)/parts clips."""
    step = len(spans) // parts
    cuts = [int((spans[i * step - 1][1] + spans[i * step][0]) / 2 * SAMPLE_RATE) for i in range(1, parts)]
    return [audio[a:b] for a, b in zip([0, *cuts], [*cuts, len(audio)], strict=True)]


@pytest.mark.slow
def test_a_broker_restart_under_the_running_daemon(tmp_path, speech_commands, broker):
    sub = Subscriber(broker, "kwspot/#", "kwspot-daemon-sub")  # persistent: keeps what arrives while it is away
    words, spans, audio = command_stream(speech_commands, tmp_path / "stream.wav")
    pause = pcm16(np.zeros(int(1.5 * SAMPLE_RATE), np.float32))
    first, second, third = (pcm16(part) + pause for part in split_at_gaps(audio, spans, 3))
    config = write_config(tmp_path / "config.yaml", mqtt=mqtt_settings(broker, qos=1))
    daemon = Daemon("--config", str(config))
    heard = lambda: {(p["keyword"], p["t"]) for p in payloads(sub)}  # noqa: E731
    printed = lambda: {(e["keyword"], e["t"]) for e in daemon.events}  # noqa: E731

    daemon.feed(first)
    wait_for(lambda: printed() and heard() == printed(), 60, "the first part's events, published")
    broker.stop()
    wait_for(lambda: "lost the broker" in daemon.log, 30, "the daemon to notice")
    before = len(daemon.events)
    daemon.feed(second)  # the broker is down: events keep coming on stdout
    wait_for(lambda: len(daemon.events) > before, 60, "events while the broker is down")
    broker.start()
    wait_for(lambda: f"connected to 127.0.0.1:{broker.port} again" in daemon.log, 30, "the reconnect")
    wait_for(lambda: heard() == printed(), 30, "what waited in the queue")
    daemon.feed(third)
    assert daemon.finish() == 0, daemon.log
    wait_for(lambda: heard() == printed(), 30, "every event")
    assert len(daemon.events) >= 10 and "dropped" not in daemon.log and "Traceback" not in daemon.log
    sub.stop()


@pytest.mark.parametrize(
    "mqtt, culprit",
    [
        ({"prot": 1883}, "sinks.mqtt.prot"),
        ({"qos": 3}, "sinks.mqtt.qos"),
        ({"site": "a/b"}, "sinks.mqtt.site"),
        ({"topic": "kwspot/#"}, "sinks.mqtt.topic"),
        ({"topic": "kw/\ud800"}, "sinks.mqtt.topic"),
        ({"port": "1883"}, "sinks.mqtt.port"),
        ("localhost", "sinks.mqtt"),
        ({"username": "kw", "password_file": "/nonexistent/pw"}, "/nonexistent/pw"),
        ({"password_file": "/etc/hostname"}, "sinks.mqtt.password_file needs sinks.mqtt.username"),
        ({"username": "u" * 70000}, "sinks.mqtt.username"),
        ({"username": "k\ud800w"}, "sinks.mqtt.username must be UTF-8 text"),
        ({"username": "kw", "password_file": "/tmp/\ud800"}, "sinks.mqtt.password_file: "),
        ({"tls": True, "ca_file": "/tmp/c\0a"}, "sinks.mqtt.ca_file: "),
    ],
)
def test_bad_mqtt_settings_give_one_line(tmp_path, mqtt, culprit):
    config = write_config(tmp_path / "config.yaml", mqtt=mqtt)
    result = run_kwspot("listen", "--config", str(config), "--input", "-", input="", timeout=60)
    assert_one_line_error(result, culprit)


def test_two_daemons_with_one_client_id_are_told_once_not_every_two_seconds(broker, logs):
    """The broker drops each for the other in turn; the log says why once, not two lines every reconnect."""
    sinks = [MqttSink("127.0.0.1", broker.port, client_id="kitchen") for _ in range(2)]
    try:
        wait_for(lambda: logs.text.count("lost the broker") >= 2 and "such in a row" in logs.text, 60,
                 "the broker to drop them in turn")
        wait_for(lambda: logs.text.count(") again") >= 4, 60, "several more drops, told at debug level only")
        hints = logs.text.count("another client with the same client_id")
        lost = [r for r in logs.records if "lost the broker" in r.getMessage() and r.levelno >= logging.WARNING]
    finally:
        for sink in sinks:
            sink.close()
    assert 1 <= hints <= 2 and len(lost) <= 4, logs.text  # each: the first loss, the first quick one
