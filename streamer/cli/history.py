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
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from model.strict_json import dumps
from streamer.options import parse_duration
from streamer.sinks.store import StoreError, Target, store_text

MAX_EPISODES_SHOWN = 50  # per device in the table (--json has them all)


def parse_when(text: str | None, now: float | None = None) -> float | None:
    """Seconds since the epoch for ``--since``/``--until``: an age (``2h``, ``30m``, ``7d``: that long
    ago), ``today`` (local midnight), or an ISO date or time (local time unless it says otherwise).

    >>> parse_when("2h", now=10_000.0), parse_when(None)
    (2800.0, None)
    >>> parse_when("1970-01-01T00:01:00+00:00")
    60.0
    """
    if text is None:
        return None
    now = time.time() if now is None else now
    if text == "today":
        return datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    if re.fullmatch(r"\s*\d+(\.\d+)?\s*[smhdw]\s*", text):
        return now - parse_duration(text)
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ValueError(f"bad time {text!r}: use an age (2h, 30m, 7d), 'today', or an ISO date or "
                         "time (2024-05-01T08:00)") from None  # fmt: skip


def read_history(target: Target, device: str | None = None, since: float | None = None,
                 until: float | None = None, truth: bool = False) -> dict:  # fmt: skip
    """``{"devices": {id: {"seconds": {activity: s}, "episodes": [...]}}}`` from the store; with
    ``truth``, each device also gets ``"truth"``: its predictions' true labels as ``[t, seconds, label]``."""
    # never writes: a read-only store, someone else's file
    return _reading(target, lambda connection: _read(connection, target, device, since, until, truth))


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def known_devices(target: Target) -> list[str]:
    """Every device the store holds predictions or episodes of, sorted."""
    connection = target.connect_readonly()
    try:
        cursor = connection.cursor()
        cursor.execute("SELECT device FROM predictions UNION SELECT device FROM episodes")
        devices = sorted(str(row[0]) for row in cursor.fetchall())
        cursor.close()
        return devices
    except Exception as error:  # a locked or damaged file, a server that went away
        raise StoreError(f"cannot read the store {target.display}: {first_line(error)}") from None
    finally:
        connection.close()


def read_latest(target: Target) -> dict[str, dict]:
    """Every device's latest stored prediction, ``{id: {"label", "confidence", "t"}}`` (the web page's
    fleet: who is there, and when each was last heard)."""
    return _reading(target, lambda connection: _latest(connection, target))


def read_totals(target: Target, since: float | None = None, until: float | None = None,
                device: str | None = None) -> dict[str, dict[str, float]]:  # fmt: skip
    """``{id: {activity: seconds}}``: :func:`read_history`'s time per activity without its episodes
    (the web page's fleet bars and a wearer's days)."""
    return _reading(target, lambda connection: _totals(connection.cursor(), target, device, since, until))


def has_device(target: Target, device: str) -> bool:
    """Whether the store holds a prediction or an episode of ``device`` (two index lookups)."""

    def look(connection: Any) -> bool:
        cursor = connection.cursor()
        for table in ("predictions", "episodes"):
            query = target.sql(f"SELECT 1 FROM {table} WHERE device = ? LIMIT 1")
            cursor.execute(query, (store_text(device),))
            if cursor.fetchone() is not None:
                return True
        return False

    return _reading(target, look)


def _reading(target: Target, read: Any) -> Any:
    """``read(connection)`` on a read-only connection; every failure is a one-line StoreError."""
    try:
        connection = target.connect_readonly()
    except StoreError:
        raise
    except Exception as error:
        raise StoreError(f"cannot read the store {target.display}: {first_line(error)}") from None
    try:
        return read(connection)
    except Exception as error:  # a locked or damaged file, a server that went away
        raise StoreError(f"cannot read the store {target.display}: {first_line(error)}") from None
    finally:
        connection.close()


def _latest(connection: Any, target: Target) -> dict[str, dict]:
    cursor = connection.cursor()
    cursor.execute("SELECT p.device, p.label, p.confidence, p.t FROM predictions p JOIN "
                   "(SELECT device, MAX(t) AS t FROM predictions GROUP BY device) m "
                   "ON p.device = m.device AND p.t = m.t ORDER BY p.device")  # fmt: skip
    out: dict[str, dict] = {}
    for device, label, confidence, t in cursor.fetchall():
        sure = None if confidence is None else round(float(confidence), 4)
        out[device] = {"label": label, "confidence": sure, "t": round(float(t), 3)}
    cursor.close()
    return out


def _totals(cursor: Any, target: Target, device: str | None, since: float | None,
            until: float | None) -> dict[str, dict[str, float]]:  # fmt: skip
    where, params = _where("t", "t", device, since, until)
    cursor.execute(target.sql(f"SELECT device, label, SUM(seconds) FROM predictions{where} "
                              "GROUP BY device, label ORDER BY device, label"), params)  # fmt: skip
    out: dict[str, dict[str, float]] = {}
    for dev, label, seconds in cursor.fetchall():
        out.setdefault(dev, {})[label] = round(float(seconds), 3)
    return out


def unknown_device(target: Target, device: str) -> str | None:
    """Why ``--device`` names no device of the store (one line, with the closest names), or None
    when the store knows it: a typo must not read as "no history in that time", exit 0."""
    import difflib

    devices = known_devices(target)
    if store_text(device) in devices:
        return None
    if not devices:
        return f"the store {target.display} holds no devices yet"
    close = difflib.get_close_matches(device, devices, n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    shown = ", ".join(devices[:10]) + (f" and {len(devices) - 10} more" if len(devices) > 10 else "")
    return f"no device {device!r} in the store {target.display}: {hint}it knows {shown}"


def _where(column_from: str, column_to: str, device: str | None, since: float | None,
           until: float | None) -> tuple[str, list]:  # fmt: skip
    clauses, params = [], []
    if device is not None:
        clauses.append("device = ?")
        params.append(store_text(device))  # as the writer stored it (an id that is not UTF-8: escaped)
    if since is not None:
        clauses.append(f"{column_to} >= ?")
        params.append(since)
    if until is not None:
        clauses.append(f"{column_from} < ?")
        params.append(until)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def _read(connection: Any, target: Target, device: str | None, since: float | None, until: float | None,
          truth: bool) -> dict:  # fmt: skip
    cursor = connection.cursor()
    devices: dict[str, dict] = {dev: {"seconds": seconds, "episodes": []}
                                for dev, seconds in _totals(cursor, target, device, since, until).items()}
    where, params = _where("start_t", "end_t", device, since, until)
    cursor.execute(target.sql(f"SELECT device, activity, start_t, end_t, confidence FROM episodes{where} "
                              "ORDER BY device, start_t"), params)  # fmt: skip
    for dev, activity, start, end, confidence in cursor.fetchall():
        entry = devices.setdefault(dev, {"seconds": {}, "episodes": []})
        sure = None if confidence is None else round(confidence, 4)
        entry["episodes"].append({"activity": activity, "start": round(start, 3), "end": round(end, 3),
                                  "seconds": round(end - start, 3), "confidence": sure})  # fmt: skip
    if truth:
        where, params = _where("t", "t", device, since, until)
        cursor.execute(target.sql(f"SELECT device, t, seconds, truth FROM predictions{where} "
                                  "ORDER BY device, t"), params)  # fmt: skip
        for dev, t, seconds, label in cursor.fetchall():
            devices.setdefault(dev, {"seconds": {}, "episodes": []}).setdefault("truth", []).append(
                [t, seconds, label])
    cursor.close()
    return {"devices": dict(sorted(devices.items()))}


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
