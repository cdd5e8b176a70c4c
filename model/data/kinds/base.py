"""What a dataset declares: one :class:`DatasetKind` per module of this package."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from model.config import DataConfig, ExperimentConfig
from model.data.datasets import Splits
from model.data.recordings import Recording


@dataclass(frozen=True)
class Inputs:
    """What the model expects, so that replayed recordings are read in its channels and classes."""

    channels: tuple[str, ...]
    classes: tuple[str, ...]
    rate_hz: float


@dataclass(frozen=True)
class DatasetKind:
    """One dataset: its name, classes and preprocessing, how training reads it, how replay plays it.

    A dataset gives training either continuous ``recordings`` (cut into windows through the causal
    preprocessing and split by subject or by run) or ready-cut ``splits`` (the original UCI HAR
    folder, whose windows and split are its own).
    """

    name: str  # data.dataset in a config, and the prefix of a replay SOURCE (``name:...``)
    classes: Callable[[DataConfig], tuple[str, ...]]  # class names in index order
    # The rest of a SOURCE spec (after ``name:``) -> {device name: its recordings, played back to back}
    replay: Callable[[str, Inputs], dict[str, list[Recording]]]
    source_usage: str  # how a SOURCE for it is written, for messages: ``hapt:N``
    recordings: Callable[[DataConfig], list[Recording]] | None = None
    splits: Callable[[ExperimentConfig], Splits] | None = None
    # The preprocessing a config gets when it names none. It also decides what a gap (NaN) is:
    # bad input the live path drops, or a sensor dropout the preprocessing fills (fills_gaps).
    preprocessing: str = "uci_har"
    null_class: int | None = None  # the class that means "none of the others", scored apart
    aliases: tuple[str, ...] = ()  # other spellings accepted for the name

    def __post_init__(self) -> None:
        assert (self.recordings is None) != (self.splits is None), f"{self.name}: recordings or splits, one"
