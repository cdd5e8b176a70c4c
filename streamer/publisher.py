"""A simulated wearable: a recording published over MQTT exactly as a device would send it."""

from __future__ import annotations

import threading
import time

import numpy as np
import paho.mqtt.client as mqtt

from replay.sources import Device, ReplaySource
from streamer.mqtt import MqttOptions, new_client
from streamer.types import SampleBatch
from streamer.wire import ACC, GYRO, encode_binary, encode_json_batch, encode_json_sample

FORMATS = ("json", "batch", "binary")


def encode(batch: SampleBatch, fmt: str, t0: float) -> list[bytes]:
    """The messages that carry ``batch``; its timestamps are shifted to start at wall-clock ``t0``."""
    t = batch.timestamps + t0
    values = batch.values[:, [batch.channels.index(c) for c in ACC + GYRO]]
    rate = float(batch.rate_hz or 50.0)
    if fmt == "json":
        return [encode_json_sample(float(ti), row[:3], row[3:]) for ti, row in zip(t, values, strict=True)]
    if fmt == "batch":
        return [encode_json_batch(float(t[0]), rate, ACC + GYRO, values)]
    if fmt == "binary":
        return [encode_binary(float(t[0]), rate, values.astype(np.float32))]
    raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")


class Publisher:
    """Plays ``device``'s recordings to ``<prefix>/<name>/imu`` at real time × ``speed``."""

    def __init__(self, options: MqttOptions, device: Device, name: str, speed: float = 1.0,
                 fmt: str = "batch", prefix: str = "har", qos: int = 1) -> None:  # fmt: skip
        self.client = new_client(options, client_id="")
        self.options = options
        self.replay = ReplaySource(device, speed=speed)
        self.topic = f"{prefix}/{name}/imu"
        self.fmt = fmt
        self.qos = qos
        self.messages = 0
        self.samples = 0
        self.t0 = time.time()  # the wire clock: the recording's timeline starts now
        self.pending: list[mqtt.MQTTMessageInfo] = []

    def connect(self, timeout: float) -> None:
        broker = self.options.broker
        self.client.connect(broker.host, broker.port, keepalive=30)  # raises OSError when unreachable
        self.client.loop_start()
        deadline = time.monotonic() + timeout
        while not self.client.is_connected():
            if time.monotonic() > deadline:
                raise ConnectionError(f"no answer from broker {broker.url} within {timeout:g} s")
            time.sleep(0.02)

    def _send(self, batch: SampleBatch) -> None:
        for payload in encode(batch, self.fmt, self.t0):
            self.pending.append(self.client.publish(self.topic, payload, qos=self.qos))
            self.messages += 1
        self.samples += len(batch.timestamps)
        self.pending = [info for info in self.pending if not info.is_published()][-10_000:]

    def run(self, stop: threading.Event) -> None:
        self.t0 = time.time()
        self.replay.run(self._send, stop)

    def close(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        for info in self.pending:  # QoS >= 1: wait until the broker has every message
            try:
                info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            except (RuntimeError, ValueError):  # never queued (connection lost); nothing to wait for
                continue
        self.client.disconnect()
        self.client.loop_stop()
