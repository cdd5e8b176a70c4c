"""What the live path dropped, per device and reason: one ledger that every component reports into.

A source that cannot use a message (malformed, over a limit), the pipeline's queue when it sheds,
the scheduler when a sample fails a check or a device is refused, the decider when the model's
output is not finite: each calls :meth:`Drops.add` with ``(device, reason, count)``. So "what was
dropped for device D, by reason" is :meth:`Drops.of` and "in total" is :meth:`Drops.by_reason`,
read in one place instead of merged from several tallies.

>>> drops = Drops()
>>> drops.add("wrist", "malformed JSON")
>>> drops.add("wrist", "non-finite value", 3)
>>> drops.add("ankle", "non-finite value", 2)
>>> drops.of("wrist") == {"malformed JSON": 1, "non-finite value": 3}, drops.total()
(True, 6)
>>> drops.retire("wrist")  # a forgotten device: its counts stay in the totals, not under its name
>>> drops.of("wrist"), drops.by_reason() == {"malformed JSON": 1, "non-finite value": 5}
(Counter(), True)
"""

from __future__ import annotations

import logging
import threading
from collections import Counter

log = logging.getLogger(__name__)

RETIRED = "(forgotten devices)"  # the key of forgotten devices' counts, and of refused devices' samples
MAX_LOGGED = 1000  # (device, reason) pairs logged once each; a flood of ids then logs nothing more


class Drops:
    """Counts of dropped input: device -> reason -> count (samples, or messages where the reason
    says so). Safe to call from any thread: sources count from their own (paho's network thread,
    a serial reader), the pipeline from its loop. The first drop of each (device, reason) is logged
    once, as one line; the counters keep the tally."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, Counter] = {}
        self._logged: set[tuple[str, str]] = set()

    def add(self, device: str, reason: str, count: int = 1, *, quiet: bool = False) -> None:
        """Count ``count`` dropped items of ``device`` under ``reason``; ``quiet``: the caller
        says it in a line of its own (one line per overload, not one per device)."""
        with self._lock:
            self._counts.setdefault(device, Counter())[reason] += count
            first = not quiet and (device, reason) not in self._logged and len(self._logged) < MAX_LOGGED
            if first:
                self._logged.add((device, reason))
        if first:
            log.warning("%s: dropping input (%s)", device, reason)

    def counter(self, device: str) -> Counter:
        """The ledger's own, live counter of ``device`` (made empty if there is none): for a
        component that shows it beside its other tallies (the scheduler's DeviceCounters). Read
        it; count through :meth:`add`."""
        with self._lock:
            return self._counts.setdefault(device, Counter())

    def retire(self, device: str, into: str = RETIRED) -> None:
        """Fold a forgotten device's counts into ``into``, so a flood of ids that come and go
        cannot grow the ledger, and the totals keep every drop."""
        with self._lock:
            gone = self._counts.pop(device, None)
            if gone:
                self._counts.setdefault(into, Counter()).update(gone)

    def absorb(self, other: Drops) -> None:
        """Take over ``other``'s counts (a source that counted on its own before it was bound)."""
        if other is self:
            return
        with other._lock:
            taken, other._counts = other._counts, {}
        with self._lock:
            for device, reasons in taken.items():
                self._counts.setdefault(device, Counter()).update(reasons)

    def of(self, device: str) -> Counter:
        """What was dropped for ``device``, by reason (a copy)."""
        with self._lock:
            return Counter(self._counts.get(device, ()))

    def by_reason(self) -> Counter:
        """What was dropped for every device (forgotten ones included), by reason."""
        total: Counter = Counter()
        with self._lock:
            for reasons in self._counts.values():
                total.update(reasons)
        return total

    def total(self) -> int:
        return sum(self.by_reason().values())

    def rows(self) -> dict[tuple[str, str], int]:
        """Every count, keyed by (device, reason)."""
        with self._lock:
            return {(d, r): n for d, reasons in self._counts.items() for r, n in reasons.items()}
