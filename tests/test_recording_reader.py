"""One reader of recordings, one set of rules: `init-config`, `train.py` and `calibrate` refuse the
same broken file with the same one line naming the file and its line (issue 21: a ragged row passed
init-config and then failed train.py, mixed rates and shuffled or identical timestamps passed as
50 Hz, a label holding a line break broke the TOML, a byte-order mark or a non-UTF-8 byte gave
messages that named neither the cause nor the file)."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import train
from model.data.recordings import measured_rate, read_csv_folder, read_csv_recording
from model.data.signals import HAPT_CHANNELS
from model.train.init_config import write_config
from streamer.cli.main import main as harstream

RATE = 50.0
CLASSES = ("WALKING", "SITTING")
HEADER = f"timestamp,{','.join(HAPT_CHANNELS)},label,subject"


def rows(seed: int, rate: float = RATE, seconds: float = 20.0) -> list[str]:
    """A wearer's recording as `harstream record` writes it: each class for half of it (g, rad/s)."""
    n = int(seconds * rate)
    t = 100.0 + np.arange(n) / rate
    x = np.random.default_rng(seed).normal(0, 0.05, (n, 6))
    x[:, 1] -= 1.0
    return [f"{float(ti)!r},{','.join(f'{v:.5f}' for v in xi)},{CLASSES[2 * i // n]},me"
            for i, (ti, xi) in enumerate(zip(t, x, strict=True))]  # fmt: skip


def write(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join([HEADER, *lines]) + "\n")


def cell(line: str, column: str, text: str) -> str:
    parts = line.split(",")
    parts[HEADER.split(",").index(column)] = text
    return ",".join(parts)


# Each breaks b.csv (data row k is line k + 2) and says what every reader must say about it.
def ragged(lines: list[str]) -> None:
    lines[99] = lines[99].rsplit(",", 1)[0]  # the subject cell is missing


def shuffled(lines: list[str]) -> None:
    lines[200], lines[201] = lines[201], lines[200]


def identical(lines: list[str]) -> None:
    lines[:] = [cell(x, "timestamp", "0.0") for x in lines]


def line_break(lines: list[str]) -> None:
    lines[300] = cell(lines[300], "label", '"WALK\nING"')


def slower(lines: list[str]) -> None:
    lines[:] = [cell(x, "timestamp", repr(100.0 + i / 10.0)) for i, x in enumerate(lines)]


BROKEN: dict[str, tuple[Callable[[list[str]], None], str]] = {
    "ragged row": (ragged, r"b\.csv:101: 8 fields, the header has 9"),
    "shuffled timestamps": (shuffled, r"b\.csv:203: timestamp 104\.0 does not follow line 202's 104\.02"),
    "identical timestamps": (identical, r"b\.csv:3: timestamp 0\.0 does not follow line 2's 0\.0"),
    "label with a line break": (line_break, r"b\.csv:302: label 'WALK\\nING' holds a line break"),
    "another rate": (slower, r"b\.csv: recorded at 10 Hz, (a\.csv at 50|the model reads 50) Hz"),
}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Two good recordings, a.csv and b.csv, and the config init-config writes for them (x.toml)."""
    folder = tmp_path / "rec"
    folder.mkdir()
    for seed, name in enumerate("ab"):
        write(folder / f"{name}.csv", rows(seed))
    text, _ = write_config(folder, tmp_path / "x.toml")
    (tmp_path / "x.toml").write_text(text)
    return folder


def one_line(err: str) -> str:
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def refusals(folder: Path, tiny_checkpoint: Path, capsys) -> dict[str, str]:
    """What init-config, train.py and calibrate each say about the folder (b.csv for calibrate)."""
    tmp = folder.parent
    said = {}
    assert harstream(["init-config", str(folder), "--out", str(tmp / "y.toml")]) == 1
    said["init-config"] = one_line(capsys.readouterr().err)
    assert train.main(["--config", str(tmp / "x.toml"), "--out", str(tmp / "x.pt"), "--epochs", "1"]) == 1
    said["train.py"] = one_line(capsys.readouterr().err)
    assert harstream(["calibrate", "--checkpoint", str(tiny_checkpoint), "--recording", str(folder / "b.csv"),
                      "--out", str(tmp / "w.pt")]) == 1  # fmt: skip
    said["calibrate"] = one_line(capsys.readouterr().err)
    assert not (tmp / "y.toml").exists() and not (tmp / "x.pt").exists() and not (tmp / "w.pt").exists()
    return said


@pytest.mark.parametrize("broken", list(BROKEN))
def test_every_reader_refuses_a_broken_recording_in_the_same_line(folder, tiny_checkpoint, capsys,
                                                                  broken: str) -> None:  # fmt: skip
    edit, says = BROKEN[broken]
    lines = rows(1)
    edit(lines)
    write(folder / "b.csv", lines)
    for command, err in refusals(folder, tiny_checkpoint, capsys).items():
        assert str(folder / "b.csv") in err, (command, err)
        assert re.search(says, err), (command, err)


def test_a_byte_that_is_not_utf8_is_named_with_its_file_line_and_offset(folder, tiny_checkpoint, capsys):
    data = (folder / "b.csv").read_bytes()
    at = data.index(b"SITTING")  # the first SITTING row: data row 500, line 502
    (folder / "b.csv").write_bytes(data[:at] + "SITTÉ".encode("latin-1") + data[at + 5 :])
    for command, err in refusals(folder, tiny_checkpoint, capsys).items():
        assert f"{folder / 'b.csv'}:502: not UTF-8 (byte 0xc9 at offset {at + 4})" in err, (command, err)


def test_a_byte_order_mark_is_read_as_utf8_everywhere(folder, tmp_path) -> None:
    """Spreadsheets save CSV as UTF-8 with a byte-order mark: the same recording, read the same."""
    plain = read_csv_recording(folder / "b.csv", HAPT_CHANNELS, CLASSES, RATE)
    (folder / "b.csv").write_bytes(b"\xef\xbb\xbf" + (folder / "b.csv").read_bytes())
    with_bom = read_csv_recording(folder / "b.csv", HAPT_CHANNELS, CLASSES, RATE)
    np.testing.assert_array_equal(with_bom.timestamps, plain.timestamps)
    np.testing.assert_array_equal(with_bom.values, plain.values)
    text, _ = write_config(folder, tmp_path / "x.toml")
    assert text == (tmp_path / "x.toml").read_text()
    assert len(read_csv_folder(folder, HAPT_CHANNELS, CLASSES, RATE)) == 2


def test_a_label_holding_a_quote_is_written_into_a_config_that_loads(folder, tmp_path) -> None:
    lines = [x.replace("SITTING", '"SIT ""HERE"" \\ NOW"') for x in rows(1)]
    write(folder / "b.csv", lines)
    write(folder / "a.csv", [x.replace("SITTING", '"SIT ""HERE"" \\ NOW"') for x in rows(0)])
    text, _ = write_config(folder, tmp_path / "y.toml")
    assert tomllib.loads(text)["data"]["classes"] == ["WALKING", 'SIT "HERE" \\ NOW']


def test_the_rate_is_measured_through_jitter_and_gaps() -> None:
    """A least-squares slope over the stretches between gaps: neither jitter of twice the period
    (a median of the positive steps said 31.73 Hz) nor a pause moves it."""
    rng = np.random.default_rng(0)
    t = np.arange(500) / 50 + rng.uniform(-0.04, 0.04, 500)
    assert abs(measured_rate(t) - 50) < 0.5
    steps = np.r_[np.tile([0.019, 0.021], 100), 28.0, np.tile([0.019, 0.021], 100), 0.019]
    t = np.r_[0.0, np.cumsum(steps)]  # steps of 19 and 21 ms around a 28 s pause
    assert abs(measured_rate(t) - 50) < 0.1  # a median step says 52.6 Hz
    assert np.isnan(measured_rate(np.zeros(10))) and np.isnan(measured_rate(np.array([1.0])))
