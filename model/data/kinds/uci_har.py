"""The original 'UCI HAR Dataset' folder: pre-cut, pre-filtered 128-step windows with their own
train/test split (``uci-har:PATH[:SUBJECTS]`` to replay, its windows stitched back into streams)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from model.config import DataConfig, ExperimentConfig
from model.data.datasets import Splits, WindowSet, data_fingerprint, inputs_digest
from model.data.kinds.base import DatasetKind, Inputs
from model.data.recordings import Recording, read_uci_har_split
from model.data.signals import HAPT_ACTIVITIES, UCI_HAR_FEATURES
from model.data.uci_har_streams import read_uci_har_streams

# The folder's file stems for the preprocessing's features, in the same order: body_acc_x, ...
UCI_HAR_SIGNALS = tuple(
    name.removesuffix("_x").removesuffix("_y").removesuffix("_z") + "_" + name[-1]
    for name in UCI_HAR_FEATURES
)


def read_uci_har_folder(root: Path, config: ExperimentConfig) -> Splits:
    """The folder's windows: its test split is its own; validation subjects come out of its
    training split (``data.val_subjects``)."""
    root = Path(root)

    def read_split(split: str) -> WindowSet:
        x, y, subjects = read_uci_har_split(root, split, UCI_HAR_SIGNALS)
        n = len(y)
        return WindowSet(x.astype(np.float32), y, subjects.astype(str), np.full(n, f"uci-har-{split}"),
                         np.arange(n))  # fmt: skip

    train, test = read_split("train"), read_split("test")
    inputs = inputs_digest(config, (train.x, test.x))  # parsed text: exact
    is_val = np.isin(train.subjects, list(config.data.val_subjects))
    parts = [train.subset(~is_val), train.subset(is_val), test]
    return Splits(*parts, fingerprint=data_fingerprint(inputs, *parts))


def _replay(rest: str, inputs: Inputs) -> dict[str, list[Recording]]:
    """``PATH`` or ``PATH:2,4``: one device per subject."""
    folder, _, subjects = rest.partition(":")
    wanted = tuple(int(s) for s in subjects.split(",") if s) or None
    return {r.name: [r] for r in read_uci_har_streams(Path(folder), wanted)}


def _classes(data: DataConfig) -> tuple[str, ...]:
    return HAPT_ACTIVITIES


KIND = DatasetKind(
    name="uci_har",
    aliases=("uci-har",),  # the SOURCE spelling the README uses
    classes=_classes,
    replay=_replay,
    source_usage="uci-har:PATH",
    splits=lambda config: read_uci_har_folder(Path(config.data.path), config),
)
