"""The hand-over from sources to the pipeline: a live source never waits, and what a full queue
sheds is chosen (new ids before served devices, the heaviest device first) and counted."""

from __future__ import annotations

import threading
import time

import numpy as np
from live_fixtures import wait_until

from model.data.signals import HAPT_CHANNELS
from streamer.cli.main import build_parser
from streamer.core.pipeline import NEW_DEVICES, SHED, Ingress, _Finished
from streamer.core.source import SourceBase
from streamer.core.types import SampleBatch
from streamer.live import LiveOptions, assemble, open_checkpoint


def batch(device: str, n: int = 5, t0: float = 0.0) -> SampleBatch:
    t = t0 + np.arange(n) / 50.0
    return SampleBatch(device, t, np.zeros((n, len(HAPT_CHANNELS))), HAPT_CHANNELS, arrival=time.monotonic(),
                       rate_hz=50.0)  # fmt: skip


def drain(ingress: Ingress) -> list:
    items = []
    while (item := ingress.get(0)) is not None:
        items.append(item)
    return items


def test_a_full_queue_sheds_new_device_ids_before_any_served_device() -> None:
    ingress = Ingress(4, serving=lambda device: device.startswith("served"))
    ingress.offer(batch("served-a", 50))  # the heaviest, and the oldest: still kept
    ingress.offer(batch("served-b"))
    for k in range(10):
        ingress.offer(batch(f"new-{k}"))
    assert len(ingress) == 4
    kept = [item.device for item in drain(ingress)]
    assert kept == ["served-a", "served-b", "new-8", "new-9"]  # arrival order; the oldest new ids went
    assert ingress.take_shed() == {(NEW_DEVICES, SHED): 8 * 5}  # one counter for all new ids
    assert ingress.take_shed() == {}  # taken once


def test_among_served_devices_the_one_with_most_queued_samples_loses_its_oldest_batch() -> None:
    ingress = Ingress(3, serving=lambda device: True)
    ingress.offer(batch("quiet", 5, t0=0))
    ingress.offer(batch("loud", 20, t0=0))
    ingress.offer(batch("loud", 20, t0=1))
    ingress.offer(batch("quiet", 5, t0=1))  # full: loud (40 queued) loses its oldest batch
    ingress.offer(batch("loud", 20, t0=2))  # full: loud (40) again
    kept = [(item.device, float(item.timestamps[0])) for item in drain(ingress)]
    assert kept == [("quiet", 0.0), ("quiet", 1.0), ("loud", 2.0)]
    assert ingress.take_shed() == {("loud", SHED): 40}


def test_end_of_source_markers_are_never_shed_and_keep_their_place() -> None:
    ingress = Ingress(2)
    ingress.offer(batch("a"))
    marker = _Finished(source=None)
    ingress.finished(marker)
    ingress.offer(batch("b"))
    ingress.offer(batch("c"))  # full: sheds "a" (the oldest), never the marker
    items = drain(ingress)
    assert items[0] is marker and [i.device for i in items[1:]] == ["b", "c"]


def test_a_replay_put_waits_for_room_and_gives_up_when_stopped() -> None:
    ingress = Ingress(1)
    stop = threading.Event()
    assert ingress.put(batch("a"), stop)
    done: list[bool] = []
    waiter = threading.Thread(target=lambda: done.append(ingress.put(batch("b"), stop)))
    waiter.start()
    time.sleep(0.3)
    assert not done  # back-pressure: a replay waits for the pipeline
    assert ingress.get(0).device == "a"
    waiter.join(2)
    assert done == [True] and ingress.get(0).device == "b"
    assert ingress.put(batch("c"), stop)
    stop.set()
    assert ingress.put(batch("d"), stop) is False  # full and stopped: no wait forever
    assert ingress.take_shed() == {}


class Flood(SourceBase):
    """A live source that sends as fast as it can and records how long each hand-over took."""

    live = True
    name = "flood"
    status = "sending"

    def __init__(self, devices: int, messages: int) -> None:
        super().__init__()
        self.devices, self.messages = devices, messages
        self.longest_emit = 0.0
        self.sent = 0

    def run(self, emit, stop: threading.Event) -> None:
        for m in range(self.messages):
            for d in range(self.devices):
                started = time.monotonic()
                emit(batch(f"wearer-{d}", 10, t0=m * 0.2))
                self.longest_emit = max(self.longest_emit, time.monotonic() - started)
                self.sent += 10


def test_a_live_source_is_never_blocked_by_a_slow_pipeline_and_every_shed_sample_is_counted(
    tiny_checkpoint,
) -> None:
    args = build_parser().parse_args(["mqtt", "--broker", "mqtt://x", "--checkpoint", str(tiny_checkpoint)])
    flood = Flood(devices=20, messages=100)
    pipeline = assemble(LiveOptions.from_args(args), open_checkpoint(tiny_checkpoint), [flood]).pipeline
    push = pipeline.scheduler.push

    def slow_push(item):  # a pipeline a hundred times slower than the source
        time.sleep(0.002)
        return push(item)

    pipeline.scheduler.push = slow_push
    collected = threading.Thread(target=lambda: list(pipeline.run()), daemon=True)
    collected.start()
    assert wait_until(lambda: not collected.is_alive(), 60)
    shed = pipeline.dropped()[SHED]
    assert flood.longest_emit < 0.05  # was: blocked while the queue was full, for seconds
    assert shed > 0 and pipeline.stats.samples + shed == flood.sent  # every sample: recognized or counted
