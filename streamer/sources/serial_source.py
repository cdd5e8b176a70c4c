"""A wearable on a serial port: one sample per line, the Edge Impulse data-forwarder convention.

    acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z      <- optional header naming the columns
    0.012,-0.981,0.104,0.001,0.020,-0.003       <- numbers split by commas, tabs or spaces

A first column named ``t``, ``time`` or ``timestamp`` is the sample time in seconds; otherwise the
samples are timed at ``--hz``, or at the rate measured from their arrival (the lines that arrive
while it is measured are held and timed once it is known). Text that is not a header (a boot
banner, debug prints) is counted and skipped: see :class:`LineParser`. The reader frames
bytes, not lines (as pyserial's ``serial.threaded`` does): it reads ``in_waiting or 1`` bytes,
splits complete lines out of a buffer and caps their length, so binary noise, partial lines and a
device that never sends a newline cannot grow memory or stop the stream. A port that disappears
is reopened when it comes back.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import serial

from streamer.core.limits import WIRE_RATE_HZ
from streamer.core.source import SourceBase
from streamer.core.types import SampleBatch
from streamer.core.wire import ACC, GYRO, STANDARD_GRAVITY, WireError

log = logging.getLogger(__name__)

TIME_COLUMNS = ("t", "time", "timestamp")
SEPARATORS = re.compile(rb"[,\t ]+")
NAME = re.compile(rb"[A-Za-z_][A-Za-z0-9_]*")
RETRY_S = (1.0, 5.0)  # first and longest wait between attempts to reopen a port
RELEARN = 3  # lines in a row that fit the columns a learnt header replaced, and not it, to drop it
MAX_HELD = 10_000  # untimed lines held while their rate is measured; more are "rate not measured"
MEASURE_GAP_S = 1.0  # a silence that restarts measuring the rate of untimed lines


class LineFramer:
    """Complete lines out of a byte stream; a line over ``max_line`` bytes is dropped whole.

    >>> framer = LineFramer(max_line=8)
    >>> framer.feed(b"1,2\\r\\n3,")
    [b'1,2']
    >>> framer.feed(b"4\\n" + b"x" * 20), framer.feed(b"yy\\n5\\n")
    ([b'3,4'], [None, b'5'])
    """

    def __init__(self, max_line: int = 256) -> None:
        self.max_line = max_line
        self.buffer = bytearray()
        self.skipping = False  # inside an over-long line: drop bytes up to its newline

    def feed(self, data: bytes) -> list[bytes | None]:
        """The lines that ``data`` completes, CR stripped; None for each over-long line."""
        self.buffer += data
        lines: list[bytes | None] = []
        while (end := self.buffer.find(b"\n")) >= 0:
            line = bytes(self.buffer[:end]).rstrip(b"\r")
            del self.buffer[: end + 1]
            lines.append(None if self.skipping or len(line) > self.max_line else line)
            self.skipping = False
        if len(self.buffer) > self.max_line:
            self.buffer.clear()
            self.skipping = True
        return lines


class LineParser:
    """Lines to samples: which lines are headers, the time column, the clock of untimed samples.

    A device prints more than samples: a banner when it boots ("MPU6050 connection successful"),
    debug text, maybe a header. A line is a header only when its names are distinct and either all
    known (the acc/gyro channels, the time columns, the channels the model wants) or include every
    wanted channel; any other non-numeric line is "not numeric", counted and skipped, so one line of
    text cannot rename the columns and drop every later sample as "wrong column count".

    A header learnt from the device outlives a port reopen (a board that does not reset when the
    port opens does not print it again), but gives way to the columns it replaced (``--columns``, or
    acc+gyro) when RELEARN lines in a row fit those and not it: the board was reflashed, or the
    header belonged to another sketch.
    """

    def __init__(self, columns: tuple[str, ...] | None = None, hz: float | None = None,
                 acc_unit: str = "g", wanted: tuple[str, ...] = (),
                 dropped: Callable[[str, int], None] = lambda reason, count: None) -> None:  # fmt: skip
        if hz is not None and not WIRE_RATE_HZ[0] <= hz <= WIRE_RATE_HZ[1]:  # NaN fails this too
            raise ValueError(f"--hz must be from {WIRE_RATE_HZ[0]:g} to {WIRE_RATE_HZ[1]:g}, not {hz:g}")
        self.given = columns or None  # --columns
        self.header: tuple[str, ...] | None = None  # learnt from the device
        self.misfits = 0  # lines in a row that fit the given columns but not the learnt header
        self.wanted = tuple(wanted)
        self.known = frozenset((*ACC, *GYRO, *self.wanted))
        self.hz = hz
        self.acc_scale = 1.0 / STANDARD_GRAVITY if acc_unit == "m/s2" else 1.0
        self.dropped = dropped  # (reason, samples): the source's counter
        self.held: list[list[float]] = []
        self.restart(time.monotonic())

    def restart(self, now: float) -> None:
        """A (re)opened port: untimed samples are counted from ``now`` on the monotonic clock, so a
        reopened port continues after a gap instead of going back in time."""
        if self.held:
            self.dropped("rate not measured", len(self.held))
        self.t0 = now
        self.count = 0
        self.first_arrival: float | None = None
        self.last_arrival = now
        self.measured_hz: float | None = None
        self.held = []
        self.held_names: tuple[str, ...] = ()
        self.misfits = 0

    @property
    def fallback(self) -> tuple[str, ...]:
        return self.given or ACC + GYRO

    @property
    def names(self) -> tuple[str, ...]:
        return self.header or self.fallback

    @property
    def timed(self) -> bool:
        return is_timed(self.names)

    @property
    def channels(self) -> tuple[str, ...]:
        return self.names[1:] if self.timed else self.names

    def is_header(self, tokens: list[bytes]) -> tuple[str, ...] | None:
        """The column names ``tokens`` give, if they are a header; None if they are just text."""
        if len(tokens) < 2 or not all(NAME.fullmatch(t) for t in tokens):
            return None
        names = tuple(t.decode() for t in tokens)
        if len(set(names)) != len(names):
            return None
        if all(n in self.known or n.lower() in TIME_COLUMNS for n in names):
            return names
        return names if self.wanted and set(self.wanted) <= set(names) else None

    def parse(self, line: bytes) -> list[float] | None:
        """A sample's numbers (time first if timed), or None for a header or an empty line."""
        if any(b > 126 or (b < 32 and b != 9) for b in line):
            raise WireError("binary noise")
        tokens = [t for t in SEPARATORS.split(line.strip()) if t]
        if not tokens:
            return None
        try:
            row = [float(t) for t in tokens]
        except ValueError:
            header = self.is_header(tokens)
            if header is None:
                raise WireError("not numeric") from None
            self.header, self.misfits = header, 0
            return None
        if len(row) == len(self.names):
            self.misfits = 0
            return row
        if self.header is not None and len(row) == len(self.fallback):
            self.misfits += 1
            if self.misfits >= RELEARN:
                log.warning("serial: lines no longer fit the header %s; back to %s",
                            ",".join(self.header), ",".join(self.fallback))  # fmt: skip
                self.header, self.misfits = None, 0
                return row
        raise WireError("wrong column count")

    def batch(self, device: str, rows: list[list[float]], arrival: float, wanted: tuple[str, ...],
              names: tuple[str, ...] | None = None) -> SampleBatch | None:  # fmt: skip
        """Rows read together, under the column ``names`` they were read with (default: the
        current ones), as one batch of ``wanted`` channels; raises for a missing channel."""
        names = names or self.names
        timed = is_timed(names)
        channels = names[1:] if timed else names
        missing = [c for c in wanted if c not in channels]
        if missing:
            raise WireError(f"missing channel {missing[0]}")
        values = np.asarray(rows, dtype=np.float64)
        if self.held and names != self.held_names:  # a header came while the rate was measured
            self.dropped("rate not measured", len(self.held))
            self.held = []
        if timed:
            t, values = values[:, 0], values[:, 1:]
            rate = self.hz
        else:
            rate = self.hz or self._measure(arrival, len(rows))
            if rate is None:
                self._hold(rows, names)  # timed once the rate is known: the first second is not lost
                return None
            if self.held:
                values = np.concatenate([np.asarray(self.held, dtype=np.float64), values])
                # evenly spaced, the last sample at its arrival
                self.t0, self.count, self.held = arrival - (len(values) - 1) / rate, 0, []
            t = self.t0 + (self.count + np.arange(len(values))) / rate
            self.count += len(values)
        values = values[:, [channels.index(c) for c in wanted]]
        acc = [i for i, c in enumerate(wanted) if c.startswith("acc")]
        values[:, acc] *= self.acc_scale
        return SampleBatch(device, t, values, wanted, arrival, rate_hz=rate)

    def _hold(self, rows: list[list[float]], names: tuple[str, ...]) -> None:
        room = MAX_HELD - len(self.held)
        if len(rows) > room:
            self.dropped("rate not measured", len(rows) - room)
        self.held += rows[:room]
        self.held_names = names

    def _measure(self, arrival: float, n: int) -> float | None:
        """The rate of untimed lines from their arrivals: whole hertz, measured over at least a
        second of steady flow (a silence restarts the measurement; what came before it is dropped,
        as no rate spaces it from what follows)."""
        if self.measured_hz is not None:
            return self.measured_hz
        silent = arrival - self.last_arrival > MEASURE_GAP_S
        self.last_arrival = arrival
        if self.first_arrival is None or silent:
            if self.held:
                self.dropped("rate not measured", len(self.held))
                self.held = []
            self.first_arrival, self.measure_count = arrival, 0
            return None
        self.measure_count += n
        span = arrival - self.first_arrival
        if span >= 1.0 and self.measure_count >= 10:
            self.measured_hz = float(max(round(self.measure_count / span), 1))  # whole hertz: arrival jitters
            log.info("serial: measured %.0f Hz (set --hz to skip measuring)", self.measured_hz)
            return self.measured_hz
        return None


def is_timed(names: tuple[str, ...]) -> bool:
    return names[0].lower() in TIME_COLUMNS


def line_limit(columns: int) -> int:
    """Bytes a line of ``columns`` numbers may need: a float's repr is at most 24 characters."""
    return max(256, 26 * columns)


def device_name(port: str) -> str:
    """A device id from a port path: ``/dev/ttyUSB0`` -> ``ttyUSB0``."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(port).name or port)[:64]
    return name if name.strip(".") else "serial"


class SerialSource(SourceBase):
    """One device on one serial port; reopens the port when it comes back after a loss. What it
    cannot use (text, noise, lines that do not fit) is counted with :meth:`reject`."""

    live = True  # a port cannot be paused: the pipeline sheds (and counts) rather than block its reader

    def __init__(self, port: str, channels: tuple[str, ...], baud: int = 115_200, device: str | None = None,
                 columns: tuple[str, ...] | None = None, hz: float | None = None, acc_unit: str = "g",
                 max_line: int | None = None, batch_size: int = 64) -> None:  # fmt: skip
        super().__init__()
        self.port = port
        self.baud = baud
        self.device = device or device_name(port)
        self.channels = channels
        self.parser = LineParser(columns, hz, acc_unit, wanted=channels, dropped=self._count)
        # room for a time column, the wanted channels and a few more than the device may send
        self.framer = LineFramer(max_line or line_limit(len(columns or ()) + len(channels) + 8))
        self.batch_size = batch_size
        self.name = f"serial {port}"
        self.status = "opening"
        self.opened: serial.Serial | None = None  # a port opened before run(), e.g. to fail early

    def open(self) -> serial.Serial:
        self.opened = serial.serial_for_url(self.port, baudrate=self.baud, timeout=0.1)
        return self.opened

    def close(self) -> None:
        """Close a port opened early (to fail early) that :meth:`run` never took over; :meth:`run`
        closes its own when ``stop`` is set."""
        port, self.opened = self.opened, None
        if port is not None:
            port.close()

    def run(self, emit: Callable[[SampleBatch], None], stop: threading.Event) -> None:
        attempts = 0
        while not stop.is_set():
            try:
                port = self.opened or self.open()
            except (serial.SerialException, OSError) as error:
                attempts += 1
                self.status = f"waiting for {self.port} (retry {attempts}): {error}"
                stop.wait(min(RETRY_S[0] * attempts, RETRY_S[1]))
                continue
            self.opened, attempts = None, 0
            self.status = "open"
            self.parser.restart(time.monotonic())
            self.framer = LineFramer(self.framer.max_line)
            error = self._read(port, emit, stop)
            port.close()
            if error is not None:
                self.status = f"lost: {error}; reopening"
                log.warning("serial: %s lost (%s); reopening when it comes back", self.port, error)
                stop.wait(RETRY_S[0])
        self.status = "closed"

    def _read(self, port: serial.Serial, emit: Callable[[SampleBatch], None],
              stop: threading.Event) -> Exception | None:  # fmt: skip
        """Read until ``stop`` or an I/O error, which is returned (pyserial's connection_lost)."""
        while not stop.is_set():
            try:
                data = port.read(port.in_waiting or 1)
            except (serial.SerialException, OSError) as error:
                return error
            if not data:
                continue
            try:  # a handler error is ours, not the port's: count it, keep reading
                for batch in self.handle(data, time.monotonic()):
                    emit(batch)
            except Exception as error:
                log.debug("serial: handling input failed", exc_info=True)
                self._count(f"internal error ({type(error).__name__})")
        return None

    def handle(self, data: bytes, arrival: float) -> list[SampleBatch]:
        # rows grouped by the columns they were read with: a header between them (a rebooted
        # device) changes how many numbers a row holds and what they are
        groups: list[tuple[tuple[str, ...], list[list[float]]]] = []
        for line in self.framer.feed(data):
            if line is None:
                self._count("line too long")
                continue
            try:
                row = self.parser.parse(line)
            except WireError as error:
                self._count(error.reason)
                continue
            if row is None:
                continue
            if not groups or groups[-1][0] != self.parser.names:
                groups.append((self.parser.names, []))
            groups[-1][1].append(row)
        batches = []
        for names, rows in groups:
            for i in range(0, len(rows), self.batch_size):
                chunk = rows[i : i + self.batch_size]
                try:
                    batch = self.parser.batch(self.device, chunk, arrival, self.channels, names)
                except WireError as error:
                    self._count(error.reason, len(chunk))
                    continue
                if batch is not None:
                    batches.append(batch)
        return batches

    def _count(self, reason: str, count: int = 1) -> None:
        self.reject(self.device, reason, count)
