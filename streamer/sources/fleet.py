"""``harstream fleet``: recognizers that share a fleet of wearables through RabbitMQ, in partitions,
taking over from each other.

Devices speak MQTT to RabbitMQ's MQTT plugin, which puts ``har/<device>/imu`` on ``amq.topic`` under
the routing key ``har.<device>.imu`` (MQTT's ``/`` and ``.`` swapped). Every worker declares the same
topology (idempotently, so any may start first):

    amq.topic ──har.*.imu──▶ NAME (x-consistent-hash on the routing key) ──▶ NAME.0 … NAME.{P-1}

The hash ring puts every message of a device in one partition queue, in order. Each queue has a
single active consumer (``x-single-active-consumer``): every worker attaches to every partition,
one consumes, and when it goes the broker hands the queue to another, with no one deciding by hand.

Spreading the partitions: worker K of N (``--worker K/N``) owns the partitions p with p % N == K (its
share). It attaches to its share first, at consumer priority 10, then to the rest at priority 0.
RabbitMQ 3.10 (measured here: tests/test_fleet.py) never moves a queue from its active consumer when
a higher-priority consumer attaches, but when the active consumer leaves, it activates the waiting
consumer of highest priority. So an owner that is attached always gets its share back when it
frees up; and a worker that holds a partition of another's share gives it back (it closes that
partition's channel and attaches again, at priority 0) once the owner is there. A worker shows it
is there, once attached everywhere, by an exclusive consumer on its presence queue
``NAME.worker.K``, which the others look up every second (and which a second worker K refuses).

Without ``--worker`` (the command's default), workers share the partitions evenly by themselves:
each is a *member* of the fleet's roster (streamer/sources/fleet_members.py: heartbeats on a
fanout exchange, the plan every member computes alike from the member list, the failure cases),
owns its part of the plan at priority 10, waits as the heir of others' partitions at 5 (so a dead
member's partitions go straight to whoever the next plan gives them), and moves partitions with
the same two steps as above: a raised priority at once (attaching again before it closes the old
channel, so a partition it held goes to its new consumer and no one else), a lowered one and a
handover once the roster has been still for a second.

At-least-once: a message is acknowledged only after the pipeline has taken it into its device's
stream (:attr:`Deferred.taken`), in batches (``multiple``). What is not acknowledged goes back to
the queue when the worker dies, loses the broker or gives the partition back, and the next consumer
starts those devices' streams afresh: their first prediction comes one window later. Messages of a
partition that this worker gave up, still waiting in its pipeline's queue, are skipped, not decoded
(the broker redelivers them to the new consumer), and the partition's devices are forgotten here
(:meth:`FleetSource.released`). Each channel's prefetch keeps all a worker holds below the
pipeline's queue, so this source never makes the pipeline shed.

Predictions and events go out through the MQTT plugin (``--mqtt-port``, in
:mod:`streamer.cli.fleet`), so they reach ``amq.topic`` as ``har.<device>.activity`` and
MQTT subscribers see ``har/<device>/activity``, retained, as ``harstream mqtt --publish`` publishes them.
"""

from __future__ import annotations

import contextlib
import logging
import re
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from functools import partial
from urllib.parse import quote, unquote

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from streamer.core.limits import FLEET_MAX_PARTITIONS, FLEET_UNACKED
from streamer.core.mqtt_connection import MqttConnection, TopicPattern, split_url
from streamer.core.shard import Shard
from streamer.core.source import Deferred, Emit
from streamer.core.wire import valid_device_id
from streamer.sources.fleet_members import (
    LISTEN_S,
    OWNER_PRIORITY,
    STANDBY_PRIORITY,
    Roster,
    new_member,
    should_move,
    wanted,
)
from streamer.sources.mqtt import INVALID_DEVICE, OTHER_DEVICES, WireSource

log = logging.getLogger(__name__)

PROBE_S = 1.0  # how often a worker looks up the owners of others' partitions (a member: its plan)
ACK_S = 0.02  # how long the connection's loop waits for traffic before acknowledging what was taken
BACKOFF_S = (1.0, 30.0)  # reconnection back-off, as the MQTT source's (paho's reconnect_delay_set)
DECLARING_LOOKS = 5  # seconds a worker waits while another, started with it, declares the partitions
PRESENCE_EXPIRES_MS = 10_000  # a presence queue nobody consumes is removed (a worker that died starting)
NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")
# The topic permission a fleet's broker needs (see keys_guarded): printable ASCII, so that the
# rule's length is bytes, and at most the 255 bytes an AMQP consumer can be handed.
KEY_RULE = "^[!-~]{1,255}$"
# connection refusals that another try cannot change: the worker says so and stops
REFUSED = {
    403: "not authorised: check the user and password in --amqp",
    530: "not allowed into the virtual host: check the vhost in --amqp and the user's permissions",
}


class FleetRefused(Exception):
    """Something retrying cannot mend (credentials, the topology, a second worker K): one line."""


@dataclass(frozen=True)
class AmqpBroker:
    host: str
    port: int
    user: str
    password: str
    vhost: str
    tls: bool = False

    @property
    def url(self) -> str:
        """The broker without the password, for lines people read."""
        return f"{'amqps' if self.tls else 'amqp'}://{self.host}:{self.port}/{quote(self.vhost, safe='')}"

    def parameters(self, name: str) -> pika.ConnectionParameters:
        tls = pika.SSLOptions(ssl.create_default_context(), self.host) if self.tls else None
        return pika.ConnectionParameters(
            self.host, self.port, self.vhost, pika.PlainCredentials(self.user, self.password),
            heartbeat=30, connection_attempts=1, socket_timeout=5, blocked_connection_timeout=60,
            ssl_options=tls, client_properties={"connection_name": name},
        )  # fmt: skip


def quiet_pika() -> None:
    """pika logs every closed channel (a look-up that found no queue) and every lost connection;
    the source's status line and its one line per outage say what matters (``--debug``: pika's own)."""
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        logging.getLogger("pika").setLevel(logging.CRITICAL)


def parse_amqp(url: str) -> AmqpBroker:
    """``amqp://USER:PASS@HOST[:PORT]/VHOST`` (port 5672; ``amqps://``: TLS, 5671), as RabbitMQ's URI
    spec has it: the vhost is the path, percent-encoded (``%2F`` is ``/``, the default).

    >>> parse_amqp("amqp://har:s%40fe@rabbit/fleet")
    AmqpBroker(host='rabbit', port=5672, user='har', password='s@fe', vhost='fleet', tls=False)
    >>> b = parse_amqp("amqps://[::1]:5000"); (b.vhost, b.user, b.port, b.url)
    ('/', 'guest', 5000, 'amqps://::1:5000/%2F')
    """
    parts, port = split_url(url, {"amqp": 5672, "amqps": 5671}, "--amqp", "amqp://USER:PASS@HOST[:PORT]/VHOST")
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    user, password = unquote(parts.username or "guest"), unquote(parts.password or "guest")
    return AmqpBroker(parts.hostname, port, user, password, vhost, parts.scheme == "amqps")


@dataclass(frozen=True)
class FleetOptions:
    broker: AmqpBroker
    partitions: int
    # K/N: owns partitions p % N == K; None: a member, sharing them evenly with the others (the command's
    # default; streamer/sources/fleet_members.py)
    worker: Shard | None = field(default_factory=lambda: Shard(0, 1))
    name: str = "har.fleet"  # the exchange; its partitions are NAME.0 ... and presence NAME.worker.K
    topic: TopicPattern = field(default_factory=lambda: TopicPattern.parse("har/+/imu"))
    member: str = field(default_factory=new_member)  # this process's id on the roster, without --worker

    def __post_init__(self) -> None:
        if not 1 <= self.partitions <= FLEET_MAX_PARTITIONS:
            raise ValueError(f"--partitions must be from 1 to {FLEET_MAX_PARTITIONS}, not {self.partitions}")
        if not NAME.fullmatch(self.name) or self.name.startswith("amq."):
            raise ValueError(f"bad fleet name {self.name!r}: letters, digits, '_', '.', '-', not amq.*")

    @property
    def binding(self) -> str:
        """``amq.topic``'s key for the devices' topic: ``har/+/imu`` is ``har.*.imu``."""
        return ".".join("*" if level == "+" else level.replace(".", "/") for level in self.topic.levels)

    @property
    def who(self) -> str:
        """This worker, for lines people read: ``worker 1/2`` or ``member 5f0c1e2a9b3d``."""
        return f"member {self.member}" if self.worker is None else f"worker {self.worker.text}"

    @property
    def tag(self) -> str:
        """The start of this worker's consumer tags (rabbitmqctl list_consumers shows them)."""
        return f"member-{self.member}" if self.worker is None else f"worker-{self.worker.index}"

    @property
    def prefetch(self) -> int:
        return max(1, FLEET_UNACKED // self.partitions)

    def queue(self, partition: int) -> str:
        return f"{self.name}.{partition}"

    def presence(self, worker: int) -> str:
        return f"{self.name}.worker.{worker}"

    def owner(self, partition: int) -> int:
        return partition % self.worker.count if self.worker is not None else -1

    @property
    def share(self) -> list[int]:
        """This worker's partitions under ``--worker`` (attached first, at the owner's priority); a
        member's come from the roster.

        >>> FleetOptions(parse_amqp("amqp://h"), 4, Shard(1, 2)).share
        [1, 3]
        """
        if self.worker is None:
            return []
        return [p for p in range(self.partitions) if self.owner(p) == self.worker.index]

    def device_of(self, routing_key: str) -> str | None:
        """The device a message's routing key names (the MQTT plugin swapped ``/`` and ``.``).

        >>> o = FleetOptions(parse_amqp("amqp://h"), 2)
        >>> o.device_of("har.wrist/left.imu"), o.device_of("har.a.b.imu"), o.binding
        ('wrist.left', None, 'har.*.imu')
        """
        return self.topic.device_of(routing_key.replace(".", "\0").replace("/", ".").replace("\0", "/"))


def declare(channel: BlockingChannel, options: FleetOptions) -> None:
    """The fleet's topology, idempotently; a broker that cannot hold it raises :class:`FleetRefused`."""
    name = options.name
    try:
        channel.exchange_declare(name, exchange_type="x-consistent-hash", durable=True)
    except pika.exceptions.ConnectionClosedByBroker as error:
        if error.reply_code == 503:  # COMMAND_INVALID: unknown exchange type
            raise FleetRefused("the broker has no x-consistent-hash exchange: rabbitmq-plugins enable "
                               "rabbitmq_consistent_hash_exchange") from None  # fmt: skip
        raise
    except pika.exceptions.ChannelClosedByBroker as error:
        raise FleetRefused(f"exchange {name!r} exists with other settings ({error.reply_text}): choose "
                           "another --fleet-name") from None  # fmt: skip
    channel.exchange_bind(destination=name, source="amq.topic", routing_key=options.binding)
    try:
        for p in range(options.partitions):
            queue = options.queue(p)
            channel.queue_declare(queue, durable=True, arguments={"x-single-active-consumer": True})
            channel.queue_bind(queue, name, routing_key="1")  # the partition's weight on the hash ring
    except pika.exceptions.ChannelClosedByBroker as error:
        raise FleetRefused(f"partition queue {queue!r} exists with other settings "
                           f"({error.reply_text})") from None  # fmt: skip


def exists(connection: BlockingConnection, queue: str) -> int | None:
    """A queue's consumer count, or None if there is no such queue (asked on a channel of its own,
    since the broker closes a channel that asks for a queue it does not have)."""
    channel = connection.channel()
    try:
        consumers = channel.queue_declare(queue, passive=True).method.consumer_count
    except pika.exceptions.ChannelClosedByBroker as error:
        if error.reply_code == 404:
            return None
        raise
    channel.close()
    return consumers


def innermost(error: BaseException) -> BaseException:
    """pika wraps a connection's failure in another (AMQPConnectionError(StreamLostError(...)))."""
    while error.args and isinstance(error.args[0], BaseException):
        error = error.args[0]
    return error


def why(error: BaseException) -> str:
    """One line for a connection's failure, without pika's nesting."""
    error = innermost(error)
    if isinstance(error, pika.exceptions.ConnectionClosed):
        if error.reply_code == 541:  # what an undeliverable routing key does (see keys_guarded)
            return f"({error.reply_code}) {error.reply_text}: a message the broker cannot deliver?"
        return f"({error.reply_code}) {error.reply_text}"
    if isinstance(error, OSError):
        return error.strerror or str(error)
    return str(error) or type(error).__name__


def refusal(error: BaseException) -> str | None:
    """Why a failed connection will fail again (credentials, vhost), or None."""
    if isinstance(error, pika.exceptions.ProbableAuthenticationError | pika.exceptions.AuthenticationError):
        return REFUSED[403]
    if isinstance(error, pika.exceptions.ProbableAccessDeniedError):
        return REFUSED[530]
    inner = innermost(error)
    if isinstance(inner, pika.exceptions.ConnectionClosedByBroker) and inner.reply_code in REFUSED:
        return REFUSED[inner.reply_code]
    return None


def preflight(options: FleetOptions) -> None:
    """Connect once, check this worker against what the broker holds, then declare the topology:
    raises :class:`FleetRefused` (for good) or a pika/OS error (the broker is away)."""
    quiet_pika()
    connection = None
    try:
        name = f"harstream fleet {options.who} (checking)"
        connection = BlockingConnection(options.broker.parameters(name))
        check(connection, options)
        declare(connection.channel(), options)
    except (pika.exceptions.AMQPConnectionError, OSError) as error:
        if refusal(error):
            raise FleetRefused(refusal(error)) from None
        raise
    finally:
        if connection is not None and connection.is_open:
            connection.close()


def check(connection: BlockingConnection, options: FleetOptions) -> None:
    """Before anything is declared: the broker guards the fleet against undeliverable routing keys,
    every worker splits the devices alike, and each index is taken once. A worker that declared
    first and checked after would re-split a running fleet (its extra partitions bound into the
    hash ring) even though it then refused to run. Fewer partitions than this worker's, and more
    a second later, are a worker started at the same moment declaring them: waited for."""
    if not keys_guarded(connection):
        raise FleetRefused(
            "the broker lets in routing keys no worker can receive (over 255 bytes: one such message "
            "stops every worker, again on every reconnect): rabbitmqctl set_topic_permissions -p "
            f"{options.broker.vhost} USER amq.topic '{KEY_RULE}' '.*' for every user that publishes"
        )
    held = partitions_held(connection, options)
    for _ in range(DECLARING_LOOKS):  # fewer, and growing: a worker started alike is declaring them now
        if not held or held >= options.partitions:
            break
        time.sleep(1.0)
        held, before = partitions_held(connection, options), held
        if held == before:
            break
    if held and held != options.partitions:
        raise FleetRefused(f"the broker holds {held} partitions of {options.name!r} and this worker has "
                           f"--partitions {options.partitions}: every worker needs the same "
                           "number")  # fmt: skip
    if options.worker is not None and exists(connection, options.presence(options.worker.index)):
        raise FleetRefused(f"worker {options.worker.text} is already attached to {options.name!r}: give each "
                           "worker its own --worker K/N")  # fmt: skip


def partitions_held(connection: BlockingConnection, options: FleetOptions) -> int:
    """How many partition queues of the fleet the broker holds (0: a new fleet), counted up from
    ``NAME.0`` to the first missing one (at most one look-up past the largest allowed count)."""
    held = 0
    while held <= FLEET_MAX_PARTITIONS and exists(connection, options.queue(held)) is not None:
        held += 1
    return held


def keys_guarded(connection: BlockingConnection) -> bool:
    """Whether the broker refuses this user a routing key outside :data:`KEY_RULE` on ``amq.topic``.

    AMQP 0-9-1 carries a routing key as a short string (at most 255 bytes), but the MQTT plugin
    turns any topic into a routing key: a message under a longer one is routed into a partition
    and then cannot be delivered, and RabbitMQ closes the consumer's connection (541) each time it
    tries. A topic permission (checked for MQTT and AMQP publishers alike) keeps such keys out
    before they are routed. The probe (a key with a space, which the rule refuses) names no
    device's topic, so on a broker without the rule it goes nowhere."""
    channel = connection.channel()
    channel.confirm_delivery()
    try:
        channel.basic_publish("amq.topic", "harstream.key check", b"")
    except pika.exceptions.ChannelClosedByBroker as error:
        return error.reply_code == 403 and "access to topic" in error.reply_text
    channel.close()
    return False


@dataclass
class Partition:
    """One partition queue as this worker sees it; changed by the connection's thread alone, except
    ``done`` (the pipeline's thread adds to it under :attr:`FleetSource._lock`)."""

    index: int
    owned: bool  # in this worker's share
    channel: BlockingChannel | None = None
    priority: int = STANDBY_PRIORITY  # the x-priority of the consumer on ``channel``
    generation: int = 0  # bumped whenever the channel goes: older messages are no longer ours
    active: bool = False  # the broker delivers to this worker (seen from a delivery)
    pending: deque[int] = field(default_factory=deque)  # delivery tags not acknowledged, in order
    done: set[int] = field(default_factory=set)  # of those, the ones the pipeline has taken
    devices: set[str] = field(default_factory=set)  # devices seen since the partition became active
    owner_seen: bool = False  # the owner was there at the last look-up (and was given the partition)
    owner_looks: int = 0  # look-ups that found the owner since this worker became active
    since: float = 0.0  # when this worker became active (time.monotonic())


class FleetSource(WireSource):
    """The fleet's partition queues, as one source (see :class:`Source` and the module's notes)."""

    def __init__(self, options: FleetOptions, channels: tuple[str, ...], max_devices: int = 10_000) -> None:
        super().__init__(channels, max_devices)
        quiet_pika()
        self.options = options
        self.name = f"fleet {options.broker.host}:{options.broker.port} {options.who}"
        self.status = "connecting"
        self.parts = [Partition(p, p in options.share) for p in range(options.partitions)]
        self.connection: BlockingConnection | None = None
        self.connected = threading.Event()
        self.roster: Roster | None = None  # a member's view of the others (without --worker)
        self._owners: list[str] = []  # a member's plan: each partition's owner
        self._settled = False  # whether the roster was settled at the last balance
        self._planned: tuple[int, list[int]] = (-1, [])  # the roster's version planned for, the plan
        self.outlet: MqttConnection | None = None  # publishes predictions (its tallies join ours)
        self.tallies = {"connects": 0, "broker_losses": 0, "partitions_taken": 0, "partitions_handed_back": 0,
                        "redelivered": 0}  # fmt: skip
        self._emit: Emit | None = None
        self._lock = threading.Lock()
        self._released: list[str] = []
        self._closing = threading.Event()
        self._finished = threading.Event()
        self._running = False
        self._cancelled = False  # the broker cancelled a consumer of ours (its queue was deleted)

    # -- the Source protocol ------------------------------------------------------------------
    def run(self, emit: Emit, stop: threading.Event) -> None:
        """Consume until ``stop`` (or a refusal for good: :attr:`fatal`), reconnecting with back-off."""
        self._emit, self._running = emit, True
        delay = BACKOFF_S[0]
        try:
            while not self._stopping(stop):
                try:
                    self._session(stop)
                except FleetRefused as error:
                    self._give_up(str(error))
                    return
                except (pika.exceptions.AMQPError, OSError) as error:
                    if self._stopping(stop):  # e.g. closing a connection the broker had already dropped
                        return
                    if refusal(error):
                        self._give_up(refusal(error))
                        return
                    if self.connected.is_set():  # one line per outage
                        self.tallies["broker_losses"] += 1
                        delay = BACKOFF_S[0]
                        log.warning("fleet: lost the broker %s (%s); reconnecting", self.options.broker.url,
                                    why(error))  # fmt: skip
                    self.status = f"connecting (retry in {delay:g} s): {why(error)}"
                finally:
                    self._let_go()
                deadline = time.monotonic() + delay
                while not self._stopping(stop) and time.monotonic() < deadline:
                    stop.wait(0.1)
                delay = min(BACKOFF_S[1], delay * 2)
        finally:
            self._finished.set()

    def close(self) -> None:
        """Stop consuming; the connection's thread closes it (pika's objects are that thread's)."""
        self._closing.set()
        if self._running:
            self._finished.wait(10)
        if self.outlet is not None:
            self.outlet.close()

    def released(self) -> list[str]:
        with self._lock:
            out, self._released = self._released, []
        return out

    def summary(self) -> dict:
        tallies = {f"fleet_{k}": v for k, v in self.tallies.items()}
        return tallies | (self.outlet.summary() if self.outlet is not None else {})

    # -- the connection (the source's thread) ---------------------------------------------------
    def _stopping(self, stop: threading.Event) -> bool:
        return stop.is_set() or self._closing.is_set() or self.fatal is not None

    def _give_up(self, why: str) -> None:
        self.fatal = f"{self.options.broker.url}: {why}"
        self.status = why
        log.error("fleet: %s", self.fatal)

    def _session(self, stop: threading.Event) -> None:
        options = self.options
        self.connection = connection = BlockingConnection(options.broker.parameters(
            f"harstream fleet {options.who}"))  # fmt: skip
        first = not self.tallies["connects"]
        if first:  # later, this worker's own presence may outlive a broken connection for a while
            check(connection, options)
        control = connection.channel()
        declare(control, options)
        control.close()
        self._cancelled = False
        if options.worker is None:
            self._join()
        else:
            for part in sorted(self.parts, key=lambda part: not part.owned):  # its share first
                self._attach(part)
            self._present(first)  # here: the others may now give this worker its share
        if not first:
            log.warning("fleet: reconnected to %s as %s", options.broker.url, options.who)
        self.tallies["connects"] += 1
        self.connected.set()
        self._show()
        next_look = time.monotonic() + PROBE_S
        while not self._stopping(stop):
            connection.process_data_events(time_limit=ACK_S)
            self._acknowledge()
            if self._cancelled:  # a partition queue was deleted: declare the topology again
                raise ConnectionError("the broker cancelled a partition's consumer (its queue was deleted)")
            look = time.monotonic() >= next_look
            if look:
                next_look = time.monotonic() + PROBE_S
            if self.roster is not None:
                self._keep_in_touch(look)
            elif look:
                self._look_for_owners()
            if look:
                self._show()
        self._acknowledge()
        if self.roster is not None:
            self.roster.leave()
        connection.close()  # what was not acknowledged goes back to its queue, for the next consumer
        self.connected.clear()
        self.status = "closed"

    def _present(self, first: bool) -> None:
        """``--worker K/N``: the exclusive consumer on ``NAME.worker.K`` that shows K is attached."""
        options, worker = self.options, self.options.worker
        presence = self.connection.channel()
        presence.queue_declare(options.presence(worker.index), auto_delete=True,
                               arguments={"x-expires": PRESENCE_EXPIRES_MS})  # fmt: skip
        try:
            presence.basic_consume(options.presence(worker.index), lambda *message: None, auto_ack=True,
                                   exclusive=True)  # fmt: skip
        except pika.exceptions.ChannelClosedByBroker:
            if first:
                raise FleetRefused(f"worker {worker.text} is already attached to {options.name!r}: give "
                                   "each worker its own --worker K/N") from None  # fmt: skip
            raise ConnectionError("this worker's presence from before is still on the broker") from None

    # -- a member: sharing the partitions by the roster (streamer/sources/fleet_members.py) --------
    def _join(self) -> None:
        """Listen to the roster until every member has been heard, attach by the plan (own partitions
        first), then say this member is there: the others then hand it its share."""
        self.roster = roster = Roster(self.options.name, self.options.member)
        self._planned = (-1, [])
        try:
            roster.open(self.connection)
        except pika.exceptions.ChannelClosedByBroker as error:
            if error.reply_code == 405:  # RESOURCE_LOCKED: our queue, on a connection not yet dropped
                raise ConnectionError("this member's roster queue from before is still there") from None
            raise
        deadline = time.monotonic() + LISTEN_S
        while time.monotonic() < deadline:
            self.connection.process_data_events(time_limit=0.1)
        wants = self._plan()
        for part in sorted(self.parts, key=lambda part: -wants[part.index]):
            self._attach(part, wants[part.index])
        roster.beat()
        log.warning("fleet: member %s of %r, with %d others: serving partitions %s first",
                    self.options.member, self.options.name, len(roster.seen) - 1,
                    " ".join(str(p.index) for p in self.parts if p.owned) or "none")  # fmt: skip

    def _plan(self) -> list[int]:
        """The roster's plan, as the priority this member wants on each partition (and ``owned``);
        computed again only when the roster changed."""
        version, wants = self._planned
        if version != self.roster.version:
            self._owners, wants = wanted(self.options.partitions, self.roster.members(), self.options.member)
            self._planned = (self.roster.version, wants)
            for part in self.parts:
                part.owned = self._owners[part.index] == self.options.member
        return wants

    def _keep_in_touch(self, look: bool) -> None:
        """Heartbeat, expire the silent, and follow the plan when the roster changed (a heartbeat
        heard while the connection processed events included) or every second."""
        roster = self.roster
        roster.beat()
        roster.expire()
        settled = roster.settled()
        if look or roster.version != self._planned[0] or settled != self._settled:  # settling: a look too
            self._settled = settled
            self._balance(look, settled)

    def _balance(self, look: bool, settled: bool) -> None:
        """Move toward the plan (:func:`should_move` says when), on a new channel at the new priority."""
        wants = self._plan()
        for part in self.parts:
            part.owner_looks += look and part.active and not part.owned
            want = wants[part.index]
            heard = self.roster.seen.get(self._owners[part.index], 0.0) > part.since
            if should_move(active=part.active, owned=part.owned, priority=part.priority, want=want,
                           settled=settled, looks=part.owner_looks, owner_heard=heard):  # fmt: skip
                self._reattach(part, want)

    def _reattach(self, part: Partition, priority: int) -> None:
        """Consume the partition at another priority: attach anew first, then close the old channel, so
        that if this member was its consumer, the broker hands it to the best waiting one, never to
        none. Its messages here go back to the queue; its devices are forgotten."""
        if part.active:
            self.tallies["partitions_handed_back"] += 1
            log.warning("fleet: partition %d handed over to member %s, its owner now", part.index,
                        self._owners[part.index])  # fmt: skip
        channel = part.channel
        self._forget_partition(part)
        self._attach(part, priority)
        if channel is not None and channel.is_open:
            channel.close()

    def _attach(self, part: Partition, priority: int | None = None) -> None:
        """Consume the partition on a channel of its own (one partition given back = one channel closed)."""
        channel = self.connection.channel()
        channel.basic_qos(prefetch_count=self.options.prefetch)
        if priority is None:
            priority = OWNER_PRIORITY if part.owned else STANDBY_PRIORITY
        tag = f"{self.options.tag}-p{part.index}-g{part.generation}"
        on_message = partial(self._on_message, part, part.generation)
        channel.basic_consume(self.options.queue(part.index), on_message, consumer_tag=tag,
                              arguments={"x-priority": priority})  # fmt: skip
        channel.add_on_cancel_callback(self._on_cancel)
        part.channel, part.priority = channel, priority

    def _on_cancel(self, frame) -> None:
        self._cancelled = True

    def _on_message(self, part: Partition, generation: int, channel: BlockingChannel,
                    method, properties, body: bytes) -> None:  # fmt: skip
        if generation != part.generation:  # on a channel closed since: the broker delivers it again
            return
        part.pending.append(method.delivery_tag)  # acknowledged in order, whatever becomes of it
        try:
            self._take(part, generation, method, body)
        except Exception as error:  # never into pika's loop: count it, acknowledge it, keep consuming
            log.debug("fleet: message on %s failed", method.routing_key, exc_info=True)
            self._count(OTHER_DEVICES, f"internal error ({type(error).__name__})")
            with self._lock:
                part.done.add(method.delivery_tag)

    def _take(self, part: Partition, generation: int, method, body: bytes) -> None:
        arrival = time.monotonic()
        tag = method.delivery_tag
        if not part.active:  # the broker made this worker the partition's consumer
            part.active, part.owner_looks, part.since = True, 0, time.monotonic()
            self.tallies["partitions_taken"] += 1
            whose = "" if part.owned else f" ({self._whose(part.index)} share, standing in)"
            log.warning("fleet: partition %d is served here now%s", part.index, whose)
        self.tallies["redelivered"] += bool(method.redelivered)
        device = self.options.device_of(method.routing_key)
        if device is None or not valid_device_id(device):  # checked before it names anything
            self._count(INVALID_DEVICE, "invalid device id")
            with self._lock:
                part.done.add(tag)
            return
        if device not in part.devices and sum(len(p.devices) for p in self.parts) < self.max_devices:
            part.devices.add(device)  # forgotten when the partition goes (beyond max_devices: when idle)
        decode = partial(self._decode_if_ours, part, generation, device, body, arrival)
        self._emit(Deferred(device, decode, taken=partial(self._taken, part, generation, tag)))

    def _whose(self, partition: int) -> str:
        if self.options.worker is not None:
            return f"worker {self.options.owner(partition)}'s"
        return f"member {self._owners[partition]}'s" if self._owners else "another's"

    def _decode_if_ours(self, part: Partition, generation: int, device: str, payload: bytes, arrival: float):
        if part.generation != generation:  # given back (or the connection went): redelivered elsewhere
            return None
        return self._decode(device, payload, arrival)

    def _taken(self, part: Partition, generation: int, tag: int) -> None:
        """The pipeline's thread: the message is in its device's stream (or refused, counted)."""
        with self._lock:
            if part.generation == generation:
                part.done.add(tag)

    def _acknowledge(self) -> None:
        """Acknowledge, per partition, every message up to the first one the pipeline has not taken."""
        for part in self.parts:
            last = 0
            with self._lock:
                while part.pending and part.pending[0] in part.done:
                    last = part.pending.popleft()
                    part.done.discard(last)
            if last and part.channel is not None:
                part.channel.basic_ack(last, multiple=True)

    def _look_for_owners(self) -> None:
        """Give each partition of another's share back to its owner once the owner is attached: once
        when the owner appears (this worker may be active without knowing it yet: no traffic), and
        again while this worker still serves it after two look-ups that found the owner (the owner
        came back between two look-ups). A dead owner's presence may outlive its partitions for a
        moment, hence two look-ups."""
        here: dict[int, bool] = {}
        for part in self.parts:
            if part.owned:
                continue
            owner = self.options.owner(part.index)
            if owner not in here:
                here[owner] = bool(exists(self.connection, self.options.presence(owner)))
            if not here[owner]:
                part.owner_seen, part.owner_looks = False, 0
                continue
            part.owner_looks += part.active
            if not part.owner_seen or part.owner_looks >= 2:
                part.owner_seen = True
                self._give_back(part)

    def _give_back(self, part: Partition) -> None:
        """Close the partition's channel (its unacknowledged messages go back to the queue, and the
        owner, waiting at a higher priority, becomes its consumer), then stand by on a new one."""
        if part.active:
            self.tallies["partitions_handed_back"] += 1
            log.warning("fleet: partition %d handed back to worker %d/%d, its owner", part.index,
                        self.options.owner(part.index), self.options.worker.count)  # fmt: skip
        channel = part.channel
        self._forget_partition(part)
        if channel is not None and channel.is_open:
            channel.close()
        self._attach(part)

    def _forget_partition(self, part: Partition) -> None:
        with self._lock:
            part.generation += 1
            part.pending.clear()
            part.done.clear()
            self._released.extend(part.devices)
        part.devices = set()
        part.active, part.owner_looks, part.channel = False, 0, None

    def _let_go(self) -> None:
        """The connection is gone (or closed): every partition went back to the broker."""
        for part in self.parts:
            self._forget_partition(part)
        connection, self.connection = self.connection, None
        if connection is not None and connection.is_open:
            with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                connection.close()
        self.connected.clear()

    def _show(self) -> None:
        """The dashboard's line: what this worker serves, holds in reserve, and what happened."""
        serving = " ".join(str(p.index) for p in self.parts if p.active) or "none yet"
        t = self.tallies
        out = f" · predictions out: {self.outlet.status}" if self.outlet is not None else ""
        if self.roster is not None:
            out = f" · {len(self.roster.seen)} members{out}"
        self.status = (f"serving partitions {serving} of {len(self.parts)} · taken {t['partitions_taken']}, "
                       f"handed back {t['partitions_handed_back']}, broker lost {t['broker_losses']}{out}")
