"""The history store under bad luck, against the real databases (SQLite files, a PostgreSQL 15 server
the tests start and freeze with SIGSTOP): every fault is one line and a counter, never a stall or a
silent loss (issue 19, items 3-7)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from live_fixtures import ROOT, wait_until
from postgres_fixture import Postgres, postgres_server  # noqa: F401 - a fixture

from streamer.sinks.store import Store, StoreError, Target
from streamer.sinks.store_reader import read_history

FAST = {"commit_interval": 0.1}


def predictions(store: Store, n: int, device: str = "d", t0: float = 1.7e9) -> None:
    for k in range(n):
        store.add_prediction(device, t0 + k, "WALKING", 0.9, "WALKING", 1.28)


def lines(caplog: pytest.LogCaptureFixture, words: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if words in r.getMessage()]


def count(path: Path, table: str = "predictions") -> int:
    with sqlite3.connect(path) as connection:
        return connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


def cli(*args: str | bytes, user: list[str] | None = None) -> subprocess.CompletedProcess:
    command = [*(user or []), sys.executable, "-m", "streamer.cli.main", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)


# -- item 4: the SQLite file deleted or replaced under a running writer ----------------------------
def test_a_deleted_store_file_is_recreated_and_what_it_held_is_counted_lost(tmp_path, caplog) -> None:
    path = tmp_path / "h.db"
    store = Store(Target.parse(str(path)), **FAST).start()
    predictions(store, 50)
    store.add_episode("d", "WALKING", 1.7e9, 1.7e9 + 50, 0.9, 50)
    assert wait_until(lambda: store.written == 50 and store.episodes_written == 1, 10)
    path.unlink()
    predictions(store, 30, t0=1.8e9)
    assert wait_until(lambda: store.written == 80, 10)
    store.close()
    assert path.exists() and count(path) == 30  # recreated, with the schema, holding what came after
    assert store.reopened == 1 and store.lost == 51  # 50 predictions and 1 episode went with the old file
    assert store.summary()["store_lost"] == 51 and store.summary()["store_reopened"] == 1
    said = lines(caplog, "h.db")
    assert len([m for m in said if "deleted or replaced" in m]) == 1, said
    assert "50 predictions and 1 episodes" in said[0]


def test_a_replaced_store_file_gets_the_schema_and_the_new_rows(tmp_path, caplog) -> None:
    path = tmp_path / "h.db"
    store = Store(Target.parse(str(path)), **FAST).start()
    predictions(store, 40)
    assert wait_until(lambda: store.written == 40, 10)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as connection:  # a backup put back in its place, say
        connection.execute("CREATE TABLE notes (x TEXT)")
        connection.execute("INSERT INTO notes VALUES ('kept')")
    os.replace(other, path)
    predictions(store, 25, t0=1.8e9)
    assert wait_until(lambda: store.written == 65, 10)
    store.close()
    assert count(path) == 25 and count(path, "notes") == 1  # its own rows intact, ours added
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert store.reopened == 1 and store.lost == 40
    assert len(lines(caplog, "deleted or replaced")) == 1


# -- item 5: one device id that is not valid UTF-8 -------------------------------------------------
BAD_ID = b"caf\xe9".decode("utf-8", "surrogateescape")  # what a file named caf\xe9.csv becomes


def stored_ids(target: Target) -> set[str]:
    return set(read_history(target)["devices"])


def check_bad_id_is_escaped(target: Target) -> None:
    store = Store(target, **FAST).start()
    predictions(store, 20, device="band-a")
    predictions(store, 20, device=BAD_ID)
    predictions(store, 20, device="lone-\ud800")  # a surrogate no byte string makes
    store.add_episode(BAD_ID, "WALKING", 1.7e9, 1.7e9 + 20, 0.9, 20)
    assert wait_until(lambda: store.written == 60, 10), store.summary()
    store.close()
    assert store.episodes_written == 1 and store.dropped == 0 and store.failures == 0
    assert stored_ids(target) == {"band-a", "caf\\xe9", "lone-\\ud800"}
    found = read_history(target, device=BAD_ID)["devices"]  # the same id finds its rows
    [(name, entry)] = found.items()
    assert name == "caf\\xe9" and sum(entry["seconds"].values()) == pytest.approx(20 * 1.28)
    assert len(entry["episodes"]) == 1


def test_a_device_id_that_is_not_utf8_is_stored_escaped_on_sqlite(tmp_path) -> None:
    check_bad_id_is_escaped(Target.parse(str(tmp_path / "h.db")))


def test_a_device_id_that_is_not_utf8_is_stored_escaped_on_postgresql(postgres_server) -> None:  # noqa: F811
    check_bad_id_is_escaped(Target.parse(postgres_server.database("utf8")))


def test_a_row_the_database_refuses_is_dropped_alone_and_counted(tmp_path, caplog) -> None:
    path = tmp_path / "h.db"
    store = Store(Target.parse(str(path)), **FAST)
    predictions(store, 30)
    store.add_prediction("d", float("nan"), "WALKING", 0.9, None, 1.28)  # t is NOT NULL: SQLite refuses it
    store.add_episode("d", "WALKING", 1.7e9, 1.7e9 + 1, 0.9, 2**70)  # too big for an INTEGER
    predictions(store, 30, t0=1.8e9)
    store.start()
    assert wait_until(lambda: store.written == 60, 10), store.summary()
    store.close()
    assert count(path) == 60 and store.dropped == 2 and store.dropped_by == {"refused by the database": 2}
    assert store.summary()["store_dropped_rows"] == 1
    assert len(lines(caplog, "refused")) == 1


def test_a_replayed_file_named_in_latin1_is_stored_with_the_other_devices(tiny_checkpoint, short_recording,
                                                                          tmp_path) -> None:  # fmt: skip
    folder = tmp_path / "recordings"
    folder.mkdir()
    shutil.copy(short_recording, os.fsencode(folder) + b"/caf\xe9.csv")
    shutil.copy(short_recording, folder / "plain.csv")
    store = tmp_path / "h.db"
    done = cli("replay", f"csv:{folder}", "--checkpoint", str(tiny_checkpoint), "--speed", "0", "--hop", "64",
               "--headless", "--jsonl", "--store", str(store))  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.splitlines()[-1])["summary"]
    assert summary["store_rows"] == summary["windows"] > 40 and "store_dropped" not in summary, summary
    shown = cli("history", "--store", str(store), "--json", "--device", os.fsencode("caf\udce9"))
    assert shown.returncode == 0, shown.stderr
    assert list(json.loads(shown.stdout)["devices"]) == ["caf\\xe9"]


# -- item 6: readers never write ---------------------------------------------------------------------
def test_history_refuses_a_file_that_is_not_a_store_and_leaves_it_untouched(tmp_path) -> None:
    path = tmp_path / "notes.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE notes (x TEXT)")
    before = path.read_bytes()
    done = cli("history", "--store", str(path))
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "not a harstream store" in done.stderr and "Traceback" not in done.stderr
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["notes.db"]
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


def test_history_reads_a_store_it_cannot_write(tmp_path) -> None:
    path = tmp_path / "h.db"
    store = Store(Target.parse(str(path)), **FAST).start()
    predictions(store, 10)
    store.close()
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA journal_mode=DELETE")  # a store copied elsewhere: no -wal, no -shm
    if os.geteuid() == 0:  # root writes any file whatever its mode: make it immutable instead
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
            pytest.skip("running as root where chattr +i is refused: no way to make a read-only file")
    else:
        os.chmod(path, 0o444)
    try:
        done = cli("history", "--store", str(path), "--json")
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(path)], capture_output=True)
    assert done.returncode == 0, done.stderr
    assert sum(json.loads(done.stdout)["devices"]["d"]["seconds"].values()) == pytest.approx(12.8)


def test_history_on_postgresql_creates_nothing_and_refuses_a_database_without_a_store(
        postgres_server) -> None:  # noqa: F811  # fmt: skip
    url = postgres_server.database("empty")
    done = cli("history", "--store", url)
    assert done.returncode == 1 and "not a harstream store" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    with psycopg.connect(url) as connection:
        tables = connection.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    assert tables == []
    with pytest.raises(StoreError, match="not a harstream store"):
        read_history(Target.parse(url))


# -- item 7: the last batch, and the episodes' queue --------------------------------------------------
def hold_the_lock(path: Path, seconds: float) -> subprocess.Popen:
    """Another process that holds the SQLite write lock for ``seconds``."""
    code = ("import sqlite3, sys, time\n"
            "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "c.execute('BEGIN EXCLUSIVE')\nprint('held', flush=True)\n"
            "time.sleep(float(sys.argv[2]))\n")  # fmt: skip
    holder = subprocess.Popen([sys.executable, "-c", code, str(path), str(seconds)], stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_the_last_batch_is_retried_while_another_process_holds_the_lock(tmp_path) -> None:
    path = tmp_path / "h.db"
    Target.parse(str(path)).connect().close()
    store = Store(Target.parse(str(path)), commit_interval=10.0).start()  # nothing written before close
    predictions(store, 622)
    holder = hold_the_lock(path, 4.0)  # longer than one try waits (SQLITE_BUSY_S)
    started = time.monotonic()
    store.close(timeout=15.0)
    holder.wait(10)
    assert time.monotonic() - started < 15.0 + 3.0
    assert store.written == 622 and store.dropped == 0 and count(path) == 622


def test_the_last_batch_is_counted_lost_when_the_lock_outlasts_the_grace(tmp_path, caplog) -> None:
    path = tmp_path / "h.db"
    Target.parse(str(path)).connect().close()
    store = Store(Target.parse(str(path)), commit_interval=10.0).start()
    predictions(store, 622)
    store.add_episode("d", "WALKING", 1.7e9, 1.7e9 + 9, 0.9, 9)
    holder = hold_the_lock(path, 30.0)
    try:
        started = time.monotonic()
        store.close(timeout=2.0)
        assert time.monotonic() - started < 2.0 + 3.0
    finally:
        holder.kill()
        holder.wait(10)
    assert store.written == 0 and store.dropped == 623 and store.dropped_by == {"not written at close": 623}
    assert store.summary()["store_dropped_rows"] == 622
    said = lines(caplog, "622 predictions and 1 episodes")
    assert len(said) == 1 and "locked" in said[0], [r.getMessage() for r in caplog.records]


def test_queued_episodes_are_bounded_like_predictions(tmp_path) -> None:
    store = Store(Target.parse(str(tmp_path / "h.db")), max_queued=100)  # not started: nothing drains it
    for k in range(5000):
        store.add_episode("d", "WALKING", 1.7e9 + k, 1.7e9 + k + 1, 0.9, 1)
    predictions(store, 150)
    assert len(store.episodes) == 100 and len(store.predictions) == 100
    assert store.dropped == 4900 + 50 and store.dropped_by == {"queue full": 4950}


# -- item 3: a frozen PostgreSQL server ------------------------------------------------------------
def test_frozen_postgres_keeps_rows_and_writes_them_when_it_returns(postgres_server, caplog) -> None:  # noqa: F811
    url = postgres_server.database("frozen")
    store = Store(Target.parse(url), commit_interval=0.2, timeout_s=1.5).start()
    predictions(store, 100)
    assert wait_until(lambda: store.written == 100, 20), store.summary()
    frozen = postgres_server.freeze()
    try:
        predictions(store, 200, t0=1.8e9)
        store.add_episode("d", "WALKING", 1.7e9, 1.7e9 + 300, 0.9, 300)
        assert wait_until(lambda: store.failures >= 2, 20), store.summary()  # it noticed, it did not hang
        assert store.written == 100 and store.queued == 201 and store.outages == 1
    finally:
        postgres_server.thaw(frozen)
    assert wait_until(lambda: store.written == 300 and store.episodes_written == 1, 30), store.summary()
    store.close()
    summary = store.summary()
    assert summary["store_outages"] == 1 and "store_dropped" not in summary, summary
    with psycopg.connect(url) as connection:  # every row once: a commit cut short is never written twice
        rows = connection.execute("SELECT COUNT(*), COUNT(DISTINCT t) FROM predictions").fetchone()
        assert rows == (300, 300)
        assert connection.execute("SELECT COUNT(*) FROM episodes").fetchone()[0] == 1
    assert len(lines(caplog, "cannot write")) == 1


def test_postgres_frozen_through_close_returns_in_time_and_counts_the_loss(postgres_server,  # noqa: F811
                                                                           caplog) -> None:  # fmt: skip
    url = postgres_server.database("frozen_close")
    store = Store(Target.parse(url), commit_interval=0.2, timeout_s=1.5).start()
    predictions(store, 10)
    assert wait_until(lambda: store.written == 10, 20), store.summary()
    frozen = postgres_server.freeze()
    try:
        predictions(store, 537, t0=1.8e9)
        time.sleep(0.5)  # the writer is blocked on the frozen server now
        started = time.monotonic()
        store.close(timeout=3.0)
        took = time.monotonic() - started
    finally:
        postgres_server.thaw(frozen)
    assert took < 3.0 + 3.0, took
    assert store.written == 10 and store.dropped == 537 and store.dropped_by == {"not written at close": 537}
    assert store.outages == 1 and store.failures >= 1
    assert len(lines(caplog, "537 predictions and 0 episodes")) == 1
    with psycopg.connect(url) as connection:
        assert connection.execute("SELECT COUNT(*) FROM predictions").fetchone()[0] == 10
