"""Hostile input at the decoders and the scheduler: what arrives may lie about its rate, its clock,
its size and its values. Whatever arrives, no exception escapes, the work stays bounded by what was
received, nothing non-finite reaches the model or the output, the device recovers by itself and the
other devices are not touched. Examples first (each a defect seen on the old code), then properties
over inputs nobody thought of."""

from __future__ import annotations

import json
import math
import struct
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from model.data.signals import PreprocessingSpec
from model.strict_json import dumps
from streamer.core import limits
from streamer.core.backends import TorchBackend
from streamer.core.engine import Decider, InferenceEngine
from streamer.core.pipeline import Pipeline
from streamer.core.scheduler import DEVICE_LIMIT, Scheduler
from streamer.core.source import SourceBase
from streamer.core.types import SampleBatch
from streamer.core.wire import ACC, GYRO, HEADER, MAGIC, WireError, decode, encode_binary

CHANNELS = ACC + GYRO
UNITS = ("g",) * 3 + ("rad/s",) * 3
UCI = PreprocessingSpec()  # the shipped model's filters: median, Butterworth, gravity split
RATE = 50.0


def scheduler(**kw) -> Scheduler:
    return Scheduler(UCI, window=kw.pop("window", 32), hop=kw.pop("hop", 8), rate_hz=RATE, units=UNITS, **kw)


def still(n: int, t0: float = 0.0, rate: float = RATE) -> tuple[np.ndarray, np.ndarray]:
    """A phone lying still: gravity on +x, a little noise."""
    rng = np.random.default_rng(int(t0 * 1000) % 2**32)
    values = rng.normal(0, 0.01, size=(n, 6))
    values[:, 0] += 1.0
    return t0 + np.arange(n) / rate, values


def push(s: Scheduler, t, v, device: str = "d", rate: float | None = RATE, arrival: float = 0.0):
    t = np.asarray(t, dtype=np.float64)
    batch = SampleBatch(device, t, np.asarray(v, dtype=np.float64), CHANNELS, arrival, rate_hz=rate)
    return s.push(batch)


def reason(payload: bytes) -> str:
    with pytest.raises(WireError) as caught:
        decode(payload, "dev", CHANNELS)
    return caught.value.reason


# -- 1. resampling amplification --------------------------------------------------------------------
def test_a_message_announcing_an_absurd_rate_is_refused_before_any_work() -> None:
    samples = [[0.0] * 6] * 10_000  # the 410 KB message that made 156,231 windows
    message = {"t0": 0.0, "hz": 0.1, "channels": list(CHANNELS), "samples": samples}
    assert reason(json.dumps(message).encode()) == "hz out of range"


def test_a_rate_the_wire_allows_but_the_model_cannot_use_is_dropped_and_counted() -> None:
    s = scheduler()
    t, v = still(10_000, rate=1.0)
    assert push(s, t, v, rate=1.0) == []
    assert s.devices["d"].counters.dropped == {"rate out of range": 10_000}
    t, v = still(400, t0=20_000.0)  # the same device at the model's rate: recognised again
    assert len(push(s, t, v, rate=RATE)) > 0


def test_resampling_makes_at_most_a_bounded_number_of_windows_per_sample() -> None:
    s = scheduler(hop=1)
    slowest = RATE * limits.RATE_RATIO[0]
    t, v = still(2000, rate=slowest)
    windows = push(s, t, v, rate=slowest)
    assert 0 < len(windows) <= 2000 * RATE / slowest  # 4 resampled samples (windows at hop 1) each


def test_a_clock_that_slows_down_bit_by_bit_cannot_drag_the_measured_rate_below_the_range() -> None:
    s = scheduler()
    t, dt, windows = 0.0, 1.0 / RATE, 0
    for _ in range(3000):  # each step 1 % longer: 50 Hz drifts down towards 0.1 Hz
        t += dt
        dt *= 1.01
        windows += len(push(s, [t], still(1)[1], rate=None))
    stream = s.devices["d"]
    assert stream.gap_limit <= limits.GAP_PERIODS / (RATE * limits.RATE_RATIO[0]) + 1e-12
    assert stream.counters.dropped["rate out of range"] > 0 or stream.counters.gaps > 0
    assert windows < 3000  # never more windows than samples; the old code made tens of thousands


def test_a_binary_frame_is_held_to_the_same_sample_cap_as_json() -> None:
    n = limits.MAX_SAMPLES_PER_MESSAGE + 1
    frame = encode_binary(0.0, 50.0, np.zeros((n, 6), np.float32))
    assert len(frame) < limits.MAX_PAYLOAD_BYTES and reason(frame) == "too many samples"


# -- 2. a timestamp cannot lock a device out ----------------------------------------------------------
def test_one_message_from_the_far_future_costs_the_device_one_window_not_its_stream() -> None:
    s = scheduler(window=32, hop=8)
    t, v = still(100)
    assert len(push(s, t, v)) > 0
    push(s, [t[-1] + 1e9], v[:1], rate=None)  # spoofed, or a glitching clock
    t, v = still(200, t0=t[-1] + 0.02)  # the device carries on with its own clock
    windows = push(s, t, v)
    stream = s.devices["d"]
    assert stream.counters.clock_jumps == 2  # ahead, then back
    assert windows and windows[0].index == 31  # the first window after the jump: one window's samples
    assert stream.counters.dropped["timestamp not after the previous one"] == 0


def test_a_device_that_reboots_and_restarts_its_clock_is_recognised_again_within_a_window() -> None:
    s = scheduler(window=32, hop=8)
    t, v = still(500, t0=3600.0)  # an hour of uptime
    push(s, t, v)
    t, v = still(32, t0=0.5)  # rebooted: the clock starts again near 0
    windows = push(s, t, v)
    assert len(windows) == 1 and s.devices["d"].counters.clock_jumps == 1


def test_a_repeated_recent_sample_is_still_dropped_as_a_duplicate() -> None:
    s = scheduler()
    t, v = still(100)
    push(s, t, v)
    push(s, t[-50:], v[-50:])  # QoS 1 redelivery: a second behind, not a clock jump
    stream = s.devices["d"]
    assert stream.counters.dropped["timestamp not after the previous one"] == 50
    assert stream.counters.clock_jumps == 0


def test_a_long_silence_is_a_gap_not_a_clock_jump() -> None:
    s = scheduler()
    t, v = still(100)
    push(s, t, v, arrival=0.0)
    t2, v2 = still(100, t0=t[-1] + 600.0)
    push(s, t2, v2, arrival=600.0)  # ten minutes later, here as on the device
    counters = s.devices["d"].counters
    assert (counters.gaps, counters.clock_jumps) == (1, 0)


# -- 3. absurd values cannot poison the filters ----------------------------------------------------------
def test_finite_but_absurd_values_are_dropped_and_the_filters_stay_finite() -> None:
    s = scheduler()
    t, v = still(100)
    push(s, t, v)
    bad = np.full((3, 6), 1e308)  # finite! the old code filtered them into NaN
    push(s, t[-1] + np.arange(1, 4) / RATE, bad)
    t, v = still(200, t0=t[-1] + 4 / RATE)
    windows = push(s, t, v)
    assert s.devices["d"].counters.dropped == {"value out of range": 3}
    assert len(windows) == 25 and all(np.isfinite(w.features).all() for w in windows)


def test_a_filter_state_that_turns_non_finite_restarts_the_stream() -> None:
    s = scheduler()
    t, v = still(100)
    push(s, t, v)
    stream = s.devices["d"]
    stream.preprocessor.state[0][...] = np.nan  # however it happened
    assert push(s, *still(10, t0=t[-1] + 0.02)) == []
    assert stream.counters.dropped["non-finite filter state"] == 10
    assert len(push(s, *still(100, t0=t[-1] + 0.3))) > 0  # and it recovers


def test_a_device_whose_push_fails_is_counted_and_restarted_while_others_flow(monkeypatch) -> None:
    s = scheduler()
    push(s, *still(10), device="victim")
    push(s, *still(10), device="other")

    def out_of_memory(x):
        raise MemoryError("Unable to allocate 18.0 GiB")

    monkeypatch.setattr(s.devices["victim"].preprocessor, "process", out_of_memory)
    assert push(s, *still(40, t0=0.2), device="victim") == []
    assert s.devices["victim"].counters.dropped == {"internal error (MemoryError)": 40}
    assert len(push(s, *still(40, t0=0.2), device="other")) > 0


class Hostile(SourceBase):
    """A live source: a well-behaved device and an attacker's device, interleaved."""

    name = "hostile"
    status = "playing"

    def __init__(self) -> None:
        super().__init__()
        self.good_samples = 0

    def run(self, emit, stop: threading.Event) -> None:
        clock = 0.0
        for k in range(40):
            t, v = still(25, t0=clock)
            clock = t[-1] + 1 / RATE
            emit(SampleBatch("good", t, v, CHANNELS, arrival=k * 0.5, rate_hz=RATE))
            self.good_samples += 25
            bad_t, bad_v = still(25, t0=clock)
            trouble = k % 4
            if trouble == 0:
                bad_v[:3] = 1e308
            elif trouble == 1:
                bad_t = bad_t + 1e9
            elif trouble == 2:
                bad_v[5] = np.nan
            emit(SampleBatch("evil", bad_t, bad_v, CHANNELS, arrival=k * 0.5, rate_hz=RATE))


def test_hostile_input_never_reaches_the_output_and_never_touches_another_device(tiny_checkpoint) -> None:
    from model.net.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(tiny_checkpoint)
    engine = InferenceEngine(TorchBackend(checkpoint.model))

    def run(source_batches) -> list:
        s = Scheduler(checkpoint.preprocessing, 128, 32, RATE, units=UNITS)
        return list(Pipeline([source_batches], s, engine, Decider(checkpoint.classes)).run())

    mixed = run(Hostile())

    class GoodOnly(Hostile):
        def run(self, emit, stop):
            super().run(lambda b: emit(b) if b.device == "good" else None, stop)

    alone = run(GoodOnly())
    good = [p for p in mixed if p.device == "good"]
    assert [(p.t, p.label) for p in good] == [(p.t, p.label) for p in alone] and len(good) == 28
    for p, q in zip(good, alone, strict=True):
        assert p.probs == pytest.approx(q.probs, abs=1e-6)
    for p in mixed:  # strict JSON, every number finite
        text = json.dumps(p.to_json(), allow_nan=False)
        assert math.isfinite(p.confidence) and "NaN" not in text


# -- 4. decoders raise their own error only ----------------------------------------------------------------
@pytest.mark.parametrize("payload", [
    b'{"t": ' + b"9" * 400 + b', "acc": [0, 0, 1], "gyro": [0, 0, 0]}',
    b'{"t": 1.0, "acc": [' + b"9" * 400 + b', 0, 1], "gyro": [0, 0, 0]}',
    b'{"t0": 0, "hz": ' + b"9" * 400 + b', "channels": ["acc_x"], "samples": [[1]]}',
    b'{"t0": 1e300, "hz": 50, "channels": ["acc_x"], "samples": [[1]]}',
])  # fmt: skip
def test_huge_numbers_are_the_device_s_bad_input_not_an_internal_error(payload: bytes) -> None:
    assert reason(payload).endswith("out of range")


def test_a_lost_reading_may_be_sent_as_null_which_is_json() -> None:
    batch = decode(b'{"t": 1.0, "acc": [null, 0, 1], "gyro": [0, 0, 0]}', "dev", CHANNELS)
    assert math.isnan(batch.values[0, 0]) and batch.values[0, 2] == 1.0


def test_strict_json_writes_non_finite_numbers_as_null() -> None:
    text = dumps({"confidence": np.float32("nan"), "probs": {"a": float("inf")}, "n": np.int64(3)})
    assert json.loads(text) == {"confidence": None, "probs": {"a": None}, "n": 3}


# -- properties ---------------------------------------------------------------------------------------------
@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2048))
def test_any_bytes_decode_to_a_batch_or_a_wire_error(payload: bytes) -> None:
    for candidate in (payload, MAGIC + payload, b"{" + payload):
        try:
            batch = decode(candidate, "dev", ("acc_x",))
        except WireError:
            continue
        assert batch.values.shape == (len(batch.timestamps), 1)
        assert len(batch.timestamps) <= limits.MAX_SAMPLES_PER_MESSAGE


NUMBERS = st.one_of(
    st.integers(min_value=-(10**400), max_value=10**400), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, -1, 1e308, -1e308, 5e-324, 2**53 + 1]),
)  # fmt: skip
JUNK = st.recursive(
    st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=6),
                            st.dictionaries(st.text(max_size=4), inner, max_size=4)),
    max_leaves=30,
)  # fmt: skip
FIELD = st.sampled_from(["t", "t0", "hz", "channels", "samples", "acc", "gyro", "unit"])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(FIELD, JUNK, max_size=8), st.booleans())
def test_any_json_object_decodes_to_a_batch_or_a_wire_error(message: dict, as_python: bool) -> None:
    if "samples" in message and isinstance(message["samples"], list):
        message.setdefault("channels", ["acc_x"])
    # Python's own dumps writes NaN and Infinity, as sloppy devices do; the strict one writes null
    payload = (json.dumps(message) if as_python else dumps(message)).encode()
    try:
        batch = decode(payload, "dev", ("acc_x",))
    except WireError:
        return
    assert len(batch.timestamps) == len(batch.values) <= limits.MAX_SAMPLES_PER_MESSAGE
    assert (np.abs(batch.timestamps[np.isfinite(batch.timestamps)]) <= limits.MAX_ABS_TIME_S).all()


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 255), st.integers(0, 255), st.integers(0, 65535), st.floats(width=32),
       st.floats(), st.binary(max_size=256))  # fmt: skip
def test_any_binary_header_decodes_to_a_batch_or_a_wire_error(version, c, n, rate, t0, rest) -> None:
    try:
        batch = decode(HEADER.pack(MAGIC, version, c, n, rate, t0) + rest, "dev", ("acc_x",))
    except (WireError, struct.error) as error:
        assert isinstance(error, WireError)
        return
    assert len(batch.timestamps) == n <= limits.MAX_SAMPLES_PER_MESSAGE


TIMESTAMPS = st.lists(st.one_of(
    st.floats(min_value=-1e12, max_value=1e12), st.sampled_from([math.nan, math.inf, -math.inf, 0.0, 1e9]),
), min_size=1, max_size=60)  # fmt: skip
VALUES = st.sampled_from([0.0, 1.0, -1.0, 1e308, -1e308, math.nan, math.inf, 63.9, 100.0, 1e-300])
RATES = st.sampled_from([None, 1.0, 12.4, 12.5, 25.0, 49.0, 50.0, 51.0, 100.0, 400.0, 401.0, 1000.0])


class Fleet(RuleBasedStateMachine):
    """A well-behaved device streams on while a hostile one sends anything at all; the well-behaved
    one's windows must equal those of a scheduler that never heard of the other."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = scheduler(window=16, hop=4)
        self.alone = scheduler(window=16, hop=4)
        self.clock = 0.0
        self.arrival = 0.0
        self.good_windows = 0
        self.since_trouble = 0  # clean samples of the good device since its own last trouble

    def _good(self, t: np.ndarray, v: np.ndarray) -> list:
        self.arrival += len(t) / RATE
        shared = push(self.shared, t, v, device="good", arrival=self.arrival)
        alone = push(self.alone, t, v, device="good", arrival=self.arrival)
        assert len(shared) == len(alone)
        for a, b in zip(shared, alone, strict=True):
            assert (a.t, a.index, a.segment) == (b.t, b.index, b.segment)
            np.testing.assert_array_equal(a.features, b.features)
        self.check(shared, len(t))
        return shared

    def check(self, windows: list, n_in: int) -> None:
        for w in windows:
            assert np.isfinite(w.features).all()
        # bounded work: resampling turns one sample into at most GAP_PERIODS / RATE_RATIO[0] ones
        per_sample = limits.GAP_PERIODS / limits.RATE_RATIO[0]
        assert len(windows) <= (per_sample * n_in + 1) / 4 + 1

    @rule(n=st.integers(1, 40))
    def good_streams_on(self, n: int) -> None:
        t, v = still(n, t0=self.clock)
        self.clock = t[-1] + 1 / RATE
        # The contract: a sample counts once it is after the latest one the stream holds, or so far
        # behind it (a clock jump) that the stream restarts; a small step back is caught up with.
        latest = self.shared.devices["good"].last_t if "good" in self.shared.devices else -np.inf
        restarts = t[0] < latest - limits.CLOCK_JUMP_S
        self.good_windows += len(self._good(t, v))
        self.since_trouble += n if restarts else int((t > latest).sum())

    @rule(jump=st.sampled_from([-1e9, -3600.0, -6.0, 6.0, 3600.0, 1e9]))
    def good_device_clock_jumps(self, jump: float) -> None:
        self.clock = max(self.clock + jump, 0.0)
        t, v = still(1, t0=self.clock)
        self._good(t, v)
        self.clock += 1 / RATE
        self.since_trouble = 0

    @rule(t=TIMESTAMPS, value=VALUES, rate=RATES, device=st.sampled_from(["evil", "good"]))
    def hostile_batch(self, t: list[float], value: float, rate: float | None, device: str) -> None:
        v = np.full((len(t), 6), value)
        v[:, 0] += 1.0
        if device == "good":  # the good device glitches too; it must recover by itself
            self._good(np.array(t), v)
            self.since_trouble = 0
            return
        windows = push(self.shared, t, v, device="evil", rate=rate, arrival=self.arrival)
        self.check(windows, len(t))

    @invariant()
    def the_good_device_recovers_within_a_window_of_clean_samples(self) -> None:
        stream = self.shared.devices.get("good")
        if stream is not None and self.since_trouble >= 16 + 1 + 8:  # a window, plus the rate's measuring
            assert stream.ring.total >= 16


Fleet.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
test_a_hostile_device_never_disturbs_a_good_one_and_every_device_recovers = Fleet.TestCase


# -- 5. the device limit -----------------------------------------------------------------------------------
def test_at_the_device_limit_a_newcomer_takes_the_slot_of_a_silent_device() -> None:
    s = scheduler(max_devices=3, admit_after_s=5.0)
    for k in range(3):
        push(s, *still(10), device=f"d{k}", arrival=0.0)
    push(s, *still(10), device="late", arrival=1.0)  # everyone spoke a second ago: no room
    assert "late" not in s.devices and s.retired.dropped[DEVICE_LIMIT] == 10
    push(s, *still(10, t0=1.0), device="d1", arrival=4.0)  # d1 keeps talking
    push(s, *still(10), device="late", arrival=6.0)  # d0 and d2 silent for 6 s: d0 goes first
    assert list(s.devices) == ["d2", "d1", "late"]
    assert s.evict_idle(now=6.0) == ["d0"]  # reported once, so the pipeline can forget it
    assert s.evict_idle(now=6.0) == []
    totals = s.totals()
    assert totals.samples == 50 and totals.dropped[DEVICE_LIMIT] == 10  # d0's samples still counted
