"""Activity history: episodes with hysteresis, their events (JSON lines, MQTT through a real
mosquitto), the SQLite store and its writer thread (SIGKILL, a locked file), `harstream history`."""

from __future__ import annotations

import itertools
import json
import logging
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from live_fixtures import (
    ROOT,
    Heard,
    Lines,
    Recognizer,
    TimedLines,
    harstream,
    mqtt_client,
    predictions,
    wait_until,
)

from streamer.core.types import Prediction
from streamer.live import DEFAULT_CHECKPOINT
from streamer.sinks.episodes import Episodes, EpisodeTracker
from streamer.sinks.store import Store, Target
from streamer.sinks.store_sink import StoreSink


def feed(tracker: EpisodeTracker, labels: list[str], confidence: float = 0.9, t0: float = 0.0):
    events = []
    for k, label in enumerate(labels):
        events += tracker.observe(t0 + k + 1.0, label, confidence)
    return events


# -- episodes --------------------------------------------------------------------------------------
def test_one_odd_window_does_not_split_an_episode() -> None:
    tracker = EpisodeTracker("w", hop_s=1.0, hold_s=3.0, min_confidence=0.5)
    events = feed(tracker, ["sit"] * 10 + ["walk"] + ["sit"] * 10 + ["walk", "walk"] + ["sit"] * 5)
    assert [(e.event, e.activity) for e in events] == [("start", "sit")]
    [episode] = tracker.close()
    assert (episode.activity, episode.start, episode.end, episode.windows) == ("sit", 0.0, 28.0, 28)


def test_a_label_that_holds_switches_the_episode_where_it_began() -> None:
    tracker = EpisodeTracker("w", hop_s=1.0, hold_s=3.0, min_confidence=0.5)
    events = feed(tracker, ["sit"] * 10 + ["walk"] * 6)
    assert [(e.event, e.activity, e.t) for e in events] == [
        ("start", "sit", 0.0), ("end", "sit", 10.0), ("start", "walk", 10.0)]
    episodes = tracker.close()
    assert [(e.activity, e.start, e.end, e.windows) for e in episodes] == [("sit", 0.0, 10.0, 10),
                                                                           ("walk", 10.0, 16.0, 6)]
    assert sum(e.seconds for e in episodes) == pytest.approx(16 * 1.0)  # every window counted once


def test_unsure_windows_never_switch_and_a_gap_ends_the_episode() -> None:
    tracker = EpisodeTracker("w", hop_s=1.0, hold_s=3.0, min_confidence=0.7, gap_s=5.0)
    events = feed(tracker, ["sit"] * 5) + feed(tracker, ["walk"] * 10, confidence=0.5, t0=5.0)
    assert [e.event for e in events] == ["start"]  # ten unsure walks: still sitting
    events = tracker.observe(100.0, "walk", 0.9)  # 85 s of silence, then a new episode
    assert [(e.event, e.activity, e.t) for e in events] == [("end", "sit", 15.0), ("start", "walk", 99.0)]


def test_episodes_sink_tells_every_listener_and_survives_a_failing_one(caplog) -> None:
    episodes = Episodes(hop_s=1.0, hold_s=2.0, min_confidence=0.5)
    got = []
    episodes.sinks += [Heard(event=lambda e: 1 / 0), Heard(event=got.append)]
    for k, label in enumerate(["a"] * 4 + ["b"] * 4):
        episodes(Prediction("d", k + 1.0, label, 0.9, {}, None, 0.0))
    episodes.close()
    want = [("start", "a"), ("end", "a"), ("start", "b"), ("end", "b")]
    assert [(e.event, e.activity) for e in got] == want
    assert episodes.sink_errors == 4
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1  # reported once


# -- the store ---------------------------------------------------------------------------------------
def test_store_keeps_rows_while_the_file_is_locked_and_writes_them_after(tmp_path, caplog) -> None:
    path = tmp_path / "h.db"
    Target.parse(str(path)).connect().close()  # the schema
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
    store = Store(Target.parse(str(path)), commit_interval=0.1).start()
    sink = StoreSink(store, hop_s=1.28)
    started = time.monotonic()
    for k in range(200):
        sink(Prediction("d", k * 1.28, "WALKING", 0.9, {}, "WALKING", 0.0))
    assert time.monotonic() - started < 0.5  # the pipeline's side never waits for the lock
    assert wait_until(lambda: store.failures >= 2, 10)
    assert store.written == 0 and store.queued == 200
    holder.execute("ROLLBACK")
    holder.close()
    assert wait_until(lambda: store.written == 200, 10)
    store.close()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "locked" in errors[0].getMessage()  # once per outage
    rows = sqlite3.connect(path).execute("SELECT COUNT(*), SUM(seconds) FROM predictions").fetchone()
    assert rows[0] == 200 and rows[1] == pytest.approx(200 * 1.28)


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "streamer.cli.main", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def replay(checkpoint: Path, recording: Path, *extra: str) -> subprocess.CompletedProcess:
    return cli("replay", f"csv:{recording}", "--checkpoint", str(checkpoint), "--speed", "0", "--hop", "32",
               "--headless", "--jsonl", *extra)  # fmt: skip


def test_history_json_totals_match_the_predictions_each_counted_for_its_hop(short_recording,
                                                                           tmp_path) -> None:  # fmt: skip
    store = tmp_path / "history.db"
    done = replay(DEFAULT_CHECKPOINT, short_recording, "--store", str(store), "--events")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    preds = [r for r in lines if "label" in r]
    events = [r for r in lines if "event" in r]
    summary = lines[-1]["summary"]
    assert summary["store_rows"] == len(preds) > 30 and "store_failures" not in summary
    hop_s = 32 / 50.0
    want: dict[str, float] = {}
    for p in preds:
        want[p["label"]] = want.get(p["label"], 0.0) + hop_s
    shown = cli("history", "--store", str(store), "--json")
    assert shown.returncode == 0, shown.stderr
    history = json.loads(shown.stdout)["devices"]
    assert list(history) == ["wrist"]
    got = history["wrist"]["seconds"]
    assert set(got) == set(want) and all(got[k] == pytest.approx(want[k], abs=1e-3) for k in want)
    # the episodes: as many as the start events, back to back, covering the whole run
    episodes = history["wrist"]["episodes"]
    starts = [e for e in events if e["event"] == "start"]
    assert len(episodes) == len(starts) >= 2
    assert [e["activity"] for e in episodes] == [e["activity"] for e in starts]
    assert all(a["end"] == pytest.approx(b["start"], abs=1e-3) for a, b in itertools.pairwise(episodes))
    assert sum(e["seconds"] for e in episodes) == pytest.approx(len(preds) * hop_s, abs=0.01)
    # the table names the device and the activities
    table = cli("history", "--store", str(store))
    assert table.returncode == 0 and "wrist" in table.stdout and starts[0]["activity"] in table.stdout
    # --since in the future: nothing; --device of nobody: nothing
    empty = cli("history", "--store", str(store), "--json", "--since", "2999-01-01")
    assert json.loads(empty.stdout) == {"devices": {}}
    # --plot: a picture of the model's episodes over the truth (the recording is labelled)
    picture = tmp_path / "history.png"
    plotted = cli("history", "--store", str(store), "--plot", str(picture))
    assert plotted.returncode == 0, plotted.stderr
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and picture.stat().st_size > 5000
    nothing = cli("history", "--store", str(store), "--plot", str(picture), "--since", "2999-01-01")
    assert nothing.returncode == 1 and "nothing to plot" in nothing.stderr
    assert "Traceback" not in nothing.stderr


@pytest.mark.parametrize(("args", "words"), [
    (["replay", "--store", "mysql://x/y"], "use a file path (SQLite) or postgresql://"),
    (["replay", "--store", "/no/such/folder/h.db"], "no folder"),
    (["replay", "--store", "postgresql://har@[bad/har"], "bad --store URL"),
    (["history", "--store", "/no/such.db"], "no store at"),
    (["history", "--store", "{tmp}/x.db", "--since", "yesterday-ish"], "bad time"),
])  # fmt: skip
def test_bad_store_options_get_one_line(args, words, tmp_path) -> None:
    done = cli(*(a.format(tmp=tmp_path) for a in args))
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert words in done.stderr and "Traceback" not in done.stderr


def test_a_store_that_cannot_be_written_is_reported_once_and_never_stops_recognition(
        tiny_checkpoint, short_recording, tmp_path) -> None:  # fmt: skip
    store = tmp_path / "a-folder.db"
    store.mkdir()  # a folder where the file should be: every write fails
    done = replay(tiny_checkpoint, short_recording, "--store", str(store))
    assert done.returncode == 0
    summary = json.loads(done.stdout.splitlines()[-1])["summary"]
    assert summary["windows"] > 30 and summary["store_rows"] == 0 and summary["store_failures"] >= 1
    assert summary["store_dropped"] >= summary["windows"]  # what it could not keep (episodes too): counted
    assert "Traceback" not in done.stderr
    assert len([line for line in done.stderr.splitlines() if "cannot write" in line]) == 1


def test_sigkill_loses_at_most_the_last_second(tiny_checkpoint, short_recording, tmp_path) -> None:
    store = tmp_path / "history.db"
    process = harstream("replay", f"csv:{short_recording}", "--checkpoint", str(tiny_checkpoint), "--speed",
                        "1", "--hop", "8", "--headless", "--jsonl", "--store", str(store))  # fmt: skip
    out, err = TimedLines(process.stdout), Lines(process.stderr)
    try:
        assert wait_until(lambda: len(out.lines) >= 60, 60), err.lines
        time.sleep(1.7)  # mid-way between two commits, give or take
        killed = time.monotonic()
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
    printed = list(zip(out.times, predictions(out.lines), strict=True))
    stored = {round(t, 4) for (t,) in sqlite3.connect(store).execute("SELECT t FROM predictions")}
    assert stored, "nothing was committed"
    offset = min(stored) - min(p["t"] for _, p in printed)  # a recording's clock is put on the wall clock
    missing = [when for when, p in printed if round(p["t"] + offset, 4) not in stored]
    old = [killed - when for when in missing if killed - when > 1.0 + 0.25]  # 0.25 s: the commit itself
    assert not old, f"{len(old)} predictions older than 1 s were lost (oldest {max(old):.2f} s)"
    assert len(missing) < len(printed) / 4


# -- events over MQTT ------------------------------------------------------------------------------
def test_episode_events_arrive_on_mqtt_through_a_real_mosquitto(broker, short_recording) -> None:
    from test_mqtt import publish_recording

    watcher = mqtt_client(broker.url)
    got: list[dict] = []
    watcher.on_message = lambda c, u, m: got.append({"topic": m.topic, "retain": m.retain, "qos": m.qos,
                                                     "body": m.payload.decode()})  # fmt: skip
    for topic in ("har/+/event", "har/+/episode", "homeassistant/#"):
        watcher.subscribe(topic, qos=1)
    recognizer = Recognizer(broker.url, DEFAULT_CHECKPOINT, publish=True, discovery=True, events=True)
    publisher = recognizer.publisher
    try:
        publish_recording(broker.url, short_recording, "wrist")
        assert wait_until(lambda: len(recognizer.of("wrist")) >= 29, 60)  # 40 s at hop 64: 30 windows
        time.sleep(1.0)
        recognizer.pipeline.stop()
        recognizer.thread.join(10)
        recognizer.run.finish()  # the open episode ends: its event goes out
        events_seen = lambda: sum(m["topic"].endswith("/event") for m in got)  # noqa: E731
        assert wait_until(lambda: publisher.events_published == events_seen(), 10)
    finally:
        recognizer.close()
        watcher.loop_stop()
    events = [json.loads(m["body"]) for m in got if m["topic"] == "har/wrist/event"]
    tracker = EpisodeTracker("wrist", hop_s=64 / 50.0)  # the same predictions through the same rules
    want = [e for p in recognizer.of("wrist") for e in tracker.observe(p["t"], p["label"], p["confidence"])]
    want += [e for e in tracker._end_current()]
    assert len(want) >= 3
    assert [(e["event"], e["activity"]) for e in events] == [(e.event, e.activity) for e in want]
    assert all(set(e) == {"event", "activity", "t", "duration_s"} for e in events)
    assert all(not m["retain"] and m["qos"] == 1 for m in got if m["topic"].endswith("/event"))
    ends = [e for e in events if e["event"] == "end"]
    assert all(e["duration_s"] > 0 for e in ends)
    state = [json.loads(m["body"]) for m in got if m["topic"] == "har/wrist/episode" and m["body"]]
    assert any(m["topic"] == "har/wrist/episode" and not m["body"] for m in got)  # cleared once not served
    assert state and state[-1]["activity"] == [e for e in events if e["event"] == "start"][-1]["activity"]
    configs = {m["topic"]: json.loads(m["body"]) for m in got
               if m["topic"].startswith("homeassistant/") and m["body"]}  # fmt: skip
    episode_configs = [c for t, c in configs.items() if "_episode" in t]
    assert {c.get("device_class") for c in episode_configs} == {None, "timestamp"}
    assert all(c["state_topic"] == "har/wrist/episode" for c in episode_configs)
    assert len({json.dumps(c["device"]) for c in configs.values()}) == 1  # one HA device, three entities



def test_the_store_keeps_up_with_a_fleet_and_costs_the_pipeline_microseconds() -> None:
    from streamer.tools.bench_store import measure_store

    result = measure_store(devices=300, hop=32, seconds=3.0)
    assert result["kept_up"] and result["rows_written_per_s"] > 0.9 * 300 * 50 / 32
    assert result["hot_path_us_per_prediction_p50"] < 200  # the queue, not the disk


def test_the_dashboard_shows_what_each_wearer_did_today_from_the_store(tiny_checkpoint, short_recording,
                                                                       tmp_path) -> None:  # fmt: skip
    from rich.console import Console

    from model.data.recordings import read_csv_recording
    from model.data.signals import HAPT_ACTIVITIES
    from model.net.checkpoint import load_checkpoint
    from replay.sources import Device
    from streamer.ui.dashboard import Dashboard
    from streamer.ui.today import TodayTotals

    store = tmp_path / "today.db"
    done = replay(tiny_checkpoint, short_recording, "--store", str(store))
    assert done.returncode == 0, done.stderr
    preds = [json.loads(line) for line in done.stdout.splitlines() if '"label"' in line]
    today = TodayTotals(str(store))
    today.refresh()
    assert today.status == "ok" and list(today.seconds) == ["wrist"]
    assert sum(today.seconds["wrist"].values()) == pytest.approx(len(preds) * 32 / 50.0, abs=1e-3)

    from test_live import pipeline_for

    checkpoint = load_checkpoint(tiny_checkpoint)
    device = Device("wrist", [read_csv_recording(short_recording, checkpoint.input_channels, HAPT_ACTIVITIES,
                                                 50.0)])  # fmt: skip
    pipeline = pipeline_for(checkpoint, [device], hop=32)
    dashboard = Dashboard(pipeline, checkpoint.classes, "today", today=today)
    for prediction in pipeline.run():
        dashboard.observe(prediction)
    console = Console(record=True, width=100)
    console.print(dashboard)
    text = console.export_text()
    longest = max(today.seconds["wrist"].values())
    assert "today" in text and f"{int(longest // 60 % 60):02d}:{int(longest % 60):02d}" in text

    missing = TodayTotals(str(tmp_path / "nowhere" / "x.db"))
    missing.refresh()  # never raises into the dashboard: a status line instead
    assert missing.status.startswith("today: ") and missing.seconds == {}
