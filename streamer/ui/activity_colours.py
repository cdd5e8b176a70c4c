"""One colour per activity, shared by the dashboard (rich's names) and ``history --plot`` (the same
colours in hex, for matplotlib), so an activity looks the same on the screen and in the picture.

Colours go by the activity's name, not by its place in a model's class list, because the plot only
sees the names a store holds: HAPT's six activities (and OPPORTUNITY's names for them) have fixed
colours; any other name takes the palette slot its name hashes to, or the next free one. Plain
Python only: the plot must not import rich.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

# xterm-256 colours: rich shows these names exactly on a 256-colour terminal; the hex is the same colour.
PALETTE: tuple[tuple[str, str], ...] = (
    ("green3", "#00d700"), ("dodger_blue1", "#0087ff"), ("medium_purple1", "#af87ff"),
    ("gold1", "#ffd700"), ("orange1", "#ffaf00"), ("deep_pink2", "#ff005f"), ("cyan2", "#00ffd7"),
    ("spring_green2", "#00ff5f"), ("light_salmon1", "#ffaf87"), ("plum2", "#d7afff"),
    ("khaki1", "#ffff87"), ("sky_blue1", "#87d7ff"), ("pale_green1", "#afff87"), ("hot_pink", "#ff5fd7"),
    ("steel_blue1", "#5fd7ff"), ("wheat1", "#ffffaf"), ("aquamarine1", "#87ffd7"), ("light_coral", "#ff8787"),
)  # fmt: skip
NULL = ("grey50", "#808080")  # OPPORTUNITY's "Null": nothing in particular
UNSURE = ("grey42", "#6c6c6c")  # the engine's "uncertain", and a window with no label
UNSURE_LABELS = ("uncertain",)  # streamer.core.engine.UNCERTAIN (not imported: the engine pulls in numpy)

# The shipped models' activities keep the colours the dashboard has always given them.
FIXED = {"WALKING": 0, "WALKING_UPSTAIRS": 1, "WALKING_DOWNSTAIRS": 2, "SITTING": 3, "STANDING": 4,
         "LAYING": 5, "Walk": 0, "Sit": 3, "Stand": 4, "Lie": 5}  # fmt: skip


def activity_colours(names: Iterable[str], hex_colours: bool = True) -> dict[str, str]:
    """Each name's colour: hex (``#00d700``, matplotlib) or rich's name (``green3``).

    >>> activity_colours(["SITTING", "uncertain", "Null"])
    {'SITTING': '#ffd700', 'uncertain': '#6c6c6c', 'Null': '#808080'}
    """
    pick = 1 if hex_colours else 0
    names = list(dict.fromkeys(names))
    taken = {FIXED[n] for n in names if n in FIXED}
    out: dict[str, str] = {}
    for name in sorted(names, key=lambda n: (n not in FIXED, n)):  # fixed first, the rest in a set order
        if name in UNSURE_LABELS:
            out[name] = UNSURE[pick]
        elif name.lower() == "null":
            out[name] = NULL[pick]
        elif name in FIXED:
            out[name] = PALETTE[FIXED[name]][pick]
        else:
            slot = zlib.crc32(name.encode()) % len(PALETTE)
            for step in range(len(PALETTE)):  # the next free slot; all taken: share the hashed one
                if (slot + step) % len(PALETTE) not in taken:
                    slot = (slot + step) % len(PALETTE)
                    break
            taken.add(slot)
            out[name] = PALETTE[slot][pick]
    return {name: out[name] for name in names}
