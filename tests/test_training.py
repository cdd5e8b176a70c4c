import numpy as np

from model.config import ExperimentConfig, override
from model.datasets import WindowSet
from model.recordings import HAPT_ACTIVITIES
from model.training import evaluate, fit, random_rotations, xyz_groups


def subset(splits_windows: WindowSet, per_class: int, seed: int) -> WindowSet:
    rng = np.random.default_rng(seed)
    index = np.concatenate([rng.choice(np.flatnonzero(splits_windows.y == c), per_class, replace=False)
                            for c in range(6)])  # fmt: skip
    return splits_windows.subset(index)


def test_a_seconds_long_run_on_a_small_subset_learns(hapt):
    from model.datasets import recording_windows, split_by_subject

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

    from model.datasets import recording_windows

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


def test_rotations_are_proper_and_bounded():
    import torch

    r = random_rotations(100, 15.0, torch.Generator().manual_seed(0))
    torch.testing.assert_close(r @ r.transpose(1, 2), torch.eye(3).expand(100, 3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(100), atol=1e-5, rtol=0)
    cos_angle = (r.diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2
    assert (cos_angle >= np.cos(np.radians(15.0)) - 1e-5).all()


def test_xyz_groups_find_the_vector_channels():
    from model.preprocessing import UCI_HAR_FEATURES

    assert xyz_groups(UCI_HAR_FEATURES) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert xyz_groups(("a", "b_x", "b_y")) == []
