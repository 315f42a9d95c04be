"""The shared release faults really misbehave as named, on both components.

(state-divergence and ledger-mismatch are component-specific and tested with their
components: test_matching_node.py and test_wallet_node.py.)
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from tests.testbed.nodes import NodeProc, http, make_node

COMPONENTS = {
    "matching-engine": {"shard": 0, "markets": ["BTC-USD"], "initial_role": "primary",
                        "peer": {"name": "absent", "url": "http://127.0.0.1:9"},
                        "replication_token": "rt"},
    "wallet-signer": {"chains": ["BTC"], "initial_deposits": {"BTC": 1000}, "signing_ms": 1},
}


def _node(tmp_path: Path, nodes: list[NodeProc], component: str, fault: str | None,
          params: dict[str, float] | None = None) -> NodeProc:
    extra: dict[str, Any] = dict(COMPONENTS[component])
    if component == "wallet-signer":
        extra["chain_dir"] = str(tmp_path / "chains")
    node = make_node(tmp_path, f"{component}-{fault or 'good'}", component, fault=fault, fault_params=params,
                     **extra)
    nodes.append(node.start())
    node.wait_up()
    return node


def _client_request(node: NodeProc, n: int) -> tuple[int, Any]:
    if node.config["component"] == "matching-engine":
        return node.client("POST", "/markets/BTC-USD/orders",
                           {"client_order_id": f"c{n}", "side": "buy", "price": 100, "qty": 1})
    return node.client("POST", "/chains/BTC/withdrawals",
                       {"client_withdrawal_id": f"w{n}", "address": "a", "amount": 1})


def _slow_client_requests(node: NodeProc) -> int:
    """Client requests the node itself measured at over 100 ms (from its /metrics histogram)."""
    text = node.admin("GET", "/metrics")[1]
    le_01 = re.search(r'exchange_request_duration_seconds_bucket\{kind="client",le="0.1"\} (\d+)', text)
    total = re.search(r'exchange_request_duration_seconds_count\{kind="client"\} (\d+)', text)
    assert le_01 and total, text
    return int(total.group(1)) - int(le_01.group(1))


@pytest.mark.parametrize("component", sorted(COMPONENTS))
def test_crash_release_exits_on_its_own(tmp_path, nodes, component):
    node = _node(tmp_path, nodes, component, "crash", {"crash_after_s": 0.5})
    assert node.proc is not None
    assert node.proc.wait(timeout=15) == 70
    assert "release fault: crash" in node.log.read_text()


@pytest.mark.parametrize("component", sorted(COMPONENTS))
def test_never_ready_release_is_alive_but_never_ready(tmp_path, nodes, component):
    good = _node(tmp_path, nodes, component, None)
    good.wait_ready()
    bad = _node(tmp_path, nodes, component, "never-ready")
    assert http("GET", bad.url + "/v1/health")[0] == 200
    with pytest.raises(AssertionError, match="not ready"):
        bad.wait_ready(timeout=3)
    code, body = http("GET", bad.url + "/v1/ready")
    assert code == 503 and body["reason"] == "release fault: never-ready"
    assert bad.admin("GET", "/v1/status")[1]["ready"] is False


@pytest.mark.parametrize("component", sorted(COMPONENTS))
def test_slow_start_release_gets_ready_only_after_its_delay(tmp_path, nodes, component):
    node = _node(tmp_path, nodes, component, "slow-start", {"delay_s": 3.0})
    code, body = http("GET", node.url + "/v1/ready")
    assert code == 503 and body["reason"] == "starting"
    node.wait_ready(timeout=20)
    status = node.admin("GET", "/v1/status")[1]
    assert status["ready"] is True
    assert time.time() - status["started_at"] >= 3.0


@pytest.mark.parametrize("component", sorted(COMPONENTS))
def test_latency_release_slows_every_client_request(tmp_path, nodes, component):
    good = _node(tmp_path, nodes, component, None)
    slow = _node(tmp_path, nodes, component, "latency", {"latency_ms": 150})
    good.wait_ready()
    slow.wait_ready()
    for i in range(10):
        assert _client_request(good, i)[0] == 200
        assert _client_request(slow, i)[0] == 200
    assert _slow_client_requests(slow) == 10
    assert _slow_client_requests(good) <= 2  # a loaded CI machine may stall one now and then
