"""An experiment's settings as plain, frozen records: the data, the preprocessing, the network and
the training recipe, one section each of a config file (``configs/*.toml``).

A leaf of the model side: nothing here reads a dataset or a file. :mod:`model.train.experiment`
loads these records from TOML, applies overrides and fills in what an experiment derives (the
preprocessing's rate, the network's sizes, the class names); checkpoint metadata and the network
read them where torch or the datasets are not installed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from model.data.signals import HAPT_ACTIVITIES, PreprocessingSpec


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

    # In an experiment these two are derived (model/train/experiment.py): the preprocessing's features and
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
    """One experiment. Its derived facts (the preprocessing's rate, the network's sizes, the class
    names) are filled in by :func:`model.train.experiment.experiment`, through which every config
    file and override goes; the defaults are those of the default dataset, HAPT, already derived.
    Facts that disagree are refused here, so a record built by hand cannot carry a stale one."""

    name: str = "experiment"
    data: DataConfig = field(default_factory=DataConfig)
    preprocessing: PreprocessingSpec = field(default_factory=PreprocessingSpec)
    model: NetworkConfig = field(default_factory=NetworkConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # Derived, never written (to_dict): the class names, in index order, that the dataset's labels mean
    classes: tuple[str, ...] = HAPT_ACTIVITIES

    def __post_init__(self) -> None:
        facts = {
            "preprocessing.rate_hz": (self.preprocessing.rate_hz, self.data.rate_hz),
            "model.n_inputs": (self.model.n_inputs, len(self.preprocessing.features)),
            "model.n_classes": (self.model.n_classes, len(self.classes)),
        }
        for name, (value, derived) in facts.items():
            if value != derived:
                raise ValueError(f"{name} is {value!r} where it derives {derived!r}: build the config "
                                 "with model.train.experiment.experiment()")  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "data": plain(asdict(self.data)),
            "preprocessing": self.preprocessing.to_dict(),
            "model": self.model.to_dict(),
            "train": asdict(self.train),
        }


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "preprocessing": PreprocessingSpec,
    "model": NetworkConfig,
    "train": TrainConfig,
}


def plain(d: dict[str, Any]) -> dict[str, Any]:
    """``d`` with its tuples as lists, as TOML and JSON write them."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
