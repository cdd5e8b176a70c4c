"""Score the average of several trained networks' predictions: choosing an ensemble (or a teacher
for distillation, ``train.teachers``) by cross-validation, as train.py chooses a recipe.

    python -m model.train.ensemble --config configs/uci_har_3x3_tuned.toml --fold 1/3 a.pt b.pt c.pt
    python -m model.train.ensemble --config configs/uci_har_3x3_tuned.toml --split test a.pt b.pt c.pt

Each checkpoint's probabilities on the split's windows are averaged; the line printed per member
and for the average gives accuracy and weighted F1. With ``--fold`` the members must be that fold's
models (``train.py --fold K/N --out ...``): a model that trained on the fold's validation subjects
would score itself. Test is for reporting, once, after the choice.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from model.data.datasets import parse_fold
from model.net.checkpoint import load_checkpoint
from model.strict_json import dumps
from model.train.experiment import ConfigError, build_splits, load_config, null_class, override
from model.train.metrics import summarise
from model.train.training import predict_proba


def average_probabilities(paths: list[str], x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """The members' mean class probabilities on windows ``x`` (N, T, F), and each member's."""
    members = [predict_proba(load_checkpoint(p).model, x) for p in paths]
    return np.mean(members, axis=0), members


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="trained models (.pt, their .json beside them)")
    p.add_argument("--config", required=True, help="the experiment whose windows to score on")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--fold", metavar="K/N", help="the validation subjects of fold K of N")
    where.add_argument("--split", choices=("val", "test"), help="the config's own split")
    p.add_argument("--json", action="store_true", help="print the scores as one JSON object")
    args = p.parse_args(argv)
    try:
        config = override(load_config(args.config), args.set)
        fold = parse_fold(args.fold)
        splits = build_splits(config, fold)
        windows = splits.val if fold else splits.by_name(args.split)
        mean, members = average_probabilities(args.checkpoints, windows.x)
    except (ConfigError, ValueError, OSError) as error:  # CheckpointError is a ValueError
        print(f"model.train.ensemble: {error}", file=sys.stderr)
        return 1
    classes, null = config.classes, null_class(config)
    scores = {
        path: summarise(windows.y, m.argmax(1), classes, null)
        for path, m in zip(args.checkpoints, members, strict=True)
    }
    average = summarise(windows.y, mean.argmax(1), classes, null)
    if args.json:
        print(dumps({"members": {k: _brief(v) for k, v in scores.items()}, "average": _brief(average)}))
        return 0
    for path, s in scores.items():
        print(f"{path}: accuracy {s['accuracy']:.4f}, weighted F1 {s['f1_weighted']:.4f}")
    print(f"average of {len(members)}: accuracy {average['accuracy']:.4f}, weighted F1 "
          f"{average['f1_weighted']:.4f} on {len(windows)} windows")  # fmt: skip
    return 0


def _brief(scores: dict) -> dict:
    return {k: scores[k] for k in ("accuracy", "f1_weighted", "f1_macro", "n_windows")}


if __name__ == "__main__":
    raise SystemExit(main())
