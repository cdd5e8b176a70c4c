"""The live loop: sources ─▶ scheduler ─▶ engine ─▶ predictions, as one generator.

Sources run in their own threads and hand sample batches over a bounded queue (a full queue
blocks a replay source, which is how ``--speed 0`` runs as fast as inference allows). The loop
micro-batches: windows that become ready wait at most ``max_wait_s`` for others to share a batch,
except after a :class:`FleetBatch`, which brings every one of its devices' windows of that moment
at once (waiting would only add latency).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from streamer.engine import Decider, InferenceEngine
from streamer.scheduler import Scheduler
from streamer.types import FleetBatch, Prediction, SampleBatch, Window

log = logging.getLogger(__name__)


class Source(Protocol):
    """Anything that produces sample batches: a replayed recording, a broker, a serial port."""

    name: str
    status: str  # one line for the dashboard: "playing", "connected", "retrying in 4 s", ...

    def run(self, emit: Callable[[SampleBatch | FleetBatch], None], stop: threading.Event) -> None:
        """Emit batches (one device's, or many devices' at once) until the source ends or ``stop``
        is set."""
        ...


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
    bad_input: dict[str, Counter] = field(default_factory=dict)  # device -> reason -> count
    bad_input_logged: set = field(default_factory=set)

    def reject(self, device: str, reason: str, count: int = 1) -> None:
        """A source could not use some input: count it per device, log it once per reason."""
        self.bad_input.setdefault(device, Counter())[reason] += count
        if (device, reason) not in self.bad_input_logged and len(self.bad_input_logged) < 1000:
            self.bad_input_logged.add((device, reason))
            log.warning("%s: bad input (%s)", device, reason)

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.judged if self.judged else None

    def latency_percentile(self, q: float) -> float | None:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else None


class _Finished:
    def __init__(self, source: Source) -> None:
        self.source = source


class Pipeline:
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
        self.queue: queue.Queue[SampleBatch | FleetBatch | _Finished] = queue.Queue(maxsize=queue_size)
        self.stop_event = threading.Event()
        self.stats = PipelineStats()
        self.latest: dict[str, Prediction] = {}  # device -> its latest prediction
        self.threads: list[threading.Thread] = []
        self.sinks: list[Callable[[Prediction], None]] = []  # told of every prediction (MQTT out, ...)

    def emit(self, batch: SampleBatch | FleetBatch) -> None:
        """Called by sources from their threads; blocks while the queue is full."""
        while not self.stop_event.is_set():
            try:
                self.queue.put(batch, timeout=0.1)
                return
            except queue.Full:
                continue

    def _run_source(self, source: Source) -> None:
        try:
            source.run(self.emit, self.stop_event)
        except Exception as error:  # a source's failure must not take the pipeline down
            log.error("source %s stopped: %s", source.name, error)
            source.status = f"stopped: {error}"
        finally:
            self.queue.put(_Finished(source))

    def stop(self) -> None:
        self.stop_event.set()

    def run(self) -> Iterator[Prediction]:
        """Predictions as they are made, until every source has ended (or :meth:`stop`)."""
        for source in self.sources:
            thread = threading.Thread(target=self._run_source, args=(source,), name=source.name, daemon=True)
            thread.start()
            self.threads.append(thread)
        running = len(self.sources)
        pending: list[Window] = []
        oldest = 0.0
        last_eviction = time.monotonic()
        while running and not self.stop_event.is_set():
            now = time.monotonic()
            timeout = max(0.0, oldest + self.max_wait_s - now) if pending else 0.2
            try:
                item = self.queue.get(timeout=timeout)
            except queue.Empty:
                item = None
            whole = False  # pending holds a whole moment of a fleet: waiting would add no windows
            if isinstance(item, _Finished):
                running -= 1
            elif item is not None:
                if isinstance(item, FleetBatch):
                    windows = self.scheduler.push_fleet(item)
                    whole = bool(windows)
                else:
                    windows = self.scheduler.push(item)
                self.stats.samples += np.size(item.timestamps)
                self.stats.sample_rate.add(np.size(item.timestamps), time.monotonic())
                if windows and not pending:
                    oldest = windows[0].arrival
                pending += windows
            now = time.monotonic()
            full = whole or len(pending) >= self.engine.max_batch
            if pending and (full or now - oldest >= self.max_wait_s):
                yield from self._infer(pending)
                pending = []
            if now - last_eviction > 1.0:
                last_eviction = now
                for device in self.scheduler.evict_idle(now):
                    self.decider.forget(device)
                    self.latest.pop(device, None)
        if pending:
            yield from self._infer(pending)
        self.stop_event.set()

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
        devices = self.scheduler.devices
        dropped: Counter = Counter()
        for stream in devices.values():
            dropped.update(stream.counters.dropped)
        for reasons in self.stats.bad_input.values():
            dropped.update(reasons)
        elapsed = time.monotonic() - self.stats.started
        extra: dict = {}
        for source in self.sources:  # a source's own tallies (an MQTT shard: other shards' messages)
            extra |= getattr(source, "summary", dict)()
        return {
            "windows": self.stats.windows,
            "accuracy": self.stats.accuracy,
            "judged": self.stats.judged,
            "samples": self.stats.samples,
            "dropped": sum(dropped.values()),
            "dropped_by_reason": dict(dropped),
            "gaps": sum(s.counters.gaps for s in devices.values()),
            "devices": len(devices),
            "latency_p50_ms": self.stats.latency_percentile(50),
            "latency_p99_ms": self.stats.latency_percentile(99),
            "seconds": round(elapsed, 3),
            **extra,
        }
