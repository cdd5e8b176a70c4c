"""Recordings played back as live devices.

A SOURCE names what to play: ``hapt:2`` (subject 2's sessions, one after the other, as device
``hapt-s02``), ``hapt:2,4,9`` (three devices at once), ``csv:PATH`` (a generic CSV recording, or a
folder of them, one device per file), ``uci-har:PATH[:SUBJECTS]`` (the original 'UCI HAR Dataset'
folder, its windows stitched back into streams) or ``opportunity:PATH`` (one OPPORTUNITY ``.dat``
run). Playback is paced at real time × ``speed``; ``speed`` 0 plays as fast as the pipeline reads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from model.data.kinds import KINDS, Inputs, find_dataset_kind  # Inputs: importable from here too
from model.data.recordings import Recording
from streamer.core.types import SampleBatch

SESSION_GAP_S = 2.0  # silence put between one wearer's sessions: the scheduler restarts there


@dataclass
class Device:
    """A wearer to replay: one or more recordings played back to back."""

    name: str
    recordings: list[Recording]


def parse_source(spec: str, inputs: Inputs) -> list[Device]:
    """The devices a SOURCE names, read in the model's ``inputs``; each dataset reads its own
    (:mod:`model.data.kinds`). A bare ``PATH.csv`` is ``csv:PATH.csv``."""
    name, _, rest = spec.partition(":")
    if not rest and spec.endswith(".csv"):
        name, rest = "csv", spec
    kind = find_dataset_kind(name)
    if kind is None:
        usage = [k.source_usage for k in KINDS]
        raise ValueError(f"unknown source {spec!r}: use {', '.join(usage[:-1])} or {usage[-1]}")
    return [Device(device, recordings) for device, recordings in kind.replay(rest, inputs).items()]


class ReplaySource:
    """Plays a device's recordings at real time × ``speed`` in bursts of ``burst_s`` seconds.

    A :class:`streamer.core.source.Source`: not live (the pipeline's full queue pauses it, which is how
    ``--speed 0`` keeps pace with inference); it drops nothing itself and holds nothing to close."""

    live = False
    fatal: str | None = None

    def __init__(self, device: Device, speed: float = 1.0, burst_s: float = 0.1) -> None:
        self.device = device
        self.name = device.name
        self.speed = speed
        self.burst_s = burst_s
        self.status = "waiting"

    def bind(self, drops) -> None:  # a recording is read whole before it plays: nothing to count
        pass

    def close(self) -> None:
        pass

    def summary(self) -> dict[str, int]:
        return {}

    def released(self) -> list[str]:  # a recording's one device is never handed elsewhere
        return []

    def timeline(self) -> list[tuple[Recording, np.ndarray]]:
        """Each recording with its timestamps on one clock, sessions separated by a gap."""
        offset, out = 0.0, []
        for recording in self.device.recordings:
            t = recording.timestamps - recording.timestamps[0] + offset
            out.append((recording, t))
            offset = float(t[-1]) + SESSION_GAP_S
        return out

    def lead_s(self) -> float:
        """How far this replay's clock, put on the wall clock at the run's start, would end up ahead
        of it: the recordings' length less the time they take to play (none at real time or slower;
        all of it at speed 0). The store moves the replay back by this much (never in the future)."""
        timeline = self.timeline()
        length = float(timeline[-1][1][-1]) if timeline else 0.0
        return max(0.0, length - (length / self.speed if self.speed > 0 else 0.0))

    def run(self, emit: Callable[[SampleBatch], None], stop: threading.Event) -> None:
        self.status = "playing"
        start = time.monotonic()
        for recording, t in self.timeline():
            step = max(1, round(self.burst_s * recording.rate_hz)) if self.speed > 0 else 64
            for i in range(0, len(t), step):
                j = min(i + step, len(t))
                if self.speed > 0:  # a burst is sent when its last sample has been "measured"
                    delay = start + t[j - 1] / self.speed - time.monotonic()
                    if delay > 0 and stop.wait(delay):
                        return
                elif stop.is_set():
                    return
                emit(SampleBatch(
                    device=self.name, timestamps=t[i:j], values=recording.values[i:j],
                    channels=recording.channels, arrival=time.monotonic(), rate_hz=recording.rate_hz,
                    truth=recording.labels[i:j],
                ))  # fmt: skip
        self.status = "finished"
