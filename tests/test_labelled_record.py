"""`harstream record` labels what it records: from the device's label topic, a guided protocol."""

from __future__ import annotations

import itertools
import json
import signal
import threading
import time
from pathlib import Path

import pytest
from live_fixtures import Lines, harstream, mqtt_client, mqtt_options, wait_until

from model.data.recordings import read_csv_recording
from streamer.core import limits
from streamer.sinks.recorder import CsvRecorder
from streamer.sources.labelling import (
    MAX_NAMES,
    LabelBoard,
    LabelledMqttSource,
    ProtocolError,
    RecordingProtocol,
)

CLASSES = ("UPRIGHT", "SHAKING")
CHANNELS = ("acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z")


def batch(t0: float, n: int, value: float = 0.0) -> bytes:
    samples = [[value, -1.0, 0.0, 0.0, 0.0, 0.0]] * n
    return json.dumps({"t0": t0, "hz": 50, "channels": list(CHANNELS), "samples": samples}).encode()


def start_record(url: str, out: Path, *extra: str):
    process = harstream("record", "--broker", url, "--out", str(out), "--headless", *extra)
    err = Lines(process.stderr)
    assert err.wait(lambda ls: any("recording" in x for x in ls), 30), err.lines
    return process, err


def stop(process, err: Lines) -> list[str]:
    process.send_signal(signal.SIGTERM)
    process.wait(15)
    return err.wait(lambda ls: False, 1)


def test_every_sample_carries_the_label_in_force_when_it_arrived(broker, tmp_path) -> None:
    out = tmp_path / "rec"
    process, err = start_record(broker.url, out, "--classes", ",".join(CLASSES))
    client = mqtt_client(broker.url)
    try:
        sent = [(None, 10), ("UPRIGHT", 20), ("NOT_A_CLASS", 5), ("SHAKING", 30), ("", 15)]
        t = 1000.0
        for label, n in sent:
            if label is not None:
                client.publish("har/band-1/label", label, qos=1).wait_for_publish(5)
            client.publish("har/band-1/imu", batch(t, n), qos=1).wait_for_publish(5)
            t += n / 50
        part = out / "band-1.csv.part"
        assert wait_until(lambda: part.exists() and part.read_bytes().count(b"\n") >= 81, 20)
    finally:
        client.loop_stop()
        lines = stop(process, err)
    assert process.returncode == 0, lines
    recording = read_csv_recording(out / "band-1.csv", CHANNELS, CLASSES, 50.0)
    names = ["" if i < 0 else CLASSES[i] for i in recording.labels]
    # an unknown name changes nothing: the label before it stays in force
    assert names == [""] * 10 + ["UPRIGHT"] * 25 + ["SHAKING"] * 30 + [""] * 15
    assert any("unknown label 'NOT_A_CLASS'" in line for line in lines), lines
    assert any("label messages ignored: 1" in line for line in lines), lines
    assert not any("Traceback" in line for line in lines)


def test_a_guided_protocol_labels_each_step_and_leaves_the_switches_unlabelled(broker, tmp_path) -> None:
    protocol = tmp_path / "p.toml"
    protocol.write_text('margin_s = 1\n[[step]]\nactivity = "UPRIGHT"\nseconds = 3\nsay = "stand"\n'
                        '[[step]]\nactivity = "SHAKING"\nseconds = 3\n')  # fmt: skip
    out = tmp_path / "rec"
    process, err = start_record(broker.url, out, "--protocol", str(protocol))
    client = mqtt_client(broker.url)
    try:
        t = 0.0
        while process.poll() is None and t < 20:  # 0.1 s of samples every 0.1 s until the session ends
            client.publish("har/band-2/imu", batch(t, 5), qos=1)
            t += 0.1
            time.sleep(0.1)
        process.wait(20)
    finally:
        client.loop_stop()
    lines = err.wait(lambda ls: False, 1)
    assert process.returncode == 0, lines
    assert any("step 1/2: UPRIGHT — 3 s: stand" in line for line in lines), lines
    assert any("step 2/2: SHAKING" in line for line in lines), lines
    recording = read_csv_recording(out / "band-2.csv", CHANNELS, CLASSES, 50.0)
    labels = list(recording.labels)
    runs = [labels[0]] + [b for a, b in itertools.pairwise(labels) if a != b]
    assert runs == [-1, 0, -1, 1, -1], runs  # margin, UPRIGHT, switch, SHAKING, end
    for cls in (0, 1):  # about a second labelled of each 3 s step (1 s margins at both ends)
        assert 30 <= labels.count(cls) <= 75, labels.count(cls)


@pytest.mark.parametrize(("text", "says"), [
    ("", "needs 1 to"),
    ('[[step]]\nactivity = "A"\nseconds = -3\n', "seconds must be from 1"),
    ('[[step]]\nactivity = "A B/C"\nseconds = 5\n', "activity must be a class name"),
    ('margin_s = 3\n[[step]]\nactivity = "A"\nseconds = 5\n', "leaves nothing labelled"),
    ('[[step]]\nactivity = "A"\nseconds = 5\nspeed = 2\n', "a step has activity, seconds"),
    ("steps = [", "not valid TOML"),
])  # fmt: skip
def test_an_absurd_protocol_is_one_line(tmp_path, text: str, says: str) -> None:
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(ProtocolError, match=says):
        RecordingProtocol.load(path)


def test_the_shipped_protocol_mirrors_hapt() -> None:
    from model.data.signals import HAPT_ACTIVITIES

    protocol = RecordingProtocol.load(Path(__file__).parent.parent / "configs/protocols/hapt_six.toml")
    assert set(protocol.classes) == set(HAPT_ACTIVITIES)


def test_a_flood_of_made_up_labels_is_counted_in_bounded_memory() -> None:
    said: list[str] = []
    board = LabelBoard(CLASSES, said.append)
    for n in range(500):
        assert not board.set_device("d", f"X{n}".encode())
    assert board.set_device("d", b"UPRIGHT") and board.current("d") == "UPRIGHT"
    assert not board.set_device("d", b"\xff")
    # at most MAX_NAMES names each under its own, the rest together; other reasons keep their own
    assert sum(board.rejected.values()) == 501 and len(board.rejected) == MAX_NAMES + 2
    assert board.rejected["label not UTF-8"] == 1 and len(said) == MAX_NAMES + 2


def test_labels_of_devices_that_never_send_are_bounded_and_counted(broker, tmp_path) -> None:
    """Label messages for thousands of made-up devices, and ids of 10,000 characters: the board
    holds at most its limits, counts every label it refuses or forgets, and real devices' labels
    still apply (one labelled before the flood, one after)."""
    said: list[str] = []
    board = LabelBoard(CLASSES, said.append)
    delivered = [0]
    set_device = board.set_device

    def counted(device: str, payload: bytes) -> bool:  # the test's own count of deliveries
        delivered[0] += 1
        return set_device(device, payload)

    board.set_device = counted  # type: ignore[method-assign]
    source = LabelledMqttSource(mqtt_options(broker.url, "recorder", announce=False), CHANNELS, board)
    recorder = CsvRecorder(tmp_path / "rec", CHANNELS, note=said.append, labels=board.current)
    stop = threading.Event()
    thread = threading.Thread(target=source.run, args=(recorder.write, stop), daemon=True)
    source.start()
    assert source.connected.wait(10), source.status
    thread.start()
    client = mqtt_client(broker.url)
    ghosts = [f"ghost-{n}" for n in range(limits.MAX_WAITING_LABELS + 500)]
    long_ids = ["d" * 10_000 + str(n) for n in range(100)]
    try:
        def labelled() -> bool:  # once the label topic's subscription is in place
            client.publish("har/band-1/label", "UPRIGHT", qos=1).wait_for_publish(5)
            return delivered[0] > 0

        assert wait_until(labelled, 10, step=0.2)
        time.sleep(0.5)  # a try sent after the subscription but before the first delivery: delivered too
        sent = delivered[0]  # (tries before the subscription are never delivered)
        client.publish("har/band-1/imu", batch(1000.0, 10), qos=1).wait_for_publish(5)
        assert wait_until(lambda: recorder.samples.get("band-1") == 10, 10)
        flood = [*ghosts, *long_ids]
        for start in range(0, len(flood), 250):  # within what the broker queues for one client
            chunk = flood[start : start + 250]
            infos = [client.publish(f"har/{device}/label", "SHAKING", qos=1) for device in chunk]
            infos[-1].wait_for_publish(5)
            sent += len(chunk)
            assert wait_until(lambda want=sent: delivered[0] == want, 20), (delivered[0], sent)
        client.publish("har/band-2/label", "SHAKING", qos=1).wait_for_publish(5)
        for device in ("band-1", "band-2"):
            client.publish(f"har/{device}/imu", batch(1000.2, 10), qos=1).wait_for_publish(5)
        assert wait_until(lambda: recorder.samples.get("band-1") == 20 and recorder.samples.get("band-2"), 10)
    finally:
        client.loop_stop()
        stop.set()
        source.close()
        thread.join(5)
        recorder.close()
    assert board.rejected["invalid device id"] == len(long_ids)
    assert len(board) <= limits.MAX_WAITING_LABELS + 2  # the devices that send, and the bounded rest
    # every valid label message is either held or counted as forgotten: nothing grows, nothing silent
    forgotten = sum(n for why, n in board.rejected.items() if "forgotten" in why)
    assert forgotten >= 500 and len(board) + forgotten == len(ghosts) + 2
    assert sum(1 for line in said if "forgotten" in line) == 1 and sum("not a valid" in x for x in said) == 1
    assert all(len(line) < 300 for line in said)  # one line each, never the 10,000-character id
    for device, label in (("band-1", "UPRIGHT"), ("band-2", "SHAKING")):
        recording = read_csv_recording(tmp_path / "rec" / f"{device}.csv", CHANNELS, CLASSES, 50.0)
        assert {CLASSES[i] for i in recording.labels} == {label}, device


def test_a_forgotten_device_s_label_is_forgotten_and_an_invalid_id_is_refused() -> None:
    said: list[str] = []
    board = LabelBoard(CLASSES, said.append, max_devices=2, max_waiting=2)
    assert board.set_device("band-1", b"UPRIGHT") and board.current("band-1") == "UPRIGHT"
    board.forget("band-1")
    assert board.current("band-1") == "" and len(board) == 0
    assert not board.set_device("../etc", b"UPRIGHT") and board.current("../etc") == ""
    for n in range(3):  # three devices that send: the least recently heard one's label goes
        board.set_device(f"s{n}", b"SHAKING")
        board.current(f"s{n}")
    assert len(board) == 2 and board.current("s0") == "" and board.current("s2") == "SHAKING"
    assert board.rejected["invalid device id"] == 1 and sum(board.rejected.values()) == 2
