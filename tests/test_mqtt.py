"""MQTT end to end against a real mosquitto: publisher ─▶ broker ─▶ recognizer ─▶ predictions."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from live_fixtures import (
    ROOT,
    Lines,
    Recognizer,
    harstream,
    mqtt_options,
    predictions,
    replay_reference,
    same_predictions,
    wait_until,
)
from live_fixtures import mqtt_client as client

from model.data.recordings import read_csv_recording
from model.data.signals import HAPT_ACTIVITIES, HAPT_CHANNELS
from replay.sources import Device
from streamer.core.mqtt_connection import MqttOptions, TopicPattern, parse_broker
from streamer.core.wire import encode_json_batch
from streamer.sinks.announcer import discovery_id
from streamer.tools.simulated_wearable import Publisher

CHANNELS = HAPT_CHANNELS


def options(url: str, client_id: str = "recognizer") -> MqttOptions:
    return mqtt_options(url, client_id)


def recording_device(path: Path, name: str = "wrist") -> Device:
    return Device(name, [read_csv_recording(path, CHANNELS, HAPT_ACTIVITIES, 50.0)])


def publish_recording(url: str, path: Path, name: str, fmt: str = "batch") -> None:
    publisher = Publisher(options(url), recording_device(path), name, speed=0, fmt=fmt)
    publisher.connect(5)
    publisher.run(threading.Event())
    publisher.close()


def test_cli_publish_to_mqtt_gives_the_same_predictions_as_replay(broker, tiny_checkpoint, short_recording,
                                                                  tmp_path) -> None:  # fmt: skip
    want = replay_reference(tiny_checkpoint, short_recording)
    assert len(want) > 20
    watcher = client(broker.url)
    activity: list[dict] = []
    watcher.on_message = lambda c, u, m: activity.append({"topic": m.topic, "retain": m.retain,
                                                          **json.loads(m.payload)})  # fmt: skip
    watcher.subscribe("har/+/activity", qos=1)
    recognizer = harstream("mqtt", "--broker", broker.url, "--checkpoint", str(tiny_checkpoint),
                           "--hop", "64", "--headless", "--jsonl", "--publish", "--client-id", "e2e")
    err, out = Lines(recognizer.stderr), Lines(recognizer.stdout)
    try:
        assert any("connected" in line for line in err.wait(lambda ls: any("connected" in x for x in ls), 30))
        publisher = harstream("publish", f"csv:{short_recording}", "--broker", broker.url,
                              "--device", "wrist", "--speed", "0", "--format", "batch")  # fmt: skip
        assert publisher.wait(30) == 0, publisher.stderr.read()
        got = predictions(out.wait(lambda ls: len(ls) >= len(want), 30))
    finally:
        recognizer.send_signal(signal.SIGTERM)
        recognizer.wait(10)
    same_predictions(got, want)
    summary = json.loads(out.wait(lambda ls: "summary" in ls[-1], 5)[-1])["summary"]
    assert summary["dropped"] == 0 and summary["windows"] == len(want)
    time.sleep(0.3)
    watcher.loop_stop()
    assert [a["label"] for a in activity] == [p["label"] for p in want]
    assert {a["topic"] for a in activity} == {"har/wrist/activity"}
    assert set(activity[-1]) >= {"label", "confidence", "t", "probs"}


def test_binary_frames_give_the_same_labels(broker, tiny_checkpoint, short_recording) -> None:
    want = replay_reference(tiny_checkpoint, short_recording)
    recognizer = Recognizer(broker.url, tiny_checkpoint)
    try:
        publish_recording(broker.url, short_recording, "band", fmt="binary")
        got = recognizer.wait("band", len(want))
    finally:
        recognizer.close()
    assert len(got) == len(want)  # float32 on the wire: labels may differ in a near tie, counts may not
    agree = np.mean([a["label"] == b["label"] for a, b in zip(got, want, strict=True)])
    assert agree > 0.95


def test_bad_input_is_counted_per_device_and_never_disturbs_another(broker, tiny_checkpoint,
                                                                    short_recording) -> None:  # fmt: skip
    want = replay_reference(tiny_checkpoint, short_recording)
    recognizer = Recognizer(broker.url, tiny_checkpoint)
    bad = client(broker.url)
    good_sample = [0.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    t = time.time()
    garbage = [
        b'{"t": 1, "acc": [1, 2',  # malformed JSON
        b'{"t": 1, "acc": [1, 2], "gyro": [1, 2, 3]}',  # wrong channel count
        b"\xff\xfe\x00garbage",  # non-UTF-8, unknown format
        b'{"t": 1, "acc": [1, 2, 3], "gyro": [1, 2, 3], "x": "\xff"}',  # non-UTF-8 JSON
        b"{" + b" " * (1 << 20) + b"}",  # oversize
        b'{"hello": 1}',  # unknown format
        b'{"t": 1, "acc": [1, 2, 3]}',  # missing channel
    ]
    try:
        runner = threading.Thread(target=publish_recording, args=(broker.url, short_recording, "good"))
        runner.start()
        for payload in garbage:
            bad.publish("har/bad/imu", payload, qos=1)
        bad.publish("har/bad dev/imu", b"{}", qos=1)  # an invalid id never names a device
        bad.publish("har/" + "x" * 100 + "/imu", b"{}", qos=1)
        # NaN / inf samples and a clock that jumps back: the scheduler drops those samples
        for k in range(3):
            values = np.tile(good_sample, (50, 1))
            values[10, 0], values[20, 4] = np.nan, np.inf
            payload = encode_json_batch(t + k, 50.0, CHANNELS, values)
            bad.publish("har/bad/imu", payload, qos=1).wait_for_publish(5)
        bad.publish("har/bad/imu", encode_json_batch(t - 100, 50.0, CHANNELS, np.zeros((50, 6))), qos=1)
        # twice the announced rate: batches claim 50 Hz but start every half second, so they overlap
        for k in range(4):
            frame = encode_json_batch(t + 10 + k * 0.5, 50.0, CHANNELS, np.tile(good_sample, (50, 1)))
            bad.publish("har/bad/imu", frame, qos=1).wait_for_publish(5)
        runner.join(30)
        got = recognizer.wait("good", len(want))
        time.sleep(0.5)
    finally:
        recognizer.close()
        bad.loop_stop()
    same_predictions(got, want)
    pipeline = recognizer.pipeline
    bad = pipeline.dropped("bad")  # one ledger: what the decoder refused and what the scheduler dropped
    assert set(bad) >= {"malformed JSON", "wrong channel count", "not UTF-8", "payload over 1 MB",
                        "unknown format", "missing channel gyro_x"}  # fmt: skip
    assert pipeline.dropped("(invalid device id)")["invalid device id"] == 2
    assert bad["non-finite value"] == 6
    assert pipeline.scheduler.devices["bad"].counters.clock_jumps >= 1  # 100 s back: a new stream
    assert bad["timestamp not after the previous one"] >= 3 * 25  # the overlapping batches
    assert pipeline.dropped("good") == {}
    assert pipeline.dropped() == sum((pipeline.dropped(d) for d in ("bad", "(invalid device id)")), Counter())
    summary = pipeline.summary()
    assert summary["dropped"] == sum(bad.values()) + 2 and summary["dropped_by_reason"] == pipeline.dropped()


def test_broker_restart_mid_stream_reconnects_resubscribes_and_resumes(broker, tiny_checkpoint,
                                                                       short_recording) -> None:  # fmt: skip
    recognizer = Recognizer(broker.url, tiny_checkpoint)
    try:
        publish_recording(broker.url, short_recording, "first")
        assert recognizer.wait("first", 5)
        broker.stop()  # persistence false: the restarted broker has forgotten every subscription
        assert not recognizer.source.connected.wait(0) or _wait_false(recognizer.source.connected, 5)
        assert recognizer.source.status.startswith(("disconnected", "connecting"))
        broker.start()
        assert recognizer.source.connected.wait(20), recognizer.source.status
        publish_recording(broker.url, short_recording, "second")
        assert recognizer.wait("second", 5)
        assert recognizer.source.status == "connected"
    finally:
        recognizer.close()


def _wait_false(event: threading.Event, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while event.is_set() and time.monotonic() < deadline:
        time.sleep(0.05)
    return not event.is_set()


def test_samples_published_while_away_arrive_after_reconnect(broker, tiny_checkpoint) -> None:
    first = Recognizer(broker.url, tiny_checkpoint, client_id="persistent", persistent=True)
    first.close()  # a clean disconnect: the session (subscription, QoS 1 queue) stays on the broker
    sender = client(broker.url)
    t = time.time()
    for k in range(6):
        sender.publish("har/away/imu", encode_json_batch(t + k, 50.0, CHANNELS, np.zeros((50, 6))),
                       qos=1).wait_for_publish(5)  # fmt: skip
    sender.loop_stop()
    second = Recognizer(broker.url, tiny_checkpoint, client_id="persistent", persistent=True)
    try:
        assert second.wait("away", 3, timeout=10)  # 300 samples at hop 64 after a 128 window: 3 windows
    finally:
        second.close()


def test_a_flood_of_device_ids_is_capped_and_idle_devices_are_evicted(broker, tiny_checkpoint) -> None:
    recognizer = Recognizer(broker.url, tiny_checkpoint, "--idle-timeout", "1", "--max-devices", "5")
    sender = client(broker.url)
    t = time.time()
    try:
        for k in range(30):
            payload = encode_json_batch(t, 50.0, CHANNELS, np.zeros((10, 6)))
            sender.publish(f"har/flood-{k}/imu", payload, qos=1).wait_for_publish(5)
        time.sleep(0.5)
        scheduler = recognizer.pipeline.scheduler
        assert len(scheduler.devices) <= 5 and scheduler.rejected_devices >= 25
        deadline = time.monotonic() + 5
        while scheduler.devices and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not scheduler.devices and scheduler.evicted_devices == 5
    finally:
        recognizer.close()
        sender.loop_stop()


def test_home_assistant_discovery_announces_each_device(broker, tiny_checkpoint, short_recording) -> None:
    recognizer = Recognizer(broker.url, tiny_checkpoint, client_id="hass", discovery=True)
    try:
        publish_recording(broker.url, short_recording, "wrist.left")
        assert recognizer.wait("wrist.left", 3)
    finally:
        recognizer.close()
    seen: dict[str, bytes] = {}
    watcher = client(broker.url)  # retained messages arrive on subscription
    watcher.on_message = lambda c, u, m: seen.__setitem__(m.topic, m.payload)
    watcher.subscribe([("homeassistant/#", 1), ("harstream/#", 1), ("har/+/activity", 1)])
    time.sleep(0.5)
    watcher.loop_stop()
    config = json.loads(seen[f"homeassistant/sensor/{discovery_id('wrist.left')}/config"])
    assert config["state_topic"] == "har/wrist.left/activity"
    assert config["value_template"] == "{{ value_json.label }}"
    assert config["availability_topic"] == "harstream/hass/status"
    assert seen["harstream/hass/status"] == b"offline"  # closed cleanly after saying online
    assert json.loads(seen["har/wrist.left/activity"])["label"] in HAPT_ACTIVITIES


def test_headless_recognizer_without_a_broker_fails_in_one_line(tiny_checkpoint) -> None:
    from live_fixtures import free_port

    process = harstream("mqtt", "--broker", f"mqtt://127.0.0.1:{free_port()}", "--checkpoint",
                        str(tiny_checkpoint), "--headless", "--connect-timeout", "1")  # fmt: skip
    _, err = process.communicate(timeout=60)
    assert process.returncode == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "could not connect to broker" in lines[0] and "refused" in lines[0].lower()


def test_record_writes_each_device_into_a_complete_csv(broker, short_recording, tmp_path) -> None:
    out = tmp_path / "recorded"
    recorder = harstream("record", "--broker", broker.url, "--out", str(out), "--client-id", "rec")
    err = Lines(recorder.stderr)
    try:
        assert err.wait(lambda ls: any("recording" in x for x in ls), 30)
        publish_recording(broker.url, short_recording, "wrist")
        deadline = time.monotonic() + 30  # a loaded machine (a CI neighbour) may take a while
        part = out / "wrist.csv.part"
        while time.monotonic() < deadline and (not part.exists() or part.read_bytes().count(b"\n") < 2001):
            time.sleep(0.2)  # flushed at least once a second while recording: the header and 2,000 rows
        assert part.exists() and not (out / "wrist.csv").exists()
    finally:
        recorder.send_signal(signal.SIGTERM)
        recorder.wait(10)
    assert recorder.returncode == 0, err.lines
    original = read_csv_recording(short_recording, CHANNELS, HAPT_ACTIVITIES, 50.0)
    recorded = read_csv_recording(out / "wrist.csv", CHANNELS, HAPT_ACTIVITIES, 50.0)
    assert np.array_equal(recorded.values, original.values)
    assert np.allclose(np.diff(recorded.timestamps), 0.02, atol=1e-6)
    assert not part.exists()


@pytest.mark.parametrize("topic", ["har/#", "har/imu", "har/+/+/imu"])
def test_topic_patterns_need_exactly_one_device_level(topic: str) -> None:
    with pytest.raises(ValueError):
        TopicPattern.parse(topic)


def readme_mqtt_examples() -> list[str]:
    """The shell commands of the device protocol's page (docs/live.md), in order."""
    text = (ROOT / "docs" / "live.md").read_text()
    section = text[text.index("## Device protocol (MQTT)") : text.index("## Device protocol (serial)")]
    return [line.strip() for line in section.splitlines()
            if line.strip().startswith(("mosquitto_pub ", "python3 -c "))]  # fmt: skip


def test_the_readme_s_mqtt_examples_pasted_in_order_drop_nothing(broker, tiny_checkpoint, tmp_path) -> None:
    """Was: the batch's t0 came before the single sample's t, so its samples were dropped."""
    commands = readme_mqtt_examples()
    assert len(commands) == 4 and sum(c.startswith("mosquitto_pub") for c in commands) == 3
    address = parse_broker(broker.url)
    recognizer = Recognizer(broker.url, tiny_checkpoint)
    pipeline = recognizer.pipeline

    def paste() -> None:
        for command in commands:  # the README's own lines, pointed at the test's broker
            command = command.replace("mosquitto_pub ", f"mosquitto_pub -h {address.host} -p {address.port} ")
            subprocess.run(command, shell=True, cwd=tmp_path, check=True, timeout=30)

    try:
        paste()
        assert wait_until(lambda: pipeline.stats.samples >= 5, 10), pipeline.stats.samples
        time.sleep(0.3)
        assert pipeline.dropped() == {}  # nothing refused, nothing dropped
        counters = pipeline.scheduler.devices["wrist-01"].counters
        assert (counters.samples, counters.gaps, counters.clock_jumps) == (5, 0, 0)  # one stream, 50 Hz
        paste()  # pasted again: the device's time went back, as the README says
        assert wait_until(lambda: pipeline.stats.samples >= 10, 10), pipeline.stats.samples
        time.sleep(0.3)
        assert pipeline.dropped("wrist-01") == {"timestamp not after the previous one": 5}
    finally:
        recognizer.close()
