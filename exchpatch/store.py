"""`exchpatch store`: create or migrate the PostgreSQL state store, and show what it holds.

    exchpatch store migrate [--admin-dsn-file FILE] [--writer-role exchpatch_writer]
    exchpatch store status

``migrate`` runs as the database owner: its DSN comes from a file (0600 or stricter) or
``EXCHPATCH_STATE_STORE_ADMIN_DSN``, never from the command line (``ps`` would show it). It is
idempotent: a second run applies nothing. ``status`` uses the controllers' own store setting
(``EXCHPATCH_STATE_STORE`` / ``EXCHPATCH_STATE_STORE_DSN``).
"""

from __future__ import annotations

import argparse
import os
import stat
from typing import Any

ENV_ADMIN_DSN = "EXCHPATCH_STATE_STORE_ADMIN_DSN"
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class StoreCliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _store():
    from exchpatch.collection import module_utils

    return module_utils("_store")


def _admin_dsn(path: str | None) -> str:
    if path:
        try:
            info = os.stat(path)
        except OSError as e:
            raise StoreCliError(f"--admin-dsn-file {path}: cannot read it ({e.strerror})", EXIT_BAD_INPUT) from None
        if not stat.S_ISREG(info.st_mode) or info.st_mode & 0o077:
            raise StoreCliError(f"--admin-dsn-file {path}: must be a regular file readable by its owner only "
                                f"(chmod 600 {path}); it holds the owner's password", EXIT_BAD_INPUT)
        with open(path, encoding="utf-8") as fh:
            dsn = fh.read().strip()
        if not dsn:
            raise StoreCliError(f"--admin-dsn-file {path}: the file is empty; write the owner's DSN in it",
                                EXIT_BAD_INPUT)
        return dsn
    dsn = os.environ.get(ENV_ADMIN_DSN, "").strip()
    if not dsn:
        raise StoreCliError(f"give the database owner's DSN in a 0600 file (--admin-dsn-file) or {ENV_ADMIN_DSN}",
                            EXIT_BAD_INPUT)
    return dsn


def cmd_migrate(args: argparse.Namespace) -> tuple[int, Any, str]:
    store = _store()
    conf = store.settings("postgresql", _admin_dsn(args.admin_dsn_file))
    try:
        with store.connect(conf) as conn:
            applied = store.migrate(conn, writer_role=args.writer_role)
            # the chatops service's runs, events and replay cache (exchpatch serve with store: postgresql)
            from exchpatch.serve.store import GRANTS, MIGRATIONS

            serve = store.migrate(conn, "serve", MIGRATIONS, writer_role=args.writer_role, grants=GRANTS)
            applied += [f"serve {v}" for v in serve]
            versions = store.schema_versions(conn)
    except store.StoreError as e:
        raise StoreCliError(str(e), EXIT_FAILED) from None
    doc = {"store": store.describe(conf), "applied": applied, "versions": versions, "writer_role": args.writer_role}
    done = f"applied version(s) {', '.join(map(str, applied))}" if applied else "already up to date"
    return EXIT_OK, doc, f"state store {store.describe(conf)}: {done}; writer role {args.writer_role} granted"


def cmd_status(args: argparse.Namespace) -> tuple[int, Any, str]:
    store = _store()
    try:
        conf = store.settings()
    except store.StoreError as e:
        raise StoreCliError(str(e), EXIT_BAD_INPUT) from None
    if not conf.is_postgresql:
        return EXIT_OK, {"store": "file"}, ("state store: file (this controller's disk; set EXCHPATCH_STATE_STORE="
                                            "postgresql and EXCHPATCH_STATE_STORE_DSN to share one with a team)")
    try:
        with store.connect(conf) as conn:
            store.ensure_schema(conn)
            with conn.cursor() as cur:
                cur.execute("SELECT scope, owner, run_id, token, expires_at > now(), expires_at FROM exchpatch_lease "
                            "ORDER BY scope")
                leases = [{"scope": s, "owner": o, "run_id": r, "token": t, "live": live, "expires_at": e.isoformat()}
                          for s, o, r, t, live, e in cur.fetchall()]
                cur.execute("SELECT count(*), coalesce(max(seq), 0) FROM exchpatch_audit")
                row = cur.fetchone() or (0, 0)
            versions = store.schema_versions(conn)
    except store.StoreError as e:
        raise StoreCliError(str(e), EXIT_FAILED) from None
    doc = {"store": store.describe(conf), "versions": versions, "leases": leases,
           "audit_records": row[0], "audit_last_seq": row[1]}
    lines = [f"state store: {doc['store']} (schema {versions})", f"audit records: {row[0]}"]
    lines += [f"lease {x['scope']}: {x['owner']} run {x['run_id']} token {x['token']} "
              f"{'until' if x['live'] else 'EXPIRED at'} {x['expires_at']}" for x in leases] or ["no lease held"]
    return EXIT_OK, doc, "\n".join(lines)


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register `exchpatch store ...` on the driver's subparsers."""
    p = sub.add_parser("store", help="the shared state store (PostgreSQL): migrate, status")
    ssub = p.add_subparsers(dest="store_command", required=True)
    p = ssub.add_parser("migrate", parents=[common], help="create or upgrade the schema (as the database owner)")
    p.add_argument("--admin-dsn-file", metavar="FILE",
                   help=f"0600 file holding the owner's DSN (default: ${ENV_ADMIN_DSN})")
    p.add_argument("--writer-role", default="exchpatch_writer", metavar="ROLE",
                   help="the controllers' login role to grant (default exchpatch_writer)")
    p.set_defaults(func=cmd_migrate)
    p = ssub.add_parser("status", parents=[common], help="schema version, leases held, audit records")
    p.set_defaults(func=cmd_status)
