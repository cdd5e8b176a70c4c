import numpy as np

from model.config import ExperimentConfig
from model.data.datasets import WindowSet
from model.data.signals import HAPT_ACTIVITIES
from model.train.experiment import override
from model.train.training import evaluate, fit, random_rotations, xyz_groups


def subset(splits_windows: WindowSet, per_class: int, seed: int) -> WindowSet:
    rng = np.random.default_rng(seed)
    index = np.concatenate([rng.choice(np.flatnonzero(splits_windows.y == c), per_class, replace=False)
                            for c in range(6)])  # fmt: skip
    return splits_windows.subset(index)


def test_a_seconds_long_run_on_a_small_subset_learns(hapt):
    from model.data.datasets import recording_windows, split_by_subject

    config = override(ExperimentConfig(), [
        "model.n_stacked=1", "model.n_residual=1", "model.n_hidden=16", "train.epochs=6",
        "train.batch_size=32", "train.lr=0.005", 'train.optimizer="adamw"', "train.l2=0.0",
        'data.test_subjects=["2"]', 'data.val_subjects=["3"]', "data.window=64", "data.step=64",
    ])  # fmt: skip
    windows = recording_windows([r for r in hapt if r.subject in {"1", "3", "5"}], config.data,
                                config.preprocessing)  # fmt: skip
    splits = split_by_subject(windows, config.data)
    train, val = subset(splits.train, 40, 0), subset(splits.val, 15, 1)
    result = fit(config, train, val, HAPT_ACTIVITIES, config.preprocessing.features)
    losses = [r.loss for r in result.history]
    assert losses[-1] < 0.7 * losses[0]
    assert evaluate(result.model, val, HAPT_ACTIVITIES)["accuracy"] > 0.5  # chance is 1/6
    assert 1 <= result.best_epoch <= 6


def test_keep_last_takes_the_final_epoch_and_best_needs_validation(hapt):
    import pytest

    from model.data.datasets import recording_windows

    config = override(ExperimentConfig(), [
        "model.n_stacked=1", "model.n_residual=1", "model.n_hidden=8", "train.epochs=3",
        "train.batch_size=32", 'train.keep="last"', "data.window=64", "data.step=64",
    ])  # fmt: skip
    windows = subset(recording_windows([r for r in hapt if r.subject == "1"], config.data,
                                       config.preprocessing), 5, 0)  # fmt: skip
    empty = windows.subset(np.zeros(len(windows), bool))
    result = fit(config, windows, empty, HAPT_ACTIVITIES, config.preprocessing.features)
    assert result.best_epoch == 3  # no validation to score: the schedule's end is kept
    with pytest.raises(ValueError, match="no validation windows"):
        fit(override(config, ['train.keep="best"']), windows, empty, HAPT_ACTIVITIES,
            config.preprocessing.features)  # fmt: skip


def test_fit_refuses_windows_unlike_the_configs_network(hapt):
    import pytest

    from model.data.datasets import recording_windows

    config = override(ExperimentConfig(), ["model.n_hidden=8", "train.epochs=1", 'train.keep="last"'])
    windows = recording_windows([r for r in hapt if r.subject == "1"], config.data, config.preprocessing)
    with pytest.raises(ValueError, match="windows of 9 features and 5 classes, but the config's network "
                                         "reads 9 and tells 6"):  # fmt: skip
        fit(config, windows, windows.subset(np.zeros(len(windows), bool)), HAPT_ACTIVITIES[:5],
            config.preprocessing.features)  # fmt: skip


def test_rotations_are_proper_and_bounded():
    import torch

    r = random_rotations(100, 15.0, torch.Generator().manual_seed(0))
    torch.testing.assert_close(r @ r.transpose(1, 2), torch.eye(3).expand(100, 3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(100), atol=1e-5, rtol=0)
    cos_angle = (r.diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2
    assert (cos_angle >= np.cos(np.radians(15.0)) - 1e-5).all()


def test_xyz_groups_find_the_vector_channels():
    from model.data.signals import UCI_HAR_FEATURES

    assert xyz_groups(UCI_HAR_FEATURES) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert xyz_groups(("a", "b_x", "b_y")) == []


def tiny_csv_run(csv_dataset, *extra: str) -> list[str]:
    """train.py arguments for a seconds-long 1x1 run on the CSV copy of four HAPT subjects."""
    from model.data.signals import HAPT_CHANNELS

    return [
        "--config", "configs/uci_har_3x3.toml", "--epochs", "2", "--data-dir", str(csv_dataset),
        "--set", 'data.dataset="csv"', "--set", f"data.channels={list(HAPT_CHANNELS)}",
        "--set", f"data.classes={list(HAPT_ACTIVITIES)}", "--set", 'data.test_subjects=["2"]',
        "--set", 'data.val_subjects=["3"]', "--set", "model.n_hidden=8", "--set", "model.n_stacked=1",
        "--set", "model.n_residual=1", "--set", "train.threads=1", *extra,
    ]  # fmt: skip


def tiny_ensemble(csv_dataset) -> list[str]:
    """model.train.ensemble's arguments for the windows of tiny_csv_run."""
    sets = tiny_csv_run(csv_dataset)[6:]  # from the first --set on
    return ["--config", "configs/uci_har_3x3.toml", "--set", f'data.path="{csv_dataset}"', *sets]


def test_a_fold_run_validates_on_its_fold_and_never_scores_test(csv_dataset, tmp_path, capsys):
    import json

    import train

    out = tmp_path / "fold.pt"
    assert train.main(tiny_csv_run(csv_dataset, "--fold", "2/3", "--out", str(out))) == 0
    log = capsys.readouterr().out
    assert "fold 2/3: validation subjects 3\n" in log  # training subjects 1 3 5: the second
    assert "test not scored" in log and "test accuracy" not in log
    meta = json.loads(out.with_suffix(".json").read_text())  # kept for an ensemble or a teacher
    assert meta["metrics"]["test"] == {} and not out.with_suffix(".report.json").exists()
    assert train.main(tiny_csv_run(csv_dataset, "--fold", "2-3")) == 1
    assert "--fold wants K/N" in capsys.readouterr().err


def test_a_refit_on_every_training_subject_keeps_the_last_epoch(csv_dataset, tmp_path, capsys):
    import json

    import train
    from streamer.cli import main as cli

    out = tmp_path / "refit.pt"
    refit = tiny_csv_run(csv_dataset, "--set", "data.val_subjects=[]", "--set", 'train.keep="last"',
                         "--out", str(out))  # fmt: skip
    assert train.main(refit) == 0
    assert "kept epoch 2 (the schedule's last; no validation subjects)" in capsys.readouterr().out
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["best_epoch"] == 2 and meta["metrics"]["val"] is None
    # each fact once: the window, rate and network where inference reads them, not again in the config
    assert set(meta["config"]) == {"data", "train"} and "window" not in meta["config"]["data"]
    assert meta["network"]["n_inputs"] == len(meta["features"]) == 9 and meta["window"] == 128
    assert cli.main(["evaluate", "--checkpoint", str(out), "--data-dir", str(csv_dataset), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["accuracy"] == meta["metrics"]["test"]["accuracy"]
    assert scores["data_fingerprint_matches"]  # the config read back whole: the same windows


def test_distillation_learns_the_teachers_answers_and_refuses_unlike_teachers(csv_dataset, tmp_path, capsys):
    import json

    import train
    from model.train.ensemble import main as ensemble

    teacher = tmp_path / "teacher.pt"
    assert train.main(tiny_csv_run(csv_dataset, "--fold", "1/3", "--out", str(teacher))) == 0
    # all weight on the teacher: the labels are never seen, yet the student scores like its teacher
    student = tmp_path / "student.pt"
    taught = ["--set", f'train.teachers=["{teacher}"]', "--set", "train.distill_weight=1.0"]
    assert train.main(tiny_csv_run(csv_dataset, "--fold", "1/3", "--out", str(student), "--epochs", "4",
                                   *taught)) == 0  # fmt: skip
    capsys.readouterr()
    args = [*tiny_ensemble(csv_dataset), "--fold", "1/3", "--json"]
    assert ensemble([*args, str(teacher), str(student)]) == 0
    scores = json.loads(capsys.readouterr().out)["members"]
    assert scores[str(student)]["accuracy"] > 0.3  # chance is 1/6: it learnt from the teacher alone
    # a teacher reading other windows is refused in one line, before any training
    assert train.main(tiny_csv_run(csv_dataset, "--set", "data.window=64", *taught)) == 1
    assert "train.py: teacher" in capsys.readouterr().err
    assert train.main(tiny_csv_run(csv_dataset, "--set", 'train.teachers=["no/such.pt"]')) == 1
    assert "train.py: train.teachers: " in capsys.readouterr().err


def test_an_ensemble_scores_the_average_of_its_members(csv_dataset, tmp_path, capsys):
    import json

    import train
    from model.train.ensemble import main as ensemble

    paths = [tmp_path / f"seed{seed}.pt" for seed in (0, 1)]
    for seed, path in enumerate(paths):
        run = tiny_csv_run(csv_dataset, "--fold", "1/3", "--seed", str(seed), "--out", str(path))
        assert train.main(run) == 0
    capsys.readouterr()
    args = [*tiny_ensemble(csv_dataset), "--fold", "1/3", "--json"]
    assert ensemble([*args, str(paths[0]), str(paths[0])]) == 0  # a model averaged with itself is itself
    same = json.loads(capsys.readouterr().out)
    assert same["average"] == same["members"][str(paths[0])]
    assert ensemble([*args, *map(str, paths)]) == 0
    both = json.loads(capsys.readouterr().out)
    assert both["average"]["n_windows"] == same["average"]["n_windows"] > 0
    assert ensemble([*args, str(tmp_path / "missing.pt")]) == 1
    assert capsys.readouterr().err.startswith("model.train.ensemble: ")
