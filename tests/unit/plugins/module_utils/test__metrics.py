# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import math

import pytest
from ansible_collections.exchangeops.patching.plugins.module_utils._metrics import (
    MetricsError,
    MetricsSnapshot,
    is_client_route,
    p99_from_buckets,
    parse,
    snapshot,
    window,
)

# Captured from a testbed matching-engine node (5 orders, 1 bad order, 1 book read, 2 probes).
CAPTURED = """\
# HELP exchange_requests_total HTTP requests served, by route, method and status.
# TYPE exchange_requests_total counter
exchange_requests_total{route="/markets/{market}/book",method="GET",code="200"} 1
exchange_requests_total{route="/markets/{market}/orders",method="POST",code="200"} 5
exchange_requests_total{route="/markets/{market}/orders",method="POST",code="400"} 1
exchange_requests_total{route="/v1/ready",method="GET",code="200"} 2
# HELP exchange_request_errors_total HTTP requests answered with a 5xx status.
# TYPE exchange_request_errors_total counter
# HELP exchange_request_duration_seconds Request latency; kind=client is order/withdrawal traffic.
# TYPE exchange_request_duration_seconds histogram
exchange_request_duration_seconds_bucket{kind="client",le="0.001"} 7
exchange_request_duration_seconds_bucket{kind="client",le="0.0025"} 7
exchange_request_duration_seconds_bucket{kind="client",le="0.005"} 7
exchange_request_duration_seconds_bucket{kind="client",le="0.01"} 7
exchange_request_duration_seconds_bucket{kind="client",le="0.025"} 7
exchange_request_duration_seconds_bucket{kind="client",le="0.05"} 7
exchange_request_duration_seconds_bucket{kind="client",le="0.1"} 7
exchange_request_duration_seconds_bucket{kind="client",le="0.25"} 7
exchange_request_duration_seconds_bucket{kind="client",le="0.5"} 7
exchange_request_duration_seconds_bucket{kind="client",le="1.0"} 7
exchange_request_duration_seconds_bucket{kind="client",le="2.5"} 7
exchange_request_duration_seconds_bucket{kind="client",le="+Inf"} 7
exchange_request_duration_seconds_sum{kind="client"} 0.002620
exchange_request_duration_seconds_count{kind="client"} 7
exchange_request_duration_seconds_bucket{kind="probe",le="0.001"} 2
exchange_request_duration_seconds_bucket{kind="probe",le="0.0025"} 2
exchange_request_duration_seconds_bucket{kind="probe",le="0.005"} 2
exchange_request_duration_seconds_bucket{kind="probe",le="0.01"} 2
exchange_request_duration_seconds_bucket{kind="probe",le="0.025"} 2
exchange_request_duration_seconds_bucket{kind="probe",le="0.05"} 2
exchange_request_duration_seconds_bucket{kind="probe",le="0.1"} 2
exchange_request_duration_seconds_bucket{kind="probe",le="0.25"} 2
exchange_request_duration_seconds_bucket{kind="probe",le="0.5"} 2
exchange_request_duration_seconds_bucket{kind="probe",le="1.0"} 2
exchange_request_duration_seconds_bucket{kind="probe",le="2.5"} 2
exchange_request_duration_seconds_bucket{kind="probe",le="+Inf"} 2
exchange_request_duration_seconds_sum{kind="probe"} 0.000252
exchange_request_duration_seconds_count{kind="probe"} 2
# HELP exchange_node_info Release the node runs.
# TYPE exchange_node_info gauge
exchange_node_info{component="matching-engine",version="1.0.0"} 1
# HELP exchange_last_applied_sequence Journal sequence applied to the books.
# TYPE exchange_last_applied_sequence gauge
exchange_last_applied_sequence 5
exchange_replication_peer_sequence -1
exchange_market_mode{market="BTC-USD",mode="open"} 1
"""

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def render(requests: dict[tuple[str, str, int], int], latencies: list[float], probes: int = 0) -> str:
    """A /metrics text laid out exactly as testbed/exchnode/common.py Metrics.render writes it."""
    out = ["# HELP exchange_requests_total HTTP requests served, by route, method and status.",
           "# TYPE exchange_requests_total counter"]
    errors: dict[tuple[str, str], int] = {}
    for (route, method, code), n in sorted(requests.items()):
        out.append(f'exchange_requests_total{{route="{route}",method="{method}",code="{code}"}} {n}')
        if code >= 500:
            errors[(route, method)] = errors.get((route, method), 0) + n
    out += ["# HELP exchange_request_errors_total HTTP requests answered with a 5xx status.",
            "# TYPE exchange_request_errors_total counter"]
    for (route, method), n in sorted(errors.items()):
        out.append(f'exchange_request_errors_total{{route="{route}",method="{method}"}} {n}')
    out += ["# TYPE exchange_request_duration_seconds histogram"]
    kinds = {"client": latencies, "probe": [0.0001] * probes}
    for kind, values in sorted(kinds.items()):
        if not values:
            continue
        for bound in BUCKETS:
            out.append(f'exchange_request_duration_seconds_bucket{{kind="{kind}",le="{bound}"}} '
                       f"{sum(1 for v in values if v <= bound)}")
        out.append(f'exchange_request_duration_seconds_bucket{{kind="{kind}",le="+Inf"}} {len(values)}')
        out.append(f'exchange_request_duration_seconds_sum{{kind="{kind}"}} {sum(values):.6f}')
        out.append(f'exchange_request_duration_seconds_count{{kind="{kind}"}} {len(values)}')
    out.append('exchange_node_info{component="matching-engine",version="1.0.0"} 1')
    return "\n".join(out) + "\n"


ORDERS = "/markets/{market}/orders"


def test_parse_captured_text() -> None:
    samples = parse(CAPTURED)
    key = ("exchange_requests_total", frozenset({("route", ORDERS), ("method", "POST"), ("code", "200")}))
    assert samples[key] == 5.0
    assert samples[("exchange_last_applied_sequence", frozenset())] == 5.0
    assert samples[("exchange_replication_peer_sequence", frozenset())] == -1.0
    inf = ("exchange_request_duration_seconds_bucket", frozenset({("kind", "client"), ("le", "+Inf")}))
    assert samples[inf] == 7.0
    assert not any(name.startswith("#") for name, _labels in samples)


def test_parse_escapes_timestamps_and_special_values() -> None:
    text = ('m{a="x\\"y",b="back\\\\slash",c="new\\nline"} 1.5 1700000000000\n'
            'n{} +Inf\n'
            'o NaN\n'
            'p{ a = "1" , } -2e3\n')
    samples = parse(text)
    assert samples[("m", frozenset({("a", 'x"y'), ("b", "back\\slash"), ("c", "new\nline")}))] == 1.5
    assert samples[("n", frozenset())] == math.inf
    assert math.isnan(samples[("o", frozenset())])
    assert samples[("p", frozenset({("a", "1")}))] == -2000.0


@pytest.mark.parametrize(("text", "fragment"), [
    ("1metric 3\n", "does not start with a metric name"),
    ('m{a=1} 3\n', "malformed labels"),
    ('m{a="1" b="2"} 3\n', "expected ','"),
    ("m\n", "expected '<name>"),
    ("m 1 2 3\n", "expected '<name>"),
    ("m abc\n", "is not a number"),
    ("m 1\nm 2\n", "appears twice"),
])
def test_parse_rejects_malformed_lines(text: str, fragment: str) -> None:
    with pytest.raises(MetricsError, match=fragment) as info:
        parse(text)
    assert "line " in str(info.value)


def test_snapshot_counts_client_routes_only() -> None:
    snap = snapshot(CAPTURED)
    assert snap.requests_total == 7.0  # book + 5 orders + the bad order; not the /v1/ready probes
    assert snap.errors_total == 0.0
    assert snap.client_count == 7.0
    assert snap.client_buckets[0] == (0.001, 7.0) and snap.client_buckets[-1] == (math.inf, 7.0)
    assert len(snap.client_buckets) == 12

    text = render({(ORDERS, "POST", 200): 90, (ORDERS, "POST", 503): 10, ("/v1/ready", "GET", 503): 50,
                   ("/v1/status", "GET", 200): 20, ("/metrics", "GET", 200): 3, ("unmatched", "GET", 404): 2},
                  [0.002] * 100, probes=50)
    snap = snapshot(text)
    assert (snap.requests_total, snap.errors_total, snap.client_count) == (100.0, 10.0, 100.0)


def test_is_client_route() -> None:
    assert is_client_route(ORDERS) and is_client_route("/chains/{chain}/withdrawals")
    for route in ("/v1/status", "/v1/ready", "/v1/replication/append", "/metrics", "unmatched"):
        assert not is_client_route(route)


def test_snapshot_rejects_what_is_not_a_node_metrics_text() -> None:
    with pytest.raises(MetricsError, match="not an exchange node"):
        snapshot("# just comments\nup 1\n")
    with pytest.raises(MetricsError, match="le label"):
        snapshot('exchange_request_duration_seconds_bucket{kind="client"} 3\n')


def test_fresh_node_without_traffic_has_no_data() -> None:
    snap = snapshot(render({}, []))
    assert snap == MetricsSnapshot(0.0, 0.0, [], 0.0)
    stats = window(snap, snap)
    assert (stats.requests, stats.errors, stats.error_rate, stats.p99_ms) == (0, 0, None, None)


def test_window_deltas_error_rate_and_p99() -> None:
    before = snapshot(render({(ORDERS, "POST", 200): 100}, [0.002] * 100))
    # 200 more requests: 196 fast, 4 slow (0.2 s); 2 of them 5xx.
    after = snapshot(render({(ORDERS, "POST", 200): 298, (ORDERS, "POST", 500): 2},
                            [0.002] * 296 + [0.2] * 4))
    stats = window(before, after)
    assert (stats.requests, stats.errors, stats.client_requests, stats.restarted) == (200, 2, 200, False)
    assert stats.error_rate == pytest.approx(0.01)
    # rank ceil(0.99 * 200) = 198 > 196 fast ones: the 99th percentile is in the 0.25 s bucket.
    assert stats.p99_ms == 250.0
    # Only 2 slow out of 200: rank 198 <= 198 fast ones, so p99 stays in the 2.5 ms bucket.
    after = snapshot(render({(ORDERS, "POST", 200): 300}, [0.002] * 298 + [0.2] * 2))
    assert window(before, after).p99_ms == 2.5


def test_window_after_a_restart_uses_after_alone() -> None:
    before = snapshot(render({(ORDERS, "POST", 200): 500}, [0.002] * 500))
    after = snapshot(render({(ORDERS, "POST", 200): 40}, [0.3] * 40))
    stats = window(before, after)
    assert stats.restarted is True
    assert (stats.requests, stats.client_requests, stats.p99_ms) == (40, 40, 500.0)
    assert window(None, after) == window(MetricsSnapshot(0.0, 0.0, [], 0.0), after)


def test_p99_beyond_the_largest_bucket() -> None:
    stats = window(None, snapshot(render({(ORDERS, "POST", 200): 10}, [3.0] * 10)))
    assert stats.p99_ms == math.inf
    assert stats.as_dict()["p99_ms"] == "+Inf"
    assert window(None, snapshot(CAPTURED)).as_dict() == {
        "requests": 7, "errors": 0, "error_rate": 0.0, "p99_ms": 1.0, "client_requests": 7, "restarted": False}


def test_p99_from_buckets_edges() -> None:
    assert p99_from_buckets([]) is None
    assert p99_from_buckets([(0.01, 0.0), (math.inf, 0.0)]) is None
    assert p99_from_buckets([(0.01, 1.0), (math.inf, 1.0)]) == 10.0
    # Without a +Inf bucket, requests above the last bound are beyond it.
    assert p99_from_buckets([(0.01, 1.0), (0.1, 5.0)]) == 100.0
    # Histogram without +Inf in the text: window() adds it from the count.
    text = ('exchange_request_duration_seconds_bucket{kind="client",le="0.01"} 1\n'
            'exchange_request_duration_seconds_count{kind="client"} 100\n')
    assert window(None, snapshot(text)).p99_ms == math.inf
