"""What a source is: everything the pipeline and the commands use of one, declared in one place.

A source produces sample batches: a replayed recording (:class:`replay.sources.ReplaySource`), a
broker (:class:`streamer.sources.mqtt.MqttSource`), a serial port
(:class:`streamer.sources.serial_source.SerialSource`), a simulated fleet
(:class:`streamer.tools.bench.Fleet`). :class:`Source` is the contract; :class:`SourceBase` gives
its defaults and the one way a source reports input it cannot use: ``reject(device, reason,
count=1)`` into a :class:`~streamer.core.drops.Drops` ledger, its own until
:meth:`Source.bind` hands it the pipeline's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from streamer.core.drops import Drops
from streamer.core.types import FleetBatch, SampleBatch


@dataclass(frozen=True)
class Deferred:
    """A live source's message, not decoded yet: its thread (a broker connection) then does the
    least work per message, and what an overload sheds was never paid for."""

    device: str
    # run in the pipeline's thread; None: unusable (counted), or no longer this worker's to take
    # (a fleet partition handed to another worker: the broker redelivers it there)
    decode: Callable[[], SampleBatch | None]
    # told, in the pipeline's thread, once the message has been taken into the device's stream (or
    # refused): when a broker that redelivers (AMQP, streamer.sources.fleet) may be acknowledged
    taken: Callable[[], None] | None = None


Emit = Callable[[SampleBatch | FleetBatch | Deferred], None]


class Source(Protocol):
    """Anything that produces sample batches."""

    name: str  # shown on the dashboard and in logs
    status: str  # one line for the dashboard: "playing", "connected", "retrying in 4 s", ...
    # A live source cannot be paused (a broker, a serial port): the pipeline sheds its oldest
    # queued input rather than block its thread. Not live (a replay): blocked while the queue is full.
    live: bool
    fatal: str | None  # why the source gave up for good (refused, taken over), said once; None: it did not

    def bind(self, drops: Drops) -> None:
        """The source now feeds a pipeline: count unusable input into ``drops`` (what was counted
        before moves there too). A live source may from now on hand over :class:`Deferred`
        messages, which the pipeline decodes in its own thread."""
        ...

    def run(self, emit: Emit, stop: threading.Event) -> None:
        """Emit batches (one device's, or many devices' at once) until the source ends or ``stop``
        is set."""
        ...

    def close(self) -> None:
        """Let go of what the source holds (a broker connection); safe to call more than once."""
        ...

    def summary(self) -> dict[str, int]:
        """The source's own tallies for the run's summary (an MQTT shard: other shards' messages)."""
        ...

    def released(self) -> list[str]:
        """Devices the source no longer carries since the last call (a fleet partition that another
        worker took): the pipeline forgets them, as it forgets idle ones."""
        ...

    def lead_s(self) -> float:
        """How far the source's clock would run ahead of the wall clock by its end (a replay faster
        than real time); the store moves the run back by this much. A live source's: none."""
        ...


class SourceBase:
    """The defaults of :class:`Source`, and :meth:`reject`: a source's one way to count bad input."""

    name = "source"
    status = "waiting"
    live = False
    fatal: str | None = None

    def __init__(self) -> None:
        self.drops = Drops()  # its own until bound: counts from before a pipeline exists are kept
        self._drops_lock = threading.Lock()

    def bind(self, drops: Drops) -> None:
        with self._drops_lock:
            own, self.drops = self.drops, drops
        drops.absorb(own)

    def reject(self, device: str, reason: str, count: int = 1) -> None:
        """Count ``count`` unusable items (samples, or messages) of ``device`` under ``reason``."""
        with self._drops_lock:  # never into a ledger that bind() has just emptied
            self.drops.add(device, reason, count)

    def run(self, emit: Emit, stop: threading.Event) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def summary(self) -> dict[str, int]:
        return {}

    def released(self) -> list[str]:
        return []

    def lead_s(self) -> float:
        return 0.0
