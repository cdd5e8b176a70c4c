"""One broker connection, several recognizer processes (``harstream mqtt --processes N``): the
parent's :class:`Router`, which hands each device's messages to the one process that owns it, and
the child's :class:`DispatchedSource`, which reads them from its pipe.

Mosquitto's MQTT 5 shared subscriptions hand messages out round robin, message by message, which
would scatter a device's samples over the processes; so the parent holds the one connection and
dispatches by device. Its receiver runs on paho's network thread and does the least work: the
device from the topic, its id checked, the ``--shard`` filter, then the process that owns it (see
:func:`process_of`), and an append to that process's bounded :class:`Outbox`. A sender thread per
process (streamer/processes.py) packs its outbox every few milliseconds into one frame.

Frames are bytes of our own format, never pickles of what came from the network. The first byte
says what a frame is; a frame of messages (:data:`MESSAGES`) holds, for each message, a header
``<dHI`` (its arrival on ``time.monotonic()``, the device id's length, the payload's length), then
the device id (UTF-8) and the payload. CLOCK_MONOTONIC is one clock for every process on Linux, so
an arrival stamped in the parent is honest in the child (latency includes the hand-over).
"""

from __future__ import annotations

import struct
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from functools import partial
from multiprocessing.connection import Connection

import paho.mqtt.client as mqtt

from streamer.core.drops import Drops
from streamer.core.mqtt_connection import MqttOptions
from streamer.core.pipeline import SHED_MESSAGES
from streamer.core.shard import shard_of
from streamer.core.source import Deferred
from streamer.core.types import SampleBatch
from streamer.core.wire import valid_device_id
from streamer.sources.mqtt import INVALID_DEVICE, OTHER_DEVICES, WireSource

# what a frame is (its first byte); parent -> child:
MESSAGES = b"M"  # messages, packed by pack_messages
STOP = b"S"  # end: the child drains what it has, says its summary and exits
# child -> parent:
READY = b"R"  # the model is loaded: the parent may connect
FAILED = b"X"  # could not start; the rest is one line (UTF-8) saying why
LINES = b"P"  # JSON lines (UTF-8): predictions, and episode events with --events
PROGRESS = b"U"  # the child's summary so far (strict JSON)
SUMMARY = b"E"  # its final summary (strict JSON), the last frame it sends

HEADER = struct.Struct("<dHI")  # arrival (monotonic s), device id length, payload length
MAX_OUTBOX_MESSAGES = 20_000  # held per process while it is busy; past it the oldest are shed, counted
MAX_OUTBOX_BYTES = 32 << 20  # ... and past this many payload bytes (a payload may be 1 MB)
PROCESS_DIED = "recognizer process died"  # the drop reason of a dead process's devices' messages

Message = tuple[str, bytes, float]  # device, payload, arrival


def process_of(device: str, processes: int, shards: int = 1) -> int:
    """Which of ``processes`` serves ``device``: ``crc32 % processes``; with ``--shard K/S`` the
    devices that this host's shard owns (``crc32 % S == K``) spread as ``(crc32 // S) % processes``
    (``crc32 % processes`` would put them all on one process when S and N share a factor).

    >>> [process_of(d, 2) for d in ("wrist-1", "band")], process_of("band", 2, shards=2)
    ([0, 1], 1)
    """
    return shard_of(device, shards * processes) // shards


def pack_messages(messages: list[Message]) -> bytes:
    """One frame of messages (see the module's docstring)."""
    parts = [MESSAGES]
    for device, payload, arrival in messages:
        name = device.encode("utf-8")
        parts += (HEADER.pack(arrival, len(name), len(payload)), name, payload)
    return b"".join(parts)


def unpack_messages(frame: bytes) -> list[Message]:
    """The messages of a frame that :func:`pack_messages` made; ValueError if it is cut short.

    >>> unpack_messages(pack_messages([("wrist", b"{}", 1.5), ("band", b"", 2.0)]))
    [('wrist', b'{}', 1.5), ('band', b'', 2.0)]
    """
    view, at, out = memoryview(frame), 1, []
    while at < len(frame):
        if at + HEADER.size > len(frame):
            raise ValueError("a frame of messages cut short")
        arrival, name_len, payload_len = HEADER.unpack_from(view, at)
        at += HEADER.size
        end = at + name_len + payload_len
        if end > len(frame):
            raise ValueError("a frame of messages cut short")
        name = bytes(view[at : at + name_len]).decode("utf-8")
        out.append((name, bytes(view[at + name_len : end]), arrival))
        at = end
    return out


class Outbox:
    """One process's messages, waiting for its sender thread: bounded by :data:`MAX_OUTBOX_MESSAGES`
    and :data:`MAX_OUTBOX_BYTES`, the oldest shed first. Closed once the process is gone."""

    def __init__(self, max_messages: int = MAX_OUTBOX_MESSAGES, max_bytes: int = MAX_OUTBOX_BYTES) -> None:
        self.max_messages, self.max_bytes = max_messages, max_bytes
        self._items: deque[Message] = deque()
        self._bytes = 0
        self._lock = threading.Lock()
        self.closed = False

    def __len__(self) -> int:
        return len(self._items)

    def put(self, message: Message) -> list[str] | None:
        """Queue ``message``; the devices of the messages shed to make room, or None when closed."""
        shed = []
        with self._lock:
            if self.closed:
                return None
            self._items.append(message)
            self._bytes += len(message[1])
            while len(self._items) > self.max_messages or self._bytes > self.max_bytes:
                device, payload, _ = self._items.popleft()
                self._bytes -= len(payload)
                shed.append(device)
        return shed

    def take(self) -> list[Message]:
        """Every queued message, oldest first; the outbox is empty after."""
        with self._lock:
            items, self._items, self._bytes = list(self._items), deque(), 0
        return items

    def close(self) -> list[Message]:
        """No more messages (the process is gone); those still queued."""
        with self._lock:
            self.closed = True
        return self.take()


class Router:
    """The parent's receiver (paho's network thread): each message to its device's process's outbox.
    What it cannot hand over is counted per device in :attr:`drops`, under at most ``max_devices``
    device keys: invalid ids, messages shed from a full outbox, those of a process that died."""

    def __init__(self, options: MqttOptions, processes: int, max_devices: int) -> None:
        self.options = options
        self.outboxes = [Outbox() for _ in range(processes)]
        self.shards = options.shard.count if options.shard is not None else 1
        self.drops = Drops()
        self.max_devices = max_devices
        self.devices: set[str] = set()  # devices counted under their own id
        self.other_shard = 0  # messages of devices another --shard owns: one number
        self._lock = threading.Lock()

    def on_message(self, message: mqtt.MQTTMessage) -> None:
        try:
            self.handle(message.topic, message.payload)
        except Exception as error:  # never into paho's loop
            self.count(OTHER_DEVICES, f"internal error ({type(error).__name__})")

    def handle(self, topic: str, payload: bytes) -> None:
        device = self.options.topic.device_of(topic)
        if device is None or not valid_device_id(device):
            self.count(INVALID_DEVICE, "invalid device id")
            return
        if self.options.shard is not None and not self.options.shard.owns(device):
            self.other_shard += 1
            return
        outbox = self.outboxes[process_of(device, len(self.outboxes), self.shards)]
        shed = outbox.put((device, bytes(payload), time.monotonic()))
        if shed is None:
            self.count(device, PROCESS_DIED)
        for gone in shed or ():
            self.count(gone, SHED_MESSAGES)

    def count(self, device: str, reason: str, count: int = 1) -> None:
        """Count ``count`` messages of ``device`` that no process will see, under ``reason``."""
        with self._lock:
            if device not in self.devices and device not in (INVALID_DEVICE, OTHER_DEVICES):
                if len(self.devices) >= self.max_devices:  # a flood of ids cannot grow the counters
                    device = OTHER_DEVICES
                else:
                    self.devices.add(device)
        self.drops.add(device, reason, count)

    def summary(self) -> dict:
        return {"other_shard": self.other_shard} if self.options.shard is not None else {}


class DispatchedSource(WireSource):
    """A recognizer process's source: the messages its parent's :class:`Router` sent it, read from
    the pipe and handed to the pipeline as :class:`Deferred` (decoded in the pipeline's thread,
    what is unusable counted per device, as :class:`streamer.sources.mqtt.MqttSource` does). It ends
    on :data:`STOP`, or when the parent is gone."""

    # Not live, unlike MqttSource: a frame brings many messages at once, which a live source's
    # queue (256 entries) would shed though the pipeline takes them in milliseconds. Blocking this
    # thread is harmless (no broker waits on it): the pipe fills, and the parent's bounded outbox
    # sheds the oldest, counted, so work stays bounded by the bytes received.
    live = False

    def __init__(self, connection: Connection, channels: tuple[str, ...], max_devices: int,
                 name: str) -> None:  # fmt: skip
        super().__init__(channels, max_devices)
        self.connection = connection
        self.name = name
        self.status = "waiting for the dispatcher"
        self.parent_gone = False

    def run(self, emit: Callable[[SampleBatch | Deferred], None], stop: threading.Event) -> None:
        self.status = "receiving"
        while not stop.is_set():
            try:
                if not self.connection.poll(0.1):
                    continue
                frame = self.connection.recv_bytes()
            except (EOFError, OSError):  # the parent is gone: end as after STOP
                self.parent_gone = True
                return
            if frame[:1] == STOP:
                return
            if frame[:1] != MESSAGES:
                continue
            for device, payload, arrival in unpack_messages(frame):
                emit(Deferred(device, partial(self._decode, device, payload, arrival)))


def died_counts(messages: list[Message]) -> Counter:
    """Messages per device, for a dead process's outbox."""
    return Counter(device for device, _, _ in messages)
