"""``harstream fleet`` against a real RabbitMQ 3.10 (tests/rabbitmq_fixture.py): devices publish MQTT
to its plugin, workers consume partition queues, take over from each other, and predict what one
``harstream mqtt`` predicts on the same traffic."""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pika
import pytest
from live_fixtures import (
    Lines,
    Recognizer,
    TimedLines,
    harstream,
    mqtt_client,
    predictions,
    wait_until,
    write_tiny_checkpoint,
)
from rabbitmq_fixture import active_consumers

from model.data.recordings import load_hapt
from model.data.signals import HAPT_CHANNELS
from streamer.cli.main import main
from streamer.core.shard import Shard
from streamer.core.wire import encode_json_batch
from streamer.sources.fleet import FleetOptions, FleetRefused, FleetSource, parse_amqp, preflight
from streamer.tools.rabbitmq import RabbitMQ

pytestmark = pytest.mark.slow
DEVICES = [f"wrist-{k:02d}" for k in range(40)]
PARTITIONS = 4
RATE = 50.0
TAKEOVER_BOUND_S = 128 / RATE + 2.5  # one window of the shipped model's size, plus the broker's part


@pytest.fixture(scope="module")
def tiny64(tmp_path_factory) -> Path:
    """An untrained tiny model with a 64-sample window: a few seconds of traffic give several windows."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("fleet") / "tiny64.pt", window=64)


@pytest.fixture
def fleet(rabbitmq: RabbitMQ):
    """A fleet name of the test's own; its exchange and queues are deleted after."""
    name = f"test.{uuid.uuid4().hex[:8]}"
    yield name
    connection = pika.BlockingConnection(parse_amqp(rabbitmq.amqp_url).parameters("test cleanup"))
    channel = connection.channel()
    channel.exchange_delete(name)
    channel.exchange_delete(f"{name}.roster")  # the members' (no --worker)
    for p in range(8):
        channel.queue_delete(f"{name}.{p}")
    connection.close()


def device_client(url: str) -> mqtt.Client:
    """A wearable's MQTT client: 3.1.1, as RabbitMQ 3.10's plugin speaks it."""
    return mqtt_client(url, protocol=mqtt.MQTTv311)


def traffic(devices: list[str], messages: int, per_message: int, t0: float) -> list[tuple[str, bytes]]:
    """Each device's own stretch of real HAPT samples (subject 2), message by message, round by round."""
    values = load_hapt((2,))[0].values
    out = []
    for m in range(messages):
        for k, device in enumerate(devices):
            start = 300 * k + m * per_message
            payload = encode_json_batch(t0 + m * per_message / RATE, RATE, HAPT_CHANNELS,
                                        values[start : start + per_message])  # fmt: skip
            out.append((f"har/{device}/imu", payload))
    return out


def publish(clients: list[mqtt.Client], messages: list[tuple[str, bytes]]) -> None:
    infos = [client.publish(topic, payload, qos=1) for topic, payload in messages for client in clients]
    for info in infos:
        info.wait_for_publish(10)


def worker(node: RabbitMQ, name: str, k: int, checkpoint: Path, hop: int, *extra: str, timed: bool = False):
    process = harstream("fleet", "--amqp", node.amqp_url, "--partitions", str(PARTITIONS), "--worker",
                        f"{k}/2", "--fleet-name", name, "--checkpoint", str(checkpoint), "--hop", str(hop),
                        "--headless", "--jsonl", "--max-wait-ms", "5", *extra)  # fmt: skip
    return process, (TimedLines if timed else Lines)(process.stdout), Lines(process.stderr)


def settled(node: RabbitMQ, name: str, timeout: float = 30.0) -> dict[str, str]:
    """Wait until each partition's active consumer is its owner's (consumer tags name the worker)."""
    want = {f"{name}.{p}": f"worker-{p % 2}-p{p}-" for p in range(PARTITIONS)}
    active: dict[str, str] = {}

    def owners_serve() -> bool:
        active.update(active_consumers(node, f"{name}."))
        return all(active.get(q, "").startswith(tag) for q, tag in want.items())

    assert wait_until(owners_serve, timeout, step=0.5), active
    return active


def stop(*processes) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        process.wait(20)


def summary_of(lines: Lines) -> dict:
    done = lines.wait(lambda ls: bool(ls) and "summary" in ls[-1], 10)
    return json.loads(done[-1])["summary"]


def by_device(records: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for p in records:
        out[p["device"]].append(p)
    return out


def test_the_fleet_source_is_a_source_and_each_worker_owns_every_nth_partition() -> None:
    from streamer.core.source import Source

    options = FleetOptions(parse_amqp("amqp://u:p@127.0.0.1:1/v"), 8, Shard(1, 3), name="f")
    source = FleetSource(options, HAPT_CHANNELS)  # never started
    declared = {name for name in Source.__annotations__} | {"bind", "run", "close", "summary", "released"}
    assert all(hasattr(source, name) for name in declared) and source.live and source.fatal is None
    assert options.share == [1, 4, 7] and [p.owned for p in source.parts] == [p % 3 == 1 for p in range(8)]
    assert options.prefetch * options.partitions <= 192 and options.binding == "har.*.imu"
    assert source.released() == [] and source.summary()["fleet_broker_losses"] == 0
    source.close()  # safe, started or not, twice
    source.close()
    for partitions in (0, 129):
        with pytest.raises(ValueError, match="--partitions"):
            FleetOptions(options.broker, partitions)
    with pytest.raises(ValueError, match="fleet name"):
        FleetOptions(options.broker, 2, name="amq.mine")


# -- the broker behaviour the fleet relies on ------------------------------------------------------
def test_rabbitmq_hands_a_free_queue_to_the_highest_priority_waiting_consumer_and_never_preempts(
        rabbitmq) -> None:  # fmt: skip
    """RabbitMQ 3.10, single-active-consumer: a consumer of higher priority that attaches later does
    not take the queue from the active one; when the active one leaves, the waiting consumer of
    highest priority gets it, even if it attached last."""
    connection = pika.BlockingConnection(parse_amqp(rabbitmq.amqp_url).parameters("test priorities"))
    queue = f"test.sac.{uuid.uuid4().hex[:8]}"
    connection.channel().queue_declare(queue, arguments={"x-single-active-consumer": True})
    got: dict[str, list[int]] = defaultdict(list)
    channels = {}
    for name, priority in (("first-low", 0), ("second-low", 0), ("third-high", 10)):
        channel = channels[name] = connection.channel()
        channel.basic_consume(queue, lambda ch, m, p, body, name=name: got[name].append(int(body)),
                              auto_ack=True, arguments={"x-priority": priority})  # fmt: skip
    sender = connection.channel()

    def send(values: range) -> None:
        for k in values:
            sender.basic_publish("", queue, str(k).encode())
        deadline = time.monotonic() + 10
        while sum(map(len, got.values())) < values.stop and time.monotonic() < deadline:
            connection.process_data_events(time_limit=0.1)

    send(range(10))
    channels["first-low"].close()  # the active consumer leaves
    send(range(10, 20))
    sender.queue_delete(queue)
    connection.close()
    assert dict(got) == {"first-low": list(range(10)), "third-high": list(range(10, 20))}


# -- the whole fleet -------------------------------------------------------------------------------
def test_two_workers_serve_each_device_once_and_predict_what_one_mqtt_recognizer_does(
        rabbitmq, broker, fleet, tiny64) -> None:  # fmt: skip
    reference = Recognizer(broker.url, tiny64, "--hop", "32", "--max-wait-ms", "5")
    publish_out = ("--publish", "--mqtt-port", str(rabbitmq.mqtt_port))  # through the MQTT plugin
    workers = [worker(rabbitmq, fleet, k, tiny64, 32, *publish_out) for k in range(2)]  # any may be first
    clients = [device_client(rabbitmq.mqtt_url), device_client(broker.url)]
    windows = 1 + (4 * 50 - 64) // 32  # 4 s of each device: windows end at samples 63, 95, ..., 191
    watcher = device_client(rabbitmq.mqtt_url)  # an MQTT subscriber, as Home Assistant would be
    seen: list[tuple[str, str]] = []
    watcher.on_message = lambda c, u, m: seen.append((m.topic, json.loads(m.payload)["label"]))
    watcher.subscribe("har/+/activity", qos=1)
    amqp = pika.BlockingConnection(parse_amqp(rabbitmq.amqp_url).parameters("test listener"))
    listener = amqp.channel()  # and an AMQP consumer of amq.topic
    queue = listener.queue_declare("", exclusive=True).method.queue
    listener.queue_bind(queue, "amq.topic", routing_key="har.*.activity")
    try:
        for _, _, err in workers:
            assert any("connected" in x for x in err.wait(lambda ls: any("connected" in x for x in ls), 60))
        settled(rabbitmq, fleet)
        publish(clients, traffic(DEVICES, messages=4, per_message=50, t0=time.time()))
        outs = [out for _, out, _ in workers]
        assert wait_until(lambda: sum(len(predictions(o.lines)) for o in outs) >= len(DEVICES) * windows, 60)
        assert wait_until(lambda: len(reference.predictions) >= len(DEVICES) * windows, 30)
        assert wait_until(lambda: len(seen) >= len(DEVICES) * windows, 10)
        time.sleep(0.5)  # a duplicate would come by now
        keys = []
        while (message := listener.basic_get(queue, auto_ack=True))[0] is not None:
            keys.append(message[0].routing_key)
    finally:
        stop(*(process for process, _, _ in workers))
        reference.close()
        amqp.close()
        for client in (*clients, watcher):
            client.loop_stop()
    served = [by_device(predictions(out.lines)) for _, out, _ in workers]
    assert not set(served[0]) & set(served[1]), "a device was served by both workers"
    assert set(served[0]) | set(served[1]) == set(DEVICES) and served[0] and served[1]
    want = by_device(reference.predictions)
    for device in DEVICES:
        got = served[0].get(device) or served[1][device]
        assert [p["t"] for p in got] == [p["t"] for p in want[device]] and len(got) == windows
        assert [p["label"] for p in got] == [p["label"] for p in want[device]]
        for a, b in zip(got, want[device], strict=True):
            assert np.allclose(list(a["probs"].values()), list(b["probs"].values()), atol=1e-5)
    labels = by_device([{"device": topic.split("/")[1], "label": label} for topic, label in seen])
    assert {d: [p["label"] for p in ps] for d, ps in labels.items()} == {
        d: [p["label"] for p in want[d]] for d in DEVICES}  # fmt: skip
    assert sorted(keys) == sorted(f"har.{topic.split('/')[1]}.activity" for topic, _ in seen)
    for k, (_, out, err) in enumerate(workers):
        summary = summary_of(out)
        assert summary["dropped"] == 0 and summary["devices"] == len(served[k])
        assert summary["fleet_partitions_handed_back"] == 0  # the owners were there before the traffic
        assert summary["fleet_partitions_taken"] == sum("is served here now" in x for x in err.lines) == 2


def test_a_killed_worker_s_devices_are_served_by_the_other_one_window_later_and_given_back(
        rabbitmq, fleet, tiny_checkpoint) -> None:  # fmt: skip
    """SIGKILL one of two workers while 40 devices stream in real time: the survivor becomes the
    consumer of its partitions and serves its devices afresh (window 128 at 50 Hz, as the shipped
    model's); when the worker comes back, the survivor hands them back. A device is never served
    by two workers at once."""
    workers = [worker(rabbitmq, fleet, k, tiny_checkpoint, 32, timed=True) for k in range(2)]
    (_, survivor_out, survivor_err), (victim, victim_out, _) = workers
    client = device_client(rabbitmq.mqtt_url)
    stop_sending = threading.Event()
    per_message, rounds = 25, 80  # a message every 0.5 s, as a wearable sends, for 40 s at most
    t0 = time.time()
    messages = traffic(DEVICES, rounds, per_message, t0)

    def send() -> None:
        for m in range(rounds):
            due = t0 + (m + 1) * per_message / RATE  # sent when its last sample has been measured
            if stop_sending.wait(max(0.0, due - time.time())):
                return
            publish([client], messages[m * len(DEVICES) : (m + 1) * len(DEVICES)])

    def served(lines: Lines) -> dict[str, list[dict]]:
        return by_device(predictions(list(lines.lines)))

    try:
        for _, _, err in workers:
            assert any("connected" in x for x in err.wait(lambda ls: any("connected" in x for x in ls), 60))
        settled(rabbitmq, fleet)
        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        assert wait_until(lambda: len(served(victim_out)) + len(served(survivor_out)) == len(DEVICES), 20)
        time.sleep(1.0)
        victim.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        victim.wait(10)
        assert wait_until(lambda: len(served(survivor_out)) == len(DEVICES), TAKEOVER_BOUND_S + 2)
        workers.append(worker(rabbitmq, fleet, 1, tiny_checkpoint, 32, timed=True))  # the owner returns
        _, back_out, back_err = workers[-1]
        assert any("connected" in x for x in back_err.wait(lambda ls: any("connected" in x for x in ls), 60))
        handed_back = lambda: sum("handed back" in x for x in survivor_err.lines) == 2  # noqa: E731
        assert wait_until(handed_back, 10), survivor_err.lines
        assert wait_until(lambda: len(served(back_out)) == len(served(victim_out)), TAKEOVER_BOUND_S + 2)
        time.sleep(1.0)
    finally:
        stop_sending.set()
        stop(*(process for process, _, _ in workers))
        client.loop_stop()
    killed, survivor, back = served(victim_out), served(survivor_out), served(back_out)
    assert killed and set(killed) == set(back) and set(killed) | set(survivor) == set(DEVICES)
    first_after: list[float] = []
    for device, theirs in killed.items():
        stood_in = survivor[device]
        # sample indices of the windows' last samples: each worker's after the one before it
        last, first, stood_last, back_first = (round((p["t"] - t0) * RATE) for p in (
            theirs[-1], stood_in[0], stood_in[-1], back[device][0]))  # fmt: skip
        assert last < first and stood_last < back_first, f"{device} was served by two workers at once"
        # afresh: a new consumer's first window ends 128 samples into the first message it was given
        assert (first + 1 - 128) % per_message == 0 and (back_first + 1 - 128) % per_message == 0
        assert (last + 1 - 128) % 32 == 0  # the killed worker's, from the stream's start
        at = min(survivor_out.times[i] for i, line in enumerate(survivor_out.lines)
                 if f'"device": "{device}"' in line)  # fmt: skip
        first_after.append(at - killed_at)
    print(f"\nfirst prediction after the kill, {len(first_after)} devices: median "
          f"{np.median(first_after):.2f} s, max {max(first_after):.2f} s")
    assert max(first_after) < TAKEOVER_BOUND_S
    taken = [x for x in survivor_err.lines if "standing in" in x]
    assert len(taken) == 2 and all("worker 1's share" in x for x in taken), survivor_err.lines
    summary = summary_of(survivor_out)
    assert summary["fleet_partitions_taken"] == 4 and summary["fleet_partitions_handed_back"] == 2
    assert summary["dropped"] == 0


# -- in-process: hostile input, the broker going away, one-line refusals -------------------------
class FleetWorker:
    """The fleet command's parts in this process: source, pipeline, predictions collected."""

    def __init__(self, node: RabbitMQ, name: str, checkpoint: Path, *extra: str) -> None:
        from streamer.cli.main import build_parser
        from streamer.live import LiveOptions, assemble, open_checkpoint

        argv = ["fleet", "--amqp", node.amqp_url, "--partitions", "2", "--fleet-name", name,
                "--checkpoint", str(checkpoint), "--hop", "32", "--max-wait-ms", "5", *extra]  # fmt: skip
        args = build_parser().parse_args(argv)
        ck = open_checkpoint(checkpoint)
        options = FleetOptions(parse_amqp(node.amqp_url), 2, name=name)
        self.source = FleetSource(options, ck.input_channels)
        self.pipeline = assemble(LiveOptions.from_args(args), ck, [self.source]).pipeline
        self.predictions: list[dict] = []
        self.thread = threading.Thread(target=self._collect, daemon=True)
        self.thread.start()
        assert self.source.connected.wait(20), self.source.status

    def _collect(self) -> None:
        for prediction in self.pipeline.run():
            self.predictions.append(prediction.to_json())

    def of(self, device: str) -> list[dict]:
        return [p for p in self.predictions if p["device"] == device]

    def close(self) -> None:
        self.pipeline.stop()
        self.thread.join(10)
        self.source.close()


def test_a_malformed_payload_through_the_fleet_is_a_counted_drop(rabbitmq, fleet, tiny64) -> None:
    fleet_worker = FleetWorker(rabbitmq, fleet, tiny64)
    client = device_client(rabbitmq.mqtt_url)
    amqp = pika.BlockingConnection(parse_amqp(rabbitmq.amqp_url).parameters("test sender"))
    try:
        good = traffic(["good"], messages=4, per_message=50, t0=time.time())
        bad = [b'{"t": 1, "acc": [1, 2', b"\xff\xfe\x00garbage", b"{" + b" " * (1 << 20) + b"}",
               b'{"t": 1, "acc": [1, 2, 3]}']  # fmt: skip
        publish([client], good[:2] + [("har/bad/imu", payload) for payload in bad] + good[2:])
        channel = amqp.channel()  # an AMQP publisher may name no valid device at all
        channel.basic_publish("amq.topic", "har.bad!device.imu", b"{}")  # (a space: refused by the broker)
        assert wait_until(lambda: len(fleet_worker.of("good")) >= 5, 30)
        dropped = fleet_worker.pipeline.dropped
        assert wait_until(lambda: sum(dropped().values()) >= len(bad) + 1, 10), dropped()
        time.sleep(0.3)  # acknowledgements
        queues = [channel.queue_declare(f"{fleet}.{p}", passive=True).method for p in range(2)]
    finally:
        fleet_worker.close()
        client.loop_stop()
        amqp.close()
    assert dropped("bad") == {"malformed JSON": 1, "unknown format": 1, "payload over 1 MB": 1,
                              "missing channel gyro_x": 1}  # fmt: skip
    assert dropped("(invalid device id)") == {"invalid device id": 1}
    assert len(fleet_worker.of("good")) == 5 and "bad" not in {p["device"] for p in fleet_worker.predictions}
    assert [q.message_count for q in queues] == [0, 0]  # every message acknowledged, the bad ones too


def test_one_line_for_what_retrying_cannot_mend(rabbitmq, fleet, tiny64, capsys) -> None:
    base = ["fleet", "--partitions", "2", "--fleet-name", fleet, "--checkpoint", str(tiny64), "--headless"]
    wrong = rabbitmq.amqp_url.replace(":har@", ":wrong@")
    assert main([*base, "--amqp", wrong]) == 1
    assert "not authorised: check the user and password in --amqp" in capsys.readouterr().err
    assert main([*base, "--amqp", rabbitmq.amqp_url, "--worker", "2/2"]) == 1
    assert "bad --worker '2/2'" in capsys.readouterr().err
    options = FleetOptions(parse_amqp(rabbitmq.amqp_url), 2, Shard(0, 2), name=fleet)
    preflight(options)  # declares two partitions
    with pytest.raises(FleetRefused, match=r"holds 2 partitions .* has --partitions 1"):
        preflight(FleetOptions(options.broker, 1, name=fleet))
    holder = pika.BlockingConnection(options.broker.parameters("test presence"))
    presence = holder.channel()  # worker 0/2 is attached
    presence.queue_declare(options.presence(0), auto_delete=True, arguments={"x-expires": 10_000})
    presence.basic_consume(options.presence(0), lambda *message: None, auto_ack=True, exclusive=True)
    try:
        assert main([*base, "--amqp", rabbitmq.amqp_url, "--worker", "0/2"]) == 1
        assert "worker 0/2 is already attached" in capsys.readouterr().err
    finally:
        holder.close()


# -- hostile traffic and wrong settings that must not reach the fleet ------------------------------
def hostile_publish(url: str, topic: str) -> bool:
    """One message from a client of its own; whether the broker kept the connection open after it."""
    client = device_client(url)
    try:
        assert wait_until(client.is_connected, 5)
        client.publish(topic, b'{"t": 1, "acc": [0, 0, 1], "gyro": [0, 0, 0]}', qos=1).wait_for_publish(2)
    except (RuntimeError, ValueError):  # the broker closed the connection before the PUBACK
        pass
    time.sleep(0.05)
    alive = client.is_connected()
    client.disconnect()
    client.loop_stop()
    return alive


def test_a_flood_of_hostile_routing_keys_leaves_every_good_device_served(rabbitmq, fleet, tiny64) -> None:
    """A device id of 300 characters (or 150 'é', 300 bytes) makes a routing key that AMQP cannot
    carry to a consumer: routed into a partition, it would close the worker's connection (541) on
    every delivery, for good. The broker's topic permission refuses it before it is routed (and
    closes that publisher's connection); keys it lets through that name no valid device are counted."""
    fleet_worker = FleetWorker(rabbitmq, fleet, tiny64)
    client = device_client(rabbitmq.mqtt_url)
    undeliverable = ["har/" + "d" * 300 + "/imu", "har/" + "é" * 150 + "/imu"]
    invalid = ["har/" + "x" * 100 + "/imu", "har/bad!id/imu", "har/<script>/imu"]  # deliverable, no device
    try:
        good = traffic(["good-a", "good-b"], messages=8, per_message=50, t0=time.time())
        refused_kept_open = []
        for k in range(0, len(good), 2):
            publish([client], good[k : k + 2])
            for topic in undeliverable:
                refused_kept_open.append(hostile_publish(rabbitmq.mqtt_url, topic))
            for topic in invalid:
                publish([client], [(topic, b"{}")])
        expected = (8 * 50 - 64) // 32 + 1
        assert wait_until(lambda: all(len(fleet_worker.of(d)) >= expected for d in ("good-a", "good-b")), 30)
        dropped = fleet_worker.pipeline.dropped
        rounds = len(good) // 2
        counted = lambda: dropped("(invalid device id)").get("invalid device id")  # noqa: E731
        assert wait_until(lambda: counted() == rounds * len(invalid), 10), dropped()
        time.sleep(0.3)  # acknowledgements
    finally:
        fleet_worker.close()
        client.loop_stop()
    assert [len(fleet_worker.of(d)) for d in ("good-a", "good-b")] == [expected, expected]
    assert fleet_worker.source.tallies["connects"] == 1 and fleet_worker.source.tallies["broker_losses"] == 0
    assert not any(refused_kept_open)  # the broker refused each one and closed its publisher
    assert rabbitmq.queue_depths(fleet, 2) == [0, 0]  # nothing stuck at the head of a partition


def test_a_broker_that_lets_undeliverable_keys_in_is_refused_in_one_line(rabbitmq, fleet, tiny64, capsys):
    from streamer.tools.rabbitmq import USER, VHOST

    argv = ["fleet", "--amqp", rabbitmq.amqp_url, "--partitions", "2", "--fleet-name", fleet,
            "--checkpoint", str(tiny64), "--headless"]  # fmt: skip
    assert rabbitmq.ctl("clear_topic_permissions", "-p", VHOST, USER).returncode == 0
    try:
        assert main(argv) == 1
    finally:
        rabbitmq.guard()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "set_topic_permissions -p harstream USER amq.topic '^[!-~]{1,255}$'" in err[0]
    assert rabbitmq.queue_depths(fleet, 1) == [None]  # refused before it declared anything


def test_a_worker_with_another_partition_count_is_refused_before_it_touches_the_broker(
        rabbitmq, fleet, tiny64, capsys) -> None:  # fmt: skip
    """Declaring first would bind the extra partitions into the hash ring: half the devices would
    go to queues nobody consumes, and the fleet's own workers would no longer start."""
    broker = parse_amqp(rabbitmq.amqp_url)
    preflight(FleetOptions(broker, 4, name=fleet))  # the running fleet: 4 partitions
    base = ["fleet", "--amqp", rabbitmq.amqp_url, "--fleet-name", fleet, "--checkpoint", str(tiny64),
            "--headless"]  # fmt: skip
    for partitions in ("8", "2"):
        assert main([*base, "--partitions", partitions, "--worker", "0/1"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"holds 4 partitions of {fleet!r} and this worker has --partitions " \
            f"{partitions}" in err[0], err
    assert rabbitmq.queue_depths(fleet, 8) == [0, 0, 0, 0, None, None, None, None]
    preflight(FleetOptions(broker, 4, name=fleet))  # a worker of the fleet still starts


def test_the_worker_reconnects_by_itself_after_a_broker_restart(rabbitmq, fleet, tiny64) -> None:
    """Last in this module: the session's node restarts (same ports, same database)."""
    fleet_worker = FleetWorker(rabbitmq, fleet, tiny64)
    t0 = time.time()
    messages = traffic(["wrist"], messages=8, per_message=50, t0=t0)
    try:
        client = device_client(rabbitmq.mqtt_url)
        publish([client], messages[:4])
        assert wait_until(lambda: len(fleet_worker.of("wrist")) >= 5, 30)
        client.loop_stop()
        rabbitmq.restart()
        source = fleet_worker.source
        assert wait_until(lambda: source.tallies["connects"] == 2, 60), source.status
        client = device_client(rabbitmq.mqtt_url)
        publish([client], messages[4:])  # the device carries on (afresh here)
        assert wait_until(lambda: len(fleet_worker.of("wrist")) >= 10, 30), fleet_worker.source.status
        client.loop_stop()
        assert wait_until(lambda: "broker lost 1" in fleet_worker.source.status, 5)  # the dashboard's line
    finally:
        fleet_worker.close()
    assert len(fleet_worker.of("wrist")) == 10  # afresh after the outage: 5 windows of 64 in 4 s again
    summary = fleet_worker.pipeline.summary()
    assert summary["fleet_connects"] == 2 and summary["fleet_broker_losses"] == 1
