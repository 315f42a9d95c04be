"""testbed.loadgen against a small in-process fake exchange that speaks the documented client/admin API."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from testbed.loadgen import LoadReport, LoadTarget, _Outage, run_load

TOKEN = "s3cret-admin-token-for-tests"
MARKETS = ["BTC-USD", "ETH-USD"]
CHAINS = ["BTC", "ETH"]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # like the real nodes: 32 workers connect at once


class FakeExchange:
    """Idempotent in-memory orders and withdrawals, with knobs to misbehave."""

    def __init__(self, *, fail_first: int = 0, fail_markets: tuple[str, ...] = (), drop_final: int = 0,
                 duplicate_final: bool = False, double_processed: tuple[str, ...] = (),
                 reject_markets: tuple[str, ...] = (), process_after_s: float = 0.1,
                 balance: int | None = None) -> None:
        self.fail_first = fail_first
        self.fail_markets = set(fail_markets)
        self.drop_final = drop_final
        self.duplicate_final = duplicate_final
        self.double_processed = list(double_processed)
        self.reject_markets = set(reject_markets)
        self.process_after_s = process_after_s
        self.balance = balance  # per chain; None = unlimited
        self.lock = threading.Lock()
        self.orders: dict[str, dict[str, dict[str, Any]]] = {}
        self.withdrawals: dict[str, dict[str, dict[str, Any]]] = {}
        self.created: dict[str, float] = {}
        self.attempts: Counter[tuple[str, str]] = Counter()
        self.ids = itertools.count(1)
        self.connections = 0
        self.server = _Server(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeExchange:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def target(self, markets: list[str] | None = None, token: str = TOKEN) -> LoadTarget:
        return LoadTarget(self.url, markets or MARKETS, CHAINS, [(self.url, token)])

    # -- routes

    def handle(self, method: str, path: str, body: dict[str, Any], headers: Any) -> tuple[int, Any]:
        parts = path.strip("/").split("/")
        if method == "POST" and len(parts) == 3 and parts[0] == "markets" and parts[2] == "orders":
            return self.place(parts[1], body)
        if method == "GET" and len(parts) == 3 and parts[0] == "markets" and parts[2] == "orders":
            return 200, {"market": parts[1], "seq": 0, "orders": self.final_orders(parts[1])}
        if method == "POST" and len(parts) == 3 and parts[0] == "chains" and parts[2] == "withdrawals":
            return self.withdraw(parts[1], body)
        if method == "GET" and len(parts) == 3 and parts[0] == "chains" and parts[2] == "withdrawals":
            return 200, {"chain": parts[1], "withdrawals": self.final_withdrawals(parts[1])}
        if method == "GET" and path == "/v1/ledger/reconcile":
            if headers.get("Authorization") != f"Bearer {TOKEN}":
                return 401, {"error": "missing or invalid bearer token"}
            chains = {c: {"deposits": 0, "double_processed": []} for c in CHAINS}
            chains[CHAINS[0]]["double_processed"] = self.double_processed
            return 200, {"balanced": not self.double_processed, "chains": chains}
        return 404, {"error": f"no route for {method} {path}"}

    def place(self, market: str, body: dict[str, Any]) -> tuple[int, Any]:
        coid = body.get("client_order_id")
        if not coid or body.get("side") not in ("buy", "sell") or not isinstance(body.get("price"), int) \
                or not 1 <= body.get("qty", 0) <= 10:
            return 400, {"error": "bad order"}
        if market in self.reject_markets:
            return 400, {"error": "unknown market"}
        with self.lock:
            self.attempts[(market, coid)] += 1
            if market in self.fail_markets and self.attempts[(market, coid)] <= self.fail_first:
                return 503, {"error": "standby"}
            book = self.orders.setdefault(market, {})
            if coid in book:
                return 200, {**book[coid], "market": market, "seq": 1, "replayed": True}
            order = {"order_id": f"o-{next(self.ids)}", "client_order_id": coid, "side": body["side"],
                     "price": body["price"], "qty": body["qty"], "filled_qty": 0, "status": "open"}
            book[coid] = order
            return 200, {**order, "market": market, "seq": 1}

    def withdraw(self, chain: str, body: dict[str, Any]) -> tuple[int, Any]:
        cwid = body.get("client_withdrawal_id")
        if not cwid or not body.get("address") or not 1 <= body.get("amount", 0) <= 100:
            return 400, {"error": "bad withdrawal"}
        with self.lock:
            queue = self.withdrawals.setdefault(chain, {})
            if cwid in queue:
                return 200, {**queue[cwid], "replayed": True}
            if self.balance is not None and sum(w["amount"] for w in queue.values()) + body["amount"] > self.balance:
                return 409, {"error": f"insufficient balance on {chain}", "chain": chain, "available": 0}
            w = {"withdrawal_id": f"w-{next(self.ids)}", "client_withdrawal_id": cwid, "chain": chain,
                 "address": body["address"], "amount": body["amount"], "status": "queued", "seq": 1}
            queue[cwid] = w
            self.created[cwid] = time.monotonic()
            return 200, dict(w)

    def final_orders(self, market: str) -> list[dict[str, Any]]:
        with self.lock:
            orders = [dict(o) for o in self.orders.get(market, {}).values()]
        if market == MARKETS[0]:
            orders = orders[self.drop_final:]
            if self.duplicate_final and orders:
                orders.append({**orders[0], "order_id": "o-dup"})
        return orders

    def final_withdrawals(self, chain: str) -> list[dict[str, Any]]:
        now = time.monotonic()
        with self.lock:
            out = []
            for cwid, w in self.withdrawals.get(chain, {}).items():
                if now - self.created[cwid] >= self.process_after_s:
                    w["status"] = "processed"
                out.append(dict(w))
            return out

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in two writes

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
                pass

            def setup(self) -> None:
                super().setup()
                with fake.lock:
                    fake.connections += 1

            def _dispatch(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else {}
                except ValueError:
                    body = {}
                status, payload = fake.handle(self.command, self.path, body, self.headers)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _dispatch

        return H


def _load(fake: FakeExchange, rate: float = 30, duration: float = 0.6, **kw: Any) -> LoadReport:
    kw.setdefault("workers", 8)
    kw.setdefault("settle_timeout", 3.0)
    kw.setdefault("seed", 7)
    return run_load(kw.pop("target", None) or fake.target(), rate, duration, **kw)


def test_clean_run_is_consistent_and_paced() -> None:
    ticks: list[dict[str, Any]] = []
    with FakeExchange() as fake:
        report = run_load(fake.target(), 60, 1.5, withdrawal_share=0.2, settle_timeout=5, progress=ticks.append,
                          seed=1)
    doc = report.as_json()
    assert list(doc)[:8] == ["sent", "acked", "lost", "duplicated", "double_withdrawals", "ledger_balanced",
                             "max_unavailable_ms", "latency_ms"]
    assert 80 <= doc["sent"] <= 95  # 60/s x 1.5 s
    assert doc["acked"] == doc["sent"] == doc["attempts"]
    assert (doc["lost"], doc["duplicated"], doc["double_withdrawals"], doc["unacked"], doc["rejected"]) == (0,) * 5
    assert doc["ledger_balanced"] is True
    assert doc["max_unavailable_ms"] == {"BTC-USD": 0, "ETH-USD": 0}
    assert doc["max_unavailable_ms_chains"] == {"BTC": 0, "ETH": 0}
    assert 0 < doc["latency_ms"]["p50"] <= doc["latency_ms"]["p99"] < 1000
    w = doc["withdrawals"]
    assert w["sent"] > 0 and w["acked"] == w["sent"] and (w["lost"], w["unprocessed"]) == (0, 0)
    assert doc["orders"]["sent"] + w["sent"] == doc["sent"]
    assert sum(len(o) for o in fake.orders.values()) == doc["orders"]["acked"]
    assert fake.connections <= 32 + 2  # kept-alive: one connection per worker (+ audit clients), not per request
    assert ticks and {"elapsed_s", "sent", "acked", "errors"} <= set(ticks[0])
    assert TOKEN not in json.dumps(doc) and TOKEN not in repr(fake.target()) and TOKEN not in repr(report)


def test_failing_attempts_are_retried_with_the_same_id() -> None:
    with FakeExchange(fail_first=3, fail_markets=("BTC-USD",)) as fake:
        report = _load(fake, withdrawal_share=0.0)
    assert report.lost == 0 and report.duplicated == 0 and report.unacked == 0
    assert report.acked == report.sent > 0
    assert report.max_unavailable_ms["BTC-USD"] > 0
    assert report.max_unavailable_ms["ETH-USD"] == 0
    assert report.errors >= 3 and report.attempts > report.sent
    assert report.error_kinds.get("http_503", 0) == report.errors
    assert sum(len(o) for o in fake.orders.values()) == report.acked  # one order per client_order_id


def test_order_missing_from_final_state_is_lost() -> None:
    with FakeExchange(drop_final=1) as fake:
        report = _load(fake, withdrawal_share=0.0)
    assert report.lost == 1 and report.duplicated == 0


def test_order_listed_twice_is_duplicated() -> None:
    with FakeExchange(duplicate_final=True) as fake:
        report = _load(fake, withdrawal_share=0.0)
    assert report.duplicated == 1 and report.lost == 0


def test_double_processed_withdrawals_unbalance_the_ledger() -> None:
    with FakeExchange(double_processed=("w-1", "w-2")) as fake:
        report = _load(fake, withdrawal_share=0.3)
    assert report.double_withdrawals == 2
    assert report.ledger_balanced is False
    assert report.withdrawals_lost == 0 and report.withdrawals_unprocessed == 0
    assert report.reconcile == [{"url": fake.url, "balanced": False, "double_processed": 2, "error": None}]


def test_unreadable_reconcile_is_not_balanced() -> None:
    with FakeExchange() as fake:
        report = _load(fake, target=fake.target(token="wrong"), withdrawal_share=0.0, settle_timeout=0.5)
    assert report.ledger_balanced is False and report.reconcile[0]["error"]
    assert "wrong" not in json.dumps(report.as_json())


def test_rejections_and_give_ups_are_counted_not_lost() -> None:
    with FakeExchange(reject_markets=("BAD-USD",), fail_first=10**6, fail_markets=("ETH-USD",),
                      process_after_s=60) as fake:
        report = _load(fake, target=fake.target(markets=["BAD-USD", "ETH-USD"]), withdrawal_share=0.2,
                       retry_deadline=0.3, settle_timeout=0.5)
    assert report.orders_rejected > 0 and report.orders_unacked > 0
    assert report.rejected_statuses == {"400": report.orders_rejected}
    assert set(report.error_kinds) == {"http_503"}
    assert report.orders_rejected + report.orders_unacked == report.orders_sent
    assert report.lost == 0 and report.orders_acked == 0
    assert report.max_unavailable_ms["ETH-USD"] >= 200 and report.max_unavailable_ms["BAD-USD"] == 0
    assert report.withdrawals_acked == report.withdrawals_sent > 0
    assert report.withdrawals_unprocessed == report.withdrawals_acked  # never processed within settle_timeout


def test_insufficient_balance_is_a_rejection_not_an_outage() -> None:
    with FakeExchange(balance=0) as fake:
        report = _load(fake, withdrawal_share=0.5)
    assert report.withdrawals_sent > 0 and report.withdrawals_rejected == report.withdrawals_sent
    assert report.rejected_statuses == {"409": report.withdrawals_sent}
    assert report.attempts == report.sent and report.errors == 0
    assert report.max_unavailable_ms_chains == {"BTC": 0, "ETH": 0}
    assert report.lost == 0 and report.withdrawals_lost == 0 and report.ledger_balanced


def test_stop_event_ends_the_load_early() -> None:
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    with FakeExchange() as fake:
        t0 = time.monotonic()
        report = _load(fake, rate=20, duration=30, stop=stop)
    assert time.monotonic() - t0 < 5
    assert report.duration_s < 1 and 3 <= report.sent <= 12 and report.lost == 0


def test_unreachable_frontend_counts_errors_without_raising() -> None:
    with FakeExchange() as fake:
        url = fake.url
    target = LoadTarget(url, ["BTC-USD"], [], [])
    report = run_load(target, 20, 0.3, retry_deadline=0.2, settle_timeout=0.2, workers=2)
    assert report.sent > 0 and report.unacked == report.sent and report.acked == 0
    assert report.error_kinds.get("refused", 0) > 0
    assert report.unverified_markets == ["BTC-USD"] and report.lost == 0
    assert report.max_unavailable_ms["BTC-USD"] > 0


@pytest.mark.parametrize(("rate", "duration", "markets", "kw"), [
    (0, 1, MARKETS, {}),
    (-5, 1, MARKETS, {}),
    (10, 0, MARKETS, {}),
    (10, -1, MARKETS, {}),
    (10, 1, [], {}),
    (10, 1, MARKETS, {"withdrawal_share": 1.5}),
    (10, 1, MARKETS, {"settle_timeout": -1}),
    (10, 1, MARKETS, {"workers": 0}),
])
def test_bad_arguments_raise_value_error(rate: float, duration: float, markets: list[str],
                                         kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"rate|duration|markets|withdrawal_share|settle_timeout|workers"):
        run_load(LoadTarget("http://127.0.0.1:9", markets, CHAINS, []), rate, duration, **kw)


def test_bad_frontend_url_raises_value_error() -> None:
    with pytest.raises(ValueError, match="URL"):
        run_load(LoadTarget("127.0.0.1:9", MARKETS, CHAINS, []), 10, 1)


def test_outage_tracks_longest_failing_interval() -> None:
    o = _Outage()
    o.succeeded(0.0, 0.01)
    o.failed(1.0, 1.01)
    o.failed(1.2, 1.21)
    o.succeeded(0.5, 1.3)  # started before the outage: does not end it
    o.succeeded(1.5, 1.6)
    o.failed(1.4, 3.4)  # a timeout that started before the success above: stale
    o.failed(2.0, 2.01)
    o.succeeded(2.1, 2.15)
    assert o.finish() == 600
    o.failed(5.0, 5.1)
    o.failed(6.0, 6.9)  # never recovered: closed at the last failure
    assert o.finish() == 1900
