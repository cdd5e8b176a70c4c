from pathlib import Path

import numpy as np
import pytest

from model.config import DataConfig, ExperimentConfig
from model.data.datasets import recording_windows, window_labels
from model.data.recordings import Recording, read_csv_folder, write_csv_recording
from model.data.signals import HAPT_ACTIVITIES, PreprocessingSpec
from model.train.experiment import build_splits, load_config, override

ROOT = Path(__file__).resolve().parent.parent


def test_hapt_has_61_recordings_of_30_subjects_and_1122772_samples(hapt):
    assert len(hapt) == 61
    assert {r.subject for r in hapt} == {str(s) for s in range(1, 31)}
    assert sum(len(r.timestamps) for r in hapt) == 1_122_772
    assert all(r.rate_hz == 50.0 and r.values.shape[1] == 6 for r in hapt)


def test_hapt_labels_are_the_six_uci_har_classes_or_none(hapt):
    labels = np.concatenate([r.labels for r in hapt])
    assert set(np.unique(labels)) == {-1, 0, 1, 2, 3, 4, 5}
    still = np.concatenate([r.values[r.labels == 5, :3] for r in hapt])  # LAYING
    assert 0.9 < np.median(np.linalg.norm(still, axis=1)) < 1.1  # gravity, in g


@pytest.fixture(scope="module")
def splits():
    return build_splits(load_config(ROOT / "configs/uci_har_3x3.toml"))


def test_splits_share_no_subject_and_test_is_uci_hars(splits):
    train, val, test = (set(s.subjects) for s in (splits.train, splits.val, splits.test))
    assert not (train & val or train & test or val & test)
    assert test == {"2", "4", "9", "10", "12", "13", "18", "20", "24"}
    assert len(train | val) == 21


def test_cross_validation_folds_cover_every_training_subject_once():
    from model.data.datasets import cross_validation_fold

    data = DataConfig(test_subjects=("2", "4"), val_subjects=("1",))
    subjects = [str(s) for s in range(1, 12)]
    folds = [cross_validation_fold(subjects, data, k, 3).val_subjects for k in (1, 2, 3)]
    assert folds[0] == ("1", "6", "9")  # numeric order (1 3 5 6 7 8 9 10 11), not "1" "10" "11" "3"
    held_out = [s for fold in folds for s in fold]
    assert sorted(held_out, key=int) == [s for s in subjects if s not in {"2", "4"}]  # each once, no test
    with pytest.raises(ValueError, match="between 1 and 3"):
        cross_validation_fold(subjects, data, 4, 3)


def test_window_counts_are_close_to_the_original_uci_har(splits):
    # The original has 7352 train and 2947 test windows cut the same way from the same sessions.
    assert 0.9 * 7352 < len(splits.train) + len(splits.val) < 1.05 * 7352
    assert 0.9 * 2947 < len(splits.test) < 1.05 * 2947
    assert splits.train.x.shape[1:] == (128, 9) and splits.train.x.dtype == np.float32
    assert set(np.unique(splits.test.y)) == set(range(6))


def test_window_label_rules():
    labels = np.array([0, 0, 0, 1, 1, 1, -1, 2])
    starts = np.array([0, 2, 3, 5])
    assert window_labels(labels, starts, 3, "all").tolist() == [0, -1, 1, -1]
    assert window_labels(labels, starts, 3, "last").tolist() == [0, 1, 1, 2]


def write_uci_har_folder(root: Path, rng: np.random.Generator) -> dict:
    names = ["body_acc", "body_gyro", "total_acc"]
    truth = {}
    for split, subjects in (("train", [1, 1, 3, 5, 5]), ("test", [2, 2, 4])):
        n = len(subjects)
        signals = root / split / "Inertial Signals"
        signals.mkdir(parents=True)
        x = rng.normal(size=(n, 128, 9))
        for k, (name, axis) in enumerate((n_, a) for n_ in names for a in "xyz"):
            np.savetxt(signals / f"{name}_{axis}_{split}.txt", x[:, :, k])
        y = rng.integers(1, 7, size=n)
        np.savetxt(root / split / f"y_{split}.txt", y, fmt="%d")
        np.savetxt(root / split / f"subject_{split}.txt", subjects, fmt="%d")
        truth[split] = (x, y, subjects)
    return truth


def test_the_original_uci_har_folder_layout_is_read(tmp_path):
    truth = write_uci_har_folder(tmp_path / "UCI HAR Dataset", np.random.default_rng(0))
    folder = tmp_path / "UCI HAR Dataset"
    splits = build_splits(override(ExperimentConfig(), [  # "uci-har", as a SOURCE spells it, is one too
        'data.dataset="uci-har"', f'data.path="{folder}"', 'data.val_subjects=["3"]']))
    x, y, _ = truth["test"]
    np.testing.assert_allclose(splits.test.x, x, rtol=1e-6)
    np.testing.assert_array_equal(splits.test.y, y - 1)
    assert list(splits.val.subjects) == ["3"] and len(splits.train) == 4


def make_recording(subject: str, labels: list[int], rng: np.random.Generator) -> Recording:
    n = len(labels)
    return Recording(f"rec-{subject}", subject, np.arange(n) / 50.0, rng.normal(size=(n, 6)),
                     np.asarray(labels), ("acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z"),
                     HAPT_ACTIVITIES, 50.0)  # fmt: skip


def test_generic_csv_recordings_round_trip_and_split(tmp_path):
    rng = np.random.default_rng(0)
    originals = [make_recording(s, [k % 6] * 300 + [-1] * 20, rng) for k, s in enumerate("abcd")]
    for r in originals:
        write_csv_recording(tmp_path / f"{r.name}.csv", r)
    channels = originals[0].channels
    back = read_csv_folder(tmp_path, channels, HAPT_ACTIVITIES, 50.0)
    for a, b in zip(originals, back, strict=True):
        np.testing.assert_array_equal(a.values, b.values)
        np.testing.assert_array_equal(a.labels, b.labels)
        assert a.subject == b.subject

    config = override(ExperimentConfig(), [
        'data.dataset="csv"', f'data.path="{tmp_path}"', f"data.channels={list(channels)}",
        f"data.classes={list(HAPT_ACTIVITIES)}", 'data.test_subjects=["d"]', 'data.val_subjects=["c"]',
    ])  # fmt: skip
    splits = build_splits(config)
    assert set(splits.test.subjects) == {"d"} and set(splits.val.subjects) == {"c"}
    assert set(splits.train.subjects) == {"a", "b"}
    # 300 labelled samples hold windows starting at 0, 64, 128 (ending at 127, 191, 255).
    assert len(splits.train) == 6 and splits.train.x.shape[1:] == (128, 9)


def test_unknown_class_in_a_csv_is_an_error_naming_the_line(tmp_path):
    (tmp_path / "r.csv").write_text("timestamp,acc_x,label\n0.0,1.0,WALKING\n0.02,1.0,FLYING\n")
    with pytest.raises(ValueError, match=r"r.csv:3: unknown class 'FLYING'"):
        read_csv_folder(tmp_path, ("acc_x",), HAPT_ACTIVITIES, 50.0)


def test_windows_end_where_the_recording_says(hapt):
    data = DataConfig(window=128, step=64)
    windows = recording_windows(hapt[:1], data, PreprocessingSpec())
    assert (windows.ends % 64 == 63).all()
    assert (hapt[0].labels[windows.ends] == windows.y).all()


def test_the_data_fingerprint_names_the_inputs_and_the_windows_not_their_computed_bits(hapt):
    """Filters round differently on other CPUs (AVX-512 against AVX2): a fingerprint over the
    computed windows' bits told a fresh clone on such a machine that its data was not the data."""
    from model.data.datasets import data_fingerprint, inputs_digest, split_by_subject

    config = ExperimentConfig(data=DataConfig(test_subjects=("2",), val_subjects=("3",)))
    recordings = [r for r in hapt if r.subject in {"1", "2", "3"}]
    windows = recording_windows(recordings, config.data, config.preprocessing)
    inputs = inputs_digest(config, (r.values for r in recordings))
    reference = split_by_subject(windows, config.data, inputs).fingerprint
    windows.x = np.nextafter(windows.x, np.float32(np.inf))  # every computed value one ulp off
    assert split_by_subject(windows, config.data, inputs).fingerprint == reference
    windows.y = windows.y.copy()
    windows.y[0] = (windows.y[0] + 1) % 6  # one label
    assert split_by_subject(windows, config.data, inputs).fingerprint != reference
    changed = [recordings[0].values + 1e-9, *(r.values for r in recordings[1:])]  # the raw data
    assert inputs_digest(config, changed) != inputs
    assert data_fingerprint(inputs_digest(config, changed)) != data_fingerprint(inputs)


def test_every_source_spec_is_read_by_its_datasets_module(tmp_path, hapt):
    from model.data.kinds import KINDS, Inputs, dataset_kind
    from model.data.signals import HAPT_CHANNELS
    from replay.sources import parse_source

    assert {k.name for k in KINDS} == {"hapt", "uci_har", "csv", "opportunity"}
    assert dataset_kind("uci-har") is dataset_kind("uci_har")  # the SOURCE's spelling and the config's
    inputs = Inputs(HAPT_CHANNELS, HAPT_ACTIVITIES, 50.0)
    assert [d.name for d in parse_source("hapt:2,4", inputs)] == ["hapt-s02", "hapt-s04"]
    write_csv_recording(tmp_path / "wrist.csv", hapt[0])
    for spec in (f"csv:{tmp_path}", str(tmp_path / "wrist.csv")):  # a folder, or a bare .csv path
        (device,) = parse_source(spec, inputs)
        assert device.name == "wrist" and np.array_equal(device.recordings[0].values, hapt[0].values)
    folder = tmp_path / "UCI HAR Dataset"
    write_uci_har_folder(folder, np.random.default_rng(0))
    for spec in (f"uci-har:{folder}:3,5", f"uci_har:{folder}:3,5"):
        assert [d.name for d in parse_source(spec, inputs)] == ["uci-har-s03", "uci-har-s05"]
    with pytest.raises(ValueError, match="unknown source 'hpat:2': use hapt:N, csv:PATH, uci-har:PATH or "
                                         "opportunity:PATH"):  # fmt: skip
        parse_source("hpat:2", inputs)
    with pytest.raises(ValueError, match="bad source 'hapt:x'"):
        parse_source("hapt:x", inputs)
    with pytest.raises(ValueError, match="not trained on OPPORTUNITY"):
        parse_source("opportunity:S2-ADL4.dat", inputs)


def test_each_dataset_declares_its_classes_null_class_and_preprocessing():
    from model.data import opportunity
    from model.train.experiment import class_names, kind_of, null_class

    hapt = ExperimentConfig()
    opp = override(hapt, ['data.dataset="opportunity"', 'preprocessing.kind="opportunity"',
                          'data.labels="locomotion"'])  # fmt: skip
    assert (class_names(hapt), null_class(hapt)) == (HAPT_ACTIVITIES, None)
    assert (class_names(opp), null_class(opp)) == (opportunity.classes("locomotion"), 0)
    assert kind_of(opp).preprocessing == "opportunity" and kind_of(hapt).preprocessing == "uci_har"


def test_the_dataset_registry_and_the_live_configs_need_neither_torch_nor_pandas(tmp_path, hapt):
    """The live path reads SOURCE specs and checkpoint metadata on a gateway without either."""
    import subprocess
    import sys

    write_csv_recording(tmp_path / "wrist.csv", hapt[0])
    code = f"""
import sys

class Absent:  # as on a gateway: importing torch or pandas fails
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("torch", "pandas"):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)

sys.meta_path.insert(0, Absent())
from model.net.checkpoint_meta import read_meta
from model.train.experiment import load_config
from model.data.recordings import HAPT_ACTIVITIES, HAPT_CHANNELS
from replay.sources import Inputs, parse_source
assert load_config("configs/opportunity_18.toml").model.n_classes == 18
meta = read_meta("model/weights/uci_har_3x3.pt")
inputs = Inputs(meta.input_channels, meta.classes, meta.rate_hz)
(device,) = parse_source("csv:{tmp_path / 'wrist.csv'}", inputs)
print(device.name, meta["config"]["data"]["window"], "torch" in sys.modules or "pandas" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["wrist", "128", "False"]
