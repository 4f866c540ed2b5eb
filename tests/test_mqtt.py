"""The MQTT sink against a real mosquitto broker and a real mosquitto_sub subscriber."""

from __future__ import annotations

import json
import logging
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from broker import Broker, Subscriber, need_mosquitto

from conftest import wait_for
from kwspot.errors import KwspotError
from kwspot.events import Event
from kwspot.sinks.mqtt import MqttSink

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
    assert "1000 in all" in logs.text  # the 950, and the 50 still queued at close


def test_nothing_listening_is_logged_and_retried(logs):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sink = MqttSink("127.0.0.1", port)
    sink.emit(events(1)[0])
    wait_for(lambda: "unreachable" in logs.text, 15, "a log line")
    sink.close(linger_s=0.1)
    assert sink.dropped == 1 and "1 event dropped" in logs.text


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
