"""``harstream init-config``: a training config inferred from a folder of labelled CSV recordings.

What the files say is read, not asked: the channels (every column but ``timestamp``, ``label`` and
``subject``), their units (acceleration whose magnitude sits near 1 is in g, near 9.8 in m/s²;
angular rate that reaches past 15 is in deg/s, since 15 rad/s is a spin few wrists make), the rate
(measured per file; files more than 2 % apart are refused), the classes (the labels that occur)
and the subjects (the ``subject`` column, else the file name). The files are read by the reader
training uses (:func:`model.data.recordings.read_csv_table`), so a file it accepts trains. From them it
chooses the window (128 by default, 24 for short gestures or short recordings), the preprocessing
that suits the rate (UCI HAR's filters, their 20 Hz low-pass kept below the rate's Nyquist
frequency; raw channels when they are not acc+gyro xyz) and a split: one subject held out for test
when there are several, else one recording. The config is written with a comment on each choice,
and ``train.py`` runs it unchanged. No torch here.
"""

from __future__ import annotations

import json
import tomllib
from collections import Counter
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from model.config import SECTIONS, ExperimentConfig
from model.data.recordings import CsvTable, check_rates, check_value_limits, read_csv_table
from model.data.signals import ACC, GYRO, HAPT_ACTIVITIES
from model.train.experiment import ConfigError, experiment, from_dict

MIN_WINDOWS = 10  # per class: fewer and the model has too little to learn a class from


@dataclass
class Survey:
    """What a folder of recordings holds."""

    folder: Path
    files: list[Path]
    channels: tuple[str, ...]
    units: tuple[str, ...]
    rate_hz: float
    classes: tuple[str, ...]
    subjects: tuple[str, ...]  # in order of first appearance
    recordings: dict[str, str]  # recording name -> subject
    labelled_s: Counter = field(default_factory=Counter)  # class -> seconds labelled
    runs: dict[str, list[int]] = field(default_factory=dict)  # class -> its labelled runs' lengths


def _tables(folder: Path) -> list[CsvTable]:
    """Every ``*.csv`` in ``folder``, read by the one reader's rules, each with the first's columns."""
    files = sorted(folder.glob("*.csv"))
    if not files:
        raise ValueError(f"no .csv recordings in {folder} (harstream record --out {folder} writes them)")
    tables: list[CsvTable] = []
    for path in files:
        table = read_csv_table(path)
        if "label" not in table.columns:
            raise ValueError(f"{path}: needs timestamp and label columns (has {', '.join(table.columns)})")
        if tables:
            first = tables[0]
            if set(table.columns) != set(first.columns):
                raise ValueError(f"{path}: columns {', '.join(table.columns)} differ from {files[0].name}'s "
                                 f"({', '.join(first.columns)}): one kind of recording per folder")
            index = [table.channels.index(c) for c in first.channels]  # the first file's column order
            table = replace(table, channels=first.channels, values=table.values[:, index])
        if len(table.times) < 2:
            raise ValueError(f"{path}: fewer than two samples")
        tables.append(table)
    check_rates(tables)  # one rate per folder, as training will read them
    return tables


def _runs(labels: tuple[str, ...], runs: dict[str, list[int]]) -> None:
    """Add the lengths of ``labels``' runs of one label (how many windows each class gives) to ``runs``."""
    run_label, run_length = None, 0
    for label in [*labels, None]:
        if label == run_label:
            run_length += 1
            continue
        if run_label:
            runs.setdefault(run_label, []).append(run_length)
        run_label, run_length = label, 1


def survey(folder: str | Path) -> Survey:
    """Read every ``*.csv`` in ``folder``; ValueError (one line naming the file) when they disagree
    or one breaks a rule of :func:`model.data.recordings.read_csv_table`."""
    folder = Path(folder)
    tables = _tables(folder)
    channels = tables[0].channels
    out = Survey(folder, [t.path for t in tables], channels, (), 0.0, (), (), {})
    rate = float(np.median([t.rate_hz for t in tables]))
    out.rate_hz = float(round(rate)) if abs(rate - round(rate)) < 0.02 * rate else round(rate, 2)
    acc = [channels.index(c) for c in ACC if c in channels]
    gyro = [channels.index(c) for c in GYRO if c in channels]
    acc_norms = [np.linalg.norm(t.values[:, acc], axis=1) for t in tables] if len(acc) == 3 else []
    gyro_abs = [np.abs(t.values[:, gyro]).ravel() for t in tables] if gyro else []
    out.units = guess_units(channels, acc_norms, gyro_abs)
    for table in tables:  # refused as train.py would refuse it, now rather than after the config
        check_value_limits(table, out.units)
    labels_seen: dict[str, None] = {}
    for table in tables:
        _runs(table.labels, out.runs)
        labels_seen.update(dict.fromkeys(label for label in table.labels if label))
    known = [c for c in HAPT_ACTIVITIES if c in labels_seen]
    out.classes = tuple(known + [c for c in labels_seen if c not in known])
    if len(out.classes) < 2:
        raise ValueError(f"{folder}: the recordings label {len(out.classes)} class(es); a model needs two "
                         "or more (record labelled: harstream record --protocol ...)")  # fmt: skip
    for label, lengths in out.runs.items():
        out.labelled_s[label] = sum(lengths) / out.rate_hz
    out.subjects = tuple(dict.fromkeys(t.subject for t in tables))
    out.recordings = {t.path.stem: t.subject for t in tables}
    return out


def guess_units(channels: tuple[str, ...], acc_norms: list[np.ndarray],
                gyro_abs: list[np.ndarray]) -> tuple[str, ...]:  # fmt: skip
    acc_unit = "g"
    if acc_norms:
        magnitude = float(np.nanmedian(np.concatenate(acc_norms)))  # a lost reading is nan
        acc_unit = "m/s2" if magnitude > 4.0 else "g"  # gravity alone: 1 g = 9.81 m/s²
    gyro_unit = "rad/s"
    if gyro_abs and float(np.nanpercentile(np.concatenate(gyro_abs), 99)) > 15.0:
        gyro_unit = "deg/s"
    return tuple(acc_unit if c.startswith("acc") else gyro_unit if c.startswith("gyro") else ""
                 for c in channels)  # fmt: skip


def windows_per_class(found: Survey, window: int, step: int) -> dict[str, int]:
    """Windows of ``window`` samples, every ``step``, that one class covers whole (label rule "all")."""
    return {c: sum(max(0, (n - window) // step + 1) for n in found.runs.get(c, [])) for c in found.classes}


def _toml(value: Any) -> str:
    if isinstance(value, str):  # JSON's escapes are TOML's too; TOML also wants DEL escaped
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


# A section's settings as init-config chooses them: field -> (value, why); the why is written beside it.
Choices = dict[str, tuple[Any, str]]

# The network and the recipe for a few minutes of one wearable's data (smaller than the shipped 3x3).
MODEL: Choices = {"n_hidden": (32, ""), "n_stacked": (2, ""), "n_residual": (2, ""),
                  "bidirectional": (True, ""), "dropout": (0.15, "")}  # fmt: skip
TRAIN: Choices = {
    "epochs": (30, ""), "batch_size": (32, ""), "lr": (0.003, ""), "optimizer": ("adamw", ""),
    "l2": (0.05, ""), "clip": (15.0, ""), "schedule": ("onecycle", ""),
    "augment_scale": (0.1, ""),
    "augment_rotate_deg": (15.0, "the wearable sits a little differently each time"),
    "keep": ("last", ""), "seed": (0, ""),
}  # fmt: skip
SECTION_NOTES = {"preprocessing": "at data.rate_hz",
                 "model": "smaller than the shipped 3x3: a few minutes of one wearable's data"}  # fmt: skip


def _window_notes(found: Survey, window: int, step: int) -> list[str]:
    """Refuse a window no class fills; a note for classes with few windows of it."""
    counts = windows_per_class(found, window, step)
    empty = [c for c, n in counts.items() if n == 0]
    if empty:
        longest = max(max(found.runs.get(c, [0])) for c in empty)
        hint = "use --window 24 (short gestures or recordings)" if window > 24 else "record longer"
        raise ValueError(f"class(es) {', '.join(empty)} have no labelled stretch of {window} samples "
                         f"(longest {longest}): {hint}")  # fmt: skip
    few = [f"{c} ({n})" for c, n in counts.items() if n < MIN_WINDOWS]
    if few:
        return [f"few windows of {window} samples for {', '.join(few)}: record more of them, or --window 24"]
    return []


def _split(found: Survey) -> tuple[Choices, str]:
    """Which subject (or recording) tests, and a line saying so."""
    if len(found.subjects) >= 2:  # hold one subject out; the others train
        test = found.subjects[-1]
        return ({"test_subjects": ((test,), "one wearer held out: scored once, at the end"),
                 "val_subjects": ((), "too few wearers to pick an epoch on: the schedule's last is kept")},
                f"{len(found.subjects)} subjects: {test} tests, the rest train")  # fmt: skip
    names = sorted(found.recordings)
    if len(names) < 2:
        raise ValueError(f"{found.folder}: one recording of one subject leaves nothing to test on: record a "
                         "second session (harstream record again) into the folder")  # fmt: skip
    return ({"test_runs": ((names[-1],), "one subject: the last recording tests"), "val_runs": ((), "")},
            f"one subject: recording {names[-1]} tests, the rest train")  # fmt: skip


def _data(found: Survey, window: int, step: int) -> Choices:
    inputs = _inputs(found)
    units = dict(zip(found.channels, found.units, strict=True))
    rate = found.rate_hz
    return {
        "dataset": ("csv", ""),
        "path": (str(found.folder), "relative to where train.py runs"),
        "classes": (found.classes, ""),
        "channels": (inputs, ""),
        "units": (tuple(units[c] for c in inputs), "guessed from the values; the device must send the same"),
        "rate_hz": (rate, "measured from the timestamps (each file within 2 %)"),
        "window": (window, f"{window / rate:.2f} s"),
        "step": (step, ""),
        "label_rule": ("all", "a window is kept when one class covers all of it; switches are left out"),
    }


def _inputs(found: Survey) -> tuple[str, ...]:
    return ACC + GYRO if set(found.channels) >= set(ACC + GYRO) else found.channels


def _preprocessing(found: Survey) -> Choices:
    """UCI HAR's filters where there are acc and gyro xyz, the low-pass below the rate's Nyquist
    frequency; the raw channels otherwise."""
    inputs = _inputs(found)
    if inputs != ACC + GYRO:
        return {"kind": ("identity", "UCI HAR filters need acc_x..z and gyro_x..z: these go in raw"),
                "inputs": (inputs, "")}  # fmt: skip
    nyquist = found.rate_hz / 2
    return {
        "kind": ("uci_har", "UCI HAR's filters: median, low-pass for noise, 0.3 Hz gravity split"),
        "median_kernel": (3, ""),
        "lowpass_hz": (min(20.0, round(0.8 * nyquist, 1)),
                       f"UCI HAR's 20 Hz, below {nyquist:g} Hz (half the rate)"),
        "lowpass_order": (3, ""),
        "gravity_hz": (0.3, ""),
        "inputs": (inputs, ""),
    }


def _toml_config(config: ExperimentConfig, chosen: dict[str, Choices]) -> str:
    """The chosen fields of ``config``, section by section in the classes' field order, each with why."""
    lines = [f"name = {_toml(config.name)}"]
    for section, cls in SECTIONS.items():
        note = SECTION_NOTES.get(section)
        lines += ["", f"[{section}]" + (f"   # {note}" if note else "")]
        for f in fields(cls):
            if f.name in chosen[section]:
                why = chosen[section][f.name][1]
                value = getattr(getattr(config, section), f.name)
                lines.append(f"{f.name} = {_toml(value)}" + (f"   # {why}" if why else ""))
    return "\n".join(lines) + "\n"


def write_config(folder: str | Path, out: str | Path, window: int = 128,
                 step: int | None = None) -> tuple[str, list[str]]:  # fmt: skip
    """The config's text for the recordings in ``folder`` (to be written to ``out``), and notes.

    The settings are built as the config classes (:mod:`model.config`) and written from them; the
    text must load back into the same experiment, as train.py will load it."""
    found = survey(folder)
    if not 2 <= window <= 10_000:
        raise ValueError(f"--window must be from 2 to 10000 samples, not {window}")
    step = step or max(1, window // 2)
    if not 1 <= step <= window:
        raise ValueError(f"--step must be from 1 to the window ({window}), not {step}")
    notes = _window_notes(found, window, step)
    split, why_split = _split(found)
    chosen = {"data": _data(found, window, step) | split, "preprocessing": _preprocessing(found),
              "model": MODEL, "train": TRAIN}  # fmt: skip
    # the config classes hold the settings (a field they lack is a TypeError here, not a bad file)
    parts = {name: cls(**{k: v for k, (v, _) in chosen[name].items()}) for name, cls in SECTIONS.items()}
    config = experiment(name=Path(out).stem, **parts)
    labelled = ", ".join(f"{c} {found.labelled_s[c]:.0f} s" for c in found.classes)
    text = (f"# Written by `harstream init-config {folder} --window {window} --step {step} --out {out}`\n"
            f"# from {len(found.files)} recording(s): {labelled}\n"
            f"# labelled at {found.rate_hz:g} Hz; {why_split}. Train: python train.py --config {out}\n"
            f"# Then: harstream mqtt --broker mqtt://HOST --checkpoint model/weights/{config.name}.pt\n"
            + _toml_config(config, chosen))  # fmt: skip
    try:
        loaded = from_dict(tomllib.loads(text), str(out))  # what train.py will read must load, unchanged
    except ConfigError as error:
        raise ValueError(f"the inferred config does not load ({error}): please report this") from None
    if loaded != config:
        raise ValueError("the inferred config loads as another experiment: please report this")
    return text, notes
