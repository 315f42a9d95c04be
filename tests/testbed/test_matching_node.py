"""Matching-engine node: books, journal replay, idempotency, HA replication, modes, faults, auth.

Every test runs real node processes on private loopback addresses (tests/testbed/nodes.py).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from tests.testbed.node_fixtures import MARKETS, NodeFactory, PairFactory
from tests.testbed.nodes import NodeProc, http, status, wait_for


def order(node: NodeProc, coid: str, side: str, price: int, qty: int, market: str = "BTC-USD") -> tuple[int, Any]:
    return node.client("POST", f"/markets/{market}/orders",
                       {"client_order_id": coid, "side": side, "price": price, "qty": qty})


def ok_order(node: NodeProc, coid: str, side: str, price: int, qty: int, market: str = "BTC-USD") -> dict[str, Any]:
    code, body = order(node, coid, side, price, qty, market)
    assert code == 200, body
    return body


def orders(node: NodeProc, market: str = "BTC-USD") -> list[dict[str, Any]]:
    code, body = node.client("GET", f"/markets/{market}/orders")
    assert code == 200, body
    return body["orders"]


def feed(node: NodeProc, prefix: str, n: int = 30) -> list[dict[str, Any]]:
    """A deterministic mix of resting and crossing orders, several at each price level."""
    acks = []
    for i in range(n):
        side = "buy" if i % 3 else "sell"
        price = 100 + (i * 7) % 5 - (2 if side == "buy" else 0)
        acks.append(ok_order(node, f"{prefix}-{i}", side, price, 3 + (i * 5) % 11, MARKETS[i % 2]))
    return acks


def same_state(x: NodeProc, y: NodeProc) -> bool:
    sx, sy = status(x), status(y)
    return sx["seq"] == sy["seq"] and sx["state_hash"] == sy["state_hash"]


def coids(node: NodeProc) -> set[str]:
    return {o["client_order_id"] for m in MARKETS for o in orders(node, m)}


# --------------------------------------------------------------------------- single node


def test_matching_price_time_priority_and_cancel(matching_node: NodeFactory) -> None:
    node = matching_node()
    node.wait_ready(role="primary")
    ok_order(node, "s1", "sell", 100, 10)
    ok_order(node, "s2", "sell", 100, 5)
    ok_order(node, "s3", "sell", 101, 7)
    ack = ok_order(node, "b1", "buy", 101, 12)
    # Oldest first at the best price, filled at the resting price: s1 fully, s2 for 2.
    assert ack["status"] == "filled" and ack["filled_qty"] == 12 and ack["seq"] == 4
    assert set(ack) >= {"order_id", "client_order_id", "market", "side", "price", "qty", "seq", "status", "filled_qty"}
    by_id = {o["client_order_id"]: o for o in orders(node)}
    assert (by_id["s1"]["status"], by_id["s1"]["filled_qty"]) == ("filled", 10)
    assert (by_id["s2"]["status"], by_id["s2"]["filled_qty"]) == ("partially_filled", 2)
    assert by_id["s3"]["status"] == "open"
    code, book = node.client("GET", "/markets/BTC-USD/book")
    assert code == 200 and book == {"market": "BTC-USD", "mode": "open", "bids": [], "asks": [[100, 3], [101, 7]]}

    ack = ok_order(node, "b2", "buy", 102, 20)
    assert (ack["status"], ack["filled_qty"]) == ("partially_filled", 10)
    assert node.client("GET", "/markets/BTC-USD/book")[1]["bids"] == [[102, 10]]

    code, body = node.client("POST", "/markets/BTC-USD/orders/b2/cancel")
    assert code == 200 and body["status"] == "cancelled" and body["client_order_id"] == "b2"
    again = node.client("POST", "/markets/BTC-USD/orders/b2/cancel")
    assert again[0] == 200 and again[1]["status"] == "cancelled" and again[1]["seq"] == body["seq"]
    assert node.client("GET", "/markets/BTC-USD/book")[1]["bids"] == []
    assert node.client("POST", "/markets/BTC-USD/orders/s1/cancel")[0] == 409  # already filled
    assert node.client("POST", "/markets/BTC-USD/orders/nope/cancel")[0] == 404
    assert {o["status"] for o in orders(node)} == {"filled", "cancelled"}

    # Bad input and unknown markets.
    assert order(node, "x", "buy", 0, 1)[0] == 400
    assert order(node, "x", "buy", 1, -1)[0] == 400
    assert order(node, "x", "hold", 1, 1)[0] == 400
    assert order(node, "x", "buy", 1.5, 1)[0] == 400
    assert order(node, "", "buy", 1, 1)[0] == 400
    assert order(node, "x", "buy", 1, 1, market="DOGE-USD")[0] == 404
    assert node.client("GET", "/markets/DOGE-USD/book")[0] == 404
    code, body = http("POST", node.url + "/markets/BTC-USD/orders", None)
    assert code == 400
    assert status(node)["seq"] == 6  # rejected requests were never journaled


def test_journal_replay_after_sigkill_and_idempotent_retry(matching_node: NodeFactory) -> None:
    node = matching_node()
    node.wait_ready(role="primary")
    acks = feed(node, "r", 40)
    resting = next(o for o in orders(node) if o["status"] in ("open", "partially_filled"))
    assert node.client("POST", f"/markets/BTC-USD/orders/{resting['client_order_id']}/cancel")[0] == 200
    assert node.admin("POST", "/v1/markets/mode", {"mode": "post_only", "markets": ["ETH-USD"]})[0] == 200
    before = status(node)
    before_orders = {m: orders(node, m) for m in MARKETS}
    assert before["seq"] == 42 and before["market_modes"] == {"BTC-USD": "open", "ETH-USD": "post_only"}

    retry = order(node, "r-5", "sell", 1, 1, MARKETS[1])[1]
    assert retry["replayed"] is True and retry["order_id"] == acks[5]["order_id"]
    assert {k: v for k, v in retry.items() if k != "replayed"} == acks[5]

    node.kill()
    node.start()
    node.wait_ready(role="primary")
    after = status(node)
    assert (after["seq"], after["state_hash"], after["market_modes"]) == (
        before["seq"], before["state_hash"], before["market_modes"])
    assert {m: orders(node, m) for m in MARKETS} == before_orders
    # The idempotency map came back from the journal: a retry is still no second order.
    retry = order(node, "r-7", "buy", 1, 1, MARKETS[1])[1]
    assert retry["replayed"] is True and retry["order_id"] == acks[7]["order_id"]
    assert status(node)["seq"] == before["seq"]
    assert len(orders(node, MARKETS[1])) == len(before_orders[MARKETS[1]])


def test_market_modes(matching_node: NodeFactory) -> None:
    node = matching_node()
    node.wait_ready(role="primary")
    ok_order(node, "ask", "sell", 100, 5)
    ok_order(node, "bid", "buy", 90, 5)

    def mode(m: str, markets: list[str] | None = None) -> tuple[int, Any]:
        body: dict[str, Any] = {"mode": m}
        if markets is not None:
            body["markets"] = markets
        return node.admin("POST", "/v1/markets/mode", body)

    code, body = mode("post_only", ["BTC-USD"])
    assert code == 200 and body["market_modes"] == {"BTC-USD": "post_only", "ETH-USD": "open"}
    seq = status(node)["seq"]
    assert order(node, "cross", "buy", 100, 1) == (409, {"error": "post_only: order would cross"})
    assert status(node)["seq"] == seq  # not journaled
    ok_order(node, "passive", "buy", 95, 1)
    ok_order(node, "eth", "buy", 1000, 1, "ETH-USD")

    assert mode("cancel_only")[0] == 200  # all markets
    code, body = order(node, "new", "buy", 50, 1)
    assert code == 409 and "cancel_only" in body["error"]
    assert node.client("POST", "/markets/BTC-USD/orders/passive/cancel")[1]["status"] == "cancelled"

    assert mode("halted", ["ETH-USD"])[0] == 200
    assert order(node, "new2", "buy", 1, 1, "ETH-USD")[0] == 409
    code, body = node.client("POST", "/markets/ETH-USD/orders/eth/cancel")
    assert code == 409 and "halted" in body["error"]
    assert node.client("GET", "/markets/ETH-USD/book")[1]["mode"] == "halted"
    assert status(node)["market_modes"] == {"BTC-USD": "cancel_only", "ETH-USD": "halted"}

    assert mode("open")[0] == 200
    assert ok_order(node, "cross", "buy", 100, 1)["status"] == "filled"

    assert mode("sleepy")[0] == 400
    assert mode("open", [])[0] == 400
    assert node.admin("POST", "/v1/markets/mode", {"mode": "open", "markets": "BTC-USD"})[0] == 400
    code, body = mode("halted", ["BTC-USD", "DOGE-USD"])
    assert code == 404 and "DOGE-USD" in body["error"]
    assert status(node)["market_modes"] == {"BTC-USD": "open", "ETH-USD": "open"}

    code, metrics = node.admin("GET", "/metrics")
    assert code == 200
    assert 'exchange_market_mode{market="BTC-USD",mode="open"} 1' in metrics
    assert "exchange_ha_primary 1" in metrics
    assert "exchange_orders_total 5" in metrics
    assert f"exchange_last_applied_sequence {status(node)['seq']}" in metrics


def test_auth(matching_node: NodeFactory) -> None:
    node = matching_node()
    admin_routes = [("GET", "/v1/status", None), ("GET", "/metrics", None), ("GET", "/v1/sbom", None),
                    ("POST", "/v1/markets/mode", {"mode": "halted"}),
                    ("POST", "/v1/ha/step-down", {}), ("POST", "/v1/ha/promote", {}),
                    ("POST", "/v1/replication/append", {"term": 99, "seq": 0, "hash": "", "entries": []}),
                    ("GET", "/v1/replication/journal?from_seq=1", None)]
    for method, path, body in admin_routes:
        assert http(method, node.url + path, body)[0] == 401, path
        assert http(method, node.url + path, body, token="wrong")[0] == 401, path
    assert status(node)["ha_role"] == "primary"
    assert status(node)["market_modes"]["BTC-USD"] == "open"
    # The running release's SBOM, as shipped, and its digest in the status.
    shipped = (node.root / "current" / "sbom.cdx.json").read_bytes()
    code, sbom = node.admin("GET", "/v1/sbom")
    assert code == 200 and sbom == json.loads(shipped)
    assert sbom["metadata"]["component"]["version"] == status(node)["version"]
    assert status(node)["sbom_sha256"] == hashlib.sha256(shipped).hexdigest()
    # Client routes, health and readiness take no token.
    assert ok_order(node, "c1", "buy", 10, 1)["seq"] == 1
    assert node.client("GET", "/markets/BTC-USD/book")[0] == 200
    assert node.client("GET", "/markets/BTC-USD/orders")[0] == 200
    assert node.client("POST", "/markets/BTC-USD/orders/c1/cancel")[0] == 200
    assert node.client("GET", "/v1/health")[0] == 200
    assert node.client("GET", "/v1/ready?role=primary")[0] == 200


# --------------------------------------------------------------------------- HA


def test_standby_follows_failover_and_old_primary_rejoins(matching_pair: PairFactory) -> None:
    a, b = matching_pair()
    sb = status(b)
    assert (sb["ha_role"], sb["replication"]["state"], sb["ready"]) == ("standby", "following", True)
    assert b.client("POST", "/markets/BTC-USD/orders", {})[0] == 503
    assert b.client("GET", "/markets/BTC-USD/orders") == (503, {"error": "standby"})
    assert b.client("GET", "/v1/ready?role=primary")[0] == 503

    acks = feed(a, "f", 30)
    # Synchronous replication: once acknowledged, the standby has applied it too.
    assert same_state(a, b)
    assert status(b)["seq"] == 30

    a.kill()
    code, body = b.admin("POST", "/v1/ha/promote", {})
    assert code == 200 and body["ha_role"] == "primary" and body["seq"] == 30
    assert body["term"] > sb["term"]
    b.wait_ready(role="primary")
    assert coids(b) == {x["client_order_id"] for x in acks}  # every acknowledged order
    retry = order(b, "f-4", "buy", 1, 1, MARKETS[0])[1]  # a client retries against the new primary
    assert retry["replayed"] is True and retry["order_id"] == acks[4]["order_id"]
    feed(b, "g", 10)
    assert status(b)["replication"]["state"] == "degraded"

    a.start()  # the old primary comes back, sees a newer primary and follows it
    a.wait_ready()
    wait_for(lambda: same_state(a, b), "old primary caught up")
    sa = status(a)
    assert (sa["ha_role"], sa["term"], sa["seq"]) == ("standby", body["term"], 40)
    assert a.client("GET", "/v1/ready?role=primary")[0] == 503
    wait_for(lambda: status(b)["replication"]["state"] == "sync", "new primary in sync")
    ok_order(b, "h-1", "sell", 99, 4)
    assert same_state(a, b)


def test_standby_down_primary_degrades_then_standby_catches_up(matching_pair: PairFactory) -> None:
    a, b = matching_pair()
    feed(a, "p", 5)
    b.kill()
    t0 = time.monotonic()
    feed(a, "q", 40)
    assert time.monotonic() - t0 < 5  # no long per-order timeouts while degraded
    sa = status(a)
    assert sa["replication"]["state"] == "degraded" and sa["ready"] is True
    b.start()
    b.wait_ready()
    wait_for(lambda: same_state(a, b), "standby caught up")
    wait_for(lambda: status(a)["replication"]["state"] == "sync", "primary back in sync")
    assert status(a)["replication"]["peer_seq"] == 45
    ok_order(a, "r-1", "buy", 50, 1)
    assert same_state(a, b)


def test_switchover_step_down_promote_loses_nothing(matching_pair: PairFactory) -> None:
    a, b = matching_pair()
    feed(a, "s", 10)
    code, body = b.admin("POST", "/v1/ha/promote", {})
    assert code == 409 and body["error"] == "peer is still primary; step it down first"

    # Orders acknowledged while the standby was away (local durability only)...
    b.stop()
    acked = feed(a, "t", 10)
    code, down = a.admin("POST", "/v1/ha/step-down", {})
    assert code == 200 and down["ha_role"] == "standby" and down["seq"] == 20
    assert a.client("GET", "/markets/BTC-USD/book")[0] == 503
    assert order(a, "late", "buy", 1, 1)[0] == 503
    # ...are taken over by the standby when it is promoted.
    b.start()
    b.wait_up()
    code, up = b.admin("POST", "/v1/ha/promote", {})
    assert code == 200 and up["ha_role"] == "primary"
    assert (up["seq"], up["state_hash"]) == (down["seq"], down["state_hash"])
    assert up["term"] == down["term"] + 1
    assert {x["client_order_id"] for x in acked} <= coids(b)
    a.wait_ready()
    wait_for(lambda: status(b)["replication"]["state"] == "sync", "new primary in sync")
    ok_order(b, "u-1", "sell", 120, 2)
    assert same_state(a, b)
    assert status(a)["ha_role"] == "standby"


def test_divergent_tail_is_resynced(matching_pair: PairFactory) -> None:
    a, b = matching_pair()
    feed(a, "d", 8)
    b.kill()
    ok_order(a, "lost", "buy", 77, 1)  # acknowledged with local durability only, never replicated
    a.kill()
    b.start()
    b.wait_up()
    code, up = b.admin("POST", "/v1/ha/promote", {})
    assert code == 200 and up["seq"] == 8
    ok_order(b, "other", "sell", 500, 3)  # seq 9 again, a different entry
    a.start()
    a.wait_ready()
    wait_for(lambda: same_state(a, b), "diverged old primary resynced")
    assert status(a)["ha_role"] == "standby"
    assert "lost" not in coids(b)
    data = Path(a.config["data_dir"])
    kept = list(data.glob("journal.jsonl.replaced-*"))
    assert kept and b'"lost"' in kept[0].read_bytes()  # never delete data


def test_state_divergence_release(matching_pair: PairFactory, matching_node: NodeFactory) -> None:
    a, b = matching_pair(fault_b="state-divergence")
    assert status(b)["fault"] == "state-divergence"
    feed(a, "x", 30)
    sa, sb = status(a), status(b)
    assert sa["seq"] == sb["seq"] == 30
    assert sa["state_hash"] != sb["state_hash"]
    assert sb["ready"] is True  # it replays and serves normally; only its state is wrong

    # An independent unpatched node given the same orders reaches the primary's hash.
    other = matching_node("me-other")
    feed(other, "x", 30)
    assert status(other)["state_hash"] == sa["state_hash"]
    # And the faulty node's hash is reproducible: it replays to the same wrong state.
    b.kill()
    b.start()
    b.wait_ready()
    assert status(b)["state_hash"] == sb["state_hash"]


# --------------------------------------------------------------------------- state hash at a sequence


def state_hash_at(node: NodeProc, seq: int | str) -> tuple[int, Any]:
    return node.admin("GET", f"/v1/state/hash?seq={seq}")


def write_journal(path: Path, n: int) -> None:
    """A valid journal of ``n`` orders and cancels (chained hashes as the node writes them)."""
    prev = ""
    lines = []
    for i in range(n):
        side = "buy" if i % 3 else "sell"
        entry: dict[str, Any] = {"seq": i + 1, "term": 1, "ts": 0.0, "market": MARKETS[i % 2]}
        if i % 10 == 9:
            entry.update(type="cancel", client_order_id=f"j-{i - 6}")
        else:
            entry.update(type="order", client_order_id=f"j-{i}", side=side,
                         price=100 + (i * 7) % 23 - (3 if side == "buy" else 0), qty=3 + (i * 5) % 11)
        body = json.dumps({"prev": prev, "entry": entry}, sort_keys=True, separators=(",", ":"))
        entry["hash"] = prev = hashlib.sha256(body.encode()).hexdigest()
        lines.append(json.dumps(entry, sort_keys=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def test_state_hash_at_sequence(matching_pair: PairFactory) -> None:
    a, b = matching_pair(fault_b="state-divergence")
    seen: dict[int, str] = {}
    for i in range(24):
        side = "buy" if i % 3 else "sell"
        ok_order(a, f"h-{i}", side, 100 + (i * 7) % 5 - (2 if side == "buy" else 0), 3 + (i * 5) % 11,
                 MARKETS[i % 2])
        st = status(a)
        seen[st["seq"]] = st["state_hash"]
    faulty_live = status(b)
    assert faulty_live["seq"] == 24

    # Replayed hashes are the hashes the node had live at each sequence, asked in any order
    # (growing asks reuse the checkpoint, a lower one rebuilds it).
    for seq in [5, 9, 24, 3, 17, 17, 23, 1]:
        assert state_hash_at(a, seq) == (200, {"seq": seq, "state_hash": seen[seq]}), seq
    assert a.admin("GET", "/v1/state/hash") == (200, {"seq": 24, "state_hash": seen[24]})
    assert state_hash_at(a, 0)[1]["state_hash"] == state_hash_at(b, 0)[1]["state_hash"]

    # The state-divergence release replays with its own (buggy) code: it reports its own hash,
    # which differs from the unpatched primary's at the same sequence.
    code, body = state_hash_at(b, 24)
    assert code == 200 and body["state_hash"] == faulty_live["state_hash"] != seen[24]
    ok_order(a, "h-more", "sell", 99, 4)  # b moves on; seq 24 is now a replay on both
    assert state_hash_at(b, 24)[1]["state_hash"] == faulty_live["state_hash"]
    assert state_hash_at(a, 24)[1]["state_hash"] == seen[24]

    # Errors name the problem.
    code, body = state_hash_at(a, 99)
    assert code == 409 and "beyond this node's last applied seq 25" in body["error"] and body["seq"] == 25
    assert state_hash_at(a, -1)[0] == 400
    code, body = state_hash_at(a, "x")
    assert code == 400 and "integer" in body["error"]
    assert http("GET", a.url + "/v1/state/hash?seq=1")[0] == 401


def test_state_hash_replays_a_long_journal(matching_node: NodeFactory) -> None:
    node = matching_node(start=False)
    write_journal(Path(node.config["data_dir"]) / "journal.jsonl", 20_000)
    node.start()
    node.wait_ready(role="primary", timeout=60)
    live = status(node)
    assert live["seq"] == 20_000
    ok_order(node, "after", "buy", 1, 1)  # seq 20001: asking for 20000 is now a full replay
    code, body = state_hash_at(node, 20_000)
    assert (code, body) == (200, {"seq": 20_000, "state_hash": live["state_hash"]})
    first = state_hash_at(node, 15_000)[1]  # lower than the checkpoint: replayed from scratch
    assert state_hash_at(node, 7_000)[1]["state_hash"] != first["state_hash"]
    assert state_hash_at(node, 15_000)[1] == first  # from the 7000 checkpoint


# --------------------------------------------------------------------------- fencing


def fenced(token: int, scope: str = "shard-0", **body: Any) -> dict[str, Any]:
    return {**body, "fence": {"scope": scope, "token": token}}


def test_fencing_refuses_a_lower_token_and_remembers_across_a_restart(matching_node: NodeFactory) -> None:
    node = matching_node()
    node.wait_ready(role="primary")
    assert status(node)["fence"] == {}
    # no fence: an operator acting by hand is accepted, and no token is recorded
    assert node.admin("POST", "/v1/markets/mode", {"mode": "post_only"})[0] == 200
    assert status(node)["fence"] == {}

    assert node.admin("POST", "/v1/markets/mode", fenced(41, mode="open"))[0] == 200
    assert node.admin("POST", "/v1/markets/mode", fenced(42, mode="cancel_only"))[0] == 200
    assert node.admin("POST", "/v1/markets/mode", fenced(42, mode="open"))[0] == 200  # equal: the same run
    assert status(node)["fence"] == {"shard-0": 42}

    code, body = node.admin("POST", "/v1/markets/mode", fenced(41, mode="halted"))
    assert code == 409, body
    assert body["fence"] == {"scope": "shard-0", "token": 41, "highest": 42}
    assert "41" in body["error"] and "42" in body["error"] and "another run holds the lease" in body["error"]
    assert status(node)["market_modes"] == {"BTC-USD": "open", "ETH-USD": "open"}  # not applied

    # the highest token survives a crash, like the role file
    node.kill()
    node.start()
    node.wait_ready(role="primary")
    assert status(node)["fence"] == {"shard-0": 42}
    for path in ("/v1/ha/step-down", "/v1/ha/promote"):
        code, body = node.admin("POST", path, fenced(40))
        assert code == 409 and body["fence"]["highest"] == 42, (path, body)
    assert status(node)["ha_role"] == "primary"  # the refused step-down changed nothing
    code, body = node.admin("POST", "/v1/ha/step-down", fenced(43))
    assert code == 200 and body["ha_role"] == "standby"
    assert status(node)["fence"] == {"shard-0": 43}
    assert node.admin("POST", "/v1/ha/promote", fenced(43))[1]["ha_role"] == "primary"

    # a token for a shard this node does not serve, or a malformed fence, is a bad request
    code, body = node.admin("POST", "/v1/ha/step-down", fenced(99, scope="shard-1"))
    assert code == 400 and "shard-1" in body["error"] and "shard-0" in body["error"]
    for bad in ({"scope": "shard-0"}, {"scope": "shard-0", "token": "99"}, {"scope": "shard-0", "token": -1},
                {"scope": "shard-0", "token": True}, [], "shard-0=99"):
        assert node.admin("POST", "/v1/ha/step-down", {"fence": bad})[0] == 400, bad
    assert status(node)["fence"] == {"shard-0": 43} and status(node)["ha_role"] == "primary"
