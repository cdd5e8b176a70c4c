"""``harstream mqtt --processes N`` (issue 23): one connection to a real mosquitto, several
recognizer processes on one machine, each device served by exactly one of them."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
import zlib
from pathlib import Path

import pytest
from live_fixtures import Lines, free_port, harstream, mqtt_client, predictions, write_tiny_checkpoint
from test_shard import DEVICES, HOP, MESSAGES, WINDOW, WINDOWS_PER_DEVICE, publish_devices

from streamer.core.mqtt_connection import MqttOptions, TopicPattern, parse_broker
from streamer.core.pipeline import SHED_MESSAGES
from streamer.sources.dispatch import (
    PROCESS_DIED,
    Outbox,
    Router,
    pack_messages,
    process_of,
    unpack_messages,
)
from streamer.sources.mqtt import INVALID_DEVICE


@pytest.fixture(scope="module")
def short_window_checkpoint(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("processes") / "tiny64.pt", window=WINDOW)


def recognizers(broker, checkpoint: Path, *extra: str, processes: int = 2):
    process = harstream("mqtt", "--broker", broker.url, "--checkpoint", str(checkpoint), "--hop", str(HOP),
                        "--headless", "--jsonl", "--processes", str(processes), "--max-wait-ms", "5",
                        *extra)  # fmt: skip
    out, err = Lines(process.stdout), Lines(process.stderr)
    lines = err.wait(lambda ls: any("connected" in x for x in ls), 90)
    assert any("connected" in x for x in lines), lines
    return process, out, err


def stop(process, out: Lines) -> dict:
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0
    lines = out.wait(lambda ls: bool(ls) and "summary" in ls[-1], 5)
    return json.loads(lines[-1])["summary"]


def wait_for(out: Lines, want: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while len(predictions(list(out.lines))) < want and time.monotonic() < deadline:
        time.sleep(0.1)


def test_frames_carry_devices_payloads_and_arrivals_as_they_were() -> None:
    messages = [("wrist-1", b'{"t": 1}', 12.5), ("band", b"", 0.0), ("x" * 64, bytes(range(256)) * 10, 3.25)]
    assert unpack_messages(pack_messages(messages)) == messages
    with pytest.raises(ValueError):
        unpack_messages(pack_messages(messages)[:-1])


def test_each_device_goes_to_its_crc32_process_and_a_full_outbox_sheds_the_oldest() -> None:
    options = MqttOptions(parse_broker("mqtt://127.0.0.1:1"), TopicPattern.parse("har/+/imu"), "unit")
    router = Router(options, 2, max_devices=100)
    for device in DEVICES:
        router.handle(f"har/{device}/imu", b"payload")
    router.handle("har/bad id/imu", b"payload")
    for k, outbox in enumerate(router.outboxes):
        got = [device for device, _, _ in outbox.take()]
        assert got == [d for d in DEVICES if zlib.crc32(d.encode("utf-8")) % 2 == k]
    assert router.drops.rows() == {(INVALID_DEVICE, "invalid device id"): 1}
    assert [process_of(d, 2) for d in DEVICES] == [zlib.crc32(d.encode()) % 2 for d in DEVICES]

    outbox = Outbox(max_messages=3)
    assert [outbox.put((f"d{k}", b"", 0.0)) for k in range(5)] == [[], [], [], ["d0"], ["d1"]]
    assert [m[0] for m in outbox.take()] == ["d2", "d3", "d4"]
    router.outboxes[0] = Outbox(max_messages=1)
    mine = [d for d in DEVICES if process_of(d, 2) == 0][:2]
    for device in mine:
        router.handle(f"har/{device}/imu", b"p")
    assert router.drops.of(mine[0]) == {SHED_MESSAGES: 1}
    router.outboxes[0].close()
    router.handle(f"har/{mine[1]}/imu", b"p")
    assert router.drops.of(mine[1]) == {PROCESS_DIED: 1}


@pytest.mark.parametrize("n", [1, 2])
def test_processes_predict_every_device_exactly_once(broker, short_window_checkpoint, n: int) -> None:
    """One process apart from the receiving one, or two sharing the devices by crc32."""
    process, out, err = recognizers(broker, short_window_checkpoint, processes=n)
    try:
        publish_devices(broker.url, DEVICES)
        sender = mqtt_client(broker.url)  # a garbage payload and an id that is no device id
        sender.publish(f"har/{DEVICES[0]}/imu", b"\x00 not a batch", qos=1).wait_for_publish(5)
        sender.publish("har/bad id!/imu", b"{}", qos=1).wait_for_publish(5)
        sender.loop_stop()
        wait_for(out, len(DEVICES) * WINDOWS_PER_DEVICE)
    finally:
        summary = stop(process, out)
    counts: dict[str, int] = {}
    for p in predictions(out.lines):
        counts[p["device"]] = counts.get(p["device"], 0) + 1
    assert counts == {d: WINDOWS_PER_DEVICE for d in DEVICES}  # every window, once
    split = [sum(zlib.crc32(d.encode("utf-8")) % n == k for d in DEVICES) for k in range(n)]
    assert [p["devices"] for p in summary["processes"]] == split  # no device served by two processes
    windows = len(DEVICES) * WINDOWS_PER_DEVICE
    assert sum(p["windows"] for p in summary["processes"]) == summary["windows"] == windows
    assert summary["devices"] == len(DEVICES)
    assert summary["samples"] == len(DEVICES) * MESSAGES * 50
    assert summary["dropped_by_reason"] == {"invalid device id": 1, "unknown format": 1}, summary
    assert summary["processes_died"] == 0
    assert not [line for line in err.lines if "Traceback" in line], err.lines


def test_a_killed_process_is_one_line_and_the_other_keeps_predicting(broker, short_window_checkpoint) -> None:
    process, out, err = recognizers(broker, short_window_checkpoint)
    said = next(x for x in err.lines if "connected" in x)
    pids = [int(p) for p in said.rpartition("(pids ")[2].rstrip(")").split()]
    first, later = DEVICES[:10], DEVICES[10:]
    try:
        publish_devices(broker.url, first)
        wait_for(out, len(first) * WINDOWS_PER_DEVICE)
        assert {p["device"] for p in predictions(out.lines)} == set(first)
        os.kill(pids[1], signal.SIGKILL)
        lines = err.wait(lambda ls: any("died" in x for x in ls), 10)
        died = [x for x in lines if "died" in x]
        assert len(died) == 1 and "recognizer process 1" in died[0] and "SIGKILL" in died[0], lines
        before = len(predictions(out.lines))
        publish_devices(broker.url, later)
        alive = [d for d in later if process_of(d, 2) == 0]
        wait_for(out, before + len(alive) * WINDOWS_PER_DEVICE, 20)
    finally:
        summary = stop(process, out)
    late: dict[str, int] = {}
    for p in predictions(out.lines)[before:]:
        late[p["device"]] = late.get(p["device"], 0) + 1
    assert late == {d: WINDOWS_PER_DEVICE for d in alive}  # process 0's devices keep flowing
    dead = [d for d in later if process_of(d, 2) == 1]
    assert summary["dropped_by_reason"][PROCESS_DIED] == len(dead) * MESSAGES
    assert summary["processes_died"] == 1


@pytest.mark.parametrize(("extra", "says"), [
    ((), "--processes N runs headless: add --headless, and watch the fleet with harstream web"),
    (("--headless", "--shared-group", "g", "--client-id", "w1"), "drop --shared-group"),
])  # fmt: skip
def test_what_processes_cannot_do_is_refused_in_one_line(extra: tuple[str, ...], says: str,
                                                         short_window_checkpoint) -> None:  # fmt: skip
    process = harstream("mqtt", "--broker", "mqtt://127.0.0.1:1", "--checkpoint",
                        str(short_window_checkpoint), "--processes", "2", *extra)  # fmt: skip
    _, err = process.communicate(timeout=30)
    assert process.returncode == 1
    assert len(err.strip().splitlines()) == 1 and says in err, err


def test_processes_share_one_sqlite_store_and_each_publishes_its_devices(broker, short_window_checkpoint,
                                                                          tmp_path) -> None:  # fmt: skip
    heard: list[str] = []
    listener = mqtt_client(broker.url)
    listener.on_message = lambda client, userdata, message: heard.append(message.topic.split("/")[1])
    listener.subscribe("har/+/activity", qos=1)
    store = tmp_path / "history.db"
    process, out, _ = recognizers(broker, short_window_checkpoint, "--store", str(store), "--publish")
    try:
        publish_devices(broker.url, DEVICES)
        wait_for(out, len(DEVICES) * WINDOWS_PER_DEVICE)
        deadline = time.monotonic() + 10
        while set(heard) != set(DEVICES) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        summary = stop(process, out)
        listener.loop_stop()
    assert set(heard) == set(DEVICES)  # each process published its own devices' activities
    windows = len(DEVICES) * WINDOWS_PER_DEVICE
    assert summary["store_rows"] == windows and not summary.get("store_failures"), summary
    with sqlite3.connect(store) as db:  # two writers, one file: every prediction once
        rows = db.execute("SELECT device, COUNT(*) FROM predictions GROUP BY device").fetchall()
    assert dict(rows) == {d: WINDOWS_PER_DEVICE for d in DEVICES}


def test_a_broker_that_stays_away_is_one_line_and_exit_1(short_window_checkpoint) -> None:
    process = harstream("mqtt", "--broker", f"mqtt://127.0.0.1:{free_port()}", "--checkpoint",
                        str(short_window_checkpoint), "--processes", "2", "--headless",
                        "--connect-timeout", "1")  # fmt: skip
    _, err = process.communicate(timeout=60)
    assert process.returncode == 1
    assert len(err.strip().splitlines()) == 1 and "could not connect to broker" in err, err
