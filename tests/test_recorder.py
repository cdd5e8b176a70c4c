"""`harstream record`: nothing recorded is ever truncated, lost to a crash, a device flood or a full disk."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
from live_fixtures import Lines, harstream, wait_until
from test_serial import Pty

from model.data.recordings import read_csv_recording
from model.data.signals import HAPT_ACTIVITIES, HAPT_CHANNELS
from streamer.core.types import SampleBatch
from streamer.sinks import recorder as recorder_module
from streamer.sinks.recorder import CsvRecorder

HEADER = b"t," + ",".join(HAPT_CHANNELS).encode() + b"\r\n"


def read(path: Path):
    return read_csv_recording(path, HAPT_CHANNELS, HAPT_ACTIVITIES, 50.0)


def rows(start: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Timestamps and values of ``n`` samples from sample ``start`` on, one NaN among them."""
    k = np.arange(start, start + n)
    values = np.stack([k * 0.001 + c for c in range(6)], axis=1)
    values[n // 2, 1] = np.nan  # a sensor dropout: written as nan, read back as NaN
    return k / 50.0, values


def lines(t: np.ndarray, values: np.ndarray) -> bytes:
    """The samples as a device prints them: time first, CRLF."""
    rows = zip(t, values, strict=True)
    return b"".join((",".join(repr(float(x)) for x in (ti, *v)) + "\r\n").encode() for ti, v in rows)


def part_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def record(port: Pty, out: Path):
    process = harstream("record", "--port", port.path, "--device", "wear", "--out", str(out))
    err = Lines(process.stderr)
    assert err.wait(lambda ls: any("recording" in x for x in ls), 30), err.lines
    return process, err


def test_a_recording_killed_with_sigkill_is_recovered_by_the_next_run(tmp_path) -> None:
    out, part = tmp_path / "rec", tmp_path / "rec" / "wear.csv.part"
    first_t, first_values = rows(0, 200)
    port = Pty()
    process, _ = record(port, out)
    try:
        port.write(HEADER + lines(first_t, first_values))
        assert wait_until(lambda: part_lines(part) >= 201, 20), part_lines(part)  # flushed within a second
    finally:
        process.kill()  # SIGKILL: no handler runs, the file stays NAME.csv.part
        process.wait(10)
        port.close()
    with open(part, "ab") as stream:  # what a kill in the middle of writing a buffer leaves
        stream.write(b"4.02,0.0")

    port = Pty()
    process, err = record(port, out)
    try:
        second_t, second_values = rows(1000, 50)
        port.write(HEADER + lines(second_t, second_values))
        assert wait_until(lambda: part_lines(part) >= 51, 20), part_lines(part)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(10)
        port.close()
    said = "harstream: recovered wear.csv.part from an earlier run as wear.csv (dropped a torn last line)"
    assert said in err.wait(lambda ls: False, 0.5)
    assert sorted(p.name for p in out.iterdir()) == ["wear-1.csv", "wear.csv"]
    first, second = read(out / "wear.csv"), read(out / "wear-1.csv")
    np.testing.assert_allclose(first.timestamps, first_t)
    np.testing.assert_allclose(first.values, first_values)  # NaN where it was NaN
    np.testing.assert_allclose(second.timestamps, second_t)
    np.testing.assert_allclose(second.values, second_values)
    assert first.subject == second.subject == "wear"


def batch(device: str, start: int, n: int = 5) -> SampleBatch:
    t, values = rows(start, n)
    return SampleBatch(device, t, values, HAPT_CHANNELS, arrival=0.0)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_device_flood_keeps_files_open_bounded_and_counts_devices_past_the_limit(tmp_path) -> None:
    notes: list[str] = []
    recorder = CsvRecorder(tmp_path, HAPT_CHANNELS, note=notes.append, max_devices=50, max_open=8)
    before = open_fds()
    for round_ in range(3):
        for d in range(60):
            recorder.write(batch(f"dev{d}", 5 * round_))
            assert open_fds() - before <= 8
    assert recorder.dropped == {"device limit": 10 * 3 * 5}
    assert notes == ["recording 50 devices: samples of more are dropped, counted"]
    done = recorder.close()
    assert len(done) == 50 and open_fds() == before
    for d in (0, 17, 49):  # reopened to append, again and again: every sample once, in order
        recording = read(tmp_path / f"dev{d}.csv")
        np.testing.assert_allclose(recording.timestamps, np.arange(15) / 50.0)
    assert not (tmp_path / "dev55.csv").exists()


def test_a_full_disk_is_one_line_counted_and_other_devices_keep_recording(tmp_path, monkeypatch) -> None:
    real_open = open

    def full_disk_for_bad(path, mode="r", *args, **kwargs):
        if Path(path).name.startswith("bad") and "r" not in mode:
            return real_open("/dev/full", "w", *args, **kwargs)  # every write there is ENOSPC
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(recorder_module, "open", full_disk_for_bad, raising=False)
    notes: list[str] = []
    recorder = CsvRecorder(tmp_path, HAPT_CHANNELS, note=notes.append)
    for k in range(4):
        recorder.write(batch("good", 5 * k))
        recorder.write(batch("bad", 5 * k))
        recorder.flush()  # where a buffered write meets the full disk
    recorder.close()
    assert len(notes) == 1 and notes[0].startswith("cannot write") and "No space left on device" in notes[0]
    assert recorder.failed["bad"] == 4 and recorder.dropped == {"write error": 20}  # every batch, reopened
    np.testing.assert_allclose(read(tmp_path / "good.csv").timestamps, np.arange(20) / 50.0)


def test_two_recorders_in_one_folder_leave_each_others_files_alone(tmp_path) -> None:
    first = CsvRecorder(tmp_path, HAPT_CHANNELS)
    first.write(batch("wear", 0))
    first.flush()
    notes: list[str] = []
    second = CsvRecorder(tmp_path, HAPT_CHANNELS, note=notes.append)  # the first's .part is live: locked
    assert notes == [] and (tmp_path / "wear.csv.part").exists()
    second.write(batch("wear", 100))
    first.write(batch("wear", 5))
    assert sorted(p.name for p in second.close() + first.close()) == ["wear-1.csv", "wear.csv"]
    by_start = sorted((read(p) for p in tmp_path.glob("*.csv")), key=lambda r: r.timestamps[0])
    np.testing.assert_allclose(by_start[0].timestamps, np.arange(10) / 50.0)
    np.testing.assert_allclose(by_start[1].timestamps, np.arange(100, 105) / 50.0)


def test_a_part_without_samples_is_removed_and_a_finished_recording_is_never_replaced(tmp_path) -> None:
    (tmp_path / "wear.csv").write_text("the earlier recording\n")
    (tmp_path / "wear.csv.part").write_text("timestamp," + ",".join(HAPT_CHANNELS) + ",label,subject\n")
    (tmp_path / "hand.csv.part").write_text("")
    notes: list[str] = []
    recorder = CsvRecorder(tmp_path, HAPT_CHANNELS, note=notes.append)
    assert sorted(notes) == ["removed hand.csv.part from an earlier run: it held no samples",
                             "removed wear.csv.part from an earlier run: it held no samples"]  # fmt: skip
    recorder.write(batch("wear", 0))
    assert [p.name for p in recorder.close()] == ["wear-1.csv"]
    assert (tmp_path / "wear.csv").read_text() == "the earlier recording\n"
