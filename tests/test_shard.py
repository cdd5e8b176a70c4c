"""Several recognizers sharing the devices: ``--shard K/N`` and MQTT 5 shared subscriptions."""


from __future__ import annotations

import json
import signal
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from live_fixtures import Lines, harstream, mqtt_client, predictions, write_tiny_checkpoint

from model.data.recordings import load_hapt
from model.data.signals import HAPT_CHANNELS
from streamer.cli.connect import recognizer_mqtt_options
from streamer.cli.main import build_parser
from streamer.core.mqtt_connection import MqttOptions, TopicPattern, parse_broker
from streamer.core.shard import Shard, shard_of
from streamer.core.wire import encode_json_batch
from streamer.errors import CliError
from streamer.sources.mqtt import MqttSource

DEVICES = [f"wrist-{k:02d}" for k in range(20)]
WINDOW, HOP = 64, 32
MESSAGES, PER_MESSAGE = 4, 50  # 4 s of 50 Hz per device: windows end at samples 63, 95, ..., 191
WINDOWS_PER_DEVICE = 1 + (MESSAGES * PER_MESSAGE - WINDOW) // HOP


@pytest.fixture(scope="module")
def short_window_checkpoint(tmp_path_factory) -> Path:
    """An untrained tiny model with a 64-sample window, so a few seconds give several windows."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("shard") / "tiny64.pt", window=WINDOW)


def publish_devices(url: str, devices: list[str]) -> None:
    """Each device sends its own stretch of real HAPT data (subject 2), one batch a second."""
    values = load_hapt((2,))[0].values
    sender = mqtt_client(url)
    t0 = time.time()
    infos = []
    for m in range(MESSAGES):
        for k, device in enumerate(devices):
            start = 500 * k + m * PER_MESSAGE
            payload = encode_json_batch(t0 + m, 50.0, HAPT_CHANNELS, values[start : start + PER_MESSAGE])
            infos.append(sender.publish(f"har/{device}/imu", payload, qos=1))
    for info in infos:
        info.wait_for_publish(10)
    sender.disconnect()
    sender.loop_stop()


def test_shard_of_is_crc32_of_the_device_id_modulo_n() -> None:
    for device in DEVICES:
        assert shard_of(device, 3) == zlib.crc32(device.encode()) % 3
    counts = np.bincount([shard_of(d, 2) for d in DEVICES], minlength=2)
    assert counts.min() >= 5  # these ids land on both workers of the end-to-end test


@pytest.mark.parametrize("text", ["2/2", "-1/2", "1", "a/b", "0/0"])
def test_a_bad_shard_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        Shard.parse(text)


def test_other_shards_messages_are_ignored_before_decoding_in_one_counter() -> None:
    shard = Shard.parse("0/2")
    options = MqttOptions(parse_broker("mqtt://127.0.0.1:1"), TopicPattern.parse("har/+/imu"),
                          client_id="unit", shard=shard)  # fmt: skip
    source = MqttSource(options, HAPT_CHANNELS)
    mine = next(d for d in DEVICES if shard.owns(d))
    theirs = [d for d in DEVICES if not shard.owns(d)]
    for device in theirs:
        source.handle(f"har/{device}/imu", b"not a payload at all")  # never decoded, so never bad input
    source.handle(f"har/{mine}/imu", b"garbage")
    assert source.other_shard == len(theirs)
    assert source.drops.rows() == {(mine, "unknown format"): 1}  # its own ledger: no pipeline bound it
    assert source.devices == {mine}  # no state for other shards' devices
    assert source.summary() == {"other_shard": len(theirs)}


def test_two_shard_workers_predict_every_device_exactly_once(broker, short_window_checkpoint) -> None:
    workers = [
        harstream("mqtt", "--broker", broker.url, "--checkpoint", str(short_window_checkpoint), "--hop",
                  str(HOP), "--headless", "--jsonl", "--shard", f"{k}/2", "--max-wait-ms", "5")
        for k in range(2)
    ]  # fmt: skip
    outs = [Lines(w.stdout) for w in workers]
    errs = [Lines(w.stderr) for w in workers]
    try:
        for err in errs:
            lines = err.wait(lambda ls: any("connected" in x for x in ls), 60)
            assert any("connected" in x for x in lines), lines
        publish_devices(broker.url, DEVICES)
        want = len(DEVICES) * WINDOWS_PER_DEVICE

        def total() -> int:
            return sum(len(predictions(out.lines)) for out in outs)

        deadline = time.monotonic() + 30
        while total() < want and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait(15)
    seen: list[dict[str, int]] = []
    summaries = []
    for out in outs:
        lines = out.wait(lambda ls: bool(ls) and "summary" in ls[-1], 5)
        summaries.append(json.loads(lines[-1])["summary"])
        counts: dict[str, int] = {}
        for p in predictions(lines):
            counts[p["device"]] = counts.get(p["device"], 0) + 1
        seen.append(counts)
    assert not set(seen[0]) & set(seen[1]), "a device was predicted by both workers"
    assert set(seen[0]) | set(seen[1]) == set(DEVICES)
    for k in range(2):  # the documented function, computed here independently
        assert set(seen[k]) == {d for d in DEVICES if zlib.crc32(d.encode("utf-8")) % 2 == k}
        assert all(n == WINDOWS_PER_DEVICE for n in seen[k].values()), seen[k]
        others = len(DEVICES) - len(seen[k])
        assert summaries[k]["other_shard"] == others * MESSAGES
        assert summaries[k]["devices"] == len(seen[k]) and summaries[k]["dropped"] == 0


def test_shared_group_subscribes_through_share_and_needs_its_own_client_id() -> None:
    parser = build_parser()
    args = parser.parse_args(["mqtt", "--broker", "mqtt://h", "--shared-group", "har", "--client-id", "w1"])
    assert recognizer_mqtt_options(args).subscription == "$share/har/har/+/imu"
    args = parser.parse_args(["mqtt", "--broker", "mqtt://h", "--shared-group", "har"])
    with pytest.raises(CliError):
        recognizer_mqtt_options(args)
    with pytest.raises(ValueError):
        MqttOptions(parse_broker("mqtt://h"), TopicPattern.parse("har/+/imu"), "x", shared_group="a/b")
    args = parser.parse_args(["mqtt", "--broker", "mqtt://h", "--shard", "1/3"])
    assert recognizer_mqtt_options(args).client_id.endswith("-shard1of3")  # workers on one host keep apart


def test_two_shared_subscribers_together_get_every_message_exactly_once(broker) -> None:
    received: list[list[tuple[str, float]]] = [[], []]
    lock = threading.Lock()
    sources = []
    for k in range(2):
        options = MqttOptions(parse_broker(broker.url), TopicPattern.parse("har/+/imu"),
                              client_id=f"member-{k}", shared_group="workers")  # fmt: skip
        source = MqttSource(options, HAPT_CHANNELS)

        def emit(batch, k=k) -> None:  # the device comes from the message's topic, not the $share filter
            with lock:
                received[k].append((batch.device, float(batch.timestamps[0])))

        source._emit = emit
        source.start()
        assert source.connected.wait(10), source.status
        sources.append(source)
    try:
        time.sleep(0.2)  # the SUBACKs
        sender = mqtt_client(broker.url)
        sent = []
        for k in range(60):
            device = DEVICES[k % 6]
            sent.append((device, float(k)))
            payload = encode_json_batch(float(k), 50.0, HAPT_CHANNELS, np.zeros((2, 6)))
            sender.publish(f"har/{device}/imu", payload, qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 10
        while len(received[0]) + len(received[1]) < len(sent) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # any duplicate would arrive by now
        sender.loop_stop()
    finally:
        for source in sources:
            source.close()
    assert sorted(received[0] + received[1]) == sorted(sent)  # every message once, none twice
    assert received[0] and received[1]  # and the broker did share them
