"""How the commands reach devices and brokers, in one place: the MQTT, serial and RabbitMQ options
they share, checked into connection settings, and connect-or-retry: a refusal that retrying cannot
mend is one line and exit 1, and so is a broker that stays away with ``--headless``; on the
dashboard the source keeps retrying and says so."""

from __future__ import annotations

import argparse
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pika.exceptions

from streamer.cli.common import say
from streamer.core.limits import WIRE_RATE_HZ
from streamer.core.mqtt_connection import (
    Broker,
    MqttConnection,
    MqttOptions,
    TopicPattern,
    parse_broker,
    unreachable,
)
from streamer.core.shard import Shard
from streamer.core.wire import valid_device_id
from streamer.errors import CliError
from streamer.options import count, number
from streamer.sources.fleet import FleetOptions, FleetRefused, parse_amqp, preflight, why
from streamer.sources.mqtt import MqttSource
from streamer.sources.serial_source import NAME, SerialSource

RETRY_S = 1.0  # between tries to reach RabbitMQ at start-up


def mqtt_options(args: argparse.Namespace, *, shard: str | None = None, shared_group: str | None = None,
                 announce: bool = False) -> MqttOptions:  # fmt: skip
    """The broker connection that the options every MQTT command has ask for (``--broker``,
    ``--topic``, credentials, TLS, ``--client-id``, ``--qos``), checked; for a recognizer also
    its ``--shard`` or ``--shared-group``, and whether it ``announce``-s its availability."""
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

    source = source or MqttSource(options, channels, max_devices=max_devices)

    def reason() -> str:
        return unreachable(options.broker) or source.status

    if not settle(source, f"broker {options.broker.url}", connect_timeout, headless, reason):
        source.status = f"cannot reach the broker ({reason()}); retrying, Ctrl-C to stop"  # on the dashboard
        return source
    shard = f" (shard {options.shard.text})" if options.shard else ""
    version = " over MQTT 3.1.1 (it does not speak MQTT 5)" if source.fell_back else ""
    where = f"{version} as {options.client_id}, listening on {options.subscription}{shard}"
    if headless:
        say(f"connected to {options.broker.url}{where}")
    else:  # the dashboard's source line (named for the broker) says it: a printed line stays above it
        source.status = f"connected{where}"
    return source


def settle(link: MqttSource | MqttConnection, what: str, timeout: float, headless: bool,
           reason: Callable[[], str]) -> bool:  # fmt: skip
    """Start ``link`` and wait for it: connect-or-retry, for the recognizer's source and the fleet's
    outlet alike. A refusal for good (credentials, a certificate) is an error; with ``headless`` so is
    ``what`` staying away for ``timeout`` seconds (``reason()`` says why); else it keeps retrying, and
    the caller says so. Whether it connected."""
    link.start()
    wait = timeout if headless else min(timeout, 2.0)
    if link.wait_settled(wait) and link.fatal:  # retrying cannot help: one line, exit 1
        link.close()
        raise CliError(link.fatal)
    if link.connected.is_set():
        return True
    if headless:
        said = reason()
        link.close()
        raise CliError(f"could not connect to {what} within {wait:g} s: {said}")
    return False


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


def serial_source(args: argparse.Namespace, channels: tuple[str, ...], *, headless: bool) -> SerialSource:
    """The serial source that ``--port``, ``--baud``, ``--hz``, ``--columns``, ``--device`` and
    ``--acc-unit`` ask for, its port opened; with ``headless`` a port that does not open is an error."""
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


def fleet_options(args: argparse.Namespace) -> FleetOptions:
    """``--amqp``, ``--partitions``, ``--worker`` and ``--fleet-name``, checked (one line each); without
    ``--worker``, a member that shares the partitions with the others by itself."""
    try:
        worker = None if args.worker is None else Shard.parse(args.worker)
    except ValueError as error:
        raise CliError(str(error).replace("bad shard", "bad --worker")) from None
    try:
        return FleetOptions(parse_amqp(args.amqp), args.partitions, worker, name=args.fleet_name)
    except ValueError as error:
        raise CliError(str(error)) from None


def reach_broker(options: FleetOptions, timeout: float, headless: bool) -> None:
    """Declare the topology and check this worker against it, once; what retrying cannot mend is an
    error, and with ``headless`` so is a broker that stays away for ``timeout`` seconds."""


    url = options.broker.url
    deadline = time.monotonic() + (timeout if headless else min(timeout, 2.0))
    while True:
        try:
            preflight(options)
            break
        except FleetRefused as error:
            raise CliError(f"{url}: {error}") from None
        except (pika.exceptions.AMQPError, OSError) as error:
            if time.monotonic() < deadline:
                time.sleep(RETRY_S)
                continue
            if headless:
                raise CliError(f"could not connect to {url} within {timeout:g} s: {why(error)}") from None
            say(f"cannot reach {url} ({why(error)}); retrying, Ctrl-C to stop")
            return
    if options.worker is None:
        say(f"connected to {url} as member {options.member} of {options.name!r}: sharing its "
            f"{options.partitions} partitions evenly with the other members")  # fmt: skip
        return
    share = " ".join(map(str, options.share)) or "none"
    say(f"connected to {url} as worker {options.worker.text} of {options.name!r}: partitions {share} "
        f"first, standing by on the rest of {options.partitions}")  # fmt: skip


def start_outlet(options: FleetOptions, mqtt_port: int, timeout: float, headless: bool) -> MqttConnection:
    """The MQTT client that publishes predictions and events through RabbitMQ's MQTT plugin (3.1.1:
    the plugin speaks MQTT 5 only from RabbitMQ 3.13); it subscribes to nothing."""

    broker = options.broker
    # the plugin's way to name a vhost: VHOST:USER
    user = broker.user if broker.vhost == "/" else f"{broker.vhost}:{broker.user}"
    # its availability: harstream/NAME-worker-KofN/status, or NAME-member-ID for a member
    worker = options.member if options.worker is None else f"{options.worker.index}of{options.worker.count}"
    label = f"member-{worker}" if options.worker is None else f"worker-{worker}"
    mqtt = MqttOptions(Broker(broker.host, mqtt_port, broker.tls), options.topic,
                       client_id=f"harstream-fleet-{socket.gethostname()[:20]}-{os.getpid()}-{worker}",
                       username=user, password=broker.password, announce=True,
                       name=f"{options.name}-{label}", protocol=4)  # fmt: skip
    outlet = MqttConnection(mqtt)  # no receiver: it subscribes to nothing
    if not settle(outlet, f"the MQTT plugin at {mqtt.broker.url}", timeout, headless, lambda: outlet.status):
        say(f"cannot reach the MQTT plugin at {mqtt.broker.url} ({outlet.status}); retrying")
    return outlet
