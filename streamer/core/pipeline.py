"""The live loop: sources ─▶ scheduler ─▶ engine ─▶ predictions, as one generator.

Sources run in their own threads and hand sample batches over a bounded :class:`Ingress`. A full
one blocks a replay source, which is how ``--speed 0`` runs as fast as inference allows; a live
source (``live = True``: MQTT, serial) is never blocked, since its thread is also what keeps the
broker connection or the port's buffer drained: the oldest queued batch is shed and counted
instead (see :class:`Ingress`). The loop micro-batches: windows that become ready wait at most
``max_wait_s`` for others to share a batch, except after a :class:`FleetBatch`, which brings every
one of its devices' windows of that moment at once (waiting would only add latency).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from streamer.core.drops import Drops
from streamer.core.source import Deferred, Source
from streamer.core.types import FleetBatch, Prediction, SampleBatch, Window

if TYPE_CHECKING:  # annotations only: the engine imports the backends, the scheduler the filters
    from streamer.core.engine import Decider, InferenceEngine
    from streamer.core.scheduler import Scheduler

log = logging.getLogger(__name__)

__all__ = ["Deferred", "Ingress", "Pipeline", "PipelineStats", "Sink", "Source"]


class Rate:
    """Events per second over a sliding few seconds."""

    def __init__(self, horizon_s: float = 5.0) -> None:
        self.horizon_s = horizon_s
        self.events: deque[tuple[float, int]] = deque()

    def add(self, count: int, now: float) -> None:
        self.events.append((now, count))
        while self.events and now - self.events[0][0] > self.horizon_s:
            self.events.popleft()

    def per_second(self, now: float) -> float:
        while self.events and now - self.events[0][0] > self.horizon_s:
            self.events.popleft()
        if not self.events:
            return 0.0
        span = max(now - self.events[0][0], 1.0)
        return sum(c for _, c in self.events) / span


@dataclass
class PipelineStats:
    started: float = field(default_factory=time.monotonic)
    samples: int = 0
    windows: int = 0
    correct: int = 0
    judged: int = 0  # predictions whose window had a known truth
    sample_rate: Rate = field(default_factory=Rate)
    window_rate: Rate = field(default_factory=Rate)
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=2000))

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.judged if self.judged else None

    def latency_percentile(self, q: float) -> float | None:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else None


class Sink(Protocol):
    """What the pipeline tells a sink (MQTT out, episodes and through them the store, ...): every
    prediction, and each device it forgets (idle, or its slot given to a new one), so that the sink
    takes back what it published about it; its tallies join the pipeline's :meth:`Pipeline.summary`.
    ``close`` is for whoever ends the run. :class:`streamer.sinks.base.SinkBase` gives the defaults,
    so every sink has all four (nothing is looked up by name)."""

    def __call__(self, prediction: Prediction) -> None: ...

    def forget(self, device: str) -> None: ...

    def close(self) -> None: ...

    def summary(self) -> dict: ...


class _Finished:
    def __init__(self, source: Source) -> None:
        self.source = source


SHED = "queue full (shed oldest)"  # the drop reason of samples a live source's overload pushed out
SHED_MESSAGES = "queue full (shed oldest, messages)"  # the same for Deferred messages: counts messages
NEW_DEVICES = "(new devices)"  # their key: devices the scheduler does not serve, one number (a flood
# of new ids must not grow the counters without bound)
FLEET = "(fleet)"  # the queue's key of a FleetBatch, which holds many devices
TAKE = 1024  # items the loop takes off the queue at once: a live source's messages are pushed together

Batch = SampleBatch | FleetBatch | Deferred
Item = Batch | _Finished


class _Entry:
    __slots__ = ("alive", "item", "key", "new", "samples")

    def __init__(self, item: Item, key: str | None, samples: int, new: bool) -> None:
        self.item = item
        self.key = key  # the device (FLEET for a FleetBatch), None for an end-of-source marker
        self.samples = samples
        self.new = new  # the scheduler did not serve the device when the batch came
        self.alive = True  # False once shed (the global order drops it lazily)


class Ingress:
    """The bounded hand-over from source threads to the pipeline loop, in arrival order.

    :meth:`put` waits for room (back-pressure, for replays). :meth:`offer` never waits: when the
    queue is full it sheds the oldest batch of the device whose loss costs least, first a device
    the scheduler does not serve yet (a flood of new ids cannot push served devices' samples out),
    else the device with the most samples queued (one device flooding cannot push the others
    out), and counts the shed samples per device for :meth:`take_shed`. End-of-source markers
    are never shed and never wait.
    """

    def __init__(self, capacity: int, serving: Callable[[str], bool] = lambda device: False) -> None:
        self.capacity = capacity
        self.serving = serving  # does the scheduler serve this device now (read from source threads)
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._order: deque[_Entry] = deque()  # every entry in arrival order, shed ones included
        self._size = 0  # batches queued, alive, markers excluded
        self._new: deque[_Entry] = deque()  # entries of devices not served when they came
        self._by_key: dict[str, deque[_Entry]] = {}  # alive entries of each device, oldest first
        self._queued: dict[str, int] = {}  # samples queued per device
        self._shed: Counter = Counter()  # (counter key, reason) -> samples shed, until taken

    def __len__(self) -> int:
        return self._size

    def put(self, item: Batch, stop: threading.Event) -> bool:
        """Queue ``item`` once there is room; False if ``stop`` was set first."""
        with self._not_full:
            while self._size >= self.capacity:
                if stop.is_set():
                    return False
                self._not_full.wait(0.1)
            self._append(item)
        return True

    def offer(self, item: Batch) -> None:
        """Queue ``item`` now, shedding the least costly oldest batch if the queue is full."""
        key = FLEET if isinstance(item, FleetBatch) else item.device
        new = key != FLEET and not self.serving(key)
        with self._lock:
            while self._size >= self.capacity and self._shed_one():
                pass
            self._append(item, new)

    def finished(self, marker: _Finished) -> None:
        with self._lock:
            self._order.append(_Entry(marker, None, 0, False))
            self._not_empty.notify()

    def get(self, timeout: float) -> Item | None:
        """The oldest queued item, or None after ``timeout`` seconds."""
        items = self.get_many(timeout, 1)
        return items[0] if items else None

    def get_many(self, timeout: float, limit: int) -> list[Item]:
        """The oldest queued items, at most ``limit``: whatever is queued now, else what comes first
        within ``timeout`` seconds (empty if nothing does). Taking them together costs one lock,
        not one per message."""
        with self._not_empty:
            while True:
                while self._order and not self._order[0].alive:
                    self._order.popleft()
                if self._order:
                    break
                if timeout <= 0 or not self._not_empty.wait(timeout):
                    return []
                timeout = 0  # woken: take what came, or give up
            items: list[Item] = []
            while self._order and len(items) < limit:
                entry = self._order.popleft()
                if not entry.alive:
                    continue
                if entry.key is not None:
                    self._remove(entry)
                items.append(entry.item)
            self._not_full.notify_all()
        return items

    def take_shed(self) -> Counter:
        """The samples shed since the last call, by (counter key, reason)."""
        with self._lock:
            shed, self._shed = self._shed, Counter()
        return shed

    # -- under the lock --------------------------------------------------------------------------
    def _append(self, item: Batch, new: bool = False) -> None:
        key = FLEET if isinstance(item, FleetBatch) else item.device
        samples = 1 if isinstance(item, Deferred) else int(np.size(item.timestamps))  # Deferred: a message
        entry = _Entry(item, key, samples, new)
        self._order.append(entry)
        self._by_key.setdefault(key, deque()).append(entry)
        self._queued[key] = self._queued.get(key, 0) + entry.samples
        if new:
            self._new.append(entry)
        self._size += 1
        self._not_empty.notify()

    def _remove(self, entry: _Entry) -> None:
        entry.alive = False
        self._size -= 1
        entries = self._by_key[entry.key]
        if entries[0] is entry:
            entries.popleft()
        else:  # a new device's entry shed out of turn: rare, and a device queues few
            entries.remove(entry)
        if entries:
            self._queued[entry.key] -= entry.samples
        else:
            del self._by_key[entry.key], self._queued[entry.key]

    def _shed_one(self) -> bool:
        while self._new and not self._new[0].alive:
            self._new.popleft()
        if self._new:
            entry = self._new.popleft()
        elif self._queued:
            entry = self._by_key[max(self._queued, key=self._queued.__getitem__)][0]
        else:
            return False  # only markers queued
        self._remove(entry)
        item = entry.item
        if isinstance(item, FleetBatch):
            for device in item.devices:
                self._shed[device, SHED] += item.timestamps.shape[1]
        else:
            reason = SHED_MESSAGES if isinstance(item, Deferred) else SHED
            self._shed[NEW_DEVICES if entry.new else entry.key, reason] += entry.samples
            if isinstance(item, Deferred) and item.taken is not None:
                item.taken()  # refused (counted): nothing to redeliver
        return True


class Pipeline:
    """Sources, scheduler, engine and decider as one loop (:meth:`run`), and what the dashboard
    and the summary read of them (:meth:`dropped`, :meth:`buffer_fill`, :meth:`signal`,
    :meth:`summary`).

    Every drop of the run is counted in one ledger, :attr:`drops`: the scheduler's (it forgets
    devices, and folds their counts into the totals), which the sources, the queue and the decider
    report into as well."""

    def __init__(
        self,
        sources: list[Source],
        scheduler: Scheduler,
        engine: InferenceEngine,
        decider: Decider,
        max_wait_s: float = 0.02,
        queue_size: int = 256,
    ) -> None:
        self.sources = sources
        self.scheduler = scheduler
        self.engine = engine
        self.decider = decider
        self.max_wait_s = max_wait_s
        self.drops: Drops = scheduler.drops
        for part in (*sources, decider):
            part.bind(self.drops)
        # ``in`` on the scheduler's dict from a source thread: atomic under the GIL, and a stale
        # answer only changes which batch is shed first
        self.queue = Ingress(queue_size, serving=lambda device: device in scheduler.devices)
        self.stop_event = threading.Event()
        self.stats = PipelineStats()
        self.latest: dict[str, Prediction] = {}  # device -> its latest prediction
        self.threads: list[threading.Thread] = []
        self.sinks: list[Sink] = []  # told of every prediction (MQTT out, ...)
        self._shedding_logged = -float("inf")

    # -- what the dashboard and the summary read -------------------------------------------------
    def dropped(self, device: str | None = None) -> Counter:
        """What was dropped for ``device`` by reason, from the wire to the model's output; with no
        device, for every device (forgotten and refused ones included)."""
        return self.drops.by_reason() if device is None else self.drops.of(device)

    def buffer_fill(self) -> float | None:
        """How full the served devices' ring buffers are, on average (0-1); None: no device yet."""
        fills = [stream.ring.fill for stream in list(self.scheduler.devices.values())]
        return sum(fills) / len(fills) if fills else None

    def signal(self, device: str) -> list[float]:
        """The device's recent acceleration magnitudes, oldest first (empty once forgotten)."""
        stream = self.scheduler.devices.get(device)
        return list(stream.signal_magnitude) if stream is not None else []

    @property
    def rate_hz(self) -> float:
        """The model's sample rate, which every device is resampled to."""
        return self.scheduler.rate_hz

    # -- sources' hand-over (their threads) ------------------------------------------------------
    def emit(self, batch: Batch) -> None:
        """A replay source's hand-over, from its thread: blocks while the queue is full."""
        self.queue.put(batch, self.stop_event)

    def offer(self, batch: Batch) -> None:
        """A live source's hand-over, from its thread: never blocks; when the queue is full the
        oldest batch of the device that costs least is shed and counted (see :class:`Ingress`)."""
        self.queue.offer(batch)

    def _run_source(self, source: Source) -> None:
        try:
            source.run(self.offer if source.live else self.emit, self.stop_event)
        except Exception as error:  # a source's failure must not take the pipeline down
            log.error("source %s stopped: %s", source.name, error)
            source.status = f"stopped: {error}"
        finally:
            self.queue.finished(_Finished(source))

    # -- the loop (the caller's thread) ----------------------------------------------------------
    def stop(self) -> None:
        self.stop_event.set()

    def run(self) -> Iterator[Prediction]:
        """Predictions as they are made, until every source has ended (or :meth:`stop`).

        Windows wait at most ``max_wait_s`` for company; a full batch (or a fleet's whole moment)
        goes at once. Once a second, idle devices are forgotten and shed input is counted."""
        self._start_sources()
        running = len(self.sources)
        pending: list[Window] = []
        oldest = 0.0
        last_chores = time.monotonic()
        while running and not self.stop_event.is_set():
            now = time.monotonic()
            items = self.queue.get_many(max(0.0, oldest + self.max_wait_s - now) if pending else 0.2, TAKE)
            windows, whole, ended = self._schedule(items)  # whole: a fleet's moment, waiting adds nothing
            running -= ended
            if windows and not pending:
                oldest = windows[0].arrival
            pending += windows
            now = time.monotonic()
            full = whole or len(pending) >= self.engine.max_batch
            if pending and (full or now - oldest >= self.max_wait_s):
                yield from self._infer(pending)
                pending = []
            if now - last_chores > 1.0:
                last_chores = now
                self._chores(now)
        if pending:
            yield from self._infer(pending)
        self.stop_event.set()
        self._count_shed(time.monotonic())

    def _start_sources(self) -> None:
        for source in self.sources:
            thread = threading.Thread(target=self._run_source, args=(source,), name=source.name, daemon=True)
            thread.start()
            self.threads.append(thread)

    def _schedule(self, items: list[Item]) -> tuple[list[Window], bool, int]:
        """The windows that ``items`` make ready, whether they hold a fleet's whole moment, and how
        many sources ended among them. Messages are decoded here, in this thread, and pushed
        together with the other plain batches (:meth:`Scheduler.push_many`); a broker that
        redelivers is told a message was taken only once it is in its device's stream."""
        windows: list[Window] = []
        whole, ended = False, 0
        plain: list[SampleBatch] = []
        taken: list[Callable[[], None]] = []
        try:
            for item in items:
                if isinstance(item, _Finished):
                    ended += 1
                elif isinstance(item, Deferred):
                    if item.taken is not None:
                        taken.append(item.taken)
                    batch = item.decode()  # None: the source counted why (or it is no longer ours)
                    if batch is not None:
                        plain.append(batch)
                elif isinstance(item, FleetBatch):
                    windows += self._push(plain)  # what came before it goes first
                    plain = []
                    fleet = self.scheduler.push_fleet(item)
                    self._count_samples(int(np.size(item.timestamps)))
                    whole = whole or bool(fleet)
                    windows += fleet
                else:
                    plain.append(item)
            windows += self._push(plain)
        finally:
            for ack in taken:
                ack()
        return windows, whole, ended

    def _push(self, batches: list[SampleBatch]) -> list[Window]:
        if not batches:
            return []
        self._count_samples(sum(len(b.timestamps) for b in batches))
        return self.scheduler.push_many(batches)  # one batch alone: push_many pushes it as it is

    def _count_samples(self, samples: int) -> None:
        self.stats.samples += samples
        self.stats.sample_rate.add(samples, time.monotonic())

    def _chores(self, now: float) -> None:
        """Forget idle devices and those a source let go (and tell the decider and the sinks); count
        what the queue shed."""
        for device in self.scheduler.evict_idle(now):
            self._forget(device)
        for source in self.sources:
            for device in source.released():
                if self.scheduler.forget(device):
                    self._forget(device)
        self._count_shed(now)

    def _count_shed(self, now: float) -> None:
        """Move the queue's shed samples into the ledger (one log line per overload)."""
        shed = self.queue.take_shed()
        if not shed:
            return
        for (device, reason), count in shed.items():
            self.drops.add(device, reason, count, quiet=True)
        if now - self._shedding_logged > 10.0:  # one line per overload, not one per device
            log.warning("input arrives faster than it is recognized: shedding the oldest queued batches "
                        "(counted as %r)", SHED)  # fmt: skip
        self._shedding_logged = now

    def _forget(self, device: str) -> None:
        """The scheduler forgot ``device``: so do the decider, the dashboard and the sinks."""
        self.decider.forget(device)
        self.latest.pop(device, None)
        for sink in self.sinks:
            try:
                sink.forget(device)
            except Exception as error:  # as in _infer: a sink's failure must not stop recognition
                log.error("sink %s failed to forget %s: %s", sink, device, error)

    def _infer(self, windows: list[Window]) -> Iterator[Prediction]:
        probs = self.engine.probabilities(windows)
        now = time.monotonic()
        self.stats.windows += len(windows)
        self.stats.window_rate.add(len(windows), now)
        for prediction in self.decider.decide(windows, probs):
            self.stats.latencies_ms.append(prediction.latency_ms)
            if prediction.truth is not None:
                self.stats.judged += 1
                self.stats.correct += prediction.label == prediction.truth
            self.latest[prediction.device] = prediction
            for sink in self.sinks:
                try:
                    sink(prediction)
                except Exception as error:  # a sink's failure must not stop recognition
                    log.error("sink %s failed: %s", sink, error)
            yield prediction

    def summary(self) -> dict:
        totals = self.scheduler.totals()  # forgotten and refused devices included
        dropped = self.dropped()
        extra: dict = {}
        for source in self.sources:  # a source's own tallies (an MQTT shard: other shards' messages)
            extra |= source.summary()
        for sink in self.sinks:  # a sink's own (predictions that could not be published)
            extra |= sink.summary()
        return {
            "windows": self.stats.windows,
            "accuracy": self.stats.accuracy,
            "judged": self.stats.judged,
            "samples": self.stats.samples,
            "dropped": sum(dropped.values()),
            "dropped_by_reason": dict(dropped),
            "gaps": totals.gaps,
            "clock_jumps": totals.clock_jumps,
            "devices": len(self.scheduler.devices),
            "devices_forgotten": self.scheduler.evicted_devices,
            "latency_p50_ms": self.stats.latency_percentile(50),
            "latency_p99_ms": self.stats.latency_percentile(99),
            "seconds": round(time.monotonic() - self.stats.started, 3),
            **extra,
        }
