# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The health gate after every patched node: pure evaluation of what was read from the nodes.

``evaluate`` turns a node's status, its peer's status, the ledger reconcile answer, a metrics
window and a reference (an unpatched control node's window over the same interval, or the
pre-rollout baseline) into one ``GateResult`` per check, each with an outcome (passed, failed,
inconclusive) and evidence a person can act on. Anything missing (a node that did not answer, a
field the status lacks) fails its check: missing data is never read as healthy. Too little
client traffic to judge makes a traffic check inconclusive, never passed (see ``_judge``).

Checks:

* ``ready``: the node says it is ready for its role.
* ``version``: the node runs the expected version.
* ``caught_up``: the node's applied sequence is within ``max_lag`` of its peer's: a primary
  must not be behind its standby by more than that; a standby must equal its primary's
  sequence within ``max_lag`` either way. The two nodes cannot be read at one instant, and
  under live load a primary moves on between two reads, so the caller reads the node, then
  the peer, then the node again (``status_after``): "behind" is judged on the node's read
  taken after the peer's, "ahead" on the one taken before it. A standby that replicates
  synchronously then passes at any order rate; one that really lags still fails.
* ``state_hash``: the node's state hash at sequence N equals its unpatched peer's at the same
  N, where N = min(node seq, peer seq) (``state_hash_seq``); the caller fetches both hashes.
* ``error_rate``: fails when the window's client error rate is above the reference's plus
  ``max_error_rate_increase`` AND significantly so (``_judge.judge_errors``).
* ``p99``: fails when the window's interpolated client p99 is above ``max(reference p99 *
  p99_factor, reference p99 + p99_slack_ms)`` AND the latencies are significantly worse
  (``_judge.judge_latency``).
* ``ledger``: the wallet's ledger reconciles (``balanced``).

Fewer than ``min_requests`` client requests on either side makes ``error_rate`` and ``p99``
inconclusive; no client requests on both sides (a standby, an idle market) passes them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ansible_collections.exchangeops.patching.plugins.module_utils import _judge
from ansible_collections.exchangeops.patching.plugins.module_utils._metrics import (
    MetricsError,
    WindowStats,
    buckets_as_dict,
    buckets_from_dict,
)

Reference = _judge.Reference

CHECKS = ("ready", "version", "caught_up", "state_hash", "error_rate", "p99", "ledger")
DEFAULT_CHECKS = {
    "matching-engine": ("ready", "version", "caught_up", "state_hash", "error_rate", "p99"),
    "wallet-signer": ("ready", "version", "error_rate", "p99", "ledger"),
}
PEER_CHECKS = ("caught_up", "state_hash")  # need the peer's status
METRICS_CHECKS = ("error_rate", "p99")  # need a metrics window and a reference (control or baseline)


class GateError(ValueError):
    """Bad gate input (bounds, baseline, check names); the message names the value and the fix."""


@dataclass(frozen=True)
class GateResult:
    name: str
    passed: bool
    evidence: str
    outcome: str = ""  # passed | failed | inconclusive; "" means what ``passed`` says
    p_values: dict[str, float] | None = None  # traffic checks judged by a test
    numbers: dict[str, Any] | None = None

    @property
    def verdict(self) -> str:
        return self.outcome or (_judge.PASSED if self.passed else _judge.FAILED)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "passed": self.passed, "outcome": self.verdict,
                               "evidence": self.evidence}
        if self.p_values is not None:
            out["p_values"] = dict(self.p_values)
        if self.numbers is not None:
            out["numbers"] = dict(self.numbers)
        return out


def from_verdict(verdict: _judge.Verdict) -> GateResult:
    return GateResult(verdict.name, verdict.outcome == _judge.PASSED, verdict.evidence, verdict.outcome,
                      dict(verdict.p_values), dict(verdict.numbers))


@dataclass(frozen=True)
class Bounds:
    """How far a patched node may be from its peer and from the baseline."""

    max_lag: int = 5
    max_error_rate_increase: float = 0.01
    p99_factor: float = 2.0
    p99_slack_ms: float = 50.0


@dataclass(frozen=True)
class Baseline:
    """Client traffic on the fleet before the rollout (health_gate mode=baseline)."""

    error_rate: float | None
    p99_ms: float | None
    requests: int
    buckets: tuple[tuple[float, int], ...] | None = None  # None: a baseline from before buckets were returned
    errors: int | None = None  # None: error_rate x requests

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error_rate": self.error_rate, "p99_ms": self.p99_ms, "requests": self.requests}
        if self.errors is not None:
            out["errors"] = self.errors
        if self.buckets is not None:
            out["buckets"] = buckets_as_dict(self.buckets)
        return out

    def sample(self) -> _judge.Sample:
        errors = self.errors if self.errors is not None else round((self.error_rate or 0.0) * self.requests)
        buckets = self.buckets
        if buckets is not None and self.requests > 0 and not any(n for _le, n in buckets):
            buckets = None  # counts lost on the way: judge on the bound rather than on an empty histogram
        return _judge.Sample(self.requests, errors, buckets, self.p99_ms)


def baseline_reference(baseline: Baseline, note: str = "no control") -> _judge.Reference:
    """The baseline as the traffic checks' reference; ``note`` says why it is not a control."""
    return _judge.Reference("baseline", "the pre-rollout baseline", baseline.sample(),
                            note=f"against the pre-rollout baseline: {note}")


@dataclass(frozen=True)
class StateHashes:
    """The node's and the peer's state hash at the same sequence (None when it could not be read)."""

    seq: int
    node: str | None
    peer: str | None


def _finite(value: Any, what: str, fix: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or math.isinf(value):
        raise GateError(f"{what} must be a finite number, got {value!r}; {fix}")
    if value < 0:
        raise GateError(f"{what} must be >= 0, got {value!r}; {fix}")
    return float(value)


def _optional(value: Any, what: str, fix: str) -> float | None:
    return None if value is None else _finite(value, what, fix)


def bounds_from(raw: Mapping[str, Any] | None) -> Bounds:
    """Bounds from the module's ``bounds`` option; unknown keys and bad values raise GateError."""
    raw = dict(raw or {})
    known = set(Bounds.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise GateError(f"bounds: unknown key(s) {', '.join(unknown)}; use {', '.join(sorted(known))}")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        number = _finite(value, f"bounds.{key}", "fix the bounds option")
        if key == "max_lag":
            if number != int(number):
                raise GateError(f"bounds.max_lag must be a whole number of journal entries, got {value!r}")
            values[key] = int(number)
        else:
            values[key] = number
    return Bounds(**values)


def baseline_from(raw: Mapping[str, Any] | None) -> Baseline:
    """A baseline from the module's ``baseline`` option (the ``baseline`` a mode=baseline run returned).

    ``buckets`` and ``errors`` are optional: a baseline taken before they were returned is still
    accepted, and its latency is then judged on the bound alone.
    """
    fix = "pass the baseline returned by health_gate mode=baseline"
    if not isinstance(raw, Mapping):
        raise GateError(f"baseline must be a dict with error_rate, p99_ms and requests, got {raw!r}; {fix}")
    missing = [k for k in ("error_rate", "p99_ms", "requests") if k not in raw]
    if missing:
        raise GateError(f"baseline lacks {', '.join(missing)}; {fix}")
    requests = raw["requests"]
    if isinstance(requests, bool) or not isinstance(requests, int) or requests < 0:
        raise GateError(f"baseline.requests must be a whole number >= 0, got {requests!r}; {fix}")
    errors = raw.get("errors")
    if errors is not None and (isinstance(errors, bool) or not isinstance(errors, int)
                               or not 0 <= errors <= requests):
        raise GateError(f"baseline.errors must be a whole number from 0 to requests ({requests}), got {errors!r}; "
                        f"{fix}")
    buckets = raw.get("buckets")
    if buckets is not None:
        if not isinstance(buckets, Mapping):
            raise GateError(f"baseline.buckets must be a dict of latency bucket bound to count, got {buckets!r}; "
                            f"{fix}")
        try:
            buckets = buckets_from_dict(dict(buckets))
        except MetricsError as e:
            raise GateError(f"baseline.buckets: {e}; {fix}") from None
    return Baseline(
        error_rate=_optional(raw["error_rate"], "baseline.error_rate", fix),
        p99_ms=_optional(raw["p99_ms"], "baseline.p99_ms", fix),
        requests=requests,
        buckets=buckets,
        errors=errors,
    )


def baseline_of(stats: WindowStats) -> Baseline:
    """The baseline a metrics window stands for (GateError when its p99 is beyond the histogram)."""
    if stats.p99_beyond:
        raise GateError("the baseline's p99 is beyond the largest latency bucket; the fleet is not healthy "
                        "enough to be a baseline: fix it first, or take the baseline on a healthy node")
    return Baseline(error_rate=stats.error_rate, p99_ms=stats.p99_ms, requests=stats.requests,
                    buckets=stats.buckets, errors=stats.errors)


def validate_checks(checks: Iterable[str]) -> list[str]:
    """The checks in order without repeats; GateError on an unknown name."""
    out = list(dict.fromkeys(checks))
    unknown = [c for c in out if c not in CHECKS]
    if unknown:
        raise GateError(f"unknown check(s) {', '.join(unknown)}; choose from {', '.join(CHECKS)}")
    return out


def state_hash_seq(status: Mapping[str, Any] | None, peer_status: Mapping[str, Any] | None) -> int | None:
    """N for the state-hash comparison: min(node seq, peer seq); None when either is unknown."""
    seqs = [s.get("seq") if isinstance(s, Mapping) else None for s in (status, peer_status)]
    if any(isinstance(s, bool) or not isinstance(s, int) for s in seqs):
        return None
    return min(seqs)  # type: ignore[type-var]


def p99_bound(baseline: Baseline, bounds: Bounds) -> float:
    """The highest p99 (ms) a patched node may show: max(baseline × factor, baseline + slack)."""
    return _judge.p99_bound_ms(baseline.p99_ms, bounds.p99_factor, bounds.p99_slack_ms)


def failing(results: Iterable[GateResult]) -> list[GateResult]:
    return [r for r in results if r.verdict == _judge.FAILED]


def inconclusive(results: Iterable[GateResult]) -> list[GateResult]:
    return [r for r in results if r.verdict == _judge.INCONCLUSIVE]


def outcome(results: Iterable[GateResult]) -> str:
    """failed when any check failed, else inconclusive when any was, else passed."""
    verdicts = {r.verdict for r in results}
    for worst in (_judge.FAILED, _judge.INCONCLUSIVE):
        if worst in verdicts:
            return worst
    return _judge.PASSED


def summary(results: Iterable[GateResult], which: str = _judge.FAILED) -> str:
    """One line naming every check with outcome ``which`` and its evidence ("" when none)."""
    return "; ".join(f"{r.name}: {r.evidence}" for r in results if r.verdict == which)


# --------------------------------------------------------------------------- formatting


def _short(digest: Any) -> str:
    return str(digest)[:12] if digest else "none"


def _name(status: Mapping[str, Any] | None, default: str) -> str:
    if isinstance(status, Mapping) and status.get("name"):
        return str(status["name"])
    return default


# --------------------------------------------------------------------------- checks


def _no_data(source: str, errors: Mapping[str, str], what: str = "", who: str = "the node") -> str:
    why = errors.get(source)
    return f"no {what or source} from {who}" + (f" ({why})" if why else "")


def _ready(status: Mapping[str, Any] | None, errors: Mapping[str, str]) -> GateResult:
    if status is None:
        return GateResult("ready", False, _no_data("status", errors))
    ready = status.get("ready")
    reason = status.get("ready_reason") or "no reason given"
    if ready is True:
        return GateResult("ready", True, f"ready ({reason})")
    if ready is None:
        return GateResult("ready", False, "the status has no 'ready' field")
    return GateResult("ready", False, f"not ready: {reason}")


def _version(status: Mapping[str, Any] | None, expect: str | None, errors: Mapping[str, str]) -> GateResult:
    if expect is None:
        return GateResult("version", False, "no expected version given (set expect_version)")
    if status is None:
        return GateResult("version", False, _no_data("status", errors))
    got = status.get("version")
    if got is None:
        return GateResult("version", False, "the status has no 'version' field")
    if str(got) == str(expect):
        return GateResult("version", True, f"runs {got} as expected")
    return GateResult("version", False, f"runs {got}, expected {expect}")


def _seq(status: Mapping[str, Any] | None) -> int | None:
    seq = status.get("seq") if isinstance(status, Mapping) else None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None


def _caught_up(status: Mapping[str, Any] | None, peer: Mapping[str, Any] | None, bounds: Bounds,
               errors: Mapping[str, str], status_after: Mapping[str, Any] | None = None) -> GateResult:
    if status is None:
        return GateResult("caught_up", False, _no_data("status", errors))
    if peer is None:
        return GateResult("caught_up", False, _no_data("peer_status", errors, "status", "the peer"))
    seq, peer_seq = _seq(status), _seq(peer)
    if seq is None or peer_seq is None:
        return GateResult("caught_up", False, f"no integer seq in the {'node' if seq is None else 'peer'}'s status")
    # "behind" on the read taken after the peer's (falls back to the only read there is)
    later = _seq(status_after) if status_after is not None else None
    seq_after = later if later is not None else seq
    role = status.get("ha_role") or "node"
    peer_role = peer.get("ha_role") or "peer"
    who = f"{peer_role} {_name(peer, 'peer')} seq {peer_seq}"
    lag = bounds.max_lag
    if seq_after < peer_seq - lag:
        return GateResult("caught_up", False,
                          f"{role} seq {seq_after} is {peer_seq - seq_after} behind {who} (max_lag {lag})")
    if role == "standby" and seq > peer_seq + lag:
        return GateResult("caught_up", False, f"standby seq {seq} is {seq - peer_seq} ahead of {who} (max_lag {lag})")
    shown = str(seq) if seq_after == seq else f"{seq}..{seq_after}"
    return GateResult("caught_up", True, f"{role} seq {shown} vs {who}: within max_lag {lag}")


def _state_hash(peer: Mapping[str, Any] | None, hashes: StateHashes | None, errors: Mapping[str, str]) -> GateResult:
    peer_name = _name(peer, "peer")
    if hashes is None:
        why = errors.get("state_hash") or errors.get("status") or errors.get("peer_status") or "sequences unknown"
        return GateResult("state_hash", False, f"no state hashes to compare ({why})")
    if hashes.node is None:
        why = errors.get("state_hash")
        return GateResult("state_hash", False, f"no state hash from the node at seq {hashes.seq}"
                          + (f" ({why})" if why else ""))
    if hashes.peer is None:
        why = errors.get("peer_state_hash")
        return GateResult("state_hash", False, f"no state hash from peer {peer_name} at seq {hashes.seq}"
                          + (f" ({why})" if why else ""))
    if hashes.node == hashes.peer:
        return GateResult("state_hash", True,
                          f"state hash at seq {hashes.seq} {_short(hashes.node)} equals peer {peer_name}'s")
    return GateResult("state_hash", False, f"state hash at seq {hashes.seq} differs: node {_short(hashes.node)} "
                      f"!= peer {peer_name} {_short(hashes.peer)}")


def _traffic(check: str, stats: WindowStats | None, reference: _judge.Reference | None, bounds: Bounds,
             settings: _judge.Settings, errors: Mapping[str, str]) -> GateResult:
    if reference is None:
        return GateResult(check, False, "no reference given (set control_url, or a baseline from health_gate "
                          "mode=baseline)")
    if stats is None:
        return GateResult(check, False, _no_data("metrics", errors))
    if reference.sample is None:
        why = f" ({reference.why_missing})" if reference.why_missing else ""
        return GateResult(check, False, f"no metrics from {reference.label}{why}: nothing to compare the node "
                          "with", _judge.INCONCLUSIVE)
    if not _judge.HAS_SCIPY:
        return GateResult(check, False, "scipy is not installed on the controller: the traffic tests cannot run")
    node = _judge.sample_of(stats)
    if check == "error_rate":
        verdict = _judge.judge_errors(node, reference.sample, reference.label, settings,
                                      bounds.max_error_rate_increase)
    else:
        verdict = _judge.judge_latency(node, reference.sample, reference.label, settings, bounds.p99_factor,
                                       bounds.p99_slack_ms)
    notes = [reference.note] if reference.note else []
    if stats.restarted:
        notes.append("the node restarted within the window: counted since the restart")
    if notes:
        verdict = _judge.Verdict(verdict.name, verdict.outcome, f"{verdict.evidence}; {'; '.join(notes)}",
                                 verdict.p_values, verdict.numbers)
    return from_verdict(verdict)


def _ledger(reconcile: Mapping[str, Any] | None, errors: Mapping[str, str]) -> GateResult:
    if reconcile is None:
        return GateResult("ledger", False, _no_data("reconcile", errors, "ledger reconcile answer"))
    balanced = reconcile.get("balanced")
    chains = reconcile.get("chains") if isinstance(reconcile.get("chains"), Mapping) else {}
    if balanced is True:
        return GateResult("ledger", True, f"ledger balanced on {', '.join(sorted(chains)) or 'every chain'}")
    if balanced is None:
        return GateResult("ledger", False, "the reconcile answer has no 'balanced' field")
    problems = []
    for chain, info in sorted(chains.items()):
        if not isinstance(info, Mapping) or info.get("balanced") is True:
            continue
        parts = [f"{chain}: ledger {info.get('ledger_balance')} != expected {info.get('expected_balance')}"
                 if info.get("ledger_balance") != info.get("expected_balance") else f"{chain}: unbalanced"]
        if info.get("double_processed"):
            parts.append(f"double processed {', '.join(map(str, info['double_processed']))}")
        if info.get("missing_on_chain"):
            parts.append(f"missing on chain {', '.join(map(str, info['missing_on_chain']))}")
        problems.append(" ".join(parts))
    return GateResult("ledger", False, "ledger unbalanced: " + ("; ".join(problems) or "no chain detail given"))


def evaluate(
    checks: Iterable[str],
    status: Mapping[str, Any] | None,
    peer_status: Mapping[str, Any] | None,
    reconcile: Mapping[str, Any] | None,
    window: WindowStats | None,
    reference: _judge.Reference | None,
    bounds: Bounds,
    *,
    settings: _judge.Settings | None = None,
    expect_version: str | None = None,
    hashes: StateHashes | None = None,
    errors: Mapping[str, str] | None = None,
    status_after: Mapping[str, Any] | None = None,
) -> list[GateResult]:
    """One GateResult per check, in the order asked.

    ``None`` for any input means it could not be read; ``errors`` maps the source
    (``status``, ``peer_status``, ``reconcile``, ``metrics``, ``state_hash``, ``peer_state_hash``)
    to why, for the evidence. ``reference`` is what the traffic checks compare ``window`` with;
    ``settings`` their alpha and minimum sample. Raises GateError on an unknown check name.
    """
    errors = errors or {}
    settings = settings or _judge.Settings()
    results = []
    for check in validate_checks(checks):
        if check == "ready":
            results.append(_ready(status, errors))
        elif check == "version":
            results.append(_version(status, expect_version, errors))
        elif check == "caught_up":
            results.append(_caught_up(status, peer_status, bounds, errors, status_after))
        elif check == "state_hash":
            results.append(_state_hash(peer_status, hashes, errors))
        elif check in METRICS_CHECKS:
            results.append(_traffic(check, window, reference, bounds, settings, errors))
        else:
            results.append(_ledger(reconcile, errors))
    return results
