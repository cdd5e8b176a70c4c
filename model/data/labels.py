"""The rule that gives a window its class: one implementation for training, evaluation and the
live scheduler, so that a live window's truth is the truth its offline twin was scored against.

>>> import numpy as np
>>> labels = np.array([0, 0, 0, 1, 1, 1])
>>> window_labels(labels, np.array([0, 2, 3]), 3, "all").tolist()
[0, -1, 1]
>>> window_labels(labels, np.array([0, 2, 3]), 3, "last").tolist()
[0, 1, 1]
"""

from __future__ import annotations

import numpy as np


def window_labels(labels: np.ndarray, starts: np.ndarray, length: int, rule: str) -> np.ndarray:
    """The class of each window, -1 where it has none.

    ``all``: the class that covers every sample (UCI HAR keeps only such windows);
    ``last``: the last sample's class (the OPPORTUNITY challenge's rule).
    """
    if rule == "last":
        return labels[starts + length - 1]
    if rule != "all":
        raise ValueError(f"unknown label rule {rule!r} (all | last)")
    spans = np.lib.stride_tricks.sliding_window_view(labels, length)[starts]
    first = spans[:, 0]
    return np.where((spans == first[:, None]).all(axis=1), first, -1)
