"""Wearables over MQTT: a source that subscribes to ``har/+/imu`` and a sink that publishes labels.

The client follows paho-mqtt's own advice for consumers that survive: callback API version 2,
subscribe inside ``on_connect`` (so a reconnect renews the subscription), check
``reason_code.is_failure``, back off with ``reconnect_delay_set``, and keep ``on_message`` to
decode-and-emit inside its own try/except (an exception there would escape into paho's network
loop). The session is persistent (fixed client id, ``clean_start=False``, a session expiry) with
QoS 1, so samples published while the recognizer was away are delivered when it comes back, as far
as the broker kept them.

Several recognizer processes can share the devices in two ways:

* ``shard`` (``--shard K/N``): every worker subscribes to every device and keeps the ones that
  :func:`streamer.shard.shard_of` gives it, dropping the others' messages from their topic alone
  (before decoding; they are counted in one number, never per device). Works with any broker.
* ``shared_group`` (``--shared-group NAME``): an MQTT 5 shared subscription,
  ``$share/NAME/har/+/imu``, so the broker hands each message to one member of the group. The device
  is still read from the message's own topic. A window needs all of a device's samples in order in
  one process, so this is only right when the broker keeps each topic on one subscriber: EMQX with
  ``mqtt.shared_subscription_strategy = hash_topic`` (or ``sticky``; EMQX 4:
  ``broker.shared_subscription_strategy``), HiveMQ and others with a topic-hash strategy. Mosquitto
  hands shared messages out round robin, message by message, which scatters every device over
  all workers: with mosquitto use ``shard`` instead.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from streamer.shard import Shard
from streamer.types import Prediction, SampleBatch
from streamer.wire import WireError, decode, valid_device_id

log = logging.getLogger(__name__)

SESSION_EXPIRY_S = 3600  # how long the broker keeps our subscription and queued samples while we are away
INVALID_DEVICE = "(invalid device id)"  # the counter key for messages whose topic names no valid device
OTHER_DEVICES = "(other devices)"  # the counter key once max_devices distinct keys are counted


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
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(f"bad broker {url!r}: expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"bad broker {url!r}: the port is not a number from 1 to 65535") from None
    tls = parts.scheme == "mqtts"
    return Broker(parts.hostname, port or (8883 if tls else 1883), tls)


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
    shard: Shard | None = None  # keep only this shard's devices (see streamer.shard)
    shared_group: str | None = None  # subscribe as a member of this MQTT 5 shared-subscription group

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
        """The recognizer's own availability: ``online``, or ``offline`` (also its last will)."""
        return f"harstream/{self.client_id}/status"


def new_client(options: MqttOptions, client_id: str, will: str | None = None) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
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


def session_properties() -> Properties:
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = SESSION_EXPIRY_S  # MQTT 5: 0 would end the session on disconnect
    return properties


def unreachable(broker: Broker, timeout: float = 2.0) -> str | None:
    """Why a TCP connection to the broker fails, or None if it opens: for one-line errors."""
    try:
        socket.create_connection((broker.host, broker.port), timeout=timeout).close()
    except OSError as error:
        return error.strerror or str(error)
    return None


class MqttSource:
    """Every device that publishes to the topic pattern, as one source."""

    def __init__(self, options: MqttOptions, channels: tuple[str, ...], max_devices: int = 10_000) -> None:
        self.options = options
        self.channels = channels  # what the model reads; the wire maps message channels to these
        self.max_devices = max_devices
        self.name = f"mqtt {options.broker.host}:{options.broker.port}"
        self.status = "connecting"
        self.connected = threading.Event()
        self.retries = 0
        self.devices: set[str] = set()  # devices heard from (valid ids), bounded by max_devices
        self.rejected: Counter = Counter()  # (device, reason) -> count, also when no pipeline listens
        self.other_shard = 0  # messages of devices that another shard owns; one number, no per-device state
        self.reject: Callable[[str, str], None] = lambda device, reason: None  # the pipeline's counter
        self.on_connected: list[Callable[[mqtt.Client], None]] = []  # sinks that publish on connect
        self._emit: Callable[[SampleBatch], None] | None = None
        self._early: list[SampleBatch] = []  # batches that arrive before run() is called
        self._lock = threading.Lock()
        self.client = new_client(options, options.client_id, will=options.status_topic)
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self._started = False

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start connecting in paho's own thread (retrying until :meth:`close`)."""
        if self._started:
            return
        self._started = True
        broker = self.options.broker
        self.client.connect_async(broker.host, broker.port, keepalive=self.options.keepalive,
                                  clean_start=False, properties=session_properties())  # fmt: skip
        self.client.loop_start()

    def run(self, emit: Callable[[SampleBatch], None], stop: threading.Event) -> None:
        self.start()
        with self._lock:
            early, self._early = self._early, []
            self._emit = emit
        for batch in early:
            emit(batch)
        stop.wait()

    def close(self) -> None:
        if not self._started:
            return
        self._started = False
        if self.connected.is_set():  # a clean goodbye; the last will covers the unclean ones
            self.client.publish(self.options.status_topic, "offline", qos=1, retain=True).wait_for_publish(2)
        self.client.disconnect()
        self.client.loop_stop()
        self.status = "closed"

    # -- paho callbacks (paho's network thread) ----------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.status = f"refused by the broker: {reason_code}"
            log.error("mqtt: %s refused the connection: %s", self.options.broker.url, reason_code)
            return
        client.subscribe(self.options.subscription, qos=self.options.qos)
        client.publish(self.options.status_topic, "online", qos=1, retain=True)
        for callback in self.on_connected:
            callback(client)
        self.retries = 0
        self.status = "connected"
        self.connected.set()

    def _on_connect_fail(self, client: mqtt.Client, userdata) -> None:
        self.retries += 1
        self.status = f"connecting (retry {self.retries})"

    def _on_disconnect(self, client: mqtt.Client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        if self._started:
            self.status = f"disconnected: {reason_code}"
            log.warning("mqtt: disconnected from %s (%s); reconnecting", self.options.broker.url, reason_code)

    def _on_message(self, client: mqtt.Client, userdata, message: mqtt.MQTTMessage) -> None:
        try:
            self.handle(message.topic, message.payload)
        except Exception as error:  # never into paho's loop: count it and keep listening
            log.debug("mqtt: message on %s failed", message.topic, exc_info=True)
            self._count(OTHER_DEVICES, f"internal error ({type(error).__name__})")

    # -- messages ----------------------------------------------------------------------------
    def handle(self, topic: str, payload: bytes, arrival: float | None = None) -> None:
        device = self.options.topic.device_of(topic)
        if device is None or not valid_device_id(device):  # checked before it names anything
            self._count(INVALID_DEVICE, "invalid device id")
            return
        if self.options.shard is not None and not self.options.shard.owns(device):
            self.other_shard += 1  # another worker's device: not decoded, not remembered
            return
        try:
            batch = decode(payload, device, self.channels, arrival)
        except WireError as error:
            self._count(device, error.reason)
            return
        with self._lock:
            if self._emit is None:
                if len(self._early) < 10_000:
                    self._early.append(batch)
                return
        self._emit(batch)

    def summary(self) -> dict:
        """The source's own tallies, for the pipeline's summary."""
        return {"other_shard": self.other_shard} if self.options.shard is not None else {}

    def _count(self, device: str, reason: str) -> None:
        if device not in self.devices:  # a flood of new ids must not grow the counters without bound
            if len(self.devices) >= self.max_devices and device not in (INVALID_DEVICE, OTHER_DEVICES):
                device = OTHER_DEVICES
            elif device not in (INVALID_DEVICE, OTHER_DEVICES):
                self.devices.add(device)
        self.rejected[device, reason] += 1
        self.reject(device, reason)


class PredictionPublisher:
    """A pipeline sink: each prediction to ``har/<device>/activity`` (retained, QoS 1) and, with
    Home Assistant discovery, each new device announced once as a sensor."""

    def __init__(self, source: MqttSource, discovery: bool = False, discovery_prefix: str = "homeassistant"):
        self.source = source
        self.client = source.client
        self.discovery = discovery
        self.discovery_prefix = discovery_prefix
        self.announced: set[str] = set()
        source.on_connected.append(self._reannounce)

    def __call__(self, prediction: Prediction) -> None:
        device = prediction.device
        if self.discovery and device not in self.announced:
            self.announced.add(device)
            self._announce(self.client, device)
        probs = {k: round(v, 4) for k, v in prediction.probs.items()}
        body = {"label": prediction.label, "confidence": round(prediction.confidence, 4), "t": prediction.t,
                "probs": probs}  # fmt: skip
        self.client.publish(self.source.options.topic.activity(device), json.dumps(body), qos=1, retain=True)

    def _reannounce(self, client: mqtt.Client) -> None:
        for device in list(self.announced):  # a broker without persistence forgot them
            self._announce(client, device)

    def _announce(self, client: mqtt.Client, device: str) -> None:
        options = self.source.options
        unique = f"harstream_{device.replace('.', '_')}"  # HA object ids: [A-Za-z0-9_-]
        config = {
            "name": "Activity",
            "unique_id": unique,
            "object_id": unique,
            "state_topic": options.topic.activity(device),
            "value_template": "{{ value_json.label }}",
            "json_attributes_topic": options.topic.activity(device),
            "availability_topic": options.status_topic,
            "payload_available": "online",
            "payload_not_available": "offline",
            "icon": "mdi:run",
            "device": {"identifiers": [unique], "name": device, "manufacturer": "harstream"},
        }
        topic = f"{self.discovery_prefix}/sensor/{unique}/config"
        client.publish(topic, json.dumps(config), qos=1, retain=True)


def wait_until(condition: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True
