"""A simulated wearable: a recording published over MQTT exactly as a device would send it."""

from __future__ import annotations

import sys
import threading
import time

import numpy as np
import paho.mqtt.client as mqtt

from replay.sources import Device, ReplaySource
from streamer.core.mqtt_connection import FALLBACK_NOTE, MqttOptions, fall_back, new_client, refusal
from streamer.core.types import SampleBatch
from streamer.core.wire import ACC, GYRO, encode_binary, encode_json_batch, encode_json_sample

FORMATS = ("binary", "batch", "json")
MAX_QUEUED = 10_000  # messages paho holds for the broker (in flight or waiting); past it, publish waits


def say(message: str) -> None:
    print(f"harstream: {message}", file=sys.stderr, flush=True)


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


class PublishError(RuntimeError):
    """The broker refused us, or stayed away longer than we wait: one line for the user."""


class Publisher:
    """Plays ``device``'s recordings to ``<prefix>/<name>/imu`` at real time × ``speed``.

    A broker that goes away is waited for: paho's network thread reconnects (every 1-2 s), the
    replay pauses meanwhile (as a device buffers), and QoS 1 messages caught in flight are kept by
    paho and sent again after the reconnect. Only a broker that stays away longer than
    ``reconnect_timeout`` (or refuses us for good) ends the run, with :attr:`error` set."""

    def __init__(self, options: MqttOptions, device: Device, name: str, speed: float = 1.0,
                 fmt: str = "binary", prefix: str = "har", qos: int = 1,
                 reconnect_timeout: float = 10.0) -> None:  # fmt: skip
        self.client = new_client(options, client_id="")
        self.client.reconnect_delay_set(1, 2)  # a device simulator: back soon after the broker is
        self.client.max_queued_messages_set(MAX_QUEUED)  # bounded while the broker is slow
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.options = options
        self.replay = ReplaySource(device, speed=speed)
        self.topic = f"{prefix}/{name}/imu"
        self.fmt = fmt
        self.qos = qos
        self.reconnect_timeout = reconnect_timeout
        self.messages = 0
        self.samples = 0
        self.lost = 0  # QoS 0 messages published while the connection was down
        self.reconnects = 0
        self.error: str | None = None
        self.refused: str | None = None
        self.t0 = time.time()  # the wire clock: the recording's timeline starts now
        self.connected = threading.Event()
        self._lock = threading.Lock()
        self.unacked: set[int] = set()  # QoS >= 1 message ids the broker has not acknowledged yet
        self._acked_early: set[int] = set()  # acknowledged before publish() returned their id
        self._was_connected = False
        self.fell_back = False  # speaking MQTT 3.1.1: the broker would not answer MQTT 5
        self._closing = False

    @property
    def total_samples(self) -> int:
        """Samples in the whole recording."""
        return sum(len(recording.timestamps) for recording in self.replay.device.recordings)

    @property
    def state(self) -> str:
        """The broker connection, in a few words, for the progress line."""
        if self.error:
            return "gave up: the broker is gone"
        if not self.connected.is_set():
            return "waiting for the broker"
        return f"connected ({self.reconnects} reconnects)" if self.reconnects else "connected"

    # -- paho callbacks (its network thread) -------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure and fall_back(client, self.options, self._was_connected, reason_code):
            self.fell_back = True
            return
        if reason_code.is_failure:
            self.refused = refusal(reason_code) or f"refused the connection: {reason_code}"
            client.disconnect()  # a refusal ends the run (credentials stay wrong): no retries
            return
        if self._was_connected:
            self.reconnects += 1
            say(f"reconnected to {self.options.broker.url}")
        self._was_connected = True
        self.connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata, flags, reason_code, properties) -> None:
        answered = self._was_connected or self.refused is not None
        if not self._closing and fall_back(client, self.options, answered):
            self.fell_back = True  # closed unanswered: paho connects again, in 3.1.1
        if self.connected.is_set() and not self._closing:
            say(f"lost the broker {self.options.broker.url} ({reason_code}); waiting up to "
                f"{self.reconnect_timeout:g} s for it")  # fmt: skip
        self.connected.clear()

    def _on_publish(self, client: mqtt.Client, userdata, mid: int, reason_code, properties) -> None:
        if self.qos == 0:
            return
        with self._lock:  # the ack may come before publish() has returned the message's id
            if mid in self.unacked:
                self.unacked.discard(mid)
            else:
                self._acked_early.add(mid)

    # -- the replay's thread -----------------------------------------------------------------
    def connect(self, timeout: float) -> None:
        broker = self.options.broker
        self.client.connect(broker.host, broker.port, keepalive=30)  # raises OSError when unreachable
        self.client.loop_start()
        deadline = time.monotonic() + timeout
        while not self.connected.is_set():
            if self.refused:
                raise ConnectionError(f"broker {broker.url} {self.refused}")
            if time.monotonic() > deadline:
                raise ConnectionError(f"no answer from broker {broker.url} within {timeout:g} s")
            time.sleep(0.02)
        if self.fell_back:
            say(f"{broker.url}: {FALLBACK_NOTE}")

    def _wait_connected(self) -> None:
        if not self.connected.wait(self.reconnect_timeout) or self.refused:
            why = self.refused or f"did not come back within {self.reconnect_timeout:g} s"
            raise PublishError(f"broker {self.options.broker.url} {why}")

    def _publish(self, payload: bytes) -> None:
        while True:
            self._wait_connected()
            # never under our lock: paho calls on_publish holding its own, which would deadlock
            info = self.client.publish(self.topic, payload, qos=self.qos)
            if info.rc != mqtt.MQTT_ERR_QUEUE_SIZE and self.qos > 0:
                with self._lock:  # queued by paho, also when the link just dropped (rc NO_CONN)
                    if info.mid in self._acked_early:
                        self._acked_early.discard(info.mid)
                    else:
                        self.unacked.add(info.mid)
            if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:  # paho's queue is full: let it drain
                time.sleep(0.01)
                continue
            if info.rc == mqtt.MQTT_ERR_NO_CONN and self.qos == 0:
                self.lost += 1  # QoS 0 is fire and forget: paho keeps nothing to send again
            return

    def _send(self, batch: SampleBatch) -> None:
        for payload in encode(batch, self.fmt, self.t0):
            self._publish(payload)
            self.messages += 1
        self.samples += len(batch.timestamps)

    def run(self, stop: threading.Event) -> None:
        """Play the recording until it ends or ``stop``; a broker lost for good sets :attr:`error`
        (and ``stop``, so the other devices of the run end too)."""
        self.t0 = time.time()
        try:
            self.replay.run(self._send, stop)
        except PublishError as error:
            self.error = str(error)
            stop.set()

    def close(self, timeout: float = 10.0) -> int:
        """Wait (up to ``timeout``) until the broker has every QoS >= 1 message, then disconnect;
        the number of messages it never acknowledged."""
        deadline = time.monotonic() + timeout
        while self.unacked and time.monotonic() < deadline and self.error is None:
            time.sleep(0.02)
        self._closing = True
        self.client.disconnect()
        self.client.loop_stop()
        return len(self.unacked)
