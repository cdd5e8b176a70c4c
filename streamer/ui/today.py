"""What each wearer did today, from the history store, for the live dashboard.

A thread reads the store's per-activity totals since local midnight every ``every_s`` seconds, so
the dashboard's refreshes never wait on the database; a store that cannot be read is one status
line, never an exception in the dashboard.
"""

from __future__ import annotations

import datetime
import threading

from streamer.cli.history import first_line, read_history
from streamer.sinks.store import Target


def midnight() -> float:
    """Local midnight today, as Unix time."""
    today = datetime.date.today()
    return datetime.datetime(today.year, today.month, today.day).timestamp()


class TodayTotals:
    def __init__(self, store: str, every_s: float = 10.0) -> None:
        self.target = Target.parse(store)
        self.every_s = every_s
        self.seconds: dict[str, dict[str, float]] = {}  # device -> activity -> seconds today
        self.status = "reading"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="today", daemon=True)

    def start(self) -> TodayTotals:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def refresh(self) -> None:
        try:
            history = read_history(self.target, since=midnight())
        except Exception as error:  # not there yet (the writer creates it), locked, server down
            self.status = f"today: {first_line(error)}"
            return
        self.seconds = {device: entry["seconds"] for device, entry in history["devices"].items()}
        self.status = "ok"

    def _run(self) -> None:
        while True:
            self.refresh()
            if self._stop.wait(self.every_s):
                return
