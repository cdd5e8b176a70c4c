"""A real RabbitMQ 3.10 node for the tests (DESIGN.md, "Services the tests start"), with the MQTT and
consistent-hash plugins, on free loopback ports in a temporary folder (:mod:`streamer.tools.rabbitmq`).

It takes about 10-13 s to start, so one node serves the whole session; each test declares its own
fleet (``--fleet-name``) and deletes it after. A node that cannot start fails the test: CI installs
rabbitmq-server (.ci/run), so a missing one is a broken setup, not a skip."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

from streamer.tools.private_mosquitto import BrokerError
from streamer.tools.rabbitmq import RabbitMQ


@pytest.fixture(scope="session")
def rabbitmq():
    # Not under pytest's own temporary folder: as root the node runs as the rabbitmq user, and every
    # pytest that starts makes /tmp/pytest-of-root private again, which would lock the node out.
    folder = Path(tempfile.mkdtemp(prefix="harstream-rabbitmq-"))
    try:
        node = RabbitMQ(folder)
    except BrokerError as error:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.fail(str(error))
    yield node
    node.stop()
    shutil.rmtree(folder, ignore_errors=True)


def active_consumers(node: RabbitMQ, prefix: str) -> dict[str, str]:
    """Queue -> the consumer tag of its single active consumer, for the queues named ``prefix*``
    (``rabbitmqctl list_consumers``: the broker's own account)."""
    from streamer.tools.rabbitmq import VHOST

    columns = ("queue_name", "consumer_tag", "active")
    done = node.ctl("list_consumers", "-p", VHOST, "--formatter", "json", *columns)
    assert done.returncode == 0, done.stdout
    text = done.stdout[done.stdout.index("[") :] if "[" in done.stdout else "[]"
    return {c["queue_name"]: c["consumer_tag"] for c in json.loads(text)
            if c["active"] and c["queue_name"].startswith(prefix)}  # fmt: skip
