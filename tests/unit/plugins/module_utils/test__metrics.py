# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import math

import pytest
from ansible_collections.exchangeops.patching.plugins.module_utils._metrics import (
    MetricsError,
    MetricsSnapshot,
    buckets_as_dict,
    buckets_from_dict,
    cumulative,
    in_inf_bucket,
    is_client_route,
    parse,
    quantile,
    quantile_ms,
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
    assert (stats.requests, stats.errors, stats.error_rate, stats.p99_ms, stats.buckets) == (0, 0, None, None, ())
    assert stats.p99_beyond is False


def test_window_deltas_error_rate_and_interpolated_p99() -> None:
    before = snapshot(render({(ORDERS, "POST", 200): 100}, [0.002] * 100))
    # 200 more requests: 196 fast, 4 slow (0.2 s); 2 of them 5xx.
    after = snapshot(render({(ORDERS, "POST", 200): 298, (ORDERS, "POST", 500): 2},
                            [0.002] * 296 + [0.2] * 4))
    stats = window(before, after)
    assert (stats.requests, stats.errors, stats.client_requests, stats.restarted) == (200, 2, 200, False)
    assert stats.error_rate == pytest.approx(0.01)
    # rank 0.99 * 200 = 198 lies in the (0.1, 0.25] bucket, 2 of its 4 requests in: 100 + 150 * 2/4 ms.
    assert stats.p99_ms == 175.0
    # the window keeps its per-bucket counts (not cumulative), the +Inf bucket last
    assert dict(stats.buckets) == {**dict.fromkeys(BUCKETS, 0), 0.0025: 196, 0.25: 4, math.inf: 0}
    assert sum(n for _le, n in stats.buckets) == 200 and stats.buckets[-1][0] == math.inf
    # Only 2 slow out of 200: rank 198 is the last of the 198 fast ones, the top of the (1, 2.5] ms bucket.
    after = snapshot(render({(ORDERS, "POST", 200): 300}, [0.002] * 298 + [0.2] * 2))
    assert window(before, after).p99_ms == 2.5


def test_window_after_a_restart_uses_after_alone() -> None:
    before = snapshot(render({(ORDERS, "POST", 200): 500}, [0.002] * 500))
    after = snapshot(render({(ORDERS, "POST", 200): 40}, [0.3] * 40))
    stats = window(before, after)
    assert stats.restarted is True
    # rank 39.6 of 40 in the (0.25, 0.5] bucket: 250 + 250 * 39.6/40 ms
    assert (stats.requests, stats.client_requests, stats.p99_ms) == (40, 40, 497.5)
    assert window(None, after) == window(MetricsSnapshot(0.0, 0.0, [], 0.0), after)


def test_p99_beyond_the_largest_bucket_is_that_bound_and_flagged() -> None:
    stats = window(None, snapshot(render({(ORDERS, "POST", 200): 10}, [3.0] * 10)))
    assert stats.p99_ms == 2500.0 and stats.p99_beyond is True
    doc = stats.as_dict()
    assert doc["p99_ms"] == 2500.0 and doc["p99_beyond"] is True and doc["buckets"]["+Inf"] == 10
    captured = window(None, snapshot(CAPTURED)).as_dict()
    assert captured["buckets"]["0.001"] == 7 and sum(captured["buckets"].values()) == 7
    del captured["buckets"]
    # 7 requests in the lowest bucket (0, 1 ms]: rank 6.93 of 7
    assert captured == {"requests": 7, "errors": 0, "error_rate": 0.0, "p99_ms": 0.99, "p99_beyond": False,
                        "client_requests": 7, "restarted": False}


# Worked examples of histogram_quantile's documented rules (cumulative counts, bounds in seconds).
PROM = [(0.1, 50.0), (0.2, 80.0), (0.5, 95.0), (1.0, 100.0), (math.inf, 100.0)]


@pytest.mark.parametrize(("q", "expected"), [
    (0.5, 0.1),  # rank 50 is the last of the lowest bucket: its upper bound
    (0.25, 0.05),  # lowest bucket starts at 0: 0 + 0.1 * 25/50
    (0.9, 0.4),  # 0.2 + 0.3 * (90 - 80)/15
    (0.99, 0.9),  # 0.5 + 0.5 * (99 - 95)/5
    (1.0, 1.0),
])
def test_quantile_interpolates_as_histogram_quantile(q: float, expected: float) -> None:
    assert quantile(q, PROM) == pytest.approx(expected)


def test_quantile_edges() -> None:
    # in the +Inf bucket: the upper bound of the highest finite bucket
    assert quantile(0.5, [(0.1, 1.0), (math.inf, 10.0)]) == 0.1
    assert in_inf_bucket(0.5, ((0.1, 1), (math.inf, 9))) and not in_inf_bucket(0.05, ((0.1, 1), (math.inf, 9)))
    # a lowest bucket with an upper bound <= 0 returns that bound (no lower bound to interpolate from)
    assert quantile(0.2, [(0.0, 5.0), (1.0, 10.0), (math.inf, 10.0)]) == 0.0
    assert quantile(0.2, [(-1.0, 5.0), (1.0, 10.0), (math.inf, 10.0)]) == -1.0
    # empty histogram: no quantile (Prometheus: NaN)
    assert quantile(0.99, [(0.01, 0.0), (math.inf, 0.0)]) is None
    assert quantile_ms(0.99, ()) is None
    # unsorted input and a count that dips (scrape skew) are tolerated, as Prometheus does
    assert quantile(0.9, [(0.5, 95.0), (math.inf, 100.0), (0.1, 50.0), (0.2, 80.0), (1.0, 100.0)]) == \
        pytest.approx(0.4)
    assert quantile(0.5, [(0.1, 60.0), (0.2, 50.0), (math.inf, 100.0)]) == pytest.approx(0.1 * 50 / 60)
    with pytest.raises(ValueError, match=r"\+Inf bucket"):
        quantile(0.5, [(0.01, 1.0), (0.1, 5.0)])
    with pytest.raises(ValueError, match=r"within \[0, 1\]"):
        quantile(1.5, PROM)
    # Histogram without +Inf in the text: window() adds it from the count.
    text = ('exchange_request_duration_seconds_bucket{kind="client",le="0.01"} 1\n'
            'exchange_request_duration_seconds_count{kind="client"} 100\n')
    stats = window(None, snapshot(text))
    assert stats.p99_ms == 10.0 and stats.p99_beyond is True


def test_buckets_round_trip_through_json() -> None:
    per_bucket = ((0.001, 2), (0.025, 7), (math.inf, 1))
    doc = buckets_as_dict(per_bucket)
    assert doc == {"0.001": 2, "0.025": 7, "+Inf": 1}
    assert buckets_from_dict(doc) == per_bucket
    assert buckets_from_dict({"0.025": 7, "0.001": 2}) == ((0.001, 2), (0.025, 7), (math.inf, 0))
    assert cumulative(per_bucket) == [(0.001, 2), (0.025, 9), (math.inf, 10)]
    with pytest.raises(MetricsError, match="is not a number"):
        buckets_from_dict({"fast": 1})
    with pytest.raises(MetricsError, match="whole number >= 0"):
        buckets_from_dict({"0.1": -1})
