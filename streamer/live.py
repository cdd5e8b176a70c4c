"""A live run assembled from its options: the checkpoint's metadata, the engine, the pipeline, the
episodes and the store it feeds (a :class:`LiveRun`), and the loop that drives it into the dashboard
or JSON lines. Every live command (``replay``, ``mqtt``, ``serial``, ``fleet``: streamer/cli/) builds
its run here, and the soak does too; nothing here reads argparse beyond :meth:`LiveOptions.from_args`,
and nothing imports torch, so a gateway without it runs on the ONNX backend.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.live import Live

from model.net.checkpoint_meta import DEFAULT_CHECKPOINT, read_meta
from streamer.core import limits
from streamer.core.backends import default_backend, make_backend
from streamer.core.engine import Decider, InferenceEngine
from streamer.core.pipeline import Pipeline
from streamer.core.scheduler import Scheduler
from streamer.core.wire import valid_device_id
from streamer.errors import CliError
from streamer.sinks.episodes import HOLD_S, MIN_CONFIDENCE, Episodes
from streamer.sinks.json_lines import EventLines, json_line
from streamer.sinks.store import open_store
from streamer.sinks.store_sink import StoreSink
from streamer.ui.dashboard import Dashboard, summary_table
from streamer.ui.today import TodayTotals

if TYPE_CHECKING:
    from model.net.checkpoint_meta import CheckpointMeta
    from streamer.core.source import Source

PROGRESS_S = 10.0  # how often --headless without --jsonl says how it is going


@dataclass(frozen=True)
class LiveOptions:
    """The options of a live command, typed and checked, built once from its arguments
    (:meth:`from_args`); everything below the command line reads these, never the Namespace."""

    checkpoint: Path = DEFAULT_CHECKPOINT
    backend: str = field(default_factory=default_backend)  # torch where installed, else onnx
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
    store: str | None = None  # --store: history kept here (streamer/sinks/store.py)
    retain: str | None = None
    events: bool = False
    episode_hold_s: float = HOLD_S
    episode_confidence: float = MIN_CONFIDENCE

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


# -- checkpoint, engine, pipeline -----------------------------------------------------------------
def open_checkpoint(path: Path) -> CheckpointMeta:
    """The checkpoint's checked metadata: what the live path needs besides the backend, read
    without torch."""
    if not Path(path).exists():
        raise CliError(
            f"no trained model at {path}: train one with python train.py --config configs/<name>.toml"
        )
    return read_meta(path)


def live_engine(checkpoint: Path, backend: str, threads: int, max_batch: int) -> InferenceEngine:
    """The inference engine for a checkpoint on ``backend`` with ``threads`` intra-op threads
    (0: the library's default)."""
    return InferenceEngine(make_backend(backend, checkpoint, threads), max_batch=max_batch)


def calibrations(entries: tuple[str, ...] | list[str] | None,
                 base: CheckpointMeta) -> dict[str, tuple[Path, CheckpointMeta]]:  # fmt: skip
    """``--calibration`` values (``DEVICE=wearer.pt``, or a folder of ``DEVICE.pt`` files) as
    device -> (checkpoint, its metadata); each must read the same inputs and give the same classes
    as the base model, so its windows and predictions mean the same."""
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


@dataclass
class LiveRun:
    """A live run as :func:`assemble` built it: the pipeline and its hop, the episodes every run
    keeps, and the store sink when ``--store`` asked for one. Whoever adds a sink (``--publish``)
    finds the episodes here; :meth:`finish` ends them and the store after the run."""

    pipeline: Pipeline
    hop: int
    episodes: Episodes
    store: StoreSink | None = None

    def finish(self) -> dict:
        """After the run: every sink of the pipeline closes (the episodes end the open ones, their
        events go out, and close their own sinks), the store writes what is queued; its tallies."""
        for sink in self.pipeline.sinks:
            sink.close()
        if self.store is None:
            return {}
        self.store.store.close()  # what it could not write is said there, in one line, and counted
        return self.store.store.summary()


def assemble(options: LiveOptions, checkpoint: CheckpointMeta, sources: list[Source]) -> LiveRun:
    """The run (scheduler, engine, decider, episodes, store) for ``options.checkpoint``, whose
    metadata is ``checkpoint``, fed by ``sources``."""
    # One intra-op thread by default (--threads): the sources and the scheduler need the other
    # core, and OpenMP threads that wait on a busy core spin instead of yielding.
    engine = live_engine(options.checkpoint, options.backend, options.inference_threads, options.max_batch)
    calibrated = calibrations(options.calibration, checkpoint)
    if calibrated:  # a wearer's own model (adapted head, maybe its own axes): batched per model
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
    return keep_history(options, pipeline, hop, hop / checkpoint.rate_hz)


def keep_history(options: LiveOptions, pipeline: Pipeline, hop: int, hop_s: float) -> LiveRun:
    """The pipeline's episodes, with the store (``--store``) and the JSON-lines events (``--events``)
    attached as ``options`` ask; a --store that names no store raises StoreError (one line)."""
    episodes = Episodes(hop_s, hold_s=options.episode_hold_s, min_confidence=options.episode_confidence)
    sink = None
    if options.store:
        # A replay faster than real time would be stored ahead of the wall clock: moved back so that
        # it ends when its run would have played it, at the latest (its own durations kept).
        lead = max((source.lead_s() for source in pipeline.sources), default=0.0)
        sink = StoreSink(open_store(options.store, options.retain), hop_s, wall_start=time.time() - lead)
        episodes.sinks.append(sink)
    if options.jsonl and options.events:
        episodes.sinks.append(EventLines())
    pipeline.sinks.append(episodes)
    return LiveRun(pipeline, hop, episodes, sink)


# -- the run ---------------------------------------------------------------------------------------
def progress_line(summary: dict) -> str:
    accuracy = f", accuracy {summary['accuracy']:.3f}" if summary["accuracy"] is not None else ""
    return (f"harstream: {summary['devices']} devices, {summary['samples']:,} samples, "
            f"{summary['windows']:,} windows{accuracy}, {summary['dropped']:,} dropped")


def run_live(options: LiveOptions, run: LiveRun, classes: tuple[str, ...], title: str) -> int:
    """Drive the run into the chosen outputs (dashboard, JSON lines, or neither) until its sources
    end or Ctrl-C; then the summary. Exit code 130 after Ctrl-C on the dashboard."""
    console = Console(stderr=options.jsonl)
    interrupted = False
    try:
        if options.headless:
            _headless(options, run.pipeline)
        else:
            _on_dashboard(options, run.pipeline, classes, title, console)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        run.pipeline.stop()
    summary = run.pipeline.summary() | run.finish() | {"interrupted": interrupted}
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
                  console: Console) -> None:  # fmt: skip
    today = None
    if options.store:  # today's totals per wearer, read from the store in a thread of its own
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
