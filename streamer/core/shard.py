"""Which recognizer process owns a device: a stable hash of its id, modulo the number of workers.

``harstream mqtt --shard K/N`` keeps the devices with ``shard_of(device, N) == K`` and ignores
the others' messages from their topic alone, before decoding. The function is the CRC-32 of the
device id's UTF-8 bytes (``zlib.crc32``, the same CRC as zip, gzip and PNG), modulo ``N``::

    shard = crc32(device_id.encode("utf-8")) % N

so any tool can compute it (``python -c 'import zlib; print(zlib.crc32(b"wrist-1") % 4)'``, or
``crc32`` in most languages' standard library). Python's own ``hash()`` would not do: it is salted
per process, so two workers would disagree about who owns a device.

>>> shard_of("wrist-1", 4), shard_of("wrist-1", 4) == shard_of("wrist-1", 4)
(2, True)
>>> shard = Shard.parse("1/2")
>>> shard, shard.owns("wrist-1"), shard.owns("band")
(Shard(index=1, count=2), False, True)
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass


def shard_of(device: str, count: int) -> int:
    """The shard (0 ≤ shard < ``count``) that owns ``device``: CRC-32 of its UTF-8 bytes mod ``count``."""
    return zlib.crc32(device.encode("utf-8")) % count


@dataclass(frozen=True)
class Shard:
    index: int  # K: this worker's shard
    count: int  # N: how many workers share the devices

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``K/N`` with 0 ≤ K < N, e.g. ``0/2``."""
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not match:
            raise ValueError(f"bad shard {text!r}: expected K/N, e.g. 0/2")
        index, count = int(match[1]), int(match[2])
        if not 0 <= index < count:
            raise ValueError(f"bad shard {text!r}: K must be at least 0 and less than N")
        return cls(index, count)

    @property
    def text(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, device: str) -> bool:
        return shard_of(device, self.count) == self.index
