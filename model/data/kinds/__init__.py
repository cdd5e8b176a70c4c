"""The datasets training reads and replay plays: one module each, gathered here by name.

Each module declares one :class:`DatasetKind`: its name (``data.dataset`` in a config and the
prefix of a replay SOURCE), its classes and null class, the preprocessing it wants by default (and
with it whether a NaN is a gap to fill or bad input), how a config becomes its recordings or
splits, and how a SOURCE spec becomes replay devices. Adding a dataset is adding its module and
its line in ``KINDS``.

Nothing here imports torch or pandas: the live path (``harstream replay csv:...``) reads SOURCE
specs through it on a gateway without either.
"""

from __future__ import annotations

from model.data.kinds import csv_files, hapt, opportunity, uci_har
from model.data.kinds.base import DatasetKind, Inputs

KINDS: tuple[DatasetKind, ...] = (hapt.KIND, csv_files.KIND, uci_har.KIND, opportunity.KIND)
NAMES: tuple[str, ...] = tuple(k.name for k in KINDS)
_BY_NAME = {name: k for k in KINDS for name in (k.name, *k.aliases)}

__all__ = ["KINDS", "NAMES", "DatasetKind", "Inputs", "dataset_kind", "find_dataset_kind"]


def find_dataset_kind(name: str) -> DatasetKind | None:
    """The dataset called ``name`` (or one of its other spellings), or None."""
    return _BY_NAME.get(name)


def dataset_kind(name: str) -> DatasetKind:
    """The dataset called ``name``; a ValueError naming the known ones otherwise."""
    kind = find_dataset_kind(name)
    if kind is None:
        raise ValueError(f"unknown dataset {name!r} (one of {', '.join(NAMES)})")
    return kind
