"""The chatops service's job store: its runs, their events and the Slack replay cache.

SQLite (one service, a file beside its config) by default; the control plane's PostgreSQL when the
config says ``store: {backend: postgresql}``, so the runs of a restarted or second service are there
(the schema is the ``serve`` component of ``exchpatch store migrate``). One connection, guarded by a
lock: the service writes from request handlers and job threads, a few rows at a time.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

STATES = ("awaiting_approval", "denied", "running", "finished", "interrupted", "canceled")
LIVE_STATES = ("awaiting_approval", "running")
_COLUMNS = ("id", "kind", "requester", "source", "params", "state", "outcome", "message", "job_id", "approval",
            "notify", "result", "created_at", "started_at", "finished_at")
_JSON = {"params", "approval", "notify", "result"}

_TABLES = (
    """CREATE TABLE IF NOT EXISTS exchpatch_serve_run (
         id text PRIMARY KEY, kind text NOT NULL, requester text NOT NULL, source text NOT NULL,
         params text NOT NULL, state text NOT NULL, outcome text, message text, job_id text, approval text,
         notify text, result text, created_at text NOT NULL, started_at text, finished_at text)""",
    "CREATE INDEX IF NOT EXISTS exchpatch_serve_run_state ON exchpatch_serve_run (state)",
    """CREATE TABLE IF NOT EXISTS exchpatch_serve_event (
         run_id text NOT NULL, seq integer NOT NULL, created_at text NOT NULL, kind text NOT NULL,
         data text NOT NULL, PRIMARY KEY (run_id, seq))""",
    """CREATE TABLE IF NOT EXISTS exchpatch_serve_replay (
         signature text PRIMARY KEY, expires_at double precision NOT NULL)""",
)
# `exchpatch store migrate` applies these as the "serve" component and grants the writer role what the service
# does: runs are updated as they progress, events and replay entries only added (replays also pruned).
MIGRATIONS: Sequence[tuple[int, Sequence[str]]] = ((1, _TABLES),)
GRANTS = (
    "GRANT SELECT, INSERT, UPDATE ON exchpatch_serve_run TO {role}",
    "GRANT SELECT, INSERT ON exchpatch_serve_event TO {role}",
    "GRANT SELECT, INSERT, DELETE ON exchpatch_serve_replay TO {role}",
)


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class StoreError(Exception):
    pass


class RunStore:
    """Runs, events and seen signatures; ``backend`` is ``sqlite`` (``path``) or ``postgresql`` (``dsn``)."""

    def __init__(self, backend: str, path: str | None = None, dsn: str | None = None) -> None:
        self.backend = backend
        self._lock = threading.RLock()
        if backend == "sqlite":
            self._conn: Any = sqlite3.connect(path or ":memory:", check_same_thread=False, isolation_level=None,
                                              timeout=30)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            for statement in _TABLES:
                self._conn.execute(statement)
            self._param = "?"
        else:
            from exchpatch.collection import module_utils

            store = module_utils("_store")
            conf = store.settings("postgresql", dsn)
            try:
                self._conn = store.connect(conf)
                store.ensure_schema(self._conn, "serve", MIGRATIONS)
            except store.StoreError as e:
                raise StoreError(str(e).replace("exchpatch store migrate", "exchpatch store migrate (it also "
                                                "creates the chatops service's tables)")) from None
            self._param = "%s"

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _cursor(self) -> Iterator[Any]:
        with self._lock:
            cur = self._conn.cursor()
            try:
                yield cur
            finally:
                cur.close()

    def _sql(self, text: str) -> str:
        return text.replace("?", self._param)

    # -- runs
    def create_run(self, run: dict[str, Any]) -> dict[str, Any]:
        row = {c: run.get(c) for c in _COLUMNS}
        row.update({c: json.dumps(row[c]) if row[c] is not None else None for c in _JSON})
        row["created_at"] = row["created_at"] or now_iso()
        with self._cursor() as cur:
            cur.execute(self._sql(f"INSERT INTO exchpatch_serve_run ({', '.join(_COLUMNS)}) VALUES "
                                  f"({', '.join('?' * len(_COLUMNS))})"), [row[c] for c in _COLUMNS])
        return self.get_run(run["id"]) or {}

    def update_run(self, run_id: str, expect_state: Sequence[str] | None = None, **changes: Any) -> bool:
        """Set ``changes``; with ``expect_state`` only when the run is in one of those states (True when it was)."""
        cols = list(changes)
        values = [json.dumps(changes[c]) if c in _JSON and changes[c] is not None else changes[c] for c in cols]
        sql = f"UPDATE exchpatch_serve_run SET {', '.join(f'{c} = ?' for c in cols)} WHERE id = ?"
        values.append(run_id)
        if expect_state:
            sql += f" AND state IN ({', '.join('?' * len(expect_state))})"
            values += list(expect_state)
        with self._cursor() as cur:
            cur.execute(self._sql(sql), values)
            return cur.rowcount == 1

    def _row(self, row: Sequence[Any]) -> dict[str, Any]:
        run = dict(zip(_COLUMNS, row))
        for c in _JSON:
            run[c] = json.loads(run[c]) if run[c] else None
        run["params"] = run["params"] or {}
        return run

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        with self._cursor() as cur:
            cur.execute(self._sql(f"SELECT {', '.join(_COLUMNS)} FROM exchpatch_serve_run WHERE id = ?"), [run_id])
            row = cur.fetchone()
        return self._row(row) if row else None

    def list_runs(self, limit: int = 50, states: Sequence[str] | None = None) -> list[dict[str, Any]]:
        sql = f"SELECT {', '.join(_COLUMNS)} FROM exchpatch_serve_run"
        values: list[Any] = []
        if states:
            sql += f" WHERE state IN ({', '.join('?' * len(states))})"
            values += list(states)
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        values.append(int(limit))
        with self._cursor() as cur:
            cur.execute(self._sql(sql), values)
            rows = cur.fetchall()
        return [self._row(r) for r in rows]

    # -- events
    def add_event(self, run_id: str, kind: str, data: dict[str, Any]) -> int:
        with self._cursor() as cur:
            cur.execute(self._sql("SELECT coalesce(max(seq), 0) FROM exchpatch_serve_event WHERE run_id = ?"),
                        [run_id])
            seq = int(cur.fetchone()[0]) + 1
            cur.execute(self._sql("INSERT INTO exchpatch_serve_event (run_id, seq, created_at, kind, data) VALUES "
                                  "(?, ?, ?, ?, ?)"), [run_id, seq, now_iso(), kind, json.dumps(data)])
        return seq

    def events(self, run_id: str, after: int = 0) -> list[dict[str, Any]]:
        with self._cursor() as cur:
            cur.execute(self._sql("SELECT seq, created_at, kind, data FROM exchpatch_serve_event WHERE run_id = ? "
                                  "AND seq > ? ORDER BY seq"), [run_id, after])
            rows = cur.fetchall()
        return [{"seq": s, "created_at": c, "kind": k, "data": json.loads(d)} for s, c, k, d in rows]

    # -- replay cache
    def seen_signature(self, signature: str, ttl: float) -> bool:
        """Record a request signature; True when it was already recorded and has not expired (a replay)."""
        now = time.time()
        with self._cursor() as cur:
            cur.execute(self._sql("DELETE FROM exchpatch_serve_replay WHERE expires_at < ?"), [now])
            cur.execute(self._sql("INSERT INTO exchpatch_serve_replay (signature, expires_at) VALUES (?, ?) "
                                  "ON CONFLICT (signature) DO NOTHING"), [signature, now + ttl])
            return cur.rowcount != 1
