"""Gates that judge on enough evidence, on a fleet of 10 shards at a low client rate (issue 15).

One fleet (10 shards x primary/standby + 2 wallets, HAProxy, supervisord) serves the module, at
a rate where every market sees a handful of orders a second: the traffic gates must wait for
their minimum sample, compare each promoted node with an unpatched control, and never fail a
healthy release nor pass a node they could not judge.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from testbed import fleet as tb
from testbed.hahistory import fleet_histories, shard_verdicts
from testbed.loadgen import LoadTarget, run_load
from testbed.release import build_release

pytestmark = pytest.mark.fleet

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SHARDS = 10
RATE = 80  # requests/s over all 10 markets and both chains: about 7 per market and second
# Batches of half the fleet after the canary (the default [1, 2, "50%"] adds batches, not evidence);
# EXCHPATCH_SCALE_CYCLES rollouts and rollbacks back to back (1 in the suite; 3 for the proof,
# about 15 minutes each on a 2-core machine)
SERIAL = '{"rolling_serial": [1, "50%"], "rollback_serial": [1, "50%"]}'
CYCLES = int(os.environ.get("EXCHPATCH_SCALE_CYCLES", "1"))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    with tb.running(tmp_path_factory.mktemp("scale"), shards=SHARDS, wallets=2,
                    net=150 + (os.getpid() + 85) % 90) as f:
        yield f


@pytest.fixture(scope="module")
def audit_file(fleet) -> Path:
    return Path(fleet.root) / "audit.jsonl"


def build(f: tb.Fleet, version: str, fault: str | None = None) -> str:
    root = Path(f.root)
    params = {"latency": {"latency_ms": 900.0}}.get(fault or "")
    return build_release(root / "releases", root / "keys", root / "catalog", "matching-engine", version,
                         fault=fault, fault_params=params).id


def playbook(f: tb.Fleet, audit: Path, name: str, *extra: str,
             timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
           "EXCHPATCH_AUDIT_FILE": str(audit)}
    return subprocess.run([str(BIN / "ansible-playbook"), "-i", f.inventory_dir, str(REPO / "playbooks" / name),
                           *extra], capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout, check=False)


def versions(f: tb.Fleet) -> dict[str, str | None]:
    return {n.name: tb.node_status(n).get("version") for n in f.nodes if n.component == "matching-engine"}


class Load:
    """Client load in the background until stop(); the report of what the clients saw."""

    def __init__(self, f: tb.Fleet, rate: float = RATE) -> None:
        target = LoadTarget(f.frontend_url, f.markets(), f.chains(),
                            [(n.url, n.token()) for n in f.nodes if n.component == "wallet-signer"])
        self.done = threading.Event()
        self.box: dict = {}
        self.thread = threading.Thread(
            target=lambda: self.box.update(report=run_load(target, rate, 1800, stop=self.done).as_json()))
        self.thread.start()
        time.sleep(2)

    def stop(self) -> dict:
        self.done.set()
        self.thread.join(timeout=120)
        return self.box["report"]


def assert_nothing_lost(report: dict) -> None:
    assert report["acked"] > 0
    assert (report["lost"], report["duplicated"], report["double_withdrawals"]) == (0, 0, 0), report
    assert report["ledger_balanced"] is True, report


def closed_outcomes(audit: Path) -> list[tuple[str, str]]:
    records = [json.loads(line) for line in audit.read_text().splitlines() if line.strip()]
    playbooks = {r["run"]: r.get("playbook") for r in records if r.get("kind") == "change_opened"}
    return [(playbooks.get(r["run"], "?"), r["outcome"]) for r in records if r.get("kind") == "change_closed"]


def traffic_gates(audit: Path) -> list[dict]:
    """The results of every traffic gate on a promoted node in the audit trail."""
    records = [json.loads(line) for line in audit.read_text().splitlines() if line.strip()]
    return [r["res"] for r in records if r.get("kind") == "event" and r.get("event") == "runner_on_ok"
            and str(r.get("task")).endswith("Gate the promoted node under client traffic")
            and "outcome" in r.get("res", {})]


def output(res: subprocess.CompletedProcess[str]) -> str:
    return res.stdout[-6000:] + res.stderr[-2000:]


def test_a_healthy_release_rolls_out_and_back_without_a_false_failure(fleet, audit_file):
    pid = build(fleet, "1.4.3")
    start = versions(fleet)
    assert set(start.values()) == {"1.4.2"}, start
    load = Load(fleet)
    began = time.time()
    try:
        for cycle in range(CYCLES):
            res = playbook(fleet, audit_file, "rolling_patch.yml", "-e", f"patch_id={pid}",
                           "-e", "rolling_canary_bake=5", "-e", SERIAL)
            assert res.returncode == 0, f"rollout {cycle + 1}: {output(res)}"
            assert set(versions(fleet).values()) == {"1.4.3"}, cycle
            back = playbook(fleet, audit_file, "rollback.yml", "-e", "component=matching-engine", "-e", SERIAL)
            assert back.returncode == 0, f"rollback {cycle + 1}: {output(back)}"
            assert versions(fleet) == start, cycle
        finished = time.time()
    finally:
        report = load.stop()
    assert_nothing_lost(report)
    # from the nodes' own HA histories, not from timing: no shard was ever left without a ready node
    verdicts = shard_verdicts(fleet_histories(fleet.nodes), began, finished)
    assert len(verdicts) == SHARDS, sorted(verdicts)
    longest = {shard: round(v.longest_no_primary, 3) for shard, v in sorted(verdicts.items())}
    lost = {shard: v.describe() for shard, v in sorted(verdicts.items()) if v.no_ready}
    assert not lost, f"shards left without a ready node: {lost}; longest gap without a primary per shard (s): {longest}"
    outcomes = closed_outcomes(audit_file)
    assert outcomes[-2 * CYCLES:] == [("rolling_patch.yml", "successful"), ("rollback.yml", "successful")] * CYCLES, \
        outcomes
    # every promoted node was judged on its clients' traffic; all but a last batch against a control
    gates = traffic_gates(audit_file)
    assert len(gates) >= CYCLES * 2 * SHARDS, len(gates)
    assert {g["outcome"] for g in gates} <= {"passed", "inconclusive"}, [g for g in gates if g["outcome"] == "failed"]
    kinds = [g["reference"]["kind"] for g in gates if g.get("reference")]
    assert kinds.count("control") > kinds.count("baseline"), kinds


def test_a_latency_regressed_release_is_still_caught_at_the_canary(fleet, audit_file):
    start = versions(fleet)
    pid = build(fleet, "1.4.7", fault="latency")
    load = Load(fleet)
    try:
        res = playbook(fleet, audit_file, "rolling_patch.yml", "-e", f"patch_id={pid}", "-e", "rolling_canary_bake=5",
                       "-e", SERIAL)
    finally:
        report = load.stop()
    out = output(res)
    assert res.returncode != 0, out
    assert f"{pid} failed on" in out and "p99" in out, out
    assert "Rolled back" in out, out
    assert versions(fleet) == start
    assert_nothing_lost(report)


def test_traffic_that_stops_mid_gate_halts_the_rollout_as_inconclusive_not_passed(fleet, audit_file):
    start = versions(fleet)
    pid = build(fleet, "1.4.4")
    canary_shard_standby = next(n for n in fleet.nodes if n.component == "matching-engine"
                                and tb.node_status(n).get("ha_role") == "standby")
    load = Load(fleet)
    stopped: dict = {}

    def stop_when_the_canary_serves() -> None:
        # the canary is the first standby in inventory order; stop all client traffic the moment it
        # becomes primary, i.e. as its traffic gate starts watching
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and "report" not in stopped:
            if tb.node_status(canary_shard_standby).get("ha_role") == "primary":
                stopped["report"] = load.stop()
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=stop_when_the_canary_serves)
    watcher.start()
    try:
        res = playbook(fleet, audit_file, "rolling_patch.yml", "-e", f"patch_id={pid}", "-e", "rolling_canary_bake=3",
                       "-e", "exchange_gate_evidence_timeout=5", "-e", SERIAL)
    finally:
        if "report" not in stopped:
            stopped["report"] = load.stop()
        watcher.join(timeout=30)
    out = output(res)
    assert res.returncode != 0, out
    assert "inconclusive" in out and "Halted for a human" in out, out
    assert "Rolled back" not in out, out
    # only the canary changed; the rollout stopped before any other node
    now = versions(fleet)
    changed = sorted(name for name, v in now.items() if v != start[name])
    assert changed == [canary_shard_standby.name], now
    assert closed_outcomes(audit_file)[-1] == ("rolling_patch.yml", "inconclusive")
    assert_nothing_lost(stopped["report"])
    # the lease was released: the operator's next step (here: go back) runs at once
    back = playbook(fleet, audit_file, "rollback.yml", "-e", "component=matching-engine", "-e", "version=1.4.2",
                    "-e", SERIAL)
    assert back.returncode == 0, output(back)
    assert versions(fleet) == start
