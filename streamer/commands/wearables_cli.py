"""``harstream mqtt | serial | publish | record``: live wearables on the command line.

:mod:`streamer.cli` registers these commands in its parser; like ``replay``, the recognizers
(``mqtt``, ``serial``) are built by :mod:`streamer.commands.live_command`, which this module imports and
which imports neither command file.
"""

from __future__ import annotations

import argparse
import os
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from streamer.commands.live_command import (
    CliError,
    LiveOptions,
    add_device_limits,
    add_live_options,
    live_parts,
    open_checkpoint,
    run_live,
    say,
    sigterm_as_interrupt,
)
from streamer.commands.options import count, number
from streamer.core.limits import WIRE_RATE_HZ

if TYPE_CHECKING:
    from streamer.sources.mqtt import MqttOptions, MqttSource
    from streamer.sources.serial_source import SerialSource
    from streamer.tools.publisher import Publisher


# -- MQTT ----------------------------------------------------------------------------------------
def mqtt_options(args: argparse.Namespace, *, shard: str | None = None, shared_group: str | None = None,
                 announce: bool = False) -> MqttOptions:  # fmt: skip
    """The broker connection that the options every MQTT command has ask for (``--broker``,
    ``--topic``, credentials, TLS, ``--client-id``, ``--qos``), checked; for a recognizer also
    its ``--shard`` or ``--shared-group``, and whether it ``announce``-s its availability."""
    from streamer.core.shard import Shard
    from streamer.core.wire import valid_device_id
    from streamer.sources.mqtt import MqttOptions, TopicPattern, parse_broker

    if not 0 <= args.qos <= 2:
        raise CliError(f"--qos must be 0, 1 or 2, not {args.qos}")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise CliError("--tls-cert and --tls-key go together")
    for path in (args.tls_ca, args.tls_cert, args.tls_key):
        if path and not Path(path).exists():
            raise CliError(f"no such file: {path}")
    parsed = Shard.parse(shard) if shard else None
    if shared_group is not None and not args.client_id:
        # one id per worker: two sessions with one id disconnect each other, over and over
        raise CliError("--shared-group needs a --client-id of its own for each worker")
    suffix = f"-shard{parsed.index}of{parsed.count}" if parsed else ""  # workers of one host differ
    # The recognizer's stable name (its status topic); a default client id adds the process id, as
    # mosquitto's own clients do: two processes with one id take the session from each other.
    host = f"harstream-{socket.gethostname()}"[: 50 - len(suffix)]
    name = args.client_id or host + suffix
    client_id = args.client_id or f"{host}-{os.getpid()}{suffix}"
    if not valid_device_id(client_id):
        raise CliError(f"bad --client-id {client_id!r}: use letters, digits, '_', '.', '-'")
    return MqttOptions(
        broker=parse_broker(args.broker), topic=TopicPattern.parse(args.topic), client_id=client_id,
        qos=args.qos, username=args.username, password=args.password, tls_ca=args.tls_ca,
        tls_cert=args.tls_cert, tls_key=args.tls_key, shard=parsed, shared_group=shared_group,
        persistent=bool(args.client_id),  # a session kept on the broker is an explicit choice
        announce=announce, name=name, protocol=4 if args.mqtt_version == "3.1.1" else 5,
        fallback=args.mqtt_version is None,  # not chosen: MQTT 5, else 3.1.1 when the broker wants it
    )  # fmt: skip


def recognizer_mqtt_options(args: argparse.Namespace) -> MqttOptions:
    """``harstream mqtt``'s connection: availability matters to whoever reads the predictions
    (Home Assistant), so it is announced with ``--publish`` or ``--ha-discovery``; ``record`` and a
    recognizer that publishes nothing stay off the status topic."""
    return mqtt_options(args, shard=args.shard, shared_group=args.shared_group,
                        announce=args.publish or args.ha_discovery)  # fmt: skip


def start_mqtt(options: MqttOptions, channels: tuple[str, ...], *, connect_timeout: float, headless: bool,
               max_devices: int = 10_000, source: MqttSource | None = None) -> MqttSource:  # fmt: skip
    """An MQTT source (``source``, or a plain one), connecting; a refusal for good (credentials,
    certificate) is an error, and with ``headless`` so is a broker that stays away for
    ``connect_timeout`` seconds."""
    from streamer.sources.mqtt import MqttSource, unreachable

    source = source or MqttSource(options, channels, max_devices=max_devices)
    source.start()
    wait = connect_timeout if headless else min(connect_timeout, 2.0)
    if source.wait_settled(wait) and source.fatal:  # retrying cannot help: one line, exit 1
        source.close()
        raise CliError(source.fatal)
    if source.connected.is_set():
        shard = f" (shard {options.shard.text})" if options.shard else ""
        version = " over MQTT 3.1.1 (it does not speak MQTT 5)" if source.fell_back else ""
        where = f"{version} as {options.client_id}, listening on {options.subscription}{shard}"
        if headless:
            say(f"connected to {options.broker.url}{where}")
        else:  # the dashboard's source line (named for the broker) says it: a printed line stays above it
            source.status = f"connected{where}"
        return source
    why = unreachable(options.broker) or source.status
    if headless:
        source.close()
        raise CliError(f"could not connect to broker {options.broker.url} within {wait:g} s: {why}")
    source.status = f"cannot reach the broker ({why}); retrying, Ctrl-C to stop"  # on the dashboard, as above
    return source


def cmd_mqtt(args: argparse.Namespace) -> int:
    from streamer.sources.mqtt import PredictionPublisher

    connection = recognizer_mqtt_options(args)
    shard = connection.shard  # N workers on a host share its cores (LiveOptions.inference_threads)
    options = LiveOptions.from_args(args, workers=shard.count if shard else 1)
    checkpoint = open_checkpoint(options.checkpoint)
    sigterm_as_interrupt()
    source = start_mqtt(connection, checkpoint.input_channels, connect_timeout=args.connect_timeout,
                        headless=options.headless, max_devices=options.max_devices)  # fmt: skip
    try:
        pipeline, hop = live_parts(options, checkpoint, [source])
        if args.publish or args.ha_discovery:
            pipeline.sinks.append(PredictionPublisher(source, discovery=args.ha_discovery))
            from streamer.commands.activity_log import episodes_of
            from streamer.sinks.episode_publisher import EpisodePublisher

            EpisodePublisher(source, episodes_of(pipeline), discovery=args.ha_discovery)  # har/<device>/event
        title = (f"harstream mqtt · {connection.broker.url} {connection.subscription} · "
                 f"window {checkpoint.window} hop {hop} · Ctrl-C to stop")  # fmt: skip
        code = run_live(options, pipeline, checkpoint.classes, title)
        return 1 if source.fatal else code  # the source said why, in one line, when it gave up
    finally:
        source.close()


def add_mqtt_options(p: argparse.ArgumentParser | argparse._ArgumentGroup, required: bool = True) -> None:
    p.add_argument("--broker", required=required, metavar="URL",
                   help="mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
    p.add_argument("--topic", default="har/+/imu", metavar="TOPIC",
                   help="'+' is the device id (default har/+/imu)")
    p.add_argument("--username", metavar="NAME", help="user name on the broker, if it asks for one")
    p.add_argument("--password", metavar="PASSWORD", help="that user's password")
    p.add_argument("--tls-ca", metavar="FILE", help="CA certificate file (turns TLS on)")
    p.add_argument("--tls-cert", metavar="FILE", help="client certificate file")
    p.add_argument("--tls-key", metavar="FILE", help="client key file")
    p.add_argument("--client-id", metavar="ID",
                   help="keep a persistent session on the broker under this id (default: no session kept, "
                   "id harstream-HOSTNAME-PID); one id per process")
    p.add_argument("--mqtt-version", choices=("5", "3.1.1"),
                   help="the MQTT version to speak (default: 5, or 3.1.1 when the broker does not answer 5, "
                   "as RabbitMQ's MQTT plugin before 3.13)")
    p.add_argument("--qos", type=count(0, 2), default=1, metavar="0|1|2", help="subscription QoS (default 1)")
    p.add_argument("--connect-timeout", type=number(0.1, 86400, unit="s"), default=10.0, metavar="SECONDS",
                   help="seconds to reach the broker before --headless gives up, and before `publish` gives "
                   "up on a broker it lost (default 10)")


# -- serial --------------------------------------------------------------------------------------
def serial_source(args: argparse.Namespace, channels: tuple[str, ...], *, headless: bool) -> SerialSource:
    """The serial source that ``--port``, ``--baud``, ``--hz``, ``--columns``, ``--device`` and
    ``--acc-unit`` ask for, its port opened; with ``headless`` a port that does not open is an error."""
    from streamer.core.wire import valid_device_id
    from streamer.sources.serial_source import NAME, SerialSource

    if args.device and not valid_device_id(args.device):
        raise CliError(f"bad --device {args.device!r}: use 1-64 letters, digits, '_', '.', '-'")
    if args.hz is not None and not WIRE_RATE_HZ[0] <= args.hz <= WIRE_RATE_HZ[1]:  # NaN included
        raise CliError(f"--hz must be from {WIRE_RATE_HZ[0]:g} to {WIRE_RATE_HZ[1]:g} Hz, not {args.hz:g}")
    if not 1 <= args.baud <= 10_000_000:
        raise CliError(f"--baud must be a positive rate in bits/s, not {args.baud}")
    columns = tuple(c.strip() for c in args.columns.split(",")) if args.columns else None
    if columns is not None:
        bad = next((c for c in columns if not NAME.fullmatch(c.encode())), None)
        if bad is not None or len(set(columns)) != len(columns):
            why = f"{bad!r} is not a name" if bad is not None else "a name appears twice"
            raise CliError(f"bad --columns {args.columns!r}: {why} (names of letters, digits and '_')")
    source = SerialSource(args.port, channels, baud=args.baud, device=args.device, columns=columns,
                          hz=args.hz, acc_unit=args.acc_unit)  # fmt: skip
    try:
        source.open()
        say(f"opened {args.port} as device {source.device}")
    except OSError as error:  # serial.SerialException is an OSError
        if headless:
            raise CliError(f"could not open port {args.port!r}: {error}") from None
        say(f"could not open port {args.port!r} ({error}); retrying, Ctrl-C to stop")
    return source


def cmd_serial(args: argparse.Namespace) -> int:
    options = LiveOptions.from_args(args)
    checkpoint = open_checkpoint(options.checkpoint)
    sigterm_as_interrupt()
    source = serial_source(args, checkpoint.input_channels, headless=options.headless)
    try:
        pipeline, hop = live_parts(options, checkpoint, [source])
        title = f"harstream serial · {args.port} · window {checkpoint.window} hop {hop} · Ctrl-C to stop"
        return run_live(options, pipeline, checkpoint.classes, title)
    finally:
        source.close()


def add_serial_options(p: argparse.ArgumentParser | argparse._ArgumentGroup, required: bool = True) -> None:
    p.add_argument("--port", required=required, metavar="DEVICE",
                   help="serial port, e.g. /dev/ttyUSB0 (or a pyserial URL)")
    p.add_argument("--baud", type=count(1, 10_000_000, unit="bits/s"), default=115_200, metavar="RATE",
                   help="the port's speed in bits/s (default %(default)s)")
    p.add_argument("--hz", type=number(*WIRE_RATE_HZ, unit="Hz"), metavar="RATE",
                   help="sample rate, when lines carry no time column")
    p.add_argument("--columns", metavar="NAMES",
                   help="column names when the device sends no header, e.g. acc_x,acc_y,...")
    p.add_argument("--device", metavar="ID", help="device id (default: the port's name)")
    p.add_argument("--acc-unit", choices=("g", "m/s2"), default="g", help="unit of the acc_* columns")


# -- publish -------------------------------------------------------------------------------------
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
    from model.data.recordings import HAPT_ACTIVITIES, HAPT_CHANNELS, HAPT_RATE_HZ
    from replay.sources import Inputs, parse_source
    from streamer.core.wire import valid_device_id
    from streamer.tools.publisher import FORMATS, Publisher

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
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

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


# -- record --------------------------------------------------------------------------------------
def cmd_record(args: argparse.Namespace) -> int:
    from streamer.commands.record_session import (
        cmd_record as record,  # labels, guided sessions, the dashboard
    )

    return record(args, mqtt_options=mqtt_options, serial_source=serial_source, start_mqtt=start_mqtt)


# -- the parser ----------------------------------------------------------------------------------
def add_wearable_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("mqtt")  # each command's help, description and examples: streamer/commands/table.py
    broker = p.add_argument_group("MQTT source")
    add_mqtt_options(broker)
    fleet = p.add_argument_group("devices and workers")
    add_device_limits(fleet)
    fleet.add_argument("--shard", metavar="K/N",
                       help="keep only the devices with crc32(device id) %% N == K (streamer/core/shard.py); "
                       "run N workers, K = 0 .. N-1")
    fleet.add_argument("--shared-group", metavar="NAME",
                       help="subscribe through the MQTT 5 shared subscription $share/NAME/TOPIC; needs a "
                       "broker that keeps a topic on one subscriber (EMQX hash_topic), not mosquitto")
    out = p.add_argument_group("MQTT output")
    out.add_argument("--publish", action="store_true", help="publish predictions to har/<device>/activity")
    out.add_argument("--ha-discovery", action="store_true",
                     help="announce each device to Home Assistant (implies --publish)")
    add_live_options(p)
    p.set_defaults(run=cmd_mqtt)

    p = sub.add_parser("serial")
    add_serial_options(p.add_argument_group("serial source"))
    add_live_options(p)
    p.set_defaults(run=cmd_serial)

    p = sub.add_parser("publish")
    p.add_argument("source", nargs="?", default="hapt:2", metavar="SOURCE",
                   help="as in replay: hapt:N, csv:PATH, ... (default hapt:2)")
    add_mqtt_options(p.add_argument_group("MQTT broker"))
    wearable = p.add_argument_group("the simulated wearable")
    wearable.add_argument("--device", metavar="ID", help="device id on the wire (default: the recording's)")
    wearable.add_argument("--speed", type=number(0.01, 1000, zero=True), default=1.0, metavar="FACTOR",
                          help="x real time; 0 = as fast as possible (default 1)")
    wearable.add_argument("--format", default="batch", metavar="FORMAT",
                          help="json (a message per sample), batch or binary (default batch)")
    wearable.add_argument("--topic-prefix", default="har", metavar="PREFIX",
                          help="messages go to PREFIX/DEVICE/imu (default har)")
    p.set_defaults(run=cmd_publish)

    p = sub.add_parser("record")
    add_mqtt_options(p.add_argument_group("MQTT source (with --broker)"), required=False)
    add_serial_options(p.add_argument_group("serial source (with --port)"), required=False)
    out = p.add_argument_group("output")
    out.add_argument("--out", type=Path, required=True, metavar="FOLDER",
                     help="folder for the recordings (one file per device)")
    labels = p.add_argument_group("labels (a device's own: publish a class name to har/<device>/label)")
    labels.add_argument("--protocol", metavar="FILE.toml", help="a guided session that labels itself, e.g. "
                        "configs/protocols/hapt_six.toml")
    labels.add_argument("--classes", metavar="NAMES",
                        help="the class names labels may take, comma-separated (default: the protocol's, "
                        "else any name a device publishes); keys 1-9 choose one in the "
                        "dashboard, 0 clears")
    labels.add_argument("--headless", action="store_true", help="no dashboard: one line per step")
    p.set_defaults(run=cmd_record)
