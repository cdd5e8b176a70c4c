"""MQTT 5, or 3.1.1 when the broker will not answer 5 (RabbitMQ's MQTT plugin before 3.13): every MQTT
client of the project falls back by default and says so in one line; ``--mqtt-version`` chooses."""

from __future__ import annotations

import subprocess
import sys

from live_fixtures import ROOT

from model.data.signals import HAPT_CHANNELS
from streamer.cli.connect import mqtt_options, start_mqtt
from streamer.cli.main import build_parser


def publish(url: str, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "streamer.cli.main", "publish", "hapt:2", "--broker", url,
               "--speed", "0", "--connect-timeout", "5", *extra]  # fmt: skip
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_publish_to_rabbitmq_falls_back_to_mqtt_3_1_1_and_says_so(rabbitmq) -> None:
    done = publish(rabbitmq.mqtt_url)  # was: "no answer from broker ... within 10 s", exit 1
    assert done.returncode == 0, done.stderr
    said = [line for line in done.stderr.splitlines() if "3.1.1" in line]
    assert len(said) == 1 and "does not speak MQTT 5" in said[0], done.stderr
    assert "published 34591 samples" in done.stderr


def test_mqtt_version_5_against_rabbitmq_is_one_line_and_3_1_1_says_nothing_more(rabbitmq) -> None:
    refused = publish(rabbitmq.mqtt_url, "--mqtt-version", "5")
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
    chosen = publish(rabbitmq.mqtt_url, "--mqtt-version", "3.1.1")
    assert chosen.returncode == 0 and "3.1.1" not in chosen.stderr, chosen.stderr


def test_publish_to_mosquitto_stays_on_mqtt_5(broker) -> None:
    done = publish(broker.url)
    assert done.returncode == 0 and "3.1.1" not in done.stderr, done.stderr


def connect(url: str, capsys, *extra: str):
    """A recognizer's MQTT source (mqtt, record and check build theirs the same way), connected."""
    args = build_parser().parse_args(["mqtt", "--broker", url, *extra])
    source = start_mqtt(mqtt_options(args), HAPT_CHANNELS, connect_timeout=10, headless=True)
    return source, capsys.readouterr().err


def test_the_recognizer_s_source_falls_back_with_rabbitmq_and_not_with_mosquitto(rabbitmq, broker,
                                                                                capsys) -> None:  # fmt: skip
    source, err = connect(rabbitmq.mqtt_url, capsys)
    try:
        assert source.connected.is_set() and source.connection.client.protocol == 4  # paho's MQTTv311
        assert err.count("\n") == 1 and "connected to" in err and "over MQTT 3.1.1" in err, err
    finally:
        source.close()
    source, err = connect(broker.url, capsys)
    try:
        assert source.connection.client.protocol == 5 and "3.1.1" not in err, err
    finally:
        source.close()
