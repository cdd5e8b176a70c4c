"""Each device's health on MQTT, retained: what ``harstream web`` (and anyone else) needs to see that
a wearer stopped sending, sends at the wrong rate, or has input dropped, without the recognizer's
terminal.

With ``--publish``, every served device gets ``har/<device>/health`` (retained, QoS 1) at most once
every :data:`EVERY_S` seconds, when one of its predictions goes out:
``{"t", "rate_hz", "model_hz", "samples", "windows", "gaps", "clock_jumps", "dropped": {reason: n}}``
(``rate_hz``: announced by the device or measured from its timestamps, ``null`` until known). When
the recognizer forgets the device, the retained message is cleared, as its activity is.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from model.strict_json import dumps

if TYPE_CHECKING:
    from streamer.core.pipeline import Pipeline
    from streamer.core.types import Prediction

EVERY_S = 5.0  # the most often one device's health is published
HEALTH_QOS = 1


class HealthPublisher:
    """A pipeline sink (called on its thread, which owns the scheduler's streams) that publishes
    through ``outlet``'s MQTT client (an :class:`~streamer.sources.mqtt.MqttSource`, or the fleet's
    publishing client)."""

    def __init__(self, outlet: Any, pipeline: Pipeline, every_s: float = EVERY_S) -> None:
        self.outlet = outlet
        self.pipeline = pipeline
        self.every_s = every_s
        self.last: dict[str, float] = {}  # device -> when its health last went out (monotonic)

    def topic(self, device: str) -> str:
        pattern = self.outlet.options.topic
        return "/".join([*pattern.levels[: pattern.device_level], device, "health"])

    def health(self, device: str) -> dict | None:
        scheduler = self.pipeline.scheduler
        stream = scheduler.devices.get(device)
        if stream is None:
            return None
        counters, rate = stream.counters, stream.rate_hz
        return {"t": round(time.time(), 3), "rate_hz": None if rate is None else round(rate, 3),
                "model_hz": scheduler.rate_hz, "samples": counters.samples, "windows": counters.windows,
                "gaps": counters.gaps, "clock_jumps": counters.clock_jumps,
                "dropped": dict(scheduler.drops.of(device))}  # fmt: skip

    def __call__(self, prediction: Prediction) -> None:
        device, now = prediction.device, time.monotonic()
        if now - self.last.get(device, -self.every_s) < self.every_s:
            return
        health = self.health(device)
        if health is None:
            return
        self.last[device] = now
        self.outlet.client.publish(self.topic(device), dumps(health), qos=HEALTH_QOS, retain=True)

    def forget(self, device: str) -> None:
        if self.last.pop(device, None) is not None:
            self.outlet.client.publish(self.topic(device), b"", qos=HEALTH_QOS, retain=True)
