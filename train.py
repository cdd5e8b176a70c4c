"""Train the residual bidirectional LSTM: ``python train.py --config configs/<name>.toml``.

Data-parallel on N processes: ``torchrun --nproc_per_node=N train.py --config ...`` (gloo on
CPU, nccl with ``--device cuda``; see model/train/distributed.py). Rank 0 prints and saves.

The epoch kept is the one that scores best on the validation subjects (``train.keep = "best"``)
or the schedule's last (``"last"``, for a refit on every training subject once cross-validation
chose the recipe: ``--fold K/N`` validates on the K-th of N folds of the training subjects and
never scores test). The test subjects are scored once, at the end, with the kept weights.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from rich.console import Console

from model.config import ExperimentConfig
from model.data.datasets import Splits, parse_fold
from model.extras import missing_package
from model.net.checkpoint_meta import CheckpointError, CheckpointMeta, meta_path
from model.strict_json import dumps
from model.train.experiment import (
    ConfigError,
    build_splits,
    load_config,
    null_class,
    override,
    with_data_path,
    with_train,
)
from streamer.options import OneLineParser, count

try:  # PyTorch and the rest of the training stack are the `train` extra: without them, one line
    import torch

    from model.net.checkpoint import save_checkpoint
    from model.train import distributed
    from model.train.report import confusion_table, per_class_table, save_confusion_png
    from model.train.training import EpochRecord, FitResult, NonFiniteError, RecipeError, evaluate, fit
except ModuleNotFoundError as error:
    if __name__ != "__main__" or not missing_package(error):
        raise
    raise SystemExit(f"train.py: {missing_package(error)}") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="experiment TOML file (configs/...)")
    p.add_argument("--epochs", type=count(1, 1_000_000), help="override train.epochs")
    p.add_argument("--seed", type=count(0, 2**63 - 1), help="override train.seed")
    p.add_argument("--out", help="checkpoint path (default model/weights/<name>.pt; with --fold, "
                   "saves the fold's model, test not scored)")
    p.add_argument("--data-dir", help="dataset folder ('UCI HAR Dataset', CSV recordings, OPPORTUNITY)")
    p.add_argument("--data-zip", metavar="FILE", help="dataset zip (OpportunityUCIDataset.zip)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1 ...")
    p.add_argument(
        "--no-test",
        action="store_true",
        help="skip the test split (for choosing a recipe on validation alone)",
    )
    p.add_argument(
        "--fold",
        metavar="K/N",
        help="validate on cross-validation fold K of N over the training subjects (implies --no-test)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override any config field, e.g. --set model.n_hidden=64",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        context = distributed.setup(args.device)
    except (distributed.DeviceError, RuntimeError) as error:  # no GPU, or no process group: one line
        print(f"train.py: {error}", file=sys.stderr)
        return 1
    try:
        return run(args, context, argv)
    except KeyboardInterrupt:  # Ctrl-C outside the epochs (building windows, scoring test): one line
        if context.is_main:
            print("train.py: interrupted; nothing saved", file=sys.stderr)
        return 130
    finally:
        distributed.teardown(context)


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Ctrl-C waits until the block is done: the weights and their metadata are written as a pair
    or not at all (a .pt without its .json is refused by every command)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def experiment_config(args: argparse.Namespace) -> ExperimentConfig:
    """The config file with the command line's changes; ConfigError for a mistake in either."""
    config = override(load_config(args.config), args.set)
    if args.data_dir or args.data_zip:
        config = with_data_path(config, args.data_zip or args.data_dir)
    if args.epochs is not None:
        config = with_train(config, epochs=args.epochs)
    if args.seed is not None:
        config = with_train(config, seed=args.seed)
    return config


def run(args: argparse.Namespace, context: distributed.Context, argv: list[str] | None) -> int:
    console = Console(quiet=not context.is_main)  # under torchrun only rank 0 reports
    try:
        config = experiment_config(args)
    except ConfigError as error:  # a typo in a file or a --set: one line, with a suggestion
        if context.is_main:
            print(f"train.py: {error}", file=sys.stderr)
        return 1
    out = Path(args.out or f"model/weights/{config.name}.pt")
    try:
        fold = parse_fold(args.fold)
    except ValueError as error:
        print(f"train.py: {error}", file=sys.stderr)
        return 1

    started = time.perf_counter()
    try:
        with console.status("building windows from the recordings..."):
            splits = build_splits(config, fold)
    except (FileNotFoundError, ValueError) as error:  # missing or malformed data: one line, no traceback
        if context.is_main:
            print(f"train.py: {error}", file=sys.stderr)
        return 1
    describe(console, config, splits, fold, context)

    classes = config.classes
    result = train(console, config, splits, context, out)
    if isinstance(result, int):  # refused, or interrupted: said in one line
        return result
    digests = None
    if context.distributed:  # every rank must hold the same weights: compare them byte for byte
        digests = distributed.replica_digests(result.model)
        if len(set(digests)) != 1:
            raise RuntimeError(f"DDP replicas diverged: parameter digests {digests}")
        console.print(
            f"{context.world_size} ranks ({context.backend}) in sync: identical parameters, "
            f"sha256 {digests[0][:16]}"
        )
        if not context.is_main:
            return 0
    scored = not (args.no_test or fold)
    if not scored:
        report_kept(console, result)
        if not args.out:  # a fold's model is kept only when asked for (an ensemble's, a teacher's)
            return 0
    test = evaluate(result.model, splits.test, classes, null_class(config)) if scored else {}
    wall = time.perf_counter() - started
    if scored:
        report_test(console, config, result, test, has_val=len(splits.val) > 0, wall=wall)

    ddp = distributed.run_record(context, config.train.batch_size, digests) if digests else None
    meta = CheckpointMeta.from_training(
        meta_path(out), config,
        normalisation=(result.model.feature_mean.tolist(), result.model.feature_std.tolist()),
        best_epoch=result.best_epoch,
        val=result.best_val if len(splits.val) else None,
        test=test,
        history=[asdict(r) for r in result.history],
        data_fingerprint=splits.fingerprint,
        command=command_line(context, argv),
        train_seconds=result.seconds,
        wall_seconds=wall,
        machine=f"{platform.machine()}, {torch.get_num_threads()} torch threads, device {args.device}",
        torch_version=torch.__version__,
        distributed=ddp,
    )  # fmt: skip
    try:
        with interrupts_deferred():
            save_checkpoint(out, result.model, meta)
    except CheckpointError as error:  # non-finite weights: refused, where a NaN model used to exit 0
        print(f"train.py: {error}", file=sys.stderr)
        return 1
    png = None
    if scored:
        out.with_suffix(".report.json").write_text(dumps(test, indent=2) + "\n")
        png = save_confusion_png(test, classes, out.with_suffix(".confusion.png"))
    console.print(f"saved {out} and {out.with_suffix('.json')}" + (f", {png}" if png else ""))
    return 0


def train(console: Console, config: ExperimentConfig, splits: Splits, context: distributed.Context,
          out: Path) -> FitResult | int:  # fmt: skip
    """The fitted model, a line per epoch; or the exit code after one line saying why there is none."""
    finished: list[int] = []

    def on_epoch(r: EpochRecord) -> None:
        finished.append(r.epoch)
        val = f"  val acc {r.val_accuracy:.4f}  val F1 {r.val_f1:.4f}" if len(splits.val) else ""
        epoch = f"epoch {r.epoch:4d}/{config.train.epochs}"
        console.print(f"{epoch}  loss {r.loss:.4f}{val}  lr {r.lr:.2e}  {r.seconds:.1f}s")

    try:
        return fit(config, splits.train, splits.val, config.classes, config.preprocessing.features, on_epoch,
                   device=context.device)  # fmt: skip
    except (RecipeError, NonFiniteError) as error:  # a setting these windows cannot train with, or a NaN
        print(f"train.py: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # the kept epoch lives in memory only: say what is (and is not) on disk
        if context.is_main:
            kept = f"{out} is as it was" if out.exists() else f"{out} not written"
            print(f"train.py: interrupted in epoch {len(finished) + 1} of {config.train.epochs}; "
                  f"nothing saved ({kept})", file=sys.stderr)  # fmt: skip
        return 130


def report_kept(console: Console, result: FitResult) -> None:
    """A fold's (or an unscored run's) one line: the kept epoch beside the last, on validation."""
    last = result.history[-1]
    console.print(
        f"kept epoch {result.best_epoch}: validation {result.best_val['accuracy']:.4f} "
        f"accuracy, {result.best_val['f1_weighted']:.4f} weighted F1; last epoch {last.epoch}: "
        f"{last.val_accuracy:.4f} accuracy, {last.val_f1:.4f} weighted F1 (test not scored)"
    )


def describe(console: Console, config: ExperimentConfig, splits: Splits, fold: tuple[int, int] | None,
             context: distributed.Context) -> None:  # fmt: skip
    """What is about to be trained: window counts, the fold's subjects, the per-rank batch."""
    console.print(
        f"[bold]{config.name}[/]: {len(splits.train)} train, {len(splits.val)} validation, "
        f"{len(splits.test)} test windows of {config.data.window}x{len(config.preprocessing.features)}; "
        f"data {splits.fingerprint}"
    )
    if fold:
        held_out = sorted(set(splits.val.subjects), key=lambda s: (len(s), s))
        console.print(f"fold {fold[0]}/{fold[1]}: validation subjects {' '.join(held_out)}")
    if config.train.batch_size % context.world_size:
        console.print(
            f"[yellow]note: batch {config.train.batch_size} over {context.world_size} processes is "
            f"{config.train.batch_size // context.world_size} per rank: a global batch of "
            f"{config.train.batch_size // context.world_size * context.world_size}"
        )


def report_test(console: Console, config: ExperimentConfig, result: FitResult, test: dict, *, has_val: bool,
                wall: float) -> None:  # fmt: skip
    """The test scores, scored once: per class, the confusion matrix, one summary line."""
    classes = config.classes
    console.print(per_class_table(test, classes, title="test, per class"))
    console.print(confusion_table(test, classes))
    kept = (
        f"validation {config.train.select_on} {result.best_val[config.train.select_on]:.4f}"
        if has_val
        else "the schedule's last; no validation subjects"
    )
    console.print(
        f"[bold]kept epoch {result.best_epoch}[/] ({kept}); [bold]test accuracy {test['accuracy']:.4f}, "
        f"weighted F1 {test['f1_weighted']:.4f}[/], macro F1 {test['f1_macro']:.4f} "
        f"on {test['n_windows']} windows; {wall / 60:.1f} min"
    )
    if "f1_weighted_no_null" in test:
        console.print(
            f"without Null: weighted F1 {test['f1_weighted_no_null']:.4f}, "
            f"macro F1 {test['f1_macro_no_null']:.4f}"
        )


def command_line(context: distributed.Context, argv: list[str] | None) -> str:
    """The command that trained the model, as the metadata records it."""
    launcher = f"torchrun --nproc_per_node={context.world_size} " if context.distributed else "python "
    return launcher + "train.py " + shlex.join(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    raise SystemExit(main())
