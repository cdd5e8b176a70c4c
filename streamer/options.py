"""Every numeric option's range, checked in one place: argparse ``type=`` factories that refuse NaN,
infinities and absurd values while the command line is parsed, in one line and with exit code 2.

    p.add_argument("--speed", type=number(0.01, 1000, zero=True))  # 0, or 0.01 .. 1000
    p.add_argument("--threads", type=count(0, MAX_THREADS))

Combinations of options (``--retain`` without ``--store``) are the commands' own checks (CliError,
exit 1); a value on its own is judged here. :class:`OneLineParser` makes argparse's own errors one
line too: its default prints the whole usage (ten lines for ``replay``) before the error.
"""

from __future__ import annotations

import argparse
import math
import re
import time
from collections.abc import Callable
from datetime import datetime
from typing import NoReturn

MAX_THREADS = 256  # intra-op threads: more is no use on any machine, and 10^6 allocated 877 MB first
MAX_PORT = 65_535


class OneLineParser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line (exit 2); subparsers made from it are too."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _span(lo: float, hi: float, zero: bool) -> str:
    return f"0, or from {lo:g} to {hi:g}" if zero else f"from {lo:g} to {hi:g}"


def number(lo: float, hi: float, *, zero: bool = False, unit: str = "") -> Callable[[str], float]:
    """A ``type=`` for a finite float in [lo, hi] (or exactly 0 with ``zero``, where 0 means
    something of its own: "as fast as possible", "never")."""
    unit = f" {unit}" if unit else ""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or not (lo <= value <= hi or (zero and value == 0)):
            raise argparse.ArgumentTypeError(f"must be {_span(lo, hi, zero)}{unit}, not {text!r}")
        return value

    parse.__name__ = "number"  # argparse names the type in "invalid <name> value" messages
    parse.range = (lo, hi, zero)  # type: ignore[attr-defined]  # for the tests that walk the parser
    return parse


def count(lo: int, hi: int, *, unit: str = "") -> Callable[[str], int]:
    """A ``type=`` for a whole number in [lo, hi]."""
    unit = f" {unit}" if unit else ""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be from {lo} to {hi}{unit}, not {text!r}")
        return value

    parse.__name__ = "count"
    parse.range = (lo, hi, False)  # type: ignore[attr-defined]
    return parse


def parse_duration(text: str) -> float:
    """Seconds in ``30d``, ``12h``, ``90m``, ``45s`` (or a bare number of seconds).

    >>> parse_duration("30d"), parse_duration("2h"), parse_duration("90m"), parse_duration("15")
    (2592000.0, 7200.0, 5400.0, 15.0)
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text or "")
    if match is None:
        raise ValueError(f"bad duration {text!r}: use a number with s, m, h, d or w (e.g. 30d, 2h)")
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[match.group(2)]
    return float(match.group(1)) * unit


def parse_when(text: str | None, now: float | None = None) -> float | None:
    """Seconds since the epoch for ``--since``/``--until``: an age (``2h``, ``30m``, ``7d``: that long
    ago), ``today`` (local midnight), or an ISO date or time (local time unless it says otherwise).

    >>> parse_when("2h", now=10_000.0), parse_when(None)
    (2800.0, None)
    >>> parse_when("1970-01-01T00:01:00+00:00")
    60.0
    """
    if text is None:
        return None
    now = time.time() if now is None else now
    if text == "today":
        return datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    if re.fullmatch(r"\s*\d+(\.\d+)?\s*[smhdw]\s*", text):
        return now - parse_duration(text)
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ValueError(f"bad time {text!r}: use an age (2h, 30m, 7d), 'today', or an ISO date or "
                         "time (2024-05-01T08:00)") from None  # fmt: skip


def duration(text: str) -> str:
    """A ``type=`` for an age such as ``30d`` or ``12h`` (:func:`parse_duration`),
    more than nothing: ``--retain 0`` would keep everything while seeming to prune."""
    try:
        seconds = parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if not 1 <= seconds <= 100 * 365 * 86400:
        raise argparse.ArgumentTypeError(f"must be from 1 s to 100 years (30d, 12h), not {text!r}")
    return text


def nonempty(what: str) -> Callable[[str], str]:
    """A ``type=`` for text that must name something (``--store ""`` names no store)."""

    def parse(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"names no {what}")
        return text

    parse.__name__ = "text"
    return parse


port = count(1, MAX_PORT)  # a TCP port
