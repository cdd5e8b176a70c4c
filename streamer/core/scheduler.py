"""Per-device streams and the sliding-window scheduler.

Each device has its own causal preprocessor and ring buffer of features. A window is cut every
``hop`` samples once ``window`` samples have arrived since the stream (re)started, so with
``hop`` equal to the training step the live windows are exactly the training windows.

>>> import numpy as np
>>> from model.data.preprocessing import PreprocessingSpec
>>> spec = PreprocessingSpec(kind="identity", inputs=("x",))
>>> scheduler = Scheduler(spec, window=4, hop=2, rate_hz=50.0)
>>> batch = SampleBatch("dev", np.arange(9) / 50.0, np.arange(9.0)[:, None], ("x",), arrival=0.0)
>>> [w.features.ravel().tolist() for w in scheduler.push(batch)]
[[0.0, 1.0, 2.0, 3.0], [2.0, 3.0, 4.0, 5.0], [4.0, 5.0, 6.0, 7.0]]
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field

import numpy as np

from model.data.labels import window_labels
from model.data.preprocessing import build_preprocessor, process_stacked
from model.data.signals import PreprocessingSpec
from streamer.core import limits
from streamer.core.drops import RETIRED, Drops
from streamer.core.resample import StreamResampler
from streamer.core.ringbuffer import RingBuffer
from streamer.core.types import FleetBatch, SampleBatch, Window

log = logging.getLogger(__name__)

WHOLE = np.zeros(1, np.int64)  # the one window that starts at a window's own first label
DEVICE_LIMIT = "device limit"  # the drop reason of samples from devices refused at the device limit


@dataclass
class DeviceCounters:
    samples: int = 0  # accepted samples
    windows: int = 0
    gaps: int = 0  # stream restarts after a silence
    clock_jumps: int = 0  # stream restarts after the device's clock jumped (back, or far ahead)
    # reason -> samples (or messages) dropped: in a scheduler, its ledger's live counter of the
    # device (Scheduler.drops), which also holds what the sources and the queue dropped of it
    dropped: Counter = field(default_factory=Counter)

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    def without_drops(self) -> DeviceCounters:
        """The same tallies with no drops (those are the ledger's to fold, see Drops.retire)."""
        return DeviceCounters(self.samples, self.windows, self.gaps, self.clock_jumps)

    def add(self, other: DeviceCounters) -> None:
        """Fold another device's tallies into these (a device that is forgotten keeps counting)."""
        self.samples += other.samples
        self.windows += other.windows
        self.gaps += other.gaps
        self.clock_jumps += other.clock_jumps
        self.dropped.update(other.dropped)


def last_magnitude(v: np.ndarray) -> np.ndarray:
    """The norm of the last sample's first three channels (the acceleration), for the sparkline;
    v: (..., T, C). One expression for one device and for many, so both give the same bits."""
    last = v[..., -1, : min(3, v.shape[-1])]
    return np.sqrt(np.sum(last * last, axis=-1))


def not_after(t: np.ndarray, last_t: float) -> np.ndarray:
    """Which timestamps are not later than every one before them (``last_t`` included)."""
    return t <= np.maximum.accumulate(np.concatenate([[last_t], t]))[:-1]


def stacked(batches: list[SampleBatch]) -> FleetBatch:
    """Batches of distinct devices and one shape as one :class:`FleetBatch`; its arrival is the
    earliest of theirs (latency is measured from it: never less than it was)."""
    first = batches[0]
    truth = None if first.truth is None else np.stack([b.truth for b in batches])
    return FleetBatch(tuple(b.device for b in batches), np.stack([b.timestamps for b in batches]),
                      np.stack([b.values for b in batches]), first.channels, min(b.arrival for b in batches),
                      rate_hz=first.rate_hz, truth=truth)  # fmt: skip


class DeviceStream:
    """One device: input checks, clock, resampling, preprocessing, ring buffer, window cutting."""

    def __init__(self, device: str, scheduler: Scheduler) -> None:
        self.device = device
        self.scheduler = scheduler
        self.calibrated = device in scheduler.device_specs  # its own axes (a wearer's calibration)
        self.preprocessor = build_preprocessor(scheduler.device_specs.get(device, scheduler.spec))
        n_features = len(self.preprocessor.features)
        self.ring = RingBuffer(scheduler.window, n_features)
        self.truth = RingBuffer(scheduler.window, 1, dtype=np.int64)
        # no labelled sample since the (re)start: a live wearable's windows have no truth, so its
        # ring of -1s is neither written nor read (filled in when a label first comes)
        self.unlabelled = True
        self.resampler = StreamResampler(scheduler.rate_hz)
        self.counters = DeviceCounters(dropped=scheduler.drops.counter(device))
        self.last_t = -np.inf
        self.last_seen = 0.0  # arrival time of the last batch, for idle eviction
        self.segment = 0
        self.recent_dt: deque[float] = deque(maxlen=64)
        self.announced_rate: float | None = None
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.signal_magnitude: deque[float] = deque(maxlen=120)  # for the dashboard's sparkline

    # -- bookkeeping -------------------------------------------------------------------------
    def drop(self, reason: str, count: int = 1) -> None:
        self.scheduler.drops.add(self.device, reason, count)  # logged once per device and reason

    def restart(self) -> None:
        """Forget the stream: after a gap the next sample starts afresh, as a new recording does."""
        if self._pending:  # held while the rate was measured, never filtered
            self.drop("restart before the rate was known", sum(len(t) for t, _, _ in self._pending))
        self.preprocessor.reset()
        self.ring.clear()
        self.truth.clear()
        self.unlabelled = True
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
        """The longest step between samples that is not a gap, in seconds: a few periods of the
        device's rate, held inside the accepted range so a slow clock cannot stretch it."""
        return self.scheduler.gap_periods / self.scheduler.clamp_rate(self.rate_hz or self.scheduler.rate_hz)

    def steady(self) -> bool:
        """Started, at an announced rate the model takes as it is: the next samples need none of
        the per-device path's special cases if they are finite, in range, in order and without a gap."""
        rate = self.announced_rate
        return (self.ring.total > 0 and not self._pending and rate is not None and not self.calibrated
                and abs(rate / self.scheduler.rate_hz - 1.0) <= self.scheduler.rate_tolerance)  # fmt: skip

    # -- the path of a batch -----------------------------------------------------------------
    def push(self, batch: SampleBatch) -> list[Window]:
        previous_arrival, self.last_seen = self.last_seen, batch.arrival
        n = len(batch.timestamps)
        columns = self.scheduler.columns(batch.channels)
        if isinstance(columns, str):
            self.drop(columns, n)
            return []
        if batch.rate_hz:
            if not self.scheduler.rate_in_range(batch.rate_hz):
                self.drop("rate out of range", n)
                return []
            self.announced_rate = float(batch.rate_hz)
        t = np.asarray(batch.timestamps, dtype=np.float64)
        v = np.asarray(batch.values, dtype=np.float64)[:, columns]
        truth = batch.truth if batch.truth is not None else np.full(n, -1, np.int64)

        ok = self.scheduler.usable(t, v)
        if not ok.all():
            absurd = self.scheduler.out_of_range(v) & np.isfinite(t)
            if absurd.any():
                self.drop("value out of range", int(absurd.sum()))
            if (~ok & ~absurd).any():
                self.drop("non-finite value", int((~ok & ~absurd).sum()))
            t, v, truth = t[ok], v[ok], truth[ok]

        # A timestamp far behind every one before it: the device's clock restarted (a reboot) or a
        # message from the future came first. Restart there rather than drop all that follows.
        windows: list[Window] = []
        while len(t):
            reach = np.maximum.accumulate(np.concatenate([[self.last_t], t]))[:-1]
            back = np.flatnonzero(t < reach - limits.CLOCK_JUMP_S)
            cut = int(back[0]) if len(back) else len(t)
            windows += self._in_order(t[:cut], v[:cut], truth[:cut], batch.arrival - previous_arrival,
                                      batch.arrival)  # fmt: skip
            if cut == len(t):
                break
            self.counters.clock_jumps += 1
            self.restart()
            self.last_t = -np.inf
            t, v, truth = t[cut:], v[cut:], truth[cut:]
        return windows

    def _in_order(self, t: np.ndarray, v: np.ndarray, truth: np.ndarray, elapsed: float,
                  arrival: float) -> list[Window]:  # fmt: skip
        """Samples with no clock jump back: repeats dropped, split at gaps, then accepted."""
        stale = not_after(t, self.last_t)
        if stale.any():
            self.drop("timestamp not after the previous one", int(stale.sum()))
            t, v, truth = t[~stale], v[~stale], truth[~stale]
        if len(t) == 0:
            return []

        # Split where the clock steps forward by more than a few sample periods.
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
                # the device's clock ran far ahead of the time that passed here: not a silence
                ahead = dt[start] - (elapsed if start == 0 else 0.0) > limits.CLOCK_JUMP_S
                if ahead:
                    self.counters.clock_jumps += 1
                else:
                    self.counters.gaps += 1
                self.restart()
            windows += self._accept(t[start:stop], v[start:stop], truth[start:stop], arrival)
        self.last_t = float(t[-1])
        return windows

    def _accept(self, t: np.ndarray, v: np.ndarray, truth: np.ndarray, arrival: float) -> list[Window]:
        rate = self.rate_hz
        if rate is None:  # hold the first few samples until the device's rate is known
            self._pending.append((t, v, truth))
            return []
        if self._pending:
            held = [*self._pending, (t, v, truth)]
            self._pending.clear()
            t, v, truth = (np.concatenate(parts) for parts in zip(*held, strict=True))
        if not self.scheduler.rate_in_range(rate):  # measured from timestamps that lie
            self.drop("rate out of range", len(t))
            return []
        self.counters.samples += len(t)
        if abs(rate / self.scheduler.rate_hz - 1.0) > self.scheduler.rate_tolerance:
            t, v, truth = self.resampler.process(t, v, truth)
            if len(t) == 0:
                return []
        features = self.preprocessor.process(v)
        if not np.isfinite(features).all():  # bounded input should never do it; never keep it
            self.drop("non-finite filter state", len(t))
            self.restart()
            return []
        self.signal_magnitude.append(float(last_magnitude(v)))
        return self._cut(t, features, truth, arrival)

    def take_filtered(self, t: np.ndarray, dt: np.ndarray, features: np.ndarray, finite: bool,
                      magnitude: float, truth: np.ndarray, arrival: float) -> list[Window]:  # fmt: skip
        """The fleet path's share for this device: samples that continue its steady stream, already
        checked and filtered together with other devices' (``finite``: the features are)."""
        self.recent_dt.extend(dt[-64:])
        self.last_t = float(t[-1])
        self.counters.samples += len(t)
        if not finite:
            self.drop("non-finite filter state", len(t))
            self.restart()
            return []
        self.signal_magnitude.append(magnitude)
        return self._cut(t, features, truth, arrival)

    def _cut(self, t: np.ndarray, features: np.ndarray, truth: np.ndarray, arrival: float) -> list[Window]:
        """Append features, emitting a window at every ``hop``-th sample from ``window - 1`` on."""
        w, hop = self.scheduler.window, self.scheduler.hop
        if self.unlabelled and len(truth) and truth.max() >= 0:
            self.truth.extend(np.full((min(self.ring.total, w), 1), -1, np.int64))  # what was not written
            self.unlabelled = False
        windows = []
        i = 0
        while i < len(t):
            total = self.ring.total
            # the next index (0-based, since the restart) at which a window ends
            next_end = w - 1 if total < w else total + (-(total - (w - 1))) % hop
            take = min(len(t) - i, next_end - total + 1)
            self.ring.extend(features[i : i + take])
            if not self.unlabelled:
                self.truth.extend(truth[i : i + take, None])
            i += take
            if self.ring.total - 1 == next_end:
                windows.append(self._window(float(t[i - 1]), arrival))
        return windows

    def _window(self, t: float, arrival: float) -> Window:
        truth = -1
        if not self.unlabelled:
            labels = self.truth.latest(self.scheduler.window).ravel()
            truth = int(window_labels(labels, WHOLE, len(labels), self.scheduler.label_rule)[0])
        self.counters.windows += 1
        return Window(
            device=self.device,
            t=t,
            features=self.ring.latest(self.scheduler.window),
            arrival=arrival,
            truth=truth if truth >= 0 else None,
            index=self.ring.total - 1,
            segment=self.segment,
            clock=self.counters.clock_jumps,  # what ends an episode (streamer.sinks.episodes): one rule
        )


class Scheduler:
    """All devices' streams; turns sample batches into ready windows.

    Every bound comes from :mod:`streamer.core.limits`. Devices are kept in order of their last batch,
    so the one silent the longest is always first: at ``max_devices`` a new device takes its slot
    when it has been silent for ``admit_after_s``, else the newcomer's samples are dropped under
    :data:`DEVICE_LIMIT`. A forgotten device's tallies stay in :attr:`retired`.

    Drops are counted in :attr:`drops`, per device and reason (:mod:`streamer.core.drops`); a pipeline
    uses this ledger for the whole run.
    """

    def __init__(
        self,
        spec: PreprocessingSpec,
        window: int,
        hop: int,
        rate_hz: float,
        label_rule: str = "all",
        gap_periods: float = limits.GAP_PERIODS,
        rate_tolerance: float = 0.02,
        max_devices: int = limits.MAX_DEVICES,
        idle_timeout_s: float = 0.0,
        admit_after_s: float = limits.ADMIT_AFTER_SILENCE_S,
        units: tuple[str, ...] = (),
        device_specs: dict[str, PreprocessingSpec] | None = None,
    ) -> None:
        assert hop > 0, f"hop must be positive, got {hop}"
        self.spec = spec
        # devices whose preprocessing is their own (a calibration's axes); the fleet path leaves them
        # to the per-device path, since its stacked filters run one spec
        self.device_specs = device_specs or {}
        self.window = window
        self.hop = hop
        self.rate_hz = rate_hz
        self.label_rule = label_rule
        self.gap_periods = gap_periods  # silence longer than this many periods restarts a stream
        self.rate_tolerance = rate_tolerance  # relative rate mismatch that calls for resampling
        self.rate_range = (rate_hz * limits.RATE_RATIO[0], rate_hz * limits.RATE_RATIO[1])
        self.value_limits = limits.value_limits(units, len(spec.inputs))  # by the model's input order
        self.max_devices = max_devices
        self.idle_timeout_s = idle_timeout_s
        self.admit_after_s = admit_after_s
        self.devices: OrderedDict[str, DeviceStream] = OrderedDict()  # the longest silent first
        self.drops = Drops()
        # forgotten devices' tallies, and refused devices' drops (the ledger's RETIRED counter)
        self.retired = DeviceCounters(dropped=self.drops.counter(RETIRED))
        # channel names as sent -> column indices in the model's order, or why they do not fit
        self._column_maps: dict[tuple[str, ...], np.ndarray | str] = {}
        self._stack = build_preprocessor(spec)  # runs many devices' states at once (push_fleet)
        self.accepts_missing = self._stack.fills_gaps  # a NaN is a gap it fills, or bad input
        self.rejected_devices = 0  # batches refused at the device limit
        self.evicted_devices = 0
        self._evicted: list[str] = []  # made room for a newcomer, not yet reported by evict_idle

    # -- checks shared by the per-device and the fleet path ----------------------------------
    def rate_in_range(self, rate: float) -> bool:
        return self.rate_range[0] <= rate <= self.rate_range[1]

    def clamp_rate(self, rate: float) -> float:
        return min(max(rate, self.rate_range[0]), self.rate_range[1])

    def out_of_range(self, v: np.ndarray) -> np.ndarray:
        """Samples (rows of the last two axes) with a finite value beyond its channel's limit."""
        with np.errstate(invalid="ignore"):  # inf - inf; NaN and inf are "non-finite" instead
            return ((np.abs(v) > self.value_limits) & np.isfinite(v)).any(axis=-1)

    def usable(self, t: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Samples with a finite time and every value finite (NaN allowed where the preprocessing
        fills gaps) and within range; t: (..., n), v: (..., n, C)."""
        bad = np.isinf(v) if self.accepts_missing else ~np.isfinite(v)
        return np.isfinite(t) & ~bad.any(axis=-1) & ~self.out_of_range(v)

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

    # -- batches ---------------------------------------------------------------------------------
    def push_fleet(self, batch: FleetBatch) -> list[Window]:
        """Many devices' next samples: the same windows (in row order), counters and states as
        pushing each row as its own :class:`SampleBatch`.

        Rows that simply continue a steady stream (finite values in range, timestamps in order, no
        gap) are checked and preprocessed together, in one filter call for all of them; any other
        row (a new device, a gap, a bad or repeated sample, a device still measuring its rate or
        being resampled) takes the per-device path.
        """
        columns = self.columns(batch.channels)
        if isinstance(columns, str) or (batch.rate_hz and not self.rate_in_range(batch.rate_hz)):
            return [w for d in range(len(batch)) for w in self.push(batch.row(d))]  # counted per device
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
        in_order = ((dt > 0) & (dt <= limit[:, None])).all(axis=1)
        plain = self.usable(t, v).all(axis=1) & in_order
        rows, t, v, dt = rows[plain], t[plain], v[plain], dt[plain]

        windows: list[list[Window]] = [[] for _ in range(len(batch))]
        together = set(rows.tolist())
        for d, device in enumerate(batch.devices):  # row order, as pushing the rows one by one
            if d in together:
                steady[d].last_seen = batch.arrival
                self.devices.move_to_end(device)
            else:
                windows[d] = self.push(batch.row(d))
        if len(rows):
            streams = [steady[r] for r in rows]
            features = process_stacked(self._stack, [s.preprocessor for s in streams], v)
            finite = np.isfinite(features).all(axis=(1, 2))
            magnitudes = last_magnitude(v)
            no_truth = np.full(t.shape[1], -1, np.int64)
            for i, (r, stream) in enumerate(zip(rows, streams, strict=True)):
                truth = batch.truth[r] if batch.truth is not None else no_truth
                windows[r] = stream.take_filtered(t[i], dt[i], features[i], bool(finite[i]),
                                                  float(magnitudes[i]), truth, batch.arrival)  # fmt: skip
        return [w for row in windows for w in row]

    def push_many(self, batches: list[SampleBatch]) -> list[Window]:
        """Many devices' batches in arrival order (a live source's messages taken together): the
        windows, counters and states of pushing them one by one, each device's in its order, while
        batches of one shape are stacked into a :class:`FleetBatch` (:meth:`push_fleet`) so that
        their filters run in one call. A device's k-th batch here joins the k-th round, so a
        device that sent twice is pushed twice, in order."""
        rounds: list[dict[tuple, list[SampleBatch]]] = []
        seen: dict[str, int] = {}
        for batch in batches:
            k = seen.get(batch.device, 0)
            seen[batch.device] = k + 1
            if k == len(rounds):
                rounds.append({})
            shape = (batch.channels, batch.values.shape, batch.rate_hz, batch.truth is None)
            rounds[k].setdefault(shape, []).append(batch)
        windows: list[Window] = []
        for groups in rounds:
            for group in groups.values():
                windows += self.push(group[0]) if len(group) == 1 else self.push_fleet(stacked(group))
        return windows

    def push(self, batch: SampleBatch) -> list[Window]:
        stream = self.devices.get(batch.device)
        if stream is None:
            stream = self._admit(batch.device, batch.arrival)
            if stream is None:
                self.rejected_devices += 1
                self.drops.add(RETIRED, DEVICE_LIMIT, len(batch.timestamps), quiet=True)  # logged below
                if self.rejected_devices == 1:
                    log.warning("device limit (%d) reached: new device ids wait for a silent one's slot",
                                self.max_devices)  # fmt: skip
                return []
        else:
            self.devices.move_to_end(batch.device)
        try:
            return stream.push(batch)
        except Exception as error:  # a case no check foresaw (or memory): this device's loss alone
            log.debug("%s: push failed", batch.device, exc_info=True)
            stream.drop(f"internal error ({type(error).__name__})", len(batch.timestamps))
            stream.restart()
            return []

    # -- devices -------------------------------------------------------------------------------
    def _admit(self, device: str, now: float) -> DeviceStream | None:
        if len(self.devices) >= self.max_devices:
            oldest, stream = next(iter(self.devices.items()))
            if now - stream.last_seen < self.admit_after_s:
                return None
            self._forget(oldest)
            self._evicted.append(oldest)
        stream = self.devices[device] = DeviceStream(device, self)
        return stream

    def forget(self, device: str) -> bool:
        """Forget ``device`` now (its source no longer carries it: a fleet partition that another
        worker took); whether it was served. Its tallies stay in the totals."""
        if device not in self.devices:
            return False
        self._forget(device)
        return True

    def _forget(self, device: str) -> None:
        counters = self.devices.pop(device).counters
        self.retired.add(counters.without_drops())
        self.drops.retire(device)  # its drops, into the retired counter
        self.evicted_devices += 1

    def evict_idle(self, now: float) -> list[str]:
        """Forget devices silent for longer than ``idle_timeout_s`` (0 = never); returns them, and
        the devices forgotten since the last call to make room for new ones."""
        gone, self._evicted = self._evicted, []
        if self.idle_timeout_s:
            while self.devices:
                device, stream = next(iter(self.devices.items()))
                if now - stream.last_seen <= self.idle_timeout_s:
                    break
                self._forget(device)
                gone.append(device)
        return gone

    def totals(self) -> DeviceCounters:
        """Every device's tallies, the forgotten and the refused included; drops: everything in
        the ledger (in a pipeline, also what never reached the scheduler)."""
        total = DeviceCounters(dropped=self.drops.by_reason())
        for counters in (self.retired, *(stream.counters for stream in self.devices.values())):
            total.add(counters.without_drops())
        return total
