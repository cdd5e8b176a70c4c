"""OPPORTUNITY support, on generated runs in the dataset's exact file format.

The real dataset cannot be downloaded on the project's machines, so a generator writes runs the
way ``OpportunityUCIDataset/dataset/*.dat`` holds them: 250 whitespace-separated columns at 30 Hz,
integer readings, ``NaN`` where a sensor dropped out, time in ms, label codes in 243-249.
"""

from __future__ import annotations

import itertools
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

import train
from model.data import opportunity as opp
from model.data.datasets import recording_windows
from model.data.preprocessing import build_preprocessor
from model.data.signals import PreprocessingSpec
from model.train.experiment import build_splits, load_config, override
from model.train.metrics import summarise
from model.train.training import fit
from streamer.cli import main as cli
from streamer.live import DEFAULT_CHECKPOINT

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "opportunity_18.toml"
RUNS = [f"S{s}-{r}" for s in (1, 2, 3) for r in ("Drill", "ADL1", "ADL2", "ADL3", "ADL4", "ADL5")]
RUNS.append("S4-ADL1")  # outside the challenge split: must not be used
N_ROWS = 1500
LEADING_GAP = (1, 40)  # column 1 (kept, c001) is NaN for the first 40 rows of every run
MIDDLE_GAP = (50, 300, 360)  # column 50 (kept, c050) drops out for rows 300-359


def make_rows(rng: np.random.Generator, k: int) -> np.ndarray:
    """One run's (N_ROWS, 250) table: readings, dropouts and label segments through every code."""
    rows = rng.integers(-2000, 2000, size=(N_ROWS, opp.N_COLUMNS)).astype(np.float64)
    rows[rng.random(rows.shape) < 0.02] = np.nan  # scattered dropouts
    rows[: LEADING_GAP[1], LEADING_GAP[0]] = np.nan
    rows[LEADING_GAP[1], LEADING_GAP[0]] = 7.0  # the channel's first reading
    column, first, end = MIDDLE_GAP
    rows[first:end, column] = np.nan
    rows[:, 0] = np.round(np.arange(N_ROWS) * 1000 / opp.RATE_HZ)
    gestures, modes = np.array(list(opp.GESTURES)), np.array(list(opp.LOCOMOTION))
    segment = np.arange(N_ROWS) // 40 + k  # 40-row segments, shifted per run: every code per run
    rows[:, opp.LOCOMOTION_COLUMN] = modes[segment % len(modes)]
    rows[:, 244:249] = rng.integers(0, 5, size=(N_ROWS, 5))  # the label tracks the challenge drops
    rows[:, opp.GESTURE_COLUMN] = np.where(segment % 2, gestures[(segment // 2) % len(gestures)], 0)
    return rows


def dat_text(rows: np.ndarray) -> str:
    tokens = np.where(np.isnan(rows), "NaN", np.nan_to_num(rows).astype(np.int64).astype(str))
    return "\n".join(" ".join(line) for line in tokens.tolist()) + "\n"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """The generated runs as the extracted folder and as OpportunityUCIDataset.zip."""
    root = tmp_path_factory.mktemp("opportunity")
    folder = root / "OpportunityUCIDataset" / "dataset"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    truth = {}
    with zipfile.ZipFile(root / "OpportunityUCIDataset.zip", "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        for k, run in enumerate(RUNS):
            truth[run] = make_rows(rng, k)
            text = dat_text(truth[run])
            (folder / f"{run}.dat").write_text(text)
            z.writestr(f"OpportunityUCIDataset/dataset/{run}.dat", text)
    return root, root / "OpportunityUCIDataset.zip", truth


def test_the_challenge_keeps_113_sensor_columns():
    expected = [*range(1, 46), *range(50, 59), *range(63, 72), *range(76, 85), *range(89, 98)]
    expected += range(102, 134)
    assert list(opp.SENSOR_COLUMNS) == expected and len(expected) == 113
    assert opp.CHANNELS[:2] == ("c001", "c002") and opp.CHANNELS[45] == "c050"


def test_a_dat_file_becomes_a_recording_with_nan_kept(dataset):
    root, _, truth = dataset
    r = opp.load_opportunity_run(root / "OpportunityUCIDataset/dataset/S2-ADL4.dat")
    rows = truth["S2-ADL4"]
    assert (r.name, r.subject, r.rate_hz, r.channels) == ("S2-ADL4", "S2", 30.0, opp.CHANNELS)
    np.testing.assert_array_equal(r.values, rows[:, list(opp.SENSOR_COLUMNS)])  # NaN == NaN here
    np.testing.assert_allclose(r.timestamps, rows[:, 0] / 1000)
    assert r.values.shape == (N_ROWS, 113) and r.values.dtype == np.float64
    assert np.isnan(r.values[: LEADING_GAP[1], 0]).all()


def test_the_zip_reads_like_the_folder_and_finds_the_runs(dataset):
    root, zip_path, _ = dataset
    assert sorted(opp.find_runs(zip_path)) == sorted(RUNS) == sorted(opp.find_runs(root))
    from_zip = opp.load_opportunity(zip_path, runs=("S3-ADL5",))[0]
    from_folder = opp.load_opportunity_run(root, "S3-ADL5")
    np.testing.assert_array_equal(from_zip.values, from_folder.values)
    np.testing.assert_array_equal(from_zip.labels, from_folder.labels)


def test_gesture_and_locomotion_codes_map_to_the_design_order(dataset):
    root, _, truth = dataset
    names = opp.classes("gestures")
    assert len(names) == 18 and names[:3] == ("Null", "Open Door 1", "Open Door 2")
    assert names[-1] == "Toggle Switch"
    assert opp.classes("locomotion") == ("Null", "Stand", "Walk", "Sit", "Lie")
    codes = list(opp.GESTURES)
    gestures = opp.load_opportunity_run(root, "S1-Drill", labels="gestures")
    expected = [codes.index(c) for c in truth["S1-Drill"][:, opp.GESTURE_COLUMN]]
    assert gestures.labels.tolist() == expected and set(expected) == set(range(18))
    modes = opp.load_opportunity_run(root, "S1-Drill", labels="locomotion")
    lookup = {0: 0, 1: 1, 2: 2, 4: 3, 5: 4}
    assert modes.labels.tolist() == [lookup[c] for c in truth["S1-Drill"][:, opp.LOCOMOTION_COLUMN]]
    assert modes.classes[modes.labels[0]] == opp.LOCOMOTION[truth["S1-Drill"][0, opp.LOCOMOTION_COLUMN]]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t[:-1], r"S1-ADL1\.dat:3: expected 250 columns, found 249"),
        (lambda t: [*t, "7"], r"S1-ADL1\.dat:3: expected 250 columns, found 251"),
        (lambda t: [t[0], "abc", *t[2:]], r"S1-ADL1\.dat:3: not a number: 'abc'"),
        (lambda t: [*t[:-1], "123"], r"S1-ADL1\.dat:3: unknown gestures label 123"),
    ],
)
def test_a_bad_row_is_an_error_naming_the_file_and_line(tmp_path, edit, message):
    lines = ["0 " + " ".join(["1"] * 248) + " 0"] * 4  # Locomotion 1 (Stand), gesture 0 (Null)
    lines[2] = " ".join(edit(lines[2].split()))
    path = tmp_path / "S1-ADL1.dat"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=message):
        opp.load_opportunity_run(path)


def test_missing_data_is_a_one_line_error_naming_the_command(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="--data-zip"):
        opp.load_opportunity(tmp_path / "nowhere.zip")
    with pytest.raises(FileNotFoundError, match="no OPPORTUNITY runs"):
        opp.load_opportunity(tmp_path)
    assert train.main(["--config", str(CONFIG), "--data-zip", str(tmp_path / "nowhere.zip")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "python train.py --config configs/opportunity_18.toml" in err


def test_gaps_carry_the_last_value_forward_and_zero_before_the_first(dataset):
    root, _, truth = dataset
    recording = opp.load_opportunity_run(root, "S2-ADL1")
    features = build_preprocessor(load_config(CONFIG).preprocessing).process(recording.values)
    assert not np.isnan(features).any()
    assert (features[: LEADING_GAP[1], 0] == 0).all()
    np.testing.assert_array_equal(features[LEADING_GAP[1] :, 0][:1], truth["S2-ADL1"][LEADING_GAP[1], 1:2])
    column, first, end = MIDDLE_GAP
    i = opp.SENSOR_COLUMNS.index(column)
    before = recording.values[:first, i][~np.isnan(recording.values[:first, i])][-1]
    assert (features[first:end, i] == before).all()


def test_the_preprocessor_in_chunks_equals_it_whole_and_reset_forgets(dataset):
    root, _, _ = dataset
    x = opp.load_opportunity_run(root, "S3-ADL2").values
    pre = build_preprocessor(PreprocessingSpec(kind="opportunity", rate_hz=30.0, inputs=opp.CHANNELS))
    whole = pre.process(x)
    pre.reset()
    cuts = [0, 1, 2, 17, 39, 40, 41, 333, 1024, len(x)]
    parts = np.concatenate([pre.process(x[a:b]) for a, b in itertools.pairwise(cuts)])
    assert np.array_equal(whole, parts)
    pre.reset()
    assert (pre.process(x[:1])[0, 0] == 0) and np.isnan(x[0, 0])


def test_the_challenge_split_windows_and_last_sample_labels(dataset):
    root, _, _ = dataset
    config = override(load_config(CONFIG), [f'data.path="{root}"'])
    splits = build_splits(config)
    runs = [set(s.recordings) for s in (splits.train, splits.val, splits.test)]
    assert runs[1] == {"S1-ADL2"} and runs[2] == {"S2-ADL4", "S2-ADL5", "S3-ADL4", "S3-ADL5"}
    assert len(runs[0]) == 13 and not (runs[0] & runs[1] or runs[0] & runs[2] or runs[1] & runs[2])
    assert "S4" not in {r.split("-")[0] for r in set.union(*runs)}
    per_run = (N_ROWS - 24) // 12 + 1  # every sample has a class (Null too): no window is dropped
    assert splits.test.x.shape == (4 * per_run, 24, 113) and splits.test.x.dtype == np.float32
    recording = opp.load_opportunity_run(root, "S2-ADL4")
    windows = recording_windows([recording], config.data, config.preprocessing)
    assert (windows.ends % 12 == 11).all() and (windows.y == recording.labels[windows.ends]).all()
    mine = splits.test.subset(splits.test.recordings == "S2-ADL4")
    np.testing.assert_array_equal(mine.x, windows.x)


def test_a_run_in_two_splits_is_refused(dataset):
    root, _, _ = dataset
    config = override(load_config(CONFIG), [f'data.path="{root}"', 'data.val_runs=["S2-ADL4"]'])
    with pytest.raises(ValueError, match="S2-ADL4 are in both val and test"):
        build_splits(config)


def test_fit_normalises_with_training_statistics_to_std_one_half(dataset):
    root, _, _ = dataset
    config = override(load_config(CONFIG), [
        "model.n_hidden=8", "model.n_stacked=1", "model.n_residual=1", "train.epochs=1", "train.threads=1",
    ])  # fmt: skip
    recordings = [opp.load_opportunity_run(root, r) for r in ("S1-ADL1", "S1-ADL2")]
    windows = recording_windows(recordings, config.data, config.preprocessing)
    train_part = windows.subset(windows.recordings == "S1-ADL1")
    val = windows.subset(windows.recordings == "S1-ADL2")
    model = fit(config, train_part, val, opp.classes("gestures"), opp.CHANNELS).model
    flat = train_part.x.reshape(-1, 113).astype(np.float64)
    np.testing.assert_allclose(model.feature_mean.numpy(), flat.mean(0), rtol=1e-5)
    scaled = (flat - model.feature_mean.numpy()) / model.feature_std.numpy()
    np.testing.assert_allclose(scaled.std(0, ddof=1), 0.5, rtol=1e-4)


def test_f1_without_null_only_when_asked():
    y_true, y_pred = np.array([0, 0, 0, 1, 2, 2]), np.array([0, 0, 1, 1, 0, 2])
    plain = summarise(y_true, y_pred, ("Null", "a", "b"))
    assert "f1_weighted_no_null" not in plain
    scored = summarise(y_true, y_pred, ("Null", "a", "b"), null_class=0)
    assert all(scored[k] == plain[k] for k in plain if k != "per_class")
    # a: precision 1/2, recall 1 -> 2/3; b: precision 1, recall 1/2 -> 2/3 (supports 1 and 2)
    assert scored["f1_weighted_no_null"] == pytest.approx(2 / 3)
    assert scored["f1_macro_no_null"] == pytest.approx(2 / 3)


def test_the_configs_read_the_challenge_channels():
    for name, n_classes in (("opportunity_18", 18), ("opportunity_locomotion", 5)):
        config = load_config(ROOT / "configs" / f"{name}.toml")
        assert config.preprocessing.inputs == opp.CHANNELS and config.preprocessing.kind == "opportunity"
        assert len(opp.classes(config.data.labels)) == config.model.n_classes == n_classes
        assert (config.data.window, config.data.step, config.data.label_rule) == (24, 12, "last")
        assert config.train.feature_std == 0.5


def test_train_then_evaluate_end_to_end(dataset, tmp_path, capsys):
    root, zip_path, _ = dataset
    out = tmp_path / "opp.pt"
    code = train.main([
        "--config", str(CONFIG), "--data-zip", str(zip_path), "--epochs", "1", "--out", str(out),
        "--set", "model.n_hidden=8", "--set", "model.n_stacked=1", "--set", "model.n_residual=1",
        "--set", "train.threads=1",  # one thread: on a busy machine, waiting threads cost far more
    ])  # fmt: skip
    assert code == 0 and out.exists()
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["classes"][0] == "Null" and "f1_weighted_no_null" in meta["metrics"]["test"]
    capsys.readouterr()
    assert cli.main(["evaluate", "--checkpoint", str(out), "--data-dir", str(root), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["data_fingerprint_matches"] and scores["n_windows"] == meta["metrics"]["test"]["n_windows"]
    assert scores["f1_weighted"] == pytest.approx(meta["metrics"]["test"]["f1_weighted"])
    assert 0 <= scores["f1_weighted_no_null"] <= 1
    # ...and the same checkpoint replays a generated test run as a live stream.
    capsys.readouterr()
    run = root / "OpportunityUCIDataset" / "dataset" / "S2-ADL4.dat"
    assert cli.main(["replay", f"opportunity:{run}", "--checkpoint", str(out), "--speed", "0",
                     "--hop", "12", "--headless", "--jsonl"]) == 0  # fmt: skip
    *predictions, last = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert predictions and {p["device"] for p in predictions} == {"S2-ADL4"}
    assert set(predictions[0]["probs"]) == set(meta["classes"]) and len(meta["classes"]) == 18
    assert last["summary"]["dropped"] == 0  # NaN stretches are filled, not dropped
    n_rows = len(dataset[2]["S2-ADL4"])
    assert last["summary"]["windows"] == len(predictions) == (n_rows - 24) // 12 + 1
    assert any(p["truth"] == "Null" for p in predictions)


def test_the_dashboard_fits_18_gestures_with_null_set_apart():
    from rich.console import Console

    from model.data.opportunity import classes
    from streamer.core.types import Prediction
    from streamer.ui.dashboard import NULL_STYLE, Dashboard

    gestures = classes("gestures")
    dashboard = Dashboard(pipeline=None, classes=gestures, title="opportunity")  # type: ignore[arg-type]
    probs = dict.fromkeys(gestures, 0.01) | {"Null": 0.5, "Open Door 1": 0.33}
    prediction = Prediction("S2-ADL4", 1.0, "Null", 0.5, probs, "Open Door 1", 3.0)
    console = Console(record=True, width=80)
    console.print(dashboard.bars(prediction, 24))
    text = console.export_text()
    assert len(text.splitlines()) == 5  # the top five classes, not all 18
    assert text.splitlines()[0].startswith("Null") and "Open Door 1" in text.splitlines()[1]
    assert dashboard.style("Null") == NULL_STYLE != dashboard.style("Open Door 1")


def test_replay_without_an_opportunity_model_names_the_training_command(dataset, tiny_checkpoint, capsys):
    run = dataset[0] / "OpportunityUCIDataset" / "dataset" / "S2-ADL4.dat"
    assert not (Path(DEFAULT_CHECKPOINT).with_name("opportunity_18.pt")).exists()
    assert cli.main(["replay", f"opportunity:{run}", "--headless"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "python train.py --config configs/opportunity_18.toml" in err
    # a checkpoint trained on other data is refused the same way
    assert cli.main(["replay", f"opportunity:{run}", "--checkpoint", str(tiny_checkpoint), "--headless"]) == 1
    assert "configs/opportunity_18.toml" in capsys.readouterr().err
