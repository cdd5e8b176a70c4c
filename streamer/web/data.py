"""What ``harstream web``'s JSON API says, from the history store and the live state together.

The store is read with its own readers (:mod:`streamer.sinks.store_reader`, as ``harstream history``
reads it), on a worker thread, never on the server's loop; the fleet's part (each device's latest
prediction and today's time per activity) is read every :data:`STORE_EVERY_S` seconds and kept, so a thousand
browsers cost the database nothing more. A store that cannot be read is a status line (the page's
banner), and what was read last stays shown.
"""

from __future__ import annotations

import datetime
import time
from typing import Any

from model.train.report import glyphs
from streamer.sinks.store import Target
from streamer.sinks.store_reader import first_line, has_device, read_history, read_latest, read_totals
from streamer.ui.activity_colours import FIXED, activity_colours
from streamer.web.live import LiveState

STORE_EVERY_S = 5.0
DAYS = 7  # a wearer's page: time per activity for each of the last DAYS days


def midnight(days_ago: int = 0, now: float | None = None) -> float:
    """Local midnight ``days_ago`` days before today, as Unix time."""
    day = datetime.date.fromtimestamp(time.time() if now is None else now) - datetime.timedelta(days=days_ago)
    return datetime.datetime(day.year, day.month, day.day).timestamp()


HAPT = tuple(name for name in FIXED if name.isupper())  # the shipped model's classes, in its order


def activities(names: set[str]) -> dict[str, dict[str, str]]:
    """Each activity's colour and letter, as the terminal dashboard draws them: where the shipped
    model's activities are among them, its six classes in its order first (so their letters are the
    dashboard's, whichever of them were seen), then the rest by name.

    >>> activities({"STANDING", "WALKING"})["STANDING"]
    {'colour': '#ffaf00', 'letter': 'T'}
    """
    lead = HAPT if names & set(HAPT) else ()
    ordered = [*lead, *sorted(names - set(lead))]
    colours, letters = activity_colours(ordered), glyphs(tuple(ordered))
    return {name: {"colour": colours[name], "letter": letters[name]} for name in ordered if name in names}


def palette(store: StoreView, names: set[str]) -> dict[str, dict[str, str]]:
    """:func:`activities` of every name seen so far, so that a letter never changes with the rows
    that one answer happens to hold."""
    seen = store.names | {name for name in names if name}
    store.names = seen  # a new set, never changed in place: the loop and worker threads both call this
    return activities(seen)


class StoreView:
    """The store's part of the page, read on a worker thread (:meth:`refresh`, :meth:`device`)."""

    def __init__(self, store: str) -> None:
        self.target = Target.parse(store)
        self.latest: dict[str, dict] = {}
        self.today: dict[str, dict[str, float]] = {}
        self.ok = False
        self.status = "reading the store"
        self.read_at = 0.0
        self.names: set[str] = set()  # every activity seen (see palette)

    def refresh(self) -> bool:
        """Read the fleet's part again; whether it changed."""
        try:
            latest, today = read_latest(self.target), read_totals(self.target, since=midnight())
        except Exception as error:  # StoreError: not there yet, locked, a server that is down
            self.ok, self.status = False, first_line(error)
            return False
        changed = latest != self.latest or today != self.today
        self.latest, self.today = latest, today
        self.ok, self.status, self.read_at = True, f"reading {self.target.display}", time.time()
        return changed

    def knows(self, device: str) -> bool | None:
        """Whether the store holds ``device``; None when it cannot be read."""
        if device in self.latest:
            return True
        try:
            return has_device(self.target, device)
        except Exception:
            return None

    def history(self, device: str | None, since: float | None, until: float | None) -> dict:
        """``harstream history --json``'s object (StoreError when the store cannot be read)."""
        return read_history(self.target, device, since, until)

    def device(self, device: str, now: float | None = None) -> dict:
        """Today's history of one device (with the truth, where the store has it) and its time per
        activity for each of the last :data:`DAYS` days, oldest first."""
        today = midnight(0, now)
        history = read_history(self.target, device, since=today, truth=True)
        entry = history["devices"].get(device, {"seconds": {}, "episodes": []})
        truth = [[round(t, 3), seconds, label] for t, seconds, label in entry.pop("truth", []) if label]
        days = []
        for back in range(DAYS - 1, -1, -1):
            start, end = midnight(back, now), midnight(back - 1, now) if back else None
            totals = read_totals(self.target, since=start, until=end, device=device)
            days.append({"date": datetime.date.fromtimestamp(start).isoformat(),
                         "seconds": totals.get(device, {})})  # fmt: skip
        return {"today": {"devices": {device: entry}}, "truth": truth, "days": days}


def fleet_row(device: str, store: StoreView, live: dict | None) -> dict:
    """One device as the fleet page shows it: the newest of the store's and the broker's latest."""
    row: dict[str, Any] = {"id": device, "label": None, "confidence": None, "t": None, "health": None,
                           "episode": None, "seconds": store.today.get(device, {})}  # fmt: skip
    stored = store.latest.get(device)
    if stored is not None:
        row.update(stored)
    if live is not None:
        activity = live.get("activity")
        if activity and activity.get("label") and (row["t"] is None or (activity["t"] or 0) >= row["t"]):
            row.update(label=activity["label"], confidence=activity["confidence"], t=activity["t"])
        row["health"], row["episode"] = live.get("health"), live.get("episode")
    return row


def fleet(store: StoreView, live: LiveState) -> dict:
    """``/api/fleet``: every device, the activities' colours and letters, and the two statuses."""
    devices = sorted(set(store.latest) | set(store.today) | set(live.ids()))
    rows = [fleet_row(device, store, live.of(device)) for device in devices]
    return {"now": time.time(), "devices": rows, "activities": palette(store, names_of(rows)),
            **statuses(store, live)}  # fmt: skip


def names_of(rows: list[dict]) -> set[str]:
    names = {row["label"] for row in rows if row["label"]}
    for row in rows:
        names.update(row["seconds"])
    return names


def statuses(store: StoreView, live: LiveState) -> dict:
    return {"store": {"ok": store.ok, "status": store.status},
            "broker": {"ok": live.ok or live.broker is None, "status": live.status}}  # fmt: skip


def live_part(device: str, store: StoreView, state: dict) -> dict:
    """What a wearer's page updates live: its fleet row, class probabilities and recent events."""
    row, probs = fleet_row(device, store, state), (state.get("activity") or {}).get("probs", {})
    events = state.get("events", [])
    names = set(probs) | names_of([row]) | {e["activity"] for e in events if e.get("activity")}
    return {"now": time.time(), "live": row, "probs": probs, "events": events,
            "activities": palette(store, names)}


def wearer(device: str, store: StoreView, live: LiveState) -> dict:
    """``/api/device``: one wearer's live state (probabilities, health, recent events) and history."""
    out: dict[str, Any] = {"id": device, **live_part(device, store, live.of(device) or {})}
    out |= statuses(store, live)
    try:
        out |= store.device(device)
    except Exception as error:  # the store is down: the live part still shows, with a banner
        out["store"] = {"ok": False, "status": first_line(error)}
        out |= {"today": {"devices": {}}, "truth": [], "days": []}
    names = set(out["probs"]) | {e["activity"] for e in out["events"] if e.get("activity")}
    for entry in out["today"]["devices"].values():
        names |= set(entry["seconds"]) | {e["activity"] for e in entry["episodes"]}
    names |= {label for _, _, label in out["truth"]} | {n for day in out["days"] for n in day["seconds"]}
    out["activities"] = palette(store, names | names_of([out["live"]]))
    return out
