"""The tools group of commands: ``publish`` (a recording sent over MQTT as a wearable would: the
simulated wearable, streamer/tools/simulated_wearable.py), ``bench`` (speed, side by side; ``--fleet``
through real brokers) and ``soak`` (hours of good and hostile traffic, and the services' faults)."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from model.data.signals import HAPT_ACTIVITIES, HAPT_CHANNELS, HAPT_RATE_HZ
from model.net.checkpoint_meta import CheckpointMeta
from model.strict_json import dumps
from replay.sources import Inputs, parse_source
from streamer.cli.common import say, sigterm_as_interrupt
from streamer.cli.connect import add_mqtt_options, mqtt_options
from streamer.cli.live_options import add_backend_option
from streamer.core.wire import valid_device_id
from streamer.errors import CliError
from streamer.live import DEFAULT_CHECKPOINT, live_engine, open_checkpoint
from streamer.options import MAX_THREADS, count, number
from streamer.tools.bench_fleet import SETUPS, fleet_figures, fleet_table
from streamer.tools.postgres import PostgresError
from streamer.tools.private_mosquitto import BrokerError
from streamer.tools.rabbitmq import rabbitmq_installed
from streamer.tools.simulated_wearable import FORMATS, Publisher
from streamer.tools.soak import run_soak
from streamer.tools.soak_faults import FaultPlan, run_fault_soak, unavailable


def cmd_publish(args: argparse.Namespace) -> int:
    publishers = make_publishers(args)
    connect_all(publishers, args.connect_timeout)
    sigterm_as_interrupt()
    stop = threading.Event()
    threads = [threading.Thread(target=p.run, args=(stop,), daemon=True) for p in publishers]
    for thread in threads:
        thread.start()
    interrupted = False
    try:
        watch_publishers(publishers, threads)
    except KeyboardInterrupt:
        interrupted = True
        stop.set()
    failed = report_publishers(publishers)
    if interrupted:
        return 130
    return 1 if failed else 0


def make_publishers(args: argparse.Namespace) -> list[Publisher]:
    """A simulated wearable for each device of ``SOURCE``, checked, not connected yet."""
    if args.format not in FORMATS:
        raise CliError(f"unknown --format {args.format!r}: use one of {', '.join(FORMATS)}")
    devices = parse_source(args.source, Inputs(HAPT_CHANNELS, HAPT_ACTIVITIES, HAPT_RATE_HZ))
    if args.device and len(devices) > 1:
        raise CliError(f"--device names one device, but {args.source} holds {len(devices)}")
    options = mqtt_options(args)  # the client id is unused: each publisher gets one from the broker
    publishers = []
    for device in devices:
        name = args.device or device.name
        if not valid_device_id(name):
            raise CliError(f"bad device id {name!r}: use 1-64 letters, digits, '_', '.', '-'")
        publishers.append(Publisher(options, device, name, speed=args.speed, fmt=args.format,
                                    prefix=args.topic_prefix, qos=args.qos,
                                    reconnect_timeout=args.connect_timeout))  # fmt: skip
    return publishers


def connect_all(publishers: list[Publisher], timeout: float) -> None:
    try:
        for publisher in publishers:
            publisher.connect(timeout)
    except OSError as error:  # ConnectionError and ssl's errors (a wrong CA) are OSErrors
        for publisher in publishers:
            publisher.client.loop_stop()
        raise CliError(f"could not connect to broker {publishers[0].options.broker.url}: {error}") from None


def watch_publishers(publishers: list[Publisher], threads: list[threading.Thread]) -> None:
    """Wait for the publishers' threads, showing on stderr (a terminal's: nothing is written to a
    pipe or a file) what each has sent and how its broker connection is."""
    sent = "{task.completed:,.0f}/{task.total:,.0f} samples, {task.fields[messages]:,} messages"
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn(sent),
               TextColumn("{task.fields[state]}"), TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        tasks = [progress.add_task(p.topic, total=p.total_samples, messages=0, state=p.state)
                 for p in publishers]  # fmt: skip
        while alive := [thread for thread in threads if thread.is_alive()]:
            alive[0].join(0.2)
            for task, publisher in zip(tasks, publishers, strict=True):
                progress.update(task, completed=publisher.samples, messages=publisher.messages,
                                state=publisher.state)  # fmt: skip


def report_publishers(publishers: list[Publisher]) -> bool:
    """One line per publisher, then one per failure; whether any failed."""
    failed = False
    for publisher in publishers:
        unacknowledged = publisher.close()
        say(f"published {publisher.samples} samples in {publisher.messages} messages to {publisher.topic}"
            + (f" ({publisher.reconnects} reconnects)" if publisher.reconnects else ""))  # fmt: skip
        if publisher.error:
            failed = True
            say(f"{publisher.topic}: {publisher.error}")
        elif unacknowledged or publisher.lost:
            failed = True
            unsure = unacknowledged + publisher.lost
            say(f"{publisher.topic}: the broker did not acknowledge {unsure} messages")
    return failed


def cmd_bench(args: argparse.Namespace) -> int:
    if args.fleet:
        return cmd_bench_fleet(args)
    import torch  # the baseline it measures against is the eager PyTorch model; deferred, as below

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
    setups = tuple(s.strip() for s in args.fleet_setups.split(","))
    if not setups or not set(setups) <= set(SETUPS):
        raise CliError(f"--fleet-setups wants one or more of {','.join(SETUPS)}, not {args.fleet_setups!r}")
    if any(s.startswith("rabbitmq") for s in setups) and not rabbitmq_installed():
        raise CliError("bench --fleet starts a private RabbitMQ: apt-get install -y rabbitmq-server "
                       "(or --fleet-setups mosquitto,mosquitto_p2)")  # fmt: skip
    open_checkpoint(args.checkpoint)
    try:
        sizes = tuple(int(s) for s in args.fleet_sizes.split(","))
    except ValueError:
        raise CliError(f"--fleet-sizes wants device counts like 100,200, not {args.fleet_sizes!r}") from None
    stderr = Console(stderr=True)
    result = fleet_figures(args.checkpoint, sizes, args.fleet_seconds, backend=args.backend or "onnx",
                           setups=setups, progress=lambda stage: stderr.print(f"harstream bench: {stage}"))
    if args.json:
        print(dumps({"fleet": result}))
    else:
        Console().print(fleet_table(result))
    return 0


def bench_table(result: dict, quick: bool) -> Table:
    table = Table("figure", "value", title=f"harstream bench ({'quick' if quick else 'full'})")
    for key, value in result.items():
        if not isinstance(value, (dict, list)):
            table.add_row(key, f"{value:,.4g}" if isinstance(value, float) else str(value))
    for key, row in result["batches"].items():
        table.add_row(f"batch {key}", f"{row['windows_per_s']:,.0f} windows/s, p50 {row['p50_ms']:.1f} ms")
    one, together = (result["scheduling"][f"{k}_us_per_message"] for k in ("one_by_one", "together"))
    table.add_row("scheduling a message, one by one / together",
                  f"{one:.0f} / {together:.0f} µs CPU ({result['scheduling']['ratio']:.1f}x)")
    for run in result["e2e_runs"]:
        table.add_row(f"e2e {run['devices']} devices", f"p99 {run['p99_ms']:.0f} ms, dropped "
                      f"{run['dropped']}, cpu {run['cpu_percent']:.0f}% ({run['cpu_ms_per_device_s']:.2f} ms "
                      f"per device-s), held {run['held']}")
    return table


def cmd_soak(args: argparse.Namespace) -> int:
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
    missing = unavailable()
    if missing:
        raise CliError(missing)
    return FaultPlan(seconds=args.fault_seconds, good=args.good, freeze_s=args.freeze)


def fault_soak(args: argparse.Namespace, checkpoint: CheckpointMeta, plan, say) -> dict:
    try:
        return run_fault_soak(args.checkpoint, checkpoint, plan, args.backend, args.threads, say)
    except (BrokerError, PostgresError) as error:  # a service that did not start, or refused the worker
        raise CliError(" ".join(str(error).split())) from None


def register(sub: argparse._SubParsersAction) -> None:
    # each command's help, description and examples: streamer/cli/table.py
    p = sub.add_parser("publish")
    p.add_argument("source", nargs="?", default="hapt:2", metavar="SOURCE",
                   help="as in replay: hapt:N, csv:PATH, ... (default hapt:2)")
    add_mqtt_options(p.add_argument_group("MQTT broker"))
    wearable = p.add_argument_group("the simulated wearable")
    wearable.add_argument("--device", metavar="ID", help="device id on the wire (default: the recording's)")
    wearable.add_argument("--speed", type=number(0.01, 1000, zero=True), default=1.0, metavar="FACTOR",
                          help="x real time; 0 = as fast as possible (default 1)")
    wearable.add_argument("--format", default="binary", metavar="FORMAT",
                          help="binary (20 bytes of header, float32 samples: the cheapest to decode), "
                          "batch (JSON) or json (a message per sample) (default binary)")
    wearable.add_argument("--topic-prefix", default="har", metavar="PREFIX",
                          help="messages go to PREFIX/DEVICE/imu (default har)")
    p.set_defaults(run=cmd_publish)

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
                   "mosquitto (harstream mqtt, 1 and 2 processes) and RabbitMQ (harstream fleet, 1 and 2 "
                   "workers), side by side")
    p.add_argument("--fleet-setups", default=",".join(SETUPS), metavar="SETUP,...",
                   help="with --fleet: which setups (default %(default)s; _pN: mqtt --processes N, "
                   "rabbitmq_N: N fleet workers)")
    p.add_argument("--fleet-sizes", default="100,200,300,400,500,600,800,1000", metavar="N,N,...",
                   help="with --fleet: fleet sizes to step through, in devices (default %(default)s)")
    p.add_argument("--fleet-seconds", type=number(1, 3600), default=30.0, metavar="SECONDS",
                   help="with --fleet: seconds of real-time traffic per run (default %(default)g)")
    p.set_defaults(run=cmd_bench)

    p = sub.add_parser("soak")
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
