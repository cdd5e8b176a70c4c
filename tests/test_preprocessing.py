import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.data.preprocessing import build_preprocessor, process_stacked
from model.data.signals import PreprocessingSpec

SPEC = PreprocessingSpec(kind="uci_har", rate_hz=50.0)


def run_in_chunks(x: np.ndarray, sizes: list[int]) -> np.ndarray:
    pre = build_preprocessor(SPEC)
    out, i = [], 0
    for size in sizes:
        out.append(pre.process(x[i : i + size]))
        i += size
    out.append(pre.process(x[i:]))
    return np.concatenate(out)


def test_a_real_recording_in_random_chunks_equals_the_recording_whole(hapt):
    x = hapt[0].values[:6000]
    whole = build_preprocessor(SPEC).process(x)
    sizes = np.random.default_rng(7).integers(1, 300, size=60).tolist()
    np.testing.assert_array_equal(run_in_chunks(x, sizes), whole)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=1, max_size=20))
def test_any_chunking_gives_the_same_features(sizes):
    x = np.random.default_rng(1).normal(size=(400, 6))
    np.testing.assert_array_equal(run_in_chunks(x, sizes), build_preprocessor(SPEC).process(x))


def test_a_still_phone_has_gravity_in_total_acc_and_none_in_body_acc():
    x = np.tile([0.0, 0.0, 1.0, 0.0, 0.0, 0.0], (500, 1))  # lying flat, 1 g on z
    features = build_preprocessor(SPEC).process(x)
    np.testing.assert_allclose(features[:, 6:9], x[:, :3], atol=1e-9)
    np.testing.assert_allclose(features[:, 0:3], 0.0, atol=1e-9)


def test_body_acc_keeps_motion_above_the_gravity_cutoff():
    t = np.arange(1000) / 50.0
    x = np.zeros((1000, 6))
    x[:, 2] = 1.0 + 0.5 * np.sin(2 * np.pi * 2.0 * t)  # 2 Hz bouncing on top of gravity
    body_z = build_preprocessor(SPEC).process(x)[500:, 2]
    assert 0.4 < body_z.max() < 0.6
    assert abs(body_z.mean()) < 0.02


def test_reset_forgets_the_past():
    rng = np.random.default_rng(3)
    pre = build_preprocessor(SPEC)
    pre.process(rng.normal(size=(200, 6)))
    pre.reset()
    y = rng.normal(size=(100, 6))
    np.testing.assert_array_equal(pre.process(y), build_preprocessor(SPEC).process(y))


def test_a_median_spike_is_removed():
    x = np.zeros((50, 6))
    x[20, 0] = 100.0  # a one-sample glitch
    features = build_preprocessor(SPEC).process(x)
    assert np.abs(features).max() < 1e-9


@pytest.mark.parametrize("spec", [SPEC, PreprocessingSpec(kind="uci_har", median_kernel=5),
                                  PreprocessingSpec(kind="opportunity", inputs=("a", "b", "c")),
                                  PreprocessingSpec(kind="identity", inputs=("a", "b"))], ids=str)
def test_many_devices_in_one_stacked_call_equal_one_call_per_device(hapt, spec):
    """Real recordings from different offsets, each device started on its own first samples, then
    chunks of every device stacked: the same bits as each device alone, states included."""
    devices, channels = 7, len(spec.inputs)
    x = np.stack([hapt[d].values[1000 * d : 1000 * d + 300, :channels] for d in range(devices)])
    if spec.kind == "opportunity":
        x[np.random.default_rng(2).random(x.shape) < 0.2] = np.nan  # dropouts to carry forward
    alone = [build_preprocessor(spec) for _ in range(devices)]
    together = [build_preprocessor(spec) for _ in range(devices)]
    expected = np.stack([pre.process(x[d]) for d, pre in enumerate(alone)])
    stack = build_preprocessor(spec)
    starts = [pre.process(x[d, :3]) for d, pre in enumerate(together)]  # a device's start is its own
    chunks = [process_stacked(stack, together, x[:, i : i + 5]) for i in range(3, 300, 5)]
    np.testing.assert_array_equal(np.concatenate([np.stack(starts), *chunks], axis=1), expected)
    for a, b in zip(alone, together, strict=True):
        for p, q in zip(a.state, b.state, strict=True):
            np.testing.assert_array_equal(p, q)
