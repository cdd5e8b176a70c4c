"""``harstream fleet``: one worker of a recognizer fleet on RabbitMQ (streamer/sources/fleet.py),
built by streamer/live.py as ``mqtt`` is, with the same outputs: ``--publish`` and ``--ha-discovery``
go out through RabbitMQ's MQTT plugin (``--mqtt-port``), so MQTT subscribers see
``har/<device>/activity`` as they do from ``harstream mqtt``."""

from __future__ import annotations

import argparse

from streamer.cli.common import sigterm_as_interrupt
from streamer.cli.connect import fleet_options, reach_broker, start_outlet
from streamer.cli.live_options import add_device_limits, add_live_options, add_mqtt_output
from streamer.core.limits import FLEET_MAX_PARTITIONS
from streamer.live import LiveOptions, assemble, open_checkpoint, run_live
from streamer.options import count, number, port
from streamer.sinks.announcer import Announcer
from streamer.sinks.device_health import HealthPublisher
from streamer.sources.fleet import FleetSource


def cmd_fleet(args: argparse.Namespace) -> int:
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
        run = assemble(live, checkpoint, [source])
        if source.outlet is not None:
            # predictions, episode events and discovery: the episodes tell it of all three
            run.episodes.sinks.append(Announcer(outlet, discovery=args.ha_discovery))
            run.pipeline.sinks.append(HealthPublisher(outlet, run.pipeline))  # har/<device>/health
        title = (f"harstream fleet · {options.broker.url} · {options.who} of "
                 f"{options.partitions} partitions · window {checkpoint.window} hop {run.hop} · "
                 "Ctrl-C to stop")
        code = run_live(live, run, checkpoint.classes, title)
        return 1 if source.fatal else code  # the source said why, in one line, when it gave up
    finally:
        source.close()


def register(sub: argparse._SubParsersAction) -> None:
    # each command's help, description and examples: streamer/cli/table.py
    p = sub.add_parser("fleet")
    broker = p.add_argument_group("RabbitMQ")
    broker.add_argument("--amqp", required=True, metavar="URL",
                        help="amqp://USER:PASS@HOST[:PORT]/VHOST (amqps:// for TLS)")
    broker.add_argument("--partitions", type=count(1, FLEET_MAX_PARTITIONS), required=True, metavar="N",
                        help="partition queues the devices are spread over; the same for every worker")
    broker.add_argument("--worker", metavar="K/N",
                        help="a fixed share: this worker owns the partitions p with p %% N == K and stands "
                        "by on the rest (default: the workers share the partitions evenly by themselves)")
    broker.add_argument("--fleet-name", default="har.fleet", metavar="NAME",
                        help="the exchange and its queues' prefix (default har.fleet)")
    broker.add_argument("--mqtt-port", type=port, metavar="PORT",
                        help="the MQTT plugin's port, for --publish (default 1883)")
    broker.add_argument("--connect-timeout", type=number(0.1, 86400, unit="s"), default=10.0,
                        metavar="SECONDS",
                        help="seconds to reach the broker before --headless gives up (default 10)")
    add_device_limits(p.add_argument_group("devices"))
    add_mqtt_output(p.add_argument_group("MQTT output (through the broker's MQTT plugin)"))
    add_live_options(p)
    p.set_defaults(run=cmd_fleet)
