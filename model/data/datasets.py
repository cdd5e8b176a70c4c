"""From recordings to labelled windows, split by subject (or by recording, for OPPORTUNITY).

Which recordings a dataset holds, and how they are read, each dataset declares in its module of
:mod:`model.data.kinds`; what is done with them is here, the same for all
(:func:`model.train.experiment.build_splits` puts the two together).

Windows are cut from the features the causal preprocessor computes over each recording, starting
at the recording's first sample every ``step`` samples: the live scheduler with hop = step cuts
exactly these windows from a replayed recording.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np

from model.config import DataConfig, ExperimentConfig
from model.data.input_limits import GAP_PERIODS
from model.data.labels import window_labels
from model.data.preprocessing import build_preprocessor
from model.data.recordings import Recording
from model.data.signals import PreprocessingSpec
from model.strict_json import dumps


@dataclass
class WindowSet:
    """Windows ``x`` (N, T, F) float32, labels ``y`` (N,), and where each came from."""

    x: np.ndarray
    y: np.ndarray
    subjects: np.ndarray  # (N,) str
    recordings: np.ndarray  # (N,) str
    ends: np.ndarray  # (N,) index of each window's last sample in its recording

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, mask: np.ndarray) -> WindowSet:
        return WindowSet(
            self.x[mask], self.y[mask], self.subjects[mask], self.recordings[mask], self.ends[mask]
        )

    @staticmethod
    def concat(parts: list[WindowSet], n_steps: int, n_features: int) -> WindowSet:
        if not parts:
            return WindowSet(
                np.zeros((0, n_steps, n_features), np.float32),
                np.zeros(0, np.int64),
                np.zeros(0, str),
                np.zeros(0, str),
                np.zeros(0, np.int64),
            )
        return WindowSet(
            *(
                np.concatenate([getattr(p, f) for p in parts])
                for f in ("x", "y", "subjects", "recordings", "ends")
            )
        )


def cut_windows(features: np.ndarray, recording: Recording, data: DataConfig) -> WindowSet:
    n = len(features)
    starts = np.arange(0, max(n - data.window + 1, 0), data.step)
    y = window_labels(recording.labels, starts, data.window, data.label_rule)
    keep = starts[y >= 0]
    x = np.lib.stride_tricks.sliding_window_view(features, data.window, axis=0)[keep]
    return WindowSet(
        x=np.ascontiguousarray(x.transpose(0, 2, 1), dtype=np.float32),
        y=y[y >= 0],
        subjects=np.full(len(keep), recording.subject),
        recordings=np.full(len(keep), recording.name),
        ends=keep + data.window - 1,
    )


def live_streams(recording: Recording, spec: PreprocessingSpec,
                 gap_periods: float = GAP_PERIODS) -> list[np.ndarray]:  # fmt: skip
    """The rows of ``recording`` as the live path would run them: one index array per stream.

    The live scheduler's rule, shared rather than copied: a lost reading (a non-finite value, or a
    non-finite time) is dropped, as the live path drops a "non-finite value" (for a preprocessing
    that fills gaps, a NaN is its to fill and only infinities are dropped), and where the readings
    kept are more than ``gap_periods`` sample periods apart the stream restarts, as live restarts
    at a "gap". So a few lost readings are stepped over and a long dropout splits the recording:
    training never sees a NaN, and a replay of the recording cuts the windows training cut.
    Elsewhere the recording's timestamps are not read (as before): only lost readings split it.
    """
    values = recording.select(spec.inputs).values
    bad = np.isinf(values) if build_preprocessor(spec).fills_gaps else ~np.isfinite(values)
    lost = bad.any(axis=1) | ~np.isfinite(recording.timestamps)
    kept = np.flatnonzero(~lost)
    if not lost.any():
        return [kept]
    dt = np.diff(recording.timestamps[kept])
    across = np.diff(kept) > 1  # a lost reading lies between these two kept rows
    restart = np.flatnonzero(across & (dt > gap_periods / recording.rate_hz)) + 1
    return [rows for rows in np.split(kept, restart) if len(rows)]


def stream_windows(recording: Recording, data: DataConfig, spec: PreprocessingSpec,
                   mask: np.ndarray | None = None, exclude: bool = False) -> WindowSet:  # fmt: skip
    """``recording``'s labelled windows: each of its :func:`live_streams` through a fresh causal
    preprocessor, then cut. ``ends`` index the recording's rows. With ``mask`` (one bool per row),
    only windows wholly inside it (``exclude``: wholly outside it)."""
    parts = []
    for rows in live_streams(recording, spec):
        if len(rows) < data.window:  # too short for a window, as a stream restarted too soon is
            continue
        stream = recording.take(rows)
        w = cut_windows(build_preprocessor(spec).process(stream.select(spec.inputs).values), stream, data)
        if mask is not None:
            starts = w.ends - data.window + 1
            inside = np.lib.stride_tricks.sliding_window_view(mask[rows], data.window)[starts]
            w = w.subset(~inside.any(axis=1) if exclude else inside.all(axis=1))
        w.ends = rows[w.ends]
        parts.append(w)
    return WindowSet.concat(parts, data.window, len(spec.features))


def recording_windows(recordings: list[Recording], data: DataConfig, spec: PreprocessingSpec) -> WindowSet:
    """Each recording's streams through a fresh causal preprocessor, then cut into labelled windows."""
    parts = [stream_windows(recording, data, spec) for recording in recordings]
    return WindowSet.concat(parts, data.window, len(spec.features))


@dataclass
class Splits:
    train: WindowSet
    val: WindowSet
    test: WindowSet
    fingerprint: str  # which data a model saw: see data_fingerprint()

    def by_name(self, name: str) -> WindowSet:
        return {"train": self.train, "val": self.val, "test": self.test}[name]


def inputs_digest(config: ExperimentConfig, arrays: Iterable[np.ndarray]) -> str:
    """A digest of what windows are computed from: the raw arrays as read (exact on every machine)
    and the data and preprocessing settings (the data's location aside)."""
    settings = {k: v for k, v in config.to_dict()["data"].items() if k != "path"}
    digest = hashlib.sha256(dumps([settings, config.preprocessing.to_dict()], sort_keys=True).encode())
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def data_fingerprint(inputs: str, *sets: WindowSet) -> str:
    """Which data a model saw: the inputs' digest and, per split, which windows with which labels.

    Never the computed windows' bits: filters and reductions round differently on other CPUs
    (AVX-512 against AVX2), and a fingerprint must not tell identical data apart.
    """
    digest = hashlib.sha256(inputs.encode())
    for s in sets:
        digest.update(np.ascontiguousarray(s.y, dtype=np.int64).tobytes())
        digest.update(np.ascontiguousarray(s.ends, dtype=np.int64).tobytes())
        digest.update("\x1f".join(map(str, s.subjects)).encode() + b"\x1e")
        digest.update("\x1f".join(map(str, s.recordings)).encode() + b"\x1e")
    return digest.hexdigest()[:16]


def split_by_subject(windows: WindowSet, data: DataConfig, inputs: str = "") -> Splits:
    test = set(data.test_subjects)
    val = set(data.val_subjects)
    overlap = test & val
    if overlap:
        raise ValueError(f"subject(s) {', '.join(sorted(overlap))} are in both test and val")
    is_test = np.isin(windows.subjects, list(test))
    is_val = np.isin(windows.subjects, list(val))
    parts = [windows.subset(~is_test & ~is_val), windows.subset(is_val), windows.subset(is_test)]
    return Splits(*parts, fingerprint=data_fingerprint(inputs, *parts))


def split_by_run(windows: WindowSet, data: DataConfig, inputs: str = "") -> Splits:
    """Split by recording name; with no ``train_runs``, every run not in val or test trains."""
    if data.test_subjects or data.val_subjects:
        raise ValueError("split by subjects or by runs, not both")
    val, test = set(data.val_runs), set(data.test_runs)
    train = set(data.train_runs) or set(windows.recordings) - val - test
    named = {"train": train, "val": val, "test": test}
    for a, b in itertools.combinations(named, 2):
        if named[a] & named[b]:
            raise ValueError(f"run(s) {', '.join(sorted(named[a] & named[b]))} are in both {a} and {b}")
    parts = [windows.subset(np.isin(windows.recordings, list(runs))) for runs in named.values()]
    return Splits(*parts, fingerprint=data_fingerprint(inputs, *parts))


def cross_validation_fold(subjects: Iterable[str], data: DataConfig, fold: int, folds: int) -> DataConfig:
    """Fold ``fold`` of ``folds`` (1-based): every ``folds``-th non-test subject, in numeric
    order, validates; the configured validation subjects go back to training."""
    if not 1 <= fold <= folds:
        raise ValueError(f"fold {fold}/{folds}: the fold must be between 1 and {folds}")
    pool = sorted(set(subjects) - set(data.test_subjects), key=lambda s: (len(s), s))
    if len(pool) < folds:
        raise ValueError(f"{folds} folds need at least {folds} training subjects, there are {len(pool)}")
    return replace(data, val_subjects=tuple(pool[fold - 1 :: folds]))


def parse_fold(text: str | None) -> tuple[int, int] | None:
    """``--fold K/N`` as (K, N); ValueError for anything else."""
    if text is None:
        return None
    k, _, n = text.partition("/")
    if not (k.isdigit() and n.isdigit()):
        raise ValueError(f"--fold wants K/N, e.g. 1/3, got {text!r}")
    return int(k), int(n)
