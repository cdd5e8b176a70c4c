"""Serial wearables through real pseudo-terminal pairs: the slave is the port, the test is the device."""



from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
from live_fixtures import Lines, harstream, predictions, replay_reference, same_predictions

from model.recordings import HAPT_ACTIVITIES, HAPT_CHANNELS, read_csv_recording
from streamer.serial_source import SerialSource

CHANNELS = HAPT_CHANNELS


def lines_of(path: Path) -> list[bytes]:
    """The recording as a device prints it: a header, then ``t,acc_x,...`` rows."""
    recording = read_csv_recording(path, CHANNELS, HAPT_ACTIVITIES, 50.0)
    rows = [",".join(repr(float(x)) for x in (t, *v)) for t, v in zip(recording.timestamps, recording.values,
                                                                     strict=True)]  # fmt: skip
    return [("t," + ",".join(CHANNELS)).encode(), *(row.encode() for row in rows)]


class Pty:
    def __init__(self) -> None:
        self.master, slave = os.openpty()
        self.path = os.ttyname(slave)
        os.close(slave)  # pyserial opens it by name, as it would a real port

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.master, view) :]

    def close(self) -> None:
        os.close(self.master)


def test_serial_cli_gives_the_same_predictions_as_replay(tiny_checkpoint, short_recording) -> None:
    want = replay_reference(tiny_checkpoint, short_recording)
    port = Pty()
    process = harstream("serial", "--port", port.path, "--device", "wrist", "--checkpoint",
                        str(tiny_checkpoint), "--hop", "64", "--headless", "--jsonl")  # fmt: skip
    err, out = Lines(process.stderr), Lines(process.stdout)
    try:
        assert err.wait(lambda ls: any("opened" in x for x in ls), 30), err.lines
        lines = lines_of(short_recording)
        for i in range(0, len(lines), 100):  # CRLF, as many boards print it
            port.write(b"\r\n".join(lines[i : i + 100]) + b"\r\n")
        got = predictions(out.wait(lambda ls: len(ls) >= len(want), 30))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(10)
        port.close()
    same_predictions(got, want)
    assert {p["device"] for p in got} == {"wrist"}


def test_serial_garbage_is_counted_and_the_stream_continues() -> None:
    counted: dict[tuple[str, str], int] = {}
    source = SerialSource("loop://", CHANNELS, device="band", hz=50.0)
    source.reject = lambda device, reason, count=1: counted.__setitem__(
        (device, reason), counted.get((device, reason), 0) + count)  # fmt: skip
    good = b"0.1,0.2,0.3,0.4,0.5,0.6\n"
    batches = source.handle(
        good + b"\x00\xff\x13binary\n" + b"hello world 1\n" + b"1,2,3\n" + b"9" * 1000 + b"\n"
        + b"0.1\t0.2 0.3,0.4  0.5\t0.6\r\n" + b"nan,0,0,0,0,0\n" + b"0.7,0.8", arrival=1.0)  # fmt: skip
    assert counted == {("band", "binary noise"): 1, ("band", "not numeric"): 1,
                       ("band", "wrong column count"): 1, ("band", "line too long"): 1}  # fmt: skip
    assert len(batches) == 1 and batches[0].values.shape == (3, 6)  # NaN goes on: the scheduler counts it
    assert np.allclose(batches[0].values[1], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    (rest,) = source.handle(b",0.9,1.0,1.1,1.2\n", arrival=1.1)  # the partial line completed
    assert rest.values.tolist() == [[0.7, 0.8, 0.9, 1.0, 1.1, 1.2]]
    assert np.allclose(rest.timestamps[0] - batches[0].timestamps[-1], 0.02)


def test_a_header_names_columns_and_a_missing_channel_is_counted() -> None:
    counted: dict[str, int] = {}
    source = SerialSource("loop://", CHANNELS, device="band", hz=50.0)
    source.reject = lambda device, reason, count=1: counted.__setitem__(
        reason, counted.get(reason, 0) + count)  # fmt: skip
    assert source.handle(b"acc_x,acc_y,acc_z\n1,2,3\n4,5,6\n", arrival=0.0) == []
    assert counted == {"missing channel gyro_x": 2}
    (batch,) = source.handle(b"gyro_z gyro_y gyro_x acc_z acc_y acc_x\n6 5 4 3 2 1\n", arrival=0.1)
    assert batch.values.tolist() == [[1, 2, 3, 4, 5, 6]]


def wait_until(condition, deadline: float) -> None:
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_a_port_that_disappears_is_reopened_when_it_comes_back(tmp_path) -> None:
    first, link = Pty(), tmp_path / "ttyWEAR"
    link.symlink_to(first.path)
    source = SerialSource(str(link), CHANNELS, device="wear", hz=50.0)
    received: list = []
    stop = threading.Event()
    thread = threading.Thread(target=source.run, args=(received.append, stop), daemon=True)
    thread.start()

    def samples() -> int:
        return sum(len(b.timestamps) for b in received)

    try:
        deadline = time.monotonic() + 5
        wait_until(lambda: source.status == "open", deadline)
        first.write(b"0,0,1,0,0,0\n" * 10)
        wait_until(lambda: samples() >= 10, deadline)
        first.close()  # the device is unplugged
        wait_until(lambda: source.status.startswith(("lost", "waiting")), deadline + 5)
        assert source.status.startswith(("lost", "waiting")), source.status
        second = Pty()  # ...and plugged in again, under the same name
        link.unlink()
        link.symlink_to(second.path)
        deadline = time.monotonic() + 10
        wait_until(lambda: source.status == "open", deadline)
        second.write(b"0,0,1,0,0,0\n" * 10)
        wait_until(lambda: samples() >= 20, deadline)
    finally:
        stop.set()
        thread.join(5)
    assert samples() == 20
    assert received[-1].timestamps[0] > received[0].timestamps[-1]  # the clock went on, never back
    second.close()


def test_a_port_that_never_opens_fails_in_one_line_when_headless(tiny_checkpoint) -> None:
    process = harstream("serial", "--port", "/dev/ttyNOPE9", "--checkpoint", str(tiny_checkpoint),
                        "--headless")  # fmt: skip
    _, err = process.communicate(timeout=60)
    assert process.returncode == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("harstream serial: could not open port '/dev/ttyNOPE9'")


def test_untimed_lines_are_timed_at_the_measured_rate() -> None:
    source = SerialSource("loop://", CHANNELS, device="band")
    out = []
    for k in range(60):  # 50 Hz, in bursts of 5 lines every 0.1 s
        out += source.handle(b"0,0,1,0,0,0\n" * 5, arrival=k * 0.1)
    assert source.parser.measured_hz == 50.0
    assert out and all(b.rate_hz == 50.0 for b in out)
    t = np.concatenate([b.timestamps for b in out])
    assert np.allclose(np.diff(t), 0.02)
