"""A private PostgreSQL server on a free loopback port: for the tests and for ``harstream soak
--faults`` (as :mod:`streamer.tools.rabbitmq` starts a private RabbitMQ node).

    with Postgres() as server:
        server.url                 # postgresql://har@127.0.0.1:PORT/postgres
        frozen = server.freeze()   # SIGSTOP: a frozen host, a paused VM
        server.thaw(frozen)

Everything it keeps is in a folder of its own under /tmp (its data, socket and log), removed by
:meth:`Postgres.stop` when the server made it. The server refuses to run as root, so as root that
folder is handed to the ``postgres`` user and ``initdb``/``pg_ctl`` run as that user. Not under
pytest's folders: another pytest run resets its base folder to 0700, which would lock the postgres
user out of a running server's files.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from streamer.tools.private_mosquitto import free_port

USER = "har"  # the superuser initdb makes (trust authentication, loopback only)


class PostgresError(RuntimeError):
    """PostgreSQL is not installed, or the server did not start: one line."""


def postgres_bin() -> Path | None:
    """Debian's server binaries (``/usr/lib/postgresql/<version>/bin``, the newest), or None."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: _version(p.parent.parent))
    if found:
        return found[-1].parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


def _version(folder: Path) -> float:
    try:
        return float(folder.name)
    except ValueError:
        return 0.0


def postgres_installed() -> bool:
    return postgres_bin() is not None


class Postgres:
    """A real PostgreSQL server on ``127.0.0.1``, started at once (a few seconds)."""

    def __init__(self, folder: Path | None = None, start: bool = True) -> None:
        binaries = postgres_bin()
        if binaries is None:
            raise PostgresError("PostgreSQL is not installed (no pg_ctl): apt-get install -y postgresql")
        self.bin = binaries
        self._own_folder = folder is None  # made here: removed by stop()
        self.folder = Path(folder or tempfile.mkdtemp(prefix="harstream-postgres-"))
        self.port = free_port()
        self.data = self.folder / "data"
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if os.geteuid() == 0:
            self._hand_to_postgres()
        self.url = f"postgresql://{USER}@127.0.0.1:{self.port}/postgres"
        if start:
            self.start()

    def _hand_to_postgres(self) -> None:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresError("running as root, and no postgres user to run the server as") from None
        for path in (self.folder, *self.folder.parents):  # the server must reach its folder
            if path == Path("/"):
                break
            os.chmod(path, os.stat(path).st_mode | 0o711)
        shutil.chown(self.folder, user.pw_uid, user.pw_gid)

    def start(self) -> None:
        """initdb (once) and start the server; return once it accepts connections."""
        if not (self.data / "PG_VERSION").exists():
            self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", USER, "--no-sync")
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.folder / "log")
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", log, "-w", "start")

    def _run(self, program: str, *args: str) -> None:
        command = [*self.as_postgres, str(self.bin / program), *args]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise PostgresError(f"{program} failed: {error}") from None
        if done.returncode != 0:
            log = self.folder / "log"
            tail = log.read_text(errors="replace")[-500:] if log.exists() else ""
            why = " ".join(f"{done.stderr.strip()} {tail}".split())  # one line
            raise PostgresError(f"{program} failed on port {self.port}: {why}")

    def processes(self) -> list[int]:
        """The postmaster (from its data folder's postmaster.pid) and every process it started."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:  # it ended meanwhile
                continue
            if int(fields[1]) == postmaster:  # fields[1]: the parent's pid
                children.append(int(stat.parent.name))
        return [postmaster, *children]

    def freeze(self) -> list[int]:
        """SIGSTOP the whole server (the postmaster first, so it starts nobody new): a frozen host, a
        paused VM. The kernel still accepts connections and acknowledges what clients send."""
        pids = self.processes()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        return pids

    def thaw(self, pids: list[int]) -> None:
        for pid in reversed(pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def database(self, name: str) -> str:
        """A fresh database on this server, its URL (users that share one server stay apart)."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url.rsplit("/", 1)[0] + f"/{name}"

    def stop(self) -> None:
        """Stop the server (fast: open connections are ended); remove the folder if it was made here."""
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(OSError, ValueError, IndexError):  # a frozen server would never stop
                self.thaw(self.processes())
            command = [*self.as_postgres, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast",
                       "stop"]  # fmt: skip
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                subprocess.run(command, capture_output=True, timeout=60)
        if self._own_folder:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> Postgres:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
