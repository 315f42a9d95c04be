# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import math
from typing import Any

import pytest
from ansible_collections.exchangeops.patching.plugins.module_utils._gates import (
    CHECKS,
    DEFAULT_CHECKS,
    Baseline,
    Bounds,
    GateError,
    GateResult,
    StateHashes,
    baseline_from,
    baseline_of,
    baseline_reference,
    bounds_from,
    evaluate,
    failing,
    inconclusive,
    outcome,
    p99_bound,
    state_hash_seq,
    summary,
    validate_checks,
)
from ansible_collections.exchangeops.patching.plugins.module_utils._judge import Settings, control_reference
from ansible_collections.exchangeops.patching.plugins.module_utils._metrics import WindowStats, quantile_ms

H1 = "3fa1c2d4e5f6" + "0" * 52
H2 = "9b02c3d4e5f6" + "1" * 52
BOUNDS = Bounds()


def node(**over: Any) -> dict[str, Any]:
    doc = {"name": "me-b", "component": "matching-engine", "version": "1.1.0", "ready": True,
           "ready_reason": "standby, following the primary", "ha_role": "standby", "seq": 120, "state_hash": H1}
    doc.update(over)
    return doc


def peer(**over: Any) -> dict[str, Any]:
    doc = {"name": "me-a", "component": "matching-engine", "version": "1.0.0", "ready": True,
           "ready_reason": "primary, replication sync", "ha_role": "primary", "seq": 121, "state_hash": H2}
    doc.update(over)
    return doc


EDGES = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, math.inf)


def hist(**counts: int) -> tuple[tuple[float, int], ...]:
    """Per-bucket counts on the testbed's bounds: hist(ms5=200, ms10=196) (the bucket's upper bound in ms)."""
    given = {float(k[2:].replace("_", ".")) / 1000.0 if k != "inf" else math.inf: n for k, n in counts.items()}
    return tuple((le, given.get(le, 0)) for le in EDGES)


HEALTHY = hist(ms5=200, ms10=192, ms25=8)  # p99: rank 396 is the 4th of 8 in (10, 25] ms: 17.5 ms


def stats(requests: int = 400, errors: int = 0, buckets: tuple[tuple[float, int], ...] | None = None) -> WindowStats:
    if buckets is None:
        buckets = tuple((le, round(n * requests / 400)) for le, n in HEALTHY) if requests else ()
    return WindowStats(requests=requests, errors=errors, error_rate=(errors / requests) if requests else None,
                       p99_ms=quantile_ms(0.99, buckets), client_requests=sum(n for _le, n in buckets),
                       buckets=buckets)


BASE = Baseline(error_rate=0.0, p99_ms=quantile_ms(0.99, HEALTHY), requests=400, buckets=HEALTHY, errors=0)
QUIET = Baseline(error_rate=None, p99_ms=None, requests=0, buckets=(), errors=0)
REF = baseline_reference(BASE)


def one(check: str, **kw: Any) -> GateResult:
    if "baseline" in kw:
        base = kw.pop("baseline")
        kw["reference"] = None if base is None else baseline_reference(base)
    args: dict[str, Any] = {"status": node(), "peer_status": peer(), "reconcile": None, "window": stats(),
                            "reference": REF, "bounds": BOUNDS, "expect_version": "1.1.0",
                            "hashes": StateHashes(120, H1, H1)}
    args.update(kw)
    [result] = evaluate([check], **args)
    assert result.name == check
    return result


def test_every_matching_check_passes_on_a_healthy_standby() -> None:
    results = evaluate(DEFAULT_CHECKS["matching-engine"], node(), peer(), None, stats(), REF, BOUNDS,
                       expect_version="1.1.0", hashes=StateHashes(120, H1, H1))
    assert [r.name for r in results] == list(DEFAULT_CHECKS["matching-engine"])
    assert all(r.passed for r in results), results
    assert failing(results) == [] and summary(results) == ""
    evidence = {r.name: r.evidence for r in results}
    assert evidence["ready"] == "ready (standby, following the primary)"
    assert evidence["version"] == "runs 1.1.0 as expected"
    assert evidence["caught_up"] == "standby seq 120 vs primary me-a seq 121: within max_lag 5"
    assert evidence["state_hash"] == "state hash at seq 120 3fa1c2d4e5f6 equals peer me-a's"
    assert evidence["error_rate"].startswith("error rate 0.00% (0/400) vs the pre-rollout baseline 0.00% (0/400), "
                                             "bound 1.00% (+ 1.00%); Fisher p=1 >= alpha 0.01: within the bound")
    assert evidence["error_rate"].endswith("; against the pre-rollout baseline: no control")
    assert evidence["p99"].startswith("p99 17.5 ms vs the pre-rollout baseline 17.5 ms (bound 67.5 ms, ")
    assert "within the bound; Mann–Whitney p=0.5" in evidence["p99"]
    assert {r.verdict for r in results} == {"passed"} and outcome(results) == "passed"


def test_ready() -> None:
    assert one("ready").passed
    r = one("ready", status=node(ready=False, ready_reason="release fault: never-ready"))
    assert (r.passed, r.evidence) == (False, "not ready: release fault: never-ready")
    r = one("ready", status=None, errors={"status": "http://127.0.0.1:8080 is unreachable (Connection refused)"})
    assert not r.passed and r.evidence == ("no status from the node (http://127.0.0.1:8080 is unreachable "
                                           "(Connection refused))")
    status = node()
    del status["ready"]
    assert one("ready", status=status).evidence == "the status has no 'ready' field"
    assert not one("ready", status=node(ready="yes")).passed  # only True is ready


def test_version() -> None:
    r = one("version", status=node(version="1.0.0"))
    assert (r.passed, r.evidence) == (False, "runs 1.0.0, expected 1.1.0")
    assert not one("version", expect_version=None).passed
    assert "set expect_version" in one("version", expect_version=None).evidence
    assert not one("version", status=None).passed
    status = node()
    del status["version"]
    assert not one("version", status=status).passed


@pytest.mark.parametrize(("mine", "theirs", "passed", "evidence"), [
    (node(seq=121), peer(seq=121), True, "standby seq 121 vs primary me-a seq 121: within max_lag 5"),
    (node(seq=116), peer(seq=121), True, "standby seq 116 vs primary me-a seq 121: within max_lag 5"),
    (node(seq=80), peer(seq=121), False, "standby seq 80 is 41 behind primary me-a seq 121 (max_lag 5)"),
    (node(seq=130), peer(seq=121), False, "standby seq 130 is 9 ahead of primary me-a seq 121 (max_lag 5)"),
    # A primary may be ahead of its standby by any amount (the standby is the one catching up)...
    (node(ha_role="primary", seq=500), peer(ha_role="standby", seq=121), True,
     "primary seq 500 vs standby me-a seq 121: within max_lag 5"),
    # ...but not behind it.
    (node(ha_role="primary", seq=100), peer(ha_role="standby", seq=121), False,
     "primary seq 100 is 21 behind standby me-a seq 121 (max_lag 5)"),
])
def test_caught_up(mine: dict, theirs: dict, passed: bool, evidence: str) -> None:
    r = one("caught_up", status=mine, peer_status=theirs)
    assert (r.passed, r.evidence) == (passed, evidence)


def test_caught_up_judges_behind_on_the_read_after_the_peers() -> None:
    # under load the primary moved on between the standby's first read and its own
    r = one("caught_up", status=node(seq=20004), peer_status=peer(seq=20047), status_after=node(seq=20051))
    assert (r.passed, r.evidence) == (True, "standby seq 20004..20051 vs primary me-a seq 20047: within max_lag 5")
    # a standby that really lags is still behind on the later read
    r = one("caught_up", status=node(seq=20004), peer_status=peer(seq=20047), status_after=node(seq=20010))
    assert (r.passed, r.evidence) == (False, "standby seq 20010 is 37 behind primary me-a seq 20047 (max_lag 5)")
    # "ahead" is judged on the read before the peer's: a later read cannot excuse it
    r = one("caught_up", status=node(seq=130), peer_status=peer(seq=121), status_after=node(seq=131))
    assert not r.passed and "9 ahead" in r.evidence
    # an unreadable later read falls back to the first
    assert not one("caught_up", status=node(seq=80), peer_status=peer(seq=121), status_after=None).passed


def test_caught_up_without_data_fails() -> None:
    assert one("caught_up", bounds=Bounds(max_lag=0), status=node(seq=120), peer_status=peer(seq=121)).passed is False
    r = one("caught_up", peer_status=None, errors={"peer_status": "GET http://x/v1/status answered 500: boom"})
    assert not r.passed and r.evidence == "no status from the peer (GET http://x/v1/status answered 500: boom)"
    assert not one("caught_up", status=None).passed
    assert one("caught_up", status=node(seq=None)).evidence == "no integer seq in the node's status"
    assert one("caught_up", peer_status=peer(seq="121")).evidence == "no integer seq in the peer's status"


def test_state_hash() -> None:
    r = one("state_hash", hashes=StateHashes(120, H1, H2))
    assert not r.passed
    assert r.evidence == "state hash at seq 120 differs: node 3fa1c2d4e5f6 != peer me-a 9b02c3d4e5f6"
    r = one("state_hash", hashes=StateHashes(120, None, H2), errors={"state_hash": "GET ... answered 404"})
    assert not r.passed and r.evidence == "no state hash from the node at seq 120 (GET ... answered 404)"
    r = one("state_hash", hashes=StateHashes(120, H1, None))
    assert not r.passed and r.evidence == "no state hash from peer me-a at seq 120"
    r = one("state_hash", hashes=None, errors={"peer_status": "peer unreachable"})
    assert not r.passed and r.evidence == "no state hashes to compare (peer unreachable)"
    assert one("state_hash", hashes=StateHashes(0, H1, H1)).passed


def test_state_hash_seq() -> None:
    assert state_hash_seq(node(seq=120), peer(seq=121)) == 120
    assert state_hash_seq(node(seq=122), peer(seq=121)) == 121
    assert state_hash_seq(None, peer()) is None
    assert state_hash_seq(node(seq=True), peer()) is None
    assert state_hash_seq(node(), {}) is None


def test_error_rate() -> None:
    base = Baseline(0.005, 10.0, 400, HEALTHY, 2)
    r = one("error_rate", window=stats(requests=400, errors=20), baseline=base)
    assert (r.passed, r.verdict) == (False, "failed")
    assert r.evidence.startswith("error rate 5.00% (20/400) vs the pre-rollout baseline 0.50% (2/400), bound 1.50% "
                                 "(+ 1.00%); Fisher p=")
    assert "< alpha 0.01: more errors beyond the bound and significantly" in r.evidence
    assert r.p_values is not None and r.p_values["fisher"] < 1e-3
    assert r.as_dict()["outcome"] == "failed" and r.as_dict()["numbers"]["node_errors"] == 20
    # beyond the bound but not significant: 8/400 vs 2/400 could be noise
    r = one("error_rate", window=stats(requests=400, errors=8), baseline=base)
    assert r.passed and "beyond the bound but not significantly" in r.evidence
    # significant but within the bound: a looser bound lets it pass
    looser = bounds_from({"max_error_rate_increase": 0.05})
    assert one("error_rate", window=stats(requests=400, errors=20), baseline=base, bounds=looser).passed


def test_traffic_below_the_minimum_sample_is_inconclusive() -> None:
    for check in ("error_rate", "p99"):
        r = one(check, window=stats(requests=20, errors=20))
        assert (r.passed, r.verdict) == (False, "inconclusive")
        assert "the node's window had 20 client requests, fewer than min_requests 50" in r.evidence
        r = one(check, window=stats(requests=20), settings=Settings(min_requests=10))
        assert r.verdict == "passed"
        # a reference with too few requests is just as short of evidence
        short = Baseline(0.0, 10.0, 30, hist(ms10=30), 0)
        r = one(check, baseline=short)
        assert r.verdict == "inconclusive" and "the pre-rollout baseline had 30 client requests" in r.evidence
        # traffic stopped: no requests in the window is inconclusive, not a pass (and not a fail)
        r = one(check, window=stats(requests=0))
        assert r.verdict == "inconclusive" and "the node's window had 0 client requests" in r.evidence


def test_no_traffic_in_either_passes() -> None:
    quiet = stats(requests=0)
    for check in ("error_rate", "p99"):
        r = one(check, window=quiet, baseline=QUIET)
        assert r.passed and r.evidence.startswith("no client traffic in either the window or the pre-rollout baseline")
        r = one(check, window=None, errors={"metrics": "http://x/metrics is unreachable"})
        assert r.verdict == "failed" and r.evidence == "no metrics from the node (http://x/metrics is unreachable)"
        r = one(check, baseline=None)
        assert r.verdict == "failed" and "set control_url, or a baseline" in r.evidence


def test_p99_against_a_control() -> None:
    control = control_reference("me-c", "http://127.0.0.9:8080", stats())
    slow = hist(ms150=50, ms200=300, ms300=50)  # every request 100+ ms slower
    r = one("p99", window=stats(buckets=slow), reference=control)
    assert r.verdict == "failed"
    assert r.evidence.startswith("p99 292 ms vs control me-c 17.5 ms (bound 67.5 ms, max of 17.5 ms × 2 and + "
                                 "50 ms): slower beyond the bound and significantly; Mann–Whitney p=")
    assert r.evidence.endswith("; 400 vs 400 client requests")
    assert r.p_values is not None and r.p_values["mann_whitney"] < 1e-12
    assert r.numbers is not None and r.numbers["node_above_bound"] == 400
    assert control.as_dict() == {"kind": "control", "url": "http://127.0.0.9:8080"}
    # the control could not be read: nothing to compare with
    gone = control_reference("me-c", "http://127.0.0.9:8080", None, "http://127.0.0.9:8080 is unreachable")
    r = one("p99", reference=gone)
    assert r.verdict == "inconclusive" and r.evidence.startswith("no metrics from control me-c (http://127.0.0.9")


def test_p99() -> None:
    # 5 slow outliers in 400: the interpolated p99 moves into (0.75, 1] s, beyond the bound, but 5 of 400
    # against none of 400 is not evidence of a regression at alpha/2 (Fisher p ~ 0.03)
    outlier = hist(ms5=200, ms10=190, ms25=5, ms1000=5)
    r = one("p99", window=stats(buckets=outlier))
    assert r.verdict == "passed" and "beyond the bound but not significantly" in r.evidence
    # 3% of requests 0.3-0.4 s slower: a tail regression the Fisher test sees
    tail = hist(ms5=190, ms10=194, ms25=4, ms400=12)
    r = one("p99", window=stats(buckets=tail))
    assert r.verdict == "failed" and r.p_values is not None and r.p_values["tail_fisher"] < 0.005
    # significantly slower but within the bound: passes
    slower = hist(ms10=200, ms25=196, ms50=4)
    r = one("p99", window=stats(buckets=slower))
    assert r.verdict == "passed" and r.p_values is not None and r.p_values["mann_whitney"] < 0.005
    assert "within the bound" in r.evidence
    # beyond the largest bucket: p99 is the largest finite bound, still judged
    r = one("p99", window=stats(buckets=hist(inf=400)))
    assert r.verdict == "failed" and r.evidence.startswith("p99 2500 ms vs")


def test_p99_against_an_old_baseline_without_buckets_uses_the_bound_alone() -> None:
    old = baseline_from({"error_rate": 0.0, "p99_ms": 25.0, "requests": 400})
    r = one("p99", baseline=old, window=stats(buckets=hist(ms150=50, ms200=350)))
    assert r.verdict == "failed" and "judged on the bound alone" in r.evidence and "take a new baseline" in r.evidence
    assert r.p_values == {}
    assert one("p99", baseline=old).verdict == "passed"
    assert one("p99", baseline=old, window=stats(requests=10)).verdict == "inconclusive"
    # the error_rate test still runs: errors come from error_rate x requests
    assert one("error_rate", baseline=old, window=stats(errors=40)).verdict == "failed"


def test_p99_bound() -> None:
    assert p99_bound(Baseline(0.0, 40.0, 1), Bounds()) == 90.0  # 40 + 50 > 40 × 2
    assert p99_bound(Baseline(0.0, 400.0, 1), Bounds()) == 800.0  # 400 × 2 > 400 + 50
    assert p99_bound(Baseline(0.0, 40.0, 1), Bounds(p99_factor=3.0, p99_slack_ms=0.0)) == 120.0
    assert p99_bound(Baseline(None, None, 0), Bounds()) == 50.0


def test_ledger() -> None:
    ok = {"balanced": True, "chains": {"ETH": {"balanced": True}, "BTC": {"balanced": True}}}
    assert one("ledger", reconcile=ok).evidence == "ledger balanced on BTC, ETH"
    bad = {"balanced": False, "chains": {
        "BTC": {"balanced": False, "ledger_balance": 999_990, "expected_balance": 1_000_000,
                "double_processed": ["w:BTC:3"], "missing_on_chain": []},
        "ETH": {"balanced": True, "ledger_balance": 5, "expected_balance": 5}}}
    r = one("ledger", reconcile=bad)
    assert not r.passed
    assert r.evidence == "ledger unbalanced: BTC: ledger 999990 != expected 1000000 double processed w:BTC:3"
    assert one("ledger", reconcile={"chains": {}}).evidence == "the reconcile answer has no 'balanced' field"
    r = one("ledger", reconcile=None, errors={"reconcile": "answered 503: still syncing"})
    assert not r.passed and r.evidence == "no ledger reconcile answer from the node (answered 503: still syncing)"


def test_summary_names_failing_checks() -> None:
    results = evaluate(["ready", "version", "p99", "error_rate"], node(ready=False, ready_reason="starting"), None,
                       None, stats(buckets=hist(ms300=400)), REF, BOUNDS, expect_version="1.1.0")
    assert [r.name for r in failing(results)] == ["ready", "p99"]
    assert summary(results).startswith("ready: not ready: starting; p99: p99 299 ms vs the pre-rollout baseline")
    assert results[0].as_dict() == {"name": "ready", "passed": False, "outcome": "failed",
                                    "evidence": "not ready: starting"}
    assert outcome(results) == "failed"
    results = evaluate(["ready", "p99"], node(), None, None, stats(requests=10), REF, BOUNDS)
    assert outcome(results) == "inconclusive" and [r.name for r in inconclusive(results)] == ["p99"]
    assert failing(results) == [] and summary(results, "inconclusive").startswith("p99: the node's window had 10")


def test_validate_checks() -> None:
    assert validate_checks(["p99", "ready", "p99"]) == ["p99", "ready"]
    assert set(DEFAULT_CHECKS["wallet-signer"]) <= set(CHECKS)
    with pytest.raises(GateError, match=r"unknown check.*latency.*choose from ready"):
        validate_checks(["latency"])
    with pytest.raises(GateError):
        evaluate(["nope"], node(), None, None, None, None, BOUNDS)


def test_bounds_from() -> None:
    assert bounds_from(None) == Bounds(max_lag=5, max_error_rate_increase=0.01, p99_factor=2.0, p99_slack_ms=50.0)
    assert bounds_from({"max_lag": 0, "p99_factor": 1}) == Bounds(max_lag=0, p99_factor=1.0)
    assert bounds_from({"max_lag": 3.0}).max_lag == 3
    with pytest.raises(GateError, match=r"unknown key.*p99_fator; use max_error_rate_increase"):
        bounds_from({"p99_fator": 2})
    with pytest.raises(GateError, match=r"bounds.p99_slack_ms must be >= 0, got -1"):
        bounds_from({"p99_slack_ms": -1})
    with pytest.raises(GateError, match=r"bounds.max_lag must be a whole number"):
        bounds_from({"max_lag": 1.5})
    for bad in (True, "2", math.inf, math.nan, None):
        with pytest.raises(GateError, match="finite number"):
            bounds_from({"p99_factor": bad})


def test_baseline_from_and_of() -> None:
    raw = {"error_rate": 0.002, "p99_ms": 25.0, "requests": 812}
    assert baseline_from(raw) == Baseline(0.002, 25.0, 812)
    assert baseline_from(raw).as_dict() == raw
    assert baseline_from(raw).sample().errors == 2  # an old baseline: errors from the rate
    full = {**raw, "errors": 2, "buckets": {"0.01": 800, "0.025": 12, "+Inf": 0}}
    assert baseline_from(full).buckets == ((0.01, 800), (0.025, 12), (math.inf, 0))
    assert baseline_from(full).as_dict() == full
    with pytest.raises(GateError, match=r"baseline.buckets: bucket bound 'fast' is not a number"):
        baseline_from({**raw, "buckets": {"fast": 1}})
    with pytest.raises(GateError, match=r"baseline.errors must be a whole number from 0 to requests \(812\)"):
        baseline_from({**raw, "errors": 900})
    assert baseline_from({"error_rate": None, "p99_ms": None, "requests": 0}) == Baseline(None, None, 0)
    with pytest.raises(GateError, match="baseline lacks p99_ms, requests; pass the baseline returned"):
        baseline_from({"error_rate": 0.0})
    with pytest.raises(GateError, match=r"baseline.requests must be a whole number"):
        baseline_from({"error_rate": 0.0, "p99_ms": 1.0, "requests": None})
    with pytest.raises(GateError, match=r"baseline.p99_ms must be a finite number"):
        baseline_from({"error_rate": 0.0, "p99_ms": math.inf, "requests": 3})
    with pytest.raises(GateError, match="must be a dict"):
        baseline_from([1, 2])  # type: ignore[arg-type]
    ten = stats(requests=10, errors=1, buckets=hist(ms5=10))
    assert baseline_of(ten) == Baseline(0.1, 4.975, 10, hist(ms5=10), 1)
    assert baseline_of(stats(requests=0)) == Baseline(None, None, 0, (), 0)
    with pytest.raises(GateError, match="beyond the largest latency bucket"):
        baseline_of(stats(buckets=hist(inf=400)))
