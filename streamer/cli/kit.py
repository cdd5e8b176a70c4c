"""Your own wearable on the command line: ``check`` (does the model fit what the device sends:
streamer/tools/device_check.py), ``init-config`` (a training config from labelled recordings) and
``calibrate`` (a model adapted to one wearer, model/train/calibration.py). ``record`` is
streamer/cli/record.py."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from model.data.recordings import read_csv_recording
from model.strict_json import dumps
from model.train.init_config import write_config
from streamer.cli.common import say
from streamer.cli.connect import add_mqtt_options, add_serial_options, mqtt_options, serial_source, start_mqtt
from streamer.errors import CliError
from streamer.live import DEFAULT_CHECKPOINT, open_checkpoint
from streamer.options import count, number
from streamer.tools.device_check import (
    MqttListener,
    analyse,
    listen_mqtt,
    listen_serial,
    render,
)


def cmd_check(args: argparse.Namespace) -> int:
    if (args.broker is None) == (args.port is None):
        raise CliError("check one of --broker URL (with --device NAME) or --port DEV")
    if args.broker and not args.device:
        raise CliError("--broker needs --device NAME: the device to check (har/NAME/imu)")
    if not 1 <= args.seconds <= 600:
        raise CliError(f"--seconds must be from 1 to 600, not {args.seconds:g}")
    meta = open_checkpoint(args.checkpoint)
    channels = meta.input_channels
    if args.broker:
        options = mqtt_options(args)
        listener = MqttListener(options, channels, args.device)
        start_mqtt(options, channels, connect_timeout=args.connect_timeout, headless=True, source=listener)
        heard = listen_mqtt(listener, args.seconds)
        device = args.device
    else:
        source = serial_source(args, channels, headless=True)
        device = source.device
        heard = listen_serial(source, args.seconds)
    units = tuple(meta.get("input_units") or ())
    report = analyse(heard, meta.rate_hz, channels, units, meta.gravity)
    report = {"device": device, "seconds": args.seconds, "checkpoint": str(args.checkpoint), **report}
    if args.json:
        print(dumps(report))
    else:
        from rich.console import Console

        Console().print(render(report, device, str(args.checkpoint)))
    return 0 if all(c["ok"] for c in report["checks"]) else 1


def cmd_init_config(args: argparse.Namespace) -> int:
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


def cmd_calibrate(args: argparse.Namespace) -> int:

    out = Path(args.out)
    if out.exists() and not args.force:
        raise CliError(f"{out} exists: choose another --out, or --force to replace it")
    if out.suffix != ".pt":
        raise CliError(f"--out must name a .pt file (its .json is written beside it), not {out}")
    from model.net.checkpoint import load_checkpoint
    from model.train.calibration import calibrate, save  # deferred: torch

    t0 = time.perf_counter()
    base = load_checkpoint(args.checkpoint)
    recordings = []
    for path in args.recording:
        # the reader refuses another rate (over 2 %) and values beyond the limits of the model's units
        units = tuple(base.meta.raw.get("input_units") or ())
        channels = base.input_channels
        recordings.append(read_csv_recording(Path(path), channels, base.classes, base.rate_hz, units))
    command = "harstream calibrate " + " ".join(
        [f"--checkpoint {args.checkpoint}", *(f"--recording {p}" for p in args.recording), f"--out {out}"])
    cal = calibrate(base, recordings, seconds=args.seconds, name=args.name or out.stem, command=command)
    save(cal, out)
    counts = ", ".join(f"{k} {v}" for k, v in cal.windows_per_class.items() if v)
    turned = ""
    if cal.rotation is not None:
        turned = f"; axes rotated ({cal.angle_deg:.0f}° from the model's gravity)"
    say(f"wrote {out} from {counts} windows{turned} in {time.perf_counter() - t0:.1f} s")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    # each command's help, description and examples: streamer/cli/table.py
    p = sub.add_parser("check")
    add_mqtt_options(p.add_argument_group("MQTT (with --broker; --device names the device)"), required=False)
    add_serial_options(p.add_argument_group("serial (with --port)"), required=False)
    p.add_argument("--seconds", type=number(1, 600, unit="s"), default=10.0, metavar="SECONDS",
                   help="how long to listen (default 10)")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, metavar="FILE.pt",
                   help="the model to check against (default: the shipped model)")
    p.add_argument("--json", action="store_true", help="the report as one JSON object")
    p.set_defaults(run=cmd_check)

    p = sub.add_parser("init-config")
    p.add_argument("recordings", type=Path, metavar="FOLDER",
                   help="the folder of labelled CSV recordings (harstream record's)")
    p.add_argument("--out", required=True, metavar="FILE.toml",
                   help="the config to write, e.g. configs/NAME.toml")
    p.add_argument("--window", type=count(2, 10_000, unit="samples"), default=128, metavar="SAMPLES",
                   help="samples per window (default 128; 24 for short "
                   "gestures or short recordings)")
    p.add_argument("--step", type=count(1, 100_000, unit="samples"), metavar="SAMPLES",
                   help="samples between training windows (default half the window)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(run=cmd_init_config)

    p = sub.add_parser("calibrate")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, metavar="FILE.pt",
                   help="the base model (default: the shipped model)")
    p.add_argument("--recording", action="append", required=True, metavar="CSV",
                   help="a labelled recording of the wearer (harstream record's CSV); repeatable")
    p.add_argument("--out", required=True, metavar="FILE.pt",
                   help="the calibrated checkpoint to write, e.g. wearer.pt")
    p.add_argument("--seconds", type=number(1, 86400, unit="s"), default=20.0, metavar="SECONDS",
                   help="at most this much of each activity (default 20)")
    p.add_argument("--name", metavar="NAME", help="the calibrated model's name (default: --out's stem)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(run=cmd_calibrate)
