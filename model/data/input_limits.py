"""The bounds on raw samples that the live path and training share: when a silence is a gap, and
which values are beyond any wearable. A leaf (numpy alone): :mod:`streamer.core.limits` re-exports these
names for the live path, and training reads recordings with the same numbers, so that a recording
replayed live and the same recording trained on are cut by one rule.
"""

from __future__ import annotations

import math

import numpy as np

GAP_PERIODS = 5.0  # a silence longer than this many sample periods restarts the stream ("gap")
# |value| of a raw channel by its unit (acc in g, gyro in rad/s: 64 g and 100 rad/s are beyond
# any wearable's range); other units get OTHER_UNIT_LIMIT. Outside: "value out of range". Bounded
# input keeps the filters' state finite; a state that turns non-finite anyway restarts the stream.
VALUE_LIMITS = {"g": 64.0, "m/s2": 64.0 * 9.80665, "rad/s": 100.0, "deg/s": 100.0 * 180.0 / math.pi}
OTHER_UNIT_LIMIT = 1e6


def value_limits(units: tuple[str, ...] | list[str], n: int) -> np.ndarray:
    """The largest |value| of each of ``n`` channels, by unit (unknown units: OTHER_UNIT_LIMIT).

    >>> value_limits(("g", "rad/s"), 2).tolist(), value_limits((), 1).tolist()
    ([64.0, 100.0], [1000000.0])
    """
    units = tuple(units) if len(units) == n else ("",) * n
    return np.array([VALUE_LIMITS.get(u, OTHER_UNIT_LIMIT) for u in units], dtype=np.float64)


def first_out_of_range(values: np.ndarray, limits: np.ndarray) -> tuple[int, int] | None:
    """(row, column) of the first finite value of ``values`` (T, C) beyond its channel's limit, or
    None. Non-finite values are not "out of range": they are lost readings (a gap), as live.

    >>> first_out_of_range(np.array([[1.0, np.nan], [2.0, 1e308]]), np.array([64.0, 100.0]))
    (1, 1)
    """
    with np.errstate(invalid="ignore"):  # inf - inf
        beyond = (np.abs(values) > limits) & np.isfinite(values)
    if not beyond.any():
        return None
    row, column = np.argwhere(beyond)[0]
    return int(row), int(column)
