"""The ``harstream`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "model" / "weights" / "uci_har_3x3.pt"


class CliError(Exception):
    """A failure the user can fix; printed as one line, exit code 1."""


def cmd_evaluate(args: argparse.Namespace) -> int:
    from rich.console import Console

    from model.checkpoint import load_checkpoint
    from model.config import from_dict, override
    from model.datasets import build_splits, null_class
    from model.report import confusion_table, per_class_table
    from model.training import evaluate

    checkpoint = load_checkpoint(args.checkpoint)
    config = from_dict(checkpoint.meta["config"])
    if args.data_dir or args.data_zip:
        config = override(config, [f'data.path="{args.data_zip or args.data_dir}"'])
    splits = build_splits(config)
    metrics = evaluate(checkpoint.model, splits.by_name(args.split), checkpoint.classes, null_class(config))
    keys = ("accuracy", "f1_weighted", "f1_macro", "n_windows", "f1_weighted_no_null", "f1_macro_no_null")
    keys = tuple(k for k in keys if k in metrics)
    summary = {k: metrics[k] for k in keys} | {"split": args.split}
    same_data = splits.fingerprint == checkpoint.meta.get("data_fingerprint")
    if args.json:
        print(json.dumps(summary | {"data_fingerprint_matches": same_data}))
        return 0
    console = Console()
    console.print(per_class_table(metrics, checkpoint.classes, title=f"{args.split}, per class"))
    console.print(confusion_table(metrics, checkpoint.classes))
    console.print(
        f"[bold]{args.split}[/]: accuracy {metrics['accuracy']:.4f}, weighted F1 "
        f"{metrics['f1_weighted']:.4f}, macro F1 {metrics['f1_macro']:.4f} on "
        f"{metrics['n_windows']} windows"
    )
    if not same_data:
        console.print("[yellow]note: these windows differ from the ones the model was trained and scored on")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harstream", description="Real-time activity recognition for wearables."
    )
    parser.add_argument("--debug", action="store_true", help="full tracebacks and debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("evaluate", help="score a checkpoint on a data split")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    p.add_argument("--split", choices=("train", "val", "test"), default="test")
    p.add_argument("--data-dir", help="dataset folder, for checkpoints trained on a folder dataset")
    p.add_argument("--data-zip", metavar="FILE", help="dataset zip (OpportunityUCIDataset.zip)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(run=cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(message)s")
    try:
        return args.run(args)
    except KeyboardInterrupt:
        return 130
    except (CliError, FileNotFoundError, ValueError, OSError) as error:
        if args.debug:
            raise
        print(f"harstream {args.command}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
