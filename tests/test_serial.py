"""Serial wearables through real pseudo-terminal pairs: the slave is the port, the test is the device."""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from live_fixtures import Lines, harstream, predictions, replay_reference, same_predictions, wait_until

from model.data.recordings import read_csv_recording
from model.data.signals import HAPT_ACTIVITIES, HAPT_CHANNELS
from streamer.cli import main as cli
from streamer.core.drops import Drops
from streamer.core.wire import WireError
from streamer.sources.serial_source import LineParser, SerialSource

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
    drops = Drops()  # as a pipeline's: the source counts what it cannot use into it
    source = SerialSource("loop://", CHANNELS, device="band", hz=50.0)
    source.bind(drops)
    good = b"0.1,0.2,0.3,0.4,0.5,0.6\n"
    batches = source.handle(
        good + b"\x00\xff\x13binary\n" + b"hello world 1\n" + b"1,2,3\n" + b"9" * 1000 + b"\n"
        + b"0.1\t0.2 0.3,0.4  0.5\t0.6\r\n" + b"nan,0,0,0,0,0\n" + b"0.7,0.8", arrival=1.0)  # fmt: skip
    assert drops.rows() == {("band", "binary noise"): 1, ("band", "not numeric"): 1,
                            ("band", "wrong column count"): 1, ("band", "line too long"): 1}  # fmt: skip
    assert len(batches) == 1 and batches[0].values.shape == (3, 6)  # NaN goes on: the scheduler counts it
    assert np.allclose(batches[0].values[1], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    (rest,) = source.handle(b",0.9,1.0,1.1,1.2\n", arrival=1.1)  # the partial line completed
    assert rest.values.tolist() == [[0.7, 0.8, 0.9, 1.0, 1.1, 1.2]]
    assert np.allclose(rest.timestamps[0] - batches[0].timestamps[-1], 0.02)


def test_a_header_names_columns_and_a_missing_channel_is_counted() -> None:
    source = SerialSource("loop://", CHANNELS, device="band", hz=50.0)
    counted = counting(source)
    assert source.handle(b"acc_x,acc_y,acc_z\n1,2,3\n4,5,6\n", arrival=0.0) == []
    assert counted() == {"missing channel gyro_x": 2}
    (batch,) = source.handle(b"gyro_z gyro_y gyro_x acc_z acc_y acc_x\n6 5 4 3 2 1\n", arrival=0.1)
    assert batch.values.tolist() == [[1, 2, 3, 4, 5, 6]]


class Plugged:
    """A device on a real pseudo-terminal behind a stable name, read by a SerialSource in its own
    thread; :meth:`replug` unplugs it and plugs a new one in under the same name."""

    def __init__(self, folder: Path) -> None:
        self.pty, self.link = Pty(), folder / "ttyWEAR"
        self.link.symlink_to(self.pty.path)
        self.source = SerialSource(str(self.link), CHANNELS, device="wear", hz=50.0)
        self.received: list = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.source.run, args=(self.received.append, self.stop),
                                       daemon=True)  # fmt: skip

    def __enter__(self) -> Plugged:
        self.thread.start()
        wait_until(lambda: self.source.status == "open", 10)
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(5)
        self.pty.close()

    def samples(self) -> int:
        return sum(len(b.timestamps) for b in self.received)

    def replug(self) -> None:
        self.pty.close()  # the device is unplugged...
        wait_until(lambda: self.source.status.startswith(("lost", "waiting")), 10)
        assert self.source.status.startswith(("lost", "waiting")), self.source.status
        self.pty = Pty()  # ...and plugged in again, under the same name
        self.link.unlink()
        self.link.symlink_to(self.pty.path)
        wait_until(lambda: self.source.status == "open", 10)


def test_a_port_that_disappears_is_reopened_when_it_comes_back(tmp_path) -> None:
    with Plugged(tmp_path) as port:
        port.pty.write(b"0,0,1,0,0,0\n" * 10)
        wait_until(lambda: port.samples() >= 10, 10)
        port.replug()
        port.pty.write(b"0,0,1,0,0,0\n" * 10)
        wait_until(lambda: port.samples() >= 20, 10)
    assert port.samples() == 20
    assert port.received[-1].timestamps[0] > port.received[0].timestamps[-1]  # the clock went on, never back


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


def counting(source: SerialSource) -> Callable[[], Counter]:
    """The source bound to a ledger of its own, as a pipeline binds it; what it dropped, by reason."""
    drops = Drops()
    source.bind(drops)
    return lambda: drops.of(source.device)


def test_a_line_of_text_mid_stream_is_skipped_and_the_samples_go_on() -> None:
    for columns in (None, ("t", *CHANNELS)):  # with and without --columns
        source = SerialSource("loop://", CHANNELS, device="band", hz=50.0, columns=columns)
        counted = counting(source)
        row = b"0.1,0.2,0.3,0.4,0.5,0.6\n" if columns is None else b"0.0,0.1,0.2,0.3,0.4,0.5,0.6\n"
        batches = source.handle(row * 3 + b"MPU6050 connection successful\r\n" + row * 3 + b"hello world\n"
                                + b"calibrating gyro_x gyro_y\n" + row * 3, arrival=1.0)  # fmt: skip
        assert counted() == {"not numeric": 3}
        assert sum(len(b.timestamps) for b in batches) == 9
        assert source.parser.names == (columns or ("acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z"))


def test_only_names_of_known_or_wanted_channels_make_a_header() -> None:
    parser = LineParser(wanted=CHANNELS)
    for text in (b"hello world", b"MPU6050 connection successful", b"acc_x acc_x acc_y", b"ready: yes"):
        with pytest.raises(WireError, match="not numeric"):
            parser.parse(text)
    assert parser.header is None
    assert parser.parse(b"timestamp,acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z") is None  # all known
    assert parser.timed and parser.channels == CHANNELS
    header = b"t,temp,acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z,mag_x"  # every wanted channel, and others
    assert parser.parse(header) is None and parser.names[1] == "temp"
    assert parser.parse(b"1,20.5,0,0,1,0,0,0,0.3") == [1, 20.5, 0, 0, 1, 0, 0, 0, 0.3]


def test_a_header_that_no_longer_fits_gives_way_to_the_columns_it_replaced() -> None:
    source = SerialSource("loop://", CHANNELS, device="band", hz=50.0)
    counted = counting(source)
    header = b"t,acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z\n"
    (timed,) = source.handle(header + b"0.5,0,0,1,0,0,0\n" * 4, arrival=1.0)
    assert timed.timestamps.tolist() == [0.5] * 4
    # reflashed: six numbers a line, no header; three lines in a row that fit acc+gyro drop the header
    batches = source.handle(b"0,0,1,0,0,0\n" * 10, arrival=2.0)
    assert counted() == {"wrong column count": 2}
    assert sum(len(b.timestamps) for b in batches) == 8 and source.parser.header is None
    assert not source.parser.timed


def test_rows_around_a_header_in_one_read_keep_their_own_columns() -> None:
    source = SerialSource("loop://", CHANNELS, device="band", hz=50.0)
    counted = counting(source)
    # a device that reboots within one read: samples, its banner, its header, then timed samples
    data = (b"0.1,0.2,0.3,0.4,0.5,0.6\n" * 2 + b"MPU6050 connection successful\n"
            + b"t,acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z\n" + b"7.0,1,2,3,4,5,6\n" * 3)  # fmt: skip
    untimed, timed = source.handle(data, arrival=1.0)
    assert counted() == {"not numeric": 1}
    assert np.allclose(untimed.values, [[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]] * 2)
    assert timed.values.tolist() == [[1, 2, 3, 4, 5, 6]] * 3 and timed.timestamps.tolist() == [7.0] * 3


def test_a_rebooting_device_on_a_real_port_keeps_streaming(tmp_path) -> None:
    """Banner and debug text on the wire, an unplug, a reflashed device without the old header."""
    with Plugged(tmp_path) as port:
        counted = counting(port.source)
        port.pty.write(b"MPU6050 connection successful\r\nt,acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z\r\n")
        port.pty.write(b"".join(b"%.2f,0,0,1,0,0,0\r\n" % (k / 50) for k in range(10)))
        port.pty.write(b"hello world\r\n")
        port.pty.write(b"".join(b"%.2f,0,0,1,0,0,0\r\n" % (k / 50) for k in range(10, 20)))
        wait_until(lambda: port.samples() >= 20, 10)
        assert port.samples() == 20 and counted() == {"not numeric": 2}
        port.replug()  # reflashed: a banner, then six untimed numbers a line
        port.pty.write(b"Booting... IMU ok\r\n" + b"0,0,1,0,0,0\r\n" * 30)
        wait_until(lambda: port.samples() >= 48, 10)
    assert port.samples() == 48  # 20, then 30 less the 2 that showed the old header no longer fits
    assert counted() == {"not numeric": 3, "wrong column count": 2}


def test_untimed_lines_are_held_while_the_rate_is_measured_not_dropped() -> None:
    source = SerialSource("loop://", CHANNELS, device="band")
    counted = counting(source)
    out = []
    for k in range(30):  # 50 Hz, in bursts of 5 lines every 0.1 s
        out += source.handle(b"".join(b"%d,0,1,0,0,0\n" % (5 * k + i) for i in range(5)), arrival=k * 0.1)
    values = np.concatenate([b.values[:, 0] for b in out])
    assert values.tolist() == list(range(150)) and not counted()  # every line, in order
    t = np.concatenate([b.timestamps for b in out])
    assert np.allclose(np.diff(t), 0.02)


def test_a_silence_while_measuring_restarts_the_measurement() -> None:
    source = SerialSource("loop://", CHANNELS, device="band")
    counted = counting(source)
    out = source.handle(b"0,0,1,0,0,0\n", arrival=0.0)  # one stray line, then half a minute of nothing
    for k in range(30):
        out += source.handle(b"0,0,1,0,0,0\n" * 5, arrival=30.0 + k * 0.1)
    assert source.parser.measured_hz == 50.0
    assert out and all(b.rate_hz == 50.0 and np.isfinite(b.timestamps).all() for b in out)
    assert counted() == {"rate not measured": 1}  # the stray line: no rate spaces it from the rest


def test_lines_of_many_channels_fit_the_line_limit() -> None:
    channels = tuple(f"ch{i}" for i in range(113))  # OPPORTUNITY's sensors
    source = SerialSource("loop://", channels, device="body", hz=30.0, columns=channels)
    counted = counting(source)
    line = ",".join(repr(-0.123456789012345 * i) for i in range(113)).encode()
    (batch,) = source.handle(line + b"\n", arrival=0.0)
    assert batch.values.shape == (1, 113) and not counted()
    source.handle(b"1," * 5000 + b"1\n", arrival=0.1)  # still capped
    assert counted() == {"line too long": 1}


@pytest.mark.parametrize(("option", "words"), [
    (["--hz", "0"], "--hz: must be from 1 to 1000 Hz, not '0'"),
    (["--hz", "nan"], "--hz: must be"),
    (["--hz", "-50"], "--hz: must be"),
    (["--baud", "0"], "--baud: must be"),
    (["--columns", "acc_x,,acc_y"], "bad --columns"),
    (["--columns", "acc_x,acc_x"], "a name appears twice"),
])  # fmt: skip
def test_absurd_serial_options_are_one_line(tiny_checkpoint, capsys, option, words) -> None:
    try:  # a value out of range is refused while parsing (exit 2), a bad combination after (exit 1)
        code = cli.main(["serial", "--port", "/dev/ttyNOPE9", "--checkpoint", str(tiny_checkpoint),
                         "--headless", *option])  # fmt: skip
    except SystemExit as stopped:
        code = stopped.code
    err = capsys.readouterr().err.strip()
    assert code == (2 if "must be" in words else 1) and len(err.splitlines()) == 1 and words in err, err


def test_lines_held_while_measuring_are_counted_when_a_header_changes_the_columns() -> None:
    source = SerialSource("loop://", CHANNELS, device="band")
    counted = counting(source)
    assert source.handle(b"0,0,1,0,0,0\n" * 5, arrival=0.0) == []  # held: no rate yet
    (timed,) = source.handle(b"t,acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z\n0.0,0,0,1,0,0,0\n", arrival=0.1)
    assert counted() == {"rate not measured": 5} and timed.timestamps.tolist() == [0.0]
