"""A private RabbitMQ node on free loopback ports, with the MQTT and consistent-hash plugins: for the
tests and for ``harstream bench --fleet`` (as :mod:`streamer.tools.private_mosquitto` starts a private
mosquitto).

    with RabbitMQ(folder) as node:
        node.amqp_url  # amqp://har:har@127.0.0.1:PORT/harstream: the recognizers (harstream fleet)
        node.mqtt_url  # mqtt://127.0.0.1:PORT: the devices, through the rabbitmq_mqtt plugin

Everything the node keeps is under ``folder``: its configuration, enabled plugins, database, logs,
feature flags and Erlang cookie (``HOME``), and it registers with an epmd of its own on a free port
(``ERL_EPMD_PORT``). So it shares nothing with a RabbitMQ already on the machine, and stopping it
(``rabbitmqctl -n NODE stop``, then ``epmd -kill`` on its own port) stops nothing else. As root the
node runs as the ``rabbitmq`` user, as Debian's script would, so the folder is handed to that user.

``restart`` (``stop`` then ``start``) keeps the ports and the database (durable queues and exchanges).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pika
import pika.exceptions

from streamer.sources.fleet import KEY_RULE, parse_amqp
from streamer.tools.private_mosquitto import BrokerError, free_port

SBIN = Path("/usr/lib/rabbitmq/bin")  # Debian's real scripts (/usr/sbin holds wrappers that reset HOME)
PLUGINS = "[rabbitmq_mqtt,rabbitmq_consistent_hash_exchange]."
USER, PASSWORD, VHOST = "har", "har", "harstream"  # a vhost of its own: the fleet's URL names one


def rabbitmq_installed() -> bool:
    return (SBIN / "rabbitmq-server").exists()


class RabbitMQ:
    """A real RabbitMQ 3.10+ node on ``127.0.0.1``, started at once (about 13 s)."""

    def __init__(self, folder: Path, start: bool = True) -> None:
        if not rabbitmq_installed():
            raise BrokerError("rabbitmq-server is not installed: apt-get install -y rabbitmq-server")
        self.folder = Path(folder)
        self.amqp_port, self.mqtt_port = free_port(), free_port()
        self.dist_port, self.epmd_port = free_port(), free_port()
        self.node = f"harstream{self.amqp_port}@localhost"
        self.process: subprocess.Popen | None = None
        self.user = "rabbitmq" if os.geteuid() == 0 else None
        self._write_files()
        if start:
            self.start()

    @property
    def amqp_url(self) -> str:
        return f"amqp://{USER}:{PASSWORD}@127.0.0.1:{self.amqp_port}/{VHOST}"

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://127.0.0.1:{self.mqtt_port}"

    def _write_files(self) -> None:
        folder = self.folder
        (folder / "rabbitmq.conf").write_text("\n".join([
            f"listeners.tcp.default = 127.0.0.1:{self.amqp_port}",
            f"mqtt.listeners.tcp.default = 127.0.0.1:{self.mqtt_port}",
            f"default_user = {USER}", f"default_pass = {PASSWORD}", f"default_vhost = {VHOST}",
            "default_permissions.configure = .*", "default_permissions.read = .*",
            "default_permissions.write = .*",
            # devices connect without credentials, into the fleet's vhost, as this user
            "mqtt.allow_anonymous = true", f"mqtt.default_user = {USER}", f"mqtt.default_pass = {PASSWORD}",
            f"mqtt.vhost = {VHOST}", "mqtt.exchange = amq.topic",
            "log.console = false", "log.file.level = info",
            "disk_free_limit.absolute = 50MB",  # a small test disk must not block publishers
        ]) + "\n")  # fmt: skip
        (folder / "enabled_plugins").write_text(PLUGINS + "\n")
        for name in ("mnesia", "log", "home"):
            (folder / name).mkdir(exist_ok=True)
        if self.user:  # the node runs as rabbitmq: it must reach and own its folder
            account = pwd.getpwnam(self.user)
            for path in (folder, *folder.parents):
                if path == Path("/"):
                    break
                os.chmod(path, os.stat(path).st_mode | 0o711)
            for path in (folder, *folder.rglob("*")):
                shutil.chown(path, account.pw_uid, account.pw_gid)

    def env(self) -> dict[str, str]:
        folder = self.folder
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin:/usr/sbin:/sbin"),
            "LANG": "C.UTF-8",
            "HOME": str(folder / "home"),  # the Erlang cookie: this node's and its rabbitmqctl's alone
            "RABBITMQ_CONFIG_FILE": str(folder / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(folder / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(folder / "mnesia"),
            "RABBITMQ_LOG_BASE": str(folder / "log"),
            "RABBITMQ_FEATURE_FLAGS_FILE": str(folder / "feature_flags"),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONF_ENV_FILE": str(folder / "rabbitmq-env.conf"),  # not /etc's
            "ERL_EPMD_PORT": str(self.epmd_port),  # an epmd of its own
        }

    def _popen(self, command: list[str], **kwargs) -> subprocess.Popen:
        return subprocess.Popen(command, env=self.env(), cwd=self.folder, user=self.user,
                                group=self.user, **kwargs)  # fmt: skip

    def start(self, timeout: float = 90.0) -> None:
        """Start the node; return once both listeners (AMQP and MQTT) accept connections."""
        log = open(self.folder / "log" / "console.log", "ab")  # noqa: SIM115 - the child holds it
        self.process = self._popen([str(SBIN / "rabbitmq-server")], stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        log.close()
        deadline = time.monotonic() + timeout
        while not all(_accepts(port) for port in (self.amqp_port, self.mqtt_port)):
            if time.monotonic() > deadline or self.process.poll() is not None:
                tail = (self.folder / "log" / "console.log").read_text(errors="replace")[-600:]
                self.stop()
                raise BrokerError(f"rabbitmq-server did not start on port {self.amqp_port}: {tail}")
            time.sleep(0.1)
        self.guard()

    def guard(self) -> None:
        """The topic permission a fleet's broker needs (:func:`streamer.sources.fleet.keys_guarded`): routing
        keys no AMQP consumer can be handed are refused before they are routed. Kept in the node's
        database, so a restart keeps it."""
        done = self.ctl("set_topic_permissions", "-p", VHOST, USER, "amq.topic", KEY_RULE, ".*")
        if done.returncode != 0:
            self.stop()
            raise BrokerError(f"rabbitmqctl set_topic_permissions failed: {done.stdout.strip()[-300:]}")

    def ctl(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """``rabbitmqctl -n NODE ARGS`` against this node."""
        process = self._popen([str(SBIN / "rabbitmqctl"), "-n", self.node, *args], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)  # fmt: skip
        out, _ = process.communicate(timeout=timeout)
        return subprocess.CompletedProcess(process.args, process.returncode, out, "")

    def stop(self) -> None:
        """Stop the node (``rabbitmqctl stop``; killed if that fails) and its own epmd."""
        if self.process is not None and self.process.poll() is None:
            try:
                self.ctl("stop", timeout=60)
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait(10)
        self.process = None
        epmd = shutil.which("epmd") or "/usr/bin/epmd"
        if Path(epmd).exists():  # only ours: it listens on this node's own port
            subprocess.run([epmd, "-port", str(self.epmd_port), "-kill"], env=self.env(),
                           capture_output=True, timeout=10)  # fmt: skip

    def queue_depths(self, prefix: str, count: int) -> list[int | None]:
        """The ready messages of queues ``PREFIX.0`` … ``PREFIX.{count-1}`` (a fleet's partitions), or
        None for a queue the node does not have (each asked on a channel of its own: the broker
        closes a channel that asks for a queue it does not have)."""
        connection = pika.BlockingConnection(parse_amqp(self.amqp_url).parameters("harstream look-up"))
        depths: list[int | None] = []
        try:
            for p in range(count):
                channel = connection.channel()
                try:
                    depths.append(channel.queue_declare(f"{prefix}.{p}", passive=True).method.message_count)
                    channel.close()
                except pika.exceptions.ChannelClosedByBroker:
                    depths.append(None)
        finally:
            connection.close()
        return depths

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> RabbitMQ:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False
