"""Wallet-signer node, run as real processes from a staged release."""

from __future__ import annotations

import http.client as http_client
import json
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.testbed.nodes import NodeProc, http, make_node, status, wait_for

DEPOSITS = {"BTC": 1_000_000, "ETH": 500_000}


@pytest.fixture
def spawn(tmp_path: Path, nodes: list[NodeProc]) -> Callable[..., NodeProc]:
    """Make a wallet-signer node under tmp_path; its chains are files shared by every node of the test."""

    def _spawn(name: str = "wallet-1", fault: str | None = None, start: bool = True, **extra: Any) -> NodeProc:
        config: dict[str, Any] = {
            "chains": ["BTC", "ETH"],
            "chain_dir": str(tmp_path / "chains"),
            "initial_deposits": dict(DEPOSITS),
            "signing_ms": 5,
        }
        config.update(extra)
        node = make_node(tmp_path, name, "wallet-signer", fault=fault, **config)
        nodes.append(node)
        if start:
            node.start()
            node.wait_ready()
        return node

    return _spawn


def chain_txs(node: NodeProc, chain: str) -> list[dict[str, Any]]:
    path = Path(node.config["chain_dir"]) / f"{chain}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def withdraw(node: NodeProc, cwid: str, amount: int = 10, chain: str = "BTC") -> tuple[int, Any]:
    return node.client(
        "POST",
        f"/chains/{chain}/withdrawals",
        {"client_withdrawal_id": cwid, "address": f"addr-{cwid}", "amount": amount},
    )


def reconcile(node: NodeProc) -> dict[str, Any]:
    code, body = node.admin("GET", "/v1/ledger/reconcile")
    assert code == 200, body
    return body


def assert_once_on_chain(node: NodeProc, chain: str, wids: list[str]) -> None:
    counts = Counter(tx["withdrawal_id"] for tx in chain_txs(node, chain))
    assert all(n == 1 for n in counts.values()), f"broadcast twice: {counts}"
    assert set(wids) <= set(counts), f"missing on chain: {set(wids) - set(counts)}"


def test_withdrawals_processed_exactly_once_and_balanced(spawn: Callable[..., NodeProc]) -> None:
    node = spawn()
    acks = {}
    for i in range(12):
        chain = "BTC" if i % 3 else "ETH"
        code, ack = withdraw(node, f"w{i}", amount=100 + i, chain=chain)
        assert code == 200, ack
        assert ack["status"] in ("queued", "signing", "processed")
        assert ack["chain"] == chain and ack["amount"] == 100 + i and ack["seq"] > 0
        acks[ack["withdrawal_id"]] = ack
    wait_for(lambda: status(node)["processed"] == 12, "12 processed")

    by_chain = {c: [w for w, a in acks.items() if a["chain"] == c] for c in ("BTC", "ETH")}
    for chain, wids in by_chain.items():
        assert_once_on_chain(node, chain, wids)
        for height, tx in enumerate(chain_txs(node, chain), start=1):
            assert tx["height"] == height
            assert tx["amount"] == acks[tx["withdrawal_id"]]["amount"]
            assert tx["client_withdrawal_id"] == acks[tx["withdrawal_id"]]["client_withdrawal_id"]

    rec = reconcile(node)
    assert rec["balanced"] is True, rec
    for chain in ("BTC", "ETH"):
        spent = sum(a["amount"] for a in acks.values() if a["chain"] == chain)
        c = rec["chains"][chain]
        assert c["deposits"] == DEPOSITS[chain]
        assert c["ledger_balance"] == c["expected_balance"] == DEPOSITS[chain] - spent
        assert c["processed_withdrawals"] == c["chain_txs"] == len(by_chain[chain])
        assert c["double_processed"] == []

    st = status(node)
    assert st["component"] == "wallet-signer" and st["ha_role"] == "active" and st["ready"] is True
    assert st["chains"] == ["BTC", "ETH"] and st["withdrawals"] == "running"
    assert (st["queued"], st["in_flight"], st["processed"]) == (0, 0, 12)
    assert st["chain_height"] == st["synced_height"] == {"BTC": 8, "ETH": 4}
    assert len(st["state_hash"]) == 64 and st["seq"] >= 2 + 12 * 3

    code, listing = node.client("GET", "/chains/BTC/withdrawals")
    assert code == 200 and listing["chain"] == "BTC"
    assert {w["withdrawal_id"] for w in listing["withdrawals"]} == set(by_chain["BTC"])
    assert all(w["status"] == "processed" for w in listing["withdrawals"])
    code, one = node.client("GET", "/chains/ETH/withdrawals/w0")
    assert code == 200 and one["status"] == "processed" and one["amount"] == 100
    assert node.client("GET", "/chains/BTC/withdrawals/w0")[0] == 404  # w0 is an ETH withdrawal

    code, metrics = node.admin("GET", "/metrics")
    assert code == 200
    assert "exchange_withdrawals_queued 0" in metrics
    assert "exchange_withdrawals_processed_total 12" in metrics
    assert "exchange_withdrawals_paused 0" in metrics
    assert node.client("GET", "/v1/ready?role=primary")[0] == 200

    # A restart replays the journal to the same state and does not broadcast anything again.
    before = status(node)["state_hash"]
    node.stop()
    node.start()
    node.wait_ready()
    assert status(node)["state_hash"] == before
    assert reconcile(node)["balanced"] is True
    assert len(chain_txs(node, "BTC")) == 8


def test_retry_of_client_withdrawal_id_is_idempotent(spawn: Callable[..., NodeProc]) -> None:
    node = spawn()
    code, first = withdraw(node, "dup-1", amount=50)
    assert code == 200 and "replayed" not in first
    code, again = withdraw(node, "dup-1", amount=50)
    assert code == 200 and again["replayed"] is True
    assert again["withdrawal_id"] == first["withdrawal_id"] and again["seq"] == first["seq"]
    wait_for(lambda: status(node)["processed"] == 1, "processed")
    # A retry after processing still returns the original, now processed, never a second withdrawal.
    code, late = withdraw(node, "dup-1", amount=50)
    assert code == 200 and late["replayed"] is True and late["status"] == "processed"
    node.kill()
    node.start()
    node.wait_ready()
    code, after_restart = withdraw(node, "dup-1", amount=50)
    assert code == 200 and after_restart["replayed"] is True
    assert after_restart["withdrawal_id"] == first["withdrawal_id"]
    time.sleep(0.1)
    st = status(node)
    assert st["processed"] == 1 and st["queued"] == 0
    assert len(chain_txs(node, "BTC")) == 1
    assert reconcile(node)["chains"]["BTC"]["ledger_balance"] == DEPOSITS["BTC"] - 50


def test_pause_queues_survives_restart_and_resume_processes_all(spawn: Callable[..., NodeProc]) -> None:
    node = spawn(signing_ms=150)
    for i in range(3):
        assert withdraw(node, f"p{i}")[0] == 200
    wait_for(lambda: status(node)["in_flight"] == 1, "a withdrawal in flight")
    code, paused = node.admin("POST", "/v1/withdrawals/pause")
    assert code == 200 and paused["withdrawals"] == "paused"
    assert paused["in_flight"] in (0, 1) and paused["queued"] >= 1
    # The in-flight withdrawal completes; nothing else is taken off the queue.
    st = wait_for(lambda: (s := status(node))["in_flight"] == 0 and s, "in_flight 0")
    done = st["processed"]
    assert 1 <= done <= 2 and st["queued"] == 3 - done
    for i in range(3, 7):
        code, ack = withdraw(node, f"p{i}")
        assert code == 200 and ack["status"] == "queued"
    time.sleep(0.4)
    st = status(node)
    assert st["withdrawals"] == "paused" and st["processed"] == done and st["queued"] == 7 - done
    assert "exchange_withdrawals_paused 1" in node.admin("GET", "/metrics")[1]
    # Pausing again is a no-op.
    assert node.admin("POST", "/v1/withdrawals/pause")[1]["withdrawals"] == "paused"

    node.kill()
    node.start()
    node.wait_ready()
    time.sleep(0.3)
    st = status(node)
    assert st["withdrawals"] == "paused", "pause must survive a restart"
    assert (st["processed"], st["queued"], st["in_flight"]) == (done, 7 - done, 0)
    assert len(chain_txs(node, "BTC")) == done

    code, resumed = node.admin("POST", "/v1/withdrawals/resume")
    assert code == 200 and resumed["withdrawals"] == "running"
    wait_for(lambda: status(node)["processed"] == 7, "all 7 processed")
    listing = node.client("GET", "/chains/BTC/withdrawals")[1]
    wids = [w["withdrawal_id"] for w in listing["withdrawals"]]
    assert len(wids) == 7
    assert_once_on_chain(node, "BTC", wids)
    assert len(chain_txs(node, "BTC")) == 7
    # Processed in request order.
    assert [tx["client_withdrawal_id"] for tx in chain_txs(node, "BTC")] == [f"p{i}" for i in range(7)]
    assert reconcile(node)["balanced"] is True


def test_sigkill_while_withdrawals_flow_loses_none_and_doubles_none(spawn: Callable[..., NodeProc]) -> None:
    node = spawn(signing_ms=8)
    acked: dict[str, str] = {}  # client_withdrawal_id -> withdrawal_id
    uncertain: list[str] = []
    refused: list[Any] = []

    def flow(prefix: str) -> None:
        for i in range(60):
            cwid = f"{prefix}{i}"
            try:
                code, ack = withdraw(node, cwid, amount=3, chain="BTC" if i % 2 else "ETH")
            except (OSError, http_client.HTTPException, ValueError):
                uncertain.append(cwid)  # the node died under us: we do not know whether it was journaled
                return
            if code != 200:
                refused.append((cwid, code, ack))
                return
            acked[cwid] = ack["withdrawal_id"]
            time.sleep(0.005)

    t = threading.Thread(target=flow, args=("a",))
    t.start()
    wait_for(lambda: status(node)["processed"] >= 8, "some processed")
    node.kill()
    t.join(timeout=10)
    assert not t.is_alive() and not refused, refused

    node.start()
    node.wait_ready()
    # The client retries what it could not confirm; the retry is idempotent.
    for cwid in uncertain:
        code, ack = withdraw(node, cwid, amount=3, chain="BTC" if int(cwid[1:]) % 2 else "ETH")
        assert code == 200
        acked[cwid] = ack["withdrawal_id"]
    total = len(acked)
    st = wait_for(lambda: (s := status(node))["queued"] + s["in_flight"] == 0 and s, "queue drained", timeout=30)
    assert st["processed"] == total, (st, uncertain)
    for chain in ("BTC", "ETH"):
        assert_once_on_chain(node, chain, [w for w in acked.values() if f":{chain}:" in w])
    assert sum(len(chain_txs(node, c)) for c in ("BTC", "ETH")) == total
    rec = reconcile(node)
    assert rec["balanced"] is True, rec


def test_recovery_settles_signing_withdrawals_against_the_chain(spawn: Callable[..., NodeProc], tmp_path: Path) -> None:
    """A crash between broadcast and 'processed' must not broadcast again; before broadcast, re-sign."""
    chains = tmp_path / "chains"
    chains.mkdir()
    broadcast = {
        "withdrawal_id": "wallet-1:BTC:1",
        "client_withdrawal_id": "a",
        "amount": 40,
        "address": "addr-a",
        "height": 1,
        "node": "wallet-1",
    }
    (chains / "BTC.jsonl").write_text(json.dumps(broadcast) + "\n")

    def journal(name: str, wid: str, cwid: str) -> list[dict[str, Any]]:
        return [
            {
                "seq": 1,
                "type": "request",
                "withdrawal_id": wid,
                "client_withdrawal_id": cwid,
                "chain": "BTC",
                "address": f"addr-{cwid}",
                "amount": 40,
            },
            {
                "seq": 2,
                "type": "request",
                "withdrawal_id": f"{name}:BTC:2",
                "client_withdrawal_id": cwid + "2",
                "chain": "BTC",
                "address": "addr-2",
                "amount": 5,
            },
            {"seq": 3, "type": "signing", "withdrawal_id": wid},
        ]

    nodes = {}
    for name, cwid in (("wallet-1", "a"), ("wallet-2", "b")):
        node = spawn(name, start=False)
        lines = journal(name, f"{name}:BTC:1", cwid)
        (node.root / "data" / "journal.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
        node.start()
        nodes[name] = node
    for node in nodes.values():
        node.wait_ready()
        wait_for(lambda n=node: status(n)["processed"] == 2, "recovered withdrawals processed")

    txs = chain_txs(nodes["wallet-1"], "BTC")
    counts = Counter(tx["withdrawal_id"] for tx in txs)
    assert counts == {"wallet-1:BTC:1": 1, "wallet-1:BTC:2": 1, "wallet-2:BTC:1": 1, "wallet-2:BTC:2": 1}
    assert [tx["height"] for tx in txs] == [1, 2, 3, 4]  # two nodes share the chain file
    for node in nodes.values():
        rec = reconcile(node)
        assert rec["balanced"] is True, rec
        assert rec["chains"]["BTC"]["ledger_balance"] == DEPOSITS["BTC"] - 45
        assert rec["chains"]["BTC"]["chain_txs"] == 2


def test_ledger_mismatch_release_reports_unbalanced(spawn: Callable[..., NodeProc]) -> None:
    node = spawn(fault="ledger-mismatch")
    assert status(node)["fault"] == "ledger-mismatch"
    assert reconcile(node)["balanced"] is True  # nothing processed yet
    assert withdraw(node, "m1", amount=25)[0] == 200
    wait_for(lambda: status(node)["processed"] == 1, "processed")
    rec = reconcile(node)
    assert rec["balanced"] is False
    btc = rec["chains"]["BTC"]
    assert btc["expected_balance"] == DEPOSITS["BTC"] - 25
    assert btc["ledger_balance"] != btc["expected_balance"]
    assert btc["double_processed"] == [] and btc["chain_txs"] == 1
    assert len(chain_txs(node, "BTC")) == 1  # only the ledger is wrong, the chain is not

    # The journal is correct; a good release's ledger code reconciles it again.
    node.stop()
    node.install("1.0.1")
    node.start()
    node.wait_ready()
    assert status(node)["fault"] is None
    assert reconcile(node)["balanced"] is True


def test_bad_input_is_rejected_and_nothing_is_queued(spawn: Callable[..., NodeProc]) -> None:
    node = spawn(initial_deposits={"BTC": 100})
    seq = status(node)["seq"]
    good = {"client_withdrawal_id": "x1", "address": "addr", "amount": 5}

    code, body = node.client("POST", "/chains/DOGE/withdrawals", good)
    assert code == 404 and body["error"] == "chain DOGE is not served by wallet-1; it serves BTC, ETH"
    assert node.client("GET", "/chains/DOGE/withdrawals")[0] == 404
    assert node.client("GET", "/chains/BTC/withdrawals/nope")[0] == 404

    bad_bodies = [
        ({**good, "amount": -5}, "amount"),
        ({**good, "amount": 0}, "amount"),
        ({**good, "amount": 1.5}, "amount"),
        ({**good, "amount": "5"}, "amount"),
        ({**good, "amount": True}, "amount"),
        ({"address": "addr", "amount": 5}, "client_withdrawal_id"),
        ({"client_withdrawal_id": "x1", "amount": 5}, "address"),
        ({"client_withdrawal_id": "x1", "address": "addr"}, "amount"),
        ({**good, "client_withdrawal_id": ""}, "client_withdrawal_id"),
        ({**good, "client_withdrawal_id": 7}, "client_withdrawal_id"),
        ({**good, "address": ""}, "address"),
    ]
    for body_in, field in bad_bodies:
        code, body = node.client("POST", "/chains/BTC/withdrawals", body_in)
        assert code == 400 and field in body["error"], (body_in, code, body)

    for raw in (b"{not json", b"[1, 2]"):
        req = urllib.request.Request(node.url + "/chains/BTC/withdrawals", data=raw, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                code, body = resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as e:
            code, body = e.code, json.loads(e.read())
        assert code == 400 and "JSON" in body["error"], (raw, body)

    # Not enough on the ledger: refused, not queued.
    code, body = node.client("POST", "/chains/BTC/withdrawals", {**good, "amount": 101})
    assert code == 409 and "insufficient" in body["error"]
    code, body = node.client("POST", "/chains/ETH/withdrawals", good)  # ETH has no deposits
    assert code == 409

    st = status(node)
    assert (st["seq"], st["queued"], st["in_flight"], st["processed"]) == (seq, 0, 0, 0)
    assert node.client("GET", "/chains/BTC/withdrawals")[1]["withdrawals"] == []
    assert chain_txs(node, "BTC") == []

    # Reservations count: two withdrawals of 60 cannot both be queued against a balance of 100.
    assert node.admin("POST", "/v1/withdrawals/pause")[0] == 200
    assert node.client("POST", "/chains/BTC/withdrawals", {**good, "amount": 60})[0] == 200
    assert (
        node.client("POST", "/chains/BTC/withdrawals", {**good, "client_withdrawal_id": "x2", "amount": 60})[0] == 409
    )


def test_admin_routes_need_the_token(spawn: Callable[..., NodeProc]) -> None:
    node = spawn()
    admin_routes = [
        ("GET", "/v1/status"),
        ("GET", "/metrics"),
        ("POST", "/v1/withdrawals/pause"),
        ("POST", "/v1/withdrawals/resume"),
        ("GET", "/v1/ledger/reconcile"),
    ]
    for method, path in admin_routes:
        code, body = http(method, node.url + path)
        assert code == 401, (path, body)
        assert http(method, node.url + path, token="wrong-token")[0] == 401
    assert status(node)["withdrawals"] == "running"  # the refused pause did nothing
    # Client and probe routes take no token.
    assert http("GET", node.url + "/v1/health")[0] == 200
    assert http("GET", node.url + "/v1/ready")[0] == 200
    assert http("GET", node.url + "/chains/BTC/withdrawals")[0] == 200


def test_fencing_on_pause_and_resume_per_chain_survives_a_restart(spawn: Callable[..., NodeProc]) -> None:
    node = spawn()

    def fence(**tokens: int) -> dict[str, Any]:
        return {"fence": [{"scope": f"chain-{c}", "token": t} for c, t in tokens.items()]}

    assert status(node)["fence"] == {}
    code, body = node.admin("POST", "/v1/withdrawals/pause", fence(BTC=7, ETH=7))
    assert code == 200 and body["withdrawals"] == "paused"
    assert status(node)["fence"] == {"chain-BTC": 7, "chain-ETH": 7}
    node.kill()
    node.start()
    node.wait_ready()
    assert status(node)["fence"] == {"chain-BTC": 7, "chain-ETH": 7}
    # one scope too low refuses the whole action
    code, body = node.admin("POST", "/v1/withdrawals/resume", fence(BTC=8, ETH=6))
    assert code == 409 and body["fence"] == {"scope": "chain-ETH", "token": 6, "highest": 7}, body
    assert status(node)["withdrawals"] == "paused"
    assert status(node)["fence"] == {"chain-BTC": 7, "chain-ETH": 7}
    code, body = node.admin("POST", "/v1/withdrawals/resume", {"fence": {"scope": "chain-BTC", "token": 7}})
    assert code == 200 and body["withdrawals"] == "running"
    code, body = node.admin("POST", "/v1/withdrawals/pause", fence(SOL=9))
    assert code == 400 and "chain-SOL" in body["error"] and "chain-BTC" in body["error"]
    # no fence: accepted (manual use)
    assert node.admin("POST", "/v1/withdrawals/pause")[1]["withdrawals"] == "paused"
    assert node.admin("POST", "/v1/withdrawals/resume")[1]["withdrawals"] == "running"
