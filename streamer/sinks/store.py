"""The history store: every prediction and every episode, kept in SQLite (a file, the default) or
PostgreSQL (one database for a fleet's shards), written off the hot path.

After Home Assistant's recorder: the pipeline's thread only appends rows to a queue
(:meth:`Store.add_prediction`, :meth:`Store.add_episode`: microseconds); one writer thread drains it
and commits every ``commit_interval`` seconds (1 s), so a recognizer killed with SIGKILL loses at most
the last second. Retention (``--retain 30d``) prunes predictions older than that, at start and hourly;
episodes stay. Every fault is one line on stderr and a counter in :meth:`Store.summary`, never a stall:

- a store that cannot be written (a locked or full disk, a server that is down or frozen) is one
  outage (``store_outages``; each failed try: ``store_failures``); its rows are kept, up to
  ``max_queued`` predictions and as many episodes (past it: dropped, "queue full"), and written when
  it comes back. Every try is bounded (``timeout_s``): a frozen PostgreSQL server still has its kernel
  acknowledge what we send, so neither TCP keepalives nor its statement_timeout end the wait; a
  watchdog shuts our socket down. A commit cut short that way may have happened: each batch also
  moves this writer's row in ``harstream_writers``, which tells the next try (never written twice);
- a row the database refuses (a value it cannot take) is dropped alone ("refused by the database"),
  the rest of its batch written; device ids that are not valid UTF-8 are stored backslash-escaped
  (:func:`store_text`), which readers apply to the id they are asked for;
- a SQLite file deleted or replaced while in use is noticed before the next batch (its inode), a new
  one made at the path (``store_reopened``); what this run had written to the old one is ``store_lost``;
- :meth:`Store.close` retries the last rows for a grace period; what is left is dropped ("not
  written at close").

Readers (:meth:`Target.connect_readonly`: ``history``, the dashboard's totals) never write: SQLite
opened ``mode=ro``, PostgreSQL in read-only transactions; a database without the store's tables is
refused. One schema for both databases (``DOUBLE PRECISION`` is SQLite's REAL); times are seconds
since the epoch. A replay's clock, which starts at 0, is put on the wall clock at the run's start,
moved back as much as it would otherwise run ahead (:meth:`replay.sources.ReplaySource.lead_s`): a
replay at real time or slower starts at the run's start, a faster one ends at the latest when the
run plays its last sample, one at ``--speed 0`` ends at the run's start; never in the future, with
its own durations.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import socket
import threading
import time
import urllib.parse
import uuid
from collections import deque
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from streamer.options import parse_duration

log = logging.getLogger(__name__)

COMMIT_INTERVAL_S = 1.0  # the most a SIGKILL loses (Home Assistant's commit_interval)
MAX_QUEUED = 1_000_000  # predictions (episodes too) held while the store is away (~10 min of 1,000 devices)
TIMEOUT_S = 10.0  # the most one try may take (connect, statements, commit) before it counts as failed
CLOSE_GRACE_S = 5.0  # close(): how long the last rows are retried (a lock, a server that is away)
CLOSE_MARGIN_S = 3.0  # close() returns within its grace and this (a connect's own 2 s bound, a busy wait)
SQLITE_BUSY_S = 2.0  # the most one try waits for another process's lock on a SQLite file
PRUNE_EVERY_S = 3600.0
EPOCH_2000 = 946_684_800.0  # a timestamp before this is a recording's own clock, not the wall clock

# why rows were given up (Store.dropped_by)
QUEUE_FULL = "queue full"
REFUSED = "refused by the database"
AT_CLOSE = "not written at close"

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS predictions (device TEXT NOT NULL, t DOUBLE PRECISION NOT NULL, "
    "label TEXT NOT NULL, confidence DOUBLE PRECISION, truth TEXT, seconds DOUBLE PRECISION NOT NULL)",
    "CREATE INDEX IF NOT EXISTS predictions_device_t ON predictions (device, t)",
    "CREATE INDEX IF NOT EXISTS predictions_t ON predictions (t)",
    "CREATE TABLE IF NOT EXISTS episodes (device TEXT NOT NULL, activity TEXT NOT NULL, "
    "start_t DOUBLE PRECISION NOT NULL, end_t DOUBLE PRECISION NOT NULL, confidence DOUBLE PRECISION, "
    "windows INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS episodes_device_start ON episodes (device, start_t)",
    # one row per writer (a run of a recognizer): the last batch it committed (see the module's docstring)
    "CREATE TABLE IF NOT EXISTS harstream_writers (writer TEXT PRIMARY KEY, batch BIGINT NOT NULL, "
    "t DOUBLE PRECISION)",
)
STORE_TABLES = ("predictions", "episodes")  # what makes a database a harstream store, for readers
INSERT_PREDICTION = ("INSERT INTO predictions (device, t, label, confidence, truth, seconds) "
                     "VALUES (?, ?, ?, ?, ?, ?)")  # fmt: skip
INSERT_EPISODE = ("INSERT INTO episodes (device, activity, start_t, end_t, confidence, windows) "
                  "VALUES (?, ?, ?, ?, ?, ?)")  # fmt: skip
INSERT_WRITER = ("INSERT INTO harstream_writers (writer, batch, t) VALUES (?, 0, ?) "
                 "ON CONFLICT (writer) DO NOTHING")  # fmt: skip
UPDATE_WRITER = "UPDATE harstream_writers SET batch = ?, t = ? WHERE writer = ?"


class StoreError(ValueError):
    """A --store that cannot name a store (a malformed URL, an unknown scheme): one line, exit 1."""


def store_text(text: str | None) -> str | None:
    """``text`` as the store keeps it: valid UTF-8 as is; bytes that were not UTF-8 (a file named
    ``caf\\xe9.csv`` read with surrogateescape) and lone surrogates backslash-escaped, NUL too
    (PostgreSQL's text cannot hold it), so that no id can fail a batch and the same id always finds
    its rows.

    >>> store_text("wrist"), store_text(b"caf\\xe9".decode("utf-8", "surrogateescape"))
    ('wrist', 'caf\\\\xe9')
    >>> store_text("a\\ud800\\x00")
    'a\\\\ud800\\\\x00'
    """
    if text is None or (text.isascii() and "\x00" not in text):
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # a surrogate no byte string makes
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text.replace("\x00", "\\x00")


@dataclass(frozen=True)
class Target:
    """Where the store is: a SQLite file, or a PostgreSQL URL.

    >>> Target.parse("history.db").kind, Target.parse("postgresql://har@127.0.0.1:5432/har").kind
    ('sqlite', 'postgresql')
    >>> Target.parse("mysql://x")
    Traceback (most recent call last):
    streamer.sinks.store.StoreError: bad --store 'mysql://x': use a file path (SQLite) or postgresql://...
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

    def connect(self, timeout_s: float = SQLITE_BUSY_S, writer: str | None = None) -> Any:
        """A DB-API connection for writing, the schema in place (raises what the driver raises);
        ``writer``: this writer's row in harstream_writers is made too. Every wait is bounded by
        ``timeout_s``. SQLite's is in autocommit mode: a batch says BEGIN itself (savepoints inside)."""
        if self.kind == "sqlite":
            import sqlite3

            connection = sqlite3.connect(self.where, timeout=timeout_s, check_same_thread=False,
                                         isolation_level=None)  # fmt: skip
            connection.execute("PRAGMA journal_mode=WAL")  # readers (history, the dashboard) never block it
            connection.execute("PRAGMA synchronous=NORMAL")  # durable across a killed process in WAL mode
        else:
            import psycopg

            connection = psycopg.connect(self.where, **postgres_options(self.where, timeout_s))
        try:
            with _Watchdog(connection, time.monotonic() + timeout_s), _cursor(connection) as cursor:
                if self.kind == "sqlite":
                    cursor.execute("BEGIN IMMEDIATE")
                else:  # shards that start together: one creates, the others wait
                    cursor.execute("SELECT pg_advisory_xact_lock(20140014)")
                for statement in SCHEMA:
                    cursor.execute(statement)
                if writer is not None:
                    cursor.execute(self.sql(INSERT_WRITER), (writer, time.time()))
                connection.commit()
        except Exception:
            connection.close()
            raise
        return connection

    def connect_readonly(self, timeout_s: float = SQLITE_BUSY_S) -> Any:
        """A connection that cannot write (SQLite ``mode=ro``; PostgreSQL read-only transactions),
        to a database that holds a harstream store; otherwise StoreError (one line)."""
        if self.kind == "sqlite":
            import sqlite3

            path = Path(self.where).expanduser()
            if not path.is_file():
                raise StoreError(f"no store at {self.where}")
            uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"
            connection = sqlite3.connect(uri, uri=True, timeout=timeout_s, check_same_thread=False)
            query = "SELECT name FROM sqlite_master WHERE type = 'table'"
        else:
            import psycopg

            options = postgres_options(self.where, timeout_s, read_only=True)
            connection = psycopg.connect(self.where, **options)
            query = "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        try:
            tables = {name for (name,) in connection.execute(query).fetchall()}
        except Exception:
            connection.close()
            raise
        if not set(STORE_TABLES) <= tables:
            connection.close()
            raise StoreError(f"{self.display} is not a harstream store (no predictions and episodes tables)")
        return connection

    def sql(self, statement: str) -> str:
        """``statement`` with the driver's placeholders (``?`` is SQLite's, ``%s`` psycopg's)."""
        return statement if self.kind == "sqlite" else statement.replace("?", "%s")


def postgres_options(url: str, timeout_s: float, read_only: bool = False) -> dict[str, Any]:
    """psycopg.connect's keywords: every wait bounded (the connection, each statement, a transaction
    left idle by a client that vanished) and dead peers noticed (TCP keepalives, tcp_user_timeout);
    what the URL sets itself wins, and its ``options`` are kept."""
    from psycopg.conninfo import conninfo_to_dict

    given = conninfo_to_dict(url)
    ms = max(1, round(timeout_s * 1000))
    server = f"-c statement_timeout={ms} -c idle_in_transaction_session_timeout={max(6 * ms, 60_000)}"
    if read_only:
        server += " -c default_transaction_read_only=on"
    defaults = {"connect_timeout": max(2, math.ceil(timeout_s)), "keepalives": 1, "keepalives_idle": 5,
                "keepalives_interval": 2, "keepalives_count": 3, "tcp_user_timeout": ms}  # fmt: skip
    options = {k: v for k, v in defaults.items() if k not in given}
    options["options"] = f"{given.get('options') or os.environ.get('PGOPTIONS', '')} {server}".strip()
    return options


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


class _Watchdog:
    """Ends a wait on a PostgreSQL server at ``deadline`` (monotonic) by shutting the connection's
    socket down: a frozen server's kernel still acknowledges what we send, so without this a read
    waits forever. For SQLite (no socket; its waits are bounded by the busy timeout) it does nothing."""

    def __init__(self, connection: Any, deadline: float) -> None:
        fileno = getattr(connection, "fileno", None)
        self._fd = fileno() if callable(fileno) and hasattr(connection, "pgconn") else None
        self._lock = threading.Lock()
        self._done = False
        self.fired = False
        self._timer: threading.Timer | None = None
        self.deadline = deadline

    def __enter__(self) -> _Watchdog:
        self._arm()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._done = True
            if self._timer is not None:
                self._timer.cancel()

    def tighten(self, deadline: float) -> None:
        """An earlier deadline (close() was called meanwhile)."""
        with self._lock:
            if self._done or deadline >= self.deadline:
                return
            self.deadline = deadline
            if self._timer is not None:
                self._timer.cancel()
        self._arm()

    def _arm(self) -> None:
        if self._fd is None:
            return
        timer = threading.Timer(max(0.0, self.deadline - time.monotonic()), self._fire)
        timer.daemon = True
        with self._lock:
            if self._done:
                return
            self._timer = timer
        timer.start()

    def _fire(self) -> None:
        with self._lock:  # under the lock: the connection (and so its fd) is not closed meanwhile
            if self._done or self._fd is None:
                return
            self.fired = True
            with contextlib.suppress(OSError):
                sock = socket.socket(fileno=os.dup(self._fd))
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # the blocked read ends: "server closed the connection"
                finally:
                    sock.close()


def _number(value: float) -> float | None:
    return value if math.isfinite(value) else None  # NaN is no number in SQL (and not JSON either)


def _refused(error: BaseException, kind: str) -> bool:
    """Whether the database refused these rows' values (so row by row, only the bad ones dropped),
    rather than could not be written now (locked, full, gone: the rows are kept and retried)."""
    if isinstance(error, (UnicodeError, OverflowError)):
        return True
    names = {cls.__name__ for cls in type(error).__mro__}
    if "OperationalError" in names:
        return False
    refusals = {"IntegrityError", "DataError"}
    if kind == "sqlite":  # a value sqlite3 cannot bind (psycopg's ProgrammingError is also "no such table")
        refusals |= {"InterfaceError", "ProgrammingError"}
    return bool(names & refusals)


def _why(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


class Store:
    """Rows in, a writer thread out: see the module's docstring. :meth:`start` it, :meth:`close` it."""

    def __init__(self, target: Target, retain_s: float = 0.0, commit_interval: float = COMMIT_INTERVAL_S,
                 max_queued: int = MAX_QUEUED, timeout_s: float = TIMEOUT_S) -> None:  # fmt: skip
        self.target = target
        self.retain_s = retain_s
        self.commit_interval = commit_interval
        self.max_queued = max_queued  # predictions, and as many episodes
        self.timeout_s = timeout_s
        self.predictions: deque[tuple] = deque()  # appended by the pipeline's thread, drained by the writer
        self.episodes: deque[tuple] = deque()
        self.written = 0  # prediction rows committed
        self.episodes_written = 0
        self.pruned = 0
        self.failures = 0  # tries that failed (each retried)
        self.outages = 0  # runs of failed tries, each reported once
        self.dropped_by: dict[str, int] = {}  # predictions and episodes given up, by why
        self.dropped_rows = 0  # the predictions among them
        self.reopened = 0  # SQLite files found deleted or replaced, made again
        self.lost = 0  # predictions and episodes written to such a file before it went
        self.commits = 0
        self.error: str | None = None  # the current outage, None while writing works
        self._connection: Any = None
        self._identity: tuple[int, int] | None = None  # the open SQLite file's (st_dev, st_ino)
        self._in_file = [0, 0]  # predictions and episodes committed to that file
        self._writer = uuid.uuid4().hex  # this writer's row in harstream_writers
        self._batch = 0
        # (batch, predictions, episodes, refused): a commit cut short, which may or may not have happened
        self._unsure: tuple[int, int, int, tuple[int, int]] | None = None
        self._counts = threading.Lock()  # counters both threads touch; close() against a late writer
        self._given_up = False
        self._deadline = math.inf  # set by close(): the writer's last moment
        self._watch: _Watchdog | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._next_prune = 0.0

    # -- the pipeline's side (never blocks) ----------------------------------------------------
    def add_prediction(self, device: str, t: float, label: str, confidence: float, truth: str | None,
                       seconds: float) -> None:  # fmt: skip
        if len(self.predictions) >= self.max_queued:
            self._drop(QUEUE_FULL, 1, 1)
            return
        self.predictions.append((store_text(device), t, store_text(label), _number(confidence),
                                 store_text(truth), seconds))  # fmt: skip

    def add_episode(self, device: str, activity: str, start: float, end: float, confidence: float,
                    windows: int) -> None:  # fmt: skip
        if len(self.episodes) >= self.max_queued:
            self._drop(QUEUE_FULL, 1)
            return
        self.episodes.append((store_text(device), store_text(activity), start, end, _number(confidence),
                              windows))  # fmt: skip

    @property
    def queued(self) -> int:
        return len(self.predictions) + len(self.episodes)

    @property
    def dropped(self) -> int:
        with self._counts:
            return sum(self.dropped_by.values())

    def _drop(self, reason: str, n: int, predictions: int = 0) -> None:
        with self._counts:
            self.dropped_by[reason] = self.dropped_by.get(reason, 0) + n
            self.dropped_rows += predictions

    def start(self) -> Store:
        self._thread.start()
        return self

    def close(self, timeout: float = CLOSE_GRACE_S) -> None:
        """Write what is queued, retrying for up to ``timeout`` seconds (a lock another process
        holds, a server away), then stop the writer; returns within ``timeout`` + CLOSE_MARGIN_S.
        What is still queued then is dropped ("not written at close"), in one line."""
        self._deadline = time.monotonic() + timeout
        self._stop.set()
        watch = self._watch
        if watch is not None:  # a try that is waiting now ends by the deadline too
            watch.tighten(self._deadline)
        if self._thread.is_alive():
            self._thread.join(timeout + CLOSE_MARGIN_S)
        with self._counts:
            self._given_up = True  # a writer still stuck past the bound credits nothing after this
            n_predictions, n_episodes = len(self.predictions), len(self.episodes)
            self.predictions.clear()
            self.episodes.clear()
        if n_predictions or n_episodes:
            self._drop(AT_CLOSE, n_predictions + n_episodes, n_predictions)
            log.error("store: %d predictions and %d episodes could not be written to %s within %g s at the "
                      "end (%s): lost, counted in store_dropped", n_predictions, n_episodes,
                      self.target.display, timeout, self.error or "the writer did not finish")  # fmt: skip

    def summary(self) -> dict:
        """The counters that account for every row handed to the store: each prediction is in
        ``store_rows`` or ``store_dropped_rows`` (episodes: ``store_episodes`` or the rest of
        ``store_dropped``); ``store_lost`` of the written ones went with a deleted or replaced file."""
        tallies: dict[str, Any] = {"store_rows": self.written, "store_episodes": self.episodes_written}
        for key, value in (("store_failures", self.failures), ("store_outages", self.outages),
                           ("store_dropped", self.dropped), ("store_dropped_rows", self.dropped_rows),
                           ("store_reopened", self.reopened), ("store_lost", self.lost),
                           ("store_pruned", self.pruned)):  # fmt: skip
            if value:
                tallies[key] = value
        with self._counts:
            if self.dropped_by:
                tallies["store_dropped_by"] = dict(self.dropped_by)
        return tallies

    # -- the writer thread -----------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.wait(self.commit_interval):
            self._commit()
        while not self._given_up:  # closing: the last rows, retried until written or the grace is over
            self._commit()
            left = self._deadline - time.monotonic()
            if not self.queued or left <= 0:
                break
            time.sleep(min(0.25, left))
        self._disconnect()

    def _commit(self) -> None:
        prune_due = self.retain_s > 0 and time.time() >= self._next_prune
        if not self.queued and self._unsure is None and not prune_due:  # idle: nothing to write
            return
        deadline = min(time.monotonic() + self.timeout_s, self._deadline)
        watch = None
        try:
            self._check_file()
            if self._connection is None:
                self._connection = self.target.connect(self._wait_s(deadline), self._writer)
                self._opened()
            self._watch = watch = _Watchdog(self._connection, deadline)
            with watch:
                self._write(deadline)
        except Exception as error:
            timed_out = watch is not None and watch.fired
            self._failed(TimeoutError(f"no answer within {self.timeout_s:g} s") if timed_out else error)
        finally:
            self._watch = None

    def _write(self, deadline: float) -> None:
        """One batch in one transaction: what is queued now (after settling a commit cut short)."""
        sql = self.target.sql
        with _cursor(self._connection) as cursor:
            if self.target.kind == "sqlite":
                cursor.execute(f"PRAGMA busy_timeout = {round(1000 * self._wait_s(deadline))}")
                cursor.execute("BEGIN IMMEDIATE")
            lock = " FOR UPDATE" if self.target.kind == "postgresql" else ""  # waits out a cut-off try
            cursor.execute(sql(f"SELECT batch FROM harstream_writers WHERE writer = ?{lock}"),
                           (self._writer,))  # fmt: skip
            committed = (cursor.fetchone() or (None,))[0]
            if self._unsure is not None:
                batch, n_predictions, n_episodes, refused = self._unsure
                self._unsure = None
                if committed == batch:  # it did commit: credit it, never write it twice
                    self._credit(n_predictions, n_episodes, refused)
            n_predictions, n_episodes = len(self.predictions), len(self.episodes)
            rows = list(islice(self.predictions, n_predictions))
            episodes = list(islice(self.episodes, n_episodes))
            refused = self._insert(cursor, rows, episodes)
            pruned = self._prune(cursor)
            cursor.execute(sql(UPDATE_WRITER), (self._batch + 1, time.time(), self._writer))
        self._batch += 1
        self._unsure = (self._batch, n_predictions, n_episodes, refused)
        self._connection.commit()
        self._unsure = None
        self._credit(n_predictions, n_episodes, refused)
        self.pruned += pruned
        self.commits += 1
        if self.error is not None:
            log.warning("store: writing to %s again (%d rows kept meanwhile)", self.target.display,
                        n_predictions)  # fmt: skip
            self.error = None

    def _insert(self, cursor: Any, rows: list[tuple], episodes: list[tuple]) -> tuple[int, int]:
        """The rows, in one go; if the database refuses a value, row by row, the refused ones left
        out: how many predictions and episodes were refused."""
        cursor.execute("SAVEPOINT batch")
        try:
            if rows:
                cursor.executemany(self.target.sql(INSERT_PREDICTION), rows)
            if episodes:
                cursor.executemany(self.target.sql(INSERT_EPISODE), episodes)
        except Exception as error:
            if not _refused(error, self.target.kind):
                raise
            cursor.execute("ROLLBACK TO SAVEPOINT batch")
            return self._one_by_one(cursor, rows, episodes)
        finally:
            with contextlib.suppress(Exception):
                cursor.execute("RELEASE SAVEPOINT batch")
        return 0, 0

    def _one_by_one(self, cursor: Any, rows: list[tuple], episodes: list[tuple]) -> tuple[int, int]:
        refused = [0, 0]
        why = ""
        for k, (statement, batch) in enumerate(((INSERT_PREDICTION, rows), (INSERT_EPISODE, episodes))):
            for row in batch:
                cursor.execute("SAVEPOINT one_row")
                try:
                    cursor.execute(self.target.sql(statement), row)
                except Exception as error:
                    if not _refused(error, self.target.kind):
                        raise
                    cursor.execute("ROLLBACK TO SAVEPOINT one_row")
                    refused[k] += 1
                    why = why or _why(error)
                cursor.execute("RELEASE SAVEPOINT one_row")
        log.error("store: %s refused %d predictions and %d episodes (%s); the rest of their batch is "
                  "written, those are counted in store_dropped", self.target.display, *refused,
                  why)  # fmt: skip
        return refused[0], refused[1]

    def _credit(self, n_predictions: int, n_episodes: int, refused: tuple[int, int] = (0, 0)) -> None:
        """The first rows of each queue are in the store now (but for ``refused``): off the queue."""
        with self._counts:
            if self._given_up:  # close() counted them lost already
                return
            for _ in range(n_predictions):
                self.predictions.popleft()
            for _ in range(n_episodes):
                self.episodes.popleft()
        self.written += n_predictions - refused[0]
        self.episodes_written += n_episodes - refused[1]
        self._in_file[0] += n_predictions - refused[0]
        self._in_file[1] += n_episodes - refused[1]
        if refused[0] or refused[1]:
            self._drop(REFUSED, refused[0] + refused[1], refused[0])

    def _wait_s(self, deadline: float) -> float:
        """How long this try may wait: on SQLite for another process's lock (once an interval, as
        before), on PostgreSQL for the server to connect; never past ``deadline``."""
        left = deadline - time.monotonic()
        if self.target.kind == "sqlite":
            return max(0.05, min(SQLITE_BUSY_S, self.commit_interval, left))
        return max(0.0, left)

    def _prune(self, cursor: Any) -> int:
        now = time.time()
        if not self.retain_s or now < self._next_prune:
            return 0
        self._next_prune = now + PRUNE_EVERY_S
        cursor.execute(self.target.sql("DELETE FROM predictions WHERE t < ?"), (now - self.retain_s,))
        return max(cursor.rowcount, 0)

    # -- the SQLite file under us, and the connection -------------------------------------------------
    def _file_identity(self) -> tuple[int, int] | None:
        try:
            status = os.stat(self.target.where)
        except FileNotFoundError:
            return None
        return status.st_dev, status.st_ino

    def _opened(self) -> None:
        if self.target.kind == "sqlite":
            self._identity = self._file_identity()
            self._in_file = [0, 0]

    def _check_file(self) -> None:
        """Before a batch: is the path still the file we opened? If not, our rows would go to a file
        nobody can reach: close it, and a new one is made at the path (with the schema)."""
        if self.target.kind != "sqlite" or self._connection is None:
            return
        now = self._file_identity()
        if now == self._identity:
            return
        n_predictions, n_episodes = self._in_file
        with contextlib.suppress(Exception):  # the old file's log into the old file: none left to replay
            self._connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._disconnect()
        if now is None:  # its -wal and -shm belong to the deleted file, not to the one about to be made
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(OSError):
                    os.unlink(self.target.where + suffix)
        self.reopened += 1
        self.lost += n_predictions + n_episodes
        log.error("store: %s was deleted or replaced while in use (%s): writing to a new one there; the %d "
                  "predictions and %d episodes written to the old file are not in it (store_lost)",
                  self.target.display, "deleted" if now is None else "replaced", n_predictions,
                  n_episodes)  # fmt: skip

    def _disconnect(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.close()

    def _failed(self, error: BaseException) -> None:
        self.failures += 1
        why = _why(error)
        if self.error is None:  # once per outage, not once a second
            self.outages += 1
            log.error("store: cannot write to %s (%s); recognition goes on, rows are kept and retried every "
                      "%g s", self.target.display, why, self.commit_interval)  # fmt: skip
        self.error = why
        if self._connection is None:
            return
        if self.target.kind == "postgresql":  # a lost or frozen server: a new connection next time
            self._disconnect()
            return
        try:
            self._connection.rollback()
        except Exception:
            self._disconnect()


def open_store(text: str, retain: str | None = None) -> Store:
    """The store ``--store`` and ``--retain`` ask for, its writer started (a malformed one: StoreError)."""
    retain_s = parse_duration(retain) if retain else 0.0
    target = Target.parse(text)
    if target.kind == "sqlite" and not Path(target.where).expanduser().resolve().parent.is_dir():
        raise StoreError(f"bad --store {text!r}: no folder {Path(target.where).parent}")
    return Store(target, retain_s=retain_s).start()
