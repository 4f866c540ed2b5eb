"""MQTT sink: every event published to a broker (paho-mqtt), or as Rhasspy's Hermes hotword message.

``emit`` only appends the event to a bounded queue and returns: a thread of
our own hands queued events to paho while the broker is connected, and paho's
network thread reconnects with backoff when it is not. While the broker is
away, events wait in the queue; past ``queue`` of them the oldest are dropped,
counted, and logged at most every few seconds. With QoS 1, an event handed to
paho is resent after a reconnect until the broker acknowledges it.

Topic: ``kwspot/<site>/detected`` with the event JSON as payload; with
``hermes=True``: ``hermes/hotword/<keyword>/detected`` with Rhasspy's fields
(``modelId``, ``modelVersion``, ``modelType``, ``currentSensitivity``,
``siteId``, ``sessionId``, ``sendAudioCaptured``, ``lang``).
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kwspot.checks import choice, host_name_ok, number, optional, show, string
from kwspot.errors import KwspotError
from kwspot.events import Event
from kwspot.paths import checked, not_a_file, shown
from kwspot.sinks import SinkContext, SinkSettings, SinkSpec

DROP_LOG_INTERVAL_S = 5.0
RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 10
FLAP_S = 30.0  # a connection lost sooner than this after CONNACK counts as flapping: told once, then every
FLAP_REPORT_EVERY = 100  # so many in a row (a duplicate client_id otherwise logs two lines every 2 s for ever)
CONNACK_TIMEOUT_S = 10  # a connection the broker has not answered by then is reported (paho gives up later)


def default_site() -> str:
    """This machine's short host name: the site in the default topic and Hermes' siteId."""
    return socket.gethostname().split(".")[0] or "default"


MAX_PASSWORD_FILE_BYTES = 4096


def read_password(path: str | Path) -> str:
    """The first line of a password file (so it stays out of the config and the process list): UTF-8, bounded."""
    file = checked(path, "MQTT password file")
    if not file.is_file():
        raise KwspotError(f"{shown(file)}: {not_a_file(file, 'MQTT password')}")
    try:
        with file.open("rb") as fh:
            data = fh.read(MAX_PASSWORD_FILE_BYTES + 1)
    except OSError as exc:
        raise KwspotError(f"{shown(file)}: cannot read the MQTT password file ({exc.strerror})") from None
    if len(data) > MAX_PASSWORD_FILE_BYTES:
        raise KwspotError(f"{shown(file)}: over {MAX_PASSWORD_FILE_BYTES} bytes: not an MQTT password file")
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise KwspotError(f"{shown(file)}: the MQTT password file is not UTF-8 text") from None
    if not lines or not lines[0]:
        raise KwspotError(f"{shown(file)}: the MQTT password file is empty")
    return lines[0]


def hermes_payload(site: str, model_id: str, model_version: str, sensitivity: float) -> dict[str, Any]:
    """Rhasspy's ``hermes/hotword/<wakewordId>/detected`` message."""
    return {
        "modelId": model_id,
        "modelVersion": model_version,
        "modelType": "universal",
        "currentSensitivity": round(sensitivity, 4),
        "siteId": site,
        "sessionId": None,
        "sendAudioCaptured": None,
        "lang": "en",
        "customEntities": None,
    }


class MqttSink:
    """Publish events to an MQTT broker without ever blocking the caller."""

    def __init__(
        self,
        host: str = "localhost",
        port: int = 1883,
        *,
        topic: str | None = None,
        site: str | None = None,
        client_id: str | None = None,
        qos: int = 0,
        retain: bool = False,
        username: str | None = None,
        password_file: str | None = None,
        tls: bool = False,
        ca_file: str | None = None,
        hermes: bool = False,
        queue: int = 100,
        keepalive_s: int = 30,
        model_id: str = "kwspot",
        model_version: str = "",
        thresholds: Mapping[str, float] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.log = logger or logging.getLogger("kwspot")
        self.host, self.port, self.qos, self.retain, self.hermes = host, int(port), int(qos), bool(retain), hermes
        self.site = site or default_site()
        self.topic = topic or f"kwspot/{self.site}/detected"
        self.model_id, self.model_version = model_id, model_version
        self.thresholds = dict(thresholds or {})
        self.where = f"{host}:{port}"
        self.published = 0  # handed to paho while connected
        self.dropped = 0  # lost to a full queue, a full paho queue, a failed publish, or a close
        self._unreported: dict[str, tuple[int, str]] = {}  # kind -> (events dropped since the last log, why)
        self._last_drop_log = float("-inf")
        self._pending: deque[Event] = deque()
        self._queue_size = max(1, int(queue))
        self._cond = threading.Condition()
        self._connected = False
        self._was_connected = False
        self._failures = 0
        self._connected_at = 0.0
        self._flaps = 0  # connections in a row that the broker ended within FLAP_S
        self._opened: float | None = None  # when the socket opened, until CONNACK (or its absence is reported)
        self._closing = False

        import paho.mqtt.client as paho  # here, not at the top: the config imports this module, listen need not

        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id or "", clean_session=True)
        self.client.on_log = self._on_log  # paho's own chatter: debug only, never in the log at INFO and above
        if username:
            self.client.username_pw_set(username, read_password(password_file) if password_file else None)
        elif password_file:
            raise KwspotError("MQTT: a password file needs a username")
        if tls:
            if ca_file and not Path(ca_file).is_file():
                raise KwspotError(f"{ca_file}: {not_a_file(Path(ca_file), 'CA certificate')}")
            try:
                self.client.tls_set(ca_certs=ca_file, cert_reqs=ssl.CERT_REQUIRED)
            except (ssl.SSLError, OSError) as exc:
                raise KwspotError(f"{ca_file}: not a usable CA certificate file ({exc})") from None
        self.client.max_queued_messages_set(self._queue_size)
        self.client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_socket_open = self._on_socket_open
        self.client.connect_async(host, self.port, keepalive=keepalive_s)
        self.client.loop_start()
        self._thread = threading.Thread(target=self._run, name="kwspot-mqtt", daemon=True)
        self._thread.start()

    # ---- the caller's side ---------------------------------------------------------------------------------
    def emit(self, event: Event) -> None:
        with self._cond:
            if self._closing:
                return
            if len(self._pending) >= self._queue_size:
                self._pending.popleft()  # keep the newest: a late "stop" is worth more than an old "go"
                self._count_drop_locked(1)
            self._pending.append(event)
            self._cond.notify()

    def close(self, linger_s: float = 2.0) -> None:
        """Publish what is queued (for up to ``linger_s`` while connected), then disconnect."""
        deadline = time.monotonic() + linger_s
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            while self._pending and self._connected and time.monotonic() < deadline:
                self._cond.wait(0.05)
            left, connected = len(self._pending), self._connected
            self._pending.clear()
            self.dropped += left
            self._cond.notify_all()
        self._thread.join(timeout=max(0.1, deadline - time.monotonic()))
        if self.qos:  # give the acknowledgements of what was just sent a moment
            while self.client.want_write() and time.monotonic() < deadline:
                time.sleep(0.01)
        self.client.disconnect()
        self.client.loop_stop()
        self._report_drops(force=True)
        if left:
            why = f"{linger_s:g} s were not enough" if connected else f"broker at {self.where} away"
            self.log.warning("mqtt: %d queued event%s not sent at exit (%s); %d in all", left,
                             "" if left == 1 else "s", why, self.dropped)

    # ---- our thread: queue -> paho ---------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closing and not (self._pending and self._connected):
                    self._cond.wait(1.0)
                    self._report_drops_locked()
                    self._check_connack_locked()
                if not (self._pending and self._connected):
                    return  # closing, with nothing we can still send
                event = self._pending.popleft()
            if not self._publish(event):
                with self._cond:
                    self._pending.appendleft(event)  # the connection just went: send it after the reconnect
                    self._cond.wait(0.1)  # on_disconnect is on its way

    def _message(self, event: Event) -> tuple[str, str]:
        """The topic and payload of one event."""
        if self.hermes:
            sensitivity = 1.0 - self.thresholds.get(event.keyword, 0.0)
            model = event.model or self.model_id
            payload = json.dumps(hermes_payload(self.site, model, self.model_version, sensitivity))
            return f"hermes/hotword/{event.keyword}/detected", payload
        return self.topic, event.to_json()

    def _publish(self, event: Event) -> bool:
        """Hand one event to paho; False if the connection was lost meanwhile. Never raises: this thread must live."""
        import paho.mqtt.client as paho
        from paho.mqtt.enums import MQTTErrorCode

        try:
            info = self.client.publish(*self._message(event), qos=self.qos, retain=self.retain)
        except Exception as exc:  # noqa: BLE001 - a topic paho refuses, or anything: this event is lost
            with self._cond:
                why = f"publishing to {self.where} failed: {type(exc).__name__}: {exc}"[:300]
                self._count_drop_locked(1, why, kind=type(exc).__name__)
            return True
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and self.qos == 0:
            return False  # (with QoS 1 and 2, paho keeps the message and sends it once reconnected)
        with self._cond:
            if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
                self._count_drop_locked(1)
            elif info.rc in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                self.published += 1
            else:
                self._count_drop_locked(1, f"publishing to {self.where} failed: {paho.error_string(info.rc)}")
            self._cond.notify_all()
        return True

    # ---- paho's thread: connection state ------------------------------------------------------------------
    def _on_socket_open(self, client: Any, userdata: Any, sock: Any) -> None:
        with self._cond:
            self._opened = time.monotonic()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        with self._cond:
            self._opened = None  # CONNACK came
        if reason.is_failure:
            self._failure(f"refused: {reason}")
            return
        with self._cond:
            self._connected, self._failures = True, 0
            self._connected_at = time.monotonic()
            self._cond.notify_all()
        told = self._flaps <= 1 or self._flaps % FLAP_REPORT_EVERY == 0  # each loss told is followed by this
        level = logging.INFO if told else logging.DEBUG
        self.log.log(level, "mqtt: connected to %s%s", self.where, " again" if self._was_connected else "")
        self._was_connected = True

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        with self._cond:
            was, self._connected = self._connected, False
            closing, early, self._opened = self._closing, self._opened is not None, None
        if was and not closing:
            lasted = time.monotonic() - self._connected_at
            self._flaps = self._flaps + 1 if lasted < FLAP_S else 0
            if self._flaps <= 1 or self._flaps % FLAP_REPORT_EVERY == 0:
                hint = (f" {lasted:.1f} s after connecting ({self._flaps} such in a row: another client with the "
                        "same client_id, or a broker that drops kwspot?)" if self._flaps else "")
                self.log.warning("mqtt: lost the broker at %s (%s)%s; reconnecting", self.where, reason, hint)
            else:
                self.log.debug("mqtt: lost the broker at %s (%s) again", self.where, reason)
        elif early and not closing:
            self._failure(f"closed the connection before CONNACK ({reason})")

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        self._failure(_why_not_connected(sys.exc_info()[1]))  # paho calls this while it handles the error

    def _on_log(self, client: Any, userdata: Any, level: int, text: str) -> None:
        self.log.debug("mqtt: paho: %s", text)

    def _check_connack_locked(self) -> None:
        if self._opened is not None and time.monotonic() - self._opened > CONNACK_TIMEOUT_S:
            self._opened = None  # once per connection
            self._failure(f"sent no CONNACK within {CONNACK_TIMEOUT_S} s: not an MQTT broker, or a stalled one")

    def _failure(self, why: str) -> None:
        """The first failure in a row is a warning with its reason; the next ones are debug."""
        with self._cond:
            self._failures += 1
            first = self._failures == 1
        log: Callable[..., None] = self.log.warning if first else self.log.debug
        log("mqtt: broker at %s %s; retrying every %d to %d s", self.where, why, RECONNECT_MIN_S, RECONNECT_MAX_S)

    # ---- drops ---------------------------------------------------------------------------------------------
    def _count_drop_locked(self, n: int, why: str | None = None, kind: str | None = None) -> None:
        """Count ``n`` lost events (by default to a full queue) and log them per kind, at most every few seconds."""
        why = why or f"broker at {self.where} away, queue of {self._queue_size} full"
        kind = kind or why
        count, first = self._unreported.get(kind, (0, why))
        self.dropped += n
        self._unreported[kind] = (count + n, first)
        self._report_drops_locked()

    def _report_drops_locked(self, force: bool = False) -> None:
        now = time.monotonic()
        if self._unreported and (force or now - self._last_drop_log >= DROP_LOG_INTERVAL_S):
            for n, why in self._unreported.values():
                self.log.warning("mqtt: %d event%s dropped (%s); %d in all", n, "" if n == 1 else "s", why,
                                 self.dropped)
            self._unreported, self._last_drop_log = {}, now

    def _report_drops(self, force: bool = False) -> None:
        with self._cond:
            self._report_drops_locked(force)


# ---- settings: ``sinks.mqtt`` ----------------------------------------------------------------------------------


MAX_MQTT_STRING = 65535  # bytes of UTF-8 in an MQTT string (topic, client id): a 16-bit length


def _mqtt_string(key: str, value: Any) -> str:
    """A non-empty string that MQTT can carry: at most 65535 bytes of UTF-8 (less room for what is added), no NUL."""
    string(key, value)
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise KwspotError(f"config: {key} must be UTF-8 text, not {show(value)}") from None
    if "\0" in value or size > MAX_MQTT_STRING - 1024:
        raise KwspotError(f"config: {key} must be at most {MAX_MQTT_STRING - 1024} bytes without NUL, "
                          f"not {show(value)}")
    return value


def _why_not_connected(exc: BaseException | None) -> str:
    """What paho's failed connect attempt says, in a few words."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"failed TLS verification ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"failed the TLS handshake ({exc.reason or exc})"
    if isinstance(exc, OSError):
        return f"unreachable ({exc.strerror or exc or type(exc).__name__})"
    return "unreachable"


def _host(key: str, value: Any) -> str:
    """A host name or address the network library can look up (labels of at most 63 characters, no NUL)."""
    string(key, value)
    if not host_name_ok(value):
        raise KwspotError(f"config: {key} must be a host name or address, not {show(value)}")
    return value


def _file(what: str) -> Callable[[str, Any], str]:
    """A check that the value names a file a system call could take (the file itself is read at start)."""

    def check(key: str, value: Any) -> str:
        string(key, value)
        try:
            checked(value, what)
        except KwspotError as exc:
            raise KwspotError(f"config: {key}: {exc}") from None
        return value

    return check


def _topic_part(key: str, value: Any) -> str:
    _mqtt_string(key, value)
    if any(c in value for c in "+#/"):
        raise KwspotError(f"config: {key} must not contain '+', '#' or '/', not {show(value)}")
    return value


def _topic(key: str, value: Any) -> str:
    _mqtt_string(key, value)
    if any(c in value for c in "+#"):
        raise KwspotError(f"config: {key} is a topic to publish to: no '+' or '#' wildcards, not {show(value)}")
    return value


_flag = choice(True, False)
MQTT_KEYS: dict[str, tuple[Any, Callable[[str, Any], Any]]] = {
    "host": ("localhost", _host),
    "port": (1883, number(1, 65535, integer=True)),
    "client_id": (None, optional(_mqtt_string)),
    "topic": (None, optional(_topic)),  # None: kwspot/<site>/detected
    "site": (None, optional(_topic_part)),  # None: this machine's host name
    "qos": (0, choice(0, 1, 2)),
    "retain": (False, _flag),
    "username": (None, optional(_mqtt_string)),
    "password_file": (None, optional(_file("MQTT password file"))),
    "tls": (False, _flag),
    "ca_file": (None, optional(_file("CA certificate file"))),  # None: the system's CA certificates
    "hermes": (False, _flag),
    "queue": (100, number(1, 100000, integer=True)),
}


def check_mqtt(key: str, value: Any) -> dict[str, Any] | None:
    """``sinks.mqtt``: null (off) or a mapping of the keys above; keys left out keep their defaults."""
    if value is None or value is False:
        return None
    if value is True:
        value = {}
    if not isinstance(value, dict):
        raise KwspotError(f"config: {key} must be null or a mapping ({', '.join(MQTT_KEYS)}), not {show(value)}")
    settings = {name: default for name, (default, _) in MQTT_KEYS.items()}
    for name, item in value.items():
        if name not in MQTT_KEYS:
            shown = name if isinstance(name, str) and len(name) <= 40 else show(name)
            raise KwspotError(f"config: unknown key '{key}.{shown}' (known: {', '.join(MQTT_KEYS)})")
        settings[name] = MQTT_KEYS[name][1](f"{key}.{name}", item)
    if settings["password_file"] and not settings["username"]:
        raise KwspotError(f"config: {key}.password_file needs {key}.username (a password goes with a user name)")
    return settings


def _build(cfg: SinkSettings, ctx: SinkContext) -> MqttSink | None:
    mqtt = cfg["mqtt"]
    if mqtt is None:
        return None
    return MqttSink(**mqtt, model_id=ctx.model or "kwspot", model_version=ctx.model_version, thresholds=ctx.thresholds)


def _retire(sink: MqttSink) -> None:
    """A reload replaced it: let it finish off the audio loop's thread."""
    threading.Thread(target=sink.close, kwargs={"linger_s": 1.0}, name="kwspot-mqtt-retire", daemon=True).start()


SPEC = SinkSpec("mqtt", {"mqtt": (None, check_mqtt)}, _build, retire=_retire)
