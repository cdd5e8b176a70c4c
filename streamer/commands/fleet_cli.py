"""``harstream fleet``: one worker of a recognizer fleet on RabbitMQ (:mod:`streamer.sources.fleet`), built
by :mod:`streamer.commands.live_command` as ``mqtt`` is, with the same sinks: ``--publish`` and
``--ha-discovery`` go out through RabbitMQ's MQTT plugin (``--mqtt-port``), so MQTT subscribers see
``har/<device>/activity`` as they do from ``harstream mqtt``."""

from __future__ import annotations

import argparse
import os
import socket
import time
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
from streamer.commands.options import count, number, port
from streamer.core.limits import FLEET_MAX_PARTITIONS

if TYPE_CHECKING:
    from streamer.sources.fleet import FleetOptions
    from streamer.sources.mqtt import MqttSource

RETRY_S = 1.0  # between tries to reach the broker at start-up


def fleet_options(args: argparse.Namespace) -> FleetOptions:
    """``--amqp``, ``--partitions``, ``--worker`` and ``--fleet-name``, checked (one line each)."""
    from streamer.core.shard import Shard
    from streamer.sources.fleet import FleetOptions, parse_amqp

    try:
        worker = Shard.parse(args.worker)
    except ValueError as error:
        raise CliError(str(error).replace("bad shard", "bad --worker")) from None
    try:
        return FleetOptions(parse_amqp(args.amqp), args.partitions, worker, name=args.fleet_name)
    except ValueError as error:
        raise CliError(str(error)) from None


def reach_broker(options: FleetOptions, timeout: float, headless: bool) -> None:
    """Declare the topology and check this worker against it, once; what retrying cannot mend is an
    error, and with ``headless`` so is a broker that stays away for ``timeout`` seconds."""
    import pika.exceptions

    from streamer.sources.fleet import FleetRefused, preflight, why

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
    share = " ".join(map(str, options.share)) or "none"
    say(f"connected to {url} as worker {options.worker.text} of {options.name!r}: partitions {share} "
        f"first, standing by on the rest of {options.partitions}")  # fmt: skip


def start_outlet(options: FleetOptions, mqtt_port: int, timeout: float, headless: bool) -> MqttSource:
    """The MQTT client that publishes predictions and events through RabbitMQ's MQTT plugin (3.1.1:
    the plugin speaks MQTT 5 only from RabbitMQ 3.13); it subscribes to nothing."""
    from streamer.sources.mqtt import Broker, MqttOptions, MqttSource

    broker = options.broker
    # the plugin's way to name a vhost: VHOST:USER
    user = broker.user if broker.vhost == "/" else f"{broker.vhost}:{broker.user}"
    worker = f"{options.worker.index}of{options.worker.count}"
    mqtt = MqttOptions(Broker(broker.host, mqtt_port, broker.tls), options.topic,
                       client_id=f"harstream-fleet-{socket.gethostname()[:20]}-{os.getpid()}-{worker}",
                       username=user, password=broker.password, announce=True,
                       name=f"{options.name}-worker-{worker}", listen=False, protocol=4)  # fmt: skip
    outlet = MqttSource(mqtt, ())
    outlet.start()
    if outlet.wait_settled(timeout if headless else min(timeout, 2.0)) and outlet.fatal:
        outlet.close()
        raise CliError(outlet.fatal)
    if not outlet.connected.is_set():
        if headless:
            outlet.close()
            raise CliError(f"could not connect to the MQTT plugin at {mqtt.broker.url} within {timeout:g} s: "
                           f"{outlet.status}")  # fmt: skip
        say(f"cannot reach the MQTT plugin at {mqtt.broker.url} ({outlet.status}); retrying")
    return outlet


def cmd_fleet(args: argparse.Namespace) -> int:
    from streamer.commands.activity_log import episodes_of
    from streamer.sinks.device_health import HealthPublisher
    from streamer.sinks.episode_publisher import EpisodePublisher
    from streamer.sources.fleet import FleetSource
    from streamer.sources.mqtt import PredictionPublisher

    options = fleet_options(args)
    live = LiveOptions.from_args(args)
    checkpoint = open_checkpoint(live.checkpoint)
    sigterm_as_interrupt()
    reach_broker(options, args.connect_timeout, live.headless)
    source = FleetSource(options, checkpoint.input_channels, max_devices=live.max_devices)
    try:
        if args.publish or args.ha_discovery:
            port = args.mqtt_port or (8883 if options.broker.tls else 1883)
            source.outlet = outlet = start_outlet(options, port, args.connect_timeout, live.headless)
        pipeline, hop = live_parts(live, checkpoint, [source])
        if source.outlet is not None:
            pipeline.sinks.append(PredictionPublisher(outlet, discovery=args.ha_discovery))
            EpisodePublisher(outlet, episodes_of(pipeline), discovery=args.ha_discovery)  # har/<device>/event
            pipeline.sinks.append(HealthPublisher(outlet, pipeline))  # har/<device>/health
        title = (f"harstream fleet · {options.broker.url} · worker {options.worker.text} of "
                 f"{options.partitions} partitions · window {checkpoint.window} hop {hop} · Ctrl-C to stop")
        code = run_live(live, pipeline, checkpoint.classes, title)
        return 1 if source.fatal else code  # the source said why, in one line, when it gave up
    finally:
        source.close()


def add_fleet_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fleet")  # its help, description and examples: streamer/commands/table.py
    broker = p.add_argument_group("RabbitMQ")
    broker.add_argument("--amqp", required=True, metavar="URL",
                        help="amqp://USER:PASS@HOST[:PORT]/VHOST (amqps:// for TLS)")
    broker.add_argument("--partitions", type=count(1, FLEET_MAX_PARTITIONS), required=True, metavar="N",
                        help="partition queues the devices are spread over; the same for every worker")
    broker.add_argument("--worker", default="0/1", metavar="K/N",
                        help="this worker owns the partitions p with p %% N == K and stands by on the rest "
                        "(default 0/1)")
    broker.add_argument("--fleet-name", default="har.fleet", metavar="NAME",
                        help="the exchange and its queues' prefix (default har.fleet)")
    broker.add_argument("--mqtt-port", type=port, metavar="PORT",
                        help="the MQTT plugin's port, for --publish (default 1883)")
    broker.add_argument("--connect-timeout", type=number(0.1, 86400, unit="s"), default=10.0,
                        metavar="SECONDS",
                        help="seconds to reach the broker before --headless gives up (default 10)")
    add_device_limits(p.add_argument_group("devices"))
    out = p.add_argument_group("MQTT output (through the broker's MQTT plugin)")
    out.add_argument("--publish", action="store_true", help="publish predictions to har/<device>/activity")
    out.add_argument("--ha-discovery", action="store_true",
                     help="announce each device to Home Assistant (implies --publish)")
    add_live_options(p)
    p.set_defaults(run=cmd_fleet)
