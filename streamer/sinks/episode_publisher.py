"""Episode events over MQTT: what changed, not every window (Google's Activity Recognition
Transition API; STYLE.md item 15).

Each event goes to ``har/<device>/event`` (QoS 1, not retained: a late subscriber must not take an
old change for a new one) as ``{"event": "start"|"end", "activity", "t", "duration_s"}``; the current
episode is kept retained at ``har/<device>/episode`` as ``{"activity", "start", "start_iso"}``. With
Home Assistant discovery, each device gains two entities beside its activity sensor, grouped under
the same HA device: the current episode's activity, and its start time (a timestamp sensor).
When the pipeline forgets a device, its retained episode and configs are cleared.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import UTC, datetime

from model.strict_json import dumps
from streamer.sinks.episodes import Episodes, Event
from streamer.sources.mqtt import MqttSource, discovery_id

log = logging.getLogger(__name__)

EVENT_QOS = 1


def iso(t: float) -> str:
    """``t`` (seconds since the epoch) as ISO 8601 in UTC, what HA's timestamp sensors read.

    >>> iso(0.0)
    '1970-01-01T00:00:00+00:00'
    """
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


class EpisodePublisher:
    """Listens to the pipeline's :class:`Episodes`; publishes through the MQTT source's client."""

    def __init__(self, source: MqttSource, episodes: Episodes, discovery: bool = False,
                 prefix: str = "homeassistant") -> None:  # fmt: skip
        self.source = source
        self.client = source.client
        self.discovery = discovery
        self.prefix = prefix
        self.announced: set[str] = set()
        self.retained: set[str] = set()
        self.published = 0
        self.unpublishable: Counter = Counter()
        episodes.listeners.append(self)
        source.on_connected.append(self._reannounce)

    def topic(self, device: str, leaf: str) -> str:
        pattern = self.source.options.topic
        return "/".join([*pattern.levels[: pattern.device_level], device, leaf])

    def __call__(self, event: Event) -> None:
        device = event.device
        try:
            body = dumps(event.to_json())
            state = dumps({"activity": event.activity, "start": round(event.t, 3), "start_iso": iso(event.t)})
        except (ValueError, OverflowError, OSError):  # a time no calendar holds
            self.unpublishable[device] += 1
            return
        if self.discovery and device not in self.announced:
            self.announced.add(device)
            self._announce(device)
        self.client.publish(self.topic(device, "event"), body, qos=EVENT_QOS, retain=False)
        self.published += 1
        if event.event == "start":
            self.retained.add(device)
            self.client.publish(self.topic(device, "episode"), state, qos=1, retain=True)

    def forget(self, device: str) -> None:
        """The device is no longer served (after its end event, by :meth:`Episodes.forget`): take its
        retained messages off the broker."""
        if device in self.retained:
            self.retained.discard(device)
            self.client.publish(self.topic(device, "episode"), b"", qos=1, retain=True)
        if device in self.announced:
            self.announced.discard(device)
            for topic in self.config_topics(device):
                self.client.publish(topic, b"", qos=1, retain=True)

    def config_topics(self, device: str) -> tuple[str, str]:
        unique = discovery_id(device)
        return (f"{self.prefix}/sensor/{unique}_episode/config",
                f"{self.prefix}/sensor/{unique}_episode_start/config")

    def _reannounce(self, client) -> None:
        for device in list(self.announced):
            self._announce(device)

    def _announce(self, device: str) -> None:
        options = self.source.options
        unique = discovery_id(device)
        common = {
            "state_topic": self.topic(device, "episode"),
            "availability_topic": options.status_topic,
            "payload_available": "online",
            "payload_not_available": "offline",
            "device": {"identifiers": [unique], "name": device, "manufacturer": "harstream"},
        }
        activity = {"name": "Episode", "unique_id": f"{unique}_episode", "object_id": f"{unique}_episode",
                    "value_template": "{{ value_json.activity }}", "icon": "mdi:timeline-clock", **common}
        start = {"name": "Episode start", "unique_id": f"{unique}_episode_start",
                 "object_id": f"{unique}_episode_start", "device_class": "timestamp",
                 "value_template": "{{ value_json.start_iso }}", **common}  # fmt: skip
        for topic, config in zip(self.config_topics(device), (activity, start), strict=True):
            self.client.publish(topic, dumps(config), qos=1, retain=True)
