"""Streaming resampling onto the model's sample grid, for devices that run at another rate.

>>> r = StreamResampler(rate_hz=50.0)
>>> t = np.arange(10) / 100.0                     # a 100 Hz device...
>>> out_t, out_v, _ = r.process(t, t[:, None] * 10, np.zeros(10, np.int64))
>>> np.round(out_t, 3).tolist()                   # ...becomes 50 Hz
[0.0, 0.02, 0.04, 0.06, 0.08]
>>> np.round(out_v.ravel(), 3).tolist()
[0.0, 0.2, 0.4, 0.6, 0.8]
"""

from __future__ import annotations

import numpy as np


class StreamResampler:
    """Linear interpolation at ``start + k / rate_hz``, carried across calls.

    Labels take the value of the last input sample at or before each grid point. Interpolation
    does no anti-alias filtering: human motion lies well below the 20 Hz low-pass that follows.
    """

    def __init__(self, rate_hz: float) -> None:
        self.period = 1.0 / rate_hz
        self.reset()

    def reset(self) -> None:
        self._t: np.ndarray | None = None  # the last input sample, kept to bridge calls
        self._v: np.ndarray | None = None
        self._label: np.ndarray | None = None
        self._start = 0.0
        self._k = 0  # index of the next grid point to emit

    def process(
        self, t: np.ndarray, v: np.ndarray, labels: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._t is None:
            self._start = float(t[0])
        else:
            t = np.concatenate([self._t, t])
            v = np.concatenate([self._v, v])
            labels = np.concatenate([self._label, labels])
        self._t, self._v, self._label = t[-1:], v[-1:], labels[-1:]
        last_k = int(np.floor((t[-1] - self._start) / self.period + 1e-9))
        k = np.arange(self._k, last_k + 1)
        self._k = last_k + 1
        grid = self._start + k * self.period
        if len(grid) == 0:
            return grid, v[:0], labels[:0]
        i = np.clip(np.searchsorted(t, grid, side="right") - 1, 0, len(t) - 1)
        j = np.minimum(i + 1, len(t) - 1)
        span = np.where(j > i, t[j] - t[i], 1.0)
        w = np.clip((grid - t[i]) / span, 0.0, 1.0)[:, None]
        return grid, v[i] * (1 - w) + v[j] * w, labels[i]
