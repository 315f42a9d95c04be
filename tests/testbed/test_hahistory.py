"""The HA-history checker (testbed/hahistory.py) on synthetic histories: pure logic, no process.

The real nodes that write these histories are tested in test_ha_history.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from testbed.hahistory import Gap, node_spans, shard_verdict, shard_verdicts


def rec(t: float, event: str, role: str | None = "standby", ready: bool = False, pid: int = 1) -> dict[str, Any]:
    return {"t": t, "event": event, "role": role, "ready": ready, "version": "1.0.0", "pid": pid}


def primary_from(t: float, pid: int = 1) -> list[dict[str, Any]]:
    return [rec(t, "started", None, pid=pid), rec(t + 1, "primary", "primary", True, pid=pid)]


def standby_from(t: float, pid: int = 2) -> list[dict[str, Any]]:
    return [rec(t, "started", None, pid=pid), rec(t + 1, "standby", pid=pid), rec(t + 2, "ready", ready=True, pid=pid)]


def test_overlapping_ready_intervals_leave_no_gap_and_a_switchover_is_one_short_no_primary_gap():
    # b restarts (a serves), then a steps down at 30 and b is promoted at 30.2; a follows b again at 31
    a = [*primary_from(0, pid=10), rec(30, "standby", pid=10), rec(31, "ready", ready=True, pid=10)]
    b = [*standby_from(0, pid=20), rec(10, "stopping", pid=20), *standby_from(12, pid=21),
         rec(30.2, "primary", "primary", True, pid=21)]
    v = shard_verdict({"me-a": a, "me-b": b}, 5, 40)
    assert v.no_ready == []
    assert v.no_primary == [Gap(30, 30.2)]
    assert v.longest_no_primary == pytest.approx(0.2)


def test_both_nodes_down_at_once_is_reported_with_its_interval():
    a = [*primary_from(0, pid=10), rec(20, "stopping", "primary", pid=10), *primary_from(23, pid=11)]
    b = [*standby_from(0, pid=20), rec(21, "stopping", pid=20), *standby_from(22, pid=21)]
    v = shard_verdict({"me-a": a, "me-b": b}, 5, 40)
    # a is down from 20 and ready again at 24; b from 21 until it follows again at 24
    assert v.no_ready == [Gap(21, 24)]
    assert v.no_primary == [Gap(20, 24)]
    assert v.longest_no_ready == pytest.approx(3)
    assert "no ready node: 21.000+3.000s" in v.describe()


def test_a_node_that_died_unannounced_counts_as_not_ready_from_its_last_record():
    # b was ready from 2, was killed at some unknown time, and started again at 20: no stopping record
    a = [*primary_from(0, pid=10), rec(15, "stopping", "primary", pid=10), *primary_from(16, pid=11)]
    b = [*standby_from(0, pid=20), *standby_from(20, pid=21)]
    v = shard_verdict({"me-a": a, "me-b": b}, 5, 40)
    assert v.no_ready == [Gap(15, 17)]  # b is not counted from 2: a's restart at 15 found no ready peer


def test_a_new_pid_without_a_started_record_is_a_new_process_too():
    b = [rec(0, "standby", ready=True, pid=20), rec(9, "ready", ready=True, pid=21)]
    assert [(s.start, s.end, s.ready) for s in node_spans(b, 12)] == [(0, 9, False), (9, 12, True)]


def test_records_out_of_order_across_and_within_nodes():
    a = [*primary_from(0, pid=10), rec(20, "stopping", "primary", pid=10), *primary_from(25, pid=11)]
    b = [*standby_from(0, pid=20), rec(19, "primary", "primary", True, pid=20)]
    merged = sorted(a + b, key=lambda r: -r["t"])  # a caller that mixed the records up
    v = shard_verdict({"me-a": [r for r in merged if r["pid"] < 20], "me-b": [r for r in merged if r["pid"] >= 20]},
                      5, 40)
    assert v.no_ready == []
    assert v.no_primary == []  # b was primary from 19, a second primary until 20 does not open a gap


def test_the_interval_bounds_the_gaps_and_no_history_is_all_gap():
    a = [*primary_from(0, pid=10), rec(20, "stopping", "primary", pid=10), *primary_from(30, pid=11)]
    assert shard_verdict({"me-a": a}, 25, 28).no_ready == [Gap(25, 28)]
    assert shard_verdict({"me-a": a}, 2, 19).no_ready == []
    assert shard_verdict({"me-a": [], "me-b": []}, 1, 2).no_primary == [Gap(1, 2)]
    # the last record holds until the end of the interval
    assert shard_verdict({"me-a": a}, 35, 50).no_ready == []


def test_a_ready_standby_is_a_ready_node_but_not_a_primary():
    v = shard_verdict({"me-b": standby_from(0)}, 0, 10)
    assert v.no_ready == [Gap(0, 2)]
    assert v.no_primary == [Gap(0, 10)]


def test_shard_verdicts_judges_every_shard_and_rejects_a_reversed_interval():
    by_shard = {0: {"me-0a": primary_from(0)}, 1: {"me-1a": primary_from(5)}}
    verdicts = shard_verdicts(by_shard, 2, 10)
    assert verdicts[0].no_ready == []
    assert verdicts[1].no_ready == [Gap(2, 6)]
    with pytest.raises(ValueError, match="before start"):
        shard_verdict({}, 10, 2)


def test_a_standby_that_sees_its_primary_step_down_before_its_promote_is_a_handover_not_a_gap():
    # a steps down at 30; b's next pull (30.1) finds no primary and b reports not ready until its promote
    a = [*primary_from(0, pid=10), rec(30, "standby", pid=10), rec(31, "ready", ready=True, pid=10)]
    b = [*standby_from(0, pid=20), rec(30.1, "not_ready", pid=20), rec(30.3, "primary", "primary", True, pid=20)]
    v = shard_verdict({"me-a": a, "me-b": b}, 5, 40)
    assert v.no_ready == []
    assert v.handovers == [Gap(30.1, 30.3)]
    assert v.no_primary == [Gap(30, 30.3)]


def test_a_standby_not_ready_before_the_step_down_is_no_handover():
    # b lost readiness at 29 while a was still primary; a steps down at 30 and b is promoted at 30.3 anyway
    a = [*primary_from(0, pid=10), rec(30, "standby", pid=10), rec(31, "ready", ready=True, pid=10)]
    b = [*standby_from(0, pid=20), rec(29, "not_ready", pid=20), rec(30.3, "primary", "primary", True, pid=20)]
    v = shard_verdict({"me-a": a, "me-b": b}, 5, 40)
    assert v.no_ready == [Gap(30, 30.3)]
    assert v.handovers == []


def test_a_standby_that_restarts_before_its_promote_is_no_handover():
    a = [*primary_from(0, pid=10), rec(30, "standby", pid=10), rec(33, "ready", ready=True, pid=10)]
    b = [*standby_from(0, pid=20), rec(30.1, "stopping", pid=20), rec(30.5, "started", None, pid=21),
         rec(30.6, "standby", pid=21), rec(32, "primary", "primary", True, pid=21)]
    v = shard_verdict({"me-a": a, "me-b": b}, 5, 40)
    assert v.no_ready == [Gap(30.1, 32)]
    assert v.handovers == []
