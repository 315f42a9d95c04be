"""A real PostgreSQL server for the tests: initdb in a temporary folder as an unprivileged user
(``nobody``), listening on a free loopback port only (no Unix socket), password authentication,
stopped by its postmaster's pid. One server per test session; each test gets its own database.

    server = PgServer.start()
    db = server.database("t_lease")       # fresh database, schema migrated, writer role granted
    db.writer_dsn / db.admin_dsn
    server.stop()
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

RUN_AS = "nobody"
ADMIN = "exchpatch_admin"
WRITER = "exchpatch_writer"


def pg_bin(name: str) -> str:
    """A PostgreSQL server program from Debian's postgresql package (newest major installed)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    if found:
        return found[-1]
    path = shutil.which(name)
    if path:
        return path
    raise RuntimeError(f"{name} not found: install Debian's postgresql package (make setup does)")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _as_user(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", "--reuid", RUN_AS, "--regid", "nogroup", "--clear-groups", *cmd],
                          capture_output=True, text=True, check=False, **kw)


@dataclass
class Database:
    name: str
    admin_dsn: str
    writer_dsn: str


@dataclass
class PgServer:
    root: str
    port: int
    pid: int
    admin_password: str
    writer_password: str
    host: str = "127.0.0.1"

    @property
    def data(self) -> str:
        return os.path.join(self.root, "data")

    def dsn(self, user: str, password: str, dbname: str = "postgres") -> str:
        return f"host={self.host} port={self.port} dbname={dbname} user={user} password={password} connect_timeout=5"

    @property
    def admin_dsn(self) -> str:
        return self.dsn(ADMIN, self.admin_password)

    @classmethod
    def start(cls, host: str = "127.0.0.1") -> PgServer:
        root = tempfile.mkdtemp(prefix="exchpatch-pg-")
        os.chmod(root, 0o755)
        data = os.path.join(root, "data")
        admin_pw, writer_pw = secrets.token_hex(16), secrets.token_hex(16)
        pwfile = os.path.join(root, "pw")
        Path(pwfile).write_text(admin_pw + "\n")
        shutil.chown(root, RUN_AS, "nogroup")
        shutil.chown(pwfile, RUN_AS, "nogroup")
        os.chmod(pwfile, 0o600)
        res = _as_user([pg_bin("initdb"), "-D", data, "-U", ADMIN, f"--pwfile={pwfile}", "--auth=scram-sha-256",
                        "-E", "UTF8", "--locale=C.UTF-8", "--no-instructions"], cwd=root)
        os.unlink(pwfile)
        if res.returncode != 0:
            shutil.rmtree(root, ignore_errors=True)
            raise RuntimeError(f"initdb failed: {res.stdout}{res.stderr}")
        port = free_port(host)
        log = os.path.join(root, "postgres.log")
        # the postmaster itself, in its own session, so it is stopped by its own pid
        with open(log, "ab") as out:
            shutil.chown(log, RUN_AS, "nogroup")
            proc = subprocess.Popen(
                ["setpriv", "--reuid", RUN_AS, "--regid", "nogroup", "--clear-groups",
                 pg_bin("postgres"), "-D", data, "-c", f"listen_addresses={host}", "-c", f"port={port}",
                 "-c", "unix_socket_directories=", "-c", "fsync=off", "-c", "max_connections=200",
                 "-c", "shared_buffers=32MB"],
                stdout=out, stderr=subprocess.STDOUT, cwd=root, start_new_session=True)
        server = cls(root, port, proc.pid, admin_pw, writer_pw, host)
        deadline = time.monotonic() + 60
        import psycopg
        while True:
            if proc.poll() is not None:
                text = Path(log).read_text(errors="replace")
                shutil.rmtree(root, ignore_errors=True)
                raise RuntimeError(f"postgres exited: {text[-2000:]}")
            try:
                with psycopg.connect(server.admin_dsn, autocommit=True) as conn:
                    conn.execute(f"CREATE ROLE {WRITER} LOGIN PASSWORD '{writer_pw}'")
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    server.stop()
                    raise
                time.sleep(0.2)
        return server

    def database(self, name: str, migrate: bool = True) -> Database:
        """A fresh database ``name`` (dropped first if it exists) owned by the admin, its schema migrated and the
        writer role granted exactly what a controller needs."""
        import psycopg
        from ansible_collections.exchangeops.patching.plugins.module_utils import _store
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        db = Database(name, self.dsn(ADMIN, self.admin_password, name), self.dsn(WRITER, self.writer_password, name))
        if migrate:
            with psycopg.connect(db.admin_dsn, autocommit=True) as conn:
                _store.migrate(conn, writer_role=WRITER)
                from exchpatch.serve.store import GRANTS, MIGRATIONS  # as exchpatch store migrate does
                _store.migrate(conn, "serve", MIGRATIONS, writer_role=WRITER, grants=GRANTS)
        return db

    def drop(self, name: str) -> None:
        import psycopg
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        """SIGINT (fast shutdown) to the postmaster by its pid, SIGKILL to its group if it lingers; rm the folder."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGINT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                done, _status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                done = self.pid if not _alive(self.pid) else 0
            if done:
                break
            time.sleep(0.1)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
