"""The end-to-end benchmark that ``harstream bench`` reports, run small, on either backend."""

import threading

import pytest

from model.net.checkpoint import load_checkpoint
from streamer.cli.main import build_parser
from streamer.core.backends import make_backend
from streamer.core.types import FleetBatch
from streamer.tools.bench import Fleet, end_to_end, fastest_backend, scheduling_figures


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_a_small_fleet_runs_through_the_pipeline_without_drops(tiny_checkpoint, backend):
    checkpoint = load_checkpoint(tiny_checkpoint)
    run = end_to_end(checkpoint, 5, 4.0, backend=make_backend(backend, tiny_checkpoint))
    # starts on ticks 0 1 2 4 5 of 40: 200 195 190 180 175 samples; windows of 128 every 32
    assert run["windows"] == run["windows_expected"] == 3 + 3 + 2 + 2 + 2
    assert run["dropped"] == 0 and run["p99_ms"] < 3000
    assert 0 < run["cpu_ms_per_device_s"] < 1e4  # the figure bench --fleet reports for a recognizer


def test_scheduling_is_measured_one_by_one_and_together_side_by_side(tiny_checkpoint):
    figures = scheduling_figures(load_checkpoint(tiny_checkpoint), devices=20, rounds=8, take=7)
    one, together = figures["one_by_one_us_per_message"], figures["together_us_per_message"]
    assert one > 0 and together > 0 and figures["ratio"] == round(one / together, 2)


def test_the_fleet_hands_over_every_device_s_samples_of_a_tick_as_one_batch():
    batches = []
    Fleet(3, seconds=0.2).run(batches.append, stop=threading.Event())
    assert len(batches) == 2 and all(isinstance(b, FleetBatch) for b in batches)
    assert batches[0].devices == ("dev00000", "dev00001", "dev00002")
    assert batches[0].values.shape == (3, 5, 6) and batches[1].timestamps[0, 0] == 5 / 50.0


def test_staggered_devices_start_over_one_hop_and_close_windows_on_different_ticks():
    batches = []
    fleet = Fleet(4, seconds=4.0, spread_samples=32)  # 32 samples: 7 ticks of 5
    fleet.run(batches.append, stop=threading.Event())
    assert fleet.starts.tolist() == [0, 1, 3, 5]
    assert [len(b.devices) for b in batches[:6]] == [1, 2, 2, 3, 3, 4]
    assert all(b.timestamps[i, 0] == (k - fleet.starts[i]) * 5 / 50 for k, b in enumerate(batches[5:], 5)
               for i in range(4))  # fmt: skip  - every device's own clock starts at 0
    # 40 ticks of 5 samples less the late starts: 200 195 185 175 samples; windows of 128 every 32
    assert fleet.expected_windows(128, 32) == 3 + 3 + 2 + 2


def test_bench_takes_a_backend_and_defaults_to_onnx_when_installed():
    assert build_parser().parse_args(["bench", "--backend", "torch"]).backend == "torch"
    assert build_parser().parse_args(["bench"]).backend is None  # run_bench picks fastest_backend()
    assert fastest_backend() == "onnx"  # the test extra installs onnxruntime


def test_models_are_compared_side_by_side_with_their_cost_and_recorded_scores(tmp_path, capsys):
    import json

    import torch
    from live_fixtures import write_tiny_checkpoint

    from model.config import NetworkConfig
    from model.net.network import ResidualBiLSTM
    from streamer.tools.bench_models import main as bench_models

    small = write_tiny_checkpoint(tmp_path / "small.pt")
    large = write_tiny_checkpoint(tmp_path / "large.pt")
    meta = json.loads(large.with_suffix(".json").read_text())
    meta["network"]["n_hidden"] = 16  # the same layers, twice as wide: about 3x the FLOPs
    torch.save(ResidualBiLSTM(NetworkConfig(**meta["network"])).state_dict(), large)
    large.with_suffix(".json").write_text(json.dumps(meta))
    assert bench_models([str(small), str(large), "--rounds", "2", "--seconds", "0.05", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["checkpoint"] for r in rows] == [str(small), str(large)]
    assert 2.5 < rows[1]["mflop_per_window"] / rows[0]["mflop_per_window"] < 4
    assert all(r["windows_per_s"] > 0 and r["test_accuracy"] is None for r in rows)  # untrained: no scores
    assert bench_models([str(tmp_path / "missing.pt")]) == 1
    assert capsys.readouterr().err.startswith("bench_models: ")
