"""Your own wearable, end to end, on the command line: ``check``, ``init-config`` (and ``record``'s
labels, :mod:`streamer.record_session`). :mod:`streamer.cli` registers these in its parser."""

from __future__ import annotations

import argparse
from pathlib import Path

from model.strict_json import dumps
from streamer.live_command import DEFAULT_CHECKPOINT, CliError, open_checkpoint, say


def cmd_check(args: argparse.Namespace) -> int:
    from streamer.check import analyse, listen_mqtt, listen_serial, model_gravity, render
    from streamer.wearables_cli import mqtt_options, serial_source

    if (args.broker is None) == (args.port is None):
        raise CliError("check one of --broker URL (with --device NAME) or --port DEV")
    if args.broker and not args.device:
        raise CliError("--broker needs --device NAME: the device to check (har/NAME/imu)")
    if not 1 <= args.seconds <= 600:
        raise CliError(f"--seconds must be from 1 to 600, not {args.seconds:g}")
    meta = open_checkpoint(args.checkpoint)
    channels = meta.input_channels
    if args.broker:
        heard = listen_mqtt(mqtt_options(args), args.device, channels, args.seconds, args.connect_timeout)
        device = args.device
    else:
        source = serial_source(args, channels, headless=True)
        device = source.device
        heard = listen_serial(source, args.seconds)
    units = tuple(meta.get("input_units") or ())
    report = analyse(heard, meta.rate_hz, channels, units, model_gravity(meta))
    report = {"device": device, "seconds": args.seconds, "checkpoint": str(args.checkpoint), **report}
    if args.json:
        print(dumps(report))
    else:
        from rich.console import Console

        Console().print(render(report, device, str(args.checkpoint)))
    return 0 if all(c["ok"] for c in report["checks"]) else 1


def cmd_init_config(args: argparse.Namespace) -> int:
    from model.init_config import write_config

    out = Path(args.out)
    if out.exists() and not args.force:
        raise CliError(f"{out} exists: choose another --out, or --force to replace it")
    text, notes = write_config(args.recordings, out, window=args.window, step=args.step)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    for note in notes:
        say(note)
    say(f"wrote {out}; next: python train.py --config {out}")
    return 0


def add_kit_commands(sub: argparse._SubParsersAction) -> None:
    from streamer.wearables_cli import add_mqtt_options, add_serial_options

    p = sub.add_parser("check", help="listen to one wearable and say whether the model fits it "
                       "(rate, channels, units, orientation), with the fix for each mismatch")
    add_mqtt_options(p.add_argument_group("MQTT (with --broker; --device names the device)"), required=False)
    add_serial_options(p.add_argument_group("serial (with --port)"), required=False)
    p.add_argument("--seconds", type=float, default=10.0, help="how long to listen (default 10)")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="the model to check against")
    p.add_argument("--json", action="store_true", help="the report as one JSON object")
    p.set_defaults(run=cmd_check)

    p = sub.add_parser("init-config", help="write a training config for a folder of labelled CSV recordings")
    p.add_argument("recordings", type=Path, metavar="RECORDINGS_DIR")
    p.add_argument("--out", required=True, help="the config to write, e.g. configs/NAME.toml")
    p.add_argument("--window", type=int, default=128, help="samples per window (default 128; 24 for short "
                   "gestures or short recordings)")
    p.add_argument("--step", type=int, help="samples between training windows (default half the window)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(run=cmd_init_config)
