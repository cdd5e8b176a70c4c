import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from model.preprocessing import PreprocessingSpec
from streamer.scheduler import Scheduler
from streamer.types import SampleBatch

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
