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
from pathlib import Path

import numpy as np

from model.recordings import Recording, load_hapt, read_csv_recording
from streamer.types import SampleBatch

SESSION_GAP_S = 2.0  # silence put between one wearer's sessions: the scheduler restarts there


@dataclass
class Device:
    """A wearer to replay: one or more recordings played back to back."""

    name: str
    recordings: list[Recording]


@dataclass(frozen=True)
class Inputs:
    """What the model expects, so that recordings are read in its channels and classes."""

    channels: tuple[str, ...]
    classes: tuple[str, ...]
    rate_hz: float


def parse_source(spec: str, inputs: Inputs) -> list[Device]:
    kind, _, rest = spec.partition(":")
    if kind == "hapt":
        try:
            subjects = [int(s) for s in rest.split(",") if s.strip()]
        except ValueError:
            raise ValueError(f"bad source {spec!r}: expected hapt:N or hapt:N,M,...") from None
        if not subjects:
            raise ValueError(f"bad source {spec!r}: name at least one subject, e.g. hapt:2")
        return [Device(f"hapt-s{s:02d}", load_hapt((s,))) for s in subjects]
    if kind == "csv" or (not rest and spec.endswith(".csv")):
        path = Path(rest or spec)
        paths = sorted(path.glob("*.csv")) if path.is_dir() else [path]
        if not paths or not paths[0].exists():
            raise FileNotFoundError(f"no CSV recording at {path}")
        return [Device(p.stem, [read_csv_recording(p, inputs.channels, inputs.classes, inputs.rate_hz)])
                for p in paths]  # fmt: skip
    if kind == "uci-har":
        from replay.uci_har import read_uci_har_streams

        folder, _, subjects = rest.partition(":")
        wanted = tuple(int(s) for s in subjects.split(",") if s) or None
        return [Device(r.name, [r]) for r in read_uci_har_streams(Path(folder), wanted)]
    if kind == "opportunity":
        from model import opportunity

        kinds = ("gestures", "locomotion")
        labels = next((k for k in kinds if opportunity.classes(k) == inputs.classes), None)
        if labels is None:
            raise ValueError("this checkpoint was not trained on OPPORTUNITY: train one with "
                             "python train.py --config configs/opportunity_18.toml --data-zip ...")
        recording = opportunity.load_opportunity_run(Path(rest), labels=labels)
        return [Device(recording.name, [recording])]
    raise ValueError(f"unknown source {spec!r}: use hapt:N, csv:PATH, uci-har:PATH or opportunity:PATH")


class ReplaySource:
    """Plays a device's recordings at real time × ``speed`` in bursts of ``burst_s`` seconds."""

    def __init__(self, device: Device, speed: float = 1.0, burst_s: float = 0.1) -> None:
        self.device = device
        self.name = device.name
        self.speed = speed
        self.burst_s = burst_s
        self.status = "waiting"

    def timeline(self) -> list[tuple[Recording, np.ndarray]]:
        """Each recording with its timestamps on one clock, sessions separated by a gap."""
        offset, out = 0.0, []
        for recording in self.device.recordings:
            t = recording.timestamps - recording.timestamps[0] + offset
            out.append((recording, t))
            offset = float(t[-1]) + SESSION_GAP_S
        return out

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
