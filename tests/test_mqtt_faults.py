"""MQTT under hostile input and faults, against a real mosquitto: floods, client-id collisions,
broker restarts, refused credentials and certificates, Home Assistant discovery that must shrink."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from live_fixtures import (
    Lines,
    Mosquitto,
    Recognizer,
    TimedLines,
    harstream,
    mqtt_client,
    mqtt_options,
    predictions,
    replay_reference,
    wait_until,
)

from model.data.recordings import read_csv_recording
from model.data.signals import HAPT_ACTIVITIES, HAPT_CHANNELS
from replay.sources import Device
from streamer.core.mqtt_connection import MqttConnection, parse_broker
from streamer.core.pipeline import SHED_MESSAGES
from streamer.core.scheduler import DEVICE_LIMIT
from streamer.core.types import Prediction
from streamer.core.wire import decode, encode_json_batch
from streamer.live import DEFAULT_CHECKPOINT
from streamer.sinks.announcer import Announcer
from streamer.tools.simulated_wearable import Publisher


def recording(path: Path):
    return read_csv_recording(path, HAPT_CHANNELS, HAPT_ACTIVITIES, 50.0)


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
    the shipped model is busy with the windows of the 300 it admits (--max-devices 300). The
    recognizer's network thread keeps reading (mosquitto drops nothing for it), the surplus is
    shed from the queue and counted, a device streaming throughout keeps its predictions coming,
    and a device that joins after the flood is admitted within seconds (a flood device's slot
    frees once it has been silent a few seconds)."""
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
    # the ids past the limit that got through the queue are refused and counted (on a loaded machine
    # the queue may shed so much that fewer than 300 ids ever reach the scheduler)
    assert summary["dropped_by_reason"].get(DEVICE_LIMIT, 0) > 0 or summary["devices"] < 300, summary
    assert late_admitted, f"a device joining after the flood waited {late_wait:.1f} s"
    assert late_wait < 12.0  # publisher start-up, a flood device's slot free after 5 s of silence, a window


# -- client ids and sessions ---------------------------------------------------------------------
def test_mqtt_and_record_side_by_side_with_default_client_ids_lose_nothing(
    broker, tiny_checkpoint, short_recording, tmp_path
) -> None:
    """Both used to default to harstream-HOSTNAME and took the session from each other every
    second; default ids are now unique per process, so each gets every sample."""
    want = replay_reference(tiny_checkpoint, short_recording)
    out = tmp_path / "recorded"
    recognizer = harstream("mqtt", "--broker", broker.url, "--checkpoint", str(tiny_checkpoint),
                           "--hop", "64", "--headless", "--jsonl")  # fmt: skip
    recorder = harstream("record", "--broker", broker.url, "--out", str(out))
    r_out, r_err, rec_err = Lines(recognizer.stdout), Lines(recognizer.stderr), Lines(recorder.stderr)
    try:
        assert r_err.wait(lambda ls: any("connected" in x for x in ls), 30), r_err.lines
        assert rec_err.wait(lambda ls: any("recording" in x for x in ls), 30), rec_err.lines
        # 8 s of publishing: long enough for takeovers every second to show
        publisher = harstream("publish", f"csv:{short_recording}", "--broker", broker.url,
                              "--device", "wrist", "--speed", "5")  # fmt: skip
        assert publisher.wait(60) == 0, publisher.stderr.read()
        got = predictions(r_out.wait(lambda ls: len(ls) >= len(want), 10))
        time.sleep(1.5)  # the recorder flushes every second
    finally:
        for process in (recognizer, recorder):
            process.send_signal(signal.SIGTERM)
            process.wait(15)
    assert recorder.returncode == 0, rec_err.lines
    assert not [x for x in r_err.lines + rec_err.lines if "disconnected" in x]
    assert len(got) == len(want)
    original = read_csv_recording(short_recording, HAPT_CHANNELS, HAPT_ACTIVITIES, 50.0)
    recorded = read_csv_recording(out / "wrist.csv", HAPT_CHANNELS, HAPT_ACTIVITIES, 50.0)
    # every sample, exactly as the wire carried it (publish's default binary frames hold float32)
    assert np.array_equal(recorded.values, original.values.astype(np.float32))


# -- publish through a broker restart ------------------------------------------------------------
class Watcher:
    """A subscriber that survives broker restarts (it subscribes in on_connect) and keeps every
    sample timestamp it receives on ``har/+/imu``."""

    def __init__(self, url: str) -> None:
        self.times: list[float] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("har/+/imu", qos=1)
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 1)
        address = parse_broker(url)
        self.client.connect(address.host, address.port)
        self.client.loop_start()

    def _on_message(self, client, userdata, message) -> None:
        batch = decode(message.payload, "w", HAPT_CHANNELS, 0.0)
        self.times.extend(batch.timestamps.tolist())

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_publish_rides_out_a_broker_restart(broker, short_recording) -> None:
    """The broker goes away mid-recording and comes back on the same port: `publish` waits,
    reconnects, publishes the rest and exits 0 (it used to die with 'The client is not currently
    connected' and exit 0 anyway)."""
    watcher = Watcher(broker.url)
    publisher = harstream("publish", f"csv:{short_recording}", "--broker", broker.url, "--device", "wrist",
                          "--speed", "5", "--connect-timeout", "15")  # fmt: skip
    err = Lines(publisher.stderr)
    try:
        assert wait_until(lambda: len(watcher.times) >= 200, 30), err.lines  # publishing, 4 s of samples
        broker.stop()
        time.sleep(1.5)
        broker.start()
        assert publisher.wait(60) == 0, err.lines
    finally:
        if publisher.poll() is None:
            publisher.kill()
        time.sleep(0.5)
        watcher.close()
    lines = err.wait(lambda ls: False, 2)
    assert not any("Traceback" in x or "Error" in x for x in lines), lines
    assert any("reconnected" in x for x in lines), lines
    samples = int(re.search(r"published (\d+) samples", "\n".join(lines))[1])
    original = read_csv_recording(short_recording, HAPT_CHANNELS, HAPT_ACTIVITIES, 50.0)
    assert samples == len(original.timestamps)
    # what was published after the restart reached a subscriber, up to the recording's last sample
    assert max(watcher.times) - min(watcher.times) > original.timestamps[-1] - original.timestamps[0] - 0.1


def test_publish_exits_1_when_the_broker_does_not_come_back(broker, short_recording) -> None:
    watcher = Watcher(broker.url)
    publisher = harstream("publish", f"csv:{short_recording}", "--broker", broker.url, "--device", "wrist",
                          "--speed", "5", "--connect-timeout", "2")  # fmt: skip
    err = Lines(publisher.stderr)
    try:
        assert wait_until(lambda: len(watcher.times) >= 100, 30), err.lines
        broker.stop()
        started = time.monotonic()
        code = publisher.wait(30)
        took = time.monotonic() - started
    finally:
        if publisher.poll() is None:
            publisher.kill()
        watcher.client.loop_stop()
    lines = err.wait(lambda ls: False, 1)
    assert code == 1, lines
    assert took < 15, took  # the wait (2 s), then the goodbye
    assert not any("Traceback" in x for x in lines), lines
    assert any("did not come back within 2 s" in x for x in lines), lines


# -- credentials and certificates ----------------------------------------------------------------
def password_broker(folder: Path) -> Mosquitto:
    folder.mkdir(parents=True, exist_ok=True)
    passwords = folder / "passwords"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "wearer", "right"], check=True,
                   capture_output=True)  # fmt: skip
    passwords.chmod(0o644)
    user = ("user root",) if os.geteuid() == 0 else ()  # mosquitto may read the file where it lies
    return Mosquitto(folder, extra=(*user, "allow_anonymous false", f"password_file {passwords}"))


@pytest.mark.parametrize("mode", ["--headless", "dashboard", "--processes"])
def test_a_wrong_password_is_one_line_saying_not_authorised_and_exit_1(tmp_path, tiny_checkpoint,
                                                                       mode: str) -> None:  # fmt: skip
    """Headless it read 'Protocol error'; the dashboard retried forever. Retrying with the same
    wrong password helps nobody: all stop at once with one line (--processes too, its recognizer
    processes ended with it)."""
    broker = password_broker(tmp_path / "broker")
    try:
        extra = {"--headless": ["--headless"], "dashboard": [],
                 "--processes": ["--headless", "--processes", "2"]}[mode]  # fmt: skip
        process = harstream("mqtt", "--broker", broker.url, "--checkpoint", str(tiny_checkpoint),
                            "--username", "wearer", "--password", "wrong", "--connect-timeout", "20",
                            *extra)  # fmt: skip
        try:
            _, err = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
    finally:
        broker.stop()
    lines = err.strip().splitlines()
    assert process.returncode == 1, lines
    assert len(lines) == 1 and "not authorised" in lines[0] and "--password" in lines[0], lines


def write_ca_and_server_cert(folder: Path, name: str) -> tuple[Path, Path, Path]:
    """A self-signed CA and a server certificate it signed for 127.0.0.1: (ca, cert, key)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    days = datetime.timedelta(days=1)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - days).not_valid_after(now + days)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    server = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    address = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = (x509.CertificateBuilder().subject_name(server).issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - days)
            .not_valid_after(now + days).add_extension(address, critical=False)
            .sign(ca_key, hashes.SHA256()))  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / f"{name}-ca.pem", folder / f"{name}-server.pem", folder / f"{name}-server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    return paths


def test_a_wrong_ca_is_one_line_about_the_certificate_and_exit_1(tmp_path, tiny_checkpoint) -> None:
    """A TLS broker whose certificate the given --tls-ca did not sign: said in one line that names
    the certificate check (it used to retry silently until the connect timeout)."""
    _, cert, key = write_ca_and_server_cert(tmp_path / "tls", "broker")
    wrong_ca, _, _ = write_ca_and_server_cert(tmp_path / "tls", "other")
    user = ("user root",) if os.geteuid() == 0 else ()
    broker = Mosquitto(tmp_path, extra=(*user, f"certfile {cert}", f"keyfile {key}"))
    try:
        process = harstream("mqtt", "--broker", f"mqtts://127.0.0.1:{broker.port}", "--tls-ca",
                            str(wrong_ca), "--checkpoint", str(tiny_checkpoint), "--headless",
                            "--connect-timeout", "20")  # fmt: skip
        started = time.monotonic()
        try:
            _, err = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
        took = time.monotonic() - started
    finally:
        broker.stop()
    lines = err.strip().splitlines()
    assert process.returncode == 1, lines
    assert len(lines) == 1 and "certificate verify failed" in lines[0] and "--tls-ca" in lines[0], lines
    assert took < 15, took  # at the first failed handshake, not after --connect-timeout


# -- Home Assistant discovery and strict JSON ----------------------------------------------------
def retained(url: str, *filters: str, wait: float = 0.7) -> dict[str, bytes]:
    """What the broker holds retained under ``filters`` (a fresh subscriber gets it at once)."""
    seen: dict[str, bytes] = {}
    watcher = mqtt_client(url)
    watcher.on_message = lambda c, u, m: seen.__setitem__(m.topic, m.payload) if m.payload else None
    watcher.subscribe([(f, 1) for f in filters])
    time.sleep(wait)
    watcher.disconnect()
    watcher.loop_stop()
    return seen


def stream(url: str, device: str, stop: threading.Event) -> None:
    """A wearable sending 0.1 s batches at 50 Hz in real time until ``stop``."""
    sender = mqtt_client(url)
    t0, k = time.time(), 0
    while not stop.wait(max(0.0, t0 + (k + 1) * 0.1 - time.time())):
        values = np.tile([0.0, 0.0, 1.0, 0.0, 0.0, 0.0], (5, 1))
        payload = encode_json_batch(t0 + k * 0.1, 50.0, HAPT_CHANNELS, values)
        sender.publish(f"har/{device}/imu", payload, qos=1)
        k += 1
    sender.disconnect()
    sender.loop_stop()


def test_discovery_keeps_similar_ids_apart_and_clears_what_is_no_longer_served(
    broker, tiny_checkpoint, short_recording
) -> None:
    """'a.b' and 'a_b' are two sensors (they shared one config topic); a device the recognizer
    forgets has its retained config and activity cleared, and is not announced again after a
    reconnect, while a device still served is."""
    recognizer = Recognizer(broker.url, tiny_checkpoint, "--idle-timeout", "2", client_id="hass",
                            discovery=True)  # fmt: skip
    stop = threading.Event()
    keeper = threading.Thread(target=stream, args=(broker.url, "keep", stop), daemon=True)
    keeper.start()
    try:
        assert recognizer.wait("keep", 1)
        for name in ("a.b", "a_b"):
            device = Device(name, [recording(short_recording)])
            publisher = Publisher(mqtt_options(broker.url, "sender"), device, name, speed=0)
            publisher.connect(5)
            publisher.run(threading.Event())
            publisher.close()
        for name in ("a.b", "a_b"):
            assert recognizer.wait(name, 1), name
        configs = retained(broker.url, "homeassistant/#")
        assert {json.loads(c)["device"]["name"] for c in configs.values()} == {"a.b", "a_b", "keep"}
        assert len({json.loads(c)["unique_id"] for c in configs.values()}) == 3
        # a.b and a_b fall silent: forgotten after the 2 s idle timeout
        assert wait_until(lambda: set(recognizer.pipeline.scheduler.devices) == {"keep"}, 10)
        time.sleep(0.5)
        left = retained(broker.url, "homeassistant/#", "har/+/activity")
        assert set(left) == {recognizer.publisher.config_topic("keep"), "har/keep/activity"}, set(left)
        broker.stop()  # a broker without persistence forgets every retained message
        broker.start()
        assert wait_until(lambda: recognizer.source.status == "connected", 20), recognizer.source.status
        time.sleep(0.5)
        again = retained(broker.url, "homeassistant/#")
        assert set(again) == {recognizer.publisher.config_topic("keep")}  # only what is served
    finally:
        stop.set()
        keeper.join(5)
        recognizer.close()


def test_a_prediction_that_is_not_strict_json_is_counted_and_never_published() -> None:
    connection = MqttConnection(mqtt_options("mqtt://127.0.0.1:1", "strict"))  # never connected
    publisher = Announcer(connection, discovery=True)
    sent: list[tuple[str, bytes]] = []

    class Client:  # what the publisher hands to paho
        def publish(self, topic, payload, qos=0, retain=False):
            sent.append((topic, payload))

    connection.client = Client()
    probs = {"WALKING": 0.5, "SITTING": 0.5}
    publisher(Prediction("w", 1.0, "WALKING", float("nan"), probs, None, 1.0))
    publisher(Prediction("w", 2.0, "WALKING", 0.5, {**probs, "SITTING": float("inf")}, None, 1.0))
    assert sent == []  # no config announced for it either: nothing of it is on the broker
    assert publisher.unpublishable == {"w": 2}
    assert publisher.summary()["predictions_not_published"] == 2
    publisher(Prediction("w", 3.0, "WALKING", 0.5, probs, None, 1.0))

    def refuse(constant: str):
        raise ValueError(f"not JSON: {constant}")

    assert [topic for topic, _ in sent] == [publisher.config_topic("w"), "har/w/activity"]
    for _, payload in sent:
        json.loads(payload, parse_constant=refuse)  # strict: no NaN, Infinity


# -- chaos: the broker crashes mid-stream --------------------------------------------------------
def test_a_broker_crash_mid_stream_is_accounted_for_sample_by_sample(broker, tiny_checkpoint,
                                                                     short_recording) -> None:  # fmt: skip
    """Three devices publish at QoS 1 (4x real time) while mosquitto is killed and restarted
    (no persistence: it forgets every session). Every published sample is accounted for: it
    reached the recognizer or was lost with the broker (around the crash, never after the
    recovery); what reached it was recognized once, dropped as a duplicate (QoS 1 may deliver
    twice) or shed and counted; the devices recover by themselves."""
    recognizer = Recognizer(broker.url, tiny_checkpoint, client_id="chaos", persistent=True)
    source = recognizer.source
    arrived: dict[str, list[float]] = {}  # samples read from the socket (paho's thread)
    decoded: dict[str, list[float]] = {}  # samples decoded by the pipeline
    handle, decode_message = source.handle, source._decode

    def counting_handle(topic: str, payload: bytes, arrival: float | None = None) -> None:
        device = topic.split("/")[1]
        arrived.setdefault(device, []).extend(decode(payload, device, HAPT_CHANNELS, 0.0).timestamps.tolist())
        handle(topic, payload, arrival)

    def counting_decode(device: str, payload: bytes, arrival: float):
        batch = decode_message(device, payload, arrival)
        decoded.setdefault(device, []).extend(batch.timestamps.tolist())
        return batch

    source.handle, source._decode = counting_handle, counting_decode
    original = recording(short_recording)
    names = ("chest", "wrist", "ankle")
    publishers = [Publisher(mqtt_options(broker.url, "sender"), Device(name, [original]), name, speed=4)
                  for name in names]  # fmt: skip
    stop = threading.Event()
    threads = [threading.Thread(target=p.run, args=(stop,), daemon=True) for p in publishers]
    try:
        for publisher in publishers:
            publisher.connect(5)
        for thread in threads:
            thread.start()
        assert wait_until(lambda: all(len(arrived.get(n, ())) > 400 for n in names), 20)
        broker.process.kill()  # a crash: no goodbye, no state kept
        broker.process.wait(5)
        time.sleep(1.0)
        broker.start()
        for thread in threads:
            thread.join(30)
        unacknowledged = [publisher.close() for publisher in publishers]
        assert wait_until(lambda: len(recognizer.pipeline.queue) == 0, 10)
        time.sleep(1.0)
    finally:
        stop.set()
        recognizer.close()
    assert unacknowledged == [0, 0, 0] and not any(p.error for p in publishers)
    n = len(original.timestamps)
    shed_samples = 0
    for name, publisher in zip(names, publishers, strict=True):
        assert publisher.samples == n and publisher.reconnects == 1

        def index(times: list[float], t0: float = publisher.t0) -> list[int]:
            return np.rint((np.array(times) - t0) * 50.0).astype(int).tolist()

        came, got = Counter(index(arrived[name])), Counter(index(decoded[name]))
        assert set(came) <= set(range(n)) and not got - came  # nothing made up
        shed_samples += (came - got).total()
        duplicates = (got - Counter(set(got))).total()
        counters = recognizer.pipeline.scheduler.devices[name].counters
        dropped = recognizer.pipeline.dropped(name)
        assert counters.samples == len(got)  # each distinct sample accepted once...
        assert dropped.get("timestamp not after the previous one", 0) == duplicates  # ...and no more
        # nothing else dropped (what was shed is counted below, in all)
        assert set(dropped) <= {"timestamp not after the previous one", SHED_MESSAGES}
        # Lost with the broker (if anything: paho keeps QoS 1 messages until acknowledged and
        # sends them again): published while no broker or no subscription was there, a few
        # seconds at 4x, around the crash and never after the recovery.
        lost = sorted(set(range(n)) - set(came))
        if lost:
            assert lost[0] > 400 and lost[-1] - lost[0] < 50 * 20, (lost[:3], lost[-3:])
            assert lost[-1] < n - 400
        end = publisher.t0 + original.timestamps[-1] - original.timestamps[0]
        assert recognizer.of(name)[-1]["t"] > end - 2  # recognized to the end, by itself
        print(f"{name}: published {n}, reached the recognizer {came.total()}, lost with the broker "
              f"{len(lost)}, duplicates {duplicates}, shed {(came - got).total()}")  # fmt: skip
    shed_messages = recognizer.pipeline.dropped()[SHED_MESSAGES]
    assert shed_samples == 5 * shed_messages  # whatever was shed was counted (0.1 s messages)
