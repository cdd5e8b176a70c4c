"""A newcomer's first hour without a traceback (issue 21): a model of one's own replayed on HAPT,
Ctrl-C while training, a device name mistyped in ``history``."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from live_fixtures import ROOT, Lines, write_tiny_checkpoint

from streamer.cli.main import main


def write_own_model(path: Path, classes: tuple[str, ...]) -> Path:
    """An untrained tiny network as a model trained on the user's own CSV recordings would be: HAPT's
    channels and units, its own class names."""
    from model.config import DataConfig
    from model.data.signals import HAPT_CHANNELS, HAPT_UNITS

    data = DataConfig(dataset="csv", classes=classes, channels=HAPT_CHANNELS, units=HAPT_UNITS, window=64,
                      step=32)  # fmt: skip
    return write_tiny_checkpoint(path, data=data)


def replay_own_model(capsys, path: Path) -> tuple[list[dict], list[str]]:
    """``harstream replay`` (its default source, hapt:2) with that model: predictions and stderr lines."""
    code = main(["replay", "--checkpoint", str(path), "--speed", "0", "--headless", "--jsonl", "--hop", "64",
                 "--backend", "torch"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    return [p for p in lines if "device" in p], err.splitlines()


def test_a_model_of_other_classes_replays_hapt_without_truth_and_says_so_once(tmp_path, capsys) -> None:
    own = write_own_model(tmp_path / "mine.pt", ("Running", "Badminton", "Resting"))
    predictions, err = replay_own_model(capsys, own)  # was: IndexError: tuple index out of range
    assert len(predictions) > 100 and all(p["truth"] is None for p in predictions)
    said = [line for line in err if "truth" in line]
    assert len(said) == 1 and "no truth shown" in said[0] and "Running" in said[0], err


def test_a_model_sharing_some_classes_gets_truth_by_name(tmp_path, capsys) -> None:
    own = write_own_model(tmp_path / "mine.pt", ("SITTING", "Running", "WALKING"))  # not HAPT's order
    predictions, err = replay_own_model(capsys, own)
    truths = {p["truth"] for p in predictions}
    assert {"WALKING", "SITTING"} <= truths <= {"WALKING", "SITTING", None}, truths
    said = [line for line in err if "truth" in line]
    assert len(said) == 1, err
    untold = said[0].split("no truth shown for ")[1].split(":")[0].split(", ")
    assert untold == ["LAYING", "STANDING", "WALKING_DOWNSTAIRS", "WALKING_UPSTAIRS"], said


@pytest.mark.parametrize("truth", [None, 0, 2, 3, -1])
def test_the_decider_never_indexes_past_its_classes(truth) -> None:
    from streamer.core.engine import Decider

    decider = Decider(("A", "B", "C"))
    assert decider.truth_name(truth) == {0: "A", 2: "C"}.get(truth)


def test_history_of_a_mistyped_device_names_the_devices_the_store_knows(tiny_checkpoint, short_recording,
                                                                       tmp_path, capsys) -> None:  # fmt: skip
    store = str(tmp_path / "history.db")
    assert main(["replay", f"csv:{short_recording}", "--checkpoint", str(tiny_checkpoint), "--speed", "0",
                 "--headless", "--store", store]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["history", "--store", store, "--device", "wirst"]) == 1  # was: "no history in that time", 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean wrist?" in err and "'wirst'" in err, err
    assert main(["history", "--store", store, "--device", "wrist", "--json"]) == 0
    assert list(json.loads(capsys.readouterr().out)["devices"]) == ["wrist"]
    assert main(["history", "--store", store, "--device", "wrist", "--since", "2999-01-01"]) == 0
    assert "no history in that time" in capsys.readouterr().out  # a known device, another time: as before


def test_ctrl_c_while_training_is_one_line_exit_130_and_the_kept_model_stays(csv_dataset, tmp_path) -> None:
    from model.net.checkpoint import load_checkpoint
    from model.train.init_config import write_config

    config = tmp_path / "own.toml"
    config.write_text(write_config(csv_dataset, config, window=64)[0])
    out = tmp_path / "own.pt"
    tiny = ["--set", "model.n_hidden=8", "--set", "model.n_stacked=1", "--set", "model.n_residual=1",
            "--set", "train.batch_size=16", "--set", "train.threads=1"]  # fmt: skip
    command = [sys.executable, "train.py", "--config", str(config), "--out", str(out), *tiny]
    first = subprocess.run([*command, "--epochs", "1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    kept = out.read_bytes(), out.with_suffix(".json").read_bytes()

    training = subprocess.Popen([*command, "--epochs", "100000"], cwd=ROOT, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    lines = Lines(training.stdout)
    try:
        assert lines.wait(lambda ls: any(line.startswith("epoch") for line in ls), 240), lines.lines
        training.send_signal(signal.SIGINT)  # mid-training: an epoch done, the next one running
        assert training.wait(60) == 130
    finally:
        training.kill()
    err = training.stderr.read()
    assert err.count("\n") == 1 and "Traceback" not in err, err  # was: a 21-line KeyboardInterrupt traceback
    assert "interrupted in epoch" in err and "nothing saved" in err and "as it was" in err, err
    assert (out.read_bytes(), out.with_suffix(".json").read_bytes()) == kept
    assert load_checkpoint(out).meta.classes  # still a usable model
