# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The audit trail in the PostgreSQL state store: one chain for every controller.

Tables (``_store`` migration v1): ``exchpatch_audit(seq, run, kind, record, hash, written_at)``,
append-only by trigger and by the writer role's grants (SELECT, INSERT), and
``exchpatch_audit_head(id = 1, seq, hash)``, the last link. An append runs in one transaction
that locks the head row ``FOR UPDATE`` first, so appends from every controller are serialised by
the database and form one chain in ``seq`` order; the rows and the head move together or not at
all. ``record`` holds the record's canonical JSON, the same line the file trail holds, so the
same :func:`_audit.check` verifies both and an export is the file format.

Verify adds what only the table can tell: a row whose ``seq``/``hash``/``run``/``kind`` columns
disagree with its record (edited by someone who got past the trigger), and a head that names a
later record than the last row (records removed from the end). psycopg is imported lazily
(through ``_store``): the file backend never needs it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from ansible_collections.exchangeops.patching.plugins.module_utils import _store
from ansible_collections.exchangeops.patching.plugins.module_utils._audit import (
    GENESIS,
    AuditError,
    Problem,
    Trail,
    TrailUnavailable,
    Verification,
    canonical,
    chain,
    check,
)


class PgTrail(Trail):
    """The ``exchpatch_audit`` table. One connection, opened on first use and again after it broke."""

    def __init__(self, conf: _store.StoreSettings, key: bytes | None = None) -> None:
        self.conf = conf
        self.key = key
        self.where = _store.describe(conf)
        self._conn: Any = None

    # --- connection ------------------------------------------------------------------------

    def _connection(self) -> Any:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        try:
            conn = _store.connect(self.conf)
        except _store.StoreError as e:
            raise TrailUnavailable(f"audit trail in {self.where}: {e}") from e
        try:
            _store.ensure_schema(conn)
        except _store.StoreError as e:
            conn.close()
            raise AuditError(str(e)) from e
        self._conn = conn
        return conn

    def _failed(self, error: Exception, doing: str) -> AuditError:
        psycopg = _store._psycopg()  # pylint: disable=protected-access
        broken = self._conn is None or self._conn.closed or isinstance(error, psycopg.OperationalError)
        if broken:
            self.close()
            return TrailUnavailable(f"audit trail in {self.where}: the database went away while {doing} "
                                    f"({_store.first_line(error)}); the records were not written")
        return AuditError(f"audit trail in {self.where}: cannot {doing} ({_store.first_line(error)}); "
                          "check the writer role's grants (exchpatch store migrate --writer-role ...)")

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # closing a dead connection
                self._conn.close()
        self._conn = None

    # --- writing ---------------------------------------------------------------------------

    def append(self, records: Iterable[Mapping[str, Any]], now: dt.datetime | None = None) -> list[dict[str, Any]]:
        batch = list(records)
        if not batch:
            return []
        conn = self._connection()
        psycopg = _store._psycopg()  # pylint: disable=protected-access
        try:
            with conn.transaction(), conn.cursor() as cur:
                # the head row exists from the first append on; an empty table may create it
                cur.execute("INSERT INTO exchpatch_audit_head (id, seq, hash) SELECT 1, 0, %s "
                            "WHERE NOT EXISTS (SELECT 1 FROM exchpatch_audit) ON CONFLICT (id) DO NOTHING",
                            (GENESIS,))
                cur.execute("SELECT seq, hash FROM exchpatch_audit_head WHERE id = 1 FOR UPDATE")
                head = cur.fetchone()
                if head is None:
                    raise AuditError(f"audit trail in {self.where}: the head row (exchpatch_audit_head) is missing "
                                     "while the table holds records: someone with owner rights removed it; run "
                                     "exchpatch audit verify and investigate before writing more")
                out = chain(batch, int(head[0]), str(head[1]), self.key, now)
                cur.executemany("INSERT INTO exchpatch_audit (seq, run, kind, record, hash) "
                                "VALUES (%s, %s, %s, %s, %s)",
                                [(r["seq"], str(r.get("run")), str(r.get("kind")), canonical(r), r["hash"])
                                 for r in out])
                cur.execute("UPDATE exchpatch_audit_head SET seq = %s, hash = %s WHERE id = 1",
                            (out[-1]["seq"], out[-1]["hash"]))
            return out
        except psycopg.Error as e:
            raise self._failed(e, "appending records") from e

    # --- reading ---------------------------------------------------------------------------

    def _snapshot(self) -> tuple[list[tuple[Any, ...]], tuple[Any, ...] | None]:
        """Every row in seq order and the head, from one snapshot (an append in between would
        otherwise look like records removed from the end)."""
        conn = self._connection()
        psycopg = _store._psycopg()  # pylint: disable=protected-access
        try:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                cur.execute("SELECT seq, run, kind, record, hash FROM exchpatch_audit ORDER BY seq")
                rows = cur.fetchall()
                cur.execute("SELECT seq, hash FROM exchpatch_audit_head WHERE id = 1")
                head = cur.fetchone()
            return rows, head
        except psycopg.Error as e:
            raise self._failed(e, "reading the trail") from e

    def entries(self) -> Iterator[tuple[int, str, bool]]:
        rows, _head = self._snapshot()
        return iter([(number, str(row[3]), True) for number, row in enumerate(rows, 1)])

    def verify(self) -> Verification:
        rows, head = self._snapshot()
        v = check(((number, str(row[3]), True) for number, row in enumerate(rows, 1)), self.key)
        for number, (seq, run, kind, text, stored) in enumerate(rows, 1):
            try:
                rec = json.loads(text)
            except ValueError:
                continue
            if not isinstance(rec, dict):
                continue
            if rec.get("seq") != seq or rec.get("hash") != stored or str(rec.get("run")) != run \
                    or str(rec.get("kind")) != kind:
                v.problems.append(Problem(number, int(seq), "the row's seq, hash, run or kind columns do not match "
                                                            "its record: the row was edited past the trigger"))
        last_seq, last_hash = (int(rows[-1][0]), str(rows[-1][4])) if rows else (0, GENESIS)
        end = len(rows) or 1
        if head is None:
            if rows:
                v.problems.append(Problem(end, last_seq, "the head row (exchpatch_audit_head) is missing: it was "
                                                         "removed by someone with owner rights"))
        elif int(head[0]) > last_seq:
            v.problems.append(Problem(end, last_seq, f"records removed from the end: the head names seq {head[0]}, "
                                                     f"the last record is seq {last_seq}"))
        elif int(head[0]) != last_seq or str(head[1]) != last_hash:
            v.problems.append(Problem(end, last_seq, f"the head (seq {head[0]}) does not match the last record "
                                                     f"(seq {last_seq}): rows were added or the head edited past "
                                                     "the append transaction"))
        v.problems.sort(key=lambda p: p.line)
        return v
