"""Per-wearer calibration: a base checkpoint adapted to one wearer from a few labelled seconds.

    harstream calibrate --checkpoint BASE.pt --recording CSV... --out wearer.pt
    python -m model.train.calibration --report [--json]      # the fixed protocol on HAPT's test subjects

What it does, in order:

1. **Axes.** Where the wearer's gravity (the mean total acceleration of its labelled calibration
   windows, each class weighted alike) lies more than ``ROTATE_DEG`` from the model's (the
   training windows' mean total acceleration, :attr:`CheckpointMeta.gravity`), the device
   is worn another way up: the smallest rotation that maps the one onto the other goes into the
   calibrated checkpoint's preprocessing (``preprocessing.rotation``), applied to acc and gyro
   before the filters, by the calibration windows and by the live path alike. Closer than that, the
   difference is how this wearer stands and sits, which is what step 3 learns: rotating it away
   would erase it.
2. **Data.** At most ``seconds`` (20) of each activity, the first labelled samples of each class in
   the order given, cut into windows with the training code (:func:`model.data.datasets.stream_windows`) at
   a step of 16; a window counts only when every one of its samples is among those seconds.
3. **Adaptation.** Only the classifier layer (and, with ``--adapt norm``, the last block's
   LayerNorm) is trained, full batch, Adam, ``steps`` steps, on cross-entropy plus an L2 pull toward
   the base weights (L2-SP, ``l2`` times the squared distance): the frozen network's features are
   computed once, so calibrating takes seconds on a CPU.

The defaults (which parameters, steps, L2 strength, the rotation threshold) were chosen on the
test subjects' *first* sessions only (calibrate on their first 20 s per activity, score the rest of
the first session): ``--select`` prints that grid; the second sessions are scored once, by
``--report``, with the chosen defaults.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from model.config import DataConfig
from model.data.datasets import WindowSet, stream_windows
from model.data.recordings import UCI_HAR_TEST_SUBJECTS, Recording, load_hapt
from model.data.signals import PreprocessingSpec, preprocessing_kind
from model.net.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from model.net.checkpoint_meta import CheckpointMeta, meta_path

SECONDS = 20.0  # per activity, at most
STEP = 16  # samples between calibration windows
ROTATE_DEG = 45.0  # gravity further than this from the model's: the device's axes are rotated
ADAPT = "bias"  # "classifier": its weights too; "norm": and the last block's LayerNorm
STEPS = 20
LR = 0.01
L2 = 10.0  # L2-SP: the pull toward the base weights
EVAL_STEP = 64  # windows scored by the protocol (the evaluation's step)


class CalibrationError(ValueError):
    """Input that cannot calibrate: one line."""


@dataclass
class Calibration:
    model: nn.Module
    meta: CheckpointMeta
    rotation: np.ndarray | None
    windows_per_class: dict[str, int]
    angle_deg: float | None


def _data(meta: CheckpointMeta, step: int) -> DataConfig:
    rule = ((meta.config or {}).get("data") or {}).get("label_rule", "all")
    return DataConfig(window=meta.window, step=step, rate_hz=meta.rate_hz, label_rule=rule)


def first_seconds(recordings: Sequence[Recording], n_classes: int, samples: int) -> list[np.ndarray]:
    """Per recording, a mask of the samples that are among the first ``samples`` labelled samples
    of their class, counting through the recordings in order."""
    taken = np.zeros(n_classes, dtype=np.int64)
    masks = []
    for r in recordings:
        mask = np.zeros(len(r.labels), dtype=bool)
        for c in range(n_classes):
            where = np.flatnonzero(r.labels == c)[: max(samples - taken[c], 0)]
            mask[where] = True
            taken[c] += len(where)
        masks.append(mask)
    return masks


def windows(recordings: Sequence[Recording], meta: CheckpointMeta, spec: PreprocessingSpec, step: int,
            masks: Sequence[np.ndarray] | None = None, exclude: bool = False) -> WindowSet:  # fmt: skip
    """Labelled windows cut as training cuts them (lost readings as the live path treats them:
    :func:`model.data.datasets.live_streams`); with ``masks``, only windows wholly inside the mask (or,
    ``exclude``, wholly outside it)."""
    data = _data(meta, step)
    parts = [stream_windows(r, data, spec, None if masks is None else masks[i], exclude)
             for i, r in enumerate(recordings)]  # fmt: skip
    return WindowSet.concat(parts, meta.window, len(spec.features))


def _gravity(x: np.ndarray, y: np.ndarray, spec: PreprocessingSpec) -> np.ndarray | None:
    """Where gravity points in windows ``x`` labelled ``y``, each class weighted alike."""
    idx = spec.gravity
    if idx is None or not len(y):
        return None
    means = [x[y == c][..., list(idx)].mean(axis=(0, 1)) for c in np.unique(y)]
    g = np.mean(means, axis=0)
    n = np.linalg.norm(g)
    return g / n if n > 0 else None


def smallest_rotation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The rotation R (3x3) of least angle with R a = b, for unit vectors a and b."""
    v, c = np.cross(a, b), float(a @ b)
    if c < -1 + 1e-9:  # opposite: half a turn about any axis perpendicular to a
        axis = np.cross(a, np.eye(3)[int(np.argmin(np.abs(a)))])
        axis /= np.linalg.norm(axis)
        return 2 * np.outer(axis, axis) - np.eye(3)
    k = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + k + k @ k / (1 + c)


def _head(model: nn.Module, adapt: str) -> tuple[nn.Module, list[str]]:
    """The adapted part: a module from cached features to logits, and its parameters' names."""
    if adapt == "classifier":
        return model.classifier, ["classifier.weight", "classifier.bias"]
    if adapt == "bias":  # the class priors alone
        return model.classifier, ["classifier.bias"]
    if adapt == "norm":
        last = len(model.blocks) - 1
        head = nn.Sequential(model.blocks[last].norm, model.readout, model.classifier)
        return head, [f"blocks.{last}.norm.weight", f"blocks.{last}.norm.bias", "classifier.weight",
                      "classifier.bias"]  # fmt: skip
    raise CalibrationError(f"--adapt must be classifier, bias or norm, not {adapt!r}")


@torch.no_grad()
def _features(model: nn.Module, x: np.ndarray, adapt: str) -> torch.Tensor:
    """What the adapted head reads, for windows ``x``: computed once, the rest is frozen."""
    model.eval()
    h = (torch.from_numpy(x) - model.feature_mean) / model.feature_std
    for block in model.blocks[:-1]:
        h = block(h)
    last = model.blocks[-1]
    y = last.layers[0](h)
    for layer in last.layers[1:]:
        y = y + layer(h)
    return y if adapt == "norm" else model.readout(last.norm(y))


def adapt_model(base: nn.Module, x: np.ndarray, y: np.ndarray, *, adapt: str = ADAPT, steps: int = STEPS,
                lr: float = LR, l2: float = L2, seed: int = 0) -> nn.Module:  # fmt: skip
    """A copy of ``base`` whose head is fitted to windows ``x`` labelled ``y`` with L2-SP."""
    torch.manual_seed(seed)
    model = copy.deepcopy(base).eval()
    head, _ = _head(model, adapt)
    features = _features(model, x, adapt)
    target = torch.from_numpy(np.asarray(y, dtype=np.int64))
    params = [model.classifier.bias] if adapt == "bias" else list(head.parameters())
    anchors = [p.detach().clone() for p in params]
    optimiser = torch.optim.Adam(params, lr=lr)
    for step in range(steps):
        optimiser.zero_grad()
        loss = nn.functional.cross_entropy(head(features), target)
        loss = loss + l2 * sum(((p - a) ** 2).sum() for p, a in zip(params, anchors, strict=True))
        loss.backward()
        optimiser.step()
        if not torch.isfinite(loss):  # a NaN bias would be saved and then refused by every live command
            raise CalibrationError(f"calibration step {step + 1}: the loss is {loss.item()}; nothing saved")
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, w: WindowSet) -> float:
    if not len(w):
        return float("nan")
    predicted = model(torch.from_numpy(w.x)).argmax(1).numpy()
    return float((predicted == w.y).mean())


def calibrate(base: Checkpoint, recordings: Sequence[Recording], *, seconds: float = SECONDS,
              step: int = STEP, adapt: str = ADAPT, steps: int = STEPS, l2: float = L2,
              rotate_deg: float = ROTATE_DEG, name: str | None = None,
              command: str = "") -> Calibration:  # fmt: skip
    """``base`` adapted to the wearer of ``recordings`` (labelled with the base's classes)."""
    if not recordings:
        raise CalibrationError("no recordings to calibrate on")
    meta, spec = base.meta, base.preprocessing
    samples = round(seconds * meta.rate_hz)
    masks = first_seconds(recordings, len(meta.classes), samples)
    w = windows(recordings, meta, spec, step, masks)
    if not len(w):
        raise CalibrationError(f"no labelled windows of {meta.window} samples within the first {seconds:g} s "
                               "of any activity: record longer stretches of each activity")  # fmt: skip
    rotation, angle = None, None
    wearer, model_g = _gravity(w.x, w.y, spec), meta.gravity
    if wearer is not None and model_g is not None and preprocessing_kind(spec.kind).rotates:
        angle = float(np.degrees(np.arccos(np.clip(wearer @ model_g, -1, 1))))
        if angle > rotate_deg:
            rotation = smallest_rotation(wearer, model_g)
            spec = replace(spec, rotation=tuple(tuple(float(v) for v in row) for row in rotation))
            w = windows(recordings, meta, spec, step, masks)
    model = adapt_model(base.model, w.x, w.y, adapt=adapt, steps=steps, l2=l2)
    counts = {meta.classes[c]: int((w.y == c).sum()) for c in range(len(meta.classes))}
    raw = json.loads(json.dumps(dict(meta.raw)))
    raw["name"] = name or f"{meta.name}-calibrated"
    if raw.get("config", {}).get("name") is not None:
        raw["config"]["name"] = raw["name"]
    if rotation is not None:
        raw["preprocessing"] = {**raw["preprocessing"], "rotation": spec.to_dict()["rotation"]}
    raw["calibration"] = {
        "base": str(base.path),
        "base_name": meta.name,
        "recordings": [r.name for r in recordings],
        "seconds_per_activity": seconds,
        "step": step,
        "windows_per_class": counts,
        "adapted": _head(model, adapt)[1],
        "steps": steps,
        "l2_sp": l2,
        "gravity_angle_deg": None if angle is None else round(angle, 1),
        "rotated": rotation is not None,
        "command": command,
    }
    new_meta = CheckpointMeta.from_dict(raw, Path("calibrated.json"))
    return Calibration(model, new_meta, rotation, counts, angle)


def save(calibration: Calibration, out: str | Path) -> CheckpointMeta:
    out = Path(out)
    meta = CheckpointMeta.from_dict(dict(calibration.meta.raw), meta_path(out))
    save_checkpoint(out, calibration.model, meta)
    return meta


# ---------------------------------------------------------------------------------------------
# The fixed protocol on HAPT's nine test subjects.


# the README's own MQTT example: gravity on -y where the model has it on +x (a quarter turn about z)
TURNED = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


def turn(recording: Recording, r: np.ndarray) -> Recording:
    """``recording`` as a device rotated by ``r`` would have recorded it (acc and gyro)."""
    values = recording.values.copy()
    values[:, :3] = values[:, :3] @ r.T
    values[:, 3:6] = values[:, 3:6] @ r.T
    return replace(recording, values=values)


def _sessions(subject: int, turned: bool = False) -> tuple[list[Recording], list[Recording]]:
    recordings = load_hapt((subject,))
    if turned:
        recordings = [turn(r, TURNED) for r in recordings]
    return recordings[:1], recordings[1:]


def protocol(base: Checkpoint, subjects: Sequence[int] = UCI_HAR_TEST_SUBJECTS, *, select: bool = False,
             grid: Sequence[dict[str, Any]] = ({},), turned: bool = False) -> dict[str, Any]:  # fmt: skip
    """Per subject: calibrate on the first ``SECONDS`` per activity of the first session; score every
    window (step 64) of the later sessions (``select``: the first session's windows that share no
    sample with the calibration seconds instead; the second sessions are not read)."""
    rows, t0 = [], time.perf_counter()
    for subject in subjects:
        first, later = _sessions(subject, turned)
        samples = round(SECONDS * base.rate_hz)
        if select:
            masks = first_seconds(first, len(base.classes), samples)
            scored = windows(first, base.meta, base.preprocessing, EVAL_STEP, masks, exclude=True)
        else:
            scored = windows(later, base.meta, base.preprocessing, EVAL_STEP)
        row: dict[str, Any] = {"subject": subject, "n": len(scored), "base": accuracy(base.model, scored)}
        for i, settings in enumerate(grid):
            t = time.perf_counter()
            cal = calibrate(base, first, **settings)
            spec = replace(base.preprocessing, rotation=cal.meta.preprocessing.rotation)
            test = scored if not spec.rotation else (
                windows(first, base.meta, spec, EVAL_STEP, first_seconds(first, len(base.classes), samples),
                        exclude=True) if select else windows(later, base.meta, spec, EVAL_STEP))  # fmt: skip
            row[f"calibrated{i or ''}"] = accuracy(cal.model, test)
            row.setdefault("seconds", round(time.perf_counter() - t, 2))
            row.setdefault("rotated", cal.rotation is not None)
            row.setdefault("calibration_windows", sum(cal.windows_per_class.values()))
        rows.append(row)
    total = sum(r["n"] for r in rows)
    scores = [k for k in rows[0] if k.startswith(("base", "calibrated"))]
    overall = {k: sum(r[k] * r["n"] for r in rows) / total for k in scores}
    return {"rows": rows, "overall": overall, "n": total, "grid": list(grid),
            "wall_seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip


def _table(result: dict[str, Any]) -> str:
    keys = [k for k in result["overall"]]
    lines = ["| subject | windows | " + " | ".join(keys) + " | rotated | calibration windows | seconds |",
             "| --- " * (len(keys) + 5) + "|"]  # fmt: skip
    for r in result["rows"]:
        rotated = "yes" if r["rotated"] else "no"
        lines.append(f"| {r['subject']} | {r['n']} | " + " | ".join(f"{r[k]:.3f}" for k in keys)
                     + f" | {rotated} | {r['calibration_windows']} | {r['seconds']} |")
    lines.append(f"| **all** | {result['n']} | " + " | ".join(f"**{result['overall'][k]:.4f}**" for k in keys)
                 + " | | | |")  # fmt: skip
    return "\n".join(lines)


SELECTION_GRID = tuple(
    {"adapt": adapt, "steps": steps, "l2": l2}
    for adapt in ("classifier", "bias")
    for steps in (20, 100)
    for l2 in (1.0, 10.0, 100.0)
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.train.calibration",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("model/weights/uci_har_3x3.pt"))
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--report", action="store_true", help="the fixed protocol: second sessions, scored once")
    how.add_argument("--select", action="store_true", help="the settings grid on the first sessions only")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--turned", action="store_true", help="every recording as a device worn with gravity "
                        "on -y (a quarter turn about z) would have recorded it")
    parser.add_argument("--subjects", type=lambda s: tuple(int(v) for v in s.split(",")),
                        default=UCI_HAR_TEST_SUBJECTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    base = load_checkpoint(args.checkpoint)
    if args.select:
        result = protocol(base, args.subjects, select=True, grid=SELECTION_GRID)
    else:
        result = protocol(base, args.subjects, turned=args.turned)
    if args.json:
        print(json.dumps(result))
    else:
        for i, g in enumerate(result["grid"]):
            print(f"calibrated{i or ''}: {g or 'defaults'}", file=sys.stderr)
        print(_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
