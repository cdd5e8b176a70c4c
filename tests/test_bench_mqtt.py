"""The MQTT ingestion benchmark that ``harstream bench`` reports, run small."""

from __future__ import annotations

import pytest

from streamer.tools.bench_mqtt import measure_mqtt_ingestion


@pytest.mark.parametrize("fmt", ["batch", "binary"])
def test_ingestion_benchmark_takes_in_every_published_sample(fmt: str) -> None:
    result = measure_mqtt_ingestion(fmt, devices=20, seconds=0.5, samples_per_message=50, ahead=100)
    assert set(result) >= {"format", "samples_per_s", "messages_per_s", "dropped", "devices"}
    assert result["format"] == fmt and result["devices"] == 20 and result["dropped"] == 0
    assert result["samples"] == 50 * result["published_messages"] > 0
    assert result["samples_per_s"] == pytest.approx(50 * result["messages_per_s"], rel=1e-3)
    assert result["windows"] > 0  # real samples, real preprocessing: the scheduler cut windows


def test_ingestion_benchmark_refuses_an_unknown_format() -> None:
    with pytest.raises(ValueError):
        measure_mqtt_ingestion("json")


def test_median_of_three_fast_path_gives_numpy_medians_in_any_chunking() -> None:
    import numpy as np

    from model.data.preprocessing import CausalMedian

    rng = np.random.default_rng(1)
    for trial in range(50):
        x = rng.normal(size=(int(rng.integers(1, 80)), 6))
        if trial % 2:
            x = np.round(x, 1)  # ties
        extended = np.concatenate([np.repeat(x[:1], 2, axis=0), x])
        want = np.median(np.lib.stride_tricks.sliding_window_view(extended, 3, axis=0), axis=-1)
        median = CausalMedian(3)
        cut = int(rng.integers(0, len(x) + 1))
        got = np.concatenate([median.process(x[:cut]), median.process(x[cut:])])
        assert np.array_equal(got, want)
