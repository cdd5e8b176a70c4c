"""Two processes with one MQTT client id: the newcomer stops, saying in one line that the id is in
use, and the client that held the id keeps running (issue 21: which one stopped depended on how long
the first had been connected, and the words said the first would). Against a real mosquitto, and
on the MQTT 5 "Session taken over" that mosquitto 2.0.11 does not send."""

from __future__ import annotations

import signal
import time

from live_fixtures import Lines, harstream, mqtt_options
from paho.mqtt.client import DisconnectFlags
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from model.data.signals import HAPT_CHANNELS
from streamer.sources.mqtt import SESSION_TAKEN_OVER, SHORT_LIVED_S, MqttSource

IN_USE = "client id 'same' is in use by another client, which keeps it"


def taken_over_after(connected_for: float) -> MqttSource:
    """A source whose connection, made ``connected_for`` seconds ago, the broker ends with "Session
    taken over" (as an MQTT 5 broker does when another client connects with its id)."""
    source = MqttSource(mqtt_options("mqtt://127.0.0.1:1", client_id="same"), HAPT_CHANNELS)
    source._started = True  # as after start(), without a broker to connect to
    source._connected_at = time.monotonic() - connected_for
    source.answered = True  # it had a connection: the broker sent a CONNACK
    taken = ReasonCode(PacketTypes.DISCONNECT, identifier=SESSION_TAKEN_OVER)
    flags = DisconnectFlags(is_disconnect_packet_from_server=True)
    source._on_disconnect(source.client, None, flags, taken, None)
    return source


def test_session_taken_over_stops_the_newcomer_and_the_holder_takes_it_back() -> None:
    holder = taken_over_after(SHORT_LIVED_S + 60)
    assert holder.fatal is None and holder.takeovers == 1  # it reconnects, and the newcomer is closed
    newcomer = taken_over_after(1.0)  # closed by the holder's reconnect, a second after connecting
    assert newcomer.fatal is not None and IN_USE in newcomer.fatal and "--client-id" in newcomer.fatal


def test_a_second_process_with_a_client_id_in_use_stops_and_the_first_keeps_running(broker, tiny_checkpoint):
    """mosquitto 2.0.11 closes the old connection without a reason: the newcomer is told apart by
    its connections closed again and again right after they were made (a few seconds)."""
    command = ("mqtt", "--broker", broker.url, "--checkpoint", str(tiny_checkpoint), "--headless",
               "--client-id", "same")  # fmt: skip
    first = harstream(*command)
    first_err = Lines(first.stderr)
    second = None
    try:
        assert first_err.wait(lambda ls: any("connected" in x for x in ls), 30), first_err.lines
        time.sleep(SHORT_LIVED_S + 1)  # the first has held the id a while: no newcomer
        second = harstream(*command)
        second_err = Lines(second.stderr)
        assert second.wait(30) == 1, second_err.lines
        time.sleep(1.0)
        assert first.poll() is None, first_err.lines  # still running
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(15)
    said = second_err.wait(lambda ls: False, 0.5)
    assert [x for x in said if "in use" in x] and all("Traceback" not in x for x in said), said
    assert len([x for x in said if IN_USE in x]) == 1 and "--client-id" in said[-1], said
    assert not any("in use" in x or "Traceback" in x for x in first_err.lines), first_err.lines
    assert first.returncode == 0, first_err.lines  # stopped by the test's SIGTERM, cleanly
