"""Who is in a fleet right now, and which partitions each member serves: the membership half of
``harstream fleet`` without ``--worker`` (streamer/sources/fleet.py moves the partitions; docs/fleet.md
has the same protocol for operators).

AMQP 0-9-1 cannot list a broker's queues or consumers, so the members tell each other. Every
member binds an exclusive, auto-delete queue ``NAME.member.<id>`` (``id``: 12 random hex digits,
for the process's life) to the fanout exchange ``NAME.roster`` and publishes its id there every
:data:`HEARTBEAT_S` (a message that lives :data:`EXPIRY_S`, so a member that stalled reads no
stale ones). A member is in this worker's :class:`Roster` while it has been heard within
:data:`EXPIRY_S`; a worker that stops says ``bye`` first. The times are this worker's own clock at
receipt: no clocks need to agree.

From the sorted member list alone, every member computes the same plan (:func:`assign`):
rendezvous hashing with bounded loads, so each member owns P // M or P // M + 1 of the P partitions
and a join or a leave moves few more than the ones it must. The plan also names each partition's
*heir* (:func:`heirs`): who would own it if its owner left. A member attaches to its own partitions
at consumer priority 10, to those it is heir of at 5, to the rest at 0; RabbitMQ never takes a
single-active-consumer queue from its consumer, and hands a freed queue to the waiting consumer of
highest priority. So when a member dies (its connection closes: SIGKILL included), each of its
partitions goes at once to its heir, which the plan makes its owner once the dead member's
heartbeats have expired; when a member joins, the others hand its partitions over by closing
their channel on it (after attaching again at the new priority) once the roster has been still
for :data:`SETTLE_S`, by when the new owner waits at priority 10.

What can go wrong, and what it costs. Never two consumers on one partition: that is the broker's
single-active-consumer, whatever the views say; a wrong view only costs extra handovers (each
restarts the partition's devices: one window each).
- Two members whose views differ for a moment (one heard a join first): priorities are raised at
  once but lowered, and partitions handed over, only after the roster has been still for
  :data:`SETTLE_S`, so a handover lands on the owner both views agree on.
- A member that stalls (a long pause, SIGSTOP): its heartbeats stop, the others drop it after
  :data:`EXPIRY_S` and wait for its partitions at priority 10, but the broker leaves them with it
  while its connection lives (AMQP heartbeats: about a minute), so its devices wait too. When it
  resumes it is heard again and the plan returns to what it was.
- A network partition between a member and the broker: the same, until the broker or the member
  closes the connection; then its partitions go to the waiting members at once, and the cut-off
  member, which forgot them when its connection failed, joins again when it reconnects.
- A worker started with ``--worker K/N`` is not a member: do not mix the two in one fleet (nothing
  breaks, but the shares overlap and are no longer even).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import time
import uuid
from collections.abc import Sequence

import pika
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0  # how often a member says it is there
EXPIRY_S = 3.0  # a member not heard for this long is gone (and its heartbeats expire on the broker)
SETTLE_S = 1.0  # the roster unchanged this long before a member lowers a priority or hands over
LISTEN_S = 1.5  # a joining member listens this long, to hear every member once, before it attaches
ROSTER_BACKLOG = 1000  # heartbeats a member's roster queue keeps (a stalled member's, the newest)
MEMBER = re.compile(r"[0-9a-f]{12}")
# x-priority of a partition's consumer: its owner's, its heir's, everyone else's (--worker K/N: 10 and 0)
OWNER_PRIORITY, HEIR_PRIORITY, STANDBY_PRIORITY = 10, 5, 0


def new_member() -> str:
    return uuid.uuid4().hex[:12]


@functools.lru_cache(maxsize=1 << 14)  # a member plans every second, and on every change
def score(member: str, partition: int) -> int:
    """The rendezvous weight of ``member`` for ``partition``: the same in every process (no salt)."""
    return int.from_bytes(hashlib.blake2b(f"{member}/{partition}".encode(), digest_size=8).digest(), "big")


def assign(partitions: int, members: Sequence[str]) -> list[str]:
    """Each partition's owner: in partition order, the member of highest :func:`score` that still has
    room, first up to P // M each, then the P % M partitions left over at most one more each.

    >>> owners = assign(12, ["b", "a", "c"])
    >>> sorted(owners.count(m) for m in "abc"), owners == assign(12, ["c", "a", "b"])
    ([4, 4, 4], True)
    >>> sorted(assign(7, ["a", "b", "c"]).count(m) for m in "abc")
    [2, 2, 3]
    """
    ranked = sorted(set(members))
    if not ranked:
        return []
    base, _ = divmod(partitions, len(ranked))
    load = dict.fromkeys(ranked, 0)
    owners: list[str | None] = [None] * partitions
    for room in (base, base + 1):
        for p in range(partitions):
            if owners[p] is None:
                owner = max((m for m in ranked if load[m] < room), key=lambda m: score(m, p), default=None)
                if owner is not None:
                    owners[p], load[owner] = owner, load[owner] + 1
    return owners  # type: ignore[return-value]  # every partition found room in the second round


def heirs(partitions: int, members: Sequence[str], owners: Sequence[str]) -> list[str | None]:
    """Who owns each partition once its owner has left (None for a lone member): the plan the
    others make then, computed now, so they can wait for it at the heir's priority.

    >>> owners = assign(6, ["a", "b"])
    >>> heirs(6, ["a", "b"], owners) == ["b" if o == "a" else "a" for o in owners], heirs(2, ["a"], "aa")
    (True, [None, None])
    """
    without = {m: assign(partitions, [x for x in members if x != m]) for m in set(members)}
    return [without[owner][p] if without[owner] else None for p, owner in enumerate(owners)]


def wanted(partitions: int, members: Sequence[str], me: str) -> tuple[list[str], list[int]]:
    """The plan: each partition's owner, and the priority ``me`` wants on each.

    >>> owners, wants = wanted(4, ["a", "b"], "a"); [w for o, w in zip(owners, wants) if o == "a"]
    [10, 10]
    >>> sorted(wants)
    [5, 5, 10, 10]
    """
    owners = assign(partitions, members)
    heir = heirs(partitions, members, owners)
    wants = [OWNER_PRIORITY if owner == me else HEIR_PRIORITY if heir[p] == me else STANDBY_PRIORITY
             for p, owner in enumerate(owners)]  # fmt: skip
    return owners, wants


def should_move(*, active: bool, owned: bool, priority: int, want: int, settled: bool, looks: int,
                owner_heard: bool = True) -> bool:  # fmt: skip
    """Whether a member attaches to a partition anew (at ``want``), closing its channel on it.

    ``active``: the broker delivers the partition here (seen from a delivery; with no traffic, a
    member may be its consumer without knowing, which the priorities below take care of). A
    partition served here is kept while owned, and handed over once the roster is settled, its
    owner has been heard since the partition came here (an owner that died, not yet expired,
    cannot take it: it came here because the owner's connection closed), and it has been seen
    here, not owned, at two looks (an owner whose view differs, which the broker keeps handing it
    back from, gets it at most every 2 s). Otherwise a raised priority is taken at once, a lowered
    one once the roster is settled: by then the new owner waits at 10.

    >>> should_move(active=False, owned=True, priority=0, want=10, settled=False, looks=0)
    True
    >>> should_move(active=False, owned=False, priority=10, want=0, settled=False, looks=0)
    False
    >>> should_move(active=True, owned=False, priority=10, want=0, settled=True, looks=2)
    True
    """
    if active:
        return not owned and settled and owner_heard and looks >= 2
    return priority != want and (want > priority or settled)


class Roster:
    """This member's view of the fleet, from the heartbeats on ``NAME.roster`` (see the module's notes);
    used by the connection's thread alone."""

    def __init__(self, fleet: str, member: str) -> None:
        self.exchange, self.member = f"{fleet}.roster", member
        self.queue = f"{fleet}.member.{member}"
        self.seen: dict[str, float] = {}
        self.changed = time.monotonic()  # when a member last joined or left this view
        self.version = 0  # bumped on every change
        self.channel: BlockingChannel | None = None
        self._next_beat = 0.0

    def open(self, connection: BlockingConnection) -> None:
        """Listen on the roster (a 405 here: this member's queue of a connection the broker has not
        yet dropped; the caller retries)."""
        self.seen = {self.member: time.monotonic()}
        self._changed()
        channel = self.channel = connection.channel()
        channel.exchange_declare(self.exchange, exchange_type="fanout", durable=True)
        channel.queue_declare(self.queue, exclusive=True, auto_delete=True,
                              arguments={"x-max-length": ROSTER_BACKLOG})  # fmt: skip
        channel.queue_bind(self.queue, self.exchange)
        channel.basic_consume(self.queue, self._on_message, auto_ack=True, exclusive=True)

    def beat(self, now: float | None = None) -> None:
        """Say this member is there, when a heartbeat is due."""
        now = time.monotonic() if now is None else now
        if now >= self._next_beat and self.channel is not None:
            self._next_beat = now + HEARTBEAT_S
            self._say("here")

    def leave(self) -> None:
        """Say goodbye, so that the others need not wait for the heartbeats to expire."""
        if self.channel is not None and self.channel.is_open:
            self._say("bye")

    def _say(self, kind: str) -> None:
        properties = pika.BasicProperties(type=kind, expiration=str(int(EXPIRY_S * 1000)))
        self.channel.basic_publish(self.exchange, "", self.member.encode(), properties)

    def _on_message(self, channel, method, properties, body: bytes) -> None:
        member = body.decode("ascii", "replace")
        if MEMBER.fullmatch(member) and member != self.member:  # anything else on the exchange: not ours
            self.heard(member, bye=properties.type == "bye")

    def heard(self, member: str, bye: bool = False, now: float | None = None) -> None:
        known = member in self.seen
        if bye:
            self.seen.pop(member, None)
        else:
            self.seen[member] = time.monotonic() if now is None else now
        if known == bye:  # a member joined, or one we knew left
            self._changed()
            log.warning("fleet: member %s %s (%d members)", member, "left" if bye else "is in the fleet",
                        len(self.seen))  # fmt: skip

    def expire(self, now: float | None = None) -> None:
        """Forget the members not heard for :data:`EXPIRY_S` (never this one)."""
        now = time.monotonic() if now is None else now
        self.seen[self.member] = now
        for member in [m for m, at in self.seen.items() if now - at > EXPIRY_S]:
            del self.seen[member]
            self._changed()
            log.warning("fleet: member %s not heard for %g s: gone (%d members)", member, EXPIRY_S,
                        len(self.seen))  # fmt: skip

    def members(self) -> list[str]:
        return sorted(self.seen)

    def settled(self, now: float | None = None) -> bool:
        """Whether the view has been still long enough for every member to share it."""
        return (time.monotonic() if now is None else now) - self.changed >= SETTLE_S

    def _changed(self) -> None:
        self.changed, self.version = time.monotonic(), self.version + 1
