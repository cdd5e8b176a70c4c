"""``harstream mqtt | serial | publish | record``: live wearables on the command line.

Kept apart from :mod:`streamer.cli`, which only registers these commands in its parser.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from streamer.cli import CliError, add_live_options, live_parts, open_checkpoint, run_live


def sigterm_as_interrupt() -> None:
    """SIGTERM stops as Ctrl-C does: sources stop, files close, the summary prints."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def say(message: str) -> None:
    print(f"harstream: {message}", file=sys.stderr, flush=True)


# -- MQTT ----------------------------------------------------------------------------------------
def mqtt_options(args: argparse.Namespace):
    from streamer.mqtt import MqttOptions, TopicPattern, parse_broker
    from streamer.shard import Shard
    from streamer.wire import valid_device_id

    if not 0 <= args.qos <= 2:
        raise CliError(f"--qos must be 0, 1 or 2, not {args.qos}")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise CliError("--tls-cert and --tls-key go together")
    for path in (args.tls_ca, args.tls_cert, args.tls_key):
        if path and not Path(path).exists():
            raise CliError(f"no such file: {path}")
    shard = Shard.parse(args.shard) if getattr(args, "shard", None) else None
    group = getattr(args, "shared_group", None)
    if group is not None and not args.client_id:
        # one id per worker: two sessions with one id disconnect each other, over and over
        raise CliError("--shared-group needs a --client-id of its own for each worker")
    suffix = f"-shard{shard.index}of{shard.count}" if shard else ""  # workers of one host differ
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
        tls_cert=args.tls_cert, tls_key=args.tls_key, shard=shard, shared_group=group,
        persistent=bool(args.client_id),  # a session kept on the broker is an explicit choice
        # availability matters to whoever reads the predictions (Home Assistant); `record` and a
        # recognizer that publishes nothing stay off the status topic
        announce=bool(getattr(args, "publish", False) or getattr(args, "ha_discovery", False)), name=name,
    )  # fmt: skip


def start_mqtt(args: argparse.Namespace, channels: tuple[str, ...]):
    """An MQTT source, connecting; a refusal for good (credentials, certificate) is an error, and
    with ``--headless`` so is a broker that stays away."""
    from streamer.mqtt import MqttSource, unreachable

    options = mqtt_options(args)
    source = MqttSource(options, channels, max_devices=getattr(args, "max_devices", 10_000))
    source.start()
    wait = args.connect_timeout if args.headless else min(args.connect_timeout, 2.0)
    if source.wait_settled(wait) and source.fatal:  # retrying cannot help: one line, exit 1
        source.close()
        raise CliError(source.fatal)
    if source.connected.is_set():
        shard = f" (shard {options.shard.text})" if options.shard else ""
        say(f"connected to {options.broker.url} as {options.client_id}, "
            f"listening on {options.subscription}{shard}")
        return source
    why = unreachable(options.broker) or source.status
    if args.headless:
        source.close()
        raise CliError(f"could not connect to broker {options.broker.url} within {wait:g} s: {why}")
    say(f"cannot reach broker {options.broker.url} ({why}); retrying, Ctrl-C to stop")
    return source


def share_cores(workers: int) -> None:
    """Give each of ``workers`` recognizers on this host its share of the cores for inference.

    torch's intra-op threads spin while they wait for work; two workers with all cores each took
    28 s instead of 0.2 s for the same 100 windows on a busy 2-core machine (tests/test_shard.py).
    ``OMP_NUM_THREADS`` in the environment, when set, decides instead.
    """
    import os

    import torch

    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def cmd_mqtt(args: argparse.Namespace) -> int:
    from streamer.mqtt import PredictionPublisher

    checkpoint = open_checkpoint(args.checkpoint)
    sigterm_as_interrupt()
    source = start_mqtt(args, checkpoint.input_channels)
    if source.options.shard is not None and args.backend == "torch":  # onnx: --threads each
        share_cores(source.options.shard.count)
    try:
        pipeline, hop = live_parts(args, checkpoint, [source])
        source.reject = pipeline.stats.reject
        if args.publish or args.ha_discovery:
            pipeline.sinks.append(PredictionPublisher(source, discovery=args.ha_discovery))
        title = (f"harstream mqtt · {source.options.broker.url} {source.options.subscription} · "
                 f"window {checkpoint.window} hop {hop} · Ctrl-C to stop")  # fmt: skip
        code = run_live(args, pipeline, checkpoint.classes, title)
        return 1 if source.fatal else code  # the source said why, in one line, when it gave up
    finally:
        source.close()


def add_mqtt_options(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--broker", required=required, help="mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
    p.add_argument("--topic", default="har/+/imu", help="'+' is the device id (default har/+/imu)")
    p.add_argument("--username")
    p.add_argument("--password")
    p.add_argument("--tls-ca", help="CA certificate file (turns TLS on)")
    p.add_argument("--tls-cert", help="client certificate file")
    p.add_argument("--tls-key", help="client key file")
    p.add_argument("--client-id", help="keep a persistent session on the broker under this id (default: no "
                   "session kept, id harstream-HOSTNAME-PID); one id per process")
    p.add_argument("--qos", type=int, default=1, help="subscription QoS (default 1)")
    p.add_argument("--connect-timeout", type=float, default=10.0,
                   help="seconds to reach the broker before --headless gives up, and before `publish` gives "
                   "up on a broker it lost (default 10)")


# -- serial --------------------------------------------------------------------------------------
def serial_source(args: argparse.Namespace, channels: tuple[str, ...]):
    """A serial source; with ``--headless`` a port that does not open is an error."""
    from streamer.limits import WIRE_RATE_HZ
    from streamer.serial_source import NAME, SerialSource
    from streamer.wire import valid_device_id

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
        if args.headless:
            raise CliError(f"could not open port {args.port!r}: {error}") from None
        say(f"could not open port {args.port!r} ({error}); retrying, Ctrl-C to stop")
    return source


def cmd_serial(args: argparse.Namespace) -> int:
    checkpoint = open_checkpoint(args.checkpoint)
    sigterm_as_interrupt()
    source = serial_source(args, checkpoint.input_channels)
    pipeline, hop = live_parts(args, checkpoint, [source])
    source.reject = pipeline.stats.reject
    title = f"harstream serial · {args.port} · window {checkpoint.window} hop {hop} · Ctrl-C to stop"
    return run_live(args, pipeline, checkpoint.classes, title)


def add_serial_options(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--port", required=required, help="serial port, e.g. /dev/ttyUSB0 (or a pyserial URL)")
    p.add_argument("--baud", type=int, default=115_200)
    p.add_argument("--hz", type=float, help="sample rate, when lines carry no time column")
    p.add_argument("--columns", help="column names when the device sends no header, e.g. acc_x,acc_y,...")
    p.add_argument("--device", help="device id (default: the port's name)")
    p.add_argument("--acc-unit", choices=("g", "m/s2"), default="g", help="unit of the acc_* columns")


# -- publish and record --------------------------------------------------------------------------
def cmd_publish(args: argparse.Namespace) -> int:
    from model.recordings import HAPT_ACTIVITIES, HAPT_CHANNELS, HAPT_RATE_HZ
    from replay.sources import Inputs, parse_source
    from streamer.publisher import FORMATS, Publisher
    from streamer.wire import valid_device_id

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
    try:
        for publisher in publishers:
            publisher.connect(args.connect_timeout)
    except OSError as error:  # ConnectionError and ssl's errors (a wrong CA) are OSErrors
        for publisher in publishers:
            publisher.client.loop_stop()
        raise CliError(f"could not connect to broker {options.broker.url}: {error}") from None
    sigterm_as_interrupt()
    stop = threading.Event()
    threads = [threading.Thread(target=p.run, args=(stop,), daemon=True) for p in publishers]
    for thread in threads:
        thread.start()
    interrupted = False
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(0.2)
    except KeyboardInterrupt:
        interrupted = True
        stop.set()
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
    if interrupted:
        return 130
    return 1 if failed else 0


def cmd_record(args: argparse.Namespace) -> int:
    from model.recordings import HAPT_CHANNELS
    from streamer.recorder import CsvRecorder

    if (args.broker is None) == (args.port is None):
        raise CliError("record from one of --broker URL or --port DEV")
    args.headless = True  # no dashboard; a source that cannot start is an error
    sigterm_as_interrupt()
    recorder = CsvRecorder(args.out, HAPT_CHANNELS, note=say)  # recovers what a killed run left
    source = start_mqtt(args, HAPT_CHANNELS) if args.broker else serial_source(args, HAPT_CHANNELS)
    source.reject = lambda device, reason, count=1: None  # the source keeps its own tally
    stop = threading.Event()
    thread = threading.Thread(target=source.run, args=(recorder.write, stop), daemon=True)
    thread.start()
    say(f"recording {source.name} into {args.out}; Ctrl-C to stop")
    interrupted = False
    try:
        while thread.is_alive():
            time.sleep(0.5)
            recorder.flush()  # at least once a second, also when nothing new arrived
    except KeyboardInterrupt:
        interrupted = True
    finally:
        stop.set()
        if hasattr(source, "close"):
            source.close()
        thread.join(2.0)
        for path in recorder.close():
            say(f"wrote {path}")
        if recorder.dropped:
            say("not recorded: " + ", ".join(f"{n} samples ({why})" for why, n in recorder.dropped.items()))
    if getattr(source, "fatal", None):  # refused for good or taken over: said in one line already
        return 1
    return 0 if interrupted or not thread.is_alive() else 1


def add_wearable_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("mqtt", help="recognize activities of wearables that publish to an MQTT broker")
    add_mqtt_options(p)
    p.add_argument("--max-devices", type=int, default=1000, help="ignore device ids beyond this many")
    p.add_argument("--idle-timeout", type=float, default=300.0,
                   help="forget a device silent for this many seconds (0 = never)")
    p.add_argument("--shard", metavar="K/N",
                   help="keep only the devices with crc32(device id) %% N == K (see streamer/shard.py); "
                   "run N workers, K = 0 .. N-1")
    p.add_argument("--shared-group", metavar="NAME",
                   help="subscribe through the MQTT 5 shared subscription $share/NAME/TOPIC; needs a broker "
                   "that keeps a topic on one subscriber (EMQX hash_topic), not mosquitto")
    p.add_argument("--publish", action="store_true", help="publish predictions to har/<device>/activity")
    p.add_argument("--ha-discovery", action="store_true",
                   help="announce each device to Home Assistant (implies --publish)")
    add_live_options(p)
    p.set_defaults(run=cmd_mqtt)

    p = sub.add_parser("serial", help="recognize the activity of a wearable on a serial port")
    add_serial_options(p)
    add_live_options(p)
    p.set_defaults(run=cmd_serial)

    p = sub.add_parser("publish", help="publish a recording over MQTT as a wearable would")
    p.add_argument("source", nargs="?", default="hapt:2", metavar="SOURCE",
                   help="as in replay: hapt:N, csv:PATH, ... (default hapt:2)")
    add_mqtt_options(p)
    p.add_argument("--device", help="device id on the wire (default: the recording's)")
    p.add_argument("--speed", type=float, default=1.0, help="x real time; 0 = as fast as possible")
    p.add_argument("--format", default="batch", help="json (a message per sample), batch or binary")
    p.add_argument("--topic-prefix", default="har", help="messages go to PREFIX/DEVICE/imu")
    p.set_defaults(run=cmd_publish)

    p = sub.add_parser("record", help="write what live devices send into CSV recordings")
    add_mqtt_options(p, required=False)
    add_serial_options(p, required=False)
    p.add_argument("--out", type=Path, required=True, help="folder for the recordings (one file per device)")
    p.set_defaults(run=cmd_record)
