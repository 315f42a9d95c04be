"""Real matching nodes record their own HA history, and the checker reads a shard's safety from it.

A primary/standby pair runs as real processes (tests/testbed/nodes.py); the checker itself is
tested on synthetic histories in test_hahistory.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from testbed.hahistory import history_file, read_history, shard_verdict
from tests.testbed.node_fixtures import PairFactory
from tests.testbed.nodes import NodeProc, http, make_node, wait_for

MARKETS = ["BTC-USD"]
COMPONENT = "matching-engine"
LIFECYCLE = ("started", "stopping", "primary", "standby")  # what a test can order; ready flips come and go


@pytest.fixture
def pair(matching_pair: PairFactory) -> tuple[NodeProc, NodeProc]:
    """The shared primary (me-a) and standby (me-b), once the standby's history records it ready."""
    a, b = matching_pair()
    wait_recorded(b, lambda recs: recs[-1]["ready"], "the standby's readiness")
    return a, b


def wait_recorded(node: NodeProc, cond: Callable[[list[dict[str, Any]]], Any], what: str) -> list[dict[str, Any]]:
    """Wait until the node's history satisfies ``cond`` (readiness is sampled, so it lags by up to 0.1 s)."""
    def check() -> list[dict[str, Any]] | None:
        recs = read_history(node.root)
        return recs if recs and cond(recs) else None

    return wait_for(check, f"{node.config['name']}'s history to record {what}: {read_history(node.root)}")


def lifecycle(recs: list[dict[str, Any]]) -> list[str]:
    return [r["event"] for r in recs if r["event"] in LIFECYCLE]


def first(recs: list[dict[str, Any]], event: str, after: float = 0.0) -> dict[str, Any]:
    return next(r for r in recs if r["event"] == event and r["t"] >= after)


def test_a_standby_restart_and_a_switchover_are_recorded_in_order_and_never_leave_the_shard_without_a_ready_node(
        pair):
    a, b = pair
    start = time.time()
    b.stop()
    b.start()
    b.wait_ready()
    wait_recorded(b, lambda recs: recs[-1]["ready"] and recs[-1]["pid"] == b.proc.pid, "the restarted standby ready")
    assert a.admin("POST", "/v1/ha/step-down", {})[0] == 200
    assert b.admin("POST", "/v1/ha/promote", {})[0] == 200
    b.wait_ready(role="primary")
    a.wait_ready()
    recs_a = wait_recorded(a, lambda recs: recs[-1]["role"] == "standby" and recs[-1]["ready"], "following b")
    end = time.time()
    recs_b = read_history(b.root)

    assert lifecycle(recs_a) == ["started", "primary", "standby"], recs_a
    assert lifecycle(recs_b) == ["started", "standby", "stopping", "started", "standby", "primary"], recs_b
    stopping, restarted = first(recs_b, "stopping"), first(recs_b, "started", after=start)
    stepped_down, promoted = first(recs_a, "standby"), first(recs_b, "primary")
    assert stopping["t"] <= restarted["t"] < stepped_down["t"] <= promoted["t"]
    assert stopping["pid"] != restarted["pid"] == promoted["pid"] == b.proc.pid
    assert promoted["ready"] is True and stepped_down["ready"] is False
    assert {r["version"] for r in recs_a + recs_b} == {"1.0.0"}
    # the restarted standby was ready again before its primary stepped down
    assert any(r["ready"] for r in recs_b if restarted["t"] <= r["t"] < stepped_down["t"]), recs_b

    verdict = shard_verdict({"me-a": recs_a, "me-b": recs_b}, start, end)
    assert verdict.no_ready == [], verdict.describe()
    assert len(verdict.no_primary) == 1, verdict.describe()  # the switchover, and only it
    gap = verdict.no_primary[0]
    assert stepped_down["t"] <= gap.start and gap.end == promoted["t"], verdict.describe()
    assert verdict.longest_no_primary < 5, verdict.describe()


def test_both_nodes_stopped_at_once_is_reported_as_the_gap_it_was(pair):
    a, b = pair
    start = time.time()
    a.stop()
    b.stop()
    time.sleep(0.3)
    a.start()
    b.start()
    a.wait_ready(role="primary")
    b.wait_ready()
    wait_recorded(b, lambda recs: recs[-1]["ready"] and recs[-1]["pid"] == b.proc.pid, "the restarted standby ready")
    end = time.time()
    recs_a, recs_b = read_history(a.root), read_history(b.root)
    a_stop, b_stop = first(recs_a, "stopping"), first(recs_b, "stopping")
    a_back = next(r for r in recs_a if r["t"] > a_stop["t"] and r["ready"])

    verdict = shard_verdict({"me-a": recs_a, "me-b": recs_b}, start, end)
    assert len(verdict.no_ready) == 1, verdict.describe()
    gap = verdict.no_ready[0]
    # from the moment the standby went (it stayed ready a little after its primary stopped) until a served again
    assert a_stop["t"] <= gap.start <= b_stop["t"] and gap.end == a_back["t"], (verdict.describe(), recs_a, recs_b)
    assert verdict.no_primary[0].start == a_stop["t"], verdict.describe()
    assert verdict.handovers == []


def test_a_killed_standby_leaves_no_stopping_record_and_counts_as_gone_since_its_last_record(pair):
    a, b = pair
    start = time.time()
    before = read_history(b.root)
    b.kill()
    b.start()
    b.wait_ready()
    wait_recorded(b, lambda recs: recs[-1]["ready"] and recs[-1]["pid"] == b.proc.pid, "the restarted standby ready")
    end = time.time()
    recs_b = read_history(b.root)
    assert recs_b[:len(before)] == before  # appended, never rewritten
    assert [r["event"] for r in recs_b[len(before):]][:1] == ["started"], recs_b
    assert "stopping" not in lifecycle(recs_b)
    # without a and its ready primary, the shard had no ready node from b's last record until b was back
    alone = shard_verdict({"me-b": recs_b}, start, end)
    assert alone.no_ready[0].start == start and alone.no_ready[0].end > recs_b[len(before)]["t"], alone.describe()
    assert shard_verdict({"me-a": read_history(a.root), "me-b": recs_b}, start, end).no_ready == []


def test_the_history_is_served_on_the_admin_api(pair):
    a, _b = pair
    code, body = a.admin("GET", "/v1/ha/history")
    assert code == 200, body
    assert body["name"] == "me-a" and body["file"] == str(history_file(a.root))
    assert body["events"] == read_history(a.root)[:len(body["events"])]
    assert set(body["events"][0]) >= {"t", "event", "role", "ready", "version", "pid"}
    since = body["events"][-1]["t"]
    assert a.admin("GET", f"/v1/ha/history?since={since}")[1]["events"][0]["t"] == since
    assert a.admin("GET", "/v1/ha/history?since=yesterday")[0] == 400
    assert http("GET", a.url + "/v1/ha/history")[0] == 401


def test_a_node_that_cannot_write_its_history_keeps_serving(tmp_path: Path):
    node = make_node(tmp_path, "me-solo", COMPONENT, shard=0, markets=MARKETS)
    history_file(node.root).mkdir(parents=True)  # a directory where the file should be: every write fails
    try:
        node.start()
        node.wait_ready(role="primary")
        code, body = node.admin("GET", "/v1/ha/history")
        assert code == 500 and "cannot read the HA history" in body["error"], body
    finally:
        node.stop()
    assert "cannot write" in node.log.read_text()


def test_a_line_torn_by_a_killed_process_does_not_swallow_the_next_process_s_first_record(tmp_path: Path):
    node = make_node(tmp_path, "me-solo", COMPONENT, shard=0, markets=MARKETS)
    path = history_file(node.root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b'{"t": 1.0, "event": "ready", "ro')  # what a SIGKILL mid-write leaves
    try:
        node.start()
        node.wait_ready(role="primary")
        recs = wait_recorded(node, lambda recs: recs[-1]["ready"], "the primary ready")
    finally:
        node.stop()
    assert lifecycle(read_history(node.root)) == ["started", "primary", "stopping"], recs
    assert path.read_bytes().startswith(b'{"t": 1.0, "event": "ready", "ro\n')
