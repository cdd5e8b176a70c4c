"""The end-to-end benchmark that ``harstream bench`` reports, run small, on either backend."""

import threading

import pytest

from model.checkpoint import load_checkpoint
from streamer.backends import make_backend
from streamer.bench import Fleet, default_backend, end_to_end
from streamer.cli import build_parser
from streamer.types import FleetBatch


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_a_small_fleet_runs_through_the_pipeline_without_drops(tiny_checkpoint, backend):
    checkpoint = load_checkpoint(tiny_checkpoint)
    run = end_to_end(checkpoint, 5, 3.0, backend=make_backend(backend, checkpoint))
    # 150 samples a device, 128-sample windows, hop 32: one window each
    assert run["windows"] == run["windows_expected"] == 5
    assert run["dropped"] == 0 and run["p99_ms"] < 3000


def test_the_fleet_hands_over_every_device_s_samples_of_a_tick_as_one_batch():
    batches = []
    Fleet(3, seconds=0.2).run(batches.append, stop=threading.Event())
    assert len(batches) == 2 and all(isinstance(b, FleetBatch) for b in batches)
    assert batches[0].devices == ("dev00000", "dev00001", "dev00002")
    assert batches[0].values.shape == (3, 5, 6) and batches[1].timestamps[0, 0] == 5 / 50.0


def test_bench_takes_a_backend_and_defaults_to_onnx_when_installed():
    assert build_parser().parse_args(["bench", "--backend", "torch"]).backend == "torch"
    assert build_parser().parse_args(["bench"]).backend is None  # run_bench picks default_backend()
    assert default_backend() == "onnx"  # the test extra installs onnxruntime
