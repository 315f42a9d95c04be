"""The keyed audit trail in the PostgreSQL state store, on a real server (tests/pgserver.py) and real
ansible-playbook runs: append-only for the writer, tampering by the owner named by verify, one chain
from concurrent controllers, export, refusal of a broken chain, no record lost while the database is
away, and the key in no output."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
import yaml
from ansible_collections.exchangeops.patching.plugins.module_utils import _store
from ansible_collections.exchangeops.patching.plugins.module_utils._audit import FileTrail, check
from ansible_collections.exchangeops.patching.plugins.module_utils._audit_pg import PgTrail

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
KEY = "k3y-8d1f0c77a2b94e6f9a1b2c3d4e5f6071"

BOOK = """
- name: A small change
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Say hello
      ansible.builtin.debug:
        msg: "hello from {{ inventory_hostname }}"
    - name: Publish the change
      ansible.builtin.set_fact:
        audit_change: {version: "1.0.{{ 7 }}", rolled_back: null}
    - name: Show every variable of the host
      ansible.builtin.debug:
        var: hostvars[inventory_hostname]
"""


def pg_trail(dsn: str, key: str | None = KEY) -> PgTrail:
    return PgTrail(_store.settings("postgresql", dsn), key.encode() if key else None)


def records_of(dsn: str) -> list[dict]:
    trail = pg_trail(dsn)
    try:
        return trail.records()
    finally:
        trail.close()


def inventory(tmp: Path, dsn: str, key: str | None = KEY) -> str:
    host = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
            "exchange_state_store": "postgresql", "exchange_state_store_dsn": dsn}
    if key:
        host["exchange_audit_key"] = key
    path = tmp / "inventory.yml"
    path.write_text(yaml.safe_dump({"all": {"hosts": {"localhost": host}}}))
    return str(path)


def env(tmp: Path, **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("EXCHPATCH_") and k not in ("ANSIBLE_STDOUT_CALLBACK",)}
    return {**base, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
            "EXCHPATCH_AUDIT_FILE": str(tmp / "state" / "audit.jsonl"), **extra}


def playbook(tmp: Path, inv: str, book: Path, *extra: str, environ: dict | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "ansible-playbook"), "-i", inv, str(book), *extra], capture_output=True,
                          text=True, env=environ or env(tmp), cwd=REPO, timeout=timeout, check=False)


def audit(tmp: Path, inv: str, action: str, *extra: str, environ: dict | None = None):
    """playbooks/audit.yml with the JSON stdout callback: (process, module result)."""
    e = {**(environ or env(tmp)), "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json"}
    res = playbook(tmp, inv, REPO / "playbooks" / "audit.yml", "-e", f"audit_action={action}", *extra, environ=e)
    doc = json.loads(res.stdout)
    tasks = [t for p in doc["plays"] for t in p["tasks"] if t["task"]["name"] == "Read the audit trail"]
    return res, tasks[0]["hosts"]["localhost"]


@pytest.fixture
def book(tmp_path) -> Path:
    path = tmp_path / "book.yml"
    path.write_text(BOOK)
    return path


# --------------------------------------------------------------------------- the table's protections


def test_writer_cannot_update_or_delete_and_owner_edits_are_named(pg_db):
    trail = pg_trail(pg_db.writer_dsn)
    trail.append([{"run": "r1", "kind": "event", "event": "runner_on_ok", "n": i} for i in range(4)])
    trail.close()
    with psycopg.connect(pg_db.writer_dsn, autocommit=True) as conn:
        for sql in ("UPDATE exchpatch_audit SET run = 'x' WHERE seq = 2", "DELETE FROM exchpatch_audit WHERE seq = 4",
                    "TRUNCATE exchpatch_audit"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql)
    assert pg_trail(pg_db.writer_dsn).verify().status == "verified"

    # the owner gets past the trigger and edits record 2 (keeping its stored hash: it has no key)
    with psycopg.connect(pg_db.admin_dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE exchpatch_audit DISABLE TRIGGER exchpatch_audit_no_change")
        conn.execute("UPDATE exchpatch_audit SET record = replace(record, '\"n\":1', '\"n\":9') WHERE seq = 2")
    v = pg_trail(pg_db.writer_dsn).verify()
    assert v.status == "broken"
    assert [(p.line, p.seq) for p in v.problems] == [(2, 2)] and "HMAC does not match" in v.problems[0].what

    # ... and removes the last record: the head still names seq 4
    with psycopg.connect(pg_db.admin_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM exchpatch_audit WHERE seq = 4")
    v = pg_trail(pg_db.writer_dsn).verify()
    assert any("removed from the end" in p.what and "seq 4" in p.what for p in v.problems), v.problems


def test_owner_recomputing_without_the_key_is_named(pg_db):
    """Rewrite a row and recompute its plain sha256 and every later link: without the key it cannot verify."""
    trail = pg_trail(pg_db.writer_dsn)
    trail.append([{"run": "r1", "kind": "event", "event": "runner_on_ok", "n": i} for i in range(3)])
    rows = trail.records()
    trail.close()
    from ansible_collections.exchangeops.patching.plugins.module_utils._audit import canonical, link
    rows[1]["n"] = 99
    prev = rows[0]["hash"]
    with psycopg.connect(pg_db.admin_dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE exchpatch_audit DISABLE TRIGGER exchpatch_audit_no_change")
        for rec in rows[1:]:
            rec["prev"], rec["mac"] = prev, "sha256"
            rec["hash"] = prev = link(rec)
            conn.execute("UPDATE exchpatch_audit SET record = %s, hash = %s WHERE seq = %s",
                         (canonical(rec), rec["hash"], rec["seq"]))
        conn.execute("UPDATE exchpatch_audit_head SET hash = %s", (prev,))
    v = pg_trail(pg_db.writer_dsn).verify()
    assert v.problems and v.problems[0].line == 2 and "plain sha256 after keyed" in v.problems[0].what


# --------------------------------------------------------------------------- real runs


def test_concurrent_runs_form_one_chain_and_export_round_trips(pg_db, tmp_path, book):
    inv = inventory(tmp_path, pg_db.writer_dsn)
    procs = [subprocess.Popen([str(BIN / "ansible-playbook"), "-i", inv, str(book)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, cwd=REPO,
                              env=env(tmp_path, EXCHPATCH_RUN_ID=f"run-{i}")) for i in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    records = records_of(pg_db.writer_dsn)
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    assert all(r["mac"] == "hmac-sha256" for r in records)
    for rid in ("run-0", "run-1"):
        mine = [r for r in records if r["run"] == rid]
        assert mine[0]["kind"] == "change_opened" and mine[-1]["kind"] == "change_closed"
        assert mine[-1]["outcome"] == "successful"
    assert pg_trail(pg_db.writer_dsn).verify().status == "verified"

    res, result = audit(tmp_path, inv, "verify")
    assert res.returncode == 0 and result["status"] == "verified" and result["records"] == len(records)
    export = tmp_path / "export.jsonl"
    res, result = audit(tmp_path, inv, "export", "-e", f"audit_dest={export}")
    assert res.returncode == 0 and result["records"] == len(records)
    assert oct(export.stat().st_mode & 0o777) == "0o600"
    assert [json.loads(line) for line in export.read_text().splitlines()] == records
    # the export verifies with the same verify and key, and without the key only as unkeyed
    assert FileTrail(str(export), KEY.encode()).verify().status == "verified"
    assert FileTrail(str(export)).verify().status == "unkeyed"
    res, result = audit(tmp_path, inv, "verify", "-e", f"audit_file={export}")
    assert res.returncode == 0 and result["status"] == "verified"

    # the play printed every host variable: the key and the DSN's password reached no record, no output of
    # the audit playbook, no export
    with psycopg.connect(pg_db.admin_dsn) as conn:
        stored = "".join(r[0] for r in conn.execute("SELECT record FROM exchpatch_audit").fetchall())
    assert KEY in "".join(outs)
    everything = stored + res.stdout + export.read_text() + audit(tmp_path, inv, "history")[0].stdout
    assert KEY not in everything and pg_db.writer_dsn.split("password=")[1].split()[0] not in everything


def test_reading_a_broken_chain_is_refused_unless_unverified(pg_db, tmp_path, book):
    inv = inventory(tmp_path, pg_db.writer_dsn)
    assert playbook(tmp_path, inv, book).returncode == 0
    with psycopg.connect(pg_db.admin_dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE exchpatch_audit DISABLE TRIGGER exchpatch_audit_no_change")
        conn.execute("UPDATE exchpatch_audit SET record = replace(record, 'hello', 'HELLO') WHERE seq = 3")
    res, result = audit(tmp_path, inv, "verify")
    assert res.returncode != 0 and result["status"] == "broken" and result["problems"][0]["seq"] == 3
    for action in ("history", "metrics", "report"):
        extra = ("-e", f"audit_dest={tmp_path / 'r.html'}") if action == "report" else ()
        res, result = audit(tmp_path, inv, action, *extra)
        assert res.returncode != 0 and result.get("failed"), action
        assert "first broken record: line 3 (seq 3)" in result["msg"] and "--unverified" in result["msg"]
        res, result = audit(tmp_path, inv, action, "-e", "audit_unverified=true", *extra)
        assert res.returncode == 0 and result["verification"]["status"] == "not_verified", action
    assert result["run"]


def test_driver_history_refuses_a_broken_file_trail_unless_unverified(tmp_path, book):
    """exchpatch history / metrics / report / audit verify / audit export on a keyed file trail."""
    keyfile = tmp_path / "audit.key"
    keyfile.write_text(KEY)
    keyfile.chmod(0o400)
    e = env(tmp_path, EXCHPATCH_AUDIT_KEY_FILE=str(keyfile), EXCHPATCH_DATA_DIR=str(tmp_path / "data"))
    inv = tmp_path / "local.yml"
    inv.write_text(yaml.safe_dump({"all": {"hosts": {"localhost": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable}}}}))
    assert playbook(tmp_path, str(inv), book, environ=e).returncode == 0
    trail = tmp_path / "state" / "audit.jsonl"

    def cli(*args: str) -> tuple[int, dict]:
        res = subprocess.run([str(BIN / "exchpatch"), *args, "--json"], capture_output=True, text=True, env=e,
                             cwd=REPO, timeout=120, check=False)
        return res.returncode, json.loads(res.stdout)

    code, doc = cli("audit", "verify")
    assert code == 0 and doc["data"]["status"] == "verified"
    lines = trail.read_text().splitlines()
    n = next(i for i, line in enumerate(lines) if "hello from" in line)
    lines[n] = lines[n].replace("hello from", "HELLO from")
    trail.write_text("\n".join(lines) + "\n")
    code, doc = cli("history")
    assert code == 1 and f"line {n + 1} (seq {n + 1})" in doc["message"]
    code, doc = cli("history", "--unverified")
    assert code == 0 and doc["data"]["runs"]
    code, doc = cli("audit", "export", "--output", str(tmp_path / "x.jsonl"))
    assert code == 1
    data_dir = tmp_path / "data"
    leaked = [p for p in data_dir.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
    assert not leaked


# --------------------------------------------------------------------------- the database goes away


class Proxy:
    """A TCP proxy to the database that the test can cut (every connection dropped, new ones closed at once)
    and restore; the database itself stays up."""

    def __init__(self, port: int) -> None:
        self.upstream = port
        self.cut = False
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(50)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def up(self) -> None:
        self.cut = False

    def down(self) -> None:
        with self.lock:
            self.cut = True
            for conn in self.conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            self.conns.clear()

    def close(self) -> None:
        self.down()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _addr = self.listener.accept()
            except OSError:
                return
            if self.cut:
                client.close()
                continue
            server = socket.create_connection(("127.0.0.1", self.upstream))
            with self.lock:
                self.conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)


OUTAGE_BOOK = """
- name: A change while the database goes away
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Before the outage
      ansible.builtin.debug:
        msg: one
    - name: Wait for the database to go down
      ansible.builtin.wait_for:
        path: "{{ flag_down }}"
        timeout: 60
    - name: During the outage
      ansible.builtin.debug:
        msg: two
    - name: Still during the outage
      ansible.builtin.debug:
        msg: three
    - name: Wait for the database to come back
      ansible.builtin.wait_for:
        path: "{{ flag_up }}"
        timeout: 60
    - name: After the outage
      ansible.builtin.debug:
        msg: four
"""
TASKS = ["Before the outage", "Wait for the database to go down", "During the outage", "Still during the outage",
         "Wait for the database to come back", "After the outage"]


def wait_until(predicate, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_no_record_is_lost_while_the_database_is_away(pg_server, pg_db, tmp_path):
    proxy = Proxy(pg_server.port)
    try:
        dsn = pg_db.writer_dsn.replace(f"port={pg_server.port}", f"port={proxy.port}")
        inv = inventory(tmp_path, dsn)
        book = tmp_path / "outage.yml"
        book.write_text(OUTAGE_BOOK)
        down, up = tmp_path / "down", tmp_path / "up"
        spool = tmp_path / "state" / "spool" / "outage-1.jsonl"
        proc = subprocess.Popen([str(BIN / "ansible-playbook"), "-i", inv, str(book), "-e",
                                 json.dumps({"flag_down": str(down), "flag_up": str(up)})],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                                env=env(tmp_path, EXCHPATCH_RUN_ID="outage-1"))
        try:
            wait_until(lambda: any(r.get("task") == TASKS[1] for r in records_of(pg_db.writer_dsn)))
            proxy.down()
            down.touch()
            wait_until(lambda: spool.exists() and TASKS[3] in spool.read_text())
            assert oct(spool.stat().st_mode & 0o777) == "0o600"
            proxy.up()
            up.touch()
            out = proc.communicate(timeout=120)[0]
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, out
        assert "kept in" in out  # the operator was told
        records = records_of(pg_db.writer_dsn)
        assert pg_trail(pg_db.writer_dsn).verify().status == "verified"
        starts = [r["task"] for r in records if r.get("event") == "playbook_on_task_start"]
        oks = [r["task"] for r in records if r.get("event") == "runner_on_ok"]
        assert starts == TASKS and oks == TASKS  # every record, once, in order
        assert records[0]["kind"] == "change_opened" and records[-1]["kind"] == "change_closed"
        assert not spool.exists()

        # the database is away until the end of a run: its spool stays, and the next run appends it first
        proxy.down()
        down.touch()
        up.touch()
        res = playbook(tmp_path, inv, book, "-e", json.dumps({"flag_down": str(down), "flag_up": str(up)}),
                       environ=env(tmp_path, EXCHPATCH_RUN_ID="outage-2"))
        assert res.returncode == 0 and "next run appends them" in res.stdout + res.stderr
        left = tmp_path / "state" / "spool" / "outage-2.jsonl"
        assert left.exists()
        proxy.up()
        res = playbook(tmp_path, inv, book, "-e", json.dumps({"flag_down": str(down), "flag_up": str(up)}),
                       environ=env(tmp_path, EXCHPATCH_RUN_ID="outage-3"))
        assert res.returncode == 0, res.stdout[-2000:]
        assert not left.exists()
        records = records_of(pg_db.writer_dsn)
        runs = [r["run"] for r in records if r["kind"] == "change_closed"]
        assert runs == ["outage-1", "outage-2", "outage-3"]
        counts = [len([r for r in records if r["run"] == rid]) for rid in ("outage-1", "outage-2")]
        assert counts[0] == counts[1]
        assert pg_trail(pg_db.writer_dsn).verify().status == "verified"
    finally:
        proxy.close()


def test_an_unkeyed_trail_is_reported_as_unkeyed(pg_db, tmp_path, book):
    inv = inventory(tmp_path, pg_db.writer_dsn, key=None)
    assert playbook(tmp_path, inv, book).returncode == 0
    res, result = audit(tmp_path, inv, "verify")
    assert res.returncode == 0 and result["status"] == "unkeyed" and result["keyed"] == 0
    assert result["summary"].startswith("UNKEYED TRAIL")
    # the same trail, read with a key now configured: no keyed record is a problem, not a pass
    v = check(((i, json.dumps(r), True) for i, r in enumerate(records_of(pg_db.writer_dsn), 1)), KEY.encode())
    assert v.status == "broken" and "no record is keyed" in v.problems[0].what
