"""How many samples a second the MQTT path takes in: broker ─▶ MqttSource ─▶ wire decoder ─▶ scheduler.

:func:`measure_mqtt_ingestion` starts a private mosquitto on a free loopback port, a publisher in
another process (``multiprocessing``, ``spawn``) that sends real HAPT samples for many devices as
fast as it can, and, in this process, the real :class:`~streamer.sources.mqtt.MqttSource` (QoS 1, as
``harstream mqtt`` subscribes) feeding the real :class:`~streamer.core.scheduler.Scheduler` (UCI HAR
preprocessing, window 128, hop 32) through a bounded queue as the pipeline does. It reports what
reached the scheduler, divided by the time from the first to the last batch that did.

Inference is skipped unless an engine is passed: this measures ingestion, which is what one
process must sustain for its devices; the engine's throughput is measured on its own.

The publisher stays at most ``ahead`` messages in front of what the receiver has taken in (a
shared counter), so a receiver slower than the publisher is measured at its own pace instead of
the broker dropping or hoarding the surplus; ``dropped`` counts samples published but not taken in
by the end, plus samples the source or the scheduler refused.

    python -m streamer.tools.bench_mqtt            # both formats, one JSON object each
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.strict_json import dumps
from streamer.core.mqtt_connection import MqttOptions, TopicPattern, new_client, parse_broker
from streamer.core.types import SampleBatch
from streamer.core.wire import ACC, GYRO, HEADER, MAGIC
from streamer.sources.mqtt import MqttSource
from streamer.tools.private_mosquitto import Mosquitto

FORMATS = ("batch", "binary")
RATE_HZ = 50.0
BLOCKS = 64  # distinct sample blocks the publisher cycles through (encoded once, before timing)


# -- the publisher (another process) --------------------------------------------------------------
def wait_until(condition: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    """Whether ``condition()`` came true within ``timeout`` seconds (the benchmarks' and the tests')."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


def _blocks(values: np.ndarray, fmt: str, n: int) -> list[bytes]:
    """``BLOCKS`` runs of ``n`` real samples, encoded as the part of a message after its header."""
    starts = np.linspace(0, len(values) - n, BLOCKS).astype(int)
    runs = [values[s : s + n] for s in starts]
    if fmt == "binary":
        return [np.ascontiguousarray(r, dtype="<f4").tobytes() for r in runs]
    return [json.dumps([[round(float(x), 6) for x in row] for row in r]).encode() for r in runs]


def _message(fmt: str, t0: float, n: int, block: bytes) -> bytes:
    if fmt == "binary":  # streamer.core.wire's binary frame: header, then float32 samples
        return HEADER.pack(MAGIC, 1, 6, n, RATE_HZ, t0) + block
    channels = json.dumps(list(ACC + GYRO))
    return b'{"t0": %r, "hz": 50.0, "channels": %s, "samples": %s}' % (t0, channels.encode(), block)


def _publish(url: str, fmt: str, devices: int, seconds: float, n: int, values: np.ndarray, qos: int,
             ahead: int, taken, published, ready, go) -> None:  # fmt: skip
    """Publish ``fmt`` messages round robin over ``devices`` for ``seconds``; then say how many."""
    blocks = _blocks(values, fmt, n)
    broker = parse_broker(url)
    options = MqttOptions(broker, TopicPattern.parse("har/+/imu"), client_id="")
    client = new_client(options, client_id="")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect(broker.host, broker.port)
    client.loop_start()
    wait_until(client.is_connected, 10)
    topics = [f"har/dev-{d:04d}/imu" for d in range(devices)]
    ready.set()
    go.wait(30)
    t_start, count, period = time.time(), 0, n / RATE_HZ
    deadline = time.monotonic() + seconds
    info = None
    round_ = 0
    while time.monotonic() < deadline:
        t0 = t_start + round_ * period  # every device's clock advances one message per round
        for d, topic in enumerate(topics):
            while count - taken.value > ahead:  # the receiver is behind: let it catch up
                time.sleep(0.0005)
                if time.monotonic() > deadline:
                    break
            info = client.publish(topic, _message(fmt, t0, n, blocks[(d + round_) % BLOCKS]), qos=qos)
            count += 1
        round_ += 1
    if info is not None and qos > 0:
        info.wait_for_publish(30)
    published.value = count
    client.disconnect()
    client.loop_stop()


# -- the receiver (this process) -----------------------------------------------------------------
@dataclass
class Tally:
    """What reached the scheduler, and when: by the monotonic clock and this process's CPU clock."""

    samples: int = 0
    messages: int = 0
    windows: int = 0
    first: float = 0.0
    last: float = 0.0
    cpu_first: float = 0.0
    cpu_last: float = 0.0

    def took(self, batch: SampleBatch, windows: int) -> None:
        now = time.monotonic()
        if not self.messages:
            self.first, self.cpu_first = now, time.process_time()
        self.last, self.cpu_last = now, time.process_time()
        self.messages += 1
        self.samples += len(batch.timestamps)
        self.windows += windows


def _subscribe(url: str, qos: int, channels: tuple[str, ...], devices: int,
               handoff: queue.Queue[SampleBatch], stop: threading.Event) -> MqttSource:  # fmt: skip
    """The real MQTT source (QoS ``qos``, as ``harstream mqtt`` subscribes), connected, handing
    every batch to ``handoff``; it runs until ``stop``."""
    options = MqttOptions(parse_broker(url), TopicPattern.parse("har/+/imu"),
                          client_id=f"bench-{os.getpid()}", qos=qos)  # fmt: skip
    source = MqttSource(options, channels, max_devices=max(10_000, devices))

    def emit(batch: SampleBatch) -> None:  # paho's thread: blocks while the queue is full
        while not stop.is_set():
            try:
                handoff.put(batch, timeout=0.1)
                return
            except queue.Full:
                continue

    threading.Thread(target=source.run, args=(emit, stop), name="bench-mqtt", daemon=True).start()
    if not source.connected.wait(10):
        raise RuntimeError(f"bench: no connection to {url}: {source.status}")
    return source


def _take_in(handoff: queue.Queue[SampleBatch], scheduler, publisher, taken, published, engine=None) -> Tally:
    """Push what arrives into the scheduler (and the engine, if any) until the publisher's last
    message is in, or nothing more comes; ``taken`` tells the publisher how far the receiver is."""
    tally, pending = Tally(), []
    while True:
        try:
            batch = handoff.get(timeout=0.5)
        except queue.Empty:
            if published.value >= 0 and (tally.messages >= published.value or not publisher.is_alive()):
                break
            if published.value >= 0 and time.monotonic() - tally.last > 5.0:
                break  # the rest is not coming
            continue
        ready_windows = scheduler.push(batch)
        tally.took(batch, len(ready_windows))
        taken.value = tally.messages
        if engine is not None:
            pending += ready_windows
            if len(pending) >= engine.max_batch:
                engine.probabilities(pending)
                pending = []
    return tally


def measure_mqtt_ingestion(fmt: str, devices: int = 200, seconds: float = 10.0,
                           samples_per_message: int = 50, engine=None, qos: int = 1,
                           ahead: int = 5000) -> dict:  # fmt: skip
    """Samples per second that reach the scheduler from ``devices`` publishing ``fmt`` messages.

    Returns ``{"format", "samples_per_s", "messages_per_s", "dropped", "devices"}`` and, for the
    record, ``"samples"``, ``"messages"``, ``"published_messages"``, ``"windows"``, ``"seconds"``,
    ``"receiver_cpu_s"``.
    """
    from model.data.recordings import load_hapt
    from model.data.signals import HAPT_CHANNELS, PreprocessingSpec
    from streamer.core.scheduler import Scheduler

    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    n = samples_per_message
    values = load_hapt((2,))[0].values[:, [HAPT_CHANNELS.index(c) for c in ACC + GYRO]]
    spec = PreprocessingSpec()  # UCI HAR: median, 20 Hz low-pass, gravity split
    scheduler = Scheduler(spec, window=128, hop=32, rate_hz=RATE_HZ, max_devices=max(10_000, devices))
    context = multiprocessing.get_context("spawn")
    taken = context.RawValue("q", 0)  # messages the scheduler took in, read by the publisher
    published = context.RawValue("q", -1)  # messages the publisher sent, once it is done
    ready, go = context.Event(), context.Event()
    with tempfile.TemporaryDirectory() as folder:
        # the publisher is kept in step with the receiver, so the broker's queue stays below this
        broker = Mosquitto(Path(folder), extra=(f"max_queued_messages {4 * ahead}",))
        stop = threading.Event()
        try:
            handoff: queue.Queue[SampleBatch] = queue.Queue(maxsize=256)  # as the pipeline's queue
            source = _subscribe(broker.url, qos, spec.inputs, devices, handoff, stop)
            work = (broker.url, fmt, devices, seconds, n, values, qos, ahead, taken, published, ready, go)
            publisher = context.Process(target=_publish, args=work, daemon=True)
            publisher.start()
            if not ready.wait(60):
                raise RuntimeError("bench: the publisher did not start")
            go.set()
            tally = _take_in(handoff, scheduler, publisher, taken, published, engine)
            stop.set()
            publisher.join(10)
            source.close()
        finally:
            stop.set()
            broker.stop()
    refused = sum(source.rejected.values()) * n + sum(
        s.counters.dropped_total for s in scheduler.devices.values())  # fmt: skip
    return _result(fmt, tally, max(published.value, 0), n, refused, len(scheduler.devices))


def _result(fmt: str, tally: Tally, published: int, n: int, refused: int, devices: int) -> dict:
    """The figures: rates over the time from the first to the last batch that reached the scheduler."""
    elapsed = max(tally.last - tally.first, 1e-9)
    return {
        "format": fmt,
        "samples_per_s": round(tally.samples / elapsed, 1),
        "messages_per_s": round(tally.messages / elapsed, 1),
        "dropped": max(0, published * n - tally.samples) + refused,
        "devices": devices,
        "samples": tally.samples,
        "messages": tally.messages,
        "published_messages": published,
        "windows": tally.windows,
        "seconds": round(elapsed, 3),
        # CPU seconds this process used meanwhile (paho's thread and the scheduler's): well under
        # "seconds" means the receiver waited, for the publisher or for a core
        "receiver_cpu_s": round(tally.cpu_last - tally.cpu_first, 3),
    }


def main() -> None:

    from streamer.options import OneLineParser, count, number

    parser = OneLineParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=count(1, 100_000), default=200)
    parser.add_argument("--seconds", type=number(1, 3600), default=10.0)
    parser.add_argument("--samples-per-message", type=count(1, 10_000), default=50)
    parser.add_argument("--format", choices=FORMATS, action="append", help="default: both")
    args = parser.parse_args()
    for fmt in args.format or FORMATS:
        result = measure_mqtt_ingestion(fmt, args.devices, args.seconds, args.samples_per_message)
        print(dumps(result), flush=True)


if __name__ == "__main__":
    main()
