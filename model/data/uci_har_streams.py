"""The original 'UCI HAR Dataset' folder, stitched back into continuous streams (for replay, and the
dataset kind's ``uci_har:PATH`` source): a reader of dataset files, so it lives with the data.

The folder holds 128-sample windows with 50 % overlap, in time order per subject and session.
Where a window's first half repeats the previous window's second half the two are contiguous;
elsewhere a new stream starts. The replayed channels are ``total_acc`` (g) and ``body_gyro``
(rad/s): the dataset's already-filtered signals stand in for the raw accelerometer and gyroscope.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from model.data.recordings import Recording, read_uci_har_split
from model.data.signals import HAPT_ACTIVITIES, HAPT_CHANNELS, HAPT_RATE_HZ

SIGNALS = ("total_acc_x", "total_acc_y", "total_acc_z", "body_gyro_x", "body_gyro_y", "body_gyro_z")


def stitch(windows: np.ndarray, labels: np.ndarray, half: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Contiguous runs of overlapping windows as (values, per-sample labels) streams."""
    runs: list[tuple[list[np.ndarray], list[np.ndarray]]] = []
    for i, (window, label) in enumerate(zip(windows, labels, strict=True)):
        if i and np.allclose(window[:half], windows[i - 1][half:], atol=1e-6):
            runs[-1][0].append(window[half:])
            runs[-1][1].append(np.full(len(window) - half, label))
        else:
            runs.append(([window], [np.full(len(window), label)]))
    return [(np.concatenate(v), np.concatenate(lab)) for v, lab in runs]


def read_uci_har_streams(root: Path, subjects: tuple[int, ...] | None = None) -> list[Recording]:
    """One recording per subject (its contiguous runs joined by a silence the scheduler sees)."""
    recordings = []
    for split in ("train", "test"):
        x, y, who = read_uci_har_split(Path(root), split, SIGNALS)
        for subject in sorted(set(who.tolist())):
            if subjects and subject not in subjects:
                continue
            mask = who == subject
            parts, offset = [], 0.0
            for values, labels in stitch(x[mask], y[mask], x.shape[1] // 2):
                t = offset + np.arange(len(values)) / HAPT_RATE_HZ
                parts.append((t, values, labels))
                offset = float(t[-1]) + 2.0  # a 2 s silence: the next run starts a new stream
            t, values, labels = (np.concatenate(p) for p in zip(*parts, strict=True))
            recordings.append(Recording(f"uci-har-s{subject:02d}", str(subject), t, values, labels,
                                        HAPT_CHANNELS, HAPT_ACTIVITIES, HAPT_RATE_HZ))
    if subjects and not recordings:
        raise ValueError(f"no subject(s) {subjects} in {root}")
    return recordings
