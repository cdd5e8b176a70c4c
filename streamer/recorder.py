"""What arrives from live devices, written as generic CSV recordings (one file per device).

The files are those :func:`model.recordings.read_csv_recording` reads: ``timestamp``, one column
per channel, ``label`` (empty: nobody labelled it live) and ``subject`` (the device). A file is
written as ``NAME.csv.part``, flushed at least every second, and renamed to ``NAME.csv`` when the
recorder closes, so a finished ``.csv`` is always a complete file.
"""

from __future__ import annotations

import csv
import threading
import time
from pathlib import Path
from typing import TextIO

from streamer.types import SampleBatch
from streamer.wire import valid_device_id

FLUSH_S = 1.0


class CsvRecorder:
    def __init__(self, folder: Path, channels: tuple[str, ...]) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.channels = channels
        self.files: dict[str, tuple[TextIO, csv.writer, Path]] = {}  # device -> (file, writer, .part path)
        self.samples: dict[str, int] = {}
        self.last_flush = time.monotonic()
        self.lock = threading.Lock()  # sources write from their threads; close() comes from the main one
        self.closed = False

    def write(self, batch: SampleBatch) -> None:
        if not valid_device_id(batch.device):  # sources check too; this one names a file
            return
        index = [batch.channels.index(c) for c in self.channels]
        with self.lock:
            if self.closed:
                return
            if batch.device not in self.files:
                self._open(batch.device)
            _, writer, _ = self.files[batch.device]
            for t, row in zip(batch.timestamps, batch.values[:, index], strict=True):
                writer.writerow([repr(float(t)), *(repr(float(x)) for x in row), "", batch.device])
            self.samples[batch.device] = self.samples.get(batch.device, 0) + len(batch.timestamps)
        if time.monotonic() - self.last_flush >= FLUSH_S:
            self.flush()

    def _open(self, device: str) -> None:
        part = self.folder / f"{device}.csv.part"
        stream = open(part, "w", newline="")  # noqa: SIM115 - stays open until close()
        writer = csv.writer(stream)
        writer.writerow(["timestamp", *self.channels, "label", "subject"])
        self.files[device] = (stream, writer, part)

    def flush(self) -> None:
        with self.lock:
            for stream, _, _ in self.files.values():
                stream.flush()
            self.last_flush = time.monotonic()

    def close(self) -> list[Path]:
        """Close every file and give it its final name (never over an existing recording)."""
        done = []
        with self.lock:
            self.closed = True
            for device, (stream, _, part) in self.files.items():
                stream.close()
                final, n = self.folder / f"{device}.csv", 1
                while final.exists():
                    final, n = self.folder / f"{device}-{n}.csv", n + 1
                part.rename(final)
                done.append(final)
            self.files.clear()
        return done
