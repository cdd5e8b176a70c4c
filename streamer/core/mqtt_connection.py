"""One MQTT connection, shared by whoever listens and whoever publishes on it.

:class:`MqttConnection` is the client and its life: connecting, retrying, speaking MQTT 3.1.1 where a
broker will not answer 5, the recognizer's availability at ``harstream/<name>/status`` (and its last
will), and giving up, in one line, on what retrying cannot mend. The MQTT source
(:mod:`streamer.sources.mqtt`) hands it a receiver and the topics to subscribe to; the publishing
sinks (:mod:`streamer.sinks.announcer`) are handed the same connection, or, in ``harstream fleet``,
one of its own that subscribes to nothing. Each counts its own: the connection its takeovers, the
source what it could not use, the sinks what they could not publish. It lives in core because both
sources and sinks use it, and neither may import the other.

The client follows paho-mqtt's own advice for consumers that survive: callback API version 2,
subscribe inside ``on_connect`` (so a reconnect renews the subscription), check
``reason_code.is_failure``, back off with ``reconnect_delay_set``. What must be on the broker
whenever the connection is up (the availability, Home Assistant's discovery configs) is published
again after every reconnect, since a broker without persistence forgets retained messages
(:meth:`MqttConnection.announce`).

A session is persistent (``clean_start=False``, a session expiry, QoS 1: samples published while
the recognizer was away are delivered when it comes back, as far as the broker kept them) only with
an explicit ``--client-id``; a default id is unique to the process, because two clients with one id
take the session from each other over and over. What retrying cannot mend ends the connection with
one line (:attr:`MqttConnection.fatal`): a refusal for credentials (not authorised), a certificate
that fails verification, and a client id that another running client holds (the newcomer stops;
the client that held the id takes its session back).
"""

from __future__ import annotations

import logging
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from streamer.core.shard import Shard

log = logging.getLogger(__name__)

SESSION_EXPIRY_S = 3600  # how long the broker keeps our subscription and queued samples while we are away
# CONNACK reason codes that another try with the same settings cannot change: the source gives up
REFUSED_FOR_GOOD = {
    0x84: "the broker does not speak this MQTT version (--mqtt-version)",  # Unsupported Protocol Version
    0x85: "the broker does not accept this client id (--client-id)",  # Client Identifier not valid
    0x86: "not authorised: check --username and --password",  # Bad User Name or Password
    0x87: "not authorised: check --username and --password (and the broker's ACL)",  # Not authorized
    0x8A: "banned by the broker",  # Banned
    0x8C: "the broker does not accept this authentication method",  # Bad authentication method
}
SESSION_TAKEN_OVER = 0x8E  # DISCONNECT: another client connected with our client id
SHORT_LIVED_S = 5.0  # a connection the broker closes sooner, with no reason given, may be a takeover
TAKEOVER_AFTER = 3  # ... and this many in a row, each made at the first attempt, are taken as one


@dataclass(frozen=True)
class Broker:
    host: str
    port: int
    tls: bool

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_broker(url: str) -> Broker:
    """``mqtt://HOST[:PORT]`` (1883) or ``mqtts://HOST[:PORT]`` (8883, TLS).

    >>> parse_broker("mqtt://localhost"), parse_broker("mqtts://[::1]:9000").port
    (Broker(host='localhost', port=1883, tls=False), 9000)
    """
    parts, port = split_url(url if "://" in url else f"mqtt://{url}", {"mqtt": 1883, "mqtts": 8883},
                            "broker", "mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")  # fmt: skip
    return Broker(parts.hostname, port, parts.scheme == "mqtts")


def split_url(url: str, schemes: dict[str, int], what: str, expected: str) -> tuple[SplitResult, int]:
    """``url`` split, checked to have one of ``schemes`` and a host, and its port (the scheme's
    default where none is given); ValueError, in words, for anything else."""
    parts = urlsplit(url)
    if parts.scheme not in schemes or not parts.hostname:
        raise ValueError(f"bad {what} {url!r}: expected {expected}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"bad {what} {url!r}: the port is not a number from 1 to 65535") from None
    return parts, port or schemes[parts.scheme]


@dataclass(frozen=True)
class TopicPattern:
    """A subscription with one ``+`` level that names the device: ``har/+/imu``.

    >>> pattern = TopicPattern.parse("har/+/imu")
    >>> pattern.device_of("har/wrist-1/imu"), pattern.device_of("har/a/b/imu"), pattern.activity("w")
    ('wrist-1', None, 'har/w/activity')
    """

    levels: tuple[str, ...]
    device_level: int

    @classmethod
    def parse(cls, topic: str) -> TopicPattern:
        levels = tuple(topic.split("/"))
        if levels.count("+") != 1 or "#" in topic:
            raise ValueError(f"bad topic {topic!r}: it needs exactly one '+' (the device) and no '#'")
        return cls(levels, levels.index("+"))

    @property
    def text(self) -> str:
        return "/".join(self.levels)

    def device_of(self, topic: str) -> str | None:
        levels = topic.split("/")
        if len(levels) != len(self.levels):
            return None
        fixed = all(a == b for i, (a, b) in enumerate(zip(levels, self.levels, strict=True))
                    if i != self.device_level)  # fmt: skip
        return levels[self.device_level] if fixed else None

    def activity(self, device: str) -> str:
        """Where the device's predictions go: its topic up to the device level, then ``activity``."""
        return "/".join([*self.levels[: self.device_level], device, "activity"])


@dataclass
class MqttOptions:
    broker: Broker
    topic: TopicPattern
    client_id: str
    qos: int = 1
    username: str | None = None
    password: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    keepalive: int = 30
    shard: Shard | None = None  # keep only this shard's devices (see streamer.core.shard)
    shared_group: str | None = None  # subscribe as a member of this MQTT 5 shared-subscription group
    persistent: bool = False  # keep the session on the broker while away (an explicit --client-id)
    announce: bool = True  # publish the recognizer's availability at status_topic (and a last will)
    name: str = ""  # the recognizer's stable name in status_topic (default: the client id)
    protocol: int = 5  # MQTT 5, or 4 (3.1.1) for a broker without 5: RabbitMQ's plugin before 3.13
    fallback: bool = True  # speak 3.1.1 when the broker will not answer an MQTT 5 CONNECT (fall_back)

    def __post_init__(self) -> None:
        group = self.shared_group
        if group is not None and (not group or any(c in group for c in "/+#")):
            raise ValueError(f"bad shared group {group!r}: a name without '/', '+' or '#'")

    @property
    def subscription(self) -> str:
        """The topic filter to subscribe to: the pattern, or ``$share/GROUP/`` + the pattern."""
        if self.shared_group is None:
            return self.topic.text
        return f"$share/{self.shared_group}/{self.topic.text}"

    @property
    def status_topic(self) -> str:
        """The recognizer's own availability: ``online``, or ``offline`` (also its last will). Named
        by :attr:`name`, which outlives a per-process client id, so restarts reuse one topic."""
        return f"harstream/{self.name or self.client_id}/status"


def new_client(options: MqttOptions, client_id: str, will: str | None = None) -> mqtt.Client:
    protocol = mqtt.MQTTv5 if options.protocol == 5 else mqtt.MQTTv311
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
    paho_log = logging.getLogger("harstream.paho")
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        # paho logs each failed reconnect as an error; the source's status line says it once, and
        # ``--debug`` shows paho's own account
        paho_log.setLevel(logging.CRITICAL)
    client.enable_logger(paho_log)
    if options.username is not None:
        client.username_pw_set(options.username, options.password)
    if options.broker.tls or options.tls_ca:
        client.tls_set(ca_certs=options.tls_ca, certfile=options.tls_cert, keyfile=options.tls_key)
    if will:
        client.will_set(will, "offline", qos=1, retain=True)
    client.reconnect_delay_set(1, 30)
    return client


FALLBACK_NOTE = "it does not speak MQTT 5: speaking MQTT 3.1.1 (--mqtt-version 3.1.1 says so at once)"


def fall_back(client: mqtt.Client, options: MqttOptions, answered: bool, reason_code=None) -> bool:
    """Switch ``client`` to MQTT 3.1.1 from its next CONNECT when a broker that has never answered
    refuses MQTT 5 (0x84) or closes the connection without a CONNACK, as RabbitMQ's MQTT plugin before
    3.13 does; whether it switched. paho has no public setter: it reads these two at each CONNECT."""
    unanswered = reason_code is None and not answered  # called from on_disconnect
    refused_5 = getattr(reason_code, "value", reason_code) == 0x84  # called from on_connect
    if not (unanswered or refused_5) or not options.fallback or client.protocol != mqtt.MQTTv5:
        return False
    client._protocol = mqtt.MQTTv311
    client._clean_session = not options.persistent  # 3.1.1's name for a session not kept
    return True


def session_properties() -> Properties:
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = SESSION_EXPIRY_S  # MQTT 5: 0 would end the session on disconnect
    return properties


def refusal(reason_code) -> str | None:
    """Why the broker's CONNACK refusal is for good (one line), or None if a retry may succeed."""
    meaning = REFUSED_FOR_GOOD.get(getattr(reason_code, "value", reason_code))
    return f"refused the connection: {reason_code}; {meaning}" if meaning else None


def connect_error(error: BaseException | None) -> tuple[str, bool]:
    """One line for a failed connection attempt, and whether retrying is pointless."""
    if isinstance(error, ssl.SSLCertVerificationError):  # a wrong --tls-ca, or a host name mismatch
        why = error.verify_message or error.reason
        return f"TLS: {why} (certificate verify failed): check --tls-ca", True
    if isinstance(error, ssl.SSLError):  # e.g. TLS to a plain port: may be a broker half started
        return f"TLS: {error.reason or error}", False
    if isinstance(error, OSError):
        return error.strerror or str(error), False
    return (str(error) if error else "no answer"), False


def unreachable(broker: Broker, timeout: float = 2.0) -> str | None:
    """Why a TCP connection to the broker fails, or None if it opens: for one-line errors."""
    try:
        socket.create_connection((broker.host, broker.port), timeout=timeout).close()
    except OSError as error:
        return error.strerror or str(error)
    return None


Receiver = Callable[[mqtt.MQTTMessage], None]


class MqttConnection:
    """The client on the broker and its state (:attr:`status`, :attr:`connected`, :attr:`fatal`),
    for the source that listens on it and the sinks that publish through it."""

    def __init__(self, options: MqttOptions, receive: Receiver | None = None) -> None:
        self.options = options
        self.status = "connecting"
        self.connected = threading.Event()
        self.settled = threading.Event()  # connected once, or failed for good
        self.fatal: str | None = None  # why it gave up (refused for good, its client id in use)
        self.takeovers = 0  # sessions another client with our id took over (or we took from it)
        self._connected_at = 0.0
        self.answered = False  # the broker has sent a CONNACK (so it speaks this MQTT version)
        self.fell_back = False  # speaking MQTT 3.1.1 after the broker would not answer MQTT 5
        self._short_lived = 0  # connections in a row that the broker closed right after they were made
        self._established = False  # held a connection for SHORT_LIVED_S: the client id is ours
        self.retries = 0
        # subscribed on every connect; a listener may add its own (the label topic of a recording)
        self.subscriptions: list[str] = [options.subscription] if receive is not None else []
        self._announced: dict[str, str] = {}  # topic -> retained payload, published again on reconnect
        self._announced_lock = threading.Lock()  # the pipeline's thread adds, paho's reads on connect
        will = options.status_topic if options.announce else None
        self.client = new_client(options, options.client_id, will=will)
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        if receive is not None:
            self.client.on_message = lambda client, userdata, message: receive(message)
        self._started = False

    # -- what the sinks use ----------------------------------------------------------------------
    def publish(self, topic: str, payload: str | bytes, qos: int = 1, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain)

    def announce(self, topic: str, payload: str) -> None:
        """Publish ``payload`` retained at ``topic`` now and again after every reconnect (a broker
        without persistence forgot it), until :meth:`withdraw`."""
        with self._announced_lock:
            self._announced[topic] = payload
        self.publish(topic, payload, qos=1, retain=True)

    def withdraw(self, topic: str) -> None:
        """Take an announcement off the broker (an empty retained message) and stop renewing it."""
        with self._announced_lock:
            self._announced.pop(topic, None)
        self.publish(topic, b"", qos=1, retain=True)

    def summary(self) -> dict:
        """The connection's own tallies, for the summary of whoever owns it."""
        return {"session_takeovers": self.takeovers} if self.takeovers else {}

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start connecting in paho's own thread (retrying until :meth:`close` or a failure for
        good, see :attr:`fatal`)."""
        if self._started:
            return
        self._started = True
        broker = self.options.broker
        keepalive = self.options.keepalive
        if self.options.persistent:
            self.client.connect_async(broker.host, broker.port, keepalive=keepalive, clean_start=False,
                                      properties=session_properties())  # fmt: skip
        else:  # a session of this process alone: nothing to keep on the broker once it is gone
            self.client.connect_async(broker.host, broker.port, keepalive=keepalive, clean_start=True)
        self.client.loop_start()

    def wait_settled(self, timeout: float) -> bool:
        """Whether it connected (or failed for good) within ``timeout`` seconds."""
        return self.settled.wait(timeout)

    def _give_up(self, client: mqtt.Client, why: str) -> None:
        """Stop retrying (in paho's thread: disconnect() ends its loop) and say why, once."""
        if self.fatal is None:
            self.fatal = f"{self.options.broker.url} {why}"
        self.status = why
        client.disconnect()
        self.settled.set()

    def close(self) -> None:
        if not self._started:
            return
        self._started = False
        if self.connected.is_set() and self.options.announce:  # a clean goodbye; the will covers the rest
            self.client.publish(self.options.status_topic, "offline", qos=1, retain=True).wait_for_publish(2)
        self.client.disconnect()
        self.client.loop_stop()
        self.status = self.fatal or "closed"

    # -- paho callbacks (paho's network thread) ----------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure and fall_back(client, self.options, self.answered, reason_code):
            self.fell_back = True
            return  # paho connects again, in 3.1.1
        self.answered = True
        if reason_code.is_failure:
            why = refusal(reason_code)
            if why:
                self._give_up(client, why)
            else:  # e.g. Server unavailable, Server busy: paho tries again
                self.status = f"refused by the broker: {reason_code}; retrying"
            return
        for topic in self.subscriptions:
            client.subscribe(topic, qos=self.options.qos)
        if self.options.announce:
            client.publish(self.options.status_topic, "online", qos=1, retain=True)
        with self._announced_lock:
            announced = list(self._announced.items())
        for topic, payload in announced:
            client.publish(topic, payload, qos=1, retain=True)
        self.retries = 0
        self._connected_at = time.monotonic()
        self.status = "connected"
        self.connected.set()
        self.settled.set()

    def _on_connect_fail(self, client: mqtt.Client, userdata) -> None:
        # paho calls this inside its ``except OSError`` around the attempt and passes no error:
        # the exception being handled is the attempt's own (a refused port, a failed TLS handshake)
        why, for_good = connect_error(sys.exc_info()[1])
        self._short_lived = 0  # the broker is away, not closing us: not a takeover
        if for_good:
            self._give_up(client, f"could not connect: {why}")
            return
        self.retries += 1
        self.status = f"connecting (retry {self.retries}): {why}"

    def _on_disconnect(self, client: mqtt.Client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        if not self._started or self.fatal:
            return
        from_server = getattr(flags, "is_disconnect_packet_from_server", False)  # a DISCONNECT is an answer
        if not from_server and fall_back(client, self.options, self.answered):  # closed unanswered
            self.fell_back = True
            self.status = "connecting in MQTT 3.1.1"
            return
        # Two clients with one id take the session from each other, every second, each losing
        # messages, unless one gives up: the newcomer does, since the id was the other's first.
        # An MQTT 5 broker says "Session taken over"; mosquitto before 2.0.12 only closes the
        # socket, so a takeover also shows as connections that the broker closes again and again
        # right after they were made (while a broker that is down refuses them instead). A client
        # that has held a connection for SHORT_LIVED_S is no newcomer: it reconnects, taking the
        # session back, and the newcomer, closed again at once, gives up.
        lived = time.monotonic() - self._connected_at
        self._established = self._established or lived >= SHORT_LIVED_S
        self._short_lived = self._short_lived + 1 if lived < SHORT_LIVED_S and not from_server else 0
        taken = reason_code == SESSION_TAKEN_OVER or self._short_lived >= TAKEOVER_AFTER
        if taken:
            self.takeovers += 1
        if taken and not self._established:
            clue = "" if reason_code == SESSION_TAKEN_OVER else (
                f" (the broker closed {self._short_lived} connections in a row right after they were made)")
            why = (f"client id {self.options.client_id!r} is in use by another client, which keeps it{clue}: "
                   "this one stops; give each process its own --client-id")  # fmt: skip
            self._give_up(client, why)
            return
        self.status = f"disconnected: {reason_code}"
        if reason_code == SESSION_TAKEN_OVER:
            log.warning("mqtt: another client connected with client id %r; taking the session back (the "
                        "newcomer stops)", self.options.client_id)  # fmt: skip
        elif self._short_lived <= 1:  # one line per outage, not one per quick reconnect
            log.warning("mqtt: disconnected from %s (%s); reconnecting", self.options.broker.url, reason_code)
