# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The traffic tests' error rates, measured on synthetic samples with a fixed seed.

Latencies are drawn from a log-normal (median 6 ms, sigma 0.7: p99 about 30 ms, like a testbed
node under load) and binned into the testbed's buckets (testbed/exchnode/common.py
LATENCY_BUCKETS, repeated here: the collection's tests do not import the testbed). A healthy
node and its reference come from the same distribution; a regression is every request 100 ms
slower, or a tail-only one (30 % of the requests 250 ms slower, the median unchanged).
The rates printed by ``pytest -s`` are the figures docs/gates.md quotes.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from ansible_collections.exchangeops.patching.plugins.module_utils._judge import (
    FAILED,
    INCONCLUSIVE,
    PASSED,
    JudgeError,
    Sample,
    Settings,
    fisher_greater,
    judge_errors,
    judge_latency,
    mann_whitney_greater,
    settings_from,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
EDGES = (*LATENCY_BUCKETS, math.inf)
SETTINGS = Settings(alpha=0.01, min_requests=50)
FACTOR, SLACK_MS = 2.0, 50.0  # the default bounds
TRIALS = 1000


def binned(latencies: np.ndarray) -> tuple[tuple[float, int], ...]:
    """Per-bucket counts as a node counts them (a request of exactly a bound is in that bucket)."""
    index = np.searchsorted(np.array(LATENCY_BUCKETS), latencies, side="left")
    counts = np.bincount(index, minlength=len(EDGES))
    return tuple((le, int(n)) for le, n in zip(EDGES, counts))


def healthy(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.lognormal(math.log(0.006), 0.7, n)


def sample(latencies: np.ndarray, errors: int = 0) -> Sample:
    return Sample(len(latencies), errors, binned(latencies))


def failure_rate(n: int, regress, seed: int) -> tuple[float, float]:
    """(share of trials failed, share where a test alone was significant) for node vs reference of n each."""
    rng = np.random.default_rng(seed)
    failed = significant = 0
    for _trial in range(TRIALS):
        reference, node = healthy(rng, n), regress(rng, healthy(rng, n))
        verdict = judge_latency(sample(node), sample(reference), "control", SETTINGS, FACTOR, SLACK_MS)
        assert verdict.outcome in (PASSED, FAILED)
        failed += verdict.outcome == FAILED
        significant += min(verdict.p_values.values()) < SETTINGS.alpha / 2
    return failed / TRIALS, significant / TRIALS


def unchanged(_rng: np.random.Generator, latencies: np.ndarray) -> np.ndarray:
    return latencies


def slower_100ms(_rng: np.random.Generator, latencies: np.ndarray) -> np.ndarray:
    return latencies + 0.1


def tail_250ms(rng: np.random.Generator, latencies: np.ndarray) -> np.ndarray:
    return np.where(rng.random(len(latencies)) < 0.3, latencies + 0.25, latencies)


@pytest.mark.parametrize("n", [50, 200, 1000, 5000])
def test_false_positive_rate_on_healthy_samples_is_at_most_alpha(n: int) -> None:
    failed, significant = failure_rate(n, unchanged, seed=15_000 + n)
    print(f"healthy n={n}: failed {failed:.3f}, a test significant {significant:.3f}")
    # the check's stated rate, and the tests alone (before the effect-size bound) within it too
    assert failed <= SETTINGS.alpha
    assert significant <= SETTINGS.alpha + 0.005  # 1000 trials: the binomial's sd at 1 % is 0.3 %


@pytest.mark.parametrize(("regress", "what"), [(slower_100ms, "every request +100 ms"),
                                               (tail_250ms, "30% of requests +250 ms")])
def test_a_100ms_p99_regression_is_caught_from_the_minimum_sample(regress, what: str) -> None:
    n = SETTINGS.min_requests
    rng = np.random.default_rng(7)
    base = healthy(rng, 200_000)
    moved = np.quantile(regress(rng, base), 0.99) - np.quantile(base, 0.99)
    assert moved >= 0.1 - 1e-9  # the regression really moves the p99 by 100+ ms
    failed, _significant = failure_rate(n, regress, seed=99)
    print(f"{what} at n={n}: detected {failed:.3f}")
    assert failed >= 0.99


def test_below_the_minimum_sample_is_inconclusive_even_for_a_broken_node() -> None:
    rng = np.random.default_rng(3)
    slow = sample(healthy(rng, 49) + 0.5, errors=49)
    reference = sample(healthy(rng, 400))
    for verdict in (judge_latency(slow, reference, "control me-c", SETTINGS, FACTOR, SLACK_MS),
                    judge_errors(slow, reference, "control me-c", SETTINGS, 0.01)):
        assert verdict.outcome == INCONCLUSIVE
        assert verdict.evidence.startswith("the node's window had 49 client requests, fewer than min_requests 50")
        assert verdict.numbers == {"node_requests": 49, "reference_requests": 400, "min_requests": 50}
    short = judge_latency(reference, sample(healthy(rng, 10)), "control me-c", SETTINGS, FACTOR, SLACK_MS)
    assert short.outcome == INCONCLUSIVE and "control me-c had 10 client requests" in short.evidence
    both = judge_errors(Sample(3, 0, None), Sample(0, 0, None), "the pre-rollout baseline", SETTINGS, 0.01)
    assert both.evidence.startswith("the node's window had 3 client requests and the pre-rollout baseline had 0")


def test_idle_on_both_sides_passes() -> None:
    idle = Sample(0, 0, ())
    for verdict in (judge_latency(idle, idle, "control me-c", SETTINGS, FACTOR, SLACK_MS),
                    judge_errors(idle, Sample(0, 0, None), "control me-c", SETTINGS, 0.01)):
        assert verdict.outcome == PASSED
        assert verdict.evidence == "no client traffic in either the window or control me-c"


def test_silence_on_both_sides_after_a_baseline_with_traffic_is_inconclusive_not_passed() -> None:
    # the market traded before the rollout; a window where neither the node nor its control saw a
    # request means traffic stopped (mid-gate, or in front of both), which proves nothing
    idle = Sample(0, 0, ())
    traded = Settings(SETTINGS.alpha, SETTINGS.min_requests, expected_requests=240)
    for verdict in (judge_latency(idle, idle, "control me-c", traded, FACTOR, SLACK_MS),
                    judge_errors(idle, Sample(0, 0, None), "control me-c", traded, 0.01)):
        assert verdict.outcome == INCONCLUSIVE
        assert verdict.evidence.startswith("no client traffic in either the window or control me-c, though the "
                                           "pre-rollout baseline had 240: traffic stopped")
    assert settings_from(0.01, 50, 0).expected_requests == 0  # an idle baseline keeps the idle pass
    quiet = Settings(SETTINGS.alpha, SETTINGS.min_requests, expected_requests=0)
    assert judge_errors(idle, idle, "control me-c", quiet, 0.01).outcome == PASSED


def test_evidence_names_the_numbers_and_the_tests() -> None:
    rng = np.random.default_rng(11)
    node, reference = sample(healthy(rng, 412) + 0.2), sample(healthy(rng, 398))
    verdict = judge_latency(node, reference, "control match-1a", SETTINGS, 2.0, 100.0)
    assert verdict.outcome == FAILED
    assert verdict.evidence.startswith("p99 ")
    assert " vs control match-1a " in verdict.evidence and "(bound " in verdict.evidence
    assert "Mann–Whitney p=" in verdict.evidence and "< alpha/2 0.005" in verdict.evidence
    assert verdict.evidence.endswith("; 412 vs 398 client requests")
    assert verdict.numbers["p99_ms"] > verdict.numbers["bound_ms"]
    assert set(verdict.p_values) == {"mann_whitney", "tail_fisher"}


def test_error_rate_test() -> None:
    reference = Sample(1000, 5, None)
    worse = judge_errors(Sample(1000, 40, None), reference, "control me-c", SETTINGS, 0.01)
    assert worse.outcome == FAILED and worse.p_values["fisher"] < 1e-6
    assert worse.evidence.startswith("error rate 4.00% (40/1000) vs control me-c 0.50% (5/1000), bound 1.50%")
    # beyond the bound on a small sample, but 3 errors in 50 against 0 in 50 is not significant
    noisy = judge_errors(Sample(50, 3, None), Sample(50, 0, None), "control me-c", SETTINGS, 0.01)
    assert noisy.outcome == PASSED and "not significantly" in noisy.evidence
    # healthy samples: the false-positive rate at alpha (error rate 0.5 % on both sides)
    rng = np.random.default_rng(5)
    for n in (50, 200, 1000, 5000):
        fails = sum(judge_errors(Sample(n, int(rng.binomial(n, 0.005)), None),
                                 Sample(n, int(rng.binomial(n, 0.005)), None), "c", SETTINGS, 0.01).outcome == FAILED
                    for _trial in range(TRIALS))
        print(f"error_rate healthy n={n}: failed {fails / TRIALS:.3f}")
        assert fails / TRIALS <= SETTINGS.alpha


def test_the_tests_themselves() -> None:
    same = ((0.01, 100), (math.inf, 0))
    assert mann_whitney_greater(same, same) == 1.0  # every request ties: no evidence either way
    slow = ((0.01, 0), (0.1, 100), (math.inf, 0))
    assert mann_whitney_greater(slow, same) < 1e-20
    assert mann_whitney_greater(same, slow) > 0.99  # one-sided: faster is not worse
    assert fisher_greater(10, 50, 0, 50) < 0.005 < fisher_greater(5, 50, 0, 50)
    assert fisher_greater(0, 50, 10, 50) == 1.0


@pytest.mark.parametrize(("alpha", "min_requests", "fragment"), [
    (0.0, 50, "alpha must be within (0, 0.5], got 0.0"),
    (0.6, 50, "alpha must be within (0, 0.5], got 0.6"),
    (True, 50, "alpha must be within (0, 0.5]"),
    (0.01, 0, "min_requests must be a whole number >= 1, got 0"),
    (0.01, 2.5, "min_requests must be a whole number >= 1, got 2.5"),
])
def test_bad_settings_name_the_option_and_the_fix(alpha, min_requests, fragment: str) -> None:
    with pytest.raises(JudgeError) as info:
        settings_from(alpha, min_requests)
    assert fragment in str(info.value) and "use e.g." in str(info.value)
    assert settings_from(0.5, 1) == Settings(0.5, 1)
