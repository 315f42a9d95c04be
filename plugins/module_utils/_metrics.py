# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Read a node's ``/metrics`` (Prometheus text exposition) into the numbers a health gate compares.

Only client traffic counts: ``exchange_requests_total`` and ``exchange_request_errors_total``
are summed over client routes (orders, withdrawals: every route outside ``/v1/`` and
``/metrics``), so the gate's own admin reads and load-balancer probes (a node that is not
ready answers ``/v1/ready`` with 503) neither dilute nor inflate the error rate. Latency is
the ``exchange_request_duration_seconds{kind="client"}`` histogram.

A window is the difference of two snapshots. A counter that went down means the process
restarted between them; the window is then the ``after`` snapshot alone (everything since
the restart). The p99 of a window is the upper bound of the histogram bucket holding the
nearest-rank 99th percentile (rank ``ceil(0.99 * n)``): a conservative figure, never lower
than the true value, at the histogram's resolution. A window without client requests has
no error rate and no p99 (``None``): there is no data, and a gate must not read that as
healthy.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

REQUESTS = "exchange_requests_total"
ERRORS = "exchange_request_errors_total"
DURATION = "exchange_request_duration_seconds"
CLIENT_KIND = "client"
# Routes that are not client traffic: admin, probes, replication (all under /v1/), the
# metrics scrape itself, and requests that matched no route.
NON_CLIENT_PREFIXES = ("/v1/",)
NON_CLIENT_ROUTES = ("/metrics", "unmatched")

_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_RE = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\\n]|\\.)*)"\s*')
_ESCAPES = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


class MetricsError(ValueError):
    """The text is not a Prometheus exposition, or not an exchange node's one."""


@dataclass(frozen=True)
class MetricsSnapshot:
    """The counters of one scrape that a gate needs."""

    requests_total: float
    errors_total: float
    client_buckets: list[tuple[float, float]] = field(default_factory=list)  # (le seconds, cumulative count)
    client_count: float = 0.0


@dataclass(frozen=True)
class WindowStats:
    """Client traffic between two snapshots."""

    requests: int
    errors: int
    error_rate: float | None  # errors / requests; None without requests
    p99_ms: float | None  # bucket upper bound in ms (math.inf beyond the largest bucket); None without requests
    client_requests: int = 0  # requests in the latency histogram (what p99 is computed over)
    restarted: bool = False  # a counter went down: the window is the after snapshot alone

    def as_dict(self) -> dict[str, object]:
        """JSON-safe form: a p99 beyond the largest bucket is the string ``+Inf``."""
        p99: object = self.p99_ms
        if p99 is not None and math.isinf(p99):
            p99 = "+Inf"
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "p99_ms": p99,
            "client_requests": self.client_requests,
            "restarted": self.restarted,
        }


def _unescape(value: str) -> str:
    return re.sub(r"\\[\\\"n]", lambda m: _ESCAPES[m.group(0)], value)


def _parse_value(text: str, lineno: int) -> float:
    try:
        return float(text)
    except ValueError:
        raise MetricsError(f"line {lineno}: sample value {text!r} is not a number") from None


def parse(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus text exposition: ``{(name, frozenset(labels)): value}``.

    Comments (``# HELP``, ``# TYPE``) and blank lines are skipped; timestamps are ignored.
    Raises MetricsError naming the line on anything malformed or on a repeated sample.
    """
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _NAME_RE.match(line)
        if m is None:
            raise MetricsError(f"line {lineno}: {line[:80]!r} does not start with a metric name")
        name, pos = m.group(0), m.end()
        labels: list[tuple[str, str]] = []
        if pos < len(line) and line[pos] == "{":
            pos += 1
            while True:
                while line.startswith((" ", "\t"), pos):
                    pos += 1
                if line.startswith("}", pos):
                    pos += 1
                    break
                lm = _LABEL_RE.match(line, pos)
                if lm is None:
                    raise MetricsError(f"line {lineno}: malformed labels in {line[:80]!r}")
                labels.append((lm.group(1), _unescape(lm.group(2))))
                pos = lm.end()
                if line.startswith(",", pos):
                    pos += 1
                elif not line.startswith("}", pos):
                    raise MetricsError(f"line {lineno}: expected ',' or '}}' in the labels of {line[:80]!r}")
        rest = line[pos:].split()
        if not rest or len(rest) > 2 or (pos < len(line) and not line[pos].isspace()):
            raise MetricsError(f"line {lineno}: expected '<name>[{{labels}}] <value> [timestamp]', got {line[:80]!r}")
        key = (name, frozenset(labels))
        if key in samples:
            raise MetricsError(f"line {lineno}: sample {name}{dict(labels)} appears twice")
        samples[key] = _parse_value(rest[0], lineno)
    return samples


def is_client_route(route: str) -> bool:
    """Whether a ``route`` label is client traffic (orders, withdrawals) rather than admin or probes."""
    return not route.startswith(NON_CLIENT_PREFIXES) and route not in NON_CLIENT_ROUTES


def snapshot(text: str) -> MetricsSnapshot:
    """The gate's counters from one ``/metrics`` text (see the module docstring for what counts).

    Raises MetricsError when the text is malformed or carries no ``exchange_*`` sample at
    all (not an exchange node's metrics: a wrong URL or a proxy's error page).
    """
    samples = parse(text)
    if not any(name.startswith("exchange_") for name, _labels in samples):
        raise MetricsError("no exchange_* samples: this is not an exchange node's /metrics")
    requests = errors = count = 0.0
    buckets: dict[float, float] = {}
    for (name, labels), value in samples.items():
        lab = dict(labels)
        if name in (REQUESTS, ERRORS):
            if is_client_route(lab.get("route", "")):
                if name == REQUESTS:
                    requests += value
                else:
                    errors += value
        elif lab.get("kind") == CLIENT_KIND:
            if name == DURATION + "_bucket":
                try:
                    le = float(lab["le"])
                except (KeyError, ValueError):
                    raise MetricsError(f"{name}{lab}: the le label is missing or not a number") from None
                buckets[le] = value
            elif name == DURATION + "_count":
                count = value
    if buckets and count == 0.0:
        count = buckets.get(math.inf, 0.0)
    return MetricsSnapshot(requests, errors, sorted(buckets.items()), count)


def _went_down(before: MetricsSnapshot, after: MetricsSnapshot) -> bool:
    if (after.requests_total < before.requests_total or after.errors_total < before.errors_total
            or after.client_count < before.client_count):
        return True
    after_buckets = dict(after.client_buckets)
    return any(after_buckets.get(le, 0.0) < n for le, n in before.client_buckets)


def p99_from_buckets(deltas: list[tuple[float, float]]) -> float | None:
    """Upper bound (ms) of the bucket holding the nearest-rank 99th percentile; None when empty.

    ``deltas`` are cumulative counts per upper bound ``le`` (seconds), as in the exposition.
    """
    ordered = sorted(deltas)
    total = ordered[-1][1] if ordered else 0.0
    if total <= 0:
        return None
    rank = math.ceil(0.99 * total)
    for le, cumulative in ordered:
        if cumulative >= rank:
            return math.inf if math.isinf(le) else round(le * 1000.0, 6)
    return math.inf


def window(before: MetricsSnapshot | None, after: MetricsSnapshot) -> WindowStats:
    """Client traffic between two snapshots (``after`` alone when ``before`` is None or a counter went down)."""
    restarted = before is not None and _went_down(before, after)
    if before is None or restarted:
        before = MetricsSnapshot(0.0, 0.0, [], 0.0)
    requests = int(after.requests_total - before.requests_total)
    errors = int(after.errors_total - before.errors_total)
    base = dict(before.client_buckets)
    deltas = [(le, n - base.get(le, 0.0)) for le, n in after.client_buckets]
    if deltas and not any(math.isinf(le) for le, _n in deltas):
        # No +Inf bucket in the text: the count is the total, anything above the last bound is beyond it.
        deltas.append((math.inf, after.client_count - before.client_count))
    p99 = p99_from_buckets(deltas)
    client_requests = int(after.client_count - before.client_count)
    return WindowStats(
        requests=requests,
        errors=errors,
        error_rate=(errors / requests) if requests > 0 else None,
        p99_ms=p99,
        client_requests=client_requests,
        restarted=restarted,
    )
