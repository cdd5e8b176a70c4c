"""``harstream mqtt --processes N``: one machine's cores share a broker's traffic, each device served
by exactly one recognizer process, the broker's traffic received once.

The parent holds the one MQTT connection; its :class:`~streamer.sources.dispatch.Router` puts each
message in the outbox of the process that owns the device, and a sender thread per process sends
its outbox as one frame every 20 ms (:data:`SEND_EVERY_S`) over a duplex pipe (streamer/sources/dispatch.py:
the frames, bytes of our own format). Each child (a ``spawn`` process, :func:`child_main`) runs a
normal live run (streamer/live.py ``assemble``) on a
:class:`~streamer.sources.dispatch.DispatchedSource`, headless, and sends back over the same pipe
its predictions as JSON lines (with ``--jsonl``), its summary every second, and its final summary.
The parent writes the lines to stdout, the progress line otherwise, and at the end ONE summary that
merges the children's (:func:`merge_summaries`) with its own tallies.

A child that dies is one line and a counter; its devices' messages are counted as dropped
(``recognizer process died``) and the others keep flowing. SIGTERM or Ctrl-C on the parent stops
the children cleanly: the parent stops receiving, sends what is queued and then STOP; each child
drains, closes its sinks and sends its summary; stragglers are terminated after a grace period.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection

from rich.console import Console

from model.strict_json import dumps
from streamer.core.mqtt_connection import MqttConnection, MqttOptions
from streamer.errors import CliError
from streamer.live import PROGRESS_S, LiveOptions, LiveRun, assemble, open_checkpoint, progress_line
from streamer.sinks.announcer import Announcer
from streamer.sinks.device_health import HealthPublisher
from streamer.sinks.episodes import EpisodeSink, Event
from streamer.sinks.json_lines import json_line
from streamer.sources.dispatch import (
    FAILED,
    LINES,
    PROCESS_DIED,
    PROGRESS,
    READY,
    STOP,
    SUMMARY,
    DispatchedSource,
    Router,
    died_counts,
    pack_messages,
)
from streamer.ui.dashboard import summary_table

log = logging.getLogger(__name__)

MAX_PROCESSES = 64
SEND_EVERY_S = 0.02  # how often a sender thread packs its process's outbox into a frame
REPORT_EVERY_S = 0.05  # how often a child sends its predictions' lines
SUMMARY_EVERY_S = 1.0  # ... and its summary so far
START_TIMEOUT_S = 120.0  # for a child to load its model (torch's import on a busy machine included)
STOP_GRACE_S = 15.0  # for the children to drain and say their summaries, then they are terminated


@dataclass(frozen=True)
class ChildPlan:
    """What a recognizer process is told at its start (pickled by ``spawn``: our own settings, never
    data from the network)."""

    index: int
    count: int
    options: LiveOptions  # headless, no --jsonl of its own: its lines go to the parent
    lines: bool  # send predictions' JSON lines (the parent's --jsonl)
    events: bool  # ... and episode events (--events)
    publish: MqttOptions | None  # its own connection to publish on (--publish, --ha-discovery)
    discovery: bool
    connect_timeout: float
    debug: bool


# -- the child -------------------------------------------------------------------------------------
class Reporter:
    """A child's one sender on its pipe: its lines every :data:`REPORT_EVERY_S`, its summary every
    :data:`SUMMARY_EVERY_S` (from a thread of its own: the pipeline's loop yields only predictions)."""

    def __init__(self, connection: Connection, run: LiveRun) -> None:
        self.connection, self.run = connection, run
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="reporter", daemon=True)

    def add(self, record: dict) -> None:
        line = dumps(record)
        with self._lock:
            self._lines.append(line)

    def start(self) -> Reporter:
        self._thread.start()
        return self

    def flush(self) -> None:
        with self._lock:
            lines, self._lines = self._lines, []
        if lines:
            self.connection.send_bytes(LINES + ("\n".join(lines) + "\n").encode("utf-8"))

    def _loop(self) -> None:
        next_summary = time.monotonic() + SUMMARY_EVERY_S
        try:
            while not self._stop.wait(REPORT_EVERY_S):
                self.flush()
                if time.monotonic() >= next_summary:
                    next_summary = time.monotonic() + SUMMARY_EVERY_S
                    try:
                        summary = self.run.pipeline.summary()
                    except RuntimeError:  # a device added while it was read (another thread): next time
                        continue
                    self.connection.send_bytes(PROGRESS + dumps(summary).encode("utf-8"))
        except OSError:  # the parent is gone: the source sees it too and ends the run
            pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.flush()


class ForwardedEvents(EpisodeSink):
    """``--events`` in a child: each episode's start and end as a line to the parent, as
    streamer/sinks/json_lines.py's EventLines writes it (never to the child's own stdout, where a
    line could land inside one of the parent's)."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter

    def event(self, event: Event) -> None:
        self.reporter.add({"device": event.device, **event.to_json()})


def publisher(plan: ChildPlan, run: LiveRun) -> MqttConnection | None:
    """The child's own connection for ``--publish``/``--ha-discovery`` (it subscribes to nothing),
    with the announcer and the health publisher on it, as ``harstream mqtt`` has on its one."""
    if plan.publish is None:
        return None
    connection = MqttConnection(plan.publish)
    connection.start()
    if connection.wait_settled(plan.connect_timeout) and connection.fatal:
        raise CliError(connection.fatal)
    run.episodes.sinks.append(Announcer(connection, discovery=plan.discovery))
    run.pipeline.sinks.append(HealthPublisher(connection, run.pipeline))
    return connection


def child_main(connection: Connection, plan: ChildPlan) -> int:
    """A recognizer process: a live run on what its parent sends, until STOP or the parent is gone."""
    # Ctrl-C reaches the whole process group and a supervisor may SIGTERM every process: the parent
    # alone decides, and stops its children with STOP, so that they drain and say their summaries.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.DEBUG if plan.debug else logging.WARNING,
                        format=f"harstream process {plan.index}: %(message)s")  # fmt: skip
    try:
        checkpoint = open_checkpoint(plan.options.checkpoint)
        source = DispatchedSource(connection, checkpoint.input_channels, plan.options.max_devices,
                                  name=f"process {plan.index}")  # fmt: skip
        run = assemble(plan.options, checkpoint, [source])
        outlet = publisher(plan, run)
    except Exception as error:  # CliError, StoreError (one line), or what the model's loading raised
        connection.send_bytes(FAILED + (str(error) or type(error).__name__).encode("utf-8"))
        return 1
    reporter = Reporter(connection, run)
    if plan.lines and plan.events:
        run.episodes.sinks.append(ForwardedEvents(reporter))
    connection.send_bytes(READY)
    reporter.start()
    try:
        for prediction in run.pipeline.run():
            if plan.lines:
                reporter.add(prediction.to_json())
    finally:
        run.pipeline.stop()
        reporter.stop()
        summary = run.pipeline.summary() | run.finish()
        if outlet is not None:
            outlet.close()
        with contextlib.suppress(OSError):  # the parent is gone: nobody to tell
            connection.send_bytes(SUMMARY + dumps(summary).encode("utf-8"))
    return 0


# -- the parent ------------------------------------------------------------------------------------
class Child:
    """The parent's side of one recognizer process: the process, its pipe, its outbox (in the
    router), a sender thread and a reader thread."""

    def __init__(self, recognizers: Recognizers, plan: ChildPlan) -> None:
        self.recognizers = recognizers
        self.index = plan.index
        self.outbox = recognizers.router.outboxes[plan.index]
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no fork of paho's threads
        self.connection, theirs = context.Pipe(duplex=True)
        self.process = context.Process(target=child_main, args=(theirs, plan), name=f"harstream-{plan.index}")
        self.process.start()
        theirs.close()  # theirs alone now: its end closes when the child exits (EOF here)
        self.ready = threading.Event()
        self.failure: str | None = None
        self.latest: dict | None = None  # its summary so far
        self.final: dict | None = None
        self.died = False
        self.terminated = False  # by stop(), after its grace: said there, not again as a death
        self.stopping = threading.Event()
        self.reader = threading.Thread(target=self._read, name=f"reader-{self.index}", daemon=True)
        self.sender = threading.Thread(target=self._send, name=f"sender-{self.index}", daemon=True)
        self.reader.start()

    def _send(self) -> None:
        while True:
            stopping = self.stopping.wait(SEND_EVERY_S)
            messages = self.outbox.take()
            try:
                if messages:
                    self.connection.send_bytes(pack_messages(messages))
                if stopping:
                    self.connection.send_bytes(STOP)
                    return
            except OSError:  # it died: the reader says so
                for device, count in died_counts(messages).items():
                    self.recognizers.router.count(device, PROCESS_DIED, count)
                return

    def _read(self) -> None:
        while True:
            try:
                frame = self.connection.recv_bytes()
            except (EOFError, OSError):
                break
            kind, body = frame[:1], frame[1:]
            if kind == LINES:
                self.recognizers.write(body.decode("utf-8"))
            elif kind == PROGRESS:
                self.latest = json.loads(body)
            elif kind == SUMMARY:
                self.final = json.loads(body)
            elif kind == READY:
                self.ready.set()
            elif kind == FAILED:
                self.failure = body.decode("utf-8", "replace")
                self.ready.set()
        if self.final is None and self.failure is None:
            self._died()
        self.ready.set()

    def _died(self) -> None:
        self.died = True
        for device, count in died_counts(self.outbox.close()).items():
            self.recognizers.router.count(device, PROCESS_DIED, count)
        self.process.join(2)
        code = self.process.exitcode
        how = f"killed by {signal.Signals(-code).name}" if code and code < 0 else f"exit code {code}"
        if self.terminated:
            return
        print(f"harstream: recognizer process {self.index} (pid {self.process.pid}) died ({how}): its "
              f"devices' messages are dropped, counted as {PROCESS_DIED!r}", file=sys.stderr, flush=True)

    def summary(self) -> dict | None:
        return self.final if self.final is not None else self.latest


class Recognizers:
    """The parent of ``harstream mqtt --processes N``: :meth:`start` the children (each loads its
    model), then :meth:`serve` on a connection whose receiver is :attr:`router`'s ``on_message``."""

    def __init__(self, options: LiveOptions, mqtt: MqttOptions, count: int, *, publish: bool = False,
                 discovery: bool = False, connect_timeout: float = 10.0,
                 debug: bool = False) -> None:  # fmt: skip
        if not 1 <= count <= MAX_PROCESSES:
            raise CliError(f"--processes must be from 1 to {MAX_PROCESSES}, not {count}")
        self.options, self.mqtt, self.count = options, mqtt, count
        self.router = Router(mqtt, count, options.max_devices)
        own = replace(options, jsonl=False, events=False, headless=True)  # their lines come here
        outlet = None
        if publish or discovery:  # each child publishes on its own connection; the parent announces
            outlet = replace(mqtt, announce=False, persistent=False, shard=None, shared_group=None)
        self.plans = [
            ChildPlan(k, count, own, options.jsonl, options.events,
                      None if outlet is None else replace(outlet, client_id=f"{mqtt.client_id}-p{k}"),
                      discovery, connect_timeout, debug)
            for k in range(count)
        ]  # fmt: skip
        self.children: list[Child] = []
        self._out = threading.Lock()

    def write(self, text: str) -> None:
        """Lines on stdout from the readers' threads, whole, one writer at a time."""
        with self._out:
            sys.stdout.write(text)
            sys.stdout.flush()

    def start(self) -> None:
        """Start the children and wait for each to load its model; one that cannot is an error."""
        self.children = [Child(self, plan) for plan in self.plans]
        deadline = time.monotonic() + START_TIMEOUT_S
        for child in self.children:
            child.ready.wait(max(0.0, deadline - time.monotonic()))
            if child.failure or child.died or not child.ready.is_set():
                late = f"not ready within {START_TIMEOUT_S:g} s"
                why = child.failure or ("it died" if child.died else late)
                raise CliError(f"recognizer process {child.index} could not start: {why}")
        for child in self.children:
            child.sender.start()

    def serve(self, link: MqttConnection) -> int:
        """Until SIGTERM/Ctrl-C (a KeyboardInterrupt), the connection's failure for good, or every
        child's death; then stop the children and print the one summary. The exit code."""
        code, interrupted = 0, False
        next_report = time.monotonic() + PROGRESS_S
        try:
            while True:
                time.sleep(0.1)
                if link.fatal:
                    log.error("mqtt: %s", link.fatal)
                    code = 1
                    break
                if all(child.died for child in self.children):
                    print("harstream: every recognizer process died", file=sys.stderr, flush=True)
                    code = 1
                    break
                if not self.options.jsonl and time.monotonic() >= next_report:
                    next_report = time.monotonic() + PROGRESS_S
                    print(progress_line(self.summary(link)), file=sys.stderr, flush=True)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            link.close()  # nothing more comes in; what is queued still goes out
            self.stop()
        summary = self.summary(link) | {"interrupted": interrupted}
        if self.options.jsonl:
            with self._out:
                json_line({"summary": summary})
        else:
            Console().print(summary_table(summary))
        return code

    def stop(self) -> None:
        """Send what is queued, then STOP; wait for the summaries; terminate stragglers."""
        for child in self.children:
            child.stopping.set()
            if child.sender.ident is None:  # stopped before it served (Ctrl-C at start): STOP all the same
                child.sender.start()
        deadline = time.monotonic() + STOP_GRACE_S
        for child in self.children:
            child.process.join(max(0.1, deadline - time.monotonic()))
            if child.process.is_alive():
                print(f"harstream: recognizer process {child.index} did not stop within {STOP_GRACE_S:g} s: "
                      "terminated", file=sys.stderr, flush=True)  # fmt: skip
                child.terminated = True
                child.process.terminate()
                child.process.join(2)
            child.reader.join(2)

    def summary(self, link: MqttConnection) -> dict:
        return merge_summaries([child.summary() for child in self.children], self.router.drops.by_reason(),
                               died=sum(child.died for child in self.children),
                               own=self.router.summary() | link.summary())  # fmt: skip


def merge_summaries(children: list[dict | None], dropped_here: Counter, died: int = 0,
                    own: dict | None = None) -> dict:  # fmt: skip
    """One summary of the children's: counts summed, ``dropped_by_reason`` merged with what the
    parent dropped (``dropped_here``: invalid ids, shed outboxes, dead processes' messages), and
    ``processes``, each child's devices, windows and samples.

    Latency is the worst child's p50 and p99, not a percentile of all predictions (the children
    keep only their own recent latencies): a bound, and the one that matters for the slowest device.

    >>> merge_summaries([{"windows": 3, "devices": 1, "samples": 9, "latency_p99_ms": 5.0, "accuracy": 1.0,
    ...                   "judged": 3, "dropped_by_reason": {"x": 1}, "dropped": 1}, None],
    ...                 Counter({"invalid device id": 2}))["dropped_by_reason"]
    {'invalid device id': 2, 'x': 1}
    """
    merged: dict = {}
    dropped = Counter(dropped_here)
    correct = 0.0
    for summary in children:
        for key, value in (summary or {}).items():
            if key == "dropped_by_reason":
                dropped.update(value)
            elif key == "accuracy":
                correct += (value or 0.0) * (summary.get("judged") or 0)
            elif key.startswith("latency_") or key == "seconds":  # the worst child's
                if value is not None:
                    merged[key] = max(value, merged.get(key) or value)
                else:
                    merged.setdefault(key, None)
            elif isinstance(value, dict):  # tallies by reason (the store's): summed key by key
                merged[key] = dict(Counter(merged.get(key, {})) + Counter(value))
            elif isinstance(value, bool) or not isinstance(value, int | float):
                merged.setdefault(key, value)
            else:
                merged[key] = merged.get(key, 0) + value
    judged = merged.get("judged", 0)
    merged["accuracy"] = round(correct / judged, 6) if judged else None
    merged["dropped"] = sum(dropped.values())
    merged["dropped_by_reason"] = dict(dropped)
    merged["processes"] = [{k: (s or {}).get(k, 0) for k in ("devices", "windows", "samples")}
                           for s in children]  # fmt: skip
    merged["processes_died"] = died
    return merged | (own or {})
