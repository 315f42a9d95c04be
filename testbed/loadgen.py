"""Open-loop load generator for the testbed: orders and withdrawals through HAProxy, then a correctness audit.

``run_load`` issues ``rate`` logical requests per second for ``duration`` seconds (orders spread over the
markets, a ``withdrawal_share`` of withdrawals spread over the chains), retries every failed request with the
*same* client id until it is acknowledged or its retry deadline passes, and then audits the exchange: every
acknowledged order must be in its market's final order list exactly once with the acknowledged ``order_id``,
every acknowledged withdrawal must be processed exactly once, and every wallet ledger must reconcile.

Pacing is open-loop: a scheduler puts each request on a queue at its planned time, whether or not the
exchange keeps up, and a fixed pool of worker threads (each with one kept-alive HTTP connection to the
frontend) sends them. Time spent waiting for a free worker counts as latency. Retries go back through the
scheduler with a short growing backoff, so a failing market never parks a worker.

Only the documented node API (docs/testbed.md) is used. Network errors never raise; they are counted.
Admin tokens are sent in headers only and never logged, printed or put in the report.
"""

from __future__ import annotations

import contextlib
import heapq
import http.client
import itertools
import json
import logging
import math
import queue
import random
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

LOG = logging.getLogger("testbed.loadgen")

DEFAULT_WORKERS = 32
RETRY_DEADLINE_S = 15.0  # a logical request is given up ("unacked") this long after its planned start
REQUEST_TIMEOUT_S = 2.0  # per attempt
LIST_TIMEOUT_S = 30.0  # final-state lists hold every order ever accepted: allow them time
BACKOFF_MIN_S = 0.02
BACKOFF_MAX_S = 0.2
SETTLE_POLL_S = 0.25
FINAL_FETCH_MIN_S = 5.0  # the final-state fetch retries at least this long even if the settle budget is spent
MID_PRICE = 10_000
PRICE_SPREAD = 50

# 409: the market mode forbids the order right now; 408/429: proxy-level back-pressure. All worth retrying.
_RETRY_STATUSES = frozenset({408, 409, 425, 429})
# Failures of a *reused* kept-alive connection that mean "the server closed it while idle": retried at once on
# a fresh connection without counting as an error (a really dead server then fails the fresh connect).
_STALE_ERRORS = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError, ConnectionAbortedError)


# --------------------------------------------------------------------------- public API


@dataclass(frozen=True)
class LoadTarget:
    frontend_url: str  # e.g. "http://127.77.0.1:8000"
    markets: list[str]  # e.g. ["BTC-USD", "ETH-USD"]
    chains: list[str]  # e.g. ["BTC", "ETH"]
    # (admin base url of a wallet node, bearer token) for /v1/ledger/reconcile; kept out of repr()
    wallet_admin: list[tuple[str, str]] = field(default_factory=list, repr=False)


@dataclass
class LoadReport:
    run_id: str
    rate: float
    duration_s: float = 0.0  # length of the sending phase actually run
    elapsed_s: float = 0.0  # whole run: sending, draining retries, settling, auditing
    sent: int = 0  # logical requests (orders + withdrawals), not attempts
    acked: int = 0
    unacked: int = 0  # gave up after the retry deadline (not necessarily lost)
    rejected: int = 0  # 4xx answers other than 408/409/425/429: not retried
    attempts: int = 0  # HTTP attempts, retries included
    errors: int = 0  # failed attempts (connection errors, timeouts, 5xx, 409, ...)
    error_kinds: dict[str, int] = field(default_factory=dict)  # failed attempts by cause
    rejected_statuses: dict[str, int] = field(default_factory=dict)  # rejected requests by HTTP status
    lost: int = 0  # acked orders missing from the final state (or present with another order_id)
    duplicated: int = 0  # client_order_ids listed more than once + acks that disagreed on the order_id
    double_withdrawals: int = 0  # reconcile double_processed + withdrawals listed more than once
    ledger_balanced: bool = True
    max_unavailable_ms: dict[str, int] = field(default_factory=dict)  # per market
    max_unavailable_ms_chains: dict[str, int] = field(default_factory=dict)  # per chain
    latency_p50_ms: float = 0.0
    latency_p99_ms: float = 0.0
    latency_samples: int = 0
    orders_sent: int = 0
    orders_acked: int = 0
    orders_unacked: int = 0
    orders_rejected: int = 0
    withdrawals_sent: int = 0
    withdrawals_acked: int = 0
    withdrawals_unacked: int = 0
    withdrawals_rejected: int = 0
    withdrawals_lost: int = 0
    withdrawals_unprocessed: int = 0  # acked, present in the final lists, but not "processed" at the end
    unverified_markets: list[str] = field(default_factory=list)  # final order list could not be fetched
    unverified_chains: list[str] = field(default_factory=list)  # final withdrawal list could not be fetched
    reconcile: list[dict[str, Any]] = field(default_factory=list)  # per wallet node: url, balanced, ..., error

    def as_json(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "acked": self.acked,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "double_withdrawals": self.double_withdrawals,
            "ledger_balanced": self.ledger_balanced,
            "max_unavailable_ms": dict(self.max_unavailable_ms),
            "latency_ms": {"p50": self.latency_p50_ms, "p99": self.latency_p99_ms, "samples": self.latency_samples},
            "unacked": self.unacked,
            "rejected": self.rejected,
            "attempts": self.attempts,
            "errors": self.errors,
            "error_kinds": dict(self.error_kinds),
            "rejected_statuses": dict(self.rejected_statuses),
            "orders": {
                "sent": self.orders_sent,
                "acked": self.orders_acked,
                "unacked": self.orders_unacked,
                "rejected": self.orders_rejected,
            },
            "withdrawals": {
                "sent": self.withdrawals_sent,
                "acked": self.withdrawals_acked,
                "lost": self.withdrawals_lost,
                "unprocessed": self.withdrawals_unprocessed,
                "unacked": self.withdrawals_unacked,
                "rejected": self.withdrawals_rejected,
            },
            "max_unavailable_ms_chains": dict(self.max_unavailable_ms_chains),
            "duration_s": self.duration_s,
            "rate": self.rate,
            "achieved_rate": round(self.sent / self.duration_s, 1) if self.duration_s > 0 else 0.0,
            "elapsed_s": self.elapsed_s,
            "run_id": self.run_id,
            "unverified_markets": list(self.unverified_markets),
            "unverified_chains": list(self.unverified_chains),
            "reconcile": [dict(r) for r in self.reconcile],
        }


def run_load(target: LoadTarget, rate: float, duration: float, *, withdrawal_share: float = 0.05,
             settle_timeout: float = 30.0, stop: threading.Event | None = None,
             progress: Callable[[dict], None] | None = None, seed: int | None = None,
             workers: int = DEFAULT_WORKERS, retry_deadline: float = RETRY_DEADLINE_S,
             request_timeout: float = REQUEST_TIMEOUT_S) -> LoadReport:
    """Drive ``rate`` requests/s at ``target`` for ``duration`` seconds, then audit; see the module docstring.

    ``stop`` ends the sending phase early (retries in flight still finish, then the audit runs). ``progress``
    is called about once a second with ``{"elapsed_s", "sent", "acked", "errors", "phase"}``. ``seed`` makes
    the request mix reproducible (client ids stay unique per run). With no ``target.chains`` only orders are
    sent. ``workers``, ``retry_deadline`` and ``request_timeout`` tune the worker pool, how long a logical
    request is retried before it counts as unacked, and the per-attempt timeout.
    Raises ValueError on bad arguments; never on network errors.
    """
    _validate(target, rate, duration, withdrawal_share, settle_timeout, workers, retry_deadline, request_timeout)
    return _Run(target, rate, duration, withdrawal_share, settle_timeout, stop, progress, seed, workers,
                retry_deadline, request_timeout).run()


def _validate(target: LoadTarget, rate: float, duration: float, withdrawal_share: float, settle_timeout: float,
              workers: int, retry_deadline: float, request_timeout: float) -> None:
    def positive(name: str, value: float) -> None:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a positive finite number, got {value!r}")

    positive("rate", rate)
    positive("duration", duration)
    positive("retry_deadline", retry_deadline)
    positive("request_timeout", request_timeout)
    if not isinstance(settle_timeout, (int, float)) or not math.isfinite(settle_timeout) or settle_timeout < 0:
        raise ValueError(f"settle_timeout must be >= 0, got {settle_timeout!r}")
    if not isinstance(withdrawal_share, (int, float)) or not 0.0 <= withdrawal_share <= 1.0:
        raise ValueError(f"withdrawal_share must be within [0, 1], got {withdrawal_share!r}")
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    if not target.markets:
        raise ValueError("target.markets is empty: the load needs at least one market")
    if withdrawal_share >= 1.0 and not target.chains:
        raise ValueError("withdrawal_share is 1 but target.chains is empty")
    for name, values in (("markets", target.markets), ("chains", target.chains)):
        if any(not isinstance(v, str) or not v for v in values):
            raise ValueError(f"target.{name} must be non-empty strings, got {values!r}")
        if len(set(values)) != len(values):
            raise ValueError(f"target.{name} has duplicates: {values!r}")
    _split_url(target.frontend_url)
    for entry in target.wallet_admin:
        if not isinstance(entry, tuple) or len(entry) != 2:
            raise ValueError("target.wallet_admin entries must be (admin url, token) pairs")
        _split_url(entry[0])


# --------------------------------------------------------------------------- HTTP


def _split_url(url: str) -> tuple[bool, str, int, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) base URL: {url!r}")
    https = parts.scheme == "https"
    try:
        port = parts.port or (443 if https else 80)
    except ValueError as e:
        raise ValueError(f"bad port in {url!r}") from e
    return https, parts.hostname, port, parts.path.rstrip("/")


class _Client:
    """One kept-alive HTTP connection to one base URL; reconnects after any error. Not thread-safe."""

    def __init__(self, base_url: str, timeout: float, token: str | None = None) -> None:
        self._https, self._host, self._port, self._prefix = _split_url(base_url)
        self._timeout = timeout
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._conn: http.client.HTTPConnection | None = None
        self._reused = False  # the current connection already carried a full exchange

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
        """Return (status, parsed JSON or None); raise OSError / HTTPException on transport failure."""
        for first in (True, False):
            reused = self._conn is not None and self._reused
            try:
                if self._conn is None:
                    cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
                    self._conn = cls(self._host, self._port, timeout=self._timeout)
                    self._reused = False
                self._conn.request(method, self._prefix + path, body=body, headers=self._headers)
                resp = self._conn.getresponse()
                raw = resp.read()
                self._reused = True
            except _STALE_ERRORS:
                self.close()
                if first and reused:
                    continue
                raise
            except BaseException:
                self.close()
                raise
            try:
                payload = json.loads(raw) if raw else None
            except ValueError:
                payload = None
            return resp.status, payload
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.close()
        self._conn = None
        self._reused = False


def _permanent_conflict(job: _Job, payload: Any) -> bool:
    """A 409 that retrying cannot fix: the wallet's "insufficient balance" (deposits never grow under load).

    Every other 409 is a market mode (halted, cancel_only, post_only) that a patch sets for a while: retried.
    """
    return job.kind == "withdrawal" and isinstance(payload, dict) and "insufficient" in str(payload.get("error"))


def _error_kind(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return "reset"
    if isinstance(exc, http.client.HTTPException):
        return "protocol"
    return "connection"


# --------------------------------------------------------------------------- bookkeeping


class _Outage:
    """Longest failing interval of one market/chain: first failed attempt (after a success) to the next success.

    Failures are stamped with the attempt's start, successes with the answer's arrival. Attempts run
    concurrently, so a success closes the interval only if it started after the interval opened, and a failure
    that started before a later-started success is stale and ignored.
    """

    __slots__ = ("fail_start", "last_fail_end", "last_ok_start", "max_s")

    def __init__(self) -> None:
        self.fail_start: float | None = None
        self.last_fail_end = 0.0
        self.last_ok_start = -math.inf
        self.max_s = 0.0

    def failed(self, start: float, end: float) -> None:
        if start < self.last_ok_start:
            return
        if self.fail_start is None or start < self.fail_start:
            self.fail_start = start
        self.last_fail_end = max(self.last_fail_end, end)

    def succeeded(self, start: float, end: float) -> None:
        if self.fail_start is not None and start >= self.fail_start:
            self.max_s = max(self.max_s, end - self.fail_start)
            self.fail_start = None
        self.last_ok_start = max(self.last_ok_start, start)

    def finish(self) -> int:
        """Close a still-open interval at the last failure seen; return the maximum in ms."""
        if self.fail_start is not None:
            self.max_s = max(self.max_s, self.last_fail_end - self.fail_start)
            self.fail_start = None
        return round(self.max_s * 1000)


@dataclass(eq=False, slots=True)
class _Job:
    kind: str  # "order" | "withdrawal"
    key: str  # market or chain
    ident: str  # client_order_id or client_withdrawal_id
    path: str
    body: bytes
    due: float  # when the next attempt should start (planned start for the first one)
    deadline: float
    backoff: float = 0.0
    attempts: int = 0


class _Stats:
    """Counters shared by the workers; every mutation under one lock."""

    def __init__(self, markets: list[str], chains: list[str]) -> None:
        self.lock = threading.Lock()
        self.sent = Counter[str]()  # kind -> n
        self.acked = Counter[str]()
        self.unacked = Counter[str]()
        self.rejected = Counter[str]()
        self.attempts = 0
        self.errors = 0
        self.error_kinds = Counter[str]()  # failed attempts by cause: timeout, refused, reset, http_503, ...
        self.rejected_statuses = Counter[str]()  # rejected requests by HTTP status
        self.latencies: list[float] = []  # seconds
        self.order_acks: dict[str, tuple[str, Any]] = {}  # client_order_id -> (market, order_id)
        self.withdrawal_acks: dict[str, tuple[str, Any]] = {}  # client_withdrawal_id -> (chain, withdrawal_id)
        self.ack_mismatches = 0
        self.outages = {("order", m): _Outage() for m in markets}
        self.outages.update({("withdrawal", c): _Outage() for c in chains})

    def ack(self, job: _Job, start: float, end: float, payload: dict[str, Any]) -> None:
        acks = self.order_acks if job.kind == "order" else self.withdrawal_acks
        ident_key = "order_id" if job.kind == "order" else "withdrawal_id"
        with self.lock:
            self.attempts += 1
            self.latencies.append(end - job.due)
            self.outages[(job.kind, job.key)].succeeded(start, end)
            new_id = payload.get(ident_key)
            earlier = acks.get(job.ident)
            if earlier is None:
                self.acked[job.kind] += 1
                acks[job.ident] = (job.key, new_id)
            elif earlier[1] != new_id:
                self.ack_mismatches += 1

    def failed(self, job: _Job, start: float, end: float, kind: str) -> None:
        with self.lock:
            self.attempts += 1
            self.errors += 1
            self.error_kinds[kind] += 1
            self.outages[(job.kind, job.key)].failed(start, end)

    def reject(self, job: _Job, status: int) -> None:
        with self.lock:
            self.attempts += 1
            self.rejected[job.kind] += 1
            self.rejected_statuses[str(status)] += 1

    def give_up(self, job: _Job) -> None:
        with self.lock:
            self.unacked[job.kind] += 1

    def snapshot(self) -> tuple[int, int, int]:
        with self.lock:
            return sum(self.sent.values()), sum(self.acked.values()), self.errors


def _percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


# --------------------------------------------------------------------------- the run


class _Run:
    def __init__(self, target: LoadTarget, rate: float, duration: float, withdrawal_share: float,
                 settle_timeout: float, stop: threading.Event | None,
                 progress: Callable[[dict], None] | None, seed: int | None, workers: int,
                 retry_deadline: float, request_timeout: float) -> None:
        self.target = target
        self.rate = float(rate)
        self.duration = float(duration)
        self.withdrawal_share = float(withdrawal_share) if target.chains else 0.0
        self.settle_timeout = float(settle_timeout)
        self.stop = stop if stop is not None else threading.Event()
        self.progress = progress
        self.rng = random.Random(seed)
        self.workers = workers
        self.retry_deadline = float(retry_deadline)
        self.request_timeout = float(request_timeout)
        # Unique per run even with a fixed seed: the exchange remembers every client id ever used.
        self.run_id = f"{int(time.time()):x}{secrets.token_hex(3)}"
        self.order_prefix = f"lg-{self.run_id}-"
        self.withdrawal_prefix = f"lgw-{self.run_id}-"
        self.stats = _Stats(target.markets, target.chains)
        self.ready: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.cv = threading.Condition()
        self.retries: list[tuple[float, int, _Job]] = []  # heap, under cv
        self.pending = 0  # logical requests not yet acked/rejected/given up, under cv
        self.seq = itertools.count()
        self.t0 = 0.0
        self.next_progress = 0.0

    # -- top level

    def run(self) -> LoadReport:
        self.t0 = time.monotonic()
        self.next_progress = self.t0 + 1.0
        threads = [threading.Thread(target=self._worker, name=f"loadgen-{i}", daemon=True)
                   for i in range(self.workers)]
        for t in threads:
            t.start()
        try:
            load_s = self._schedule()
        finally:
            for _thread in threads:
                self.ready.put(None)
            for t in threads:
                t.join(timeout=self.request_timeout * 2 + 5)
        report = self._report(load_s)
        self._audit(report)
        report.elapsed_s = round(time.monotonic() - self.t0, 3)
        return report

    # -- scheduling

    def _new_job(self, n: int, due: float) -> _Job:
        rng = self.rng
        if self.withdrawal_share > 0 and rng.random() < self.withdrawal_share:
            chain = rng.choice(self.target.chains)
            ident = f"{self.withdrawal_prefix}{n}"
            body = {"client_withdrawal_id": ident, "address": f"lg-{chain.lower()}-addr-{rng.randint(1, 999):03d}",
                    "amount": rng.randint(1, 100)}
            kind, key, path = "withdrawal", chain, f"/chains/{quote(chain, safe='')}/withdrawals"
        else:
            market = rng.choice(self.target.markets)
            ident = f"{self.order_prefix}{n}"
            body = {"client_order_id": ident, "side": rng.choice(("buy", "sell")),
                    "price": MID_PRICE + rng.randint(-PRICE_SPREAD, PRICE_SPREAD), "qty": rng.randint(1, 10)}
            kind, key, path = "order", market, f"/markets/{quote(market, safe='')}/orders"
        return _Job(kind, key, ident, path, json.dumps(body, separators=(",", ":")).encode(), due,
                    due + self.retry_deadline, BACKOFF_MIN_S)

    def _schedule(self) -> float:
        """Issue requests on time until the duration ends or stop is set, then wait for every retry to end.

        Returns the length of the sending phase in seconds.
        """
        interval = 1.0 / self.rate
        end = self.t0 + self.duration
        n = 0
        load_end: float | None = None
        while True:
            now = time.monotonic()
            if load_end is None and (self.stop.is_set() or now >= end):
                load_end = min(now, end)
            if load_end is None:
                while True:
                    due = self.t0 + n * interval
                    if due > now or due >= end:
                        break
                    job = self._new_job(n, due)
                    n += 1
                    with self.stats.lock:
                        self.stats.sent[job.kind] += 1
                    with self.cv:
                        self.pending += 1
                    self.ready.put(job)
            with self.cv:
                while self.retries and self.retries[0][0] <= now:
                    self.ready.put(heapq.heappop(self.retries)[2])
                if load_end is not None and self.pending == 0:
                    break
                wake = self.retries[0][0] if self.retries else now + 0.05
                if load_end is None:
                    wake = min(wake, self.t0 + n * interval)
                wake = min(wake, self.next_progress, now + 0.05)
                delay = wake - time.monotonic()
                if delay > 0:
                    self.cv.wait(delay)
            self._maybe_progress("load" if load_end is None else "drain")
        return round((load_end if load_end is not None else end) - self.t0, 3)

    def _maybe_progress(self, phase: str, force: bool = False) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if not force and now < self.next_progress:
            return
        self.next_progress = now + 1.0
        sent, acked, errors = self.stats.snapshot()
        try:
            self.progress({"elapsed_s": round(now - self.t0, 3), "sent": sent, "acked": acked, "errors": errors,
                           "phase": phase})
        except Exception:  # a broken progress callback must not abort the load
            LOG.exception("progress callback failed")

    # -- workers

    def _worker(self) -> None:
        client = _Client(self.target.frontend_url, self.request_timeout)
        try:
            while True:
                job = self.ready.get()
                if job is None:
                    return
                try:
                    self._attempt(client, job)
                except Exception:  # never lose track of a job, whatever happened
                    LOG.exception("loadgen worker: unexpected error on %s", job.ident)
                    self._finish(job, gave_up=True)
        finally:
            client.close()

    def _attempt(self, client: _Client, job: _Job) -> None:
        start = time.monotonic()
        if job.attempts and start > job.deadline:
            self._finish(job, gave_up=True)
            return
        job.attempts += 1
        try:
            status, payload = client.request("POST", job.path, job.body)
        except (OSError, http.client.HTTPException) as e:
            self.stats.failed(job, start, time.monotonic(), _error_kind(e))
            self._retry(job)
            return
        end = time.monotonic()
        if status == 200 and isinstance(payload, dict):
            self.stats.ack(job, start, end, payload)
            self._finish(job)
        elif status == 200 or (status in _RETRY_STATUSES and not _permanent_conflict(job, payload)) \
                or status >= 500 or status < 400:
            self.stats.failed(job, start, end, f"http_{status}" if status != 200 else "bad_body")
            self._retry(job)
        else:
            self.stats.reject(job, status)
            self._finish(job)

    def _retry(self, job: _Job) -> None:
        due = time.monotonic() + job.backoff
        if due > job.deadline:
            self._finish(job, gave_up=True)
            return
        job.due = due
        job.backoff = min(job.backoff * 2, BACKOFF_MAX_S)
        with self.cv:
            heapq.heappush(self.retries, (due, next(self.seq), job))
            self.cv.notify()

    def _finish(self, job: _Job, gave_up: bool = False) -> None:
        if gave_up:
            self.stats.give_up(job)
        with self.cv:
            self.pending -= 1
            if self.pending == 0:
                self.cv.notify()

    # -- report and audit

    def _report(self, load_s: float) -> LoadReport:
        s = self.stats
        with s.lock:
            lat = sorted(s.latencies)
            r = LoadReport(run_id=self.run_id, rate=self.rate, duration_s=load_s)
            r.orders_sent, r.withdrawals_sent = s.sent["order"], s.sent["withdrawal"]
            r.orders_acked, r.withdrawals_acked = s.acked["order"], s.acked["withdrawal"]
            r.orders_unacked, r.withdrawals_unacked = s.unacked["order"], s.unacked["withdrawal"]
            r.orders_rejected, r.withdrawals_rejected = s.rejected["order"], s.rejected["withdrawal"]
            r.sent = r.orders_sent + r.withdrawals_sent
            r.acked = r.orders_acked + r.withdrawals_acked
            r.unacked = r.orders_unacked + r.withdrawals_unacked
            r.rejected = r.orders_rejected + r.withdrawals_rejected
            r.attempts, r.errors = s.attempts, s.errors
            r.error_kinds = dict(sorted(s.error_kinds.items()))
            r.rejected_statuses = dict(sorted(s.rejected_statuses.items()))
            r.max_unavailable_ms = {m: s.outages[("order", m)].finish() for m in self.target.markets}
            r.max_unavailable_ms_chains = {c: s.outages[("withdrawal", c)].finish() for c in self.target.chains}
        r.latency_samples = len(lat)
        r.latency_p50_ms = round(_percentile(lat, 50) * 1000, 2)
        r.latency_p99_ms = round(_percentile(lat, 99) * 1000, 2)
        return r

    def _fetch(self, client: _Client, path: str, deadline: float, phase: str) -> Any:
        """GET path until a 200 JSON answer (returned) or the deadline passes (None). Always tries once."""
        backoff = BACKOFF_MIN_S
        while True:
            try:
                status, payload = client.request("GET", path)
                if status == 200 and isinstance(payload, dict):
                    return payload
                LOG.debug("GET %s: HTTP %s", path, status)
                if 400 <= status < 500 and status not in _RETRY_STATUSES:
                    return None
            except (OSError, http.client.HTTPException) as e:
                LOG.debug("GET %s: %s", path, _error_kind(e))
            self._maybe_progress(phase)
            if time.monotonic() + backoff > deadline:
                return None
            time.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S * 2.5)

    def _audit(self, r: LoadReport) -> None:
        settle_deadline = time.monotonic() + self.settle_timeout
        front = _Client(self.target.frontend_url, LIST_TIMEOUT_S)
        try:
            final_withdrawals = self._settle_withdrawals(front, settle_deadline)
            final_deadline = max(settle_deadline, time.monotonic() + min(self.settle_timeout, FINAL_FETCH_MIN_S))
            self._audit_orders(front, r, final_deadline)
            self._audit_withdrawals(front, r, final_withdrawals, final_deadline)
        finally:
            front.close()
        self._audit_ledgers(r, final_deadline)
        self._maybe_progress("done", force=True)

    def _withdrawal_lists(self, front: _Client, chains: list[str], deadline: float,
                          known: dict[str, dict[str, list[dict[str, Any]]]]) -> None:
        for chain in chains:
            payload = self._fetch(front, f"/chains/{quote(chain, safe='')}/withdrawals", deadline, "settle")
            if payload is None or not isinstance(payload.get("withdrawals"), list):
                continue
            by_id: dict[str, list[dict[str, Any]]] = {}
            for w in payload["withdrawals"]:
                if isinstance(w, dict) and str(w.get("client_withdrawal_id", "")).startswith(self.withdrawal_prefix):
                    by_id.setdefault(w["client_withdrawal_id"], []).append(w)
            known[chain] = by_id

    def _settle_withdrawals(self, front: _Client,
                            deadline: float) -> dict[str, dict[str, list[dict[str, Any]]]]:
        """Poll the withdrawal lists until every acked withdrawal is processed or the deadline passes."""
        lists: dict[str, dict[str, list[dict[str, Any]]]] = {}
        if not self.stats.sent["withdrawal"]:
            return lists
        acks = dict(self.stats.withdrawal_acks)
        while True:
            self._withdrawal_lists(front, self.target.chains, deadline, lists)
            waiting = [ident for ident, (chain, _ack) in acks.items()
                       if not any(w.get("status") == "processed" for w in lists.get(chain, {}).get(ident, []))]
            if not waiting or time.monotonic() + SETTLE_POLL_S > deadline:
                return lists
            self._maybe_progress("settle")
            time.sleep(SETTLE_POLL_S)

    def _audit_orders(self, front: _Client, r: LoadReport, deadline: float) -> None:
        by_market: dict[str, list[tuple[str, Any]]] = {}
        for ident, (market, order_id) in self.stats.order_acks.items():
            by_market.setdefault(market, []).append((ident, order_id))
        duplicated = self.stats.ack_mismatches
        lost = 0
        if self.stats.sent["order"]:
            for market in self.target.markets:
                payload = self._fetch(front, f"/markets/{quote(market, safe='')}/orders", deadline, "audit")
                orders = payload.get("orders") if payload is not None else None
                if not isinstance(orders, list):
                    r.unverified_markets.append(market)
                    lost += len(by_market.get(market, []))  # cannot show they survived: count them lost
                    continue
                listed: dict[str, list[Any]] = {}
                for o in orders:
                    if isinstance(o, dict) and str(o.get("client_order_id", "")).startswith(self.order_prefix):
                        listed.setdefault(o["client_order_id"], []).append(o.get("order_id"))
                duplicated += sum(1 for ids in listed.values() if len(ids) > 1)
                for ident, order_id in by_market.get(market, []):
                    ids = listed.get(ident)
                    if not ids or (order_id is not None and order_id not in ids):
                        lost += 1
        r.lost, r.duplicated = lost, duplicated

    def _audit_withdrawals(self, front: _Client, r: LoadReport,
                           lists: dict[str, dict[str, list[dict[str, Any]]]], deadline: float) -> None:
        if not self.stats.sent["withdrawal"]:
            return
        missing = [c for c in self.target.chains if c not in lists]
        if missing:
            self._withdrawal_lists(front, missing, deadline, lists)
        r.unverified_chains = [c for c in self.target.chains if c not in lists]
        lost = unprocessed = 0
        for ident, (chain, withdrawal_id) in self.stats.withdrawal_acks.items():
            entries = lists.get(chain, {}).get(ident, [])
            if not entries or (withdrawal_id is not None and all(w.get("withdrawal_id") != withdrawal_id
                                                                 for w in entries)):
                lost += 1
            elif not any(w.get("status") == "processed" for w in entries):
                unprocessed += 1
        r.withdrawals_lost, r.withdrawals_unprocessed = lost, unprocessed
        r.double_withdrawals += sum(1 for by_id in lists.values() for entries in by_id.values() if len(entries) > 1)

    def _audit_ledgers(self, r: LoadReport, deadline: float) -> None:
        for url, token in self.target.wallet_admin:
            entry: dict[str, Any] = {"url": url, "balanced": False, "double_processed": 0, "error": None}
            client = _Client(url, LIST_TIMEOUT_S, token=token)
            try:
                payload = self._fetch(client, "/v1/ledger/reconcile", deadline, "audit")
            finally:
                client.close()
            if payload is None:
                entry["error"] = "reconcile answer could not be fetched"
            else:
                doubles = payload.get("double_processed")
                n = len(doubles) if isinstance(doubles, list) else 0
                chains = payload.get("chains")
                if isinstance(chains, dict):
                    for info in chains.values():
                        if isinstance(info, dict) and isinstance(info.get("double_processed"), list):
                            n += len(info["double_processed"])
                entry["balanced"] = payload.get("balanced") is True
                entry["double_processed"] = n
                r.double_withdrawals += n
            if not entry["balanced"]:
                r.ledger_balanced = False
            r.reconcile.append(entry)
