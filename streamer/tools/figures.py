"""Every deterministic figure the docs state, computed by one script, so that the docs cannot drift
from what the code does (issue 21: the README said 264 episodes where its own command gave 272).

    python -m streamer.tools.figures --list           # the figures, their commands, about how long each takes
    python -m streamer.tools.figures --only agreement # compute one (or several: --only a --only b)
    python -m streamer.tools.figures --write          # compute all and store them in docs/figures.json
    python -m streamer.tools.figures --check          # compute all; exit 1 naming each that differs

A figure is a named group of values (``store_replay`` holds ``episodes``, ``windows``, ...) with the
exact commands a reader runs to see them. Its function computes the values in-process through the
same code the command runs, or runs the command itself and reads its output. The docs mark each
stated value with ``<!-- figure: NAME.KEY -->`` after it, and ``tests/test_figures.py`` holds the
marked numbers equal to docs/figures.json (and recomputes the cheap figures). Only deterministic
figures live here: accuracies, window and episode counts, agreement tables, FLOPs, the calibration
protocol, the data's sessions and subjects, the export's operators. Timings are
benchmarks, and training runs, the soak and benchmarks take too long: the docs mark those "run by
hand: COMMAND, DATE".
"""

from __future__ import annotations

import argparse
import json
import shlex
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from model.strict_json import dumps

ROOT = Path(__file__).resolve().parents[2]  # streamer/tools/figures.py
FIGURES_JSON = ROOT / "docs" / "figures.json"
NINE = "hapt:2,4,9,10,12,13,18,20,24"  # the nine UCI HAR test subjects
SUBJECTS = (2, 4, 9, 10, 12, 13, 18, 20, 24)
DEFAULT = "model/weights/uci_har_3x3.pt"
FLEET = "model/weights/uci_har_2x2_fleet.pt"
DIGITS = 6  # floats are stored rounded to this many decimals: what --check compares
SCRATCH = (".db", ".onnx")  # a bare file name with these endings is made in the workspace's folder

Values = dict[str, float | int]


@dataclass
class Workspace:
    """A scratch folder for one run of the script, and what figures share (one store replay feeds
    both ``store_replay`` and ``agreement``)."""

    folder: Path
    memo: dict[str, Any] = field(default_factory=dict)

    def harstream(self, command: str) -> str:
        """Run a documented ``harstream ...`` command from the repository root and return its stdout;
        the files it names that it makes (``nine.db``, ``export.onnx``) are put in this workspace's
        folder."""
        words = shlex.split(command)
        if words[0] != "harstream":
            raise ValueError(f"not a harstream command: {command!r}")
        return self._run(command, ["-m", "streamer.cli.main", *words[1:]])

    def python(self, command: str) -> str:
        """Run a documented ``python -m MODULE ...`` command (``python -m model.train.calibration
        --report``) from the repository root with this Python, and return its stdout."""
        words = shlex.split(command)
        if words[:2] != ["python", "-m"]:
            raise ValueError(f"not a python -m command: {command!r}")
        return self._run(command, words[1:])

    def _run(self, command: str, arguments: list[str]) -> str:
        arguments = [str(self.folder / w) if w.endswith(SCRATCH) and "/" not in w else w for w in arguments]
        done = subprocess.run([sys.executable, *arguments], cwd=ROOT, capture_output=True, text=True,
                              check=False)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"{command!r} exited {done.returncode}: {done.stderr.strip()[-400:]}")
        return done.stdout


@dataclass(frozen=True)
class Figure:
    name: str
    commands: tuple[str, ...]  # what a reader runs to see the values
    compute: Callable[[Workspace], Values]
    seconds: int  # about how long it takes on 2 cores
    ci: bool = False  # cheap enough for the test suite to recompute every run


# --- the nine-subject store replay and its episodes -------------------------------------------------

STORE_REPLAY = f"harstream replay {NINE} --speed 0 --hop 64 --headless --store nine.db"
HISTORY_JSON = "harstream history --store nine.db --json"
AGREEMENT = "harstream history --store nine.db --agreement"


def nine_store(ws: Workspace) -> Path:
    """The store of one replay of the nine test subjects, made once per workspace."""
    if "nine.db" not in ws.memo:
        ws.harstream(STORE_REPLAY)
        ws.memo["nine.db"] = ws.folder / "nine.db"
    return ws.memo["nine.db"]


def store_replay(ws: Workspace) -> Values:
    nine_store(ws)
    devices = json.loads(ws.harstream(HISTORY_JSON))["devices"]
    seconds = sum(sum(d["seconds"].values()) for d in devices.values())
    return {
        "devices": len(devices),
        "seconds": seconds,
        "windows": stored_predictions(nine_store(ws)),  # each counted for its hop, 64 / 50 Hz = 1.28 s
        "episodes": sum(len(d["episodes"]) for d in devices.values()),
    }


def stored_predictions(store: Path) -> int:
    connection = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        return int(connection.execute("SELECT COUNT(*) FROM predictions").fetchone()[0])
    finally:
        connection.close()


def agreement(ws: Workspace) -> Values:
    """``history --agreement``: the whole grid, and the per-subject range at the defaults."""
    nine_store(ws)
    grid = json.loads(ws.harstream(AGREEMENT + " --json"))["agreement"]  # the table's values, as JSON
    values: Values = {"segments": grid[0]["segments"]}
    for row in grid:
        key = f"h{row['hold_s']:g}_c{row['min_confidence']:g}"
        values[f"{key}_episodes"] = row["episodes"]
        values[f"{key}_median_s"] = row["boundary_error_median_s"]
        values[f"{key}_within_5s"] = row["boundaries_within_5s"]
    values["h0_c0.6_over_truth"] = values["h0_c0.6_episodes"] / values["segments"]
    defaults = next(r for r in grid if r["hold_s"] == 4 and r["min_confidence"] == 0.6)["devices"]
    for what in ("episodes", "segments"):
        counts = [d[what] for d in defaults.values()]
        values[f"h4_c0.6_subject_{what}_min"] = min(counts)
        values[f"h4_c0.6_subject_{what}_max"] = max(counts)
    return values


# --- the live path: the nine test subjects replayed through each shipped model ------------------------

LIVE_REPLAY = f"harstream replay {NINE} --speed 0 --hop 64 --headless --jsonl"


def live_replay(checkpoint: str | None) -> Callable[[Workspace], Values]:
    def compute(ws: Workspace) -> Values:
        command = LIVE_REPLAY + (f" --checkpoint {checkpoint}" if checkpoint else "")
        lines = [json.loads(line) for line in ws.harstream(command).splitlines() if line.startswith("{")]
        summary = lines[-1]["summary"]
        values: Values = {k: summary[k] for k in ("accuracy", "judged", "windows", "samples", "dropped")}
        judged: dict[str, list[bool]] = {}
        for p in lines[:-1]:
            if p.get("truth") is not None:
                judged.setdefault(p["device"], []).append(p["label"] == p["truth"])
        for subject in SUBJECTS:
            right = judged[f"hapt-s{subject:02d}"]
            values[f"subject_{subject}"] = sum(right) / len(right)
        return values

    return compute


# --- offline evaluation on the test subjects ----------------------------------------------------------

EVALUATE = "harstream evaluate --checkpoint "
CLASS_KEYS = ("walking", "upstairs", "downstairs", "sitting", "standing", "laying")


def evaluate(command: str) -> Callable[[Workspace], Values]:
    """``harstream evaluate --json``'s figures (the command itself, as a reader runs it: no module
    imports the command line)."""

    def compute(ws: Workspace) -> Values:
        metrics = json.loads(ws.harstream(f"{command} --json"))
        if not metrics["data_fingerprint_matches"]:
            raise RuntimeError(f"{command!r}: the rebuilt test windows differ from the model's")
        confusion = metrics["confusion"]
        per_class = [metrics["per_class"][c]["f1"] for c in metrics["per_class"]]
        return {
            "accuracy": metrics["accuracy"],
            "f1_weighted": metrics["f1_weighted"],
            "f1_macro": metrics["f1_macro"],
            "n_windows": metrics["n_windows"],
            **{f"f1_{k}": f for k, f in zip(CLASS_KEYS, per_class, strict=True)},
            "wrong": metrics["n_windows"] - sum(confusion[i][i] for i in range(len(confusion))),
            "sitting_as_standing": confusion[3][4],
        }

    return compute


# --- cost: FLOPs a window ------------------------------------------------------------------------------

MFLOP_CHECKPOINTS = {"uci_har_3x3": DEFAULT, "uci_har_2x2_fleet": FLEET}
MFLOP_CONFIGS = {  # architectures with no shipped checkpoint: name: (config, overrides)
    "seed_3x3": ("configs/uci_har_3x3.toml", []),
    "3x3_32_units": ("configs/uci_har_3x3_tuned.toml", ["model.n_hidden=32"]),
}


def mflop(ws: Workspace) -> Values:
    """MFLOP a window (streamer.tools.bench.flops_per_window, which bench_models prints) of each shipped
    checkpoint and of the configs the docs compare them with."""
    from model.net.checkpoint import load_checkpoint
    from model.net.network import ResidualBiLSTM
    from model.train.experiment import load_config, override
    from streamer.tools.bench import flops_per_window

    values: Values = {}
    for name, path in MFLOP_CHECKPOINTS.items():
        checkpoint = load_checkpoint(ROOT / path)
        values[name] = flops_per_window(checkpoint.model, checkpoint.window) / 1e6
    for name, (path, assignments) in MFLOP_CONFIGS.items():
        config = override(load_config(ROOT / path), assignments)
        values[name] = flops_per_window(ResidualBiLSTM(config.model), config.data.window) / 1e6
    values["cut_32_units"] = 1 - values["3x3_32_units"] / values["uci_har_3x3"]  # what narrowing saves
    values["cut_2x2"] = 1 - values["uci_har_2x2_fleet"] / values["uci_har_3x3"]  # and fewer layers
    return values


# --- the data: the HAPT recordings the hapt: sources and training read --------------------------------


def hapt(ws: Workspace) -> Values:
    """Sessions and subjects in the HAPT recordings (model.data.recordings.load_hapt, which training and
    every ``hapt:`` source read), and where gravity lies in them: the mean acceleration (g) of the
    samples labelled standing, and of those labelled laying, on x (docs/own-wearable.md)."""
    import numpy as np

    from model.data.recordings import load_hapt

    recordings = load_hapt()
    values = np.concatenate([r.values[:, :3] for r in recordings])  # acc_x, acc_y, acc_z
    labels = np.concatenate([r.labels for r in recordings])
    classes = recordings[0].classes
    standing, laying = (values[labels == classes.index(c)].mean(axis=0) for c in ("STANDING", "LAYING"))
    return {"sessions": len(recordings), "subjects": len({r.subject for r in recordings}),
            "standing_acc_x": float(standing[0]), "standing_acc_y": float(standing[1]),
            "laying_acc_x": float(laying[0])}  # fmt: skip


# --- the ONNX export -------------------------------------------------------------------------------------

EXPORT = f"harstream export --checkpoint {DEFAULT} --out export.onnx"


def onnx_export(ws: Workspace) -> Values:
    """The LSTM operators in the default model's export (docs/onnx.md: one per ``nn.LSTM``)."""
    import onnx

    ws.harstream(EXPORT)
    graph = onnx.load(str(ws.folder / "export.onnx")).graph
    return {"lstm_operators": sum(node.op_type == "LSTM" for node in graph.node)}


# --- calibration: the fixed protocol on the nine test subjects (docs/own-wearable.md) -----------------

CALIBRATION = "python -m model.train.calibration --report"
CALIBRATION_TURNED = "python -m model.train.calibration --report --turned"
CALIBRATION_SELECT = "python -m model.train.calibration --select"
# the values the docs state: the whole --report table; of --turned, the totals and the subjects' range
SCORES = ("windows", "base", "calibrated")
CALIBRATION_KEYS = (*SCORES, *(f"subject_{s}_{k}" for s in SUBJECTS for k in SCORES))
TURNED_KEYS = ("base", "calibrated", "subject_calibrated_min", "subject_calibrated_max", "subject_2_base",
               "subject_2_calibrated")  # fmt: skip


def calibration(command: str, keep: tuple[str, ...] = ()) -> Callable[[Workspace], Values]:
    """``--report``'s table (``--turned``: every recording a quarter turn about z): windows and
    accuracy per test subject and in all, before and after calibration with the defaults, and the
    range of the calibrated accuracies over subjects; ``keep``: only these values (those the docs
    state)."""

    def compute(ws: Workspace) -> Values:
        result = json.loads(ws.python(f"{command} --json"))
        values: Values = {"windows": result["n"], "base": result["overall"]["base"],
                          "calibrated": result["overall"]["calibrated"]}  # fmt: skip
        for row in result["rows"]:
            for key in SCORES:
                values[f"subject_{row['subject']}_{key}"] = row["n" if key == "windows" else key]
        calibrated = [row["calibrated"] for row in result["rows"]]
        values["subject_calibrated_min"], values["subject_calibrated_max"] = min(calibrated), max(calibrated)
        return {k: values[k] for k in keep} if keep else values

    return compute


def calibration_select(ws: Workspace) -> Values:
    """``--select``: the settings grid scored on the first sessions; its range against the base."""
    result = json.loads(ws.python(f"{CALIBRATION_SELECT} --json"))
    grid = [v for k, v in result["overall"].items() if k.startswith("calibrated")]
    return {"windows": result["n"], "base": result["overall"]["base"], "grid_min": min(grid),
            "grid_max": max(grid)}  # fmt: skip


FIGURES = (
    Figure("store_replay", (STORE_REPLAY, HISTORY_JSON), store_replay, 60),
    Figure("agreement", (STORE_REPLAY, AGREEMENT), agreement, 60),
    Figure("live_replay", (LIVE_REPLAY,), live_replay(None), 50),
    Figure("live_replay_fleet", (f"{LIVE_REPLAY} --checkpoint {FLEET}",), live_replay(FLEET), 25),
    Figure("evaluate", (EVALUATE + DEFAULT,), evaluate(EVALUATE + DEFAULT), 40),
    Figure("evaluate_fleet", (EVALUATE + FLEET,), evaluate(EVALUATE + FLEET), 25),
    Figure("mflop", (f"python -m streamer.tools.bench_models {DEFAULT} {FLEET} --rounds 1",
                     "python -m streamer.tools.figures --only mflop"), mflop, 5, ci=True),
    Figure("hapt", ("python -m streamer.tools.figures --only hapt",), hapt, 2, ci=True),
    Figure("onnx_export", (EXPORT,), onnx_export, 6, ci=True),
    Figure("calibration", (CALIBRATION,), calibration(CALIBRATION, CALIBRATION_KEYS), 15),
    Figure("calibration_turned", (CALIBRATION_TURNED,), calibration(CALIBRATION_TURNED, TURNED_KEYS), 15),
    Figure("calibration_select", (CALIBRATION_SELECT,), calibration_select, 60),
)  # fmt: skip
BY_NAME = {f.name: f for f in FIGURES}


def rounded(values: Values) -> Values:
    return {k: round(v, DIGITS) if isinstance(v, float) else v for k, v in values.items()}


def compute(names: list[str], ws: Workspace) -> dict[str, Values]:
    return {name: rounded(BY_NAME[name].compute(ws)) for name in names}


def stored(path: Path = FIGURES_JSON) -> dict[str, dict]:
    """docs/figures.json's figures: name -> {"commands", "date", "seconds", "ci", "values"}."""
    return json.loads(path.read_text(encoding="utf-8"))["figures"]


def differences(name: str, old: Values | None, new: Values) -> list[str]:
    """One line per value of ``name`` that changed, appeared or went."""
    old = old or {}
    return [f"{name}.{k}: {old.get(k)} in {FIGURES_JSON.name}, now {new.get(k)}"
            for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]  # fmt: skip


def write(values: dict[str, Values], path: Path = FIGURES_JSON) -> None:
    figures = stored(path) if path.exists() else {}
    today = date.today().isoformat()
    for name, new in values.items():
        figure = BY_NAME[name]
        figures[name] = {"commands": list(figure.commands), "date": today, "seconds": figure.seconds,
                         "ci": figure.ci, "values": new}  # fmt: skip
    ordered = {f.name: figures[f.name] for f in FIGURES if f.name in figures}
    path.write_text(dumps({"about": "python -m streamer.tools.figures --write; the docs mark each value "
                           "<!-- figure: NAME.KEY -->", "figures": ordered}, indent=1) + "\n",
                    encoding="utf-8")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m streamer.tools.figures", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--only", action="append", choices=list(BY_NAME), metavar="NAME",
                   help="only this figure (repeatable); --list names them")  # fmt: skip
    what = p.add_mutually_exclusive_group()
    what.add_argument("--list", action="store_true", help="the figures, their commands and cost")
    what.add_argument("--write", action="store_true", help="store the values in docs/figures.json")
    what.add_argument("--check", action="store_true", help="exit 1 naming each value that differs from it")
    args = p.parse_args(argv)
    names = args.only or list(BY_NAME)
    if args.list:
        for name in names:
            figure = BY_NAME[name]
            print(f"{name}  (about {figure.seconds} s{', recomputed by the tests' if figure.ci else ''})")
            for command in figure.commands:
                print(f"    {command}")
        return 0
    with tempfile.TemporaryDirectory(prefix="harstream-figures-") as folder:
        values = compute(names, Workspace(Path(folder)))
    if args.write:
        write(values)
        print(f"wrote {len(values)} figures to {FIGURES_JSON.relative_to(ROOT)}")
    elif args.check:
        old = {name: figure["values"] for name, figure in stored().items()}
        changed = [line for name in names for line in differences(name, old.get(name), values[name])]
        for line in changed:
            print(line)
        print(f"{len(names)} figures: " + (f"{len(changed)} values differ" if changed else "all as stored"))
        return 1 if changed else 0
    else:
        print(dumps(values, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
