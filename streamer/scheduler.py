"""Per-device streams and the sliding-window scheduler.

Each device has its own causal preprocessor and ring buffer of features. A window is cut every
``hop`` samples once ``window`` samples have arrived since the stream (re)started, so with
``hop`` equal to the training step the live windows are exactly the training windows.

>>> import numpy as np
>>> from model.preprocessing import PreprocessingSpec
>>> spec = PreprocessingSpec(kind="identity", inputs=("x",))
>>> scheduler = Scheduler(spec, window=4, hop=2, rate_hz=50.0)
>>> batch = SampleBatch("dev", np.arange(9) / 50.0, np.arange(9.0)[:, None], ("x",), arrival=0.0)
>>> [w.features.ravel().tolist() for w in scheduler.push(batch)]
[[0.0, 1.0, 2.0, 3.0], [2.0, 3.0, 4.0, 5.0], [4.0, 5.0, 6.0, 7.0]]
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np

from model.preprocessing import PreprocessingSpec, build_preprocessor, process_stacked
from streamer.resample import StreamResampler
from streamer.ringbuffer import RingBuffer
from streamer.types import FleetBatch, SampleBatch, Window

log = logging.getLogger(__name__)

# Kinds of preprocessing that fill in missing values themselves; for the others a NaN is bad input.
ACCEPTS_MISSING = {"opportunity"}


@dataclass
class DeviceCounters:
    samples: int = 0  # accepted samples
    windows: int = 0
    gaps: int = 0  # stream restarts after a silence
    dropped: Counter = field(default_factory=Counter)  # reason -> samples (or messages) dropped

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())


def last_magnitude(v: np.ndarray) -> np.ndarray:
    """The norm of the last sample's first three channels (the acceleration), for the sparkline;
    v: (..., T, C). One expression for one device and for many, so both give the same bits."""
    last = v[..., -1, : min(3, v.shape[-1])]
    return np.sqrt(np.sum(last * last, axis=-1))


class DeviceStream:
    """One device: timestamp checks, resampling, preprocessing, ring buffer, window cutting."""

    def __init__(self, device: str, scheduler: Scheduler) -> None:
        self.device = device
        self.s = scheduler
        self.preprocessor = build_preprocessor(scheduler.spec)
        n_features = len(self.preprocessor.features)
        self.ring = RingBuffer(scheduler.window, n_features)
        self.truth = RingBuffer(scheduler.window, 1, dtype=np.int64)
        self.resampler = StreamResampler(scheduler.rate_hz)
        self.counters = DeviceCounters()
        self.last_t = -np.inf
        self.last_seen = 0.0  # arrival time of the last batch, for idle eviction
        self.segment = 0
        self.recent_dt: deque[float] = deque(maxlen=64)
        self.announced_rate: float | None = None
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._logged: set[str] = set()
        self.signal_magnitude: deque[float] = deque(maxlen=120)  # for the dashboard's sparkline

    # -- bookkeeping -------------------------------------------------------------------------
    def drop(self, reason: str, count: int = 1) -> None:
        self.counters.dropped[reason] += count
        if reason not in self._logged:  # log once per device and reason; counters keep the tally
            self._logged.add(reason)
            log.warning("%s: dropping input (%s)", self.device, reason)

    def restart(self) -> None:
        """Forget the stream: after a gap the next sample starts afresh, as a new recording does."""
        self.preprocessor.reset()
        self.ring.clear()
        self.truth.clear()
        self.resampler.reset()
        self.recent_dt.clear()
        self._pending.clear()
        self.segment += 1

    @property
    def rate_hz(self) -> float | None:
        if self.announced_rate:
            return self.announced_rate
        if len(self.recent_dt) >= 8:
            return 1.0 / float(np.median(self.recent_dt))
        return None

    @property
    def gap_limit(self) -> float:
        """The longest step between samples that is not a gap, in seconds."""
        return self.s.gap_periods * (1.0 / (self.rate_hz or self.s.rate_hz))

    def steady(self) -> bool:
        """Started, at an announced rate the model takes as it is: the next samples need none of
        the per-device path's special cases if they are finite, in order and without a gap."""
        rate = self.announced_rate
        return (self.ring.total > 0 and not self._pending and rate is not None
                and abs(rate / self.s.rate_hz - 1.0) <= self.s.rate_tolerance)  # fmt: skip

    # -- the path of a batch -----------------------------------------------------------------
    def push(self, batch: SampleBatch) -> list[Window]:
        self.last_seen = batch.arrival
        n = len(batch.timestamps)
        columns = self.s.columns(batch.channels)
        if isinstance(columns, str):
            self.drop(columns, n)
            return []
        if batch.rate_hz:
            self.announced_rate = float(batch.rate_hz)
        t = np.asarray(batch.timestamps, dtype=np.float64)
        v = np.asarray(batch.values, dtype=np.float64)[:, columns]
        truth = batch.truth if batch.truth is not None else np.full(n, -1, np.int64)

        ok = np.isfinite(t) & ~np.isinf(v).any(axis=1)
        if not self.s.accepts_missing:
            ok &= ~np.isnan(v).any(axis=1)
        if not ok.all():
            self.drop("non-finite value", int((~ok).sum()))
            t, v, truth = t[ok], v[ok], truth[ok]

        # Out-of-order and repeated timestamps: keep only samples later than all before them.
        before = np.maximum.accumulate(np.concatenate([[self.last_t], t]))[:-1]
        fresh = t > before
        if not fresh.all():
            self.drop("timestamp not after the previous one", int((~fresh).sum()))
            t, v, truth = t[fresh], v[fresh], truth[fresh]
        if len(t) == 0:
            return []

        # Split where the clock jumps forward by more than a few sample periods.
        limit = self.gap_limit
        dt = np.diff(np.concatenate([[self.last_t], t]))
        self.recent_dt.extend(dt[np.isfinite(dt) & (dt <= limit)][-64:])
        gaps = set(np.flatnonzero(dt > limit).tolist())
        if not np.isfinite(self.last_t):
            gaps.discard(0)  # a device's first sample is a start, not a gap
        bounds = [0, *sorted(g for g in gaps if g > 0), len(t)]
        windows: list[Window] = []
        for start, stop in itertools.pairwise(bounds):
            if start in gaps:
                self.counters.gaps += 1
                self.restart()
            windows += self._accept(t[start:stop], v[start:stop], truth[start:stop], batch.arrival)
        self.last_t = float(t[-1])
        return windows

    def _accept(self, t: np.ndarray, v: np.ndarray, truth: np.ndarray, arrival: float) -> list[Window]:
        self.counters.samples += len(t)
        rate = self.rate_hz
        if rate is None:  # hold the first few samples until the device's rate is known
            self._pending.append((t, v, truth))
            return []
        if self._pending:
            held = [*self._pending, (t, v, truth)]
            self._pending.clear()
            t, v, truth = (np.concatenate(parts) for parts in zip(*held, strict=True))
        if rate is not None and abs(rate / self.s.rate_hz - 1.0) > self.s.rate_tolerance:
            t, v, truth = self.resampler.process(t, v, truth)
            if len(t) == 0:
                return []
        features = self.preprocessor.process(v)
        self.signal_magnitude.append(float(last_magnitude(v)))
        return self._cut(t, features, truth, arrival)

    def _cut(self, t: np.ndarray, features: np.ndarray, truth: np.ndarray, arrival: float) -> list[Window]:
        """Append features, emitting a window at every ``hop``-th sample from ``window - 1`` on."""
        w, hop = self.s.window, self.s.hop
        windows = []
        i = 0
        while i < len(t):
            total = self.ring.total
            # the next index (0-based, since the restart) at which a window ends
            next_end = w - 1 if total < w else total + (-(total - (w - 1))) % hop
            take = min(len(t) - i, next_end - total + 1)
            self.ring.extend(features[i : i + take])
            self.truth.extend(truth[i : i + take, None])
            i += take
            if self.ring.total - 1 == next_end:
                windows.append(self._window(float(t[i - 1]), arrival))
        return windows

    def _window(self, t: float, arrival: float) -> Window:
        labels = self.truth.latest(self.s.window).ravel()
        if self.s.label_rule == "last":
            truth = int(labels[-1])
        else:
            truth = int(labels[0]) if (labels == labels[0]).all() else -1
        self.counters.windows += 1
        return Window(
            device=self.device,
            t=t,
            features=self.ring.latest(self.s.window),
            arrival=arrival,
            truth=truth if truth >= 0 else None,
            index=self.ring.total - 1,
            segment=self.segment,
        )


class Scheduler:
    """All devices' streams; turns sample batches into ready windows."""

    def __init__(
        self,
        spec: PreprocessingSpec,
        window: int,
        hop: int,
        rate_hz: float,
        label_rule: str = "all",
        gap_periods: float = 5.0,
        rate_tolerance: float = 0.02,
        max_devices: int = 10_000,
        idle_timeout_s: float = 0.0,
    ) -> None:
        assert hop > 0, f"hop must be positive, got {hop}"
        self.spec = spec
        self.window = window
        self.hop = hop
        self.rate_hz = rate_hz
        self.label_rule = label_rule
        self.gap_periods = gap_periods  # silence longer than this many periods restarts a stream
        self.rate_tolerance = rate_tolerance  # relative rate mismatch that calls for resampling
        self.max_devices = max_devices
        self.idle_timeout_s = idle_timeout_s
        self.accepts_missing = spec.kind in ACCEPTS_MISSING
        self.devices: dict[str, DeviceStream] = {}
        # channel names as sent -> column indices in the model's order, or why they do not fit
        self._column_maps: dict[tuple[str, ...], np.ndarray | str] = {}
        self._stack = build_preprocessor(spec)  # runs many devices' states at once (push_fleet)
        self.rejected_devices = 0
        self.evicted_devices = 0

    def columns(self, channels: tuple[str, ...]) -> np.ndarray | str:
        """Where the model's inputs are among ``channels``, or why they are not all there."""
        if channels not in self._column_maps:
            wanted = self.spec.inputs
            missing = [c for c in wanted if c not in channels]
            self._column_maps[channels] = (
                f"missing channel(s) {', '.join(missing)}" if missing
                else np.array([channels.index(c) for c in wanted])
            )
        return self._column_maps[channels]

    def push_fleet(self, batch: FleetBatch) -> list[Window]:
        """Many devices' next samples: the same windows (in row order), counters and states as
        pushing each row as its own :class:`SampleBatch`.

        Rows that simply continue a steady stream (finite values, timestamps in order, no gap) are
        checked and preprocessed together, in one filter call for all of them; any other row (a
        new device, a gap, a bad or repeated sample, a device still measuring its rate or being
        resampled) takes the per-device path.
        """
        columns = self.columns(batch.channels)
        if isinstance(columns, str):  # the per-device path counts it for each device
            return [w for d in range(len(batch)) for w in self.push(batch.row(d))]
        found = {d: self.devices.get(device) for d, device in enumerate(batch.devices)}
        if batch.rate_hz:
            for stream in found.values():
                if stream is not None:
                    stream.announced_rate = float(batch.rate_hz)
        steady = {d: s for d, s in found.items() if s is not None and s.steady()}
        rows = np.fromiter(steady, int, len(steady))
        t = np.asarray(batch.timestamps, dtype=np.float64)[rows]
        v = np.asarray(batch.values, dtype=np.float64)[rows][:, :, columns]
        last_t = np.array([steady[r].last_t for r in rows])
        dt = np.diff(np.concatenate([last_t[:, None], t], axis=1), axis=1)
        limit = np.array([steady[r].gap_limit for r in rows])
        bad = np.isinf(v) if self.accepts_missing else ~np.isfinite(v)
        in_order = ((dt > 0) & (dt <= limit[:, None])).all(axis=1)
        plain = ~bad.any(axis=(1, 2)) & np.isfinite(t).all(axis=1) & in_order
        rows, t, v, dt = rows[plain], t[plain], v[plain], dt[plain]

        windows: list[list[Window]] = [[] for _ in range(len(batch))]
        together = set(rows.tolist())
        for d in range(len(batch)):
            if d not in together:
                windows[d] = self.push(batch.row(d))
        if len(rows):
            streams = [steady[r] for r in rows]
            features = process_stacked(self._stack, [s.preprocessor for s in streams], v)
            magnitudes = last_magnitude(v)
            no_truth = np.full(t.shape[1], -1, np.int64)
            for i, (r, stream) in enumerate(zip(rows, streams, strict=True)):
                stream.last_seen = batch.arrival
                stream.recent_dt.extend(dt[i][-64:])
                stream.counters.samples += t.shape[1]
                stream.signal_magnitude.append(float(magnitudes[i]))
                truth = batch.truth[r] if batch.truth is not None else no_truth
                windows[r] = stream._cut(t[i], features[i], truth, batch.arrival)
                stream.last_t = float(t[i, -1])
        return [w for row in windows for w in row]

    def push(self, batch: SampleBatch) -> list[Window]:
        stream = self.devices.get(batch.device)
        if stream is None:
            if len(self.devices) >= self.max_devices:
                self.rejected_devices += 1
                if self.rejected_devices == 1:
                    log.warning("device limit (%d) reached: ignoring new device ids", self.max_devices)
                return []
            stream = self.devices[batch.device] = DeviceStream(batch.device, self)
        return stream.push(batch)

    def evict_idle(self, now: float) -> list[str]:
        """Forget devices silent for longer than ``idle_timeout_s`` (0 = never)."""
        if not self.idle_timeout_s:
            return []
        idle = [d for d, s in self.devices.items() if now - s.last_seen > self.idle_timeout_s]
        for device in idle:
            del self.devices[device]
        self.evicted_devices += len(idle)
        return idle
