"""``harstream history``: what each wearer did, from the store (as Core Motion answers "what did
the user do between A and B").

Time spent per activity is the stored predictions' (each window counted for its hop), so it matches
what the recognizer said window by window; the episode list is the stored episodes. ``--json``
writes one object ``{"devices": {"<id>": {"seconds": {...}, "episodes": [...]}}}``; ``--plot``
draws one timeline per device (matplotlib, the ``plot`` extra) with the ground truth under it when
the source had labels.
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime
from pathlib import Path

from model.strict_json import dumps
from streamer.options import parse_when
from streamer.sinks.store import StoreError, Target
from streamer.sinks.store_reader import read_history, unknown_device

MAX_EPISODES_SHOWN = 50  # per device in the table (--json has them all)


def clock(t: float) -> str:
    return datetime.fromtimestamp(t).strftime("%H:%M:%S")


def hms(seconds: float) -> str:
    """``5025.0`` as ``1:23:45``.

    >>> hms(5025.0), hms(59.6)
    ('1:23:45', '0:01:00')
    """
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def print_history(history: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not history["devices"]:
        console.print("no history in that time")
        return
    totals = Table("device", "activity", "time", "share", title="time spent in each activity")
    for device, entry in history["devices"].items():
        whole = sum(entry["seconds"].values()) or 1.0
        for k, (activity, seconds) in enumerate(sorted(entry["seconds"].items(), key=lambda kv: -kv[1])):
            totals.add_row(device if k == 0 else "", activity, hms(seconds), f"{seconds / whole:.0%}")
    console.print(totals)
    for device, entry in history["devices"].items():
        episodes = entry["episodes"]
        table = Table("start", "end", "activity", "time", "confidence",
                      title=f"{device}: {len(episodes)} episodes"
                      + (f" (the last {MAX_EPISODES_SHOWN})" if len(episodes) > MAX_EPISODES_SHOWN else ""))
        for e in episodes[-MAX_EPISODES_SHOWN:]:
            confidence = "" if e["confidence"] is None else f"{e['confidence']:.2f}"
            table.add_row(clock(e["start"]), clock(e["end"]), e["activity"], hms(e["seconds"]), confidence)
        console.print(table)


def cmd_history(args: argparse.Namespace) -> int:
    target = Target.parse(args.store)
    if args.agreement:
        from streamer.tools.episode_agreement import agreement_grid, print_grid

        read_history(target, since=time.time() + 1e9)  # a store that cannot be read: one line
        grid = agreement_grid(target)
        print(dumps({"agreement": grid})) if args.json else print_grid(grid)
        return 0
    since, until = parse_when(args.since), parse_when(args.until)
    history = read_history(target, args.device, since, until, truth=bool(args.plot))
    if args.device is not None and not history["devices"]:
        why = unknown_device(target, args.device)
        if why:
            raise StoreError(why)  # one line, exit 1 (streamer.cli.main)
    if args.plot:
        import sys

        from streamer.ui.history_plot import plot_history, wrote_line

        plot_history(history, args.plot)  # the picture is the report: one line says where it went
        print(wrote_line(history, args.plot), file=sys.stderr if args.json else sys.stdout)
    for entry in history["devices"].values():
        entry.pop("truth", None)
    if args.json:
        print(dumps(history))
    elif not args.plot:
        print_history(history)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("history")  # its help, description and examples: streamer/cli/table.py
    p.add_argument("--store", required=True, metavar="PATH_OR_URL", help="a SQLite file or postgresql://...")
    p.add_argument("--device", metavar="ID", help="only this device")
    p.add_argument("--since", metavar="WHEN", help="an age (2h, 7d), 'today', or an ISO date/time")
    p.add_argument("--until", metavar="WHEN", help="the same forms as --since (default: now)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--agreement", action="store_true", help="episodes vs the true segments of a labelled "
                   "replay, for a grid of --episode-hold and --episode-confidence settings")
    p.add_argument("--plot", type=Path, metavar="FILE.png", help="one timeline per device (needs matplotlib)")
    p.set_defaults(run=cmd_history)
