"""The chatops service's run store on both backends (a real SQLite file, a real PostgreSQL as the writer
role): runs survive a new store object (a restart), a run in flight becomes interrupted, a replayed
signature is seen, a state change only happens from the expected state (two approvers at once)."""

from __future__ import annotations

import pytest

from exchpatch.serve.config import load_config
from exchpatch.serve.runs import RunManager
from exchpatch.serve.store import RunStore


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request, tmp_path, monkeypatch):
    if request.param == "sqlite":
        path = str(tmp_path / "serve.sqlite")
        yield lambda: RunStore("sqlite", path=path)
    else:
        db = request.getfixturevalue("pg_db")
        monkeypatch.setenv("EXCHPATCH_STATE_STORE_DSN", db.writer_dsn)
        yield lambda: RunStore("postgresql", dsn=db.writer_dsn)


def _run(run_id: str, state: str = "running") -> dict:
    return {"id": run_id, "kind": "deploy", "requester": "alice", "source": "slack", "state": state,
            "params": {"patch_id": "matching-engine-1.4.3", "component": "matching-engine"},
            "notify": {"response_url": "https://hooks.slack.com/commands/T/1/x"}}


def test_runs_events_and_replays_survive_a_new_store(backend, tmp_path):
    store = backend()
    store.create_run(_run("r1"))
    store.create_run(_run("r2", "awaiting_approval"))
    assert store.add_event("r1", "progress", {"text": "== canary"}) == 1
    assert store.add_event("r1", "progress", {"text": "gate passed"}) == 2
    assert store.seen_signature("v0=abc", 600) is False
    assert store.seen_signature("v0=abc", 600) is True  # the same signature again: a replay
    store.close()

    again = backend()  # what a restarted service opens
    assert {r["id"] for r in again.list_runs()} == {"r1", "r2"}
    assert [e["data"]["text"] for e in again.events("r1")] == ["== canary", "gate passed"]
    assert [e["seq"] for e in again.events("r1", after=1)] == [2]
    assert again.seen_signature("v0=abc", 600) is True
    # a state change happens once, from the expected state: the second of two approvers loses
    assert again.update_run("r2", expect_state=["awaiting_approval"], state="running") is True
    assert again.update_run("r2", expect_state=["awaiting_approval"], state="running") is False
    assert again.get_run("r2")["notify"]["response_url"].startswith("https://hooks.slack.com/")
    again.close()


def test_a_run_in_flight_when_the_service_stopped_is_interrupted(backend, tmp_path):
    store = backend()
    store.create_run(_run("flying"))
    store.create_run(_run("waiting", "awaiting_approval"))
    (tmp_path / "secret").write_text("s3cret\n")
    (tmp_path / "secret").chmod(0o600)
    (tmp_path / "serve.yml").write_text(
        "identities: {alice: {roles: [operator], slack_users: [U0ALICE]}}\n"
        "slack: {signing_secret_file: secret}\n"
        + ("store: {backend: postgresql}\n" if store.backend == "postgresql" else ""))
    manager = RunManager(load_config(tmp_path / "serve.yml"), store, lambda run, kind, data: None)
    assert manager.recover() == ["flying"]
    assert store.get_run("flying")["state"] == "interrupted"
    assert store.get_run("waiting")["state"] == "awaiting_approval"  # still waits for its approver
    assert [e["kind"] for e in store.events("flying")] == ["interrupted"]
    store.update_run("flying", job_id="20261201T000000-abcdef01")
    manager.reconcile([{"run": "20261201T000000-abcdef01", "outcome": "interrupted"}])
    assert store.get_run("flying")["outcome"] == "interrupted"
    assert manager.recover() == []  # once
    store.close()
