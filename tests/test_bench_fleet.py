"""The fleet benchmark that ``harstream bench --fleet`` reports, run small: recognizer processes
through a real mosquitto and a real RabbitMQ (1 and 2 workers), side by side."""

from __future__ import annotations

import pytest
from live_fixtures import write_tiny_checkpoint

from streamer.cli.main import main
from streamer.tools.bench_fleet import SETUPS, Brokers, fleet_figures, fleet_table

pytestmark = pytest.mark.slow


def test_every_setup_predicts_every_window_and_reports_its_latency(rabbitmq, broker, tmp_path) -> None:
    checkpoint = write_tiny_checkpoint(tmp_path / "tiny64.pt", window=64)
    brokers = Brokers("127.0.0.1", broker.port, rabbitmq.mqtt_port, rabbitmq.amqp_url,
                      broker.process.pid, rabbitmq.process.pid)
    result = fleet_figures(checkpoint, sizes=(6,), seconds=4.0, brokers=brokers)
    assert tuple(result) == SETUPS
    for setup, figures in result.items():
        (run,) = figures["runs"]
        # 4 s of 50 Hz in messages of 25: windows of 64 end at samples 63, 95, ..., 191
        assert run["windows"] == run["windows_expected"] == 6 * 5, (setup, run)
        assert run["dropped"] == 0 and 0 < run["p50_ms"] <= run["p99_ms"] < 5000, (setup, run)
        # a command each (mqtt --processes N: one, its recognizer processes counted in its CPU)
        assert run["workers"] == {"rabbitmq_2": 2}.get(setup, 1)
        assert figures["largest_held"] in (0, 6)  # held or not: the machine's load decides, not the test
        # the CPU a deployment is sized by: measured (from /proc, in 10 ms ticks: a small run's broker
        # may take none) for the recognizers, the publisher and the broker, whose processes it was given
        assert 0 < run["recognizer_cpu_ms_per_device_s"] < 1e4, (setup, run)
        for who in ("publisher", "broker"):
            assert 0 <= run[f"{who}_cpu_ms_per_device_s"] < 1e4, (setup, who, run)
    assert fleet_table(result).row_count == len(SETUPS)


def test_bench_fleet_refuses_bad_sizes_in_one_line(capsys) -> None:
    assert main(["bench", "--fleet", "--fleet-sizes", "ten"]) == 1
    assert "--fleet-sizes wants device counts" in capsys.readouterr().err
