"""What the live commands (``replay``, ``mqtt``, ``serial``) share, in one place: their options,
read from argparse once into a :class:`LiveOptions`; the checkpoint's metadata; the engine and the
pipeline assembled from them; the loop that drives the pipeline into the dashboard or JSON lines.

The command files (:mod:`streamer.cli`, :mod:`streamer.commands.wearables_cli`) import this module and it
imports neither, so ``python -m streamer.cli`` loads each module once. Nothing here imports torch:
a gateway without it runs these commands on the ONNX backend.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

from model.strict_json import dumps
from streamer.commands.options import MAX_THREADS, count, number
from streamer.core import limits

if TYPE_CHECKING:
    from model.net.checkpoint_meta import CheckpointMeta
    from streamer.core.engine import InferenceEngine
    from streamer.core.pipeline import Pipeline
    from streamer.core.source import Source

DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[2] / "model" / "weights" / "uci_har_3x3.pt"
PROGRESS_S = 10.0  # how often --headless without --jsonl says how it is going


class CliError(Exception):
    """A failure the user can fix; printed as one line, exit code 1."""


def say(message: str) -> None:
    print(f"harstream: {message}", file=sys.stderr, flush=True)


def json_line(record: dict) -> None:
    """One JSON line on stdout, written in one call: print() writes the text and its newline
    separately, and a SIGTERM (a KeyboardInterrupt, below) between the two glued the summary onto
    the last prediction's line."""
    sys.stdout.write(dumps(record) + "\n")
    sys.stdout.flush()


def sigterm_as_interrupt() -> None:
    """SIGTERM stops as Ctrl-C does: sources stop, files close, the summary prints."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def _default_backend() -> str:
    from streamer.core.backends import default_backend

    return default_backend()


@dataclass(frozen=True)
class LiveOptions:
    """The options of a live command, typed and checked, built once from its arguments
    (:meth:`from_args`); everything below the command line reads these, never the Namespace."""

    checkpoint: Path = DEFAULT_CHECKPOINT
    backend: str = field(default_factory=_default_backend)  # torch where installed, else onnx
    threads: int = 1  # --threads: intra-op threads for inference; 0: see inference_threads()
    workers: int = 1  # recognizers on this host that share its cores (--shard K/N: N)
    hop: int = 0  # samples between windows; 0: a quarter window
    smooth: int = 1
    min_confidence: float = 0.0
    max_batch: int = 256
    max_wait_ms: float = 20.0
    headless: bool = False
    jsonl: bool = False
    max_devices: int = limits.MAX_DEVICES
    idle_timeout_s: float = 0.0  # 0: never forget a device (replay, serial); mqtt: limits.IDLE_TIMEOUT_S
    calibration: tuple[str, ...] | list[str] | None = None  # --calibration DEVICE=wearer.pt or a folder
    store: str | None = None  # --store: history kept here (commands/activity_log.py, sinks/store.py)
    retain: str | None = None
    events: bool = False
    episode_hold_s: float = 4.0  # streamer.sinks.episodes.HOLD_S
    episode_confidence: float = 0.6  # streamer.sinks.episodes.MIN_CONFIDENCE

    def __post_init__(self) -> None:
        checks = (
            (self.hop >= 0, f"--hop must be 0 (a quarter window) or more, not {self.hop}"),
            (self.smooth >= 1, f"--smooth must be 1 or more, not {self.smooth}"),
            (self.max_batch >= 1, f"--max-batch must be 1 or more, not {self.max_batch}"),
            (self.max_wait_ms >= 0, f"--max-wait-ms must not be negative, not {self.max_wait_ms:g}"),
            (self.threads >= 0, f"--threads must be 0 (the library's default) or more, not {self.threads}"),
            (self.max_devices >= 1, f"--max-devices must be 1 or more, not {self.max_devices}"),
            (self.idle_timeout_s >= 0, f"--idle-timeout must not be negative, not {self.idle_timeout_s:g}"),
            (self.retain is None or bool(self.store), "--retain prunes a --store: give one, or drop it"),
        )  # fmt: skip
        for ok, why in checks:
            if not ok:  # NaN fails the float checks too
                raise CliError(why)

    @classmethod
    def from_args(cls, args: argparse.Namespace, **overrides) -> LiveOptions:
        """The options a command's parsed arguments hold (their ``dest`` names are the fields'),
        with ``overrides`` (what the command decides itself: a checkpoint, the number of workers)."""
        names = {f.name for f in fields(cls)}
        return cls(**({k: v for k, v in vars(args).items() if k in names} | overrides))

    @property
    def inference_threads(self) -> int:
        return inference_threads(self.threads, self.workers)


def inference_threads(threads: int, workers: int = 1) -> int:
    """The intra-op threads inference runs on (torch's or onnxruntime's): decided here alone.

    ``threads`` is ``--threads``: a number of threads, or 0 for the library's default, which is
    every core. That suits one recognizer on a host, not ``workers`` of them (``--shard K/N``):
    threads spin while they wait for work, and two workers with all cores each took 28 s instead
    of 0.2 s for the same 100 windows on a busy 2-core machine. So a shard worker's 0 is its share,
    cores // N (``OMP_NUM_THREADS``, when set, decides instead). A number given is kept.

    >>> inference_threads(1, workers=4), inference_threads(0), inference_threads(3, workers=2)
    (1, 0, 3)
    """
    if threads > 0 or workers <= 1:
        return threads
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0:
        return int(omp)
    return max(1, (os.cpu_count() or 1) // workers)


# -- the command-line options ---------------------------------------------------------------------
def add_backend_option(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    from streamer.core.backends import BACKENDS, default_backend

    p.add_argument("--backend", choices=BACKENDS, default=default_backend(),
                   help="run the network with PyTorch, or its ONNX export (made once, kept beside the "
                   "checkpoint) with onnxruntime (default: %(default)s; onnx where torch is not installed)")


def add_live_options(p: argparse.ArgumentParser) -> None:
    """The options every live command reads into :class:`LiveOptions`, in two groups."""
    model = p.add_argument_group("recognition")
    model.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, metavar="FILE.pt",
                       help="trained model (default: the shipped model/weights/uci_har_3x3.pt)")
    model.add_argument("--hop", type=count(1, 100_000, unit="samples"), default=0,  # 0: LiveOptions' own
                       metavar="SAMPLES", help="samples between windows (default: a quarter window)")
    model.add_argument("--smooth", type=count(1, 1000), default=1, metavar="K",
                       help="average probabilities over the last K windows (default 1: none)")
    model.add_argument("--min-confidence", type=number(0, 1), default=0.0, metavar="FRACTION",
                       help="below this top probability (0 to 1) the label is 'uncertain' (default 0)")
    model.add_argument("--max-batch", type=count(1, 65_536), default=256, metavar="WINDOWS",
                       help="largest inference batch (default %(default)s)")
    model.add_argument("--max-wait-ms", type=number(0, 60_000, unit="ms"), default=20.0, metavar="MS",
                       help="how long a ready window waits for others to share its batch (default "
                       "%(default)g)")
    model.add_argument("--threads", type=count(0, MAX_THREADS), default=1, metavar="N",
                       help="intra-op threads for inference (default 1; 0: the library's default, all cores, "
                       "or with --shard K/N this host's cores // N)")
    add_backend_option(model)
    model.add_argument("--calibration", action="append", metavar="DEVICE=WEARER.pt",
                       help="run DEVICE on its own calibrated model (harstream calibrate), everyone else on "
                       "--checkpoint; repeat it, or give a folder of DEVICE.pt files")
    out = p.add_argument_group("output")
    out.add_argument("--headless", action="store_true", help="no dashboard")
    out.add_argument("--jsonl", action="store_true", help="one JSON object per prediction on stdout")
    from streamer.commands.activity_log import add_history_options

    add_history_options(p)


def add_device_limits(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """How many devices a recognizer serves and how long it keeps a silent one (streamer/core/limits.py)."""
    p.add_argument("--max-devices", type=count(1, 1_000_000), default=limits.MAX_DEVICES, metavar="N",
                   help="serve at most this many devices at once (default %(default)s)")
    p.add_argument("--idle-timeout", dest="idle_timeout_s", type=number(1, 30 * 86400, zero=True, unit="s"),
                   default=limits.IDLE_TIMEOUT_S, metavar="SECONDS",
                   help="forget a device silent for this many seconds (0 = never; default %(default)g)")


# -- checkpoint, engine, pipeline -----------------------------------------------------------------
def open_checkpoint(path: Path) -> CheckpointMeta:
    """The checkpoint's checked metadata: what the live path needs besides the backend, read
    without torch."""
    from model.net.checkpoint_meta import read_meta

    if not Path(path).exists():
        raise CliError(
            f"no trained model at {path}: train one with python train.py --config configs/<name>.toml"
        )
    return read_meta(path)


def live_engine(checkpoint: Path, backend: str, threads: int, max_batch: int) -> InferenceEngine:
    """The inference engine for a checkpoint on ``backend`` with ``threads`` intra-op threads
    (0: the library's default)."""
    from streamer.core.backends import make_backend
    from streamer.core.engine import InferenceEngine

    return InferenceEngine(make_backend(backend, checkpoint, threads), max_batch=max_batch)


def calibrations(entries: tuple[str, ...] | list[str] | None,
                 base: CheckpointMeta) -> dict[str, tuple[Path, CheckpointMeta]]:  # fmt: skip
    """``--calibration`` values (``DEVICE=wearer.pt``, or a folder of ``DEVICE.pt`` files) as
    device -> (checkpoint, its metadata); each must read the same inputs and give the same classes
    as the base model, so its windows and predictions mean the same."""
    from streamer.core.wire import valid_device_id

    found: dict[str, tuple[Path, CheckpointMeta]] = {}
    for entry in entries or ():
        if Path(entry).is_dir():
            pairs = [(p.stem, p) for p in sorted(Path(entry).glob("*.pt"))]
            if not pairs:
                raise CliError(f"--calibration {entry}: no calibrated checkpoints (DEVICE.pt) in that folder")
        elif "=" in entry:
            device, _, file = entry.partition("=")
            pairs = [(device, Path(file))]
        else:
            raise CliError(f"--calibration wants DEVICE=wearer.pt or a folder of DEVICE.pt files, "
                           f"not {entry!r}")
        for device, path in pairs:
            if not valid_device_id(device):
                raise CliError(f"--calibration {entry}: {device!r} is not a device id")
            meta = open_checkpoint(path)
            for what in ("classes", "window", "rate_hz", "input_channels"):
                mine, theirs = getattr(meta, what), getattr(base, what)
                if mine != theirs:
                    raise CliError(f"--calibration {device}={path}: its {what} ({mine}) differ from the "
                                   f"base model's ({theirs})")  # fmt: skip
            found[device] = (path, meta)
    return found


def live_parts(options: LiveOptions, checkpoint: CheckpointMeta,
               sources: list[Source]) -> tuple[Pipeline, int]:  # fmt: skip
    """The pipeline (scheduler, engine, decider) for ``options.checkpoint``, whose metadata is
    ``checkpoint``, fed by ``sources``; and the hop it cuts windows at."""
    from streamer.core.engine import Decider
    from streamer.core.pipeline import Pipeline
    from streamer.core.scheduler import Scheduler

    # One intra-op thread by default (--threads): the sources and the scheduler need the other
    # core, and OpenMP threads that wait on a busy core spin instead of yielding.
    engine = live_engine(options.checkpoint, options.backend, options.inference_threads, options.max_batch)
    calibrated = calibrations(options.calibration, checkpoint)
    if calibrated:  # a wearer's own model (adapted head, maybe its own axes): batched per model
        from streamer.core.backends import make_backend

        engine.per_device = {device: make_backend(options.backend, path, options.inference_threads)
                             for device, (path, _) in calibrated.items()}  # fmt: skip
    window = checkpoint.window
    hop = options.hop or max(1, window // 4)
    label_rule = checkpoint.get("config", {}).get("data", {}).get("label_rule", "all")
    scheduler = Scheduler(checkpoint.preprocessing, window, hop, checkpoint.rate_hz, label_rule=label_rule,
                          max_devices=options.max_devices, idle_timeout_s=options.idle_timeout_s,
                          units=tuple(checkpoint.get("input_units", ())),
                          device_specs={d: m.preprocessing for d, (_, m) in calibrated.items()})  # fmt: skip
    decider = Decider(checkpoint.classes, smooth=options.smooth, min_confidence=options.min_confidence)
    pipeline = Pipeline(sources, scheduler, engine, decider, max_wait_s=options.max_wait_ms / 1000.0)
    from streamer.commands.activity_log import attach_history

    attach_history(options, pipeline, hop / checkpoint.rate_hz)  # episodes, --store, --events
    return pipeline, hop


# -- the run ---------------------------------------------------------------------------------------
def progress_line(summary: dict) -> str:
    accuracy = f", accuracy {summary['accuracy']:.3f}" if summary["accuracy"] is not None else ""
    return (f"harstream: {summary['devices']} devices, {summary['samples']:,} samples, "
            f"{summary['windows']:,} windows{accuracy}, {summary['dropped']:,} dropped")


def run_live(options: LiveOptions, pipeline: Pipeline, classes: tuple[str, ...], title: str) -> int:
    """Drive the pipeline into the chosen sinks (dashboard, JSON lines, or neither) until its
    sources end or Ctrl-C; then the summary. Exit code 130 after Ctrl-C on the dashboard."""
    from rich.console import Console

    from streamer.ui.dashboard import summary_table

    console = Console(stderr=options.jsonl)
    interrupted = False
    try:
        if options.headless:
            _headless(options, pipeline)
        else:
            _on_dashboard(options, pipeline, classes, title, console)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        pipeline.stop()
    from streamer.commands.activity_log import finish_history

    summary = pipeline.summary() | finish_history(pipeline) | {"interrupted": interrupted}
    if options.jsonl:
        json_line({"summary": summary})
    else:
        console.print(summary_table(summary))
    return 130 if interrupted and not options.headless else 0


def _headless(options: LiveOptions, pipeline: Pipeline) -> None:
    next_report = time.monotonic() + PROGRESS_S
    for prediction in pipeline.run():
        if options.jsonl:
            json_line(prediction.to_json())
        elif time.monotonic() >= next_report:  # a service's log: a line now and then
            next_report = time.monotonic() + PROGRESS_S
            print(progress_line(pipeline.summary()), file=sys.stderr, flush=True)


def _on_dashboard(options: LiveOptions, pipeline: Pipeline, classes: tuple[str, ...], title: str,
                  console) -> None:  # fmt: skip
    from rich.live import Live

    from streamer.ui.dashboard import Dashboard

    today = None
    if options.store:  # today's totals per wearer, read from the store in a thread of its own
        from streamer.ui.today import TodayTotals

        today = TodayTotals(options.store).start()
    dashboard = Dashboard(pipeline, classes, title, today=today)
    try:
        with Live(dashboard, console=console, refresh_per_second=4, screen=False, transient=False):
            for prediction in pipeline.run():
                dashboard.observe(prediction)
                if options.jsonl:
                    json_line(prediction.to_json())
    finally:
        if today is not None:
            today.stop()
