"""A real PostgreSQL server for the tests, on a free loopback port in a temporary folder of its own
(DESIGN.md, "Services the tests start"; the server itself: :class:`streamer.tools.postgres.Postgres`). A
server that cannot start fails the test: CI installs PostgreSQL (.ci/run), so a missing one is a
broken setup, not a skip."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from streamer.tools.postgres import Postgres, PostgresError

__all__ = ["Postgres", "postgres", "postgres_server"]


def _server() -> Iterator[Postgres]:
    try:
        server = Postgres()  # its own folder under /tmp, removed by stop()
    except PostgresError as error:
        pytest.fail(f"{error} (.ci/run installs Debian's postgresql)")
    yield server
    server.stop()


@pytest.fixture
def postgres() -> Iterator[Postgres]:
    yield from _server()


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[Postgres]:
    """One server for a module's tests; each test takes a database of its own (Postgres.database)."""
    yield from _server()
