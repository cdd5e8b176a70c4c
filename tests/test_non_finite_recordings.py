"""Recordings holding lost readings (``nan``, as `harstream record` writes one, or an empty cell)
and absurd values (``1e+308``), through the real commands: `init-config`, `train.py`. A lost reading
is a gap, as the live path has it; an absurd value refuses the file naming its line; a NaN
normalisation, loss or weights is one line and exit 1, and nothing is saved (issue 19, item 10)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import train
from model.data.datasets import recording_windows
from model.data.recordings import Recording, read_csv_recording, write_csv_recording
from model.data.signals import HAPT_CHANNELS
from model.net.checkpoint import load_checkpoint, save_checkpoint
from model.net.checkpoint_meta import CheckpointError, read_meta
from model.train.experiment import load_config
from streamer.cli.main import main as harstream
from streamer.core.scheduler import Scheduler
from streamer.core.types import SampleBatch

CLASSES = ("UPRIGHT", "SHAKING")
RATE = 50.0
TINY = ["--epochs", "2", "--set", "model.n_hidden=8", "--set", "model.n_stacked=1", "--set",
        "model.n_residual=1", "--set", "train.batch_size=8", "--set", "train.lr=0.01", "--set",
        "train.threads=1"]  # fmt: skip


def motion(kind: str, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Still with gravity on -y, or shaking at 3 Hz with gravity on +z (g and rad/s)."""
    x = rng.normal(0, 0.02, (len(t), 6))
    if kind == "UPRIGHT":
        x[:, 1] -= 1.0
    else:
        x[:, 2] += 1.0
        x[:, 0] += 0.6 * np.sin(2 * np.pi * 3 * t)
        x[:, 5] += 2.0 * np.sin(2 * np.pi * 3 * t)
    return x


def wearer(name: str, seed: int, seconds: float = 10.0) -> Recording:
    """Each activity twice, ``seconds`` a stretch, as one device's recording."""
    n = int(seconds * RATE)
    t = 100.0 + np.arange(4 * n) / RATE
    rng = np.random.default_rng(seed)
    x = np.concatenate([motion(CLASSES[k % 2], t[k * n : (k + 1) * n], rng) for k in range(4)])
    labels = (np.arange(4 * n) // n) % 2
    return Recording(name, name, t, x, labels, HAPT_CHANNELS, CLASSES, RATE)


def edit(path: Path, rows: dict[int, dict[str, str]]) -> None:
    """Set cells of data rows (0-based, after the header) of a CSV as `harstream record` writes it."""
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    for row, cells in rows.items():
        parts = lines[row + 1].split(",")
        for column, text in cells.items():
            parts[header.index(column)] = text
        lines[row + 1] = ",".join(parts)
    path.write_text("\n".join(lines) + "\n")


LOST = {  # a short loss (stepped over, as live) and a long one (the stream restarts there)
    **{row: {"acc_x": "nan"} for row in (250, 251)},
    **{row: {"gyro_z": "nan"} for row in range(600, 610)},
    900: {"acc_y": ""},  # an empty cell is a lost reading too
}


@pytest.fixture
def recordings(tmp_path: Path) -> Path:
    """Two wearers' recordings; band-1 has lost readings; and the config `init-config` writes."""
    folder = tmp_path / "recordings"
    folder.mkdir()
    for seed, name in enumerate(("band-1", "band-2")):
        write_csv_recording(folder / f"{name}.csv", wearer(name, seed))
    edit(folder / "band-1.csv", LOST)
    assert harstream(["init-config", str(folder), "--out", str(tmp_path / "band.toml")]) == 0
    return folder


def one_line(err: str) -> str:
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_lost_readings_train_a_finite_model_that_the_live_path_loads(recordings, tmp_path, capsys):
    out = tmp_path / "band.pt"
    assert train.main(["--config", str(tmp_path / "band.toml"), "--out", str(out), *TINY]) == 0
    log = capsys.readouterr().out
    assert "loss nan" not in log and "saved" in log
    meta = json.loads(out.with_suffix(".json").read_text())
    assert all(np.isfinite(meta["normalisation"][k]).all() for k in ("mean", "std"))
    checkpoint = load_checkpoint(out)  # what every live command does first: it checks every weight is finite
    assert all(bool(torch.isfinite(v).all()) for v in checkpoint.model.state_dict().values())


def test_a_lost_reading_is_a_gap_as_the_live_path_has_it(recordings, tmp_path):
    """Training's windows of a recording with lost readings are the live scheduler's windows of
    the same recording replayed: a short loss is stepped over, a long one restarts the stream."""
    config = load_config(tmp_path / "band.toml")
    recording = read_csv_recording(recordings / "band-1.csv", config.data.channels, CLASSES, RATE)
    assert np.isnan(recording.values[[250, 251, 600, 900], [0, 0, 5, 1]]).all()
    offline = recording_windows([recording], config.data, config.preprocessing)
    assert np.isfinite(offline.x).all() and len(offline) > 0

    scheduler = Scheduler(config.preprocessing, config.data.window, config.data.step, RATE)
    live = scheduler.push(SampleBatch("band-1", recording.timestamps, recording.values,
                                      recording.channels, arrival=0.0, rate_hz=RATE,
                                      truth=recording.labels))  # fmt: skip
    stream = scheduler.devices["band-1"].counters
    assert stream.dropped["non-finite value"] == 13 and stream.gaps == 1  # the long loss, once
    labelled = [w for w in live if w.truth is not None and w.truth >= 0]  # training keeps these
    assert [w.t for w in labelled] == recording.timestamps[offline.ends].tolist()
    assert {w.segment for w in labelled} == {0, 1}  # windows on both sides of the restart
    for window, x in zip(labelled, offline.x, strict=True):
        np.testing.assert_allclose(window.features, x, atol=1e-5)


def test_an_absurd_value_refuses_training_naming_the_file_and_line(recordings, tmp_path, capsys):
    edit(recordings / "band-2.csv", {699: {"gyro_y": "1e+308"}})  # data row 699 is line 701
    out = tmp_path / "band.pt"
    assert train.main(["--config", str(tmp_path / "band.toml"), "--out", str(out), *TINY]) == 1
    err = one_line(capsys.readouterr().err)
    assert f"{recordings / 'band-2.csv'}:701: gyro_y 1e+308 is beyond any wearable's range" in err
    assert "(|value| above 100 rad/s)" in err and not out.exists()


def test_a_value_beyond_the_unit_limit_refuses_the_file_but_a_wild_one_within_does_not(tmp_path):
    path = tmp_path / "r.csv"
    write_csv_recording(path, wearer("r", 0, seconds=1.0))
    edit(path, {10: {"acc_z": "63.5"}})  # hard, but a reading
    read_csv_recording(path, HAPT_CHANNELS, CLASSES, RATE, ("g",) * 3 + ("rad/s",) * 3)
    edit(path, {20: {"acc_z": "-65"}})
    with pytest.raises(ValueError, match=r"r\.csv:22: acc_z -65\.0 is beyond .*above 64 g"):
        read_csv_recording(path, HAPT_CHANNELS, CLASSES, RATE, ("g",) * 3 + ("rad/s",) * 3)


def test_a_diverging_loss_is_one_line_and_nothing_is_saved(recordings, tmp_path, capsys):
    out = tmp_path / "band.pt"
    blow_up = ["--set", "train.augment_scale=1e39"]  # gains of inf: a NaN loss in the first batch
    argv = ["--config", str(tmp_path / "band.toml"), "--out", str(out), *TINY, *blow_up]
    assert train.main(argv) == 1
    err = one_line(capsys.readouterr().err)
    assert "train.py: epoch 1: the training loss is nan, nothing saved" in err
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_save_checkpoint_refuses_non_finite_weights_and_writes_nothing(tiny_checkpoint, tmp_path):
    tiny = load_checkpoint(tiny_checkpoint)
    model, meta = tiny.model, tiny.meta
    out = tmp_path / "nan.pt"
    with torch.no_grad():
        model.classifier.bias[0] = float("nan")
    with pytest.raises(CheckpointError, match=r"nan\.pt not saved: tensor classifier\.bias holds NaN"):
        save_checkpoint(out, model, meta)
    assert not out.exists() and not out.with_suffix(".json").exists()
    with torch.no_grad():
        model.classifier.bias[0] = 0.0
        model.feature_mean[1] = float("inf")
    with pytest.raises(CheckpointError, match="tensor feature_mean holds NaN or infinite values"):
        save_checkpoint(out, model, meta)
    assert not out.exists()
    with torch.no_grad():
        model.feature_mean[1] = 0.0
    save_checkpoint(out, model, meta)
    assert read_meta(out).name == meta.name


def test_init_config_guesses_the_units_of_a_recording_with_a_lost_reading(tmp_path):
    """A single nan made the median nan, and the guess fell back to g and rad/s."""
    from model.train.init_config import survey

    recording = wearer("band-1", 0)
    recording.values[:, :3] *= 9.80665  # the same motion in m/s²
    recording.values[:, 3:] *= 180 / np.pi  # and deg/s
    write_csv_recording(tmp_path / "band-1.csv", recording)
    edit(tmp_path / "band-1.csv", {300: {"acc_x": "nan", "gyro_x": "nan"}})
    assert survey(tmp_path).units == ("m/s2",) * 3 + ("deg/s",) * 3
