# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The health gate after every patched node: pure evaluation of what was read from the nodes.

``evaluate`` turns a node's status, its peer's status, the ledger reconcile answer, a metrics
window and the pre-rollout baseline into one ``GateResult`` per check, each with evidence a
person can act on. Anything missing (a node that did not answer, a field the status lacks,
a window without traffic) fails its check: missing data is never read as healthy.

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
* ``error_rate``: the window's client error rate is at most the baseline's plus
  ``max_error_rate_increase``.
* ``p99``: the window's client p99 is at most ``max(baseline p99 * p99_factor, baseline p99 +
  p99_slack_ms)``.
* ``ledger``: the wallet's ledger reconciles (``balanced``).

No data in the window (no client requests) passes ``error_rate`` and ``p99`` only when the
baseline had no client traffic either (a standby, an idle market); otherwise it fails. A
baseline without data counts as 0 for the bound, which makes the bound stricter, never laxer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ansible_collections.exchangeops.patching.plugins.module_utils._metrics import WindowStats

CHECKS = ("ready", "version", "caught_up", "state_hash", "error_rate", "p99", "ledger")
DEFAULT_CHECKS = {
    "matching-engine": ("ready", "version", "caught_up", "state_hash", "error_rate", "p99"),
    "wallet-signer": ("ready", "version", "error_rate", "p99", "ledger"),
}
PEER_CHECKS = ("caught_up", "state_hash")  # need the peer's status
METRICS_CHECKS = ("error_rate", "p99")  # need a metrics window and a baseline


class GateError(ValueError):
    """Bad gate input (bounds, baseline, check names); the message names the value and the fix."""


@dataclass(frozen=True)
class GateResult:
    name: str
    passed: bool
    evidence: str

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "evidence": self.evidence}


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

    def as_dict(self) -> dict[str, Any]:
        return {"error_rate": self.error_rate, "p99_ms": self.p99_ms, "requests": self.requests}


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
    """A baseline from the module's ``baseline`` option (the ``baseline`` a mode=baseline run returned)."""
    fix = "pass the baseline returned by health_gate mode=baseline"
    if not isinstance(raw, Mapping):
        raise GateError(f"baseline must be a dict with error_rate, p99_ms and requests, got {raw!r}; {fix}")
    missing = [k for k in ("error_rate", "p99_ms", "requests") if k not in raw]
    if missing:
        raise GateError(f"baseline lacks {', '.join(missing)}; {fix}")
    requests = raw["requests"]
    if isinstance(requests, bool) or not isinstance(requests, int) or requests < 0:
        raise GateError(f"baseline.requests must be a whole number >= 0, got {requests!r}; {fix}")
    return Baseline(
        error_rate=_optional(raw["error_rate"], "baseline.error_rate", fix),
        p99_ms=_optional(raw["p99_ms"], "baseline.p99_ms", fix),
        requests=requests,
    )


def baseline_of(stats: WindowStats) -> Baseline:
    """The baseline a metrics window stands for (GateError when its p99 is beyond the histogram)."""
    if stats.p99_ms is not None and math.isinf(stats.p99_ms):
        raise GateError("the baseline's p99 is beyond the largest latency bucket; the fleet is not healthy "
                        "enough to be a baseline: fix it first, or take the baseline on a healthy node")
    return Baseline(error_rate=stats.error_rate, p99_ms=stats.p99_ms, requests=stats.requests)


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
    base = baseline.p99_ms or 0.0
    return max(base * bounds.p99_factor, base + bounds.p99_slack_ms)


def failing(results: Iterable[GateResult]) -> list[GateResult]:
    return [r for r in results if not r.passed]


def summary(results: Iterable[GateResult]) -> str:
    """One line naming every failing check and its evidence ("" when all passed)."""
    return "; ".join(f"{r.name}: {r.evidence}" for r in failing(results))


# --------------------------------------------------------------------------- formatting


def _ms(value: float | None) -> str:
    if value is None:
        return "none"
    if math.isinf(value):
        return "+Inf ms"
    return f"{value:g} ms"


def _pct(value: float | None) -> str:
    return "none" if value is None else f"{value * 100:.2f}%"


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


def _error_rate(stats: WindowStats | None, baseline: Baseline | None, bounds: Bounds,
                errors: Mapping[str, str]) -> GateResult:
    if baseline is None:
        return GateResult("error_rate", False, "no baseline given (take one with health_gate mode=baseline)")
    if stats is None:
        return GateResult("error_rate", False, _no_data("metrics", errors))
    base = baseline.error_rate or 0.0
    bound = base + bounds.max_error_rate_increase
    if stats.error_rate is None:
        if baseline.requests == 0:
            return GateResult("error_rate", True, "no client requests in the window, none in the baseline either")
        return GateResult("error_rate", False, f"no client requests in the window (the baseline had "
                          f"{baseline.requests}): no data to judge; send traffic or gate longer")
    verdict = "<=" if stats.error_rate <= bound else ">"
    return GateResult(
        "error_rate", stats.error_rate <= bound,
        f"error rate {_pct(stats.error_rate)} ({stats.errors}/{stats.requests}) {verdict} bound {_pct(bound)} "
        f"(baseline {_pct(baseline.error_rate)} + {_pct(bounds.max_error_rate_increase)})",
    )


def _p99(stats: WindowStats | None, baseline: Baseline | None, bounds: Bounds,
         errors: Mapping[str, str]) -> GateResult:
    if baseline is None:
        return GateResult("p99", False, "no baseline given (take one with health_gate mode=baseline)")
    if stats is None:
        return GateResult("p99", False, _no_data("metrics", errors))
    if stats.p99_ms is None:
        if baseline.p99_ms is None:
            return GateResult("p99", True, "no client requests in the window, none in the baseline either")
        return GateResult("p99", False, f"no client requests in the window (baseline p99 {_ms(baseline.p99_ms)}): "
                          "no data to judge; send traffic or gate longer")
    bound = p99_bound(baseline, bounds)
    verdict = "<=" if stats.p99_ms <= bound else ">"
    base = _ms(baseline.p99_ms if baseline.p99_ms is not None else 0.0)
    return GateResult(
        "p99", stats.p99_ms <= bound,
        f"p99 {_ms(stats.p99_ms)} {verdict} bound {_ms(bound)} (max of baseline {base} × {bounds.p99_factor:g} "
        f"and baseline {base} + {bounds.p99_slack_ms:g} ms; {stats.client_requests} client requests)",
    )


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
    baseline: Baseline | None,
    bounds: Bounds,
    *,
    expect_version: str | None = None,
    hashes: StateHashes | None = None,
    errors: Mapping[str, str] | None = None,
    status_after: Mapping[str, Any] | None = None,
) -> list[GateResult]:
    """One GateResult per check, in the order asked.

    ``None`` for any input means it could not be read; ``errors`` maps the source
    (``status``, ``peer_status``, ``reconcile``, ``metrics``, ``state_hash``, ``peer_state_hash``)
    to why, for the evidence. Raises GateError on an unknown check name.
    """
    errors = errors or {}
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
        elif check == "error_rate":
            results.append(_error_rate(window, baseline, bounds, errors))
        elif check == "p99":
            results.append(_p99(window, baseline, bounds, errors))
        else:
            results.append(_ledger(reconcile, errors))
    return results
