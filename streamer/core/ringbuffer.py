"""A fixed-capacity ring buffer of samples: O(1) amortised append, window reads without loops.

>>> ring = RingBuffer(capacity=4, n_channels=1)
>>> ring.extend(np.array([[1.0], [2.0], [3.0]]))
>>> ring.latest(2).ravel().tolist()
[2.0, 3.0]
>>> ring.extend(np.array([[4.0], [5.0], [6.0]]))   # wraps: 1 and 2 are overwritten
>>> ring.latest(4).ravel().tolist(), len(ring), ring.total
([3.0, 4.0, 5.0, 6.0], 4, 6)
"""

from __future__ import annotations

import numpy as np


class RingBuffer:
    """The most recent ``capacity`` rows of a stream of ``n_channels``-wide samples.

    Stored twice over (``2 * capacity`` rows, each row written at ``i`` and ``i + capacity``)
    so that any run of up to ``capacity`` latest rows is one contiguous slice: reading a window
    is a single memory copy, never a wrap-around concatenation.
    """

    def __init__(self, capacity: int, n_channels: int, dtype: type = np.float32) -> None:
        assert capacity > 0 and n_channels > 0, (capacity, n_channels)
        self.capacity = capacity
        self._data = np.zeros((2 * capacity, n_channels), dtype=dtype)
        self._head = 0  # where the next row goes, in [0, capacity)
        self._size = 0
        self.total = 0  # rows ever appended since the last clear

    def __len__(self) -> int:
        return self._size

    @property
    def fill(self) -> float:
        return self._size / self.capacity

    def clear(self) -> None:
        self._head = self._size = self.total = 0

    def extend(self, rows: np.ndarray) -> None:
        n = len(rows)
        if n == 0:
            return
        if n > self.capacity:  # only the last ``capacity`` rows can survive
            rows = rows[-self.capacity :]
        k = len(rows)
        first = min(k, self.capacity - self._head)
        for offset in (0, self.capacity):  # both copies
            self._data[self._head + offset : self._head + offset + first] = rows[:first]
            self._data[offset : offset + k - first] = rows[first:]
        self._head = (self._head + k) % self.capacity
        self._size = min(self.capacity, self._size + k)
        self.total += n

    def latest(self, n: int) -> np.ndarray:
        """A copy of the last ``n`` rows, oldest first."""
        assert 0 < n <= self._size, f"asked for {n} rows, have {self._size}"
        end = self._head + self.capacity
        return self._data[end - n : end].copy()
