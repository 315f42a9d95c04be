# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The statistics behind the health gate's traffic checks (``error_rate``, ``p99``): pure, clock-free.

A node's window is compared with a reference window (an unpatched control node over the same
interval, or the pre-rollout baseline). A check FAILS only when the difference is statistically
significant at ``alpha`` AND beyond the effect-size bound; it is INCONCLUSIVE when either side
has fewer than ``min_requests`` client requests (both sides without any traffic - a standby, an
idle market - PASSES: there is nothing to compare); otherwise it PASSES.

* ``p99``: one-sided Mann-Whitney U (``alternative='greater'``, tie-corrected asymptotic) on the
  latency histograms as samples of bucket indices (every request of a bucket ties), and a
  one-sided Fisher exact test of the share of requests in buckets reaching above the bound.
  Each runs at ``alpha / 2`` (Bonferroni), so the check's false-positive rate is at most
  ``alpha``. The effect size: interpolated p99 > max(reference p99 x p99_factor, reference p99
  + p99_slack_ms). A reference without buckets (a baseline taken before buckets were returned)
  is judged on the bound alone, with the minimum sample, and the evidence says so.
* ``error_rate``: one-sided Fisher exact test of node errors/requests against the reference's
  at ``alpha``, AND error rate > reference rate + max_error_rate_increase.

scipy is imported guarded: ``HAS_SCIPY`` is False without it and the module reports
``missing_required_lib('scipy')``.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from typing import Any

try:
    import numpy as np
    from scipy import stats as scipy_stats
except ImportError:
    HAS_SCIPY = False
    SCIPY_IMPORT_ERROR: str | None = traceback.format_exc()
else:
    HAS_SCIPY = True
    SCIPY_IMPORT_ERROR = None

from ansible_collections.exchangeops.patching.plugins.module_utils._metrics import WindowStats, quantile_ms

PASSED, FAILED, INCONCLUSIVE = "passed", "failed", "inconclusive"
OUTCOMES = (PASSED, FAILED, INCONCLUSIVE)


class JudgeError(ValueError):
    """A bad alpha or min_requests; the message names the option and the fix."""


@dataclass(frozen=True)
class Settings:
    alpha: float = 0.01
    min_requests: int = 50
    # client requests the pre-rollout baseline saw (0 or None: none, or no baseline): when it saw
    # traffic, a window with none on either side means traffic stopped, not an idle market
    expected_requests: int | None = None


def settings_from(alpha: Any, min_requests: Any, expected_requests: int | None = None) -> Settings:
    """Settings from the module's options; JudgeError naming the option and the fix."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < alpha <= 0.5:
        raise JudgeError(f"alpha must be within (0, 0.5], got {alpha!r}; it is the false-positive rate of each "
                         "traffic check: use e.g. 0.01 (one healthy node in a hundred wrongly failed)")
    if isinstance(min_requests, bool) or not isinstance(min_requests, int) or min_requests < 1:
        raise JudgeError(f"min_requests must be a whole number >= 1, got {min_requests!r}; use e.g. 50 (fewer "
                         "requests give a test too little evidence to tell a regression from noise)")
    return Settings(float(alpha), min_requests, expected_requests)


@dataclass(frozen=True)
class Sample:
    """One side's client traffic in a window."""

    requests: int  # client requests (the error rate's denominator)
    errors: int  # of them answered 5xx
    buckets: tuple[tuple[float, int], ...] | None  # latency per bucket (le seconds, count); None: not known
    p99_ms: float | None = None  # only used when buckets is None (an old baseline)

    @property
    def latency_requests(self) -> int:
        return sum(n for _le, n in self.buckets) if self.buckets is not None else self.requests

    @property
    def p99(self) -> float | None:
        if self.buckets is None:
            return self.p99_ms
        return quantile_ms(0.99, self.buckets)


@dataclass(frozen=True)
class Reference:
    """What a node's traffic is compared with: a control node's window, or the pre-rollout baseline."""

    kind: str  # control | baseline
    label: str  # for the evidence: "control me-a (http://...)", "the pre-rollout baseline"
    sample: Sample | None  # None: the control's metrics could not be read
    url: str | None = None
    why_missing: str = ""
    note: str = ""  # appended to the evidence: "against the pre-rollout baseline: no control"

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "url": self.url}


def control_reference(name: str, url: str, stats: WindowStats | None, why_missing: str = "") -> Reference:
    sample = None if stats is None else sample_of(stats)
    return Reference("control", f"control {name}", sample, url, why_missing)


def sample_of(stats: WindowStats) -> Sample:
    """A window as a sample for the tests (its latency buckets; none without traffic)."""
    return Sample(stats.requests, stats.errors, stats.buckets, stats.p99_ms)


@dataclass(frozen=True)
class Verdict:
    """One traffic check's judgment."""

    name: str
    outcome: str
    evidence: str
    p_values: dict[str, float] = field(default_factory=dict)
    numbers: dict[str, Any] = field(default_factory=dict)


def _p(value: float) -> str:
    return f"{value:.2g}"


def _ms(value: float | None) -> str:
    return "none" if value is None else f"{value:.4g} ms"


def _pct(value: float | None) -> str:
    return "none" if value is None else f"{value * 100:.2f}%"


def _sample_check(name: str, node_n: int, ref_n: int, ref_label: str, settings: Settings,
                  unit: str) -> Verdict | None:
    """PASSED when neither side had traffic, INCONCLUSIVE below the minimum sample, else None (judge it)."""
    numbers = {"node_requests": node_n, "reference_requests": ref_n, "min_requests": settings.min_requests}
    if node_n == 0 and ref_n == 0:
        if settings.expected_requests:
            # the market traded before the rollout: a silent window is traffic that stopped, not an idle market
            return Verdict(name, INCONCLUSIVE, f"no client traffic in either the window or {ref_label}, though the "
                           f"pre-rollout baseline had {settings.expected_requests}: traffic stopped, nothing to "
                           "judge; send traffic or gate longer (evidence_timeout)", numbers=numbers)
        return Verdict(name, PASSED, f"no client traffic in either the window or {ref_label}", numbers=numbers)
    short = [f"{who} had {n} {unit}" for who, n in (("the node's window", node_n), (ref_label, ref_n))
             if n < settings.min_requests]
    if short:
        return Verdict(name, INCONCLUSIVE, f"{' and '.join(short)}, fewer than min_requests "
                       f"{settings.min_requests}: not enough evidence to judge; send traffic or gate longer "
                       "(evidence_timeout)", numbers=numbers)
    return None


def _indices(buckets: tuple[tuple[float, int], ...], edges: list[float]) -> Any:
    """A histogram as a sample of bucket indices on the shared edges (ties within a bucket)."""
    counts = dict(buckets)
    return np.repeat(np.arange(len(edges)), [int(counts.get(le, 0)) for le in edges])


def _above(buckets: tuple[tuple[float, int], ...], bound_ms: float) -> int:
    """Requests in buckets that reach above ``bound_ms`` (upper bound > bound)."""
    return sum(n for le, n in buckets if le * 1000.0 > bound_ms)


def mann_whitney_greater(node: tuple[tuple[float, int], ...], ref: tuple[tuple[float, int], ...]) -> float:
    """One-sided p-value that the node's latencies are stochastically greater (1.0 when every request ties)."""
    edges = sorted({le for le, _n in node} | {le for le, _n in ref})
    x, y = _indices(node, edges), _indices(ref, edges)
    if len(x) == 0 or len(y) == 0 or np.unique(np.concatenate([x, y])).size < 2:
        return 1.0
    return float(scipy_stats.mannwhitneyu(x, y, alternative="greater", method="asymptotic").pvalue)


def fisher_greater(node_hits: int, node_n: int, ref_hits: int, ref_n: int) -> float:
    """One-sided Fisher exact p-value that the node's share of hits is greater than the reference's."""
    table = [[node_hits, node_n - node_hits], [ref_hits, ref_n - ref_hits]]
    return float(scipy_stats.fisher_exact(table, alternative="greater").pvalue)


def p99_bound_ms(ref_p99: float | None, factor: float, slack_ms: float) -> float:
    base = ref_p99 or 0.0
    return max(base * factor, base + slack_ms)


def judge_latency(node: Sample, ref: Sample, ref_label: str, settings: Settings, factor: float,
                  slack_ms: float) -> Verdict:
    """The ``p99`` check of ``node`` against ``ref`` (see the module docstring)."""
    node_n, ref_n = node.latency_requests, ref.latency_requests
    early = _sample_check("p99", node_n, ref_n, ref_label, settings, "client requests")
    if early is not None:
        return early
    node_p99, ref_p99 = node.p99, ref.p99
    bound = p99_bound_ms(ref_p99, factor, slack_ms)
    beyond = node_p99 is not None and node_p99 > bound
    numbers: dict[str, Any] = {"p99_ms": node_p99, "reference_p99_ms": ref_p99, "bound_ms": bound,
                               "node_requests": node_n, "reference_requests": ref_n,
                               "alpha": settings.alpha, "min_requests": settings.min_requests}
    head = (f"p99 {_ms(node_p99)} vs {ref_label} {_ms(ref_p99)} (bound {_ms(bound)}, max of {_ms(ref_p99)} "
            f"× {factor:g} and + {slack_ms:g} ms)")
    sizes = f"{node_n} vs {ref_n} client requests"
    if node.buckets is None or ref.buckets is None:
        numbers["tests"] = "bound only"
        outcome = FAILED if beyond else PASSED
        return Verdict("p99", outcome, f"{head} {'>' if beyond else '<='} bound; judged on the bound alone "
                       f"({ref_label} has no latency buckets: take a new baseline for the statistical tests); "
                       f"{sizes}", numbers=numbers)
    half = settings.alpha / 2.0
    p_mw = mann_whitney_greater(node.buckets, ref.buckets)
    node_above, ref_above = _above(node.buckets, bound), _above(ref.buckets, bound)
    p_tail = fisher_greater(node_above, node_n, ref_above, ref_n)
    numbers.update(node_above_bound=node_above, reference_above_bound=ref_above)
    p_values = {"mann_whitney": p_mw, "tail_fisher": p_tail}
    significant = p_mw < half or p_tail < half
    tests = (f"Mann–Whitney p={_p(p_mw)} {'<' if p_mw < half else '>='} alpha/2 {half:g}, tail above the bound "
             f"{node_above}/{node_n} vs {ref_above}/{ref_n} Fisher p={_p(p_tail)} "
             f"{'<' if p_tail < half else '>='} {half:g}")
    if beyond and significant:
        return Verdict("p99", FAILED, f"{head}: slower beyond the bound and significantly; {tests}; {sizes}",
                       p_values, numbers)
    why = ("within the bound" if not beyond else
           "beyond the bound but not significantly: as likely noise as a regression")
    return Verdict("p99", PASSED, f"{head}: {why}; {tests}; {sizes}", p_values, numbers)


def judge_errors(node: Sample, ref: Sample, ref_label: str, settings: Settings, max_increase: float) -> Verdict:
    """The ``error_rate`` check of ``node`` against ``ref`` (see the module docstring)."""
    early = _sample_check("error_rate", node.requests, ref.requests, ref_label, settings, "client requests")
    if early is not None:
        return early
    rate, ref_rate = node.errors / node.requests, ref.errors / ref.requests
    bound = ref_rate + max_increase
    p_value = fisher_greater(node.errors, node.requests, ref.errors, ref.requests)
    numbers = {"error_rate": rate, "reference_error_rate": ref_rate, "bound": bound,
               "node_requests": node.requests, "reference_requests": ref.requests,
               "node_errors": node.errors, "reference_errors": ref.errors,
               "alpha": settings.alpha, "min_requests": settings.min_requests}
    beyond = rate > bound
    significant = p_value < settings.alpha
    evidence = (f"error rate {_pct(rate)} ({node.errors}/{node.requests}) vs {ref_label} {_pct(ref_rate)} "
                f"({ref.errors}/{ref.requests}), bound {_pct(bound)} (+ {_pct(max_increase)}); Fisher p="
                f"{_p(p_value)} {'<' if significant else '>='} alpha {settings.alpha:g}")
    if beyond and significant:
        return Verdict("error_rate", FAILED, f"{evidence}: more errors beyond the bound and significantly",
                       {"fisher": p_value}, numbers)
    why = "within the bound" if not beyond else "beyond the bound but not significantly: as likely noise"
    return Verdict("error_rate", PASSED, f"{evidence}: {why}", {"fisher": p_value}, numbers)
