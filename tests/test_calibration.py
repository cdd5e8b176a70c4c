"""Per-wearer calibration (model/train/calibration.py, `harstream calibrate`): a real HAPT subject worn
another way up is recognised after calibration; the calibrated checkpoint loads and its rotation is
applied by the one preprocessing; bad input is one line."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from model.data.preprocessing import build_preprocessor
from model.data.recordings import Recording, load_hapt, write_csv_recording
from model.data.signals import PreprocessingSpec
from model.net.checkpoint import load_checkpoint
from model.net.checkpoint_meta import CheckpointError, CheckpointMeta
from model.train.calibration import calibrate, first_seconds, save, smallest_rotation, windows
from streamer.cli.main import main

BASE = Path(__file__).resolve().parents[1] / "model" / "weights" / "uci_har_3x3.pt"
# gravity from +x (the model's) to -y: the README's own MQTT example
TURN = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


def rotated(recording: Recording, r: np.ndarray) -> Recording:
    values = recording.values.copy()
    values[:, :3] = values[:, :3] @ r.T
    values[:, 3:] = values[:, 3:] @ r.T
    return replace(recording, values=values)


@pytest.fixture(scope="module")
def base():
    return load_checkpoint(BASE)


@pytest.fixture(scope="module")
def subject2():
    first, second = load_hapt((2,))[:2]
    return rotated(first, TURN), rotated(second, TURN)


def score(model, meta, spec, recording) -> float:
    import torch

    w = windows([recording], meta, spec, 64)
    with torch.no_grad():
        return float((model(torch.from_numpy(w.x)).argmax(1).numpy() == w.y).mean())


def test_rotation_in_the_preprocessing_is_the_rotation_of_the_input():
    x = np.random.default_rng(0).normal(size=(200, 6))
    r = smallest_rotation(np.array([0.0, -1.0, 0.0]), np.array([1.0, 0.0, 0.0]))
    assert np.allclose(r @ np.array([0.0, -1.0, 0.0]), [1.0, 0.0, 0.0])
    spec = PreprocessingSpec(rotation=tuple(map(tuple, r)))
    turned = np.concatenate([x[:, :3] @ r.T, x[:, 3:] @ r.T], axis=1)
    plain = build_preprocessor(PreprocessingSpec()).process(turned)
    assert np.allclose(build_preprocessor(spec).process(x), plain)
    assert "rotation" not in PreprocessingSpec().to_dict()  # older specs' digests stay as they were
    assert PreprocessingSpec.from_dict(spec.to_dict()) == spec


def test_a_wearer_worn_another_way_up_is_recognised_after_calibration(base, subject2, tmp_path):
    first, second = subject2
    before = score(base.model, base.meta, base.preprocessing, second)
    cal = calibrate(base, [first], name="wearer")
    assert cal.rotation is not None and cal.angle_deg > 80
    assert cal.meta["calibration"]["rotated"] and sum(cal.windows_per_class.values()) > 100
    out = tmp_path / "wearer.pt"
    save(cal, out)
    loaded = load_checkpoint(out)  # weights and metadata, checked as any checkpoint is
    assert loaded.preprocessing.rotation
    assert CheckpointMeta.from_json(out.with_suffix(".json")).name == "wearer"
    after = score(loaded.model, loaded.meta, loaded.preprocessing, second)
    assert before < 0.5 and after > 0.85, (before, after)


def test_calibration_takes_at_most_the_first_seconds_of_each_activity(subject2):
    first, _ = subject2
    mask = first_seconds([first], 6, 1000)[0]
    for c in range(6):
        assert mask[first.labels == c].sum() == min(1000, (first.labels == c).sum())
        assert not mask[first.labels == -1].any()


def test_a_bad_rotation_is_one_line(tmp_path):
    raw = json.loads(BASE.with_suffix(".json").read_text())
    raw["preprocessing"]["rotation"] = [[2, 0, 0], [0, 1, 0], [0, 0, 1]]
    with pytest.raises(CheckpointError, match=r"preprocessing\.rotation"):
        CheckpointMeta.from_dict(raw, tmp_path / "x.json")


def test_the_command_writes_a_calibrated_checkpoint(subject2, tmp_path, capsys):
    first, _ = subject2
    csv = tmp_path / "wearer.csv"
    write_csv_recording(csv, first)
    out = tmp_path / "w.pt"
    assert main(["calibrate", "--checkpoint", str(BASE), "--recording", str(csv), "--out", str(out)]) == 0
    assert "axes rotated" in capsys.readouterr().err
    assert load_checkpoint(out).meta["calibration"]["recordings"] == ["wearer"]


def test_bad_input_is_one_line(subject2, tmp_path, capsys):
    first, _ = subject2
    short = replace(first, labels=np.where(np.arange(len(first.labels)) % 100 < 50, first.labels, -1))
    write_csv_recording(tmp_path / "short.csv", short)
    (tmp_path / "typo.csv").write_text("timestamp,acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z,label\n"
                                       "0,1,0,0,0,0,0,WALKIN\n")  # fmt: skip
    (tmp_path / "not.pt").write_text("hello")
    (tmp_path / "not.json").write_text("{}")
    cases = [
        (["--recording", str(tmp_path / "short.csv")], "no labelled windows"),
        (["--recording", str(tmp_path / "typo.csv")], "unknown class 'WALKIN'"),
        (["--checkpoint", str(tmp_path / "not.pt"), "--recording", str(tmp_path / "short.csv")], "not.json"),
    ]
    for args, why in cases:
        assert main(["calibrate", *args, "--out", str(tmp_path / "o.pt")]) == 1
        err = capsys.readouterr().err
        assert why in err and err.count("\n") == 1, err


def test_the_live_path_runs_a_calibrated_wearer_on_its_own_model_and_the_others_on_the_base(
        base, subject2, tmp_path, capsys):  # fmt: skip
    first, second = subject2
    cal = calibrate(base, [first], name="turned")
    save(cal, tmp_path / "turned.pt")
    write_csv_recording(tmp_path / "turned.csv", second)  # worn another way up: gravity on -y
    write_csv_recording(tmp_path / "plain.csv", load_hapt((4,))[1])  # another wearer, as trained

    def replay(*args: str) -> dict[str, list[dict]]:
        argv = ["replay", *args, "--speed", "0", "--hop", "64", "--headless", "--jsonl", "--backend", "torch"]
        assert main(argv) == 0
        out: dict[str, list[dict]] = {}
        for line in capsys.readouterr().out.splitlines():
            row = json.loads(line)
            if "device" in row:
                out.setdefault(row["device"], []).append(row)
        return out

    both = replay(f"csv:{tmp_path / 'turned.csv'}", f"csv:{tmp_path / 'plain.csv'}",
                  "--calibration", f"turned={tmp_path / 'turned.pt'}")  # fmt: skip
    alone = replay(f"csv:{tmp_path / 'turned.csv'}", "--checkpoint", str(tmp_path / "turned.pt"))
    on_base = replay(f"csv:{tmp_path / 'plain.csv'}")
    for mixed, reference in ((both["turned"], alone["turned"]), (both["plain"], on_base["plain"])):
        assert [(p["t"], p["label"]) for p in mixed] == [(p["t"], p["label"]) for p in reference]
        for p, q in zip(mixed, reference, strict=True):
            assert p["probs"] == pytest.approx(q["probs"], abs=1e-5)
    judged = [p for p in both["turned"] if p["truth"] is not None]
    assert sum(p["label"] == p["truth"] for p in judged) / len(judged) > 0.85  # base: < 0.5 (above)

    folder = tmp_path / "wearers"
    folder.mkdir()
    (folder / "x.txt").write_text("")
    assert main(["replay", "csv:" + str(tmp_path / "plain.csv"), "--calibration", str(folder),
                 "--headless"]) == 1  # fmt: skip
    assert "no calibrated checkpoints" in capsys.readouterr().err
    plain = "csv:" + str(tmp_path / "plain.csv")
    assert main(["replay", plain, "--calibration", "turned", "--headless"]) == 1
    assert "DEVICE=wearer.pt" in capsys.readouterr().err


@pytest.mark.parametrize("readout", ["last", "mean"])
@pytest.mark.parametrize("adapt", ["classifier", "bias", "norm"])
def test_the_adapted_head_on_its_cached_features_is_the_whole_network(readout, adapt):
    import torch

    from model.config import NetworkConfig
    from model.net.network import ResidualBiLSTM
    from model.train.calibration import _features, _head

    torch.manual_seed(0)
    model = ResidualBiLSTM(NetworkConfig(n_hidden=8, readout=readout)).eval()
    x = np.random.default_rng(0).normal(size=(4, 32, 9)).astype(np.float32)
    head, _ = _head(model, adapt)
    with torch.no_grad():
        assert torch.allclose(head(_features(model, x, adapt)), model(torch.from_numpy(x)), atol=1e-5)


def test_lost_readings_calibrate_a_finite_model_that_still_recognises_the_wearer(base, subject2, tmp_path,
                                                                                 capsys):  # fmt: skip
    first, second = subject2
    values = first.values.copy()
    for c in range(len(first.classes)):  # within the seconds calibration takes: a short loss, a long one
        rows = np.flatnonzero(first.labels == c)
        values[rows[[100, 101]], 0] = np.nan
        values[rows[300:330], 4] = np.nan
    csv = tmp_path / "wearer.csv"
    write_csv_recording(csv, replace(first, values=values))  # `harstream record` writes nan as nan
    assert "nan," in csv.read_text()
    out = tmp_path / "w.pt"
    assert main(["calibrate", "--checkpoint", str(BASE), "--recording", str(csv), "--out", str(out)]) == 0
    capsys.readouterr()
    loaded = load_checkpoint(out)  # checks every weight is finite, as every live command does
    assert score(loaded.model, loaded.meta, loaded.preprocessing, second) > 0.85


# 1e308: beyond any unit; 100 g: below the 1e6 any unit allows, but beyond a wearable's range in g (64),
# which calibrate knows from the model's units
@pytest.mark.parametrize(("column", "value", "said"), [
    (2, 1e308, "acc_z 1e+308 is beyond any wearable's range"),
    (0, 100.0, "acc_x 100.0 is beyond any wearable's range (|value| above 64 g)"),
])  # fmt: skip
def test_an_absurd_value_refuses_calibration_naming_the_file_and_line(subject2, tmp_path, capsys, column,
                                                                      value, said):  # fmt: skip
    first, _ = subject2
    values = first.values.copy()
    values[57, column] = value
    csv = tmp_path / "wearer.csv"
    write_csv_recording(csv, replace(first, values=values))
    out = tmp_path / "w.pt"
    assert main(["calibrate", "--checkpoint", str(BASE), "--recording", str(csv), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{csv}:59: {said}" in err and err.count("\n") == 1, err
    assert not out.exists()


def test_a_calibration_with_a_nan_loss_or_weights_is_refused_and_not_saved(base, subject2, tmp_path):
    import torch

    from model.train.calibration import CalibrationError, adapt_model

    w = windows([subject2[0]], base.meta, base.preprocessing, 64)
    x = w.x.copy()
    x[0, 5, 0] = np.nan  # however it got there
    with pytest.raises(CalibrationError, match=r"calibration step 1: the loss is nan; nothing saved"):
        adapt_model(base.model, x, w.y)
    cal = calibrate(base, [subject2[0]], name="wearer")
    with torch.no_grad():
        cal.model.classifier.bias[0] = float("nan")
    with pytest.raises(CheckpointError, match=r"w\.pt not saved: tensor classifier\.bias holds NaN"):
        save(cal, tmp_path / "w.pt")
    assert not (tmp_path / "w.pt").exists() and not (tmp_path / "w.json").exists()
