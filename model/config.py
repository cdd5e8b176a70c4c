"""Experiment configuration: one TOML file per experiment, any field overridable from the CLI."""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from model.data.kinds import NAMES, DatasetKind, dataset_kind, find_dataset_kind
from model.data.preprocessing import PreprocessingSpec


class ConfigError(ValueError):
    """A config file or override the user can fix; the message is one line naming the place."""


def _unknown(kind: str, name: str, where: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"{where}: unknown {kind} {name!r}{hint}; expected one of {', '.join(known)}")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "hapt"  # hapt | uci_har (original folder) | csv (generic recordings) | opportunity;
    # each is a module of model/data/kinds/
    path: str = ""  # folder for uci_har / csv; folder or zip for opportunity
    classes: tuple[str, ...] = ()  # class names in index order (csv; others know their own)
    channels: tuple[str, ...] = ()  # raw input channels (csv)
    units: tuple[str, ...] = ()  # physical unit of each raw channel, for the device protocol
    rate_hz: float = 50.0
    window: int = 128  # samples per window
    step: int = 64  # samples between window starts when cutting training windows
    label_rule: str = "all"  # "all": one class covers the whole window; "last": the last sample's
    test_subjects: tuple[str, ...] = ()
    val_subjects: tuple[str, ...] = ()  # taken from the training subjects, never from test
    # Or split by recording name (OPPORTUNITY's challenge splits runs, not subjects); only the
    # recordings named here are used.
    train_runs: tuple[str, ...] = ()
    val_runs: tuple[str, ...] = ()
    test_runs: tuple[str, ...] = ()
    labels: str = "gestures"  # opportunity: "gestures" (18 classes) | "locomotion" (5 classes)


READOUTS = ("last", "mean")


@dataclass(frozen=True)
class NetworkConfig:
    """The network's sizes. :mod:`model.net.network` builds it; this record stays torch-free, so that a
    checkpoint's metadata is read and checked where torch is not installed (a gateway)."""

    # In an experiment these two are derived (ExperimentConfig): the preprocessing's features and
    # the dataset's classes.
    n_inputs: int = 9  # feature channels per time step
    n_classes: int = 6
    n_hidden: int = 28  # width of a block's output; each direction gets n_hidden // 2
    n_stacked: int = 3  # blocks, one after another
    n_residual: int = 3  # bi-LSTM layers summed inside a block (the residual/highway part)
    bidirectional: bool = True  # False: one forward LSTM of n_hidden units per layer
    dropout: float = 0.15  # on the inputs and on the last hidden state, as in the seed
    # What the classifier reads of the last block's output: "last", the final step (the seed's, where
    # the backward direction has seen one sample), or "mean", the average over the window's steps
    readout: str = "last"

    def __post_init__(self) -> None:
        if self.readout not in READOUTS:
            raise ValueError(f"model.readout must be one of {', '.join(READOUTS)}, got {self.readout!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.readout == "last":  # written only where it is not the seed's: older digests stay
            del d["readout"]
        return d


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 250
    batch_size: int = 100
    lr: float = 0.001
    optimizer: str = "adam"  # adam (with the seed's explicit L2 term) | adamw (decoupled decay)
    l2: float = 0.005  # adam: loss += l2 * Σ w²/2 over weights; adamw: the decay coefficient
    clip: float = 15.0  # gradient norm clipping
    schedule: str = "constant"  # constant | onecycle | cosine
    label_smoothing: float = 0.0
    augment_scale: float = 0.0  # per-window random gain of up to ± this fraction
    augment_rotate_deg: float = 0.0  # per-window random rotation of every xyz triple, degrees
    select_on: str = "f1_weighted"  # validation metric that picks the kept epoch
    # "best": the epoch that scores best on validation; "last": the schedule's final epoch, for a
    # refit on every training subject once cross-validation (train.py --fold) chose the recipe
    keep: str = "best"
    feature_std: float = 1.0  # features are normalised to this std (OPPORTUNITY's scheme: 0.5)
    seed: int = 0
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    # Distillation: checkpoints whose averaged, softened predictions on the same augmented windows
    # the network also learns from; loss = (1 - w) * CE(labels) + w * T² * KL(teachers ‖ network)
    teachers: tuple[str, ...] = ()
    distill_weight: float = 0.5
    distill_temperature: float = 2.0


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "experiment"
    data: DataConfig = field(default_factory=DataConfig)
    preprocessing: PreprocessingSpec = field(default_factory=PreprocessingSpec)
    model: NetworkConfig = field(default_factory=NetworkConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        # Facts with one source, filled in whatever was passed: the preprocessing runs at the data's
        # rate, and the network reads the preprocessing's features and tells the dataset's classes.
        # (A config file that states them anyway is checked against these: from_dict.)
        preprocessing = replace(self.preprocessing, rate_hz=self.data.rate_hz)
        object.__setattr__(self, "preprocessing", preprocessing)  # frozen: set once, here
        sizes = {"n_inputs": len(preprocessing.features), "n_classes": len(self.classes)}
        object.__setattr__(self, "model", replace(self.model, **sizes))

    @property
    def dataset_kind(self) -> DatasetKind:
        return dataset_kind(self.data.dataset)

    @property
    def classes(self) -> tuple[str, ...]:
        """The class names, in index order, that the dataset's labels mean."""
        return self.dataset_kind.classes(self.data)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "data": _plain(asdict(self.data)),
            "preprocessing": self.preprocessing.to_dict(),
            "model": self.model.to_dict(),
            "train": asdict(self.train),
        }


_SECTIONS = {
    "data": DataConfig,
    "preprocessing": PreprocessingSpec,
    "model": NetworkConfig,
    "train": TrainConfig,
}


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


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


# What an experiment derives instead of reading (see ExperimentConfig.__post_init__), and from what.
# Configs leave these out; where one is given (an older checkpoint's config has them all), it must agree.
DERIVED: dict[str, dict[str, str]] = {
    "preprocessing": {"rate_hz": "data.rate_hz"},
    "model": {"n_inputs": "the preprocessing's features", "n_classes": "the dataset's classes"},
}


def from_dict(raw: dict[str, Any], where: str = "config") -> ExperimentConfig:
    for name in raw:
        if name not in _SECTIONS and name != "name":
            raise _unknown("section", name, where, ["name", *_SECTIONS])
    data = _build(DataConfig, raw.get("data", {}), f"{where} data")
    kind = find_dataset_kind(data.dataset)
    if kind is None:
        raise _unknown("dataset", data.dataset, f"{where} data.dataset", list(NAMES))
    preprocessing = raw.get("preprocessing", {})
    if isinstance(preprocessing, dict) and "kind" not in preprocessing:  # the dataset's own
        preprocessing = {**preprocessing, "kind": kind.preprocessing}
    try:
        config = ExperimentConfig(
            name=raw.get("name", "experiment"),
            data=replace(data, dataset=kind.name),  # one spelling from here on (uci-har: uci_har)
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
        if section not in _SECTIONS:
            raise _unknown("section", section, f"--set {assignment}", list(_SECTIONS))
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        raw[section][name] = value
    return from_dict(raw, "--set")


def with_train(config: ExperimentConfig, **changes: Any) -> ExperimentConfig:
    return replace(config, train=replace(config.train, **changes))
