"""``harstream mqtt`` and ``harstream serial``: the activities of live wearables, from a broker or a
serial port, built by streamer/live.py as ``replay`` is; ``mqtt --publish`` sends the predictions and
episodes back to the broker (streamer/sinks/announcer.py, through the source's MQTT connection)."""

from __future__ import annotations

import argparse

from streamer.cli.common import say, sigterm_as_interrupt
from streamer.cli.connect import (
    add_mqtt_options,
    add_serial_options,
    recognizer_mqtt_options,
    serial_source,
    settle,
    start_mqtt,
)
from streamer.cli.live_options import add_device_limits, add_live_options, add_mqtt_output
from streamer.core.mqtt_connection import MqttConnection, MqttOptions, unreachable
from streamer.errors import CliError
from streamer.live import LiveOptions, assemble, open_checkpoint, run_live
from streamer.options import count
from streamer.processes import MAX_PROCESSES, Recognizers
from streamer.sinks.announcer import Announcer
from streamer.sinks.device_health import HealthPublisher


def cmd_mqtt(args: argparse.Namespace) -> int:
    connection = recognizer_mqtt_options(args)
    shard = connection.shard  # N workers on a host share its cores (LiveOptions.inference_threads)
    options = LiveOptions.from_args(args, workers=(shard.count if shard else 1) * max(1, args.processes))
    if args.processes:  # a receiving process apart: paho's thread no longer shares a GIL with inference
        return mqtt_processes(args, connection, options)
    checkpoint = open_checkpoint(options.checkpoint)
    sigterm_as_interrupt()
    source = start_mqtt(connection, checkpoint.input_channels, connect_timeout=args.connect_timeout,
                        headless=options.headless, max_devices=options.max_devices)  # fmt: skip
    try:
        run = assemble(options, checkpoint, [source])
        if args.publish or args.ha_discovery:
            # predictions, episode events and discovery: the episodes tell it of all three
            run.episodes.sinks.append(Announcer(source.connection, discovery=args.ha_discovery))
            run.pipeline.sinks.append(HealthPublisher(source.connection, run.pipeline))  # har/<device>/health
        title = (f"harstream mqtt · {connection.broker.url} {connection.subscription} · "
                 f"window {checkpoint.window} hop {run.hop} · Ctrl-C to stop")  # fmt: skip
        code = run_live(options, run, checkpoint.classes, title)
        return 1 if source.fatal else code  # the source said why, in one line, when it gave up
    finally:
        source.close()


def mqtt_processes(args: argparse.Namespace, connection: MqttOptions, options: LiveOptions) -> int:
    """``--processes N``: this process holds the connection and dispatches each device's messages to
    the one recognizer process that owns it (streamer/processes.py)."""
    if not options.headless:
        raise CliError("--processes N runs headless: add --headless, and watch the fleet with harstream web")
    if args.shared_group:
        raise CliError("--processes N shares the devices itself: drop --shared-group (or --processes)")
    open_checkpoint(options.checkpoint)  # a missing model: one line before any process starts
    sigterm_as_interrupt()
    recognizers = Recognizers(options, connection, args.processes, publish=args.publish,
                              discovery=args.ha_discovery, connect_timeout=args.connect_timeout,
                              debug=getattr(args, "debug", False))  # fmt: skip
    try:
        recognizers.start()
        link = MqttConnection(connection, receive=recognizers.router.on_message)
        settle(link, f"broker {connection.broker.url}", args.connect_timeout, True,
               lambda: unreachable(connection.broker) or link.status)  # fmt: skip
        shard = f" (shard {connection.shard.text})" if connection.shard else ""
        pids = " ".join(str(child.process.pid) for child in recognizers.children)  # process 0's first
        say(f"connected to {connection.broker.url} as {connection.client_id}, listening on "
            f"{connection.subscription}{shard}, for {args.processes} recognizer processes "
            f"(pids {pids})")  # fmt: skip
        return recognizers.serve(link)
    finally:
        recognizers.stop()


def cmd_serial(args: argparse.Namespace) -> int:
    options = LiveOptions.from_args(args)
    checkpoint = open_checkpoint(options.checkpoint)
    sigterm_as_interrupt()
    source = serial_source(args, checkpoint.input_channels, headless=options.headless)
    try:
        run = assemble(options, checkpoint, [source])
        title = f"harstream serial · {args.port} · window {checkpoint.window} hop {run.hop} · Ctrl-C to stop"
        return run_live(options, run, checkpoint.classes, title)
    finally:
        source.close()


def register(sub: argparse._SubParsersAction) -> None:
    # each command's help, description and examples: streamer/cli/table.py
    p = sub.add_parser("mqtt")
    broker = p.add_argument_group("MQTT source")
    add_mqtt_options(broker)
    fleet = p.add_argument_group("devices and workers")
    add_device_limits(fleet)
    fleet.add_argument("--shard", metavar="K/N",
                       help="keep only the devices with crc32(device id) %% N == K (streamer/core/shard.py); "
                       "run N workers, K = 0 .. N-1")
    fleet.add_argument("--processes", type=count(0, MAX_PROCESSES), default=0, metavar="N",
                       help="N recognizer processes on this host, each serving the devices with "
                       "crc32(device id) %% N == its number, while this one receives and dispatches; "
                       "headless (default 0: this process receives and recognizes)")
    fleet.add_argument("--shared-group", metavar="NAME",
                       help="subscribe through the MQTT 5 shared subscription $share/NAME/TOPIC; needs a "
                       "broker that keeps a topic on one subscriber (EMQX hash_topic), not mosquitto")
    add_mqtt_output(p.add_argument_group("MQTT output"))
    add_live_options(p)
    p.set_defaults(run=cmd_mqtt)

    p = sub.add_parser("serial")
    add_serial_options(p.add_argument_group("serial source"))
    add_live_options(p)
    p.set_defaults(run=cmd_serial)
