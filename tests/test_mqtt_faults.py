"""MQTT under hostile input and faults, against a real mosquitto: floods, client-id collisions,
broker restarts, refused credentials and certificates, Home Assistant discovery that must shrink."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
from live_fixtures import Mosquitto, TimedLines, harstream, wait_until

from model.recordings import HAPT_CHANNELS
from streamer.cli import DEFAULT_CHECKPOINT
from streamer.mqtt import parse_broker
from streamer.pipeline import SHED_MESSAGES
from streamer.scheduler import DEVICE_LIMIT
from streamer.wire import encode_json_batch


def logged_broker(folder: Path, *extra: str) -> Mosquitto:
    """A mosquitto that writes its notices and warnings (dropped messages, takeovers) to a file."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "mosquitto.log"
    # started as root, mosquitto would switch to the user mosquitto, who cannot write into the test's folder
    user = ("user root",) if os.geteuid() == 0 else ()
    broker = Mosquitto(folder, extra=(*user, f"log_dest file {log}", "log_type error", "log_type warning",
                                      "log_type notice", "log_type information", *extra))  # fmt: skip
    broker.log = log
    return broker


def flood_client(url: str) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(200)  # a fast sender: the broker, not this client, is the limit
    client.max_queued_messages_set(0)
    address = parse_broker(url)
    client.connect(address.host, address.port)
    client.loop_start()
    return client


def longest_hole(times: list[float], start: float, end: float) -> float:
    """The longest stretch of [start, end] without an event at ``times``."""
    marks = [start, *sorted(t for t in times if start < t < end), end]
    return max(b - a for a, b in itertools.pairwise(marks))


def test_a_flood_of_new_ids_never_blocks_the_broker_connection_and_sheds_with_counts(
    tmp_path, short_recording
) -> None:
    """The incident, scaled: 2,000 new ids send three 1 s batches each (1,500 messages/s) while
    the shipped model is busy with the windows of the 1,000 it admits. The recognizer's network
    thread keeps reading (mosquitto drops nothing for it), the surplus is shed from the queue and
    counted, a device streaming throughout keeps its predictions coming, and a device that joins
    after the flood is admitted within seconds (a flood device's slot frees once it has been
    silent a few seconds)."""
    broker = logged_broker(tmp_path / "broker")
    ids, per_id, samples, rate = 2000, 3, 50, 1500.0  # 150 samples: a window per admitted id
    recognizer = harstream("mqtt", "--broker", broker.url, "--checkpoint", str(DEFAULT_CHECKPOINT),
                           "--hop", "64", "--headless", "--jsonl", "--max-devices", "300")  # fmt: skip
    out, err = TimedLines(recognizer.stdout), TimedLines(recognizer.stderr)
    legit = late = None
    flood = None
    try:
        assert err.wait(lambda ls: any("connected" in x for x in ls), 30), err.lines
        legit = harstream("publish", f"csv:{short_recording}", "--broker", broker.url, "--device", "legit",
                          "--speed", "1", "--format", "batch")  # fmt: skip

        def of(device: str) -> list[float]:
            """When each of the device's predictions was read."""
            lines = list(out.lines)
            return [t for t, line in zip(out.times, lines, strict=False) if f'"device": "{device}"' in line]

        assert wait_until(lambda: len(of("legit")) >= 2, 30), err.lines
        flood = flood_client(broker.url)
        flood_start = time.monotonic()
        t0 = time.time()
        infos = []
        for k in range(ids):  # each id sends 3 s of samples in three messages, back to back
            for m in range(per_id):
                payload = encode_json_batch(t0 + m, 50.0, HAPT_CHANNELS, np.zeros((samples, 6)))
                infos.append(flood.publish(f"har/flood-{k}/imu", payload, qos=1))
                ahead = flood_start + len(infos) / rate - time.monotonic()
                if ahead > 0.005:
                    time.sleep(ahead)
        for info in infos:
            info.wait_for_publish(30)
        flood_end = time.monotonic()
        late = harstream("publish", f"csv:{short_recording}", "--broker", broker.url, "--device", "late",
                         "--speed", "1", "--format", "batch")  # fmt: skip
        late_start = time.monotonic()
        late_admitted = wait_until(lambda: len(of("late")) >= 1, 20)
        late_wait = (of("late") or [float("inf")])[0] - late_start
        stream_end = time.monotonic()
    finally:
        published = 0  # samples the two streaming devices sent
        for process in (legit, late):
            if process is not None:
                process.send_signal(signal.SIGTERM)
                _, text = process.communicate(timeout=20)
                published += sum(int(n) for n in re.findall(r"published (\d+) samples", text))
        if flood is not None:
            flood.disconnect()
            flood.loop_stop()
        time.sleep(1.0)  # what is queued is recognized
        recognizer.send_signal(signal.SIGTERM)
        recognizer.wait(15)
        broker.stop()
    summary = json.loads(out.wait(lambda ls: ls and "summary" in ls[-1], 5)[-1])["summary"]
    hole = longest_hole(of("legit"), of("legit")[0], stream_end)
    dropped_log = [line for line in broker.log.read_text().splitlines() if "being dropped" in line]
    shed = summary["dropped_by_reason"].get(SHED_MESSAGES, 0)
    print(f"flood of {ids * per_id} messages in {flood_end - flood_start:.1f} s; legit's longest hole "
          f"{hole:.2f} s; late device's first prediction {late_wait:.1f} s after it started; shed {shed} "
          f"messages; summary {summary}")  # fmt: skip
    assert not dropped_log, dropped_log[:3]  # the broker never had to drop messages for the recognizer
    assert not any("disconnected" in line for line in err.lines), err.lines
    assert hole < 3.0  # about a window (2.56 s): predictions every hop (1.28 s), never a long silence
    # Every sample is accounted for, exactly: it reached the scheduler, or its message was shed
    # (only flood messages are: a served device's never while new ids' are queued) and counted.
    assert summary["samples"] + shed * samples == ids * per_id * samples + published
    assert summary["dropped_by_reason"][DEVICE_LIMIT] > 0  # the refused ids' samples are counted too
    assert late_admitted, f"a device joining after the flood waited {late_wait:.1f} s"
    assert late_wait < 12.0  # publisher start-up, a flood device's slot free after 5 s of silence, a window
