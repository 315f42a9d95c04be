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
the restart). The window keeps its per-bucket request counts (``WindowStats.buckets``), so a
gate can compare two latency distributions rather than two numbers.

Quantiles (``quantile``, the window's ``p99_ms``) are interpolated linearly inside the bucket
that holds them, exactly as Prometheus' ``histogram_quantile`` does: rank ``q * n``; the
lowest bucket's lower bound is 0 when its upper bound is > 0 (else the quantile is that upper
bound); a quantile that falls in the ``+Inf`` bucket is the upper bound of the highest finite
bucket (``WindowStats.p99_beyond`` then says the true value is beyond it). A window without
client requests has no error rate and no p99 (``None``): there is no data, and a gate must not
read that as healthy.
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
    p99_ms: float | None  # interpolated (histogram_quantile); None without requests
    client_requests: int = 0  # requests in the latency histogram (what p99 is computed over)
    restarted: bool = False  # a counter went down: the window is the after snapshot alone
    # requests per bucket (upper bound in seconds, count; not cumulative), the +Inf bucket last
    buckets: tuple[tuple[float, int], ...] = ()

    @property
    def p99_beyond(self) -> bool:
        """The p99 fell in the +Inf bucket: ``p99_ms`` is the largest finite bound, the true value is higher."""
        return in_inf_bucket(0.99, self.buckets)

    def as_dict(self) -> dict[str, object]:
        """JSON-safe form; ``buckets`` maps each upper bound (as the exposition writes it) to its count."""
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "p99_ms": self.p99_ms,
            "p99_beyond": self.p99_beyond,
            "client_requests": self.client_requests,
            "restarted": self.restarted,
            "buckets": buckets_as_dict(self.buckets),
        }


def le_text(le: float) -> str:
    """An upper bound as a label value: ``+Inf`` or the float's shortest form (``0.025``)."""
    return "+Inf" if math.isinf(le) else repr(float(le))


def buckets_as_dict(buckets: tuple[tuple[float, int], ...]) -> dict[str, int]:
    return {le_text(le): int(n) for le, n in buckets}


def buckets_from_dict(raw: dict[str, object]) -> tuple[tuple[float, int], ...]:
    """Per-bucket counts from their JSON form (``{"0.025": 12, ..., "+Inf": 0}``); MetricsError when malformed."""
    out: list[tuple[float, int]] = []
    for key, value in raw.items():
        try:
            le = float(key)
        except (TypeError, ValueError):
            raise MetricsError(f"bucket bound {key!r} is not a number (use the le value, e.g. '0.025' or '+Inf')") \
                from None
        if math.isnan(le) or isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise MetricsError(f"bucket {key!r}: the count must be a whole number >= 0, got {value!r}")
        out.append((le, value))
    out.sort()
    if out and not math.isinf(out[-1][0]):
        out.append((math.inf, 0))
    return tuple(out)


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


def cumulative(buckets: tuple[tuple[float, int], ...] | list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Per-bucket counts (sorted by upper bound) to cumulative ones, as the exposition writes them."""
    total = 0.0
    out = []
    for le, n in sorted(buckets):
        total += n
        out.append((le, total))
    return out


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of a histogram, in the unit of its bounds, as Prometheus' ``histogram_quantile``.

    ``buckets`` are cumulative counts per upper bound ``le``, the highest being ``+Inf`` (ValueError
    otherwise, where Prometheus returns NaN). Rank ``q * total``; the quantile is interpolated
    linearly inside the first bucket whose cumulative count reaches the rank, from the previous
    bucket's upper bound (0 for the lowest bucket when its upper bound is > 0; a lowest bucket with
    a bound <= 0 returns that bound). In the ``+Inf`` bucket it is the highest finite upper bound.
    None when the histogram is empty; ValueError for q outside [0, 1].
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile q must be within [0, 1], got {q!r}")
    ordered = sorted(buckets)
    if not ordered or not math.isinf(ordered[-1][0]):
        raise ValueError("a histogram needs a +Inf bucket to take quantiles from")
    # like Prometheus, tolerate a count that goes down between buckets (scrape skew)
    fixed, top = [], 0.0
    for le, count in ordered:
        top = max(top, count)
        fixed.append((le, top))
    total = fixed[-1][1]
    if total <= 0:
        return None
    if len(fixed) < 2:
        return None  # only a +Inf bucket: no finite bound to report
    rank = q * total
    index = next((i for i, (_le, count) in enumerate(fixed[:-1]) if count >= rank), len(fixed) - 1)
    if index == len(fixed) - 1:
        return fixed[-2][0]
    upper, count = fixed[index]
    if index == 0 and upper <= 0:
        return upper
    lower, below = (0.0, 0.0) if index == 0 else fixed[index - 1]
    in_bucket = count - below
    if in_bucket <= 0:
        return upper
    return lower + (upper - lower) * ((rank - below) / in_bucket)


def in_inf_bucket(q: float, buckets: tuple[tuple[float, int], ...]) -> bool:
    """Whether the ``q`` quantile of per-bucket counts falls in the +Inf bucket."""
    cum = cumulative(buckets)
    if len(cum) < 2 or cum[-1][1] <= 0:
        return False
    return cum[-2][1] < q * cum[-1][1]


def quantile_ms(q: float, buckets: tuple[tuple[float, int], ...]) -> float | None:
    """``quantile`` of per-bucket counts (seconds), in ms rounded to the microsecond; None when empty."""
    if not buckets:
        return None
    value = quantile(q, cumulative(buckets))
    return None if value is None else round(value * 1000.0, 6)


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
    per_bucket: list[tuple[float, int]] = []
    below = 0.0
    for le, cum in sorted(deltas):
        per_bucket.append((le, max(0, round(cum - below))))
        below = max(below, cum)
    buckets = tuple(per_bucket) if below > 0 else ()
    client_requests = int(after.client_count - before.client_count)
    return WindowStats(
        requests=requests,
        errors=errors,
        error_rate=(errors / requests) if requests > 0 else None,
        p99_ms=quantile_ms(0.99, buckets),
        client_requests=client_requests,
        restarted=restarted,
        buckets=buckets,
    )
