"""Fixtures shared by every test folder: one real PostgreSQL server per session (tests/pgserver.py),
a fresh database for each test that asks for one."""

from __future__ import annotations

import re

import pytest

from tests.pgserver import PgServer


@pytest.fixture(scope="session")
def pg_server():
    server = PgServer.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_db(pg_server, request):
    """A migrated database of its own for this test: .admin_dsn (owner) and .writer_dsn (the controllers' role)."""
    name = "t_" + re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:50]
    db = pg_server.database(name)
    try:
        yield db
    finally:
        pg_server.drop(name)
