"""The ``harstream`` command line: the parser, and the commands that are not about live wearables
(``evaluate``, ``replay``, ``soak``, ``export``, ``download``, ``bench``). The live plumbing they share
with ``mqtt``, ``serial``, ``publish`` and ``record`` (:mod:`streamer.commands.wearables_cli`) is in
:mod:`streamer.commands.live_command`."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from model.extras import missing_package
from model.strict_json import dumps
from streamer.commands.kit_cli import add_kit_commands
from streamer.commands.live_command import (
    DEFAULT_CHECKPOINT,
    CliError,
    LiveOptions,
    add_backend_option,
    add_live_options,
    live_engine,
    live_parts,
    open_checkpoint,
    run_live,
    say,
)
from streamer.commands.options import MAX_THREADS, OneLineParser, count, number
from streamer.commands.table import BY_NAME, CommandsAction, HelpFormatter, command_list
from streamer.commands.wearables_cli import add_wearable_commands

if TYPE_CHECKING:
    from rich.table import Table

    from model.net.checkpoint_meta import CheckpointMeta
    from replay.sources import Device

__all__ = ["DEFAULT_CHECKPOINT", "CliError", "build_parser", "main"]


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
    from rich.console import Console

    from model.train.report import confusion_table, per_class_table

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


def cmd_replay(args: argparse.Namespace) -> int:
    from replay.sources import ReplaySource

    specs = args.sources or ["hapt:2"]
    options = LiveOptions.from_args(args, checkpoint=replay_checkpoint(args.checkpoint, specs))
    checkpoint = open_checkpoint(options.checkpoint)
    sources = [ReplaySource(device, speed=args.speed) for device in replay_devices(specs, checkpoint)]
    pipeline, hop = live_parts(options, checkpoint, sources)
    speed = "as fast as possible" if args.speed == 0 else f"{args.speed:g}x real time"
    title = (f"harstream replay · {checkpoint.name} · {checkpoint.rate_hz:g} Hz · window {checkpoint.window} "
             f"hop {hop} · {speed} · Ctrl-C to stop")
    return run_live(options, pipeline, checkpoint.classes, title)


def replay_checkpoint(given: Path, specs: list[str]) -> Path:
    """The model to replay ``specs`` with: the shipped OPPORTUNITY one for OPPORTUNITY runs when
    none was chosen, else ``given``."""
    if given != DEFAULT_CHECKPOINT or not all(s.startswith("opportunity:") for s in specs):
        return given
    path = DEFAULT_CHECKPOINT.with_name("opportunity_18.pt")
    if not path.exists():
        raise CliError(f"no OPPORTUNITY model at {path}: train one with python train.py "
                       "--config configs/opportunity_18.toml --data-zip OpportunityUCIDataset.zip")
    return path


def replay_devices(specs: list[str], checkpoint: CheckpointMeta) -> list[Device]:
    """The devices that the SOURCE specs name, read in the checkpoint's channels and classes."""
    from replay.sources import Inputs, parse_source

    inputs = Inputs(checkpoint.input_channels, checkpoint.classes, checkpoint.rate_hz)
    devices = [device for spec in specs for device in parse_source(spec, inputs)]
    names = [d.name for d in devices]
    if len(set(names)) != len(names):
        raise CliError(f"the same device is named twice: {', '.join(names)}")
    devices, note = truth_by_name(devices, checkpoint.classes)
    if note:
        say(note)
    return devices


def truth_by_name(devices: list[Device], classes: tuple[str, ...]) -> tuple[list[Device], str | None]:
    """The devices with their recordings' labels as indices into the model's ``classes``, matched
    by name: a recording's labels index its own class list (HAPT's six for ``hapt:N``), which a model
    trained on other recordings does not share. A label the model does not know is no truth; the
    note (one line, or None) says which labels that left without truth."""
    import numpy as np

    from replay.sources import Device

    where = {name: i for i, name in enumerate(classes)}
    unknown: set[str] = set()
    out = []
    for device in devices:
        recordings = []
        for recording in device.recordings:
            if recording.classes == classes:
                recordings.append(recording)
                continue
            seen = np.unique(recording.labels[recording.labels >= 0])
            unknown |= {recording.classes[i] for i in seen if recording.classes[i] not in where}
            # the extra last entry: an unlabelled sample (-1) indexes it and stays -1
            lookup = np.array([where.get(name, -1) for name in recording.classes] + [-1], np.int64)
            recordings.append(replace(recording, labels=lookup[recording.labels], classes=classes))
        out.append(Device(device.name, recordings))
    if not unknown:
        return out, None
    names = ", ".join(sorted(unknown))
    if not any((r.labels >= 0).any() for d in out for r in d.recordings):
        return out, (f"no truth shown: the recordings' classes ({names}) are not the model's "
                     f"({', '.join(classes)})")  # fmt: skip
    return out, f"no truth shown for {names}: the model's classes ({', '.join(classes)}) do not name them"


def cmd_bench(args: argparse.Namespace) -> int:
    if args.fleet:
        return cmd_bench_fleet(args)
    import torch  # the baseline it measures against is the eager PyTorch model
    from rich.console import Console

    from model.net.checkpoint import load_checkpoint
    from streamer.tools.bench import run_bench

    torch.set_num_threads(args.threads)
    open_checkpoint(args.checkpoint)  # a missing one: the same line as everywhere
    checkpoint = load_checkpoint(args.checkpoint)
    stderr = Console(stderr=True)
    if stderr.is_terminal:  # minutes of work: say which stage it is at
        with stderr.status("harstream bench: starting") as status:
            result = run_bench(checkpoint, quick=args.quick, backend=args.backend,
                               progress=lambda stage: status.update(f"harstream bench: {stage}"))  # fmt: skip
    else:  # a log: one line per stage
        result = run_bench(checkpoint, quick=args.quick, backend=args.backend,
                           progress=lambda stage: stderr.print(f"harstream bench: {stage}"))  # fmt: skip
    if args.json:
        print(dumps(result))
    else:
        Console().print(bench_table(result, args.quick))
    return 0


def cmd_bench_fleet(args: argparse.Namespace) -> int:
    """``bench --fleet``: recognizer processes through mosquitto and RabbitMQ
    (streamer/tools/bench_fleet.py)."""
    from rich.console import Console

    from streamer.tools.bench_fleet import fleet_figures, fleet_table
    from streamer.tools.rabbitmq import rabbitmq_installed

    if not rabbitmq_installed():
        raise CliError("bench --fleet starts a private RabbitMQ: apt-get install -y rabbitmq-server")
    open_checkpoint(args.checkpoint)
    try:
        sizes = tuple(int(s) for s in args.fleet_sizes.split(","))
    except ValueError:
        raise CliError(f"--fleet-sizes wants device counts like 100,200, not {args.fleet_sizes!r}") from None
    stderr = Console(stderr=True)
    result = fleet_figures(args.checkpoint, sizes, args.fleet_seconds, backend=args.backend or "onnx",
                           progress=lambda stage: stderr.print(f"harstream bench: {stage}"))  # fmt: skip
    if args.json:
        print(dumps({"fleet": result}))
    else:
        Console().print(fleet_table(result))
    return 0


def bench_table(result: dict, quick: bool) -> Table:
    from rich.table import Table

    table = Table("figure", "value", title=f"harstream bench ({'quick' if quick else 'full'})")
    for key, value in result.items():
        if not isinstance(value, (dict, list)):
            table.add_row(key, f"{value:,.4g}" if isinstance(value, float) else str(value))
    for key, row in result["batches"].items():
        table.add_row(f"batch {key}", f"{row['windows_per_s']:,.0f} windows/s, p50 {row['p50_ms']:.1f} ms")
    for run in result["e2e_runs"]:
        table.add_row(f"e2e {run['devices']} devices", f"p99 {run['p99_ms']:.0f} ms, dropped "
                      f"{run['dropped']}, cpu {run['cpu_percent']:.0f}%, held {run['held']}")
    return table


def cmd_soak(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import Progress

    from streamer.tools.soak import run_soak

    plan = fault_plan(args) if args.faults else None
    checkpoint = open_checkpoint(args.checkpoint)
    engine = live_engine(args.checkpoint, args.backend, args.threads, max_batch=256)
    logging.getLogger("streamer").setLevel(logging.ERROR)  # thousands of hostile ids: the counters say it
    with Progress(console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(f"soak: {args.hours:g} h of traffic", total=1.0)
        result = run_soak(checkpoint, engine, hours=args.hours, good=args.good, hostile=args.hostile,
                          flood=args.flood, flood_every_s=args.flood_every,
                          progress=lambda done: progress.update(task, completed=done))  # fmt: skip
        if plan is not None:
            say = lambda stage: progress.update(task, description=stage)  # noqa: E731
            result["faults"] = fault_soak(args, checkpoint, plan, say)
    if args.json:
        print(dumps(result))
    else:
        Console().print_json(dumps(result))
    if plan is not None and not result["faults"]["accounted"]:
        print("harstream soak: the faults soak did not account for every good window (see \"accounted\" "
              "under faults)", file=sys.stderr)  # fmt: skip
        return 1
    return 0


def fault_plan(args: argparse.Namespace):  # -> streamer.tools.soak_faults.FaultPlan
    """``--faults``' plan, once its services are known to be here (else one line, exit 1)."""
    from streamer.tools.soak_faults import FaultPlan, unavailable

    missing = unavailable()
    if missing:
        raise CliError(missing)
    return FaultPlan(seconds=args.fault_seconds, good=args.good, freeze_s=args.freeze)


def fault_soak(args: argparse.Namespace, checkpoint: CheckpointMeta, plan, say) -> dict:
    from streamer.tools.broker import BrokerError
    from streamer.tools.postgres import PostgresError
    from streamer.tools.soak_faults import run_fault_soak

    try:
        return run_fault_soak(args.checkpoint, checkpoint, plan, args.backend, args.threads, say)
    except (BrokerError, PostgresError) as error:  # a service that did not start, or refused the worker
        raise CliError(" ".join(str(error).split())) from None


def add_soak_command(sub: argparse._SubParsersAction) -> None:
    """``harstream soak`` and its options (the in-process soak; ``--faults``: the services' faults)."""
    p = sub.add_parser("soak")  # its help, description and examples: streamer/commands/table.py
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, metavar="FILE.pt",
                   help="the model the devices' windows go through (default: the shipped model)")
    p.add_argument("--hours", type=number(0.001, 1000, unit="hours"), default=1.0, metavar="HOURS",
                   help="simulated hours of traffic (default 1)")
    p.add_argument("--good", type=count(0, 1000), default=10, metavar="N",
                   help="well-behaved devices (real held-out recordings; default %(default)s)")
    p.add_argument("--hostile", type=count(0, 1000), default=10, metavar="N",
                   help="devices that send a random attack every second (default %(default)s)")
    p.add_argument("--flood", type=count(0, 100_000), default=300, metavar="N",
                   help="new device ids in each flood (default 300)")
    p.add_argument("--flood-every", type=number(1, 1e6, zero=True, unit="s"), default=600.0,
                   metavar="SECONDS",
                   help="seconds between floods (default 600; 0: none)")
    p.add_argument("--threads", type=count(1, MAX_THREADS), default=1, metavar="N",
                   help="intra-op threads for inference (default 1)")
    add_backend_option(p)
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--faults", action="store_true", help="then the services' faults on a private PostgreSQL "
                   "and RabbitMQ: hostile routing keys, a frozen database, a deleted store file (< 1 min)")
    # (FaultPlan also holds --freeze above a store try's bound: shorter is one slow commit, not an outage)
    p.add_argument("--fault-seconds", type=number(1, 600, unit="s"), default=12.0, metavar="SECONDS",
                   help="with --faults: wall seconds of traffic (default %(default)g)")
    p.add_argument("--freeze", type=number(1, 60, zero=True, unit="s"), default=4.0, metavar="SECONDS",
                   help="with --faults: seconds the PostgreSQL server stays frozen (default %(default)g)")
    p.set_defaults(run=cmd_soak)


def cmd_export(args: argparse.Namespace) -> int:
    from model.net.onnx_export import export_checkpoint, operator_counts

    meta = open_checkpoint(args.checkpoint)
    out = export_checkpoint(args.checkpoint, args.out)  # by default where --backend onnx looks first
    lstm = operator_counts(out).get("LSTM", 0)
    network = meta.network
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {lstm} ONNX LSTM operators): features float32 "
          f"[batch, {meta.window}, {network.n_inputs}] -> probabilities [batch, {network.n_classes}]")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from model.data.download import ARCHIVES, DownloadError, download

    try:
        marker = download(args.dataset, args.to, url=args.url)
    except DownloadError as error:
        raise CliError(str(error)) from None
    print(f"{args.dataset}: extracted under {args.to} ({marker.relative_to(args.to)} checked)")
    print("next: " + ARCHIVES[args.dataset].usage.format(root=args.to))
    return 0


EXAMPLES = """examples:
  harstream replay                                  live dashboard, held-out test subject 2
  harstream replay hapt:2,4,9 --speed 0 --headless --jsonl
  harstream mqtt --broker mqtt://localhost --publish
  harstream publish --broker mqtt://localhost       a simulated wearable, for that mqtt to watch
  harstream serial --port /dev/ttyUSB0 --hz 50
  harstream evaluate --json
  harstream COMMAND --help                          what one command does, its options and examples
"""


def version() -> str:
    try:
        return metadata.version("harstream")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def add_model_commands(sub: argparse._SubParsersAction) -> None:
    """The commands whose parsers live here: evaluate, replay, soak, export, download, bench."""
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

    p = sub.add_parser("replay")
    p.add_argument("sources", nargs="*", metavar="SOURCE",
                   help="hapt:N[,M...], csv:PATH, uci-har:PATH[:SUBJECTS], opportunity:PATH "
                   "(default hapt:2)")
    p.add_argument("--speed", type=number(0.01, 1000, zero=True), default=1.0, metavar="FACTOR",
                   help="x real time; 0 = as fast as possible (default 1)")
    add_live_options(p)
    p.set_defaults(run=cmd_replay)

    add_soak_command(sub)

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

    p = sub.add_parser("bench")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, metavar="FILE.pt",
                   help="the model to measure (default: the shipped model)")
    p.add_argument("--quick", action="store_true", help="seconds instead of minutes")
    p.add_argument("--threads", type=count(1, MAX_THREADS), default=1, metavar="N",
                   help="intra-op threads (torch's and onnx's; default 1)")
    p.add_argument("--backend", choices=("torch", "onnx"), default=None,
                   help="backend of the end-to-end runs (default: onnx when onnxruntime is installed)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--fleet", action="store_true", help="instead: recognizer processes through a private "
                   "mosquitto (harstream mqtt) and RabbitMQ (harstream fleet, 1 and 2 workers), side by side")
    p.add_argument("--fleet-sizes", default="100,200,300,400,500,600,800", metavar="N,N,...",
                   help="with --fleet: fleet sizes to step through, in devices (default %(default)s)")
    p.add_argument("--fleet-seconds", type=number(1, 3600), default=30.0, metavar="SECONDS",
                   help="with --fleet: seconds of real-time traffic per run (default %(default)g)")
    p.set_defaults(run=cmd_bench)


def build_parser() -> argparse.ArgumentParser:
    width = shutil.get_terminal_size().columns - 2  # argparse's own
    parser = OneLineParser(  # its subparsers too: a wrong value is one line, exit 2
        prog="harstream", usage="%(prog)s [-h] [--debug] [--version] COMMAND [OPTIONS]",
        description="Real-time activity recognition for wearables.\n\n" + command_list(width),
        epilog=EXAMPLES, formatter_class=HelpFormatter,
    )  # fmt: skip
    parser.add_argument("--debug", action="store_true", help="full tracebacks and debug logging")
    parser.add_argument("--version", action="version", version=f"harstream {version()}")
    # the commands' help, descriptions and examples: streamer/commands/table.py's table, which also lists
    # them, grouped, in the description above (argparse's own list is one flat list: suppressed)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", action=CommandsAction,
                                help=argparse.SUPPRESS, prog="harstream")  # prog: not the usage above

    add_model_commands(sub)  # evaluate, replay, soak, export, download, bench
    add_wearable_commands(sub)  # mqtt, serial, publish, record
    from streamer.commands.fleet_cli import add_fleet_command

    add_fleet_command(sub)  # fleet: recognizers sharing devices through RabbitMQ
    add_kit_commands(sub)  # check, init-config, calibrate: your own wearable
    from streamer.commands.history import add_history_command

    add_history_command(sub)  # history: from a --store
    unbuilt = sorted(set(BY_NAME) - set(sub.choices))
    if unbuilt:  # listed in the help, but no parser
        raise RuntimeError(f"streamer/commands/table.py lists commands with no parser: {', '.join(unbuilt)}")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # `harstream` alone: what it can do, not an argparse complaint
        parser.print_help()
        return 0
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(message)s")
    try:
        return args.run(args)
    except KeyboardInterrupt:
        return 130
    except (CliError, FileNotFoundError, ValueError, OSError, ImportError) as error:
        if args.debug:
            raise
        message = missing_package(error) if isinstance(error, ImportError) else None
        if message and error.name == "torch" and getattr(args, "backend", None) == "torch":
            message += " (or --backend onnx, which runs without it)"
        print(f"harstream {args.command}: {message or error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
