"""The records that flow through the live pipeline, in the order they flow.

    SampleBatch or FleetBatch (a source) ─▶ Window (the scheduler) ─▶ Prediction (the engine)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SampleBatch:
    """Consecutive samples of one device, as a source received them."""

    device: str
    timestamps: np.ndarray  # (n,) seconds on the device's clock
    values: np.ndarray  # (n, C) raw physical units, columns named by ``channels``
    channels: tuple[str, ...]
    arrival: float  # time.monotonic() when the batch reached harstream
    rate_hz: float | None = None  # the rate the device announces, if it does
    truth: np.ndarray | None = None  # (n,) class index per sample when replaying, -1 = none


@dataclass(frozen=True)
class FleetBatch:
    """The next ``n`` samples of each of many devices, stacked: what a gateway of many wearables
    (or the benchmark's simulated fleet) hands over at once. Row ``d`` means exactly
    ``SampleBatch`` :meth:`row` ``(d)``; the scheduler treats the rows together where it can."""

    devices: tuple[str, ...]  # distinct
    timestamps: np.ndarray  # (D, n) seconds on each device's clock
    values: np.ndarray  # (D, n, C) raw physical units, columns named by ``channels``
    channels: tuple[str, ...]
    arrival: float
    rate_hz: float | None = None  # the rate every device announces, if they do
    truth: np.ndarray | None = None  # (D, n) class index per sample, -1 = none

    def __post_init__(self) -> None:
        d, n = self.timestamps.shape
        assert self.values.shape[:2] == (d, n) and len(self.devices) == d, "one row per device"
        assert len(set(self.devices)) == d, "a device appears twice in one FleetBatch"

    def __len__(self) -> int:
        return len(self.devices)

    def row(self, d: int) -> SampleBatch:
        truth = self.truth[d] if self.truth is not None else None
        return SampleBatch(self.devices[d], self.timestamps[d], self.values[d], self.channels, self.arrival,
                           rate_hz=self.rate_hz, truth=truth)  # fmt: skip


@dataclass(frozen=True)
class Window:
    """A model-ready window of features, cut by the scheduler."""

    device: str
    t: float  # timestamp of the window's last sample
    features: np.ndarray  # (window, F) float32
    arrival: float  # arrival time of the batch that completed the window
    truth: int | None  # the class covering the window (per the checkpoint's label rule), if known
    index: int  # samples since the device's stream (re)started, at the window's last sample
    segment: int  # how many times the device's stream restarted (gaps) before this window
    # how many times the device's clock jumped (back, or far ahead) before this window: a new clock,
    # whose times do not continue the old one's (the scheduler's rule; episodes end on it)
    clock: int = 0


@dataclass
class Prediction:
    device: str
    t: float
    label: str
    confidence: float
    probs: dict[str, float]
    truth: str | None
    latency_ms: float  # last sample's arrival -> this prediction
    index: int = 0
    segment: int = 0
    clock: int = 0  # the window's (Window.clock)

    def to_json(self) -> dict:
        return {
            "device": self.device,
            "t": round(self.t, 4),
            "label": self.label,
            "confidence": round(self.confidence, 6),
            "probs": {k: round(v, 7) for k, v in self.probs.items()},
            "truth": self.truth,
            "latency_ms": round(self.latency_ms, 3),
        }
