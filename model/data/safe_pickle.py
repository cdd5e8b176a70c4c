"""A pickle reader that can rebuild numpy arrays and pandas 1.x frames, and nothing else.

The HAPT recordings ship as a protocol-2 pickle of pandas 1.x DataFrames. Current pandas cannot
load them, and a plain ``pickle.load`` would run whatever the file asks for. This unpickler admits
numpy's array reconstruction and the few builtins a frame's state needs; pandas classes become
inert holders that keep the state they are given, from which :func:`frame_columns` reads arrays.
"""

from __future__ import annotations

import codecs
import copyreg
import pickle
from typing import IO, Any

import numpy as np


class UnsafePickleError(pickle.UnpicklingError):
    """The file asked for a global outside the allow-list."""


class Inert:
    """Stands in for a pandas class: accepts construction and state, executes nothing."""

    def __init__(self, *args: Any) -> None:
        self.args = args
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _new_index(cls: type, state: Any = None) -> Inert:
    # pandas' Index factory, called by the pickle with (class, state dict).
    holder = Inert()
    holder.state = state
    return holder


_PANDAS_HOLDERS: dict[tuple[str, str], type] = {}

_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): np.ndarray.__new__,  # replaced below
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
    ("copy_reg", "_reconstructor"): copyreg._reconstructor,
    ("__builtin__", "object"): object,
    ("__builtin__", "slice"): slice,
    ("pandas.core.indexes.base", "_new_Index"): _new_index,
}


def _reconstruct(subtype: type, shape: Any, dtype: Any) -> np.ndarray:
    # numpy.core.multiarray._reconstruct, restricted to plain ndarrays.
    if subtype is not np.ndarray:
        raise UnsafePickleError(f"refusing to build array subclass {subtype!r}")
    return np.ndarray.__new__(subtype, shape, dtype)


_ALLOWED[("numpy.core.multiarray", "_reconstruct")] = _reconstruct
_ALLOWED[("numpy._core.multiarray", "_reconstruct")] = _reconstruct

_PANDAS_CLASSES = {
    ("pandas.core.frame", "DataFrame"),
    ("pandas.core.internals.managers", "BlockManager"),
    ("pandas.core.indexes.range", "RangeIndex"),
    ("pandas.core.indexes.base", "Index"),
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose ``find_class`` admits only the allow-list above."""

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key in _ALLOWED:
            return _ALLOWED[key]
        if key in _PANDAS_CLASSES:
            if key not in _PANDAS_HOLDERS:
                _PANDAS_HOLDERS[key] = type(name, (Inert,), {"__module__": __name__})
            return _PANDAS_HOLDERS[key]
        raise UnsafePickleError(f"refusing to load '{module}.{name}': not on the allow-list")


def restricted_load(stream: IO[bytes]) -> Any:
    """Load a pickle from ``stream`` through :class:`RestrictedUnpickler`."""
    return RestrictedUnpickler(stream, encoding="latin1").load()


def frame_columns(frame: Any) -> dict[str, np.ndarray]:
    """Columns of a pandas 1.x DataFrame rebuilt by :class:`RestrictedUnpickler`.

    A 1.x BlockManager pickles its axes and blocks under a version key ('0.14.1'): axis 0 holds
    the column names, each block a 2-D array and the column positions (a slice) it fills.
    """
    try:
        manager = frame.state["_data"]
        layout = manager.state[3]["0.14.1"]
        names = list(layout["axes"][0].state["data"])
        columns: dict[str, np.ndarray] = {}
        for block in layout["blocks"]:
            positions = range(len(names))[block["mgr_locs"]]
            for row, position in enumerate(positions):
                columns[str(names[position])] = np.asarray(block["values"][row])
    except (AttributeError, KeyError, IndexError, TypeError) as error:
        raise ValueError(f"not a pandas 1.x DataFrame pickle: {error!r}") from error
    return {name: columns[name] for name in map(str, names)}
