"""The rollout lease for real: deploy_lock and the lease callback in ansible-playbook run by ansible-runner (and
ad-hoc `ansible -m`), on the file store and on a real PostgreSQL (the pg_db fixture)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import ansible_runner
import psycopg
import pytest

from tests.pgserver import free_port

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PASSWORD_MARK = "password="

LEASE_TASK = """
    - name: Take the lease
      exchangeops.patching.deploy_lock:
        store: "{{ exchange_state_store | default(omit) }}"
        dsn: "{{ exchange_state_store_dsn | default(omit) }}"
        dir: "{{ lock_dir }}"
        scopes: "{{ scopes }}"
        owner: "{{ controller }}"
        run_id: "{{ run_id }}"
        ttl: "{{ ttl | int }}"
      register: lease
"""

RENEWAL_PLAYBOOK = """
- name: Hold the lease through a long bake
  hosts: localhost
  gather_facts: false
  tasks:
""" + LEASE_TASK + """
    - name: Bake longer than the ttl
      ansible.builtin.pause:
        seconds: "{{ bake | int }}"

    - name: Check the lease before the next node
      exchangeops.patching.deploy_lock:
        store: "{{ exchange_state_store | default(omit) }}"
        dsn: "{{ exchange_state_store_dsn | default(omit) }}"
        dir: "{{ lock_dir }}"
        scopes: "{{ scopes }}"
        owner: "{{ controller }}"
        run_id: "{{ run_id }}"
        token: "{{ lease.token }}"
        state: checked

    - name: Release the lease
      exchangeops.patching.deploy_lock:
        store: "{{ exchange_state_store | default(omit) }}"
        dsn: "{{ exchange_state_store_dsn | default(omit) }}"
        dir: "{{ lock_dir }}"
        scopes: "{{ scopes }}"
        owner: "{{ controller }}"
        run_id: "{{ run_id }}"
        state: released
"""

RACE_PLAYBOOK = """
- name: Race another controller for the rollout lease, round after round
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Race one round
      ansible.builtin.include_tasks: round.yml
      loop: "{{ range(rounds | int) | list }}"
      loop_control:
        loop_var: round

    - name: Release what this controller won
      exchangeops.patching.deploy_lock:
        store: "{{ exchange_state_store | default(omit) }}"
        dsn: "{{ exchange_state_store_dsn | default(omit) }}"
        dir: "{{ lock_dir }}"
        scopes: ["shard-{{ item }}", "chain-{{ item }}"]
        owner: "{{ controller }}"
        run_id: "{{ controller }}-{{ item }}"
        state: released
      loop: "{{ won | default([]) }}"
"""

RACE_ROUND = """
- name: Wait for the round's start
  ansible.builtin.command:
    argv: ["{{ ansible_playbook_python }}", "-c",
           "import sys, time; time.sleep(max(0.0, float(sys.argv[1]) - time.time()))",
           "{{ start | float + round * step | float }}"]
  changed_when: false

- name: Take the lease
  exchangeops.patching.deploy_lock:
    store: "{{ exchange_state_store | default(omit) }}"
    dsn: "{{ exchange_state_store_dsn | default(omit) }}"
    dir: "{{ lock_dir }}"
    scopes: ["shard-{{ round }}", "chain-{{ round }}"]
    owner: "{{ controller }}"
    run_id: "{{ controller }}-{{ round }}"
    ttl: 60
  register: got
  failed_when: false

- name: Keep what this controller won
  ansible.builtin.set_fact:
    won: "{{ (won | default([])) + ([round] if got.token is defined else []) }}"
"""


# --- helpers ---------------------------------------------------------------------------------------------------


def password_of(dsn: str) -> str:
    return dsn.split(PASSWORD_MARK, 1)[1].split()[0]


def make_job(root: Path, name: str, playbook: str, *, dsn: str | None, extra_files: dict[str, str] | None = None
             ) -> Path:
    """A private data dir: the playbook, and an inventory whose localhost carries the store settings (as a vaulted
    exchange_state_store_dsn would)."""
    pdd = root / name
    (pdd / "project").mkdir(parents=True)
    (pdd / "inventory").mkdir()
    (pdd / "project" / "lease.yml").write_text(playbook)
    for file, text in (extra_files or {}).items():
        (pdd / "project" / file).write_text(text)
    host_vars = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    if dsn:
        host_vars |= {"exchange_state_store": "postgresql", "exchange_state_store_dsn": dsn}
    (pdd / "inventory" / "hosts.json").write_text(json.dumps({"all": {"hosts": {"localhost": host_vars}}}))
    return pdd


def job_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),  # as exchpatch/jobs.py passes it: callbacks_enabled comes from it
        "PATH": str(BIN) + os.pathsep + os.environ.get("PATH", ""),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_DEPRECATION_WARNINGS": "false",
        "EXCHPATCH_AUDIT_FILE": str(tmp_path / "audit.jsonl"),
        **extra,
    }


def run_job(pdd: Path, extravars: dict, env: dict[str, str], **kw):
    return ansible_runner.run(private_data_dir=str(pdd), playbook="lease.yml", extravars=extravars, envvars=env,
                              quiet=True, **kw)


def results(runner, task: str) -> list[tuple[str, dict]]:
    """(event, res) of every result of ``task``, in order."""
    found = []
    for event in runner.events:
        data = event.get("event_data", {})
        if data.get("task") == task and event["event"] in ("runner_on_ok", "runner_on_failed"):
            found.append((event["event"], data.get("res", {})))
    return found


def stdout_of(runner) -> str:
    return "".join(event.get("stdout", "") + "\n" for event in runner.events)


def assert_no_secret_in_artifacts(pdd: Path, secret: str) -> None:
    hits = [p for p in (pdd / "artifacts").rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert hits == [], f"the DSN password appears in {hits}"


def adhoc(args: dict, *, env: dict[str, str], check: bool = False) -> tuple[str, dict]:
    """deploy_lock once through `ansible localhost -m` (no callback: nothing renews); (status, result)."""
    proc = subprocess.run(
        [str(BIN / "ansible"), "localhost", "-m", "exchangeops.patching.deploy_lock", "-a", json.dumps(args),
         *(["--check"] if check else [])],
        capture_output=True, text=True, cwd=REPO, timeout=120, check=False,
        env={**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
             "ANSIBLE_STDOUT_CALLBACK": "minimal", "ANSIBLE_DEPRECATION_WARNINGS": "false", **env},
    )
    head, sep, body = proc.stdout.partition(" => ")
    assert sep, f"no result (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    result, _end = json.JSONDecoder().raw_decode(body.strip())
    return head.rsplit("|", 1)[1].strip(), result


def pg_env(dsn: str) -> dict[str, str]:
    return {"EXCHPATCH_STATE_STORE": "postgresql", "EXCHPATCH_STATE_STORE_DSN": dsn}


def lease_args(**kw) -> dict:
    return {"scopes": ["shard-0", "chain-BTC"], "owner": "alice@ops-laptop", "run_id": "run-A", "ttl": 60, **kw}


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def lease_rows(admin_dsn: str) -> dict[str, dict]:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        cur = conn.execute("SELECT scope, run_id, token, pid, expires_at, renewed_at, acquired_at, now() "
                           "FROM exchpatch_lease")
        names = [c.name for c in cur.description]
        return {row[0]: dict(zip(names, row, strict=True)) for row in cur.fetchall()}


# --- (1) two controllers race -----------------------------------------------------------------------------------


def test_two_controllers_racing_for_the_same_lease_exactly_one_proceeds_each_round(tmp_path, pg_db):
    rounds = 20
    jobs = {name: make_job(tmp_path, name, RACE_PLAYBOOK, dsn=pg_db.writer_dsn, extra_files={"round.yml": RACE_ROUND})
            for name in ("ctrl-a", "ctrl-b")}
    barrier = threading.Barrier(len(jobs))
    start = time.time() + 12  # both ansible-playbooks are up by then; every round starts on the same wall-clock tick
    runners: dict[str, object] = {}

    def controller(name: str) -> None:
        barrier.wait()
        runners[name] = run_job(jobs[name], {"controller": name, "rounds": rounds, "start": start, "step": 1.5,
                                             "lock_dir": str(tmp_path / "unused")}, job_env(tmp_path))

    threads = [threading.Thread(target=controller, args=(name,)) for name in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert set(runners) == set(jobs)
    for runner in runners.values():
        assert runner.status == "successful", stdout_of(runner)

    outcomes = {name: [res for _event, res in results(runner, "Take the lease")] for name, runner in runners.items()}
    assert all(len(found) == rounds for found in outcomes.values())
    tokens = []
    for i in range(rounds):
        a, b = outcomes["ctrl-a"][i], outcomes["ctrl-b"][i]
        winners = [name for name, res in (("ctrl-a", a), ("ctrl-b", b)) if "token" in res]
        assert len(winners) == 1, (i, a, b)
        winner = winners[0]
        won, lost = (a, b) if winner == "ctrl-a" else (b, a)
        assert won["acquired"] == [f"shard-{i}", f"chain-{i}"] and won["token"] > 0
        assert lost["acquired"] == []
        assert f"is leased by {winner} (run {winner}-{i}, no patch recorded" in lost["msg"], lost["msg"]
        assert lost["held_by_others"][0]["run_id"] == f"{winner}-{i}"
        tokens.append(won["token"])
    assert len(set(tokens)) == rounds  # one nextval per acquisition, never reused
    assert lease_rows(pg_db.admin_dsn) == {}  # every winner released
    for pdd in jobs.values():
        assert_no_secret_in_artifacts(pdd, password_of(pg_db.writer_dsn))


# --- (2) renewal, and a SIGKILLed controller -------------------------------------------------------------------


@pytest.mark.parametrize("store", ["postgresql", "file"])
def test_renewal_keeps_the_lease_alive_through_a_bake_longer_than_its_ttl(tmp_path, request, store):
    dsn = request.getfixturevalue("pg_db").writer_dsn if store == "postgresql" else None
    pdd = make_job(tmp_path, "job", RENEWAL_PLAYBOOK, dsn=dsn)
    extravars = {"controller": "alice", "run_id": "run-bake", "scopes": ["shard-0"], "ttl": 3, "bake": 8,
                 "lock_dir": str(tmp_path / "locks")}
    runner = run_job(pdd, extravars, job_env(tmp_path))
    assert runner.status == "successful", stdout_of(runner)
    (_event, taken), = results(runner, "Take the lease")
    (_event, checked), = results(runner, "Check the lease before the next node")
    assert checked["token"] == taken["token"] > 0
    assert checked["lease"]["expires_at"] > taken["lease"]["expires_at"]  # renewed, by the callback alone
    if dsn:
        assert_no_secret_in_artifacts(pdd, password_of(dsn))
    else:
        assert not list((tmp_path / "locks").glob("*.lock"))


def test_without_the_callback_the_same_bake_loses_the_lease(tmp_path, pg_db):
    pdd = make_job(tmp_path, "job", RENEWAL_PLAYBOOK, dsn=pg_db.writer_dsn)
    extravars = {"controller": "alice", "run_id": "run-bake", "scopes": ["shard-0"], "ttl": 3, "bake": 6,
                 "lock_dir": str(tmp_path / "locks")}
    runner = run_job(pdd, extravars, job_env(tmp_path, ANSIBLE_CALLBACKS_ENABLED="exchangeops.patching.audit"))
    assert runner.status == "failed"
    (event, checked), = results(runner, "Check the lease before the next node")
    assert event == "runner_on_failed"
    assert checked["msg"].startswith("lease lost (state store postgresql host=127.0.0.1 ")
    assert "shard-0: the lease of run run-bake" in checked["msg"] and "expired at" in checked["msg"]
    assert checked["lost"][0]["reason"] == "expired"


def test_a_sigkilled_controllers_lease_lapses_and_is_taken_over(tmp_path, pg_db):
    pdd = make_job(tmp_path, "job", RENEWAL_PLAYBOOK, dsn=pg_db.writer_dsn)
    extravars = {"controller": "bob", "run_id": "run-dead", "scopes": ["shard-0"], "ttl": 3, "bake": 300,
                 "lock_dir": str(tmp_path / "locks")}
    thread, _runner = ansible_runner.run_async(private_data_dir=str(pdd), playbook="lease.yml", extravars=extravars,
                                               envvars=job_env(tmp_path), quiet=True)
    try:
        deadline = time.monotonic() + 120
        while "shard-0" not in lease_rows(pg_db.admin_dsn) and time.monotonic() < deadline:
            time.sleep(0.2)
        row = lease_rows(pg_db.admin_dsn)["shard-0"]
        time.sleep(4)  # longer than the ttl: only renewal can have kept it
        assert lease_rows(pg_db.admin_dsn)["shard-0"]["expires_at"] > row["expires_at"]
        pid = row["pid"]  # the ansible-playbook process (deploy_lock records it)
        assert "ansible-playbook" in Path(f"/proc/{pid}/cmdline").read_bytes().decode()
        workers = children(pid)  # ansible 2.19 workers run in sessions of their own: stop them after it
        os.kill(pid, signal.SIGKILL)
        for worker in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker, signal.SIGKILL)
    finally:
        thread.join(timeout=60)
    killed = lease_rows(pg_db.admin_dsn)["shard-0"]
    time.sleep(4)  # longer than the ttl of 3 s
    after = lease_rows(pg_db.admin_dsn)["shard-0"]
    assert after["expires_at"] == killed["expires_at"] <= after["now"]  # never renewed again: lapsed

    status, res = adhoc(lease_args(scopes=["shard-0"], run_id="run-next", owner="carol"), env=pg_env(pg_db.writer_dsn))
    assert status == "CHANGED", res
    assert res["stale_taken_over"][0]["previous_run_id"] == "run-dead"
    assert res["token"] > res["stale_taken_over"][0]["previous_token"] == killed["token"]
    assert_no_secret_in_artifacts(pdd, password_of(pg_db.writer_dsn))


# --- (3) a lease expired in the database; tokens only grow -----------------------------------------------------


def test_lease_expired_in_the_database_fails_the_check_and_tokens_only_grow(pg_db):
    env = pg_env(pg_db.writer_dsn)
    status, first = adhoc(lease_args(), env=env)
    assert status == "CHANGED"
    token = first["token"]
    assert first["lease"]["scopes"] == ["shard-0", "chain-BTC"] and first["lease"]["ttl"] == 60
    assert first["lease"]["store"].startswith("postgresql host=127.0.0.1 ")
    status, again = adhoc(lease_args(), env=env)  # same run while held: same token, nothing written
    assert (status, again["token"], again["already_held"]) == ("SUCCESS", token, ["shard-0", "chain-BTC"])
    status, ok = adhoc(lease_args(state="checked", token=token), env=env)
    assert status == "SUCCESS" and ok["token"] == token
    status, stale = adhoc(lease_args(state="checked", token=token - 1), env=env)
    assert status == "FAILED!" and "with token " + str(token) + ", not " + str(token - 1) in stale["msg"]

    with psycopg.connect(pg_db.admin_dsn, autocommit=True) as conn:
        conn.execute("UPDATE exchpatch_lease SET expires_at = now() - interval '1 second' WHERE scope = 'shard-0'")
    status, res = adhoc(lease_args(state="checked", token=token), env=env)
    assert status == "FAILED!"
    assert res["msg"].startswith("lease lost (state store postgresql host=127.0.0.1 ")
    assert f"shard-0: the lease of run run-A (token {token}) expired at " in res["msg"]
    assert "(database time now " in res["msg"]
    assert [lost["scope"] for lost in res["lost"]] == ["shard-0"]

    status, retaken = adhoc(lease_args(), env=env)  # its own lapsed lease: a new, higher token for every scope
    assert status == "CHANGED" and retaken["refreshed"] == ["shard-0"] and retaken["token"] > token
    assert {row["token"] for row in lease_rows(pg_db.admin_dsn).values()} == {retaken["token"]}
    with psycopg.connect(pg_db.admin_dsn, autocommit=True) as conn:
        conn.execute("UPDATE exchpatch_lease SET expires_at = now() - interval '1 second'")
    status, other = adhoc(lease_args(run_id="run-B", owner="bob"), env=env)
    assert status == "CHANGED" and other["token"] > retaken["token"]
    assert [t["previous_run_id"] for t in other["stale_taken_over"]] == ["run-A", "run-A"]
    status, res = adhoc(lease_args(state="checked", token=retaken["token"]), env=env)
    assert status == "FAILED!" and "is now leased by bob (run run-B" in res["msg"]

    status, res = adhoc(lease_args(run_id="run-B", owner="bob", state="released"), env=env)
    assert status == "CHANGED" and res["released"] == ["shard-0", "chain-BTC"] and "token" not in res
    assert lease_rows(pg_db.admin_dsn) == {}


def test_check_mode_issues_no_token_and_writes_nothing(pg_db):
    env = pg_env(pg_db.writer_dsn)
    status, res = adhoc(lease_args(), env=env, check=True)
    assert status == "CHANGED" and res["token"] == 0
    status, res = adhoc(lease_args(state="checked", token=0), env=env, check=True)
    assert status == "SUCCESS"
    assert lease_rows(pg_db.admin_dsn) == {}
    with psycopg.connect(pg_db.admin_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT last_value, is_called FROM exchpatch_fence_seq").fetchone()[1] is False


# --- (4) the file store ----------------------------------------------------------------------------------------


def test_file_store_tokens_only_grow_and_a_lapsed_lease_fails_the_check(tmp_path):
    env = {"EXCHPATCH_STATE_STORE": "file"}
    locks = tmp_path / "locks"
    status, first = adhoc(lease_args(dir=str(locks)), env=env)
    assert status == "CHANGED" and first["token"] == 1
    assert (locks / ".fence").read_text() == "1\n"
    status, again = adhoc(lease_args(dir=str(locks)), env=env)
    assert status == "SUCCESS" and again["token"] == 1
    status, more = adhoc(lease_args(dir=str(locks), scopes=["shard-0", "chain-BTC", "shard-1"]), env=env)
    assert status == "CHANGED" and more["token"] == 2  # a new scope: a new token for all of them
    record = json.loads((locks / "shard-0.lock").read_text())
    assert (record["token"], record["ttl"]) == (2, 60)
    record["expires_at"] = "2020-01-01T00:00:00Z"
    (locks / "shard-0.lock").write_text(json.dumps(record))
    status, res = adhoc(lease_args(dir=str(locks), state="checked", token=2), env=env)
    assert status == "FAILED!"
    assert res["msg"].startswith(f"lease lost (file store {locks}): shard-0: the lease of run run-A (token 2) "
                                 "expired at 2020-01-01T00:00:00Z (controller time now ")
    status, other = adhoc(lease_args(dir=str(locks), run_id="run-B", scopes=["shard-0"]), env=env)
    assert status == "CHANGED" and other["token"] == 3
    assert other["stale_taken_over"][0]["previous_token"] == 2


def test_file_store_needs_a_folder(tmp_path):
    status, res = adhoc(lease_args(), env={"EXCHPATCH_STATE_STORE": "file"})
    assert status == "FAILED!" and res["msg"].startswith("dir: the file state store keeps its lock files in a folder")


# --- (5) an unreachable database -------------------------------------------------------------------------------


def test_unreachable_database_is_a_clear_failure_that_never_shows_the_password(tmp_path):
    port = free_port()
    secret = "s3cret-never-shown-8817"
    dsn = f"host=127.0.0.1 port={port} dbname=exchpatch user=exchpatch_writer password={secret} connect_timeout=3"
    status, res = adhoc(lease_args(), env=pg_env(dsn))
    assert status == "FAILED!"
    assert res["msg"].startswith(f"cannot reach the state store (postgresql host=127.0.0.1 port={port} "
                                 "dbname=exchpatch user=exchpatch_writer): ")
    assert "exchange_state_store_dsn" in res["msg"] and secret not in json.dumps(res)

    pdd = make_job(tmp_path, "job", RENEWAL_PLAYBOOK, dsn=dsn)
    runner = run_job(pdd, {"controller": "alice", "run_id": "run-x", "scopes": ["shard-0"], "ttl": 3, "bake": 1,
                           "lock_dir": str(tmp_path / "locks")}, job_env(tmp_path))
    assert runner.status == "failed"
    (event, taken), = results(runner, "Take the lease")
    assert event == "runner_on_failed" and taken["msg"].startswith("cannot reach the state store (postgresql ")
    assert "Traceback" not in stdout_of(runner)
    assert_no_secret_in_artifacts(pdd, secret)
