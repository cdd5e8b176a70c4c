"""``harstream replay``: recordings played as live devices through the same pipeline as ``mqtt`` and
``serial`` (the main job: the live dashboard on a held-out HAPT recording with the shipped model),
their true labels beside the predictions, matched to the model's classes by name."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np

from model.net.checkpoint_meta import CheckpointMeta
from replay.sources import Device, Inputs, ReplaySource, parse_source
from streamer.cli.common import say
from streamer.cli.live_options import add_live_options
from streamer.errors import CliError
from streamer.live import DEFAULT_CHECKPOINT, LiveOptions, assemble, open_checkpoint, run_live
from streamer.options import number


def cmd_replay(args: argparse.Namespace) -> int:
    specs = args.sources or ["hapt:2"]
    options = LiveOptions.from_args(args, checkpoint=replay_checkpoint(args.checkpoint, specs))
    checkpoint = open_checkpoint(options.checkpoint)
    sources = [ReplaySource(device, speed=args.speed) for device in replay_devices(specs, checkpoint)]
    run = assemble(options, checkpoint, sources)
    speed = "as fast as possible" if args.speed == 0 else f"{args.speed:g}x real time"
    title = (f"harstream replay · {checkpoint.name} · {checkpoint.rate_hz:g} Hz · window {checkpoint.window} "
             f"hop {run.hop} · {speed} · Ctrl-C to stop")
    return run_live(options, run, checkpoint.classes, title)


def replay_checkpoint(given: Path, specs: list[str]) -> Path:
    """The model to replay ``specs`` with: the shipped OPPORTUNITY one for OPPORTUNITY runs when
    none was chosen, else ``given``."""
    if given != DEFAULT_CHECKPOINT or not all(s.startswith("opportunity:") for s in specs):
        return given
    path = DEFAULT_CHECKPOINT.with_name("opportunity_18.pt")
    if not path.exists():
        raise CliError(f"no OPPORTUNITY model at {path}: train one with python train.py "
                       "--config configs/opportunity_18.toml --data-zip OpportunityUCIDataset.zip")
    return path


def replay_devices(specs: list[str], checkpoint: CheckpointMeta) -> list[Device]:
    """The devices that the SOURCE specs name, read in the checkpoint's channels and classes."""
    inputs = Inputs(checkpoint.input_channels, checkpoint.classes, checkpoint.rate_hz)
    devices = [device for spec in specs for device in parse_source(spec, inputs)]
    names = [d.name for d in devices]
    if len(set(names)) != len(names):
        raise CliError(f"the same device is named twice: {', '.join(names)}")
    devices, note = truth_by_name(devices, checkpoint.classes)
    if note:
        say(note)
    return devices


def truth_by_name(devices: list[Device], classes: tuple[str, ...]) -> tuple[list[Device], str | None]:
    """The devices with their recordings' labels as indices into the model's ``classes``, matched
    by name: a recording's labels index its own class list (HAPT's six for ``hapt:N``), which a model
    trained on other recordings does not share. A label the model does not know is no truth; the
    note (one line, or None) says which labels that left without truth."""

    where = {name: i for i, name in enumerate(classes)}
    unknown: set[str] = set()
    out = []
    for device in devices:
        recordings = []
        for recording in device.recordings:
            if recording.classes == classes:
                recordings.append(recording)
                continue
            seen = np.unique(recording.labels[recording.labels >= 0])
            unknown |= {recording.classes[i] for i in seen if recording.classes[i] not in where}
            # the extra last entry: an unlabelled sample (-1) indexes it and stays -1
            lookup = np.array([where.get(name, -1) for name in recording.classes] + [-1], np.int64)
            recordings.append(replace(recording, labels=lookup[recording.labels], classes=classes))
        out.append(Device(device.name, recordings))
    if not unknown:
        return out, None
    names = ", ".join(sorted(unknown))
    if not any((r.labels >= 0).any() for d in out for r in d.recordings):
        return out, (f"no truth shown: the recordings' classes ({names}) are not the model's "
                     f"({', '.join(classes)})")  # fmt: skip
    return out, f"no truth shown for {names}: the model's classes ({', '.join(classes)}) do not name them"


def register(sub: argparse._SubParsersAction) -> None:
    # each command's help, description and examples: streamer/cli/table.py
    p = sub.add_parser("replay")
    p.add_argument("sources", nargs="*", metavar="SOURCE",
                   help="hapt:N[,M...], csv:PATH, uci-har:PATH[:SUBJECTS], opportunity:PATH "
                   "(default hapt:2)")
    p.add_argument("--speed", type=number(0.01, 1000, zero=True), default=1.0, metavar="FACTOR",
                   help="x real time; 0 = as fast as possible (default 1)")
    add_live_options(p)
    p.set_defaults(run=cmd_replay)
