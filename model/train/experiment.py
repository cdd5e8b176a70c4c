"""An experiment: its config file loaded, overridden and derived, and its data split.

Above the dataset registry (:mod:`model.data.kinds`), so that the records of :mod:`model.config` stay
plain: here a config file (TOML) or a checkpoint's stored config becomes an :class:`ExperimentConfig`,
with what it derives filled in (the preprocessing runs at the data's rate; the network reads the
preprocessing's features and tells the dataset's classes), and here an experiment's windows are
built, the same way for every dataset.
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from model.config import SECTIONS, DataConfig, ExperimentConfig, NetworkConfig, TrainConfig
from model.data.datasets import (
    Splits,
    cross_validation_fold,
    inputs_digest,
    recording_windows,
    split_by_run,
    split_by_subject,
)
from model.data.kinds import NAMES, DatasetKind, dataset_kind, find_dataset_kind
from model.data.signals import PreprocessingSpec


class ConfigError(ValueError):
    """A config file or override the user can fix; the message is one line naming the place."""


def _unknown(kind: str, name: str, where: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"{where}: unknown {kind} {name!r}{hint}; expected one of {', '.join(known)}")


# What an experiment derives instead of reading (see experiment()), and from what. Configs leave
# these out; where one is given (an older checkpoint's config has them all), it must agree.
DERIVED: dict[str, dict[str, str]] = {
    "preprocessing": {"rate_hz": "data.rate_hz"},
    "model": {"n_inputs": "the preprocessing's features", "n_classes": "the dataset's classes"},
}


def experiment(name: str = "experiment", data: DataConfig | None = None,
               preprocessing: PreprocessingSpec | None = None, model: NetworkConfig | None = None,
               train: TrainConfig | None = None) -> ExperimentConfig:  # fmt: skip
    """An experiment of these parts with its derived facts filled in, whatever the parts said:
    the dataset's one spelling and class names, the preprocessing's rate (the data's) and the
    network's sizes. ValueError for a dataset that is not known or refuses the data settings."""
    data = data or DataConfig()
    kind = dataset_kind(data.dataset)
    data = replace(data, dataset=kind.name)  # one spelling from here on (uci-har: uci_har)
    preprocessing = replace(preprocessing or PreprocessingSpec(), rate_hz=data.rate_hz)
    classes = kind.classes(data)
    sizes = {"n_inputs": len(preprocessing.features), "n_classes": len(classes)}
    return ExperimentConfig(name=name, data=data, preprocessing=preprocessing,
                            model=replace(model or NetworkConfig(), **sizes), train=train or TrainConfig(),
                            classes=classes)  # fmt: skip


def kind_of(config: ExperimentConfig) -> DatasetKind:
    """The dataset kind ``config`` reads."""
    return dataset_kind(config.data.dataset)


def class_names(config: ExperimentConfig) -> tuple[str, ...]:
    return config.classes


def null_class(config: ExperimentConfig) -> int | None:
    """The class that means "none of the others", scored apart (OPPORTUNITY's Null)."""
    return kind_of(config).null_class


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: [{where.rpartition(' ')[2]}] must be a table of fields")
    known = {f.name: f for f in fields(cls)}
    section = where.rpartition(" ")[2]
    converted = {}
    for key, value in values.items():
        if key not in known:
            raise _unknown("field", f"{section}.{key}", where.rpartition(" ")[0] or where,
                           [f"{section}.{k}" for k in known])  # fmt: skip
        default = getattr(cls(), key)
        if isinstance(default, tuple):
            if not isinstance(value, list | tuple):
                raise ConfigError(f"{where}.{key}: expected a list, got {value!r}")
            value = tuple(str(v) if key.endswith("subjects") else v for v in value)
        elif isinstance(default, bool) != isinstance(value, bool) or (
            isinstance(default, int | float) and not isinstance(value, int | float)
        ) or (isinstance(default, str) and not isinstance(value, str)):
            kind = type(default).__name__
            raise ConfigError(f"{where}.{key}: expected {kind}, got {value!r}")
        converted[key] = value
    return cls(**converted)


def from_dict(raw: dict[str, Any], where: str = "config") -> ExperimentConfig:
    """The experiment a config's tables describe (a TOML file's, or a checkpoint's stored config)."""
    for name in raw:
        if name not in SECTIONS and name != "name":
            raise _unknown("section", name, where, ["name", *SECTIONS])
    data = _build(DataConfig, raw.get("data", {}), f"{where} data")
    kind = find_dataset_kind(data.dataset)
    if kind is None:
        raise _unknown("dataset", data.dataset, f"{where} data.dataset", list(NAMES))
    preprocessing = raw.get("preprocessing", {})
    if isinstance(preprocessing, dict) and "kind" not in preprocessing:  # the dataset's own
        preprocessing = {**preprocessing, "kind": kind.preprocessing}
    try:
        config = experiment(
            name=raw.get("name", "experiment"),
            data=data,
            preprocessing=_build(PreprocessingSpec, preprocessing, f"{where} preprocessing"),
            model=_build(NetworkConfig, raw.get("model", {}), f"{where} model"),
            train=_build(TrainConfig, raw.get("train", {}), f"{where} train"),
        )
    except ConfigError:
        raise
    except ValueError as error:  # what the dataset refuses, e.g. a csv dataset without data.classes
        raise ConfigError(f"{where} {error}") from None
    for section, derived in DERIVED.items():
        given = raw.get(section, {})
        for name, source in derived.items():
            value = getattr(getattr(config, section), name)
            if name in given and given[name] != value:
                raise ConfigError(f"{where} {section}.{name}: {given[name]!r} disagrees with {source} "
                                  f"({value!r}): it is derived, so leave it out")  # fmt: skip
    return config


def load_config(path: str | Path) -> ExperimentConfig:
    path = Path(path)
    try:
        with open(path, "rb") as stream:
            raw = tomllib.load(stream)
    except FileNotFoundError:
        shipped = ", ".join(sorted(p.name for p in Path("configs").glob("*.toml"))) or "none here"
        raise ConfigError(f"no config file at {path} (configs/: {shipped})") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    return from_dict(raw, str(path))


def override(config: ExperimentConfig, assignments: list[str]) -> ExperimentConfig:
    """Apply ``section.field=value`` assignments; values parse as TOML (strings may be bare)."""
    raw = config.to_dict()
    for section, derived in DERIVED.items():  # derived again from what the assignments leave
        for name in derived:
            raw[section].pop(name)
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot:
            raise ConfigError(f"--set must look like section.field=value, got {assignment!r}")
        if section not in SECTIONS:
            raise _unknown("section", section, f"--set {assignment}", list(SECTIONS))
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        raw[section][name] = value
    return from_dict(raw, "--set")


def with_train(config: ExperimentConfig, **changes: Any) -> ExperimentConfig:
    """``config`` with these training settings changed (none of them derives anything)."""
    return replace(config, train=replace(config.train, **changes))


def with_data_path(config: ExperimentConfig, path: str | Path) -> ExperimentConfig:
    """``config`` reading its dataset from ``path`` (a folder, or OPPORTUNITY's zip): the command
    line's ``--data-dir`` or ``--data-zip``. Only where the files are changes, never what they mean."""
    return replace(config, data=replace(config.data, path=str(path)))


def build_splits(config: ExperimentConfig, fold: tuple[int, int] | None = None) -> Splits:
    """Train, validation and test windows for an experiment; ``fold=(k, n)`` validates on the
    k-th of n cross-validation folds of the training subjects instead of the configured ones."""
    data, kind = config.data, kind_of(config)
    by_run = bool(data.train_runs or data.val_runs or data.test_runs)
    if fold and (kind.splits or by_run):
        raise ValueError("cross-validation folds split by subject: not with runs or the UCI HAR folder")
    if kind.splits:  # windows cut and split by the dataset itself
        return kind.splits(config)
    assert kind.recordings is not None  # one or the other: DatasetKind
    recordings = kind.recordings(data)
    inputs = inputs_digest(config, (a for r in recordings for a in (r.timestamps, r.values, r.labels)))
    windows = recording_windows(recordings, data, config.preprocessing)
    if by_run:
        return split_by_run(windows, data, inputs)
    if fold:
        data = cross_validation_fold(np.unique(windows.subjects), data, *fold)
    return split_by_subject(windows, data, inputs)
