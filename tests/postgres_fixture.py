"""A real PostgreSQL 15 server for the tests, on a free loopback port in a temporary folder
(DESIGN.md, "Services the tests start"): the server refuses to run as root, so the folder is given
to the ``postgres`` user and ``initdb``/``pg_ctl`` run as that user. A server that cannot start fails
the test: CI installs PostgreSQL (.ci/run), so a missing one is a broken setup, not a skip."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamer.broker import free_port

BIN = Path("/usr/lib/postgresql/15/bin")


class Postgres:
    def __init__(self, folder: Path) -> None:
        if not (BIN / "pg_ctl").exists():
            pytest.fail(f"PostgreSQL 15 is not installed ({BIN}): .ci/run installs Debian's postgresql")
        self.folder = folder
        self.port = free_port()
        self.data = folder / "data"
        self.as_postgres = [] if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--"]
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            for path in (folder, *folder.parents):  # the server must reach its folder
                if path == Path("/"):
                    break
                os.chmod(path, os.stat(path).st_mode | 0o711)
            shutil.chown(folder, user.pw_uid, user.pw_gid)
        self._run(str(BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "har", "--no-sync")
        options = f"-p {self.port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(str(BIN / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(folder / "log"), "-w",
                  "start")  # fmt: skip
        self.url = f"postgresql://har@127.0.0.1:{self.port}/postgres"

    def _run(self, *command: str) -> None:
        done = subprocess.run([*self.as_postgres, *command], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            log = (self.folder / "log").read_text() if (self.folder / "log").exists() else ""
            pytest.fail(f"{Path(command[0]).name} failed: {done.stderr.strip()} {log[-500:]}")

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
        """A fresh database on this server, its URL (tests that share one server stay apart)."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url.rsplit("/", 1)[0] + f"/{name}"

    def stop(self) -> None:
        command = [*self.as_postgres, str(BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop"]
        subprocess.run(command, capture_output=True, timeout=60)


def _server() -> Iterator[Postgres]:
    # A folder of its own, not under pytest's: another pytest run resets its base folder to 0700,
    # which would lock the postgres user out of a running server's files.
    folder = Path(tempfile.mkdtemp(prefix="harstream-postgres-"))
    server = Postgres(folder)
    yield server
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def postgres() -> Iterator[Postgres]:
    yield from _server()


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[Postgres]:
    """One server for a module's tests; each test takes a database of its own (Postgres.database)."""
    yield from _server()
