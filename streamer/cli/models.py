"""The commands about models and data files: ``evaluate`` (a checkpoint scored on a split rebuilt
from its config), ``export`` (ONNX) and ``download`` (a public dataset, checked and extracted)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from model.data.download import ARCHIVES, DownloadError, download
from model.net.checkpoint_meta import CheckpointMeta
from model.net.onnx_export import export_checkpoint, operator_counts
from model.strict_json import dumps
from model.train.report import confusion_table, per_class_table
from streamer.cli.live_options import add_backend_option
from streamer.errors import CliError
from streamer.live import DEFAULT_CHECKPOINT, live_engine, open_checkpoint
from streamer.options import MAX_THREADS, count


def cmd_evaluate(args: argparse.Namespace) -> int:
    meta, metrics, same_data = evaluation(args)
    if args.json:
        keys = ("accuracy", "f1_weighted", "f1_macro", "n_windows", "f1_weighted_no_null", "f1_macro_no_null",
                "per_class", "confusion")
        summary = {k: metrics[k] for k in keys if k in metrics} | {"split": args.split}
        print(dumps(summary | {"data_fingerprint_matches": same_data}))
    else:
        print_evaluation(meta.classes, metrics, args.split, same_data)
    return 0


def evaluation(args: argparse.Namespace) -> tuple[CheckpointMeta, dict, bool]:
    """The checkpoint's metadata, its metrics on ``--split`` (the data rebuilt from its config),
    and whether those windows are the ones it was trained and scored on."""
    # deferred: the datasets read with pandas and the metrics need scikit-learn (a second to import)
    from model.train.experiment import build_splits, from_dict, null_class, with_data_path
    from model.train.metrics import summarise

    meta = open_checkpoint(args.checkpoint)
    if "config" not in meta:  # the live path needs none; evaluation rebuilds the data from it
        raise CliError(f"{args.checkpoint} records no training config, so its data cannot be rebuilt")
    config = from_dict(meta["config"], f"{args.checkpoint} config")
    if args.data_dir or args.data_zip:
        config = with_data_path(config, args.data_zip or args.data_dir)
    engine = live_engine(args.checkpoint, args.backend, args.threads, max_batch=512)
    splits = build_splits(config)
    windows = splits.by_name(args.split)
    if len(windows) == 0:
        raise CliError(f"the {args.split} split of {args.checkpoint} is empty (this config has no "
                       f"{args.split} subjects or runs): try --split test")  # fmt: skip
    predicted = engine.probabilities_of(windows.x).argmax(axis=1)
    metrics = summarise(windows.y, predicted, meta.classes, null_class(config))
    return meta, metrics, splits.fingerprint == meta.get("data_fingerprint")


def print_evaluation(classes: tuple[str, ...], metrics: dict, split: str, same_data: bool) -> None:

    console = Console()
    console.print(per_class_table(metrics, classes, title=f"{split}, per class"))
    console.print(confusion_table(metrics, classes))
    console.print(
        f"[bold]{split}[/]: accuracy {metrics['accuracy']:.4f}, weighted F1 "
        f"{metrics['f1_weighted']:.4f}, macro F1 {metrics['f1_macro']:.4f} on "
        f"{metrics['n_windows']} windows"
    )
    if not same_data:
        console.print("[yellow]note: these windows differ from the ones the model was trained and scored on")


def cmd_export(args: argparse.Namespace) -> int:
    meta = open_checkpoint(args.checkpoint)
    out = export_checkpoint(args.checkpoint, args.out)  # by default where --backend onnx looks first
    lstm = operator_counts(out).get("LSTM", 0)
    network = meta.network
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {lstm} ONNX LSTM operators): features float32 "
          f"[batch, {meta.window}, {network.n_inputs}] -> probabilities [batch, {network.n_classes}]")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    try:
        marker = download(args.dataset, args.to, url=args.url)
    except DownloadError as error:
        raise CliError(str(error)) from None
    print(f"{args.dataset}: extracted under {args.to} ({marker.relative_to(args.to)} checked)")
    print("next: " + ARCHIVES[args.dataset].usage.format(root=args.to))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    # each command's help, description and examples: streamer/cli/table.py
    p = sub.add_parser("evaluate")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, metavar="FILE.pt",
                   help="the model to score (default: the shipped model/weights/uci_har_3x3.pt)")
    p.add_argument("--split", choices=("train", "val", "test"), default="test",
                   help="the windows to score it on (default test)")
    p.add_argument("--data-dir", metavar="FOLDER",
                   help="dataset folder, for checkpoints trained on a folder dataset")
    p.add_argument("--data-zip", metavar="FILE", help="dataset zip (OpportunityUCIDataset.zip)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--threads", type=count(0, MAX_THREADS), default=0, metavar="N",
                   help="intra-op threads (default 0: the library's own)")
    add_backend_option(p)
    p.set_defaults(run=cmd_evaluate)

    p = sub.add_parser("export")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, metavar="FILE.pt",
                   help="the model to export (default: the shipped model)")
    p.add_argument("--format", choices=("onnx",), default="onnx", help="the only format so far: onnx")
    p.add_argument("--out", type=Path, metavar="FILE.onnx", help="output file (default: where --backend "
                   "onnx looks: the checkpoint's path with .onnx, or the user's cache where that folder is "
                   "read-only)")
    p.set_defaults(run=cmd_export)

    p = sub.add_parser("download")
    p.add_argument("dataset", choices=("opportunity", "uci-har"),
                   help="opportunity (OPPORTUNITY: 18 gestures, or locomotion) or uci-har (UCI HAR: six "
                   "activities)")
    p.add_argument("--to", type=Path, default=Path("data"), metavar="FOLDER",
                   help="folder to extract into (default data/)")
    p.add_argument("--url", help=argparse.SUPPRESS)  # a mirror; the tests use a local server
    p.set_defaults(run=cmd_download)
