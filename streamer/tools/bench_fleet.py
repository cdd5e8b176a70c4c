"""``harstream bench --fleet``: what recognizer processes sustain through a broker, side by side in
one run: ``harstream mqtt`` on a private mosquitto (one process, and ``--processes 2``: a receiving
process handing each of two recognizer processes its devices), and ``harstream fleet`` with 1 and
with 2 workers on a private RabbitMQ (:mod:`streamer.tools.rabbitmq`), the devices speaking MQTT to
each.

For each setup and each fleet size: the recognizers start as real processes (``--headless
--jsonl``, one inference thread each), a publisher in another process sends every device's real
HAPT samples at real time (a binary frame of ``per_message`` samples each time the last of them
is due, QoS 1, wall-clock timestamps; the devices switched on at moments spread over one message's
period, as real wearables are, so as in ``harstream bench`` their messages do not all come in one
burst), and each prediction is timed as the recognizer prints it. The
latency of a window is from the moment the message that completed it was due to be sent, to its
prediction: the broker, the recognizer's queue, scheduler and inference. A recognizer's CPU is
that of its whole process group (the command and the processes it starts). A fleet size holds when
every window expected came, none was dropped, and p99 ≤ 250 ms; sizes step up until one does not.

    python -m streamer.tools.bench_fleet --sizes 100,200,400 --seconds 30
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.strict_json import dumps
from streamer.core.wire import BINARY_VERSION, HEADER, MAGIC
from streamer.tools.bench_mqtt import BLOCKS, wait_until

RATE_HZ = 50.0
PARTITIONS = 4  # the fleet's partition queues, with one worker or two
HELD_P99_MS = 250.0
SETTLE_S = 3.0  # after the workers say they are connected: two workers hand each other their shares
# mosquitto_pN: mqtt --processes N; rabbitmq_N: N fleet workers
SETUPS = ("mosquitto", "mosquitto_p1", "mosquitto_p2", "rabbitmq_1", "rabbitmq_2")


def quiet(stage: str) -> None:
    """The default progress callback: says nothing."""


# -- the devices (another process) --------------------------------------------------------------
def phase(device: int, devices: int, per_message: int) -> float:
    """When device ``device`` starts (s after t0): the fleet spread over one message's period, as
    real wearables switched on at different moments are, so that their messages do not all come
    in one burst."""
    return device / devices * per_message / RATE_HZ


def _publish(host: str, port: int, devices: int, rounds: int, per_message: int, t0: float,
             values: np.ndarray, late, cpu) -> None:  # fmt: skip
    """Every device's messages, each when its last sample is due, in the binary format: the samples
    encoded once before the run (``BLOCKS`` runs of real ones), a header packed per message, so that
    the machine measures the recognizer, not this process; its own CPU seconds into ``cpu``."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)  # both brokers speak it
    client.max_inflight_messages_set(1000)
    client.connect(host, port)
    client.loop_start()
    info = None
    period = per_message / RATE_HZ
    starts = np.linspace(0, len(values) - per_message, BLOCKS).astype(int)
    blocks = [np.ascontiguousarray(values[s : s + per_message], dtype="<f4").tobytes() for s in starts]
    topics = [f"har/bench-{d:04d}/imu" for d in range(devices)]
    schedule = sorted((t0 + phase(d, devices, per_message) + (m + 1) * period, m, d)
                      for m in range(rounds) for d in range(devices))  # fmt: skip
    cpu0 = time.process_time()
    for due, m, d in schedule:
        time.sleep(max(0.0, due - time.time()))
        late.value = max(late.value, time.time() - due)
        head = HEADER.pack(MAGIC, BINARY_VERSION, 6, per_message, RATE_HZ, due - period)
        info = client.publish(topics[d], head + blocks[(7 * d + m) % BLOCKS], qos=1)
    if info is not None:
        info.wait_for_publish(30)
    client.disconnect()
    client.loop_stop()
    cpu.value = time.process_time() - cpu0


# -- the recognizers (processes) ------------------------------------------------------------------
def _stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command's name (which may hold spaces)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int, group: bool = False) -> float:
    """User + system CPU seconds that process ``pid`` has used (Linux /proc), or with ``group`` every
    live process of its process group (a RabbitMQ node: the script, the Erlang VM and its helpers);
    NaN where /proc cannot say."""
    tick = os.sysconf("SC_CLK_TCK")
    try:
        if not group:
            fields = _stat(pid)
            return (int(fields[11]) + int(fields[12])) / tick
        total = 0
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    fields = _stat(int(entry.name))
                    total += int(fields[11]) + int(fields[12]) if int(fields[2]) == pid else 0
        return total / tick
    except (OSError, IndexError, ValueError):
        return float("nan")


class Worker:
    """A recognizer process; its predictions, each with the wall-clock time it was read."""

    def __init__(self, args: list[str]) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        command = [sys.executable, "-m", "streamer.cli.main", *args]
        # a session of its own: its process group is the command and every process it starts
        self.process = subprocess.Popen(command, env=env, text=True, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
        self.predictions: list[tuple[float, dict]] = []
        self.summary: dict = {}
        self.errors: list[str] = []
        self.connected = threading.Event()
        threading.Thread(target=self._read_out, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read_out(self) -> None:
        for line in self.process.stdout:
            now = time.time()
            record = json.loads(line)
            if "summary" in record:
                self.summary = record["summary"]
            else:
                self.predictions.append((now, record))

    def _read_err(self) -> None:
        for line in self.process.stderr:
            if "connected to" in line:
                self.connected.set()
            else:
                self.errors.append(line.rstrip())

    def cpu_s(self) -> float:
        return cpu_seconds(self.process.pid, group=True)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        time.sleep(0.2)  # the summary line


@dataclass(frozen=True)
class Brokers:
    mqtt_host: str  # where devices publish (mosquitto; the MQTT plugin for the fleet setups)
    mqtt_port: int
    rabbit_mqtt_port: int
    amqp_url: str
    mosquitto_pid: int | None = None  # for the brokers' CPU: known when this module started them
    rabbitmq_pgid: int | None = None

    def cpu_s(self, setup: str) -> float:
        """The CPU seconds the setup's broker has used, or NaN when it was not started here."""
        if setup.startswith("mosquitto"):
            return cpu_seconds(self.mosquitto_pid) if self.mosquitto_pid else float("nan")
        return cpu_seconds(self.rabbitmq_pgid, group=True) if self.rabbitmq_pgid else float("nan")


def _workers(setup: str, brokers: Brokers, fleet: str, common: list[str]) -> list[Worker]:
    if setup.startswith("mosquitto"):
        processes = ["--processes", setup.removeprefix("mosquitto_p")] if "_p" in setup else []
        return [Worker(["mqtt", "--broker", f"mqtt://{brokers.mqtt_host}:{brokers.mqtt_port}", *processes,
                        *common])]  # fmt: skip
    n = int(setup.rsplit("_", 1)[1])
    return [Worker(["fleet", "--amqp", brokers.amqp_url, "--partitions", str(PARTITIONS), "--worker",
                    f"{k}/{n}", "--fleet-name", fleet, *common]) for k in range(n)]  # fmt: skip


def _drop_fleet(amqp_url: str, fleet: str) -> None:
    """Delete a run's topology: an exchange left bound to amq.topic would copy every later run's traffic."""
    import pika

    from streamer.sources.fleet import parse_amqp

    connection = pika.BlockingConnection(parse_amqp(amqp_url).parameters("harstream bench cleanup"))
    channel = connection.channel()
    channel.exchange_delete(fleet)
    for p in range(PARTITIONS):
        channel.queue_delete(f"{fleet}.{p}")
    connection.close()


def run_setup(setup: str, brokers: Brokers, checkpoint: Path, devices: int, seconds: float, hop: int = 32,
              backend: str = "onnx", per_message: int = 25) -> dict:  # fmt: skip
    """One setup (``mosquitto``, ``rabbitmq_1``, ``rabbitmq_2``) at one fleet size, measured."""
    from model.data.recordings import load_hapt
    from model.net.checkpoint_meta import read_meta

    window = read_meta(checkpoint).window
    rounds = max(1, round(seconds * RATE_HZ / per_message))
    fleet = f"bench.{uuid.uuid4().hex[:8]}"
    common = ["--checkpoint", str(checkpoint), "--hop", str(hop), "--backend", backend, "--threads", "1",
              "--headless", "--jsonl", "--max-devices", str(max(1000, devices))]  # fmt: skip
    workers = _workers(setup, brokers, fleet, common)
    context = multiprocessing.get_context("spawn")
    late, publisher_cpu = context.RawValue("d", 0.0), context.RawValue("d", float("nan"))
    try:
        for worker in workers:
            if not worker.connected.wait(60):
                raise RuntimeError(f"bench: {setup} did not connect: {' '.join(worker.errors[-3:])}")
        time.sleep(SETTLE_S if len(workers) > 1 or "_p" in setup else 0.5)
        cpu0 = [w.cpu_s() for w in workers]
        broker0 = brokers.cpu_s(setup)
        values = load_hapt((2,))[0].values  # HAPT_CHANNELS, as the publisher encodes them
        t0 = time.time() + 0.5
        port = brokers.mqtt_port if setup.startswith("mosquitto") else brokers.rabbit_mqtt_port
        publisher = context.Process(target=_publish, daemon=True, args=(
            brokers.mqtt_host, port, devices, rounds, per_message, t0, values, late,
            publisher_cpu))  # fmt: skip
        publisher.start()
        publisher.join(seconds + 120)
        expected = devices * max(0, (rounds * per_message - window) // hop + 1)
        wait_until(lambda: sum(len(w.predictions) for w in workers) >= expected, 10, step=0.1)
        wall = time.time() - t0
        cpu = [w.cpu_s() - c for w, c in zip(workers, cpu0, strict=True)]
        others = {"publisher": publisher_cpu.value, "broker": brokers.cpu_s(setup) - broker0}
    finally:
        for worker in workers:
            worker.stop()
        if setup.startswith("rabbitmq"):
            _drop_fleet(brokers.amqp_url, fleet)
    traffic_s = rounds * per_message / RATE_HZ
    figures = _figures(setup, workers, devices, expected, t0, per_message, traffic_s, wall, cpu, late.value)
    return figures | _cpu_figures(cpu, others, devices, traffic_s, wall)


def _cpu_figures(cpu: list[float], others: dict[str, float], devices: int, traffic_s: float,
                 wall: float) -> dict:  # fmt: skip
    """CPU per device and per second of traffic, the recognizers' (all workers together) beside the
    publisher's and the broker's, and the share of the machine each took over the run: what a
    deployment is sized by (one core is 1,000 ms per second)."""
    per_device_s = devices * traffic_s
    cores = os.cpu_count() or 1

    def ms(seconds: float) -> float | None:
        return None if np.isnan(seconds) else round(1000 * seconds / per_device_s, 3)

    def share(seconds: float) -> float | None:
        return None if np.isnan(seconds) else round(100 * seconds / max(wall, 1e-9) / cores, 1)

    return {
        "recognizer_cpu_ms_per_device_s": ms(sum(cpu)),
        "publisher_cpu_ms_per_device_s": ms(others["publisher"]),
        "broker_cpu_ms_per_device_s": ms(others["broker"]),
        "machine_percent": {"recognizers": share(sum(cpu)), "publisher": share(others["publisher"]),
                            "broker": share(others["broker"])},
    }


def _figures(setup: str, workers: list[Worker], devices: int, expected: int, t0: float, per_message: int,
             traffic_s: float, wall: float, cpu: list[float], late: float) -> dict:  # fmt: skip
    latencies, read = [], []
    for worker in workers:
        for read_at, p in worker.predictions:
            read.append(read_at)
            start = t0 + phase(int(p["device"].removeprefix("bench-")), devices, per_message)
            last = round((p["t"] - start) * RATE_HZ)  # the window's last sample
            sent = start + (last // per_message + 1) * per_message / RATE_HZ  # its message was due then
            latencies.append(1000 * (read_at - sent))
    windows = len(latencies)
    dropped = sum(w.summary.get("dropped", 0) for w in workers)
    p50, p99 = (float(np.percentile(latencies, q)) if latencies else float("inf") for q in (50, 99))
    samples = sum(w.summary.get("samples", 0) for w in workers)
    span = max(read) - min(read) if len(read) > 1 else float("inf")  # first prediction to last
    return {
        "setup": setup,
        "workers": len(workers),
        "devices": devices,
        "windows": windows,
        "windows_expected": expected,
        "windows_per_s": round(max(0, windows - 1) / span, 1),  # as they came, the first wait left out
        "samples_per_s": round(samples / traffic_s, 1),  # taken in, over the seconds the devices sent
        "p50_ms": round(p50, 1),
        "p99_ms": round(p99, 1),
        "dropped": dropped,
        "worker_cpu_percent": [round(100 * c / max(wall, 1e-9), 1) for c in cpu],
        "publisher_late_s": round(late, 3),
        "held": windows >= expected and dropped == 0 and p99 <= HELD_P99_MS,
    }


def fleet_figures(checkpoint: Path, sizes: tuple[int, ...], seconds: float, backend: str = "onnx",
                  setups: tuple[str, ...] = SETUPS, brokers: Brokers | None = None,
                  progress: Callable[[str], None] = quiet) -> dict:  # fmt: skip
    """Every setup at growing fleet sizes until one does not hold (see the module's notes); starts
    its own mosquitto and RabbitMQ unless ``brokers`` are given. Per setup: the largest fleet that
    held, its windows/s and p99, and every run."""
    from streamer.core.backends import make_backend

    make_backend(backend, checkpoint, 1)  # made once here (an ONNX export), not by every worker at once
    if brokers is None:
        return _with_own_brokers(checkpoint, sizes, seconds, backend, setups, progress)
    out: dict = {}
    for setup in setups:
        runs, best = [], None
        for devices in sizes:
            progress(f"fleet: {setup}, {devices} devices for {seconds:g} s")
            run = run_setup(setup, brokers, checkpoint, devices, seconds, backend=backend)
            runs.append(run)
            if not run["held"]:
                break
            best = run
        kept = ("windows_per_s", "p99_ms", "recognizer_cpu_ms_per_device_s")
        out[setup] = {"largest_held": best["devices"] if best else 0,
                      **{key: best[key] if best else None for key in kept}, "runs": runs}  # fmt: skip
    return out


def _with_own_brokers(checkpoint: Path, sizes: tuple[int, ...], seconds: float, backend: str,
                      setups: tuple[str, ...], progress: Callable[[str], None]) -> dict:  # fmt: skip
    from streamer.tools.private_mosquitto import Mosquitto
    from streamer.tools.rabbitmq import RabbitMQ

    rabbit_needed = any(setup.startswith("rabbitmq") for setup in setups)
    progress("fleet: starting a private mosquitto" + (" and RabbitMQ (about 15 s)" if rabbit_needed else ""))
    with tempfile.TemporaryDirectory(prefix="harstream-bench-") as folder, contextlib.ExitStack() as stack:
        (Path(folder) / "mosquitto").mkdir()
        (Path(folder) / "rabbitmq").mkdir()
        mosquitto = stack.enter_context(Mosquitto(Path(folder) / "mosquitto",
                                                  extra=("max_queued_messages 100000",)))  # fmt: skip
        brokers = Brokers("127.0.0.1", mosquitto.port, 0, "", mosquitto.process.pid)
        if rabbit_needed:
            rabbit = stack.enter_context(RabbitMQ(Path(folder) / "rabbitmq"))
            brokers = Brokers("127.0.0.1", mosquitto.port, rabbit.mqtt_port, rabbit.amqp_url,
                              mosquitto.process.pid, rabbit.process.pid)  # fmt: skip
        return fleet_figures(checkpoint, sizes, seconds, backend, setups, brokers, progress)


def fleet_table(result: dict):
    """``fleet_figures``' runs as a rich table, one row per setup and size."""
    from rich.table import Table

    table = Table("setup", "devices", "windows/s", "p50 ms", "p99 ms", "dropped", "held",
                  "recognizer CPU ms per device-s", "publisher", "broker",
                  title="harstream bench --fleet (message due -> prediction)")  # fmt: skip

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    for setup, figures in result.items():
        for run in figures["runs"]:
            held = "yes" if run["held"] else "no"
            table.add_row(setup, str(run["devices"]), f"{run['windows_per_s']:,.0f}", f"{run['p50_ms']:.0f}",
                          f"{run['p99_ms']:.0f}", str(run["dropped"]), held,
                          ms(run["recognizer_cpu_ms_per_device_s"]), ms(run["publisher_cpu_ms_per_device_s"]),
                          ms(run["broker_cpu_ms_per_device_s"]))  # fmt: skip
    return table


def main() -> None:
    from model.net.checkpoint_meta import DEFAULT_CHECKPOINT
    from streamer.options import OneLineParser, number

    parser = OneLineParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--sizes", default="100,200,300,400,500,600,800", help="fleet sizes, in devices")
    parser.add_argument("--seconds", type=number(1, 3600), default=30.0)
    parser.add_argument("--setups", default=",".join(SETUPS), help="which setups, of " + ", ".join(SETUPS))
    args = parser.parse_args()
    sizes = tuple(int(s) for s in args.sizes.split(","))
    setups = tuple(args.setups.split(","))
    if not set(setups) <= set(SETUPS):
        parser.error(f"--setups: one or more of {', '.join(SETUPS)}")
    result = fleet_figures(args.checkpoint, sizes, args.seconds, setups=setups, progress=print)
    print(dumps(result), flush=True)


if __name__ == "__main__":
    main()
