import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.data.labels import window_labels
from model.data.signals import UCI_HAR_INPUTS, PreprocessingSpec
from streamer.core.scheduler import Scheduler
from streamer.core.types import FleetBatch, SampleBatch

IDENTITY = PreprocessingSpec(kind="identity", inputs=("x", "y"))


def batch(t, values=None, device="d", rate=None, truth=None, channels=("x", "y")):
    t = np.asarray(t, dtype=np.float64)
    if values is None:
        values = np.stack([t * 50, -t * 50], axis=1)
    return SampleBatch(device, t, np.asarray(values, dtype=np.float64), channels, arrival=0.0,
                       rate_hz=rate, truth=truth)  # fmt: skip


def feed(scheduler, t, sizes, **kw):
    windows, i = [], 0
    for size in [*sizes, len(t)]:
        if i >= len(t):
            break
        windows += scheduler.push(batch(t[i : i + size], **kw))
        i += size
    return windows


@settings(max_examples=100, deadline=None)
@given(n=st.integers(0, 400), window=st.integers(1, 64), hop=st.integers(1, 64),
       sizes=st.lists(st.integers(1, 100), max_size=20))  # fmt: skip
def test_one_window_per_hop_once_the_first_window_is_full(n, window, hop, sizes):
    scheduler = Scheduler(IDENTITY, window=window, hop=hop, rate_hz=50.0)
    windows = feed(scheduler, np.arange(n) / 50.0, sizes, rate=50.0)
    expected = 0 if n < window else (n - window) // hop + 1
    assert len(windows) == expected
    for w in windows:  # each window holds the samples ending at its index, in order
        np.testing.assert_allclose(w.features[:, 0], np.arange(w.index - window + 1, w.index + 1))
        assert (w.index - (window - 1)) % hop == 0


def test_duplicates_and_out_of_order_samples_are_dropped_and_counted():
    scheduler = Scheduler(IDENTITY, window=4, hop=4, rate_hz=50.0)
    t = np.array([0, 1, 2, 2, 1, 3, 4, 5, 6, 7]) / 50.0
    windows = scheduler.push(batch(t, rate=50.0))
    counters = scheduler.devices["d"].counters
    assert counters.dropped["timestamp not after the previous one"] == 2
    assert counters.samples == 8
    assert [w.features[:, 0].tolist() for w in windows] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert scheduler.push(batch([5 / 50.0], rate=50.0)) == []  # back in time across batches too
    assert counters.dropped["timestamp not after the previous one"] == 3


def test_a_gap_restarts_the_stream_and_is_counted():
    scheduler = Scheduler(IDENTITY, window=4, hop=2, rate_hz=50.0)
    t = np.concatenate([np.arange(6), 100 + np.arange(6)]) / 50.0
    windows = scheduler.push(batch(t, rate=50.0))
    assert scheduler.devices["d"].counters.gaps == 1
    assert [(w.segment, w.index) for w in windows] == [(0, 3), (0, 5), (1, 3), (1, 5)]
    # no window mixes samples from before and after the gap
    assert all(np.ptp(w.features[:, 0]) == 3 for w in windows)


def test_windows_after_a_clock_jump_carry_a_new_clock_and_after_a_gap_the_same_one():
    """The scheduler's restart rule flows down with the data: episodes end where ``clock`` changes."""
    scheduler = Scheduler(IDENTITY, window=4, hop=4, rate_hz=50.0)
    first = np.arange(8) / 50.0 + 100.0
    gap = first[-1] + 1.0 + np.arange(8) / 50.0  # a silence of a second: a gap, the same clock
    back = gap[-1] - 7.0 + np.arange(8) / 50.0  # 7 s back: the device's clock restarted
    windows = [w for t in (first, gap, back) for w in scheduler.push(batch(t, rate=50.0))]
    counters = scheduler.devices["d"].counters
    assert (counters.gaps, counters.clock_jumps) == (1, 1)
    assert [w.clock for w in windows] == [0, 0, 0, 0, 1, 1]
    assert [w.segment for w in windows] == [0, 0, 1, 1, 2, 2]


def test_a_100_hz_device_is_resampled_for_a_50_hz_model():
    scheduler = Scheduler(IDENTITY, window=50, hop=50, rate_hz=50.0)
    t = np.arange(400) / 100.0  # 4 s at 100 Hz; the signal is 50 * t, linear in time
    windows = feed(scheduler, t, [7] * 60, rate=100.0)
    assert len(windows) == 4  # 200 samples at 50 Hz (up to t = 3.98 s) -> four 1 s windows
    for w in windows:
        expected_t = w.t - np.arange(49, -1, -1) / 50.0  # 50 Hz spacing
        np.testing.assert_allclose(w.features[:, 0], expected_t * 50, atol=1e-4)


def test_the_rate_is_measured_when_the_device_does_not_announce_it():
    scheduler = Scheduler(IDENTITY, window=10, hop=10, rate_hz=50.0)
    t = np.arange(300) / 100.0
    windows = feed(scheduler, t, [1] * 300)  # one sample per message, no announced rate
    assert abs(scheduler.devices["d"].rate_hz - 100.0) < 1e-6
    assert 13 <= len(windows) <= 15  # 3 s at 50 Hz = 150 samples -> 15 windows of 10


def test_nan_and_inf_are_dropped_for_models_that_do_not_fill_gaps():
    scheduler = Scheduler(IDENTITY, window=2, hop=2, rate_hz=50.0)
    values = [[1, 1], [np.nan, 1], [2, np.inf], [3, 3]]
    scheduler.push(batch(np.arange(4) / 50.0, values=values, rate=50.0))
    counters = scheduler.devices["d"].counters
    assert counters.dropped["non-finite value"] == 2 and counters.samples == 2


def test_missing_channels_drop_the_batch_with_a_reason():
    scheduler = Scheduler(IDENTITY, window=2, hop=2, rate_hz=50.0)
    scheduler.push(batch([0.0, 0.02], values=[[1], [2]], channels=("x",), rate=50.0))
    assert sum(scheduler.devices["d"].counters.dropped.values()) == 2
    assert scheduler.devices["d"].counters.dropped == {"missing channel(s) y": 2}  # one reason, counted once


def test_devices_are_independent():
    scheduler = Scheduler(IDENTITY, window=4, hop=4, rate_hz=50.0)
    t = np.arange(8) / 50.0
    a = scheduler.push(batch(t, device="a", rate=50.0))
    scheduler.push(batch([0.0, 0.0, 0.0], device="b", rate=50.0))  # b misbehaves
    b = scheduler.push(batch(t, device="b", rate=50.0))
    assert len(a) == 2 and len(b) == 2  # b's repeated t=0 samples are dropped, the rest flow
    assert scheduler.devices["b"].counters.dropped_total == 3
    assert scheduler.devices["a"].counters.dropped_total == 0


def test_device_limit_and_idle_eviction():
    scheduler = Scheduler(IDENTITY, window=4, hop=4, rate_hz=50.0, max_devices=3, idle_timeout_s=5.0)
    for k in range(10):
        scheduler.push(batch([0.0], device=f"d{k}", rate=50.0))
    assert len(scheduler.devices) == 3 and scheduler.rejected_devices == 7
    assert sorted(scheduler.evict_idle(now=10.0)) == ["d0", "d1", "d2"]
    assert scheduler.devices == {}


def test_window_truth_follows_the_label_rule():
    for rule, expected in (("all", [0, None]), ("last", [0, 1])):
        scheduler = Scheduler(IDENTITY, window=4, hop=4, rate_hz=50.0, label_rule=rule)
        truth = np.array([0, 0, 0, 0, 0, 0, 1, 1])
        windows = scheduler.push(batch(np.arange(8) / 50.0, rate=50.0, truth=truth))
        assert [w.truth for w in windows] == expected


def fleet_ticks(seed: int, rate: float | None, kind: str):
    """A messy fleet, tick by tick: devices join, leave and come back (gaps), and now and then a
    row carries a NaN, an inf, an absurd value, a repeated or out-of-order timestamp, a clock jump,
    or a different rate."""
    rng = np.random.default_rng(seed)
    n_devices, per_tick, channels = 12, 5, 6 if kind == "uci_har" else 2
    clock = np.zeros(n_devices)  # each device's next sample index
    for k in range(120):
        present = np.flatnonzero(rng.random(n_devices) < (0.3 if k < 5 else 0.9))
        if 50 <= k < 70:  # three devices leave for two seconds: evicted, then back as new
            present = present[present >= 3]
        if len(present) == 0:
            continue
        t = (clock[present, None] + np.arange(per_tick)) / 50.0
        clock[present] += per_tick
        clock[rng.random(n_devices) < 0.05] += 7  # some devices skip ahead: a gap
        if k % 40 == 39:
            t[0] = t[0] * 2  # one device at twice the rate for a tick
        values = rng.normal(size=(len(present), per_tick, channels))
        truth = rng.integers(-1, 2, size=(len(present), per_tick))
        row = rng.integers(len(present))
        trouble = rng.random()
        if trouble < 0.1:
            values[row, 2, 1] = np.nan
        elif trouble < 0.2:
            values[row, 3, 0] = np.inf
        elif trouble < 0.3:
            t[row, 3] = t[row, 2]  # a repeated timestamp
        elif trouble < 0.35:
            t[row] = t[row, ::-1].copy()  # out of order
        elif trouble < 0.4:
            values[row, 1, 0] = 1e308  # finite, but beyond any sensor's range
        elif trouble < 0.42:
            t[row] -= 100.0  # the device's clock jumps back for a tick (and then forward again)
        names = (*(f"d{d}" for d in present), *(("late",) if k > 60 else ()))
        if k > 60:  # a device that joins late, at every tick
            t = np.concatenate([t, (k * per_tick + np.arange(per_tick))[None] / 50.0])
            values = np.concatenate([values, rng.normal(size=(1, per_tick, channels))])
            truth = np.concatenate([truth, np.zeros((1, per_tick), np.int64)])
        yield FleetBatch(names, t, values, INPUTS[kind], arrival=k * 0.1, rate_hz=rate, truth=truth)


INPUTS = {"uci_har": UCI_HAR_INPUTS, "identity": ("x", "y"), "opportunity": ("x", "y")}


def same_stream(a, b) -> None:
    assert a.counters == b.counters
    assert (a.last_t, a.last_seen, a.segment, a.announced_rate) == (b.last_t, b.last_seen, b.segment,
                                                                    b.announced_rate)
    assert list(a.recent_dt) == list(b.recent_dt) and list(a.signal_magnitude) == list(b.signal_magnitude)
    for x, y in zip(a.preprocessor.state, b.preprocessor.state, strict=True):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a.ring.latest(len(a.ring)) if len(a.ring) else 0,
                                  b.ring.latest(len(b.ring)) if len(b.ring) else 0)


def messages_of(fleet: FleetBatch, rng: np.random.Generator) -> list[SampleBatch]:
    """A tick's rows as a broker's messages: some devices' split in two (they sent twice before the
    loop took its messages), the devices interleaved at random, each device's in its own order."""
    queues = []
    for d in range(len(fleet)):
        row = fleet.row(d)
        cut = int(rng.integers(1, len(row.timestamps))) if rng.random() < 0.3 else len(row.timestamps)
        parts = [(0, cut), (cut, len(row.timestamps))] if cut < len(row.timestamps) else [(0, cut)]
        queues.append([SampleBatch(row.device, row.timestamps[a:b], row.values[a:b], row.channels,
                                   row.arrival, row.rate_hz, None if row.truth is None else row.truth[a:b])
                       for a, b in parts])  # fmt: skip
    batches = []
    while any(queues):
        batches.append(queues[int(rng.choice([i for i, q in enumerate(queues) if q]))].pop(0))
    return batches


@pytest.mark.parametrize("kind", ["uci_har", "opportunity"])
@pytest.mark.parametrize("seed", [0, 1])
def test_messages_pushed_together_give_what_pushing_them_one_by_one_gives(seed, kind):
    spec = PreprocessingSpec(kind=kind, inputs=INPUTS[kind])
    one_by_one, together = (Scheduler(spec, window=16, hop=4, rate_hz=50.0, max_devices=10,
                                      idle_timeout_s=1.0) for _ in range(2))  # fmt: skip
    rng = np.random.default_rng(seed)
    stacked = 0
    for fleet in fleet_ticks(seed, 50.0, kind):
        batches = messages_of(fleet, rng)
        expected = [w for b in batches for w in one_by_one.push(b)]
        stacked += sum(s.steady() for s in together.devices.values())
        got = together.push_many(batches)
        assert len(got) == len(expected)
        key = lambda w: (w.device, w.index, w.segment)  # noqa: E731 - devices may interleave otherwise
        for w, e in zip(sorted(got, key=key), sorted(expected, key=key), strict=True):
            assert (w.device, w.t, w.truth, w.index, w.segment, w.clock) == (
                e.device, e.t, e.truth, e.index, e.segment, e.clock)
            np.testing.assert_array_equal(w.features, e.features)
        # the same devices forgotten (in another order where they fell silent in the same moment)
        assert sorted(one_by_one.evict_idle(fleet.arrival)) == sorted(together.evict_idle(fleet.arrival))
        assert set(one_by_one.devices) == set(together.devices)
        for device, stream in one_by_one.devices.items():
            assert stream.counters == together.devices[device].counters
            theirs = together.devices[device].preprocessor.state
            for x, y in zip(stream.preprocessor.state, theirs, strict=True):
                np.testing.assert_array_equal(x, y)
    assert stacked > 300  # most messages did go through the stacked filters


@pytest.mark.parametrize("kind", ["uci_har", "identity", "opportunity"])
@pytest.mark.parametrize("rate", [50.0, None])
@pytest.mark.parametrize("seed", [0, 1])
def test_a_fleet_batch_gives_what_each_device_s_own_batch_gives(seed, rate, kind):
    spec = PreprocessingSpec(kind=kind, inputs=INPUTS[kind])
    one_by_one, together = (Scheduler(spec, window=16, hop=4, rate_hz=50.0, max_devices=10,
                                      idle_timeout_s=1.0) for _ in range(2))  # fmt: skip
    fast = 0
    for fleet in fleet_ticks(seed, rate, kind):
        expected = [w for d in range(len(fleet)) for w in one_by_one.push(fleet.row(d))]
        steady = sum(s.steady() for s in together.devices.values())
        got = together.push_fleet(fleet)
        fast += steady
        assert len(got) == len(expected)
        for w, e in zip(got, expected, strict=True):
            assert (w.device, w.t, w.arrival, w.truth, w.index, w.segment) == (
                e.device, e.t, e.arrival, e.truth, e.index, e.segment)
            np.testing.assert_array_equal(w.features, e.features)
        assert one_by_one.evict_idle(fleet.arrival) == together.evict_idle(fleet.arrival)
        assert list(one_by_one.devices) == list(together.devices)
        for device, stream in one_by_one.devices.items():
            same_stream(stream, together.devices[device])
    assert (one_by_one.rejected_devices, one_by_one.evicted_devices) == (
        together.rejected_devices, together.evicted_devices)
    dropped = sum(s.counters.dropped_total for s in together.devices.values())
    assert together.rejected_devices > 0 and together.evicted_devices > 0
    assert dropped > 0 or kind == "opportunity"
    if rate:
        assert fast > 300  # most rows did go through the stacked path
    else:
        assert fast == 0  # no announced rate: every device measures its own, one by one


@pytest.mark.parametrize("rule", ["all", "last"])
def test_labels_that_start_mid_stream_give_each_window_the_class_of_its_own_samples(rule) -> None:
    """A device's windows carry no truth until labels come (nothing is written for them); then each
    window's truth is the rule applied to its own samples' labels, the unlabelled ones as -1."""
    spec = PreprocessingSpec(kind="identity", inputs=("x", "y"))
    scheduler = Scheduler(spec, window=16, hop=4, rate_hz=50.0, label_rule=rule)
    labels = np.concatenate([np.full(40, -1), np.full(30, 2), np.full(30, -1), np.full(20, 1)])
    t = np.arange(len(labels)) / 50.0
    values = np.random.default_rng(0).normal(size=(len(labels), 2))
    windows = []
    for start in range(0, len(labels), 7):  # messages of 7 samples, the labels cut across them
        part = slice(start, start + 7)
        batch = SampleBatch("d", t[part], values[part], ("x", "y"), 0.0, 50.0, labels[part])
        windows += scheduler.push(batch)
    expected = window_labels(labels, np.array([w.index - 15 for w in windows]), 16, rule)
    assert [-1 if w.truth is None else w.truth for w in windows] == expected.tolist()
    assert {w.truth for w in windows} >= {None, 1, 2}
