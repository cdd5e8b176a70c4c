"""A wearable on a serial port: one sample per line, the Edge Impulse data-forwarder convention.

    acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z      <- optional header naming the columns
    0.012,-0.981,0.104,0.001,0.020,-0.003       <- numbers split by commas, tabs or spaces

A first column named ``t``, ``time`` or ``timestamp`` is the sample time in seconds; otherwise the
samples are timed at ``--hz``, or at the rate measured from their arrival. The reader frames
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

from streamer.types import SampleBatch
from streamer.wire import ACC, GYRO, STANDARD_GRAVITY, WireError

log = logging.getLogger(__name__)

TIME_COLUMNS = ("t", "time", "timestamp")
SEPARATORS = re.compile(rb"[,\t ]+")
NAME = re.compile(rb"[A-Za-z_][A-Za-z0-9_]*")
RETRY_S = (1.0, 5.0)  # first and longest wait between attempts to reopen a port


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
    """Lines to samples: header detection, the time column, the clock of untimed samples."""

    def __init__(self, columns: tuple[str, ...] | None = None, hz: float | None = None,
                 acc_unit: str = "g") -> None:  # fmt: skip
        self.columns = columns
        self.hz = hz
        self.acc_scale = 1.0 / STANDARD_GRAVITY if acc_unit == "m/s2" else 1.0
        self.restart(time.monotonic())

    def restart(self, now: float) -> None:
        """A (re)opened port: untimed samples are counted from ``now`` on the monotonic clock, so a
        reopened port continues after a gap instead of going back in time."""
        self.t0 = now
        self.count = 0
        self.first_arrival: float | None = None
        self.measured_hz: float | None = None

    @property
    def names(self) -> tuple[str, ...]:
        if self.columns is not None:
            return self.columns
        return ACC + GYRO

    @property
    def timed(self) -> bool:
        return self.names[0].lower() in TIME_COLUMNS

    @property
    def channels(self) -> tuple[str, ...]:
        return self.names[1:] if self.timed else self.names

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
            if len(tokens) >= 2 and all(NAME.fullmatch(t) for t in tokens):
                self.columns = tuple(t.decode() for t in tokens)
                return None
            raise WireError("not numeric") from None
        if len(row) != len(self.names):
            raise WireError("wrong column count")
        return row

    def batch(self, device: str, rows: list[list[float]], arrival: float,
              wanted: tuple[str, ...]) -> SampleBatch | None:  # fmt: skip
        """Rows read together as one batch of ``wanted`` channels; raises for a missing channel."""
        values = np.asarray(rows, dtype=np.float64)
        names = self.channels
        missing = [c for c in wanted if c not in names]
        if missing:
            raise WireError(f"missing channel {missing[0]}")
        if self.timed:
            t, values = values[:, 0], values[:, 1:]
            rate = self.hz
        else:
            rate = self.hz or self._measure(arrival, len(rows))
            if rate is None:
                return None  # the first second of an unknown rate only measures it
            t = self.t0 + (self.count + np.arange(len(rows))) / rate
            self.count += len(rows)
        values = values[:, [names.index(c) for c in wanted]]
        acc = [i for i, c in enumerate(wanted) if c.startswith("acc")]
        values[:, acc] *= self.acc_scale
        return SampleBatch(device, t, values, wanted, arrival, rate_hz=rate)

    def _measure(self, arrival: float, n: int) -> float | None:
        if self.measured_hz is not None:
            return self.measured_hz
        if self.first_arrival is None:
            self.first_arrival, self.measure_count = arrival, 0
            return None
        self.measure_count += n
        span = arrival - self.first_arrival
        if span >= 1.0 and self.measure_count >= 10:
            self.measured_hz = float(round(self.measure_count / span))  # whole hertz: arrival jitters
            self.t0 = arrival
            log.info("serial: measured %.0f Hz (set --hz to skip measuring)", self.measured_hz)
        return None


def device_name(port: str) -> str:
    """A device id from a port path: ``/dev/ttyUSB0`` -> ``ttyUSB0``."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(port).name or port)[:64]
    return name if name.strip(".") else "serial"


class SerialSource:
    """One device on one serial port; reopens the port when it comes back after a loss."""

    def __init__(self, port: str, channels: tuple[str, ...], baud: int = 115_200, device: str | None = None,
                 columns: tuple[str, ...] | None = None, hz: float | None = None, acc_unit: str = "g",
                 max_line: int = 256, batch_size: int = 64) -> None:  # fmt: skip
        self.port = port
        self.baud = baud
        self.device = device or device_name(port)
        self.channels = channels
        self.parser = LineParser(columns, hz, acc_unit)
        self.framer = LineFramer(max_line)
        self.batch_size = batch_size
        self.name = f"serial {port}"
        self.status = "opening"
        self.reject: Callable[..., None] = lambda device, reason, count=1: None  # the pipeline's counter
        self.rejected: dict[str, int] = {}
        self.opened: serial.Serial | None = None  # a port opened before run(), e.g. to fail early

    def open(self) -> serial.Serial:
        self.opened = serial.serial_for_url(self.port, baudrate=self.baud, timeout=0.1)
        return self.opened

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
        rows: list[list[float]] = []
        for line in self.framer.feed(data):
            if line is None:
                self._count("line too long")
                continue
            try:
                row = self.parser.parse(line)
            except WireError as error:
                self._count(error.reason)
                continue
            if row is not None:
                rows.append(row)
        batches = []
        for i in range(0, len(rows), self.batch_size):
            try:
                batch = self.parser.batch(self.device, rows[i : i + self.batch_size], arrival, self.channels)
            except WireError as error:
                self._count(error.reason, len(rows[i : i + self.batch_size]))
                continue
            if batch is not None:
                batches.append(batch)
        return batches

    def _count(self, reason: str, count: int = 1) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + count
        self.reject(self.device, reason, count)
