"""The history store: every prediction and every episode, kept in SQLite (a file, the default) or
PostgreSQL (one database for a fleet's shards), written off the hot path.

After Home Assistant's recorder: the pipeline's thread only appends rows to a queue
(:meth:`Store.add_prediction`, :meth:`Store.add_episode`: microseconds); one writer thread drains it
and commits every ``commit_interval`` seconds (1 s), so a recognizer killed with SIGKILL loses at most
the last second. A store that cannot be written (a locked or full disk, a server that is down) is
reported once, counted (:attr:`Store.failures`), and retried every interval with the rows kept (up to
``max_queued``; past it the oldest are dropped and counted); recognition never waits for it.
Retention (``--retain 30d``) prunes predictions older than that, at start and hourly; episodes stay.

One schema for both databases (``DOUBLE PRECISION`` is SQLite's REAL); times are seconds since the
epoch (a recording's clock, which starts near 0, is put on the wall clock at the run's start).
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

COMMIT_INTERVAL_S = 1.0  # the most a SIGKILL loses (Home Assistant's commit_interval)
MAX_QUEUED = 1_000_000  # rows held while the store cannot be written (~10 min of 1,000 devices)
PRUNE_EVERY_S = 3600.0
EPOCH_2000 = 946_684_800.0  # a timestamp before this is a recording's own clock, not the wall clock

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS predictions (device TEXT NOT NULL, t DOUBLE PRECISION NOT NULL, "
    "label TEXT NOT NULL, confidence DOUBLE PRECISION, truth TEXT, seconds DOUBLE PRECISION NOT NULL)",
    "CREATE INDEX IF NOT EXISTS predictions_device_t ON predictions (device, t)",
    "CREATE INDEX IF NOT EXISTS predictions_t ON predictions (t)",
    "CREATE TABLE IF NOT EXISTS episodes (device TEXT NOT NULL, activity TEXT NOT NULL, "
    "start_t DOUBLE PRECISION NOT NULL, end_t DOUBLE PRECISION NOT NULL, confidence DOUBLE PRECISION, "
    "windows INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS episodes_device_start ON episodes (device, start_t)",
)
INSERT_PREDICTION = ("INSERT INTO predictions (device, t, label, confidence, truth, seconds) "
                     "VALUES (?, ?, ?, ?, ?, ?)")  # fmt: skip
INSERT_EPISODE = ("INSERT INTO episodes (device, activity, start_t, end_t, confidence, windows) "
                  "VALUES (?, ?, ?, ?, ?, ?)")  # fmt: skip


class StoreError(ValueError):
    """A --store that cannot name a store (a malformed URL, an unknown scheme): one line, exit 1."""


@dataclass(frozen=True)
class Target:
    """Where the store is: a SQLite file, or a PostgreSQL URL.

    >>> Target.parse("history.db").kind, Target.parse("postgresql://har@127.0.0.1:5432/har").kind
    ('sqlite', 'postgresql')
    >>> Target.parse("mysql://x")
    Traceback (most recent call last):
    streamer.store.StoreError: bad --store 'mysql://x': use a file path (SQLite) or postgresql://...
    """

    kind: str  # "sqlite" | "postgresql"
    where: str  # the file's path, or the URL

    @classmethod
    def parse(cls, text: str) -> Target:
        if not text:
            raise StoreError("bad --store '': use a file path (SQLite) or postgresql://...")
        scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", text)
        if scheme is None:
            return cls("sqlite", text)
        name = scheme.group(1).lower()
        if name == "sqlite":
            return cls("sqlite", text[len("sqlite://"):].removeprefix("/") or "history.db")
        if name not in ("postgresql", "postgres"):
            raise StoreError(f"bad --store {text!r}: use a file path (SQLite) or postgresql://...")
        try:
            from psycopg.conninfo import conninfo_to_dict
        except ImportError:
            raise StoreError("--store postgresql://... needs psycopg: "
                             "pip install 'harstream[postgres]'") from None
        try:
            conninfo_to_dict(text)
        except Exception as error:  # psycopg.ProgrammingError: the URL does not parse
            raise StoreError(f"bad --store URL {redact(text)!r}: {str(error).strip()}") from None
        return cls("postgresql", text)

    @property
    def display(self) -> str:
        return redact(self.where)

    def connect(self, timeout_s: float = 2.0) -> Any:
        """A DB-API connection with the schema in place (raises what the driver raises)."""
        if self.kind == "sqlite":
            import sqlite3

            connection = sqlite3.connect(self.where, timeout=timeout_s, check_same_thread=False)
            connection.execute("PRAGMA journal_mode=WAL")  # readers (history, the dashboard) never block it
            connection.execute("PRAGMA synchronous=NORMAL")  # durable across a killed process in WAL mode
        else:
            import psycopg

            connection = psycopg.connect(self.where, connect_timeout=max(1, round(timeout_s)))
        try:
            with _cursor(connection) as cursor:
                if self.kind == "postgresql":  # shards that start together: one creates, the others wait
                    cursor.execute("SELECT pg_advisory_xact_lock(20140014)")
                for statement in SCHEMA:
                    cursor.execute(statement)
            connection.commit()
        except Exception:
            connection.close()
            raise
        return connection

    def sql(self, statement: str) -> str:
        """``statement`` with the driver's placeholders (``?`` is SQLite's, ``%s`` psycopg's)."""
        return statement if self.kind == "sqlite" else statement.replace("?", "%s")


def redact(url: str) -> str:
    """A URL fit for a log line: its password replaced.

    >>> redact("postgresql://har:secret@db:5432/har")
    'postgresql://har:***@db:5432/har'
    """
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


class _cursor:
    """A cursor as a context manager (sqlite3's cursors are not one)."""

    def __init__(self, connection: Any) -> None:
        self.cursor = connection.cursor()

    def __enter__(self) -> Any:
        return self.cursor

    def __exit__(self, *exc: object) -> None:
        self.cursor.close()


def _number(value: float) -> float | None:
    return value if math.isfinite(value) else None  # NaN is no number in SQL (and not JSON either)


class Store:
    """Rows in, a writer thread out: see the module's docstring. :meth:`start` it, :meth:`close` it."""

    def __init__(self, target: Target, retain_s: float = 0.0, commit_interval: float = COMMIT_INTERVAL_S,
                 max_queued: int = MAX_QUEUED) -> None:  # fmt: skip
        self.target = target
        self.retain_s = retain_s
        self.commit_interval = commit_interval
        self.max_queued = max_queued
        self.predictions: deque[tuple] = deque()  # appended by the pipeline's thread, drained by the writer
        self.episodes: deque[tuple] = deque()
        self.written = 0  # prediction rows committed
        self.episodes_written = 0
        self.pruned = 0
        self.failures = 0  # commits that failed (each retried)
        self.dropped = 0  # rows given up because the store stayed unwritable past max_queued
        self.commits = 0
        self.error: str | None = None  # the current outage, None while writing works
        self._connection: Any = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._next_prune = 0.0

    # -- the pipeline's side (never blocks) ----------------------------------------------------
    def add_prediction(self, device: str, t: float, label: str, confidence: float, truth: str | None,
                       seconds: float) -> None:  # fmt: skip
        if len(self.predictions) >= self.max_queued:
            self.dropped += 1
            return
        self.predictions.append((device, t, label, _number(confidence), truth, seconds))

    def add_episode(self, device: str, activity: str, start: float, end: float, confidence: float,
                    windows: int) -> None:  # fmt: skip
        self.episodes.append((device, activity, start, end, _number(confidence), windows))

    @property
    def queued(self) -> int:
        return len(self.predictions) + len(self.episodes)

    def start(self) -> Store:
        self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (one last try), then stop the writer."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self.dropped += self.queued if self.error else 0  # the last try could not write them

    def summary(self) -> dict:
        tallies = {"store_rows": self.written, "store_episodes": self.episodes_written}
        if self.failures:
            tallies["store_failures"] = self.failures
        if self.dropped:
            tallies["store_dropped"] = self.dropped
        if self.pruned:
            tallies["store_pruned"] = self.pruned
        return tallies

    # -- the writer thread -----------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.wait(self.commit_interval):
            self._commit()
        self._commit()  # the last rows, on a clean stop
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.close()

    def _commit(self) -> None:
        n_predictions, n_episodes = len(self.predictions), len(self.episodes)
        if not n_predictions and not n_episodes and time.time() < self._next_prune:
            return
        rows = [self.predictions[i] for i in range(n_predictions)]
        episodes = [self.episodes[i] for i in range(n_episodes)]
        try:
            if self._connection is None:
                self._connection = self.target.connect(timeout_s=min(2.0, self.commit_interval))
            with _cursor(self._connection) as cursor:
                if rows:
                    cursor.executemany(self.target.sql(INSERT_PREDICTION), rows)
                if episodes:
                    cursor.executemany(self.target.sql(INSERT_EPISODE), episodes)
                pruned = self._prune(cursor)
            self._connection.commit()
        except Exception as error:
            self._failed(error)
            return
        for _ in range(n_predictions):  # only now: a failed commit keeps them for the next try
            self.predictions.popleft()
        for _ in range(n_episodes):
            self.episodes.popleft()
        self.written += len(rows)
        self.episodes_written += len(episodes)
        self.pruned += pruned
        self.commits += 1
        if self.error is not None:
            log.warning("store: writing to %s again (%d rows kept meanwhile)", self.target.display, len(rows))
            self.error = None

    def _prune(self, cursor: Any) -> int:
        now = time.time()
        if not self.retain_s or now < self._next_prune:
            return 0
        self._next_prune = now + PRUNE_EVERY_S
        cursor.execute(self.target.sql("DELETE FROM predictions WHERE t < ?"), (now - self.retain_s,))
        return max(cursor.rowcount, 0)

    def _failed(self, error: Exception) -> None:
        self.failures += 1
        why = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
        if self.error is None:  # once per outage, not once a second
            log.error("store: cannot write to %s (%s); recognition goes on, rows are kept and retried every "
                      "%g s", self.target.display, why, self.commit_interval)  # fmt: skip
        self.error = why
        if self._connection is not None:
            try:
                self._connection.rollback()
                if self.target.kind == "postgresql":  # a lost server: reconnect next time
                    self._connection.close()
                    self._connection = None
            except Exception:
                self._connection = None
        while len(self.predictions) > self.max_queued:  # bounded while it stays away
            self.predictions.popleft()
            self.dropped += 1


class StoreSink:
    """What the pipeline hands the store: each prediction (credited its hop) and each ended episode,
    on the wall clock. ``offset``: added to a recording's clock (timestamps before 2000)."""

    def __init__(self, store: Store, hop_s: float, wall_start: float | None = None) -> None:
        self.store = store
        self.hop_s = hop_s
        self.wall_start = time.time() if wall_start is None else wall_start

    def wall(self, t: float) -> float:
        return t + self.wall_start if t < EPOCH_2000 else t

    def prediction(self, prediction: Any) -> None:
        self.store.add_prediction(prediction.device, self.wall(prediction.t), prediction.label,
                                  prediction.confidence, prediction.truth, self.hop_s)  # fmt: skip

    def episode(self, episode: Any) -> None:
        self.store.add_episode(episode.device, episode.activity, self.wall(episode.start),
                               self.wall(episode.end), episode.confidence, episode.windows)  # fmt: skip


def parse_duration(text: str) -> float:
    """Seconds in ``30d``, ``12h``, ``90m``, ``45s`` (or a bare number of seconds).

    >>> parse_duration("30d"), parse_duration("2h"), parse_duration("90m"), parse_duration("15")
    (2592000.0, 7200.0, 5400.0, 15.0)
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text or "")
    if match is None:
        raise ValueError(f"bad duration {text!r}: use a number with s, m, h, d or w (e.g. 30d, 2h)")
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[match.group(2)]
    return float(match.group(1)) * unit


def open_store(text: str, retain: str | None = None) -> Store:
    """The store ``--store`` and ``--retain`` ask for, its writer started (a malformed one: StoreError)."""
    retain_s = parse_duration(retain) if retain else 0.0
    target = Target.parse(text)
    if target.kind == "sqlite" and not Path(target.where).expanduser().resolve().parent.is_dir():
        raise StoreError(f"bad --store {text!r}: no folder {Path(target.where).parent}")
    return Store(target, retain_s=retain_s).start()
