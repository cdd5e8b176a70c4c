"""The soak run: simulated minutes of good and hostile devices mixed, through the real decoder,
scheduler, engine and decider (`harstream soak` runs hours of it for the README's figure); and
`harstream soak --faults`, against a real PostgreSQL and RabbitMQ it starts itself."""

import json
import logging

import pytest

from model.net.checkpoint import load_checkpoint
from streamer.cli.main import main
from streamer.core.backends import TorchBackend
from streamer.core.engine import InferenceEngine
from streamer.tools.soak import ATTACKS, run_soak


def test_good_devices_never_miss_a_window_while_hostile_ones_attack_and_floods_come(tiny_checkpoint):
    checkpoint = load_checkpoint(tiny_checkpoint)
    engine = InferenceEngine(TorchBackend(checkpoint.model))
    result = run_soak(checkpoint.meta, engine, hours=0.2, good=3, hostile=6, flood=60, flood_every_s=300)
    assert result["good_device_windows"] == result["good_device_windows_expected"] > 100
    assert result["longest_good_silence_s"] <= result["hop_s"] + 1e-6  # one hop between predictions
    assert set(result["attacks"]) == set(ATTACKS)
    dropped = result["dropped_by_reason"]
    for reason in ("value out of range", "non-finite value", "rate out of range", "device limit",
                   "timestamp not after the previous one"):  # fmt: skip
        assert dropped[reason] > 0, reason
    assert {"payload over 1 MB", "too many samples", "t out of range"} <= set(result["wire_errors"])
    assert result["clock_jumps"] > 0 and result["devices_forgotten"] > 0  # the first flood's ids, idle
    assert "non-finite model output" not in dropped


def test_soak_command_prints_one_strict_json_object(tiny_checkpoint, capsys):
    argv = ["soak", "--checkpoint", str(tiny_checkpoint), "--hours", "0.01", "--good", "1", "--hostile", "2",
            "--json"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out, parse_constant=lambda name: 1 / 0)  # NaN would fail here
    assert result["good_device_windows"] == result["good_device_windows_expected"]


@pytest.mark.slow
def test_the_faults_soak_accounts_for_every_good_window_through_hostile_keys_and_broken_stores(
        tiny_checkpoint, capsys, caplog) -> None:  # fmt: skip
    """Good devices through a fleet worker on a private RabbitMQ while hostile clients publish keys no
    consumer can be handed and invalid ids; their predictions into a SQLite file that is deleted, then
    replaced, and a PostgreSQL server frozen for 3 s: every window is received, and in each store
    written or counted, the file and the database recounted against the store's counters."""
    caplog.set_level(logging.ERROR, logger="streamer.sinks.store")
    argv = ["soak", "--checkpoint", str(tiny_checkpoint), "--hours", "0.005", "--good", "3", "--hostile", "2",
            "--faults", "--fault-seconds", "8", "--freeze", "3", "--json"]  # fmt: skip
    assert main(argv) == 0
    faults = json.loads(capsys.readouterr().out, parse_constant=lambda name: 1 / 0)["faults"]
    fleet, stores = faults["fleet"], faults["stores"]
    expected = (8 * 4 * 50 - 128) // 64 + 1  # 8 s at 4x real time, 50 Hz: each device's windows
    assert fleet["good_device_windows"] == {f"good-{k:02d}": expected for k in range(3)}, fleet
    assert fleet["broker_losses"] == 0 and fleet["worker_connects"] == 1, fleet  # never knocked off
    assert fleet["undeliverable_keys_refused"] == fleet["undeliverable_keys_sent"] > 20, fleet
    assert fleet["invalid_ids_counted"] == fleet["invalid_ids_sent"] > 20, fleet
    assert fleet["partition_queues_ready"] == [0, 0] and fleet["other_devices_predicted"] == 0, fleet
    windows = 3 * expected
    for store in stores.values():
        assert store["windows"] == windows == store["rows"] + store["dropped_rows"], store
    sqlite, pg = stores["sqlite"], stores["postgresql"]
    assert sqlite["reopened"] == 2 and 0 < sqlite["lost_rows"] < windows, sqlite  # deleted, then replaced
    assert sqlite["rows_in_file"] + sqlite["lost_rows"] == windows and sqlite["lost"] == sqlite["lost_rows"]
    assert sqlite["replacement_rows_kept"] == 1  # the database put in the file's place keeps its own rows
    assert pg["outages"] == 1 and pg["failures"] >= 1 and pg["rows_kept_at_thaw"] > 0, pg
    assert pg["rows_written_after_thaw"] >= pg["rows_kept_at_thaw"], pg  # what it kept, written after
    assert pg["rows_in_database"] == windows and pg["rows_written_twice"] == 0, pg
    assert faults["accounted"] is True and faults["wall_s"] < 60
    said = [r.getMessage() for r in caplog.records]
    assert len([m for m in said if "deleted or replaced" in m]) == 2, said
    assert len([m for m in said if "cannot write to postgresql" in m]) == 1, said


def test_the_faults_soak_without_its_services_says_so_in_one_line(tiny_checkpoint, monkeypatch,
                                                                  capsys) -> None:  # fmt: skip
    import streamer.tools.soak_faults

    monkeypatch.setattr(streamer.tools.soak_faults, "postgres_installed", lambda: False)  # as if missing
    assert main(["soak", "--checkpoint", str(tiny_checkpoint), "--faults", "--json"]) == 1
    out = capsys.readouterr()
    assert out.out == "" and out.err.count("\n") == 1 and "needs PostgreSQL" in out.err, out.err
