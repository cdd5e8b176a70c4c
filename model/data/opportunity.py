"""The OPPORTUNITY activity recognition dataset (UCI), as the 2011 challenge uses it.

``OpportunityUCIDataset/dataset/S{1..4}-{Drill,ADL1..ADL5}.dat`` holds one run a file:
whitespace-separated rows at 30 Hz, 250 columns, ``NaN`` where a sensor dropped out. Column 0 is
the time in ms, 1-242 the sensors, 243 Locomotion and 249 ML_Both_Arms (the gestures). The
challenge keeps 113 of the sensor columns; each is named ``c{column:03d}`` after its 0-based column
in the original file (``c001``, ..., ``c133``), so a name says where to look it up in the dataset's
``column_names.txt`` (which numbers columns from 1: ``c001`` is its column 2).

Files are read from the extracted folder or straight from ``OpportunityUCIDataset.zip``.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from model.data.recordings import Recording

RATE_HZ = 30.0
N_COLUMNS = 250
LOCOMOTION_COLUMN = 243
GESTURE_COLUMN = 249  # ML_Both_Arms

# The challenge deletes these 0-based columns (inclusive ranges): the sensors it leaves out and
# the label tracks other than Locomotion and ML_Both_Arms.
_DELETED = ((46, 49), (59, 62), (72, 75), (85, 88), (98, 101), (134, 242), (244, 248))
_deleted = {c for first, last in _DELETED for c in range(first, last + 1)}
SENSOR_COLUMNS: tuple[int, ...] = tuple(
    c for c in range(1, N_COLUMNS) if c not in _deleted and c not in (LOCOMOTION_COLUMN, GESTURE_COLUMN)
)
CHANNELS: tuple[str, ...] = tuple(f"c{c:03d}" for c in SENSOR_COLUMNS)
assert len(SENSOR_COLUMNS) == 113, len(SENSOR_COLUMNS)

# Label code -> class name, in class-index order. Null (0) is a class of its own, index 0.
GESTURES: dict[int, str] = {
    0: "Null",
    406516: "Open Door 1",
    406517: "Open Door 2",
    404516: "Close Door 1",
    404517: "Close Door 2",
    406520: "Open Fridge",
    404520: "Close Fridge",
    406505: "Open Dishwasher",
    404505: "Close Dishwasher",
    406519: "Open Drawer 1",
    404519: "Close Drawer 1",
    406511: "Open Drawer 2",
    404511: "Close Drawer 2",
    406508: "Open Drawer 3",
    404508: "Close Drawer 3",
    408512: "Clean Table",
    407521: "Drink from Cup",
    405506: "Toggle Switch",
}
LOCOMOTION: dict[int, str] = {0: "Null", 1: "Stand", 2: "Walk", 4: "Sit", 5: "Lie"}
LABEL_SETS: dict[str, tuple[int, dict[int, str]]] = {
    "gestures": (GESTURE_COLUMN, GESTURES),
    "locomotion": (LOCOMOTION_COLUMN, LOCOMOTION),
}

RUN_NAME = re.compile(r"S[1-4]-(Drill|ADL[1-5])")
DOWNLOAD_HINT = (
    "get OpportunityUCIDataset.zip from "
    "https://archive.ics.uci.edu/dataset/226/opportunity+activity+recognition and train with "
    "'python train.py --config configs/opportunity_18.toml --data-zip OpportunityUCIDataset.zip' "
    "(or --data-dir with the extracted folder)"
)


def classes(labels: str) -> tuple[str, ...]:
    """Class names for a label set: ``gestures`` (18, ML_Both_Arms) or ``locomotion`` (5)."""
    return tuple(_label_set(labels)[1].values())


def _label_set(labels: str) -> tuple[int, dict[int, str]]:
    if labels not in LABEL_SETS:
        raise ValueError(f"unknown OPPORTUNITY labels {labels!r} (gestures | locomotion)")
    return LABEL_SETS[labels]


# --- parsing -------------------------------------------------------------------------------------


def _tokens_per_line(data: bytes) -> np.ndarray:
    """How many whitespace-separated tokens each line holds, counted on all the bytes at once."""
    buf = np.frombuffer(data, np.uint8)
    if len(buf) == 0:
        return np.zeros(0, np.int64)
    space = buf <= ord(" ")  # blank, tab, CR, LF (and other control bytes, which are no number)
    token_start = np.empty(len(buf), bool)  # a token starts after whitespace or at the beginning
    token_start[0] = not space[0]
    np.logical_and(space[:-1], ~space[1:], out=token_start[1:])
    line_starts = np.concatenate(([0], np.flatnonzero(buf == ord("\n")) + 1))
    line_starts = line_starts[line_starts < len(buf)]  # every line holds at least its own newline
    return np.add.reduceat(token_start, line_starts, dtype=np.int64)


_NUMBER = re.compile(rb"NaN|[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _first_unparsable(data: bytes) -> tuple[int, str] | None:
    """Line number and token of the first value that is neither a number nor ``NaN`` (slow path)."""
    for number, line in enumerate(data.splitlines(), start=1):
        for token in line.split():
            if not _NUMBER.fullmatch(token):
                return number, token.decode(errors="replace")
    return None


def parse_dat(data: bytes, source: str) -> np.ndarray:
    """The rows of one ``.dat`` file, (T, 250) float64 with NaN kept.

    Counting tokens first catches short rows, which the fast reader would pad with NaN; only a
    failed read pays for the line-by-line search that names the bad value.
    """
    counts = _tokens_per_line(data)
    wrong = np.flatnonzero((counts != 0) & (counts != N_COLUMNS))
    if len(wrong):
        line = int(wrong[0])
        raise ValueError(f"{source}:{line + 1}: expected {N_COLUMNS} columns, found {counts[line]}")
    import pandas as pd  # here, not above: class names and configs need no pandas (a gateway has none)

    try:
        frame = pd.read_csv(
            io.BytesIO(data), sep=r"\s+", header=None, dtype=np.float64,
            na_values=["NaN"], keep_default_na=False, engine="c",
        )  # fmt: skip
    except ValueError as error:  # pandas' ParserError is one too
        found = _first_unparsable(data)
        if found is None:
            raise ValueError(f"{source}: unreadable ({error})") from None
        raise ValueError(f"{source}:{found[0]}: not a number: {found[1]!r}") from None
    if frame.shape[0] == 0:
        raise ValueError(f"{source}: no rows")
    return frame.to_numpy()


def _class_indices(codes: np.ndarray, labels: str, source: str) -> np.ndarray:
    """Label codes (one column of the file) to class indices; an unknown code is an error."""
    _, code_names = _label_set(labels)
    known = np.array(list(code_names), dtype=np.float64)
    hit = codes[:, None] == known[None, :]  # (T, K): NaN matches nothing
    bad = np.flatnonzero(~hit.any(axis=1))
    if len(bad):
        raise ValueError(f"{source}:{bad[0] + 1}: unknown {labels} label {codes[bad[0]]:g}")
    return hit.argmax(axis=1).astype(np.int64)


def to_recording(rows: np.ndarray, name: str, labels: str = "gestures") -> Recording:
    """A parsed run as a :class:`Recording`: the 113 challenge channels and one label track."""
    column, _ = _label_set(labels)
    return Recording(
        name=name,
        subject=name.split("-")[0],
        timestamps=rows[:, 0] / 1000.0,
        values=np.ascontiguousarray(rows[:, list(SENSOR_COLUMNS)]),
        labels=_class_indices(rows[:, column], labels, f"{name}.dat"),
        channels=CHANNELS,
        classes=classes(labels),
        rate_hz=RATE_HZ,
    )


# --- finding the files ---------------------------------------------------------------------------


def _read_member(path: Path, member: str) -> bytes:
    with zipfile.ZipFile(path) as archive:
        return archive.read(member)


def _zip_runs(path: Path) -> dict[str, Callable[[], bytes]]:
    """Run name -> reader for every ``<...>/dataset/S?-*.dat`` member of the zip."""
    with zipfile.ZipFile(path) as archive:
        members = archive.namelist()
    runs = {}
    for member in members:
        folder, _, file = member.rpartition("/")
        stem = file.removesuffix(".dat")
        if folder.split("/")[-1] == "dataset" and file.endswith(".dat") and RUN_NAME.fullmatch(stem):
            runs[stem] = partial(_read_member, path, member)
    return runs


def _folder_runs(path: Path) -> dict[str, Callable[[], bytes]]:
    """Run name -> reader, for the extracted folder or any folder above ``.../dataset``."""
    for folder in (path / "OpportunityUCIDataset" / "dataset", path / "dataset", path):
        files = [f for f in sorted(folder.glob("S*.dat")) if RUN_NAME.fullmatch(f.stem)]
        if files:
            return {f.stem: f.read_bytes for f in files}
    return {}


def find_runs(path: str | Path) -> dict[str, Callable[[], bytes]]:
    """Every run in an OPPORTUNITY folder or zip, by name (``S1-ADL1``), as a reader of its bytes."""
    if not str(path):
        raise FileNotFoundError(f"no OPPORTUNITY data given (data.path is empty): {DOWNLOAD_HINT}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no OPPORTUNITY data at {path}: {DOWNLOAD_HINT}")
    runs = _zip_runs(path) if zipfile.is_zipfile(path) else _folder_runs(path) if path.is_dir() else {}
    if not runs:
        raise FileNotFoundError(f"no OPPORTUNITY runs (S1-ADL1.dat ...) in {path}: {DOWNLOAD_HINT}")
    return runs


def load_opportunity_run(path: str | Path, run: str | None = None, labels: str = "gestures") -> Recording:
    """One run: a ``.dat`` file, or ``run`` (``S2-ADL4``) from a folder or zip at ``path``."""
    path = Path(path)
    if run is None:
        if not path.is_file():
            raise FileNotFoundError(f"no OPPORTUNITY run file {path}")
        return to_recording(parse_dat(path.read_bytes(), path.name), path.stem, labels)
    runs = find_runs(path)
    if run not in runs:
        raise ValueError(f"no OPPORTUNITY run {run!r} in {path} (there are {', '.join(sorted(runs))})")
    return to_recording(parse_dat(runs[run](), f"{run}.dat"), run, labels)


def load_opportunity(
    path: str | Path, labels: str = "gestures", runs: tuple[str, ...] | None = None
) -> list[Recording]:
    """Every run in a folder or zip in name order, or only ``runs`` in their order."""
    available = find_runs(path)
    wanted = sorted(available) if runs is None else list(runs)
    missing = [r for r in wanted if r not in available]
    if missing:
        raise ValueError(f"OPPORTUNITY run(s) {', '.join(missing)} not in {path}")
    return [to_recording(parse_dat(available[r](), f"{r}.dat"), r, labels) for r in wanted]
