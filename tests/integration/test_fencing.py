"""The rollout lease's fencing token, end to end: the nodes refuse an older run's token, and a
rollout that lost its lease (expired in the database, or the database gone) stops before its
next node with the fleet converged.

One small fleet (1 shard x primary/standby + 1 wallet) and one PostgreSQL database serve the
whole module: the nodes remember the highest token they saw, so every run here takes its token
from the same sequence, as a team sharing one store does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import psycopg
import pytest

from testbed import fleet as tb
from tests.integration.test_rolling_patch import build, versions
from tests.testbed.nodes import loopback_net

pytestmark = pytest.mark.fleet

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    with tb.running(tmp_path_factory.mktemp("fencing"), shards=1, wallets=1,
                    net=loopback_net("fencing")) as f:
        yield f


@pytest.fixture(scope="module")
def store(pg_server):
    """One database for the module: its fencing sequence only grows, like a team's store."""
    db = pg_server.database("t_fencing_module")
    try:
        yield db
    finally:
        pg_server.drop(db.name)


def store_vars(dsn: str) -> str:
    return json.dumps({"exchange_state_store": "postgresql", "exchange_state_store_dsn": dsn})


def module(name: str, args: dict) -> tuple[bool, dict]:
    """Run one module on localhost as Ansible does; (ok, result)."""
    res = subprocess.run([str(BIN / "ansible"), "localhost", "-m", f"exchangeops.patching.{name}",
                          "-a", json.dumps(args)], capture_output=True, text=True, env=ENV, cwd=REPO,
                         timeout=120, check=False)
    head, _sep, body = res.stdout.partition(" => ")
    assert body, res.stdout + res.stderr
    return "SUCCESS" in head or "CHANGED" in head, json.loads(body)


def lease(store_dsn: str, fleet_root: str, run_id: str, state: str, **extra) -> tuple[bool, dict]:
    return module("deploy_lock", {"dir": f"{fleet_root}/locks", "scopes": ["shard-0"], "owner": f"{run_id}@tests",
                                  "run_id": run_id, "state": state, "store": "postgresql", "dsn": store_dsn,
                                  **extra})


def node_action(node: tb.NodeSpec, action: str, token: int, scopes: list[str]) -> tuple[bool, dict]:
    return module("node_action", {"url": node.url, "token": node.token(), "action": action,
                                  "fence_token": token, "fence_scopes": scopes})


def standby(f: tb.Fleet) -> tb.NodeSpec:
    return next(n for n in f.nodes if n.component == "matching-engine" and tb.node_status(n)["ha_role"] == "standby")


def assert_converged(f: tb.Fleet) -> None:
    """Every node ready and in service: one primary per shard, withdrawals running, nothing drained."""
    tb.wait_ready(f, 60)
    for shard in range(f.shards):
        roles = sorted(tb.node_status(n)["ha_role"] for n in f.nodes if n.shard == shard)
        assert roles == ["primary", "standby"], roles
    for n in f.nodes:
        if n.component == "wallet-signer":
            assert tb.node_status(n)["withdrawals"] == "running", n.name
    drained = {k: v["status"] for k, v in tb.haproxy_servers(f).items() if v["status"] in ("DRAIN", "MAINT")}
    assert not drained, drained


def expire(admin_dsn: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute("UPDATE exchpatch_lease SET expires_at = now() - interval '1 s'")


def rollout_until_bake(f: tb.Fleet, pid: str, dsn: str, during_bake) -> tuple[int, str]:
    """Run rolling_patch; call ``during_bake()`` once the canary's health gates (its bake) start."""
    proc = subprocess.Popen([str(BIN / "ansible-playbook"), "-i", f.inventory_dir,
                             str(REPO / "playbooks" / "rolling_patch.yml"), "-e", f"patch_id={pid}",
                             "-e", "rolling_canary_bake=6", "-e", store_vars(dsn)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV, cwd=REPO,
                            start_new_session=True)
    out = []
    fired = False
    assert proc.stdout is not None
    timer = threading.Timer(600, lambda: os.killpg(proc.pid, 9))
    timer.start()
    try:
        for line in proc.stdout:
            out.append(line)
            if not fired and "Check the matching node's health gates" in line:
                fired = True
                during_bake()
        proc.wait(timeout=60)
    finally:
        timer.cancel()
    text = "".join(out)
    assert fired, text[-3000:]
    return proc.returncode, text


def test_a_node_refuses_the_token_of_a_run_whose_lease_was_taken_over(fleet, store):
    node = standby(fleet)
    wallet = next(n for n in fleet.nodes if n.component == "wallet-signer")
    ok, old = lease(store.writer_dsn, fleet.root, "run-old", "acquired", ttl=60)
    assert ok, old
    old_token = old["token"]
    ok, res = node_action(node, "step_down", old_token, ["shard-0"])  # a standby: a no-op the node still judges
    assert ok and res["changed"] is False, res
    assert tb.node_status(node)["fence"] == {"shard-0": old_token}

    expire(store.admin_dsn)  # the old run's controller stalled past its lease
    ok, new = lease(store.writer_dsn, fleet.root, "run-new", "acquired", ttl=60)
    assert ok and new["token"] > old_token, new
    assert node_action(node, "step_down", new["token"], ["shard-0"])[0]

    ok, res = node_action(node, "promote", old_token, ["shard-0"])
    assert not ok
    assert (f"run's token {old_token} is lower than {new['token']} already seen for shard-0: "
            "another run holds the lease") in res["msg"], res["msg"]
    assert res["fence"] == {"scope": "shard-0", "token": old_token, "highest": new["token"]}
    assert tb.node_status(node)["ha_role"] == "standby"  # the refused promotion changed nothing

    # a wallet: every chain it serves carries the token; a lower one is refused the same way
    chains = [f"chain-{c}" for c in wallet.chains]
    assert node_action(wallet, "resume_withdrawals", new["token"], chains)[0]
    ok, res = node_action(wallet, "pause_withdrawals", old_token, chains)
    assert not ok and "another run holds the lease" in res["msg"], res
    assert tb.node_status(wallet)["withdrawals"] == "running"
    assert lease(store.writer_dsn, fleet.root, "run-new", "released")[0]


def test_lease_expired_under_a_live_rollout_stops_it_before_the_next_node(fleet, store):
    before = versions(fleet, "matching-engine")
    pid = build(fleet, "matching-engine", "2.0.1")
    rc, out = rollout_until_bake(fleet, pid, store.writer_dsn, lambda: expire(store.admin_dsn))
    assert rc != 0, out[-3000:]
    assert f"{pid} stopped before" in out, out[-3000:]
    assert "nothing was rolled back" in out, out[-3000:]
    after = versions(fleet, "matching-engine")
    # the canary finished (patched, gated, back in service); the primary was never touched
    assert sorted(after.values()) == sorted([*set(before.values()), "2.0.1"]), after
    assert_converged(fleet)
    # the next run takes the lease with a higher token and finishes the job
    res = subprocess.run([str(BIN / "ansible-playbook"), "-i", fleet.inventory_dir,
                          str(REPO / "playbooks" / "rolling_patch.yml"), "-e", f"patch_id={pid}",
                          "-e", "rolling_canary_bake=1", "-e", store_vars(store.writer_dsn)],
                         capture_output=True, text=True, env=ENV, cwd=REPO, timeout=600, check=False)
    assert res.returncode == 0, res.stdout[-4000:]
    assert set(versions(fleet, "matching-engine").values()) == {"2.0.1"}
    assert_converged(fleet)


def test_database_gone_mid_rollout_stops_it_before_the_next_node(fleet, store):
    from tests.pgserver import PgServer

    server = PgServer.start()
    try:
        db = server.database("t_gone")
        # this run's tokens must come after the module store's: the nodes remember those
        with psycopg.connect(db.admin_dsn, autocommit=True) as conn:
            conn.execute("SELECT setval('exchpatch_fence_seq', 1000000)")
        before = versions(fleet, "matching-engine")
        pid = build(fleet, "matching-engine", "2.0.2")
        rc, out = rollout_until_bake(fleet, pid, db.writer_dsn, server.stop)
        assert rc != 0, out[-3000:]
        assert f"{pid} stopped before" in out, out[-3000:]
        after = versions(fleet, "matching-engine")
        assert sorted(after.values()) == sorted([*set(before.values()), "2.0.2"]), after
        assert_converged(fleet)
    finally:
        server.stop()  # idempotent: the postmaster may already be gone
    # put the fleet back on one release for whoever shares it next
    res = subprocess.run([str(BIN / "ansible-playbook"), "-i", fleet.inventory_dir,
                          str(REPO / "playbooks" / "rollback.yml"), "-e", "component=matching-engine",
                          "-e", "version=2.0.1", "-e", store_vars(store.writer_dsn)],
                         capture_output=True, text=True, env=ENV, cwd=REPO, timeout=600, check=False)
    assert res.returncode == 0, res.stdout[-4000:]
    assert set(versions(fleet, "matching-engine").values()) == {"2.0.1"}
