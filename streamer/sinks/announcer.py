"""What the recognizer says on MQTT: predictions, episode events, and Home Assistant discovery, in
one place, through the one :class:`~streamer.core.mqtt_connection.MqttConnection` it is handed (the
MQTT source's, or the fleet's own outlet).

* Each prediction goes to ``har/<device>/activity`` (retained, QoS 1) as
  ``{"label", "confidence", "t", "probs"}``.
* Each episode event goes to ``har/<device>/event`` (QoS 1, not retained: a late subscriber must not
  take an old change for a new one) as ``{"event": "start"|"end", "activity", "t", "duration_s"}``
  (Google's Activity Recognition Transition API: what changed, not every window); the current
  episode is kept retained at ``har/<device>/episode`` as ``{"activity", "start", "start_iso"}``.
* With Home Assistant discovery, each served device is announced as an activity sensor and, once it
  has episodes, two more entities under the same HA device (the current episode's activity, and its
  start time, a timestamp sensor); the connection announces them again after a reconnect.

When the pipeline forgets a device, everything retained about it is cleared (an empty retained
message), so the broker keeps only what is served; when the run ends, the current episodes and their
entities are cleared (the activity sensor stays, its availability says offline).

One JSON policy: every payload is strict JSON (:mod:`model.strict_json`), and a message that holds a
number that is not finite (or a time no calendar holds) is not published but counted: a ``null``
where a confidence or a time should be would tell a consumer nothing true.

The announcer is an :class:`~streamer.sinks.episodes.EpisodeSink`: on the pipeline's
:class:`~streamer.sinks.episodes.Episodes` it hears predictions and events; given to the pipeline
alone, predictions only.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter
from datetime import UTC, datetime

from model.strict_json import dumps, finite
from streamer.core.mqtt_connection import MqttConnection
from streamer.core.types import Prediction
from streamer.sinks.episodes import EpisodeSink, Event

log = logging.getLogger(__name__)

EVENT_QOS = 1


def discovery_id(device: str) -> str:
    """Home Assistant's object id for a device: its id in HA's alphabet ``[A-Za-z0-9_-]``, plus a
    short hash of the real id, so ``a.b`` and ``a_b`` stay two sensors.

    >>> discovery_id("wrist.left"), discovery_id("wrist_left") != discovery_id("wrist.left")
    ('harstream_wrist_left_1737d679', True)
    """
    digest = hashlib.sha256(device.encode()).hexdigest()[:8]
    return f"harstream_{re.sub(r'[^A-Za-z0-9_-]', '_', device)}_{digest}"


def iso(t: float) -> str:
    """``t`` (seconds since the epoch) as ISO 8601 in UTC, what HA's timestamp sensors read.

    >>> iso(0.0)
    '1970-01-01T00:00:00+00:00'
    """
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def strict(body: dict) -> str | None:
    """``body`` as strict JSON, or None when a number in it is not finite (see the module's notes).

    >>> strict({"t": 1.5}), strict({"t": float("nan")})
    ('{"t": 1.5}', None)
    """
    clean = finite(body)
    return dumps(clean) if clean == body else None


class Announcer(EpisodeSink):
    """Publishes through ``connection``; ``discovery``: announce devices to Home Assistant under
    ``prefix``."""

    def __init__(self, connection: MqttConnection, discovery: bool = False,
                 prefix: str = "homeassistant") -> None:  # fmt: skip
        self.connection = connection
        self.pattern = connection.options.topic
        self.discovery = discovery
        self.prefix = prefix
        self.sensors: set[str] = set()  # devices whose activity sensor is announced
        self.activities: set[str] = set()  # devices whose activity is retained on the broker
        self.episode_sensors: set[str] = set()  # devices whose two episode entities are announced
        self.episodes: set[str] = set()  # devices whose current episode is retained
        self.events_published = 0
        self.unpublishable: Counter = Counter()  # device -> predictions that were not strict JSON
        self.events_unpublishable: Counter = Counter()  # device -> events that were not

    def topic(self, device: str, leaf: str) -> str:
        """``har/<device>/<leaf>``: the device's topic up to its level, then ``leaf``."""
        pattern = self.pattern
        return "/".join([*pattern.levels[: pattern.device_level], device, leaf])

    # -- what the sinks are told -----------------------------------------------------------------
    def __call__(self, prediction: Prediction) -> None:
        device = prediction.device
        probs = {k: round(v, 4) for k, v in prediction.probs.items()}
        payload = strict({"label": prediction.label, "confidence": round(prediction.confidence, 4),
                          "t": prediction.t, "probs": probs})  # fmt: skip
        if payload is None:
            if not self.unpublishable:
                log.error("mqtt: %s: a prediction with a non-finite number was not published", device)
            self.unpublishable[device] += 1
            return
        if self.discovery and device not in self.sensors:
            self.sensors.add(device)
            self.connection.announce(self.config_topic(device), dumps(self._sensor(device)))
        self.activities.add(device)
        self.connection.publish(self.pattern.activity(device), payload, qos=1, retain=True)

    def event(self, event: Event) -> None:
        device = event.device
        try:
            body = strict(event.to_json())
            start = round(event.t, 3)
            state = strict({"activity": event.activity, "start": start, "start_iso": iso(event.t)})
        except (ValueError, OverflowError, OSError):  # a time no calendar holds
            body = state = None
        if body is None or state is None:
            self.events_unpublishable[device] += 1
            return
        if self.discovery and device not in self.episode_sensors:
            self.episode_sensors.add(device)
            for topic, config in zip(self.episode_config_topics(device), self._episode_entities(device),
                                     strict=True):  # fmt: skip
                self.connection.announce(topic, dumps(config))
        self.connection.publish(self.topic(device, "event"), body, qos=EVENT_QOS, retain=False)
        self.events_published += 1
        if event.event == "start":
            self.episodes.add(device)
            self.connection.publish(self.topic(device, "episode"), state, qos=1, retain=True)

    def forget(self, device: str) -> None:
        """The device is no longer served (after its end event): take its retained messages off the
        broker."""
        self._clear_episode(device)
        self.unpublishable.pop(device, None)
        if device in self.sensors:
            self.sensors.discard(device)
            self.connection.withdraw(self.config_topic(device))
        if device in self.activities:
            self.activities.discard(device)
            self.connection.publish(self.pattern.activity(device), b"", qos=1, retain=True)

    def close(self) -> None:
        """The run ended, and every open episode with it: no current episode is left to show."""
        for device in sorted(self.episodes | self.episode_sensors):
            self._clear_episode(device)

    def summary(self) -> dict:
        if not self.unpublishable:
            return {}
        return {"predictions_not_published": sum(self.unpublishable.values())}

    # -- topics and Home Assistant's configs ---------------------------------------------------------
    def config_topic(self, device: str) -> str:
        return f"{self.prefix}/sensor/{discovery_id(device)}/config"

    def episode_config_topics(self, device: str) -> tuple[str, str]:
        unique = discovery_id(device)
        return (f"{self.prefix}/sensor/{unique}_episode/config",
                f"{self.prefix}/sensor/{unique}_episode_start/config")  # fmt: skip

    def _clear_episode(self, device: str) -> None:
        if device in self.episodes:
            self.episodes.discard(device)
            self.connection.publish(self.topic(device, "episode"), b"", qos=1, retain=True)
        if device in self.episode_sensors:
            self.episode_sensors.discard(device)
            for topic in self.episode_config_topics(device):
                self.connection.withdraw(topic)

    def _ha_device(self, device: str) -> dict:
        """What every entity of ``device`` shares: availability, and the HA device it is grouped under."""
        unique = discovery_id(device)
        return {"availability_topic": self.connection.options.status_topic, "payload_available": "online",
                "payload_not_available": "offline",
                "device": {"identifiers": [unique], "name": device, "manufacturer": "harstream"}}  # fmt: skip

    def _sensor(self, device: str) -> dict:
        unique = discovery_id(device)
        activity = self.pattern.activity(device)
        shared = self._ha_device(device)
        ha_device = shared.pop("device")  # last, after the icon, as HA's own examples write it
        return {"name": "Activity", "unique_id": unique, "object_id": unique, "state_topic": activity,
                "value_template": "{{ value_json.label }}", "json_attributes_topic": activity, **shared,
                "icon": "mdi:run", "device": ha_device}  # fmt: skip

    def _episode_entities(self, device: str) -> tuple[dict, dict]:
        unique = discovery_id(device)
        common = {"state_topic": self.topic(device, "episode"), **self._ha_device(device)}
        activity = {"name": "Episode", "unique_id": f"{unique}_episode", "object_id": f"{unique}_episode",
                    "value_template": "{{ value_json.activity }}", "icon": "mdi:timeline-clock", **common}
        start = {"name": "Episode start", "unique_id": f"{unique}_episode_start",
                 "object_id": f"{unique}_episode_start", "device_class": "timestamp",
                 "value_template": "{{ value_json.start_iso }}", **common}  # fmt: skip
        return activity, start
