"""The store on PostgreSQL: two shards of one fleet write into one database, against a real server
that the test starts (tests/postgres_fixture.py), never skipped."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading

import psycopg
from live_fixtures import ROOT, Lines, harstream, wait_until
from postgres_fixture import postgres  # noqa: F401 - a fixture
from test_mqtt import publish_recording

from streamer.tools.private_mosquitto import free_port


def cli(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "streamer.cli.main", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)


DEVICES = ("band-a", "band-b", "band-c", "band-d", "band-e", "band-f")


def test_two_shards_write_one_postgresql_database(broker, postgres, tiny_checkpoint,  # noqa: F811
                                                  short_recording) -> None:  # fmt: skip
    shards = [harstream("mqtt", "--broker", broker.url, "--checkpoint", str(tiny_checkpoint), "--hop", "64",
                        "--headless", "--jsonl", "--shard", f"{k}/2", "--store", postgres.url)
              for k in range(2)]  # fmt: skip
    outs = [Lines(p.stdout) for p in shards]
    errs = [Lines(p.stderr) for p in shards]
    try:
        for err in errs:
            lines = err.wait(lambda ls: any("connected" in x for x in ls), 60)
            assert any("connected" in x for x in lines), lines
        runners = [threading.Thread(target=publish_recording, args=(broker.url, short_recording, d))
                   for d in DEVICES]  # fmt: skip
        for runner in runners:
            runner.start()
        for runner in runners:
            runner.join(60)
        assert wait_until(lambda: sum(len(o.lines) for o in outs) >= 29 * len(DEVICES), 60)
    finally:
        for p in shards:
            p.send_signal(signal.SIGTERM)
        for p in shards:
            p.wait(20)
    summaries = [json.loads(o.wait(lambda ls: ls and "summary" in ls[-1], 10)[-1])["summary"] for o in outs]
    assert all(s["store_rows"] > 0 and "store_failures" not in s for s in summaries), summaries  # both wrote
    with psycopg.connect(postgres.url) as connection:
        rows = dict(connection.execute("SELECT device, COUNT(*) FROM predictions GROUP BY device").fetchall())
        episodes = connection.execute("SELECT COUNT(DISTINCT device) FROM episodes").fetchone()[0]
    assert set(rows) == set(DEVICES) and episodes == len(DEVICES)
    windows = sum(s["windows"] for s in summaries)
    assert sum(rows.values()) == sum(s["store_rows"] for s in summaries) == windows
    shown = cli("history", "--store", postgres.url, "--json")
    assert shown.returncode == 0, shown.stderr
    history = json.loads(shown.stdout)["devices"]
    assert set(history) == set(DEVICES)
    assert all(abs(sum(history[d]["seconds"].values()) - rows[d] * 64 / 50) < 1e-3 for d in DEVICES)


def test_a_postgresql_server_that_is_down_is_reported_once_and_recognition_goes_on(
        tiny_checkpoint, short_recording) -> None:  # fmt: skip
    url = f"postgresql://har@127.0.0.1:{free_port()}/postgres"  # nobody listens there
    done = cli("replay", f"csv:{short_recording}", "--checkpoint", str(tiny_checkpoint), "--speed", "0",
               "--hop", "64", "--headless", "--jsonl", "--store", url)  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.splitlines()[-1])["summary"]
    assert summary["windows"] >= 29 and summary["store_rows"] == 0 and summary["store_failures"] >= 1
    assert "Traceback" not in done.stderr
    assert len([line for line in done.stderr.splitlines() if "cannot write" in line]) == 1
