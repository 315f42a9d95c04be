"""The PostgreSQL state store's schema and `exchpatch store`, against a real server (tests/pgserver.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from ansible_collections.exchangeops.patching.plugins.module_utils import _store

BIN = Path(sys.executable).parent


def exchpatch(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("EXCHPATCH_STATE_STORE")}
    return subprocess.run([str(BIN / "exchpatch"), *args], capture_output=True, text=True, timeout=60, check=False,
                          env={**full, **(env or {})})


def test_migrate_creates_the_schema_once_from_a_private_dsn_file(pg_server, tmp_path):
    db = pg_server.database("t_store_migrate", migrate=False)
    try:
        dsn_file = tmp_path / "admin.dsn"
        dsn_file.write_text(db.admin_dsn + "\n")
        dsn_file.chmod(0o644)
        loose = exchpatch("store", "migrate", "--admin-dsn-file", str(dsn_file))
        assert loose.returncode == 2 and "chmod 600" in loose.stderr, loose.stderr
        with psycopg.connect(db.admin_dsn) as conn:
            assert _store.schema_versions(conn) == {}  # refused: nothing was created
        dsn_file.chmod(0o600)
        first = exchpatch("store", "migrate", "--admin-dsn-file", str(dsn_file), "--json")
        assert first.returncode == 0, first.stderr
        doc = json.loads(first.stdout)
        assert doc["applied"] == [1, "serve 1"] and doc["versions"] == {"core": 1, "serve": 1}
        assert pg_server.admin_password not in first.stdout + first.stderr
        again = exchpatch("store", "migrate", "--admin-dsn-file", str(dsn_file), "--json")
        assert again.returncode == 0 and json.loads(again.stdout)["applied"] == []
        env = {"EXCHPATCH_STATE_STORE": "postgresql", "EXCHPATCH_STATE_STORE_DSN": db.writer_dsn}
        status = exchpatch("store", "status", "--json", env=env)
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["leases"] == [] and pg_server.writer_password not in status.stdout
    finally:
        pg_server.drop("t_store_migrate")


def test_the_writer_role_may_only_append_to_the_audit_table(pg_db):
    with psycopg.connect(pg_db.writer_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO exchpatch_audit (seq, run, kind, record, hash) VALUES (1, 'r', 'event', '{}', 'h')")
        for statement in ("UPDATE exchpatch_audit SET run = 'x'", "DELETE FROM exchpatch_audit",
                          "TRUNCATE exchpatch_audit", "DROP TABLE exchpatch_audit",
                          "ALTER TABLE exchpatch_audit DISABLE TRIGGER exchpatch_audit_no_change"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
    # even the owner's UPDATE and DELETE are refused by the trigger (only disabling it, which verify then catches,
    # gets past)
    with psycopg.connect(pg_db.admin_dsn, autocommit=True) as conn:
        for statement in ("UPDATE exchpatch_audit SET run = 'x'", "DELETE FROM exchpatch_audit"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                conn.execute(statement)
        assert conn.execute("SELECT run FROM exchpatch_audit").fetchall() == [("r",)]


def test_a_writer_never_migrates_and_an_old_schema_is_refused(pg_server):
    db = pg_server.database("t_store_old", migrate=False)
    try:
        conf = _store.settings("postgresql", db.writer_dsn)
        with _store.connect(conf) as conn:
            with pytest.raises(_store.StoreError, match=r"version 0, this code needs 1.*exchpatch store migrate"):
                _store.ensure_schema(conn)
            with pytest.raises(_store.StoreError, match="as the database owner"):
                _store.migrate(conn)
    finally:
        pg_server.drop("t_store_old")


def test_store_settings_name_the_fix_and_never_the_password():
    with pytest.raises(_store.StoreError, match=r"exchange_state_store .*file, postgresql"):
        _store.settings("etcd")
    with pytest.raises(_store.StoreError, match="needs a DSN"):
        _store.settings("postgresql", environ={})
    conf = _store.settings(None, None, {"EXCHPATCH_STATE_STORE": "postgresql",
                                        "EXCHPATCH_STATE_STORE_DSN": "host=db port=5433 user=w password=hunter2"})
    assert conf.is_postgresql and "hunter2" not in _store.describe(conf)
    assert _store.settings(environ={}).backend == "file"
    with pytest.raises(_store.StoreError) as err:
        _store.connect(_store.settings("postgresql", "host=127.0.0.1 port=1 user=w password=hunter2 connect_timeout=2"))
    assert "hunter2" not in str(err.value) and "cannot reach the state store" in str(err.value)
