"""What arrives from live devices, written as generic CSV recordings (one file per device).

The files are those :func:`model.data.recordings.read_csv_recording` reads: ``timestamp``, one column
per channel, ``label`` (the label in force for the device when the batch arrived, from ``labels``:
see :mod:`streamer.sources.labelling`; empty when none) and ``subject`` (the device). A file is
written as ``NAME.csv.part``, flushed at least every second, and renamed to ``NAME.csv`` when the
recorder closes, so a finished ``.csv`` is always a complete file.

Nothing recorded is ever truncated or overwritten. Files are created exclusively (mode ``"x"``) and
renamed without replacing (a hard link, then unlink). A ``.part`` left by a run that was killed is
recovered when the next recorder starts in the folder: renamed to a free ``NAME[-N].csv``, without
the torn line a kill mid-write leaves. A live recorder holds an advisory lock on each ``.part`` it
has open, so a second recorder in the same folder leaves that one alone and writes its own.

A flood of device ids cannot exhaust file descriptors: at most ``max_open`` files stay open (the
least recently written is closed, and reopened to append when its device sends again), and past
``max_devices`` devices new ones are counted and dropped. A write that fails (a full disk) is one
line per device, counted; the other devices keep going, and the device's file is reopened on its
next batch.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from streamer.core.limits import MAX_DEVICES
from streamer.core.types import SampleBatch
from streamer.core.wire import valid_device_id

log = logging.getLogger(__name__)

FLUSH_S = 1.0
MAX_OPEN = 64  # files open at once; a typical process may open 1024 in all
PART = ".csv.part"


def _lock(stream: Any) -> bool:
    """An exclusive advisory lock on an open file, without waiting; False if another holds it.
    A file system without locks counts as unlocked: recovery then relies on the run having ended."""
    try:
        fcntl.flock(stream.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return True


def drop_torn_tail(path: Path) -> tuple[bool, bool]:
    """Cut what follows the last newline (a line that a kill or a failed write left half-written).
    Returns whether the file holds more than one complete line (a header and a sample at least)
    and whether a torn tail was dropped. Reads the file from its end, not whole."""
    with open(path, "r+b") as stream:
        size = pos = stream.seek(0, os.SEEK_END)
        newlines: list[int] = []  # the last two, from the end
        while pos > 0 and len(newlines) < 2:
            start = max(0, pos - 65536)
            stream.seek(start)
            chunk = stream.read(pos - start)
            i = len(chunk)
            while len(newlines) < 2 and (i := chunk.rfind(b"\n", 0, i)) >= 0:
                newlines.append(start + i)
            pos = start
        end = newlines[0] + 1 if newlines else 0
        if end < size:
            stream.truncate(end)
    return len(newlines) >= 2, end < size


def publish(part: Path, stem: str) -> Path:
    """Give ``part`` the first free name of ``stem.csv``, ``stem-1.csv``, ... without ever
    replacing a file: a hard link fails on an existing name, where a rename would overwrite it."""
    n = 0
    while True:
        final = part.with_name(f"{stem}.csv" if n == 0 else f"{stem}-{n}.csv")
        n += 1
        try:
            os.link(part, final)
        except FileExistsError:
            continue
        except OSError as error:  # no hard links here (FAT, some network file systems)
            if error.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
            if final.exists():
                continue
            part.rename(final)
            return final
        part.unlink()
        return final


@dataclass
class OpenFile:
    stream: TextIO
    writer: Any  # csv.writer
    unflushed: int = 0  # samples written to the buffer since the last flush: lost if the flush fails


class CsvRecorder:
    def __init__(self, folder: Path, channels: tuple[str, ...], note: Callable[[str], None] = log.warning,
                 max_devices: int = MAX_DEVICES, max_open: int = MAX_OPEN,
                 labels: Callable[[str], str] | None = None) -> None:  # fmt: skip
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.channels = channels
        self.note = note  # one line for the person running the recorder
        self.max_devices = max_devices
        self.max_open = max(1, max_open)
        self.labels = labels  # device -> its label now ('' for none)
        self.labelled: dict[tuple[str, str], int] = {}  # (device, label) -> samples written
        self.parts: dict[str, Path] = {}  # device -> its .part, open or not
        self.files: OrderedDict[str, OpenFile] = OrderedDict()  # the open ones, least recently written first
        self.samples: dict[str, int] = {}
        self.dropped: dict[str, int] = {}  # reason -> samples not written
        self.failed: dict[str, int] = {}  # device -> failed writes
        self.last_flush = time.monotonic()
        self.first_sample_at: float | None = None  # time.monotonic() of the first sample written: a
        # guided session's clock starts there, not before any device is there to follow it
        self.lock = threading.Lock()  # sources write from their threads; close() comes from the main one
        self.closed = False
        self.recovered = self.recover()

    def recover(self) -> list[Path]:
        """Finish the ``.part`` files that earlier runs left behind (a crash, SIGKILL, power loss)."""
        done = []
        for part in sorted(self.folder.glob(f"*{PART}")):
            try:
                with open(part, "rb") as stream:
                    if not _lock(stream):
                        continue  # a live recorder's
                    samples, torn = drop_torn_tail(part)
                    stem = part.name[: -len(PART)]
                    if not samples:  # at most a header
                        part.unlink()
                        self.note(f"removed {part.name} from an earlier run: it held no samples")
                        continue
                    final = publish(part, stem)
            except OSError as error:
                self.note(f"could not recover {part.name} from an earlier run: {error}")
                continue
            cut = " (dropped a torn last line)" if torn else ""
            self.note(f"recovered {part.name} from an earlier run as {final.name}{cut}")
            done.append(final)
        return done

    def write(self, batch: SampleBatch) -> None:
        n = len(batch.timestamps)
        if not valid_device_id(batch.device):  # sources check too; this one names a file
            self._drop("bad device id", n)
            return
        try:
            index = [batch.channels.index(c) for c in self.channels]
        except ValueError:
            self._drop("missing channel", n)
            return
        label = self.labels(batch.device) if self.labels is not None else ""
        rows = [[repr(float(t)), *(repr(float(x)) for x in row), label, batch.device]
                for t, row in zip(batch.timestamps, batch.values[:, index], strict=True)]  # fmt: skip
        with self.lock:
            if self.closed:
                return
            if batch.device not in self.parts and len(self.parts) >= self.max_devices:
                if "device limit" not in self.dropped:
                    self.note(f"recording {self.max_devices} devices: samples of more are dropped, counted")
                self._drop("device limit", n)
                return
            try:
                file = self._open(batch.device)
                file.writer.writerows(rows)
            except OSError as error:
                self._failed(batch.device, error, n)
                return
            file.unflushed += n
            if self.first_sample_at is None:
                self.first_sample_at = time.monotonic()
            self.samples[batch.device] = self.samples.get(batch.device, 0) + n
            key = (batch.device, label)
            self.labelled[key] = self.labelled.get(key, 0) + n
        if time.monotonic() - self.last_flush >= FLUSH_S:
            self.flush()

    def _drop(self, reason: str, n: int) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n

    def _open(self, device: str) -> OpenFile:
        if device in self.files:
            self.files.move_to_end(device)
            return self.files[device]
        while len(self.files) >= self.max_open:
            self._close_file(next(iter(self.files)))
        part = self.parts.get(device)
        if part is None:
            stream, part = self._create(device)
        else:  # closed to bound open files, or after a failed write: append after its last whole line
            if part.exists():
                drop_torn_tail(part)
            stream = open(part, "a", newline="")  # noqa: SIM115 - stays open until evicted or closed
            _lock(stream)
        writer = csv.writer(stream)
        if stream.tell() == 0:  # new, or emptied behind our back: a recording starts with its header
            writer.writerow(["timestamp", *self.channels, "label", "subject"])
        self.parts[device] = part
        self.files[device] = OpenFile(stream, writer)
        return self.files[device]

    def _create(self, device: str) -> tuple[TextIO, Path]:
        """A new ``.part`` of a name no other file has: never opened over an existing one."""
        n = 0
        while True:
            part = self.folder / (f"{device}{PART}" if n == 0 else f"{device}-{n}{PART}")
            n += 1
            try:
                stream = open(part, "x", newline="")  # noqa: SIM115 - stays open until evicted or closed
            except FileExistsError:  # another recorder's live file
                continue
            _lock(stream)
            return stream, part

    def _close_file(self, device: str) -> None:
        try:
            self.files[device].stream.close()
        except OSError as error:
            self._failed(device, error)
        self.files.pop(device, None)

    def _failed(self, device: str, error: OSError, n: int = 0) -> None:
        """A write, flush or close that failed: one line per device, counted; the file is closed and
        reopened on the device's next batch, so recording resumes once the disk has room again."""
        if device not in self.failed:
            where = self.parts.get(device, self.folder / f"{device}{PART}")
            self.note(f"cannot write {where}: {error.strerror or error}; its samples are dropped and counted")
        self.failed[device] = self.failed.get(device, 0) + 1
        file = self.files.pop(device, None)
        self._drop("write error", n + (file.unflushed if file else 0))
        if file is not None:
            with contextlib.suppress(OSError):  # the same error again, already counted
                file.stream.close()

    def flush(self) -> None:
        with self.lock:
            for device, file in list(self.files.items()):
                try:
                    file.stream.flush()
                except OSError as error:
                    self._failed(device, error)
                    continue
                file.unflushed = 0
            self.last_flush = time.monotonic()

    def close(self) -> list[Path]:
        """Close every file and give it its final name (never over an existing recording)."""
        done = []
        with self.lock:
            self.closed = True
            for device in list(self.files):
                self._close_file(device)
            for device, part in self.parts.items():
                try:
                    if part.exists():
                        drop_torn_tail(part)  # a failed write may have left half a line
                        done.append(publish(part, device))
                except OSError as error:  # left as .part: the next run recovers it
                    self.note(f"could not finish {part}: {error}")
            self.parts.clear()
        return done
