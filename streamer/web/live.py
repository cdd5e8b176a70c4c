"""What the recognizers publish right now, for ``harstream web``: one MQTT client that subscribes to
the topics ``--publish`` sends (``har/<device>/activity``, ``episode``, ``event`` and ``health``,
docs/live.md) and keeps each device's latest state in memory.

paho's network thread only parses and stores (every payload is bounded and checked: it comes from
whoever can publish to the broker); the server's loop takes the devices that changed
(:meth:`LiveState.take_changed`) and pushes them to the browsers in batches. A broker that is down
is a status line on the page, retried with paho's back-off, never an error.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import deque
from typing import Any

import paho.mqtt.client as mqtt

from streamer.core.limits import MAX_PAYLOAD_BYTES
from streamer.sources.mqtt import parse_broker

log = logging.getLogger(__name__)

LEAVES = ("activity", "episode", "event", "health")
MAX_DEVICES = 100_000  # devices kept in memory; a flood of ids past it is counted, not stored
MAX_TEXT = 200  # characters of a label or a drop reason that are kept
MAX_KEYS = 64  # entries of a probs or dropped object that are kept
EVENTS_KEPT = 20  # per device


def number(value: Any) -> float | None:
    """A finite number, or None (a bool is not a number here).

    >>> number(1), number("1"), number(float("nan")), number(True)
    (1.0, None, None, None)
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def text(value: Any) -> str | None:
    return value[:MAX_TEXT] if isinstance(value, str) else None


def numbers(value: Any) -> dict[str, float]:
    """A ``{name: number}`` object, bounded: other entries are left out."""
    if not isinstance(value, dict):
        return {}
    out: dict[str, float] = {}
    for key, v in list(value.items())[:MAX_KEYS]:
        n = number(v)
        if isinstance(key, str) and n is not None:
            out[key[:MAX_TEXT]] = n
    return out


def parse(leaf: str, body: dict) -> dict:
    """The fields of one message that the page shows, checked (see docs/live.md for each shape)."""
    if leaf == "activity":
        return {"label": text(body.get("label")), "confidence": number(body.get("confidence")),
                "t": number(body.get("t")), "probs": numbers(body.get("probs"))}  # fmt: skip
    if leaf == "episode":
        return {"activity": text(body.get("activity")), "start": number(body.get("start"))}
    if leaf == "event":
        return {"event": text(body.get("event")), "activity": text(body.get("activity")),
                "t": number(body.get("t")), "duration_s": number(body.get("duration_s"))}  # fmt: skip
    fields = ("t", "rate_hz", "model_hz", "samples", "windows", "gaps", "clock_jumps")
    return {key: number(body.get(key)) for key in fields} | {"dropped": numbers(body.get("dropped"))}


class LiveState:
    """Each device's latest activity, episode, health and recent events, from the broker."""

    def __init__(self, broker: str | None, prefix: str = "har") -> None:
        self.broker = parse_broker(broker) if broker else None
        self.prefix = prefix
        self.devices: dict[str, dict] = {}
        self.ignored = 0  # messages that named no device, or a device past MAX_DEVICES
        self.ok = False
        self.status = "no --broker: live updates off" if broker is None else "connecting"
        self._changed: set[str] = set()
        self._lock = threading.Lock()
        self.client: mqtt.Client | None = None

    def start(self) -> LiveState:
        if self.broker is None:
            return self
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="", protocol=mqtt.MQTTv5)
        client.enable_logger(logging.getLogger("harstream.paho.web"))
        logging.getLogger("harstream.paho.web").setLevel(logging.CRITICAL)  # the status line says it
        if self.broker.tls:
            client.tls_set()
        client.reconnect_delay_set(1, 30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_message = self._on_message
        client.connect_async(self.broker.host, self.broker.port, keepalive=30)
        client.loop_start()
        self.client = client
        return self

    def stop(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()

    # -- paho's thread ---------------------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.ok, self.status = False, f"the broker {self.broker.url} refused us: {reason_code}"
            return
        client.subscribe([(f"{self.prefix}/+/{leaf}", 0) for leaf in LEAVES])
        self.ok, self.status = True, f"connected to {self.broker.url}"

    def _on_disconnect(self, client: mqtt.Client, userdata, flags, reason_code, properties) -> None:
        self.ok, self.status = False, f"lost the broker {self.broker.url} ({reason_code}): retrying"

    def _on_connect_fail(self, client: mqtt.Client, userdata) -> None:
        self.ok, self.status = False, f"cannot reach the broker {self.broker.url}: retrying"

    def _on_message(self, client: mqtt.Client, userdata, message: mqtt.MQTTMessage) -> None:
        try:
            self.handle(message.topic, message.payload)
        except Exception as error:  # never into paho's loop
            log.debug("web: a message on %s was not used: %s", message.topic, error)

    def handle(self, topic: str, payload: bytes) -> None:
        """One message: stored under its device, or ignored (a bad topic or body)."""
        levels = topic.split("/")
        if len(levels) != 3 or levels[0] != self.prefix or levels[2] not in LEAVES or not levels[1]:
            return
        device, leaf = levels[1], levels[2]
        body: Any = None
        if payload and len(payload) <= MAX_PAYLOAD_BYTES:
            try:
                body = json.loads(payload)
            except ValueError:  # not JSON, not UTF-8: nothing to show
                return
        if payload and not isinstance(body, dict):
            return
        with self._lock:
            entry = self.devices.get(device)
            if entry is None:
                if not body or len(self.devices) >= MAX_DEVICES:
                    self.ignored += bool(body)
                    return
                entry = self.devices[device] = {"events": deque(maxlen=EVENTS_KEPT)}
            if leaf == "event":
                if body:
                    entry["events"].append(parse(leaf, body))
            elif body:
                entry[leaf] = parse(leaf, body)
            else:  # an empty retained message: the recognizer no longer serves the device
                entry.pop(leaf, None)
            entry["heard"] = time.time()
            self._changed.add(device)

    # -- the server's loop -----------------------------------------------------------------------
    def take_changed(self) -> set[str]:
        with self._lock:
            changed, self._changed = self._changed, set()
        return changed

    def of(self, device: str) -> dict | None:
        """A copy of one device's state: ``activity``, ``episode``, ``health``, ``events``, ``heard``."""
        with self._lock:
            entry = self.devices.get(device)
            if entry is None:
                return None
            return {key: list(value) if key == "events" else value for key, value in entry.items()}

    def ids(self) -> list[str]:
        with self._lock:
            return list(self.devices)
