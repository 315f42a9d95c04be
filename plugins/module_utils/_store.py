# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The control plane's state store: which backend, how to reach it, and its schema.

Two backends share one setting:

* ``file`` (the embedded default): the lease, audit trail and approvals live in files on this
  controller, as they always have. The demo and a single operator need nothing else.
* ``postgresql``: one PostgreSQL database every controller (shell, AWX job, chatops service)
  reaches. Chosen by ``exchange_state_store: postgresql`` in the inventory or
  ``EXCHPATCH_STATE_STORE=postgresql``; the DSN comes from ``exchange_state_store_dsn`` (vaulted,
  or an AWX credential) or ``EXCHPATCH_STATE_STORE_DSN``, never from plain inventory text.

The schema is versioned per component (``core``, and any component a module adds with its own
migration list) in ``exchpatch_schema``; :func:`ensure_schema` applies what is missing under a
transaction-scoped advisory lock, so two controllers starting at once migrate once. Every
migration is idempotent SQL. psycopg 3 is imported lazily: the file backend never needs it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

BACKENDS = ("file", "postgresql")
DEFAULT_BACKEND = "file"
ENV_BACKEND = "EXCHPATCH_STATE_STORE"
ENV_DSN = "EXCHPATCH_STATE_STORE_DSN"
# Role names the migrations grant to; a team may create its own and pass them to migrate().
WRITER_ROLE = "exchpatch_writer"
# pg_advisory_xact_lock key: "exchpatch" as a number, shared by every controller migrating the schema.
_MIGRATION_LOCK = 0x65786368706174
_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

# Core tables; statements run in order inside one transaction per version.
CORE_MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (1, (
        # --- the rollout lease: one row per shard or chain; the token sequence only grows
        "CREATE SEQUENCE IF NOT EXISTS exchpatch_fence_seq AS bigint",
        """CREATE TABLE IF NOT EXISTS exchpatch_lease (
             scope text PRIMARY KEY,
             owner text NOT NULL,
             run_id text NOT NULL,
             patch text,
             token bigint NOT NULL,
             ttl integer NOT NULL CHECK (ttl > 0),
             acquired_at timestamptz NOT NULL,
             renewed_at timestamptz NOT NULL,
             expires_at timestamptz NOT NULL,
             host text NOT NULL DEFAULT '',
             pid integer NOT NULL DEFAULT 0)""",
        # --- the audit trail: append-only, one chain for every controller
        """CREATE TABLE IF NOT EXISTS exchpatch_audit (
             seq bigint PRIMARY KEY,
             run text NOT NULL,
             kind text NOT NULL,
             record text NOT NULL,
             hash text NOT NULL,
             written_at timestamptz NOT NULL DEFAULT now())""",
        """CREATE TABLE IF NOT EXISTS exchpatch_audit_head (
             id integer PRIMARY KEY CHECK (id = 1),
             seq bigint NOT NULL,
             hash text NOT NULL)""",
        """CREATE OR REPLACE FUNCTION exchpatch_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
             RAISE EXCEPTION 'exchpatch_audit is append-only: % refused', TG_OP
               USING ERRCODE = 'insufficient_privilege';
           END $$""",
        "DROP TRIGGER IF EXISTS exchpatch_audit_no_change ON exchpatch_audit",
        """CREATE TRIGGER exchpatch_audit_no_change BEFORE UPDATE OR DELETE ON exchpatch_audit
             FOR EACH ROW EXECUTE FUNCTION exchpatch_audit_append_only()""",
        "DROP TRIGGER IF EXISTS exchpatch_audit_no_truncate ON exchpatch_audit",
        """CREATE TRIGGER exchpatch_audit_no_truncate BEFORE TRUNCATE ON exchpatch_audit
             FOR EACH STATEMENT EXECUTE FUNCTION exchpatch_audit_append_only()""",
        # --- signed approvals, for other controllers and the chatops service to find
        """CREATE TABLE IF NOT EXISTS exchpatch_approval (
             id text PRIMARY KEY,
             kind text NOT NULL,
             patch_id text NOT NULL,
             operator text NOT NULL,
             approver text NOT NULL,
             fingerprint text NOT NULL,
             not_after timestamptz NOT NULL,
             document text NOT NULL,
             signature text NOT NULL,
             created_at timestamptz NOT NULL DEFAULT now())""",
    )),
)

# What the writer role (every controller's login) may do, per table; nothing else is granted.
WRITER_GRANTS: tuple[str, ...] = (
    "GRANT SELECT, INSERT, UPDATE, DELETE ON exchpatch_lease TO {role}",
    "GRANT USAGE, SELECT ON SEQUENCE exchpatch_fence_seq TO {role}",
    "GRANT SELECT, INSERT ON exchpatch_audit TO {role}",
    "REVOKE UPDATE, DELETE, TRUNCATE ON exchpatch_audit FROM {role}",
    "GRANT SELECT, INSERT, UPDATE ON exchpatch_audit_head TO {role}",
    "GRANT SELECT, INSERT ON exchpatch_approval TO {role}",
    "GRANT SELECT ON exchpatch_schema TO {role}",
)


class StoreError(Exception):
    """The state store cannot be used as configured; the message names the setting and the fix."""


@dataclass(frozen=True)
class StoreSettings:
    """Which backend, and for postgresql the DSN (a secret: never log it, see :func:`describe`)."""

    backend: str = DEFAULT_BACKEND
    dsn: str | None = None
    connect_timeout: int = 10

    @property
    def is_postgresql(self) -> bool:
        return self.backend == "postgresql"


def settings(backend: str | None = None, dsn: str | None = None, environ: Mapping[str, str] | None = None,
             connect_timeout: int = 10) -> StoreSettings:
    """Resolve the backend and DSN: explicit values (module options / inventory) first, then
    ``EXCHPATCH_STATE_STORE`` / ``EXCHPATCH_STATE_STORE_DSN``, then the file default."""
    env = os.environ if environ is None else environ
    chosen = (backend or env.get(ENV_BACKEND) or DEFAULT_BACKEND).strip().lower()
    if chosen not in BACKENDS:
        raise StoreError(f"state store {chosen!r} is unknown; set exchange_state_store (or {ENV_BACKEND}) to one "
                         f"of {', '.join(BACKENDS)}")
    url = dsn or env.get(ENV_DSN) or None
    if chosen == "postgresql" and not url:
        raise StoreError("the postgresql state store needs a DSN: set exchange_state_store_dsn from the vault or an "
                         f"AWX credential (or {ENV_DSN} in the environment), e.g. "
                         "host=db.internal dbname=exchpatch user=exchpatch_writer password=...")
    if isinstance(connect_timeout, bool) or not isinstance(connect_timeout, int) or connect_timeout <= 0:
        raise StoreError(f"connect_timeout must be a positive number of seconds (got {connect_timeout!r})")
    return StoreSettings(chosen, url if chosen == "postgresql" else None, connect_timeout)


def describe(conf: StoreSettings) -> str:
    """The store for messages and records: the backend and the DSN's host/port/dbname/user, never its password."""
    if not conf.is_postgresql:
        return "file"
    try:
        from psycopg.conninfo import conninfo_to_dict  # pylint: disable=import-outside-toplevel
        parts = conninfo_to_dict(conf.dsn or "")
    except Exception:  # pylint: disable=broad-except  # noqa: BLE001 - a DSN we cannot parse is described as such
        return "postgresql (unparseable DSN)"
    shown = [f"{k}={parts[k]}" for k in ("host", "port", "dbname", "user") if parts.get(k)]
    return "postgresql " + " ".join(shown)


def _psycopg():
    try:
        import psycopg  # pylint: disable=import-outside-toplevel
    except ImportError as e:
        raise StoreError("the postgresql state store needs psycopg 3 on the controller (pip install 'psycopg[binary]'; "
                         "it is in requirements/dev.txt and the execution environment)") from e
    return psycopg


def connect(conf: StoreSettings, autocommit: bool = True):
    """A psycopg connection to the store; StoreError naming the store (not the password) when it fails."""
    if not conf.is_postgresql:
        raise StoreError("connect() is for the postgresql state store; the file store needs no connection")
    psycopg = _psycopg()
    try:
        return psycopg.connect(conf.dsn, autocommit=autocommit, connect_timeout=conf.connect_timeout,
                               application_name="exchpatch")
    except psycopg.Error as e:
        raise StoreError(f"cannot reach the state store ({describe(conf)}): {first_line(e)}; check that the server "
                         "runs and the DSN's host, port, user and password (exchange_state_store_dsn)") from e


def first_line(error: BaseException) -> str:
    """The first line of a database error, without anything that could carry the DSN."""
    text = str(error).strip().splitlines()
    line = text[0] if text else error.__class__.__name__
    return re.sub(r"password=\S+", "password=<redacted>", line)


def schema_versions(conn) -> dict[str, int]:
    """{component: applied version}; empty when the schema was never created."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('exchpatch_schema') IS NOT NULL")
        row = cur.fetchone()
        if not row or not row[0]:
            return {}
        cur.execute("SELECT component, max(version) FROM exchpatch_schema GROUP BY component")
        return {name: int(version) for name, version in cur.fetchall()}


def _check_role(role: str) -> str:
    if not _IDENT.match(role):
        raise StoreError(f"role {role!r} is not a plain lower-case PostgreSQL identifier; use e.g. {WRITER_ROLE}")
    return role


def migrate(conn, component: str = "core", migrations: Sequence[tuple[int, Sequence[str]]] = CORE_MIGRATIONS,
            writer_role: str | None = None, grants: Sequence[str] = WRITER_GRANTS) -> list[int]:
    """Apply the versions of ``component`` not yet applied, each in one transaction, under an advisory lock;
    then (when ``writer_role`` is given) grant it exactly ``grants``. Returns the versions applied now.
    Run it with the owner's (admin's) connection; idempotent."""
    applied: list[int] = []
    psycopg = _psycopg()
    try:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            cur.execute("""CREATE TABLE IF NOT EXISTS exchpatch_schema (
                                 component text NOT NULL,
                                 version integer NOT NULL,
                                 applied_at timestamptz NOT NULL DEFAULT now(),
                                 PRIMARY KEY (component, version))""")
            cur.execute("SELECT coalesce(max(version), 0) FROM exchpatch_schema WHERE component = %s",
                        (component,))
            row = cur.fetchone()
            current = int(row[0]) if row else 0
            for version, statements in sorted(migrations):
                if version <= current:
                    continue
                for statement in statements:
                    cur.execute(statement)
                cur.execute("INSERT INTO exchpatch_schema (component, version) VALUES (%s, %s)",
                            (component, version))
                applied.append(version)
            if writer_role:
                role = _check_role(writer_role)
                for grant in grants:
                    cur.execute(grant.format(role=role))
    except psycopg.Error as e:
        raise StoreError(f"cannot migrate the state store schema ({component}): {first_line(e)}; run the migration "
                         "as the database owner (exchpatch store migrate --admin-dsn ...)") from e
    return applied


def ensure_schema(conn, component: str = "core",
                  migrations: Sequence[tuple[int, Sequence[str]]] = CORE_MIGRATIONS) -> None:
    """Refuse to work on a schema older than this code: a writer cannot (and must not) migrate it."""
    latest = max(version for version, _statements in migrations)
    have = schema_versions(conn).get(component, 0)
    if have < latest:
        raise StoreError(f"the state store's schema ({component}) is at version {have}, this code needs {latest}; "
                         "have the database owner run: exchpatch store migrate --admin-dsn DSN "
                         f"--writer-role {WRITER_ROLE}")
    if have > latest:
        raise StoreError(f"the state store's schema ({component}) is at version {have}, newer than this code "
                         f"({latest}); upgrade exchangeops.patching on this controller")


def now(conn) -> Any:
    """The database's time (timestamptz): leases and approvals trust no controller clock."""
    with conn.cursor() as cur:
        cur.execute("SELECT now()")
        row = cur.fetchone()
    return row[0] if row else None
