"""`harstream record` without --classes or --protocol takes the label names the user publishes."""

from __future__ import annotations

import json
import signal
from types import SimpleNamespace

from live_fixtures import Lines, harstream, mqtt_client, wait_until
from rich.console import Console

from model.data.recordings import read_csv_table
from streamer.cli.record import panel
from streamer.sinks.recorder import CsvRecorder
from streamer.sources.labelling import MAX_LABEL_CHARS, MAX_NAMES, LabelBoard

CHANNELS = ("acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z")


def batch(t0: float, n: int) -> bytes:
    samples = [[0.0, -1.0, 0.0, 0.0, 0.0, 0.0]] * n
    return json.dumps({"t0": t0, "hz": 50, "channels": list(CHANNELS), "samples": samples}).encode()


def test_without_classes_the_user_s_own_names_are_recorded_and_listed(broker, tmp_path) -> None:
    out = tmp_path / "rec"
    process = harstream("record", "--broker", broker.url, "--out", str(out), "--headless")
    err = Lines(process.stderr)
    assert err.wait(lambda ls: any("recording" in x for x in ls), 30), err.lines
    client = mqtt_client(broker.url)
    bad = ["Smash,Lob", "two\nlines", "tab\there", "x" * (MAX_LABEL_CHARS + 1)]
    try:
        sent = [("Running", 10), ("Badminton", 20), *((name, 5) for name in bad), ("", 15)]
        t = 1000.0
        for label, n in sent:
            client.publish("har/band-1/label", label, qos=1).wait_for_publish(5)
            client.publish("har/band-1/imu", batch(t, n), qos=1).wait_for_publish(5)
            t += n / 50
        part = out / "band-1.csv.part"
        assert wait_until(lambda: part.exists() and part.read_bytes().count(b"\n") >= 66, 20)
    finally:
        client.loop_stop()
        process.send_signal(signal.SIGTERM)
        process.wait(15)
    lines = err.wait(lambda ls: False, 1)
    assert process.returncode == 0, lines
    labels = read_csv_table(out / "band-1.csv", CHANNELS).labels  # written as they were published
    # a refused name changes nothing: the label before it stays in force
    assert list(labels) == ["Running"] * 10 + ["Badminton"] * 40 + [""] * 15
    summary = next((line for line in lines if "labelled:" in line), "")
    assert "Badminton 40" in summary and "Running 10" in summary, lines
    ignored = next((line for line in lines if "label messages ignored:" in line), "")
    assert "3 (label with a comma or control character)" in ignored and "1 (label too long)" in ignored, lines
    assert not any("Traceback" in line for line in lines), lines
    assert all("\t" not in line and len(line) < 300 for line in lines), lines  # one line each


def test_an_open_board_takes_names_within_bounds_and_counts_the_rest() -> None:
    said: list[str] = []
    board = LabelBoard(None, said.append)
    assert board.set_device("d", b"Running") and board.current("d") == "Running"
    assert board.set_device("d", "Fußball".encode()) and board.current("d") == "Fußball"
    refused = [b"a,b", b"line\nbreak", b"bell\x07", b"x" * (MAX_LABEL_CHARS + 1), b"y" * 100_000, b"\xff"]
    for payload in refused:
        assert not board.set_device("d", payload)
    assert board.current("d") == "Fußball"  # nothing refused replaced it
    for n in range(MAX_NAMES + 50):  # a flood of names: MAX_NAMES held in all, the rest counted together
        board.set_device("d", f"N{n}".encode())
    assert len(board.classes) == MAX_NAMES and board.classes[:2] == ("Running", "Fußball")
    assert sum(board.rejected.values()) == len(refused) + 52
    assert all(len(line) < 200 and "\n" not in line for line in said), said
    assert sum("label names" in line for line in said) == 1  # the flood is said once


def test_classes_still_restricts_what_a_label_may_be() -> None:
    board = LabelBoard(("Running",), lambda _: None)
    assert board.set_device("d", b"Running") and not board.set_device("d", b"Badminton")
    assert board.classes == ("Running",) and board.current("d") == "Running"


def test_the_screen_offers_the_names_seen_so_far_on_keys(tmp_path) -> None:
    board = LabelBoard(None, lambda _: None)
    recorder = CsvRecorder(tmp_path / "rec", CHANNELS, labels=board.current)
    board.set_device("band-1", b"Running")
    board.set_device("band-2", b"Badminton")
    console = Console(record=True, width=80)
    console.print(panel(SimpleNamespace(name="mqtt", status="connected"), recorder, board, None, None))
    recorder.close()
    text = console.export_text()
    assert "1=Running" in text and "2=Badminton" in text, text
