"""Wearables over MQTT: a source that subscribes to ``har/+/imu`` on a
:class:`~streamer.core.mqtt_connection.MqttConnection` (which owns the client, its retries and its
failures for good; the sinks that publish predictions are handed the same connection).

``on_message`` decodes and emits inside its own try/except (an exception there would escape into
paho's network loop). The network thread never blocks on the pipeline (the source is ``live``: a full
queue sheds instead), since a client that stops reading makes the broker drop messages for it.

Several recognizer processes can share the devices in two ways:

* ``shard`` (``--shard K/N``): every worker subscribes to every device and keeps the ones that
  :func:`streamer.core.shard.shard_of` gives it, dropping the others' messages from their topic alone
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

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from functools import partial

import paho.mqtt.client as mqtt

from streamer.core.drops import Drops
from streamer.core.mqtt_connection import MqttConnection, MqttOptions
from streamer.core.source import Deferred, SourceBase
from streamer.core.types import SampleBatch
from streamer.core.wire import WireError, decode, valid_device_id

log = logging.getLogger(__name__)

INVALID_DEVICE = "(invalid device id)"  # the counter key for messages whose topic names no valid device
OTHER_DEVICES = "(other devices)"  # the counter key once max_devices distinct keys are counted


class WireSource(SourceBase):
    """What a broker's source does with a message (MQTT here, AMQP in :mod:`streamer.sources.fleet`):
    decode it with :mod:`streamer.core.wire`, in the pipeline's thread once bound (a :class:`Deferred`),
    and count what is unusable per device, under at most ``max_devices`` device keys."""

    live = True  # a network thread hands over: never blocked (the pipeline sheds instead)

    def __init__(self, channels: tuple[str, ...], max_devices: int = 10_000) -> None:
        super().__init__()
        self.channels = channels  # what the model reads; the wire maps message channels to these
        self.max_devices = max_devices
        self.devices: set[str] = set()  # devices counted under their own id, bounded by max_devices
        self._count_lock = threading.Lock()

    def _decode(self, device: str, payload: bytes, arrival: float) -> SampleBatch | None:
        """The message's batch, or None when it is unusable (counted); never raises, since it
        also runs as a :class:`Deferred` in the pipeline's thread."""
        try:
            return decode(payload, device, self.channels, arrival)
        except WireError as error:
            self._count(device, error.reason)
        except Exception as error:  # a decoder bug costs one message, never the pipeline
            log.debug("message of %s failed", device, exc_info=True)
            self._count(device, f"internal error ({type(error).__name__})")
        return None

    def _count(self, device: str, reason: str) -> None:
        """Count an unusable message (from the network thread, or the pipeline's for a Deferred)."""
        with self._count_lock:
            if device not in self.devices:  # a flood of new ids must not grow the counters without bound
                if len(self.devices) >= self.max_devices and device not in (INVALID_DEVICE, OTHER_DEVICES):
                    device = OTHER_DEVICES
                elif device not in (INVALID_DEVICE, OTHER_DEVICES):
                    self.devices.add(device)
        self.reject(device, reason)


class MqttSource(WireSource):
    """Every device that publishes to the topic pattern, as one source (see :class:`Source`), listening
    on its own :attr:`connection` (whose state it reports as the source's)."""

    def __init__(self, options: MqttOptions, channels: tuple[str, ...], max_devices: int = 10_000) -> None:
        super().__init__(channels, max_devices)
        self.options = options
        self.name = f"mqtt {options.broker.host}:{options.broker.port}"
        self.connection = MqttConnection(options, receive=self._on_message)
        self.other_shard = 0  # messages of devices that another shard owns; one number, no per-device state
        self._emit: Callable[[SampleBatch | Deferred], None] | None = None
        self._early: list[SampleBatch | Deferred] = []  # batches that arrive before run() is called
        # Hand over messages undecoded once bound to a pipeline (it decodes them in its own
        # thread). Each decode done here is time paho does not read the socket, and a client that
        # reads too slowly makes the broker drop its messages ("Outgoing messages are being dropped").
        self.defer_decoding = False
        self._lock = threading.Lock()

    # -- the connection's state, as the source's (the dashboard's line, the commands' checks) -----
    @property
    def status(self) -> str:  # type: ignore[override]
        return self.connection.status

    @status.setter
    def status(self, text: str) -> None:
        self.connection.status = text

    @property
    def fatal(self) -> str | None:  # type: ignore[override]
        return self.connection.fatal

    @property
    def connected(self) -> threading.Event:
        return self.connection.connected

    @property
    def fell_back(self) -> bool:
        return self.connection.fell_back

    # -- lifecycle ---------------------------------------------------------------------------
    def bind(self, drops: Drops) -> None:
        super().bind(drops)
        self.defer_decoding = True  # a pipeline decodes Deferred messages in its own thread

    @property
    def rejected(self) -> Counter:
        """(device, reason) -> count in this source's ledger (its own until bound); what
        :mod:`streamer.tools.bench_mqtt` reads. Elsewhere ask the ledger: ``source.drops``."""
        return Counter(self.drops.rows())

    def start(self) -> None:
        """Start connecting (see :meth:`MqttConnection.start`)."""
        self.connection.start()

    def run(self, emit: Callable[[SampleBatch | Deferred], None], stop: threading.Event) -> None:
        """Hand batches to ``emit`` until ``stop``, or until the connection fails for good (then its
        reason is logged once, as one line, and :attr:`fatal` says it)."""
        self.start()
        with self._lock:
            early, self._early = self._early, []
            self._emit = emit
        for batch in early:
            emit(batch)
        while not stop.wait(0.1):
            if self.fatal:
                log.error("mqtt: %s", self.fatal)
                return

    def wait_settled(self, timeout: float) -> bool:
        """Whether the source connected (or failed for good) within ``timeout`` seconds."""
        return self.connection.wait_settled(timeout)

    def close(self) -> None:
        self.connection.close()

    # -- messages (paho's network thread) --------------------------------------------------------
    def _on_message(self, message: mqtt.MQTTMessage) -> None:
        try:
            self.handle(message.topic, message.payload)
        except Exception as error:  # never into paho's loop: count it and keep listening
            log.debug("mqtt: message on %s failed", message.topic, exc_info=True)
            self._count(OTHER_DEVICES, f"internal error ({type(error).__name__})")

    def handle(self, topic: str, payload: bytes, arrival: float | None = None) -> None:
        device = self.options.topic.device_of(topic)
        if device is None or not valid_device_id(device):  # checked before it names anything
            self._count(INVALID_DEVICE, "invalid device id")
            return
        if self.options.shard is not None and not self.options.shard.owns(device):
            self.other_shard += 1  # another worker's device: not decoded, not remembered
            return
        arrival = time.monotonic() if arrival is None else arrival
        item: SampleBatch | Deferred | None
        if self.defer_decoding:
            item = Deferred(device, partial(self._decode, device, payload, arrival))
        else:
            item = self._decode(device, payload, arrival)
            if item is None:
                return
        with self._lock:
            if self._emit is None:
                if len(self._early) < 10_000:
                    self._early.append(item)
                return
        self._emit(item)

    def summary(self) -> dict:
        """The source's own tallies and its connection's, for the pipeline's summary."""
        tallies = {"other_shard": self.other_shard} if self.options.shard is not None else {}
        return tallies | self.connection.summary()
