"""The soak run: simulated minutes of good and hostile devices mixed, through the real decoder,
scheduler, engine and decider (`harstream soak` runs hours of it for the README's figure)."""

import json

from model.checkpoint import load_checkpoint
from streamer.backends import TorchBackend
from streamer.cli import main
from streamer.engine import InferenceEngine
from streamer.soak import ATTACKS, run_soak


def test_good_devices_never_miss_a_window_while_hostile_ones_attack_and_floods_come(tiny_checkpoint):
    checkpoint = load_checkpoint(tiny_checkpoint)
    engine = InferenceEngine(TorchBackend(checkpoint.model))
    result = run_soak(checkpoint.meta, engine, hours=0.2, good=3, hostile=6, flood=60, flood_every_s=300)
    assert result["good_device_windows"] == result["good_device_windows_expected"] > 100
    assert result["longest_good_silence_s"] <= result["hop_s"] + 1e-6  # one hop between predictions
    assert set(result["attacks"]) == set(ATTACKS)
    dropped = result["dropped_by_reason"]
    for reason in ("value out of range", "non-finite value", "rate out of range", "device limit",
                   "timestamp not after the previous one"):  # fmt: skip
        assert dropped[reason] > 0, reason
    assert {"payload over 1 MB", "too many samples", "t out of range"} <= set(result["wire_errors"])
    assert result["clock_jumps"] > 0 and result["devices_forgotten"] > 0  # the first flood's ids, idle
    assert "non-finite model output" not in dropped


def test_soak_command_prints_one_strict_json_object(tiny_checkpoint, capsys):
    argv = ["soak", "--checkpoint", str(tiny_checkpoint), "--hours", "0.01", "--good", "1", "--hostile", "2",
            "--json"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out, parse_constant=lambda name: 1 / 0)  # NaN would fail here
    assert result["good_device_windows"] == result["good_device_windows_expected"]
