"""health_gate and node_action run for real (ansible-playbook) against real testbed nodes.

Every scenario starts its own node processes (the fixtures of tests/testbed/node_fixtures.py)
on private loopback addresses, sends client traffic from a background thread so the metrics
have data, runs a temporary playbook through ansible-playbook with the JSON stdout callback,
and checks both the task results and that no admin token ever appears in Ansible's output.
Tokens reach the playbook through a vars file, never through a command line.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.testbed.node_fixtures import MARKETS, NodeFactory, PairFactory
from tests.testbed.nodes import NodeProc, make_node, status, wait_for

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK_BIN = Path(sys.executable).parent / "ansible-playbook"
WALLET_DEPOSITS = {"BTC": 1_000_000, "ETH": 500_000}


# --------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture
def traffic() -> Iterator[Callable[..., Traffic]]:
    started: list[Traffic] = []

    def start(targets: list[NodeProc], kind: str = "orders") -> Traffic:
        t = Traffic(targets, kind)
        t.start()
        started.append(t)
        return t

    yield start
    for t in started:
        t.stop()


class Traffic(threading.Thread):
    """Client requests in a loop against the first target that serves them.

    Orders: a deterministic mix of resting and crossing orders, several per price level,
    with partial fills (what the state-divergence release gets wrong). A target answering
    503 (a standby) or not answering makes the loop move to the next target, the way a
    client follows the shard's primary behind HAProxy.
    """

    def __init__(self, targets: list[NodeProc], kind: str) -> None:
        super().__init__(daemon=True)
        self.targets = targets
        self.kind = kind
        self.stopping = threading.Event()
        self.sent = 0
        self.ok = 0

    def request(self, node: NodeProc, i: int) -> int:
        if self.kind == "withdrawals":
            body = {"client_withdrawal_id": f"tw-{i}", "address": f"addr-{i}", "amount": 1 + i % 7}
            return node.client("POST", f"/chains/{'BTC' if i % 2 else 'ETH'}/withdrawals", body)[0]
        side = "buy" if i % 3 else "sell"
        price = 100 + (i * 7) % 5 - (2 if side == "buy" else 0)
        body = {"client_order_id": f"t-{i}", "side": side, "price": price, "qty": 3 + (i * 5) % 11}
        return node.client("POST", f"/markets/{MARKETS[i % 2]}/orders", body)[0]

    def run(self) -> None:
        current = 0
        for i in itertools.count():
            if self.stopping.is_set():
                return
            try:
                code = self.request(self.targets[current], i)
            except OSError:
                code = 0
            self.sent += 1
            if code == 200:
                self.ok += 1
            elif code in (0, 503):
                current = (current + 1) % len(self.targets)
            self.stopping.wait(0.01)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)


def wallet(tmp_path: Path, nodes: list[NodeProc], name: str, fault: str | None = None) -> NodeProc:
    node = make_node(tmp_path, name, "wallet-signer", fault=fault, chains=["BTC", "ETH"],
                     chain_dir=str(tmp_path / name / "chains"), initial_deposits=dict(WALLET_DEPOSITS),
                     signing_ms=5)
    nodes.append(node)
    node.start()
    node.wait_ready()
    return node


def restart_on(node: NodeProc, version: str, fault: str | None = None,
               fault_params: dict[str, float] | None = None) -> None:
    """Patch a node the way the rollout does: stop, switch the release, start."""
    node.stop()
    node.install(version, fault, fault_params)
    node.start()
    node.wait_up()


def after_status_reads(node: NodeProc, reads: int, then: Callable[[], Any], poll: float,
                       timeout: float = 60.0) -> None:
    """Call ``then()`` once ``node``'s /v1/status was read ``reads`` times (by a gate)."""
    route = 'exchange_requests_total{route="/v1/status",method="GET",code="200"} '
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code, text = node.admin("GET", "/metrics")
        line = next((x for x in text.splitlines() if x.startswith(route)), None) if code == 200 else None
        if line is not None and int(line.rsplit(" ", 1)[1]) >= reads:
            then()
            return
        time.sleep(poll)


def kill_after_status_reads(node: NodeProc, reads: int) -> None:
    """Kill ``node`` once its /v1/status was read ``reads`` times (by a gate that then bakes)."""
    after_status_reads(node, reads, node.kill, poll=0.05)


def gate(node_var: str, **args: Any) -> dict[str, Any]:
    """A health_gate task on the node whose url and token are the vars ``<node_var>_url`` / ``_token``."""
    return {"exchangeops.patching.health_gate": {
        "url": f"{{{{ {node_var}_url }}}}", "token": f"{{{{ {node_var}_token }}}}", **args}}


def action(node_var: str, name: str, **args: Any) -> dict[str, Any]:
    return {"exchangeops.patching.node_action": {
        "url": f"{{{{ {node_var}_url }}}}", "token": f"{{{{ {node_var}_token }}}}", "action": name, **args}}


def peer_of(node_var: str) -> dict[str, str]:
    return {"peer_url": f"{{{{ {node_var}_url }}}}", "peer_token": f"{{{{ {node_var}_token }}}}"}


class Play:
    """Runs a list of tasks as a temporary playbook; results come back in task order."""

    def __init__(self, tmp_path: Path, named: dict[str, NodeProc], extra_vars: dict[str, Any] | None = None) -> None:
        self.dir = tmp_path / "play"
        self.dir.mkdir(exist_ok=True)
        self.tokens = [n.token for n in named.values()]
        variables: dict[str, Any] = {"ansible_python_interpreter": sys.executable}
        for var, n in named.items():
            variables[f"{var}_url"] = n.url
            variables[f"{var}_token"] = n.token
        variables.update(extra_vars or {})
        self.vars_file = self.dir / "vars.json"
        self.vars_file.write_text(json.dumps(variables))
        self.vars_file.chmod(0o600)
        self.runs = 0

    def run(self, tasks: list[dict[str, Any]], check: bool = False) -> list[dict[str, Any]]:
        self.runs += 1
        for i, task in enumerate(tasks):
            task.setdefault("name", f"Task {i}")
            task.setdefault("ignore_errors", True)  # a failing gate is what several tests expect
        playbook = self.dir / f"play-{self.runs}.yml"
        playbook.write_text(json.dumps([{
            "name": "Gate modules", "hosts": "localhost", "connection": "local", "gather_facts": False,
            "vars_files": [str(self.vars_file)], "tasks": tasks,
        }]))
        env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
               "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
               "ANSIBLE_LOCALHOST_WARNING": "false", "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false"}
        cmd = [str(PLAYBOOK_BIN), "-i", "localhost,", str(playbook)] + (["--check"] if check else [])
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
        output = proc.stdout + proc.stderr
        for token in self.tokens:
            assert token not in output, "an admin token appeared in the ansible output"
        try:
            doc = json.loads(proc.stdout)
        except ValueError as e:
            raise AssertionError(f"ansible-playbook did not print JSON ({e}):\n{output[-3000:]}") from e
        results = [t["hosts"]["localhost"] for t in doc["plays"][0]["tasks"]]
        assert len(results) == len(tasks), output[-3000:]
        return results


def gates_of(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {g["name"]: g for g in result["gates"]}


# --------------------------------------------------------------------------- health gate


def test_good_release_passes_every_gate_through_a_switchover(
        tmp_path: Path, matching_pair: PairFactory, traffic: Callable[..., Traffic]) -> None:
    a, b = matching_pair()
    load = traffic([a, b])
    play = Play(tmp_path, {"a": a, "b": b})
    wait_for(lambda: load.ok >= 20, "client traffic")

    # Before the rollout: the primary's baseline under traffic, the standby's without.
    base_a, base_b = play.run([gate("a", component="matching-engine", mode="baseline", sample=2),
                               gate("b", component="matching-engine", mode="baseline", sample=1)])
    assert not base_a.get("failed") and not base_b.get("failed"), (base_a, base_b)
    assert base_a["changed"] is False and base_a["baseline"]["requests"] > 20
    assert base_a["baseline"]["p99_ms"] is not None and base_a["baseline"]["error_rate"] == 0.0
    # the baseline keeps its latency histogram, per bucket, for the gates' distribution tests
    assert sum(base_a["baseline"]["buckets"].values()) == base_a["window"]["client_requests"] > 20
    assert "+Inf" in base_a["baseline"]["buckets"] and base_a["baseline"]["errors"] == 0
    assert base_b["baseline"] == {"error_rate": None, "p99_ms": None, "requests": 0, "errors": 0, "buckets": {}}
    assert "no client requests" in " ".join(base_b.get("warnings", []))

    restart_on(b, "1.1.0")  # the standby first
    results = play.run([
        # The patched standby against its unpatched primary, orders flowing: every default check.
        gate("b", component="matching-engine", expect_version="1.1.0", baseline=base_b["baseline"], bake=1,
             timeout=20, **peer_of("a")),
        action("a", "step_down"), action("a", "step_down"),
        action("b", "promote"), action("b", "promote"),
        # The patched node, now primary and taking the traffic, against the old primary's baseline.
        gate("b", component="matching-engine", expect_version="1.1.0", baseline=base_a["baseline"], bake=1,
             timeout=20, **peer_of("a")),
    ])
    standby_gate, down, down_again, up, up_again, primary_gate = results
    for r in (standby_gate, primary_gate):
        assert not r.get("failed"), r.get("msg")
        assert r["passed"] is True and r["changed"] is False and r["outcome"] == "passed"
        assert [g["name"] for g in r["gates"]] == ["ready", "version", "caught_up", "state_hash", "error_rate", "p99"]
        assert all(g["passed"] and g["outcome"] == "passed" for g in r["gates"]) and r["elapsed"] >= 1.0
        assert r["reference"] == {"kind": "baseline", "url": None} and r["inconclusive"] == []
    assert gates_of(standby_gate)["p99"]["evidence"] == ("no client traffic in either the window or the pre-rollout "
                                                         "baseline; against the pre-rollout baseline: no control")
    evidence = gates_of(primary_gate)
    assert evidence["state_hash"]["evidence"].endswith("equals peer me-a's")
    # judged on at least the minimum sample, with the tests' p-values
    assert primary_gate["window"]["requests"] >= 50 and evidence["p99"]["evidence"].startswith("p99 ")
    assert set(evidence["p99"]["p_values"]) == {"mann_whitney", "tail_fisher"}
    assert evidence["p99"]["evidence"].endswith("against the pre-rollout baseline: no control")

    assert (down["changed"], down["before"]["ha_role"], down["after"]["ha_role"]) == (True, "primary", "standby")
    assert (down_again["changed"], down_again["after"]["ha_role"]) == (False, "standby")
    assert (up["changed"], up["after"]["ha_role"]) == (True, "primary")
    assert up["after"]["term"] > down["before"]["term"]
    assert (up_again["changed"], up_again["before"]["ha_role"]) == (False, "primary")
    assert load.ok > 0 and status(b)["ha_role"] == "primary"

    # Market modes on the new primary: idempotent, and check mode only reports.
    load.stop()
    results = play.run([
        action("b", "market_mode", mode="cancel_only", markets=["BTC-USD"]),
        action("b", "market_mode", mode="cancel_only", markets=["BTC-USD"]),
        {**action("b", "market_mode", mode="halted"), "check_mode": True, "diff": True},
        action("b", "market_mode", mode="open"),
        action("a", "market_mode", mode="halted"),  # a standby: refused, with the reason
        action("b", "market_mode", mode="open", markets=["DOGE-USD"]),
    ])
    cancel, cancel_again, halted_check, reopen, on_standby, unknown = results
    assert cancel["changed"] is True
    assert cancel["after"]["market_modes"] == {"BTC-USD": "cancel_only", "ETH-USD": "open"}
    assert cancel_again["changed"] is False
    assert halted_check["changed"] is True and "node" not in halted_check
    assert halted_check["diff"]["after"]["market_modes"] == {"BTC-USD": "halted", "ETH-USD": "halted"}
    assert reopen["changed"] is True and reopen["node"]["markets"] == ["BTC-USD"]  # only the one not open
    assert on_standby["failed"] and "is a standby: market modes are set on the shard's primary" in on_standby["msg"]
    assert unknown["failed"] and "serves no market DOGE-USD" in unknown["msg"]
    assert status(b)["market_modes"] == {"BTC-USD": "open", "ETH-USD": "open"}


def test_never_ready_stopped_and_refused_nodes_fail(tmp_path: Path, matching_node: NodeFactory) -> None:
    good = matching_node("me-good")
    never = matching_node("me-never", fault="never-ready", start=False)
    never.start()
    never.wait_up()
    gone = matching_node("me-gone")
    gone.kill()
    victim = matching_node("me-victim")
    killer = threading.Thread(target=kill_after_status_reads, args=(victim, 3), daemon=True)
    killer.start()
    play = Play(tmp_path, {"good": good, "never": never, "gone": gone, "victim": victim},
                {"wrong_token": "not-the-token"})
    results = play.run([
        {**gate("good", component="matching-engine", checks=["ready", "version"], expect_version="1.0.0"),
         "check_mode": True},
        gate("never", component="matching-engine", checks=["ready", "version"], expect_version="1.0.0", timeout=2),
        gate("gone", component="matching-engine", checks=["ready", "version"], expect_version="1.0.0", timeout=2),
        {"exchangeops.patching.health_gate": {"url": "{{ good_url }}", "token": "{{ wrong_token }}",
                                              "component": "matching-engine", "checks": ["ready"], "timeout": 30}},
        gate("good", component="wallet-signer", checks=["ready"]),
        gate("good", component="matching-engine"),  # default checks need expect_version, peer_url, baseline
        # Passes, then the node dies during the bake: the gate fails at once, not after 60 s.
        gate("victim", component="matching-engine", checks=["ready"], bake=60),
    ])
    killer.join(timeout=5)
    in_check_mode, never_ready, stopped, refused, wrong_component, incomplete, baked = results

    assert not in_check_mode.get("failed") and in_check_mode["passed"] is True and in_check_mode["changed"] is False

    assert never_ready["failed"] is True and never_ready["passed"] is False
    assert "ready did not pass" in never_ready["msg"] and "at the 2 s timeout" in never_ready["msg"]
    g = gates_of(never_ready)
    assert g["ready"] == {"name": "ready", "passed": False, "outcome": "failed",
                          "evidence": "not ready: release fault: never-ready"}
    assert never_ready["outcome"] == "failed"
    assert g["version"]["passed"] is True and never_ready["polls"] >= 2

    assert stopped["failed"] is True
    g = gates_of(stopped)
    assert not g["ready"]["passed"] and not g["version"]["passed"]
    assert "unreachable" in g["ready"]["evidence"] and "ready, version did not pass" in stopped["msg"]

    assert refused["failed"] is True and "answered 401: the admin token was refused; check token" in refused["msg"]
    assert "not-the-token" not in json.dumps(refused)

    assert wrong_component["failed"] and "is a matching-engine node, not wallet-signer" in wrong_component["msg"]
    assert incomplete["failed"]
    for need in ("version needs expect_version", "caught_up, state_hash need peer_url",
                 "error_rate, p99 need control_url (an unpatched node serving the same traffic) or baseline"):
        assert need in incomplete["msg"]

    assert baked["failed"] is True and "during the 60 s bake" in baked["msg"] and baked["elapsed"] < 30
    assert "unreachable" in gates_of(baked)["ready"]["evidence"]


def stop_after_status_reads(node: NodeProc, reads: int, load: Traffic) -> None:
    """Stop the client traffic once ``node``'s /v1/status was read ``reads`` times (by a gate)."""
    after_status_reads(node, reads, load.stop, poll=0.02)


TRAFFIC_CHECKS = ["ready", "version", "error_rate", "p99"]


def test_latency_release_fails_p99_against_a_control_and_against_the_baseline(
        tmp_path: Path, matching_node: NodeFactory, traffic: Callable[..., Traffic]) -> None:
    node = matching_node("me-lat")
    control = matching_node("me-ctl")
    load = traffic([node])
    control_load = traffic([control])
    play = Play(tmp_path, {"n": node, "c": control})
    wait_for(lambda: load.ok >= 20, "client traffic")
    [base] = play.run([gate("n", component="matching-engine", mode="baseline", sample=2)])
    assert not base.get("failed"), base.get("msg")
    assert base["baseline"]["p99_ms"] < 150

    restart_on(node, "1.1.0", "latency", {"latency_ms": 400})
    # A slow node serves ~2 orders/s from the one traffic thread: 20 requests is the minimum sample here.
    slow, slow_vs_baseline = play.run([
        gate("n", component="matching-engine", checks=TRAFFIC_CHECKS, expect_version="1.1.0", timeout=10,
             min_requests=20, control_url="{{ c_url }}", control_token="{{ c_token }}", baseline=base["baseline"]),
        gate("n", component="matching-engine", checks=TRAFFIC_CHECKS, expect_version="1.1.0", timeout=10,
             min_requests=20, baseline=base["baseline"]),
    ])
    assert control_load.ok > 0
    for r in (slow, slow_vs_baseline):
        assert r.get("failed") is True and r["outcome"] == "failed", json.dumps(r)[:3000]
        assert "p99 did not pass" in r["msg"]
        g = gates_of(r)
        assert [name for name, x in g.items() if x["outcome"] != "passed"] == ["p99"]
        assert g["p99"]["outcome"] == "failed" and g["p99"]["passed"] is False
        # every request 400 ms slower: the interpolated p99 is above 400 ms and above the bound, and significant
        evidence = re.match(r"p99 ([\d.]+) ms vs (.+?) ([\d.]+) ms \(bound ([\d.]+) ms", g["p99"]["evidence"])
        assert evidence and float(evidence.group(1)) >= 400 > float(evidence.group(4)), g["p99"]["evidence"]
        assert g["p99"]["p_values"]["mann_whitney"] < 0.005
        assert r["window"]["p99_ms"] >= 400.0 and r["window"]["client_requests"] >= 20
    assert slow["reference"] == {"kind": "control", "url": control.url}
    assert gates_of(slow)["p99"]["evidence"].split(" vs ")[1].startswith("control me-ctl ")
    # the control's window spans the same polls and carries its own interpolated p99
    assert slow["control_window"]["client_requests"] >= 20 and slow["control_window"]["p99_ms"] < 150
    assert slow_vs_baseline["reference"]["kind"] == "baseline" and slow_vs_baseline.get("control_window") is None
    assert "against the pre-rollout baseline: no control" in gates_of(slow_vs_baseline)["p99"]["evidence"]


def test_healthy_node_passes_against_a_healthy_control(tmp_path: Path, matching_node: NodeFactory,
                                                       traffic: Callable[..., Traffic]) -> None:
    node = matching_node("me-new")
    control = matching_node("me-ctl")
    traffic([node])
    traffic([control])
    play = Play(tmp_path, {"n": node, "c": control})
    restart_on(node, "1.1.0")
    wait_for(lambda: status(node)["ready"], "the patched node ready")
    [ok] = play.run([gate("n", component="matching-engine", checks=TRAFFIC_CHECKS, expect_version="1.1.0",
                          control_url="{{ c_url }}", control_token="{{ c_token }}", bake=1, timeout=20)])
    assert not ok.get("failed"), ok.get("msg")
    assert (ok["outcome"], ok["passed"], ok["changed"], ok["inconclusive"]) == ("passed", True, False, [])
    assert ok["reference"] == {"kind": "control", "url": control.url}
    assert ok["window"]["client_requests"] >= 50 and ok["control_window"]["client_requests"] >= 50
    g = gates_of(ok)
    assert g["p99"]["outcome"] == "passed" and " vs control me-ctl " in g["p99"]["evidence"]
    assert g["error_rate"]["evidence"].startswith("error rate 0.00% (0/")
    assert "no control" not in g["p99"]["evidence"]


def test_traffic_stopped_mid_gate_is_inconclusive_not_passed(tmp_path: Path, matching_node: NodeFactory,
                                                             traffic: Callable[..., Traffic]) -> None:
    node = matching_node("me-quiet")
    load = traffic([node])
    play = Play(tmp_path, {"n": node})
    wait_for(lambda: load.ok >= 20, "client traffic")
    [base] = play.run([gate("n", component="matching-engine", mode="baseline", sample=2)])
    assert not base.get("failed") and base["baseline"]["requests"] >= 50, base
    stopper = threading.Thread(target=stop_after_status_reads, args=(node, 1, load), daemon=True)
    stopper.start()
    [quiet] = play.run([gate("n", component="matching-engine", checks=TRAFFIC_CHECKS, expect_version="1.0.0",
                             baseline=base["baseline"], bake=1, evidence_timeout=2)])
    stopper.join(timeout=5)
    assert not quiet.get("failed"), quiet.get("msg")
    assert (quiet["outcome"], quiet["passed"], quiet["changed"]) == ("inconclusive", False, False)
    assert quiet["inconclusive"] == ["error_rate", "p99"]
    g = gates_of(quiet)
    assert g["ready"]["outcome"] == "passed" and g["version"]["outcome"] == "passed"
    for check in ("error_rate", "p99"):
        assert (g[check]["outcome"], g[check]["passed"]) == ("inconclusive", False)
        assert "client requests, fewer than min_requests 50" in g[check]["evidence"]
    assert quiet["window"]["requests"] < 50
    assert "health gate inconclusive: error_rate, p99 could not be judged" in quiet["msg"]
    assert any("inconclusive" in w for w in quiet.get("warnings", []))


def test_state_divergence_standby_fails_state_hash_while_orders_flow(tmp_path: Path, matching_pair: PairFactory,
                                                                     traffic: Callable[..., Traffic]) -> None:
    a, b = matching_pair(fault_b="state-divergence")
    load = traffic([a])
    play = Play(tmp_path, {"a": a, "b": b})
    wait_for(lambda: load.ok >= 30, "client traffic")
    [diverged] = play.run([gate("b", component="matching-engine", checks=["ready", "caught_up", "state_hash"],
                                timeout=3, **peer_of("a"))])
    assert diverged["failed"] is True and "state_hash did not pass" in diverged["msg"]
    g = gates_of(diverged)
    assert g["ready"]["passed"] and g["caught_up"]["passed"]
    assert not g["state_hash"]["passed"] and " differs: node " in g["state_hash"]["evidence"]
    assert load.ok > 30


# --------------------------------------------------------------------------- wallets


def test_wallet_ledger_gate_and_withdrawal_actions(tmp_path: Path, nodes: list[NodeProc]) -> None:
    good = wallet(tmp_path, nodes, "wallet-good")
    bad = wallet(tmp_path, nodes, "wallet-bad", fault="ledger-mismatch")
    for w in (good, bad):
        for i in range(4):
            code, body = w.client("POST", "/chains/BTC/withdrawals",
                                  {"client_withdrawal_id": f"w{i}", "address": f"addr-{i}", "amount": 10 + i})
            assert code == 200, body
        wait_for(lambda w=w: status(w)["processed"] == 4, "withdrawals processed")
    play = Play(tmp_path, {"good": good, "bad": bad})
    results = play.run([
        {**action("good", "pause_withdrawals"), "check_mode": True},
        action("good", "pause_withdrawals"),
        action("good", "pause_withdrawals"),
        action("good", "wait_in_flight", timeout=10),
        action("good", "resume_withdrawals"),
        action("good", "resume_withdrawals"),
        action("good", "step_down"),
        gate("good", component="wallet-signer", checks=["ready", "version", "ledger"], expect_version="1.0.0"),
        gate("bad", component="wallet-signer", checks=["ready", "ledger"], timeout=2),
    ])
    pause_check, pause, pause_again, drained, resume, resume_again, step_down, ok, mismatch = results
    assert pause_check["changed"] is True and "node" not in pause_check
    assert pause["changed"] is True and pause["after"]["withdrawals"] == "paused"
    assert pause["before"]["withdrawals"] == "running"  # check mode did not pause it
    assert pause_again["changed"] is False
    assert drained["changed"] is False and drained["after"]["in_flight"] == 0 and "waited" in drained
    assert resume["changed"] is True and resume["after"]["withdrawals"] == "running"
    assert resume_again["changed"] is False
    assert step_down["failed"] and "action step_down is for matching-engine nodes" in step_down["msg"]

    assert not ok.get("failed") and gates_of(ok)["ledger"] == {
        "name": "ledger", "passed": True, "outcome": "passed", "evidence": "ledger balanced on BTC, ETH"}
    assert ok["outcome"] == "passed"
    assert mismatch["failed"] is True and "ledger did not pass" in mismatch["msg"] and mismatch["outcome"] == "failed"
    g = gates_of(mismatch)
    assert g["ready"]["passed"] and not g["ledger"]["passed"]
    assert g["ledger"]["evidence"].startswith("ledger unbalanced: BTC: ledger ")
    assert status(good)["withdrawals"] == "running"


def test_a_thin_baseline_samples_on_until_the_minimum_and_a_silent_one_does_not(
        tmp_path: Path, matching_node: NodeFactory, traffic: Callable[..., Traffic]) -> None:
    # the last batch of a rollout has no control left: its gates judge against the baseline, which
    # must hold min_requests for them to reach a verdict
    busy = matching_node("me-thin")
    silent = matching_node("me-silent")
    load = traffic([busy])
    wait_for(lambda: load.ok >= 5, "client traffic")
    play = Play(tmp_path, {"b": busy, "s": silent})
    thin, idle = play.run([
        gate("b", component="matching-engine", mode="baseline", sample=0.2, min_requests=60, evidence_timeout=20),
        gate("s", component="matching-engine", mode="baseline", sample=0.2, min_requests=60, evidence_timeout=20)])
    assert not thin.get("failed"), thin.get("msg")
    assert thin["baseline"]["requests"] >= 60, thin["baseline"]
    assert not any("fewer than min_requests" in w for w in thin.get("warnings", []))
    # a node with no client at all (a standby) is not waited for: its baseline is an idle one
    assert not idle.get("failed") and idle["baseline"]["requests"] == 0, idle
