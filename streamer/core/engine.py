"""Batched inference: windows from any number of devices in, predictions out.

The engine is stateless between windows (every window starts from a zero LSTM state); the only
state is the optional per-device smoothing of probabilities, kept in :class:`Decider`.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Protocol

import numpy as np

from streamer.core.drops import Drops
from streamer.core.types import Prediction, Window


class Backend(Protocol):
    """What the engine needs of a network runner (streamer/core/backends.py has the PyTorch and the
    ONNX one): declared here, so that the engine and what imports it need no backend's imports."""

    n_classes: int

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """(N, K) class probabilities for windows (N, T, F)."""
        ...


log = logging.getLogger(__name__)

UNCERTAIN = "uncertain"
NON_FINITE = "non-finite model output"  # the drop reason of a window whose probabilities are not numbers


class InferenceEngine:
    """Runs a list of windows through a backend as one batch (split at ``max_batch``).

    ``per_device`` gives some devices a model of their own (a wearer's calibration, see
    ``harstream calibrate``): their windows are batched together per model, everyone else's on
    the base ``backend``; the rows come back in the windows' order either way.
    """

    def __init__(self, backend: Backend, max_batch: int = 256,
                 per_device: dict[str, Backend] | None = None) -> None:  # fmt: skip
        self.backend = backend
        self.max_batch = max_batch
        self.per_device = per_device or {}

    def probabilities(self, windows: list[Window]) -> np.ndarray:
        """(N, K) class probabilities, row i for ``windows[i]``."""
        if not windows:
            return np.zeros((0, self.backend.n_classes), np.float32)
        if not self.per_device:
            return self.probabilities_of(np.stack([w.features for w in windows]))
        groups: dict[int, tuple[Backend, list[int]]] = {}
        for i, window in enumerate(windows):
            backend = self.per_device.get(window.device, self.backend)
            groups.setdefault(id(backend), (backend, []))[1].append(i)
        out = np.empty((len(windows), self.backend.n_classes), np.float32)
        for backend, rows in groups.values():
            out[rows] = self.probabilities_of(np.stack([windows[i].features for i in rows]), backend)
        return out

    def probabilities_of(self, x: np.ndarray, backend: Backend | None = None) -> np.ndarray:
        """(N, K) class probabilities for feature windows (N, T, F), N > 0, on ``backend`` (the
        base one by default)."""
        backend = backend or self.backend
        return np.concatenate([backend.probabilities(x[i : i + self.max_batch])
                               for i in range(0, len(x), self.max_batch)])  # fmt: skip


class Decider:
    """Turns probabilities into labels: optional smoothing over a device's last ``smooth``
    windows, and :data:`UNCERTAIN` when the top probability is below ``min_confidence``."""

    def __init__(self, classes: tuple[str, ...], smooth: int = 1, min_confidence: float = 0.0) -> None:
        assert smooth >= 1, f"smooth must be >= 1, got {smooth}"
        self.classes = classes
        self.smooth = smooth
        self.min_confidence = min_confidence
        self.history: dict[tuple[str, int], deque[np.ndarray]] = {}
        self.drops = Drops()  # windows given no prediction, per device; the pipeline's once bound
        self._warned = False

    def bind(self, drops: Drops) -> None:
        """Count windows given no prediction into ``drops`` (the pipeline's) from now on."""
        drops.absorb(self.drops)
        self.drops = drops

    def forget(self, device: str) -> None:
        for key in [k for k in self.history if k[0] == device]:
            del self.history[key]

    def truth_name(self, truth: int | None) -> str | None:
        """The class a window's truth index names; None for no truth, or an index this model's classes
        do not have (a source's labels must be mapped by name first: replay's truth_by_name)."""
        return self.classes[truth] if truth is not None and 0 <= truth < len(self.classes) else None

    def decide(self, windows: list[Window], probs: np.ndarray) -> list[Prediction]:
        now = time.monotonic()
        predictions = []
        for window, p in zip(windows, probs, strict=True):
            if not np.isfinite(p).all():  # never a NaN label, confidence or JSON number downstream
                if not self._warned:
                    self._warned = True
                    log.error("%s: the model gave non-finite probabilities; window dropped", window.device)
                self.drops.add(window.device, NON_FINITE, quiet=True)
                continue
            if self.smooth > 1:  # smoothing never reaches across a gap (a new segment)
                past = self.history.setdefault((window.device, window.segment), deque(maxlen=self.smooth))
                if window.segment > 0:
                    self.history.pop((window.device, window.segment - 1), None)
                past.append(p)
                p = np.mean(past, axis=0)
            best = int(np.argmax(p))
            confidence = float(p[best])
            label = self.classes[best] if confidence >= self.min_confidence else UNCERTAIN
            predictions.append(
                Prediction(
                    device=window.device,
                    t=window.t,
                    label=label,
                    confidence=confidence,
                    probs={c: float(q) for c, q in zip(self.classes, p, strict=True)},
                    truth=self.truth_name(window.truth),
                    latency_ms=(now - window.arrival) * 1000.0,
                    index=window.index,
                    segment=window.segment,
                    clock=window.clock,
                )
            )
        return predictions
