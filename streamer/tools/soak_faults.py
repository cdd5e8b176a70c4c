"""``harstream soak --faults``: the soak's faults that need real services (issue 19), run against a
private PostgreSQL (:mod:`streamer.tools.postgres`) and RabbitMQ node (:mod:`streamer.tools.rabbitmq`) on
loopback, in a temporary folder, for a few seconds of wall-clock traffic.

The in-process soak (:mod:`streamer.tools.soak`) runs on a simulated clock; what is tried here happens to a
service while time passes, so it cannot be simulated: a fleet worker (a FleetSource and the live
pipeline, in this process) serves good devices that publish real held-out HAPT samples through the
MQTT plugin, at ``speed`` times real time, while

- hostile clients publish routing keys no AMQP consumer can be handed (ids of 300 characters, of
  150 'é': 300 bytes), which the broker's topic permission must refuse, and deliverable invalid ids,
  which the worker must count;
- every prediction goes into a SQLite store, whose file is deleted and later replaced by another
  database, and into a PostgreSQL store, whose server is frozen (SIGSTOP) for seconds, then thawed.

The report accounts for every good device's windows: each device's received against what its
samples make; and per store, windows = rows written + rows dropped, the rows found in the file or
database recounted against the store's own counters (``store_lost`` for the file that went).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from model.data.recordings import UCI_HAR_TEST_SUBJECTS, load_hapt
from model.net.checkpoint_meta import CheckpointMeta
from streamer.core.mqtt_connection import parse_broker
from streamer.core.wire import encode_json_batch
from streamer.live import LiveOptions, assemble
from streamer.sinks.store import Store, Target
from streamer.sinks.store_sink import StoreSink
from streamer.sources.fleet import FleetOptions, FleetSource, parse_amqp
from streamer.sources.mqtt import INVALID_DEVICE
from streamer.tools.postgres import Postgres, postgres_installed
from streamer.tools.private_mosquitto import BrokerError
from streamer.tools.rabbitmq import RabbitMQ, rabbitmq_installed
from streamer.tools.soak import CHANNELS, Device

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

    from streamer.sinks.episodes import Episodes

FLEET = "soak.faults"
UNDELIVERABLE = ("d" * 300, "é" * 150)  # routing keys over AMQP's 255 bytes
INVALID = ("x" * 100, "bad!id", "<script>")  # deliverable keys that name no valid device
STORE_COMMIT_S = 0.25
# A try's bound, shorter than the store's default (10 s), so that a freeze of a few seconds is an
# outage (failures counted, rows kept) rather than one slow commit.
STORE_TIMEOUT_S = 2.0
HOSTILE_TALLIES = ("undeliverable_keys_sent", "undeliverable_keys_refused", "invalid_ids_sent")
DRAIN_S = 30.0  # after the traffic: the most the worker may take to predict what it was sent


@dataclass(frozen=True)
class FaultPlan:
    """What the faults soak does, when (fractions of ``seconds``, the wall seconds of traffic)."""

    seconds: float = 12.0
    speed: float = 4.0  # device seconds sent per wall second
    good: int = 10
    hop: int = 64
    freeze_s: float = 4.0
    delete_at: float = 0.25
    freeze_at: float = 0.35
    replace_at: float = 0.65
    hostile_every_s: float = 0.1
    partitions: int = 2

    def __post_init__(self) -> None:
        if not (0 < self.seconds <= 600 and 0 < self.speed <= 100):  # NaN fails too
            raise ValueError(f"--fault-seconds must be over 0 and at most 600, not {self.seconds:g}")
        if self.good < 1:
            raise ValueError(f"soak --faults needs --good 1 or more, not {self.good}")
        if not (self.freeze_s == 0 or STORE_TIMEOUT_S + 0.5 <= self.freeze_s <= 60):  # shorter: a slow commit
            raise ValueError(f"--freeze must be 0 (none) or {STORE_TIMEOUT_S + 0.5:g} to 60 seconds, not "
                             f"{self.freeze_s:g}")  # fmt: skip


def unavailable() -> str | None:
    """Why the faults soak cannot run here (a service or a client library missing), in one line."""
    if not postgres_installed():
        return "soak --faults needs PostgreSQL (apt-get install -y postgresql): not installed"
    if not rabbitmq_installed():
        return "soak --faults needs RabbitMQ (apt-get install -y rabbitmq-server): not installed"
    for module, extra in (("psycopg", "harstream[postgres]"), ("pika", "pika"), ("paho", "paho-mqtt")):
        if importlib.util.find_spec(module) is None:
            return f"soak --faults needs the Python package {module} (pip install {extra}): not installed"
    return None


def expected_windows(samples: int, window: int, hop: int) -> int:
    return (samples - window) // hop + 1 if samples >= window else 0


# -- the stores ------------------------------------------------------------------------------------
class FaultStores:
    """The two stores every prediction and episode goes to, and their faults."""

    def __init__(self, path: Path, postgres: Postgres) -> None:
        self.path, self.postgres = path, postgres
        self.url = postgres.database("soak")
        options = {"commit_interval": STORE_COMMIT_S, "timeout_s": STORE_TIMEOUT_S}
        self.sqlite = Store(Target.parse(str(path)), **options).start()
        self.pg = Store(Target.parse(self.url), **options).start()
        self.frozen: list[int] = []
        self.freeze_log: dict[str, float | int] = {}

    def attach(self, episodes: Episodes, hop_s: float) -> None:
        for store in (self.sqlite, self.pg):
            episodes.sinks.append(StoreSink(store, hop_s))

    def delete(self) -> None:
        """The file in use deleted, as ``rm history.db`` would (its -wal and -shm stay); once it holds
        rows, so that what goes with it is something."""
        deadline = time.monotonic() + 5
        while not self.sqlite.written and time.monotonic() < deadline:
            time.sleep(0.05)
        self.path.unlink(missing_ok=True)

    def replace(self) -> None:
        """Another database put in the file's place (a backup restored, say): its own table only."""
        other = self.path.with_name("other.db")
        with sqlite3.connect(other) as connection:
            connection.execute("CREATE TABLE notes (note TEXT)")
            connection.execute("INSERT INTO notes VALUES ('kept')")
        connection.close()
        os.replace(other, self.path)

    def freeze(self) -> None:
        self.frozen = self.postgres.freeze()
        self.freeze_log["rows_at_freeze"] = self.pg.written

    def thaw(self) -> None:
        if self.frozen:
            self.freeze_log["rows_kept_at_thaw"] = len(self.pg.predictions)
            self.freeze_log["rows_at_thaw"] = self.pg.written
            self.postgres.thaw(self.frozen)
            self.frozen = []

    def close(self) -> None:
        self.thaw()
        for store in (self.sqlite, self.pg):
            store.close()

    def report(self, windows: int) -> dict:
        """Each store's rows against ``windows`` (every prediction it was handed), and recounted."""
        return {"sqlite": self._sqlite_report(windows), "postgresql": self._pg_report(windows)}

    def _sqlite_report(self, windows: int) -> dict:
        s = self.sqlite
        rows, episodes, notes = (self._in_file(table) for table in ("predictions", "episodes", "notes"))
        lost_rows = s.written - rows  # predictions written to the files that went
        return {
            "windows": windows, "rows": s.written, "dropped_rows": s.dropped_rows, "reopened": s.reopened,
            "lost": s.lost, "lost_rows": lost_rows, "rows_in_file": rows, "episodes": s.episodes_written,
            "episodes_in_file": episodes, "replacement_rows_kept": notes, "outages": s.outages,
            # every window written or dropped; the file holds what was written less what went with it,
            # and the database put in its place keeps its own rows
            "accounted": windows > 0 and windows == s.written + s.dropped_rows
            and rows + episodes + s.lost == s.written + s.episodes_written and notes == 1,
        }  # fmt: skip

    def _in_file(self, table: str) -> int:
        """The rows of ``table`` in the file now at the path: none where the file or the table is not
        there (a store that never noticed its file was deleted or replaced)."""
        try:
            connection = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        except sqlite3.Error:
            return 0
        try:
            return connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
        except sqlite3.Error:
            return 0
        finally:
            connection.close()

    def _pg_report(self, windows: int) -> dict:
        import psycopg

        s = self.pg
        rows = distinct = episodes = 0  # a store that never wrote made no tables
        with psycopg.connect(self.url) as connection, contextlib.suppress(psycopg.errors.UndefinedTable):
            rows, distinct = connection.execute(
                "SELECT COUNT(*), COUNT(DISTINCT (device, t)) FROM predictions").fetchone()  # fmt: skip
            episodes = connection.execute("SELECT COUNT(*) FROM episodes").fetchone()[0]
        at_thaw = int(self.freeze_log.get("rows_at_thaw", s.written))
        return {
            "windows": windows, "rows": s.written, "dropped_rows": s.dropped_rows, "outages": s.outages,
            "failures": s.failures, **self.freeze_log, "rows_written_after_thaw": s.written - at_thaw,
            "rows_in_database": rows, "rows_written_twice": rows - distinct, "episodes": s.episodes_written,
            "episodes_in_database": episodes,
            "accounted": windows > 0 and windows == s.written + s.dropped_rows
            and rows == distinct == s.written and episodes == s.episodes_written,
        }  # fmt: skip


# -- the fleet worker and its devices ----------------------------------------------------------------
class SoakWorker:
    """``harstream fleet``'s parts in this process: a FleetSource, the live pipeline, and the stores
    on its episodes sink; predictions counted per device as they come."""

    def __init__(self, node: RabbitMQ, checkpoint: Path, meta: CheckpointMeta, plan: FaultPlan,
                 stores: FaultStores, backend: str | None, threads: int) -> None:  # fmt: skip
        options = FleetOptions(parse_amqp(node.amqp_url), plan.partitions, name=FLEET)
        self.source = FleetSource(options, meta.input_channels)
        chosen = {"backend": backend} if backend else {}
        live = LiveOptions(checkpoint=checkpoint, hop=plan.hop, max_wait_ms=5.0, headless=True,
                           threads=threads, **chosen)  # fmt: skip
        run = assemble(live, meta, [self.source])
        self.pipeline, self.episodes = run.pipeline, run.episodes
        stores.attach(self.episodes, run.hop / meta.rate_hz)
        self.received: Counter = Counter()
        self.thread = threading.Thread(target=self._collect, name="soak-worker", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while self.source.fatal is None and time.monotonic() < deadline:
            if self.source.connected.wait(0.1):
                break
        if not self.source.connected.is_set():  # refused (said why) or the broker stayed away
            self.close()
            raise BrokerError(f"the fleet worker did not connect to {node.amqp_url}: {self.source.status}")

    def _collect(self) -> None:
        for prediction in self.pipeline.run():
            self.received[prediction.device] += 1

    def close(self) -> None:
        """Stop the pipeline, end open episodes (into the stores), stop consuming."""
        self.pipeline.stop()
        self.thread.join(10)
        self.episodes.close()
        self.source.close()


def mqtt_client(url: str, loop: bool = True) -> mqtt.Client:
    """A device's MQTT 3.1.1 client (RabbitMQ 3.10's plugin speaks it), connecting; with ``loop``
    its network loop runs in a thread of its own."""
    import paho.mqtt.client as mqtt

    address = parse_broker(url)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.max_inflight_messages_set(1000)
    client.connect(address.host, address.port)
    if loop:
        client.loop_start()
    return client


def refused(url: str, topic: str) -> bool:
    """One message on ``topic`` from a client of its own: whether the broker refused it (closed the
    connection, as it does for a publish its topic permission forbids, rather than acknowledge it).
    The network loop runs here: a loop thread takes a second to notice it should end."""
    client = mqtt_client(url, loop=False)
    closed = threading.Event()
    client.on_disconnect = lambda *args: closed.set()
    deadline = time.monotonic() + 5
    while not client.is_connected() and not closed.is_set() and time.monotonic() < deadline:
        client.loop(0.01)
    info = client.publish(topic, b'{"t": 1, "acc": [0, 0, 1], "gyro": [0, 0, 0]}', qos=1)
    while not (closed.is_set() or info.is_published()) and time.monotonic() < deadline:
        client.loop(0.01)
    for _ in range(3):  # a broker that acknowledged it would keep the connection open
        client.loop(0.01)
    was_refused = closed.is_set() and not info.is_published()
    client.disconnect()
    return was_refused


class Hostile(threading.Thread):
    """Every ``every_s``: each undeliverable key from a client of its own (the broker closes it) and
    each invalid id from one lasting client, until stopped."""

    def __init__(self, url: str, every_s: float) -> None:
        super().__init__(name="soak-hostile", daemon=True)
        self.url, self.every_s = url, every_s
        self.stopping = threading.Event()
        self.tally = Counter()

    def run(self) -> None:
        client = mqtt_client(self.url)
        try:
            while not self.stopping.wait(self.every_s):
                for device in UNDELIVERABLE:
                    self.tally["undeliverable_keys_sent"] += 1
                    self.tally["undeliverable_keys_refused"] += refused(self.url, f"har/{device}/imu")
                for device in INVALID:
                    info = client.publish(f"har/{device}/imu", b"{}", qos=1)
                    info.wait_for_publish(5)
                    self.tally["invalid_ids_sent"] += info.is_published()
        finally:
            client.disconnect()
            client.loop_stop()

    def stop(self) -> dict:
        self.stopping.set()
        self.join(30)
        return dict(self.tally)


def good_devices(plan: FaultPlan) -> list[Device]:
    values = [r.select(CHANNELS).values for r in load_hapt(UCI_HAR_TEST_SUBJECTS)]  # held out
    return [Device(f"good-{k:02d}", values[k % len(values)]) for k in range(plan.good)]


def faults_timeline(plan: FaultPlan, stores: FaultStores) -> list[tuple[float, Callable[[], None]]]:
    s = plan.seconds
    return sorted([(plan.delete_at * s, stores.delete), (plan.replace_at * s, stores.replace),
                   (plan.freeze_at * s, stores.freeze), (plan.freeze_at * s + plan.freeze_s, stores.thaw)],
                  key=lambda fault: fault[0])  # fmt: skip


def drive(node: RabbitMQ, stores: FaultStores, plan: FaultPlan, rate: float) -> tuple[int, dict]:
    """The traffic, with the faults on their timeline: the samples each good device sent, and what
    the hostile clients sent."""
    devices = good_devices(plan)
    faults = faults_timeline(plan, stores)
    client = mqtt_client(node.mqtt_url)
    hostile = Hostile(node.mqtt_url, plan.hostile_every_s)
    hostile.start()
    rounds = max(1, int(plan.seconds * plan.speed))
    start = time.monotonic()
    info = None
    try:
        for k in range(rounds):
            due = start + k / plan.speed
            while faults and faults[0][0] <= due - start:
                time.sleep(max(0.0, start + faults[0][0] - time.monotonic()))
                faults.pop(0)[1]()
            time.sleep(max(0.0, due - time.monotonic()))
            for d in devices:
                t0, values = d.next_second(rate)
                payload = encode_json_batch(t0, rate, CHANNELS, values)
                info = client.publish(f"har/{d.name}/imu", payload, qos=1)
        for at, fault in faults:  # what falls after the last message (a thaw, say)
            time.sleep(max(0.0, start + at - time.monotonic()))
            fault()
        if info is not None:
            info.wait_for_publish(30)
    finally:
        stores.thaw()  # never leave the server frozen
        sent = hostile.stop()
        client.disconnect()
        client.loop_stop()
    return rounds * int(rate), sent


def fleet_report(worker: SoakWorker, sent: dict, devices: int, expected: int,
                 depths: list[int | None]) -> dict:  # fmt: skip
    """Every good device's windows received against ``expected``; the hostile traffic's fate."""
    good = {d: n for d, n in sorted(worker.received.items()) if d.startswith("good-")}
    counted = worker.pipeline.dropped(INVALID_DEVICE).get("invalid device id", 0)
    report = {
        "good_device_windows": good, "good_device_windows_expected": expected,
        "other_devices_predicted": sum(worker.received.values()) - sum(good.values()),
        "worker_connects": worker.source.tallies["connects"],
        "broker_losses": worker.source.tallies["broker_losses"],
        **{k: sent.get(k, 0) for k in HOSTILE_TALLIES},
        "invalid_ids_counted": counted, "partition_queues_ready": depths,
    }  # fmt: skip
    # An undeliverable key that reached a partition would have closed the worker's connection (541),
    # so one connection, no loss and nothing left in the queues say none was delivered.
    report["accounted"] = (
        len(good) == devices and all(n == expected for n in good.values())
        and report["other_devices_predicted"] == 0 and report["broker_losses"] == 0
        and report["worker_connects"] == 1
        and report["undeliverable_keys_refused"] == report["undeliverable_keys_sent"] > 0
        and counted == report["invalid_ids_sent"] > 0 and depths == [0] * len(depths)
    )  # fmt: skip
    return report


def run_fault_soak(checkpoint: Path, meta: CheckpointMeta, plan: FaultPlan, backend: str | None = None,
                   threads: int = 1, say: Callable[[str], None] = lambda stage: None) -> dict:  # fmt: skip
    """Start the services, run the traffic with its faults, and account for every good window."""
    started = time.monotonic()
    with contextlib.ExitStack() as stack:  # unwound in reverse: the node, the stores, the server, the folder
        folder = Path(tempfile.mkdtemp(prefix="harstream-soak-"))
        stack.callback(shutil.rmtree, folder, ignore_errors=True)
        say("soak --faults: starting PostgreSQL")
        stores = FaultStores(folder / "history.db", stack.enter_context(Postgres()))
        stack.callback(stores.close)
        say("soak --faults: starting RabbitMQ (about 15 s)")
        (folder / "rabbitmq").mkdir()
        node = stack.enter_context(RabbitMQ(folder / "rabbitmq"))
        services_s = time.monotonic() - started
        worker = SoakWorker(node, checkpoint, meta, plan, stores, backend, threads)
        try:
            say(f"soak --faults: {plan.seconds:g} s of traffic, the store file deleted and replaced, "
                f"PostgreSQL frozen for {plan.freeze_s:g} s")  # fmt: skip
            samples, sent = drive(node, stores, plan, meta.rate_hz)
            expected = expected_windows(samples, meta.window, plan.hop)
            _drain(worker, plan.good * expected)
        finally:
            worker.close()
        fleet = fleet_report(worker, sent, plan.good, expected, node.queue_depths(FLEET, plan.partitions))
        stores.close()  # what is queued is written (or counted dropped) before the rows are recounted
        stored = stores.report(sum(worker.received.values()))
        say("soak --faults: stopping the services")
    return {
        "seconds": plan.seconds, "speed": plan.speed, "good_devices": plan.good, "hop": plan.hop,
        "postgres_frozen_s": plan.freeze_s, "fleet": fleet, "stores": stored,
        "accounted": fleet["accounted"] and all(s["accounted"] for s in stored.values()),
        "services_start_s": round(services_s, 1), "wall_s": round(time.monotonic() - started, 1),
    }  # fmt: skip


def _drain(worker: SoakWorker, windows: int) -> None:
    """Wait (at most DRAIN_S) until the worker has predicted ``windows``, then a moment for the last
    acknowledgements."""
    deadline = time.monotonic() + DRAIN_S
    while sum(worker.received.values()) < windows and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
