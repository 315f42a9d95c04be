"""Pytest fixtures that start testbed nodes as processes (tests/testbed/nodes.py) and stop them.

The conftest.py of tests/testbed and of tests/integration import these, so both folders
share one definition. They live outside tests/conftest.py because that one is loaded by
ansible-test units too, which has no use for node processes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.testbed.nodes import NodeProc, make_node, next_address, status, wait_for

MATCHING = "matching-engine"
MARKETS = ["BTC-USD", "ETH-USD"]
REPLICATION_TOKEN = "test-replication-token"

NodeFactory = Callable[..., NodeProc]
PairFactory = Callable[..., tuple[NodeProc, NodeProc]]


@pytest.fixture
def nodes() -> Iterator[list[NodeProc]]:
    """Every node a test starts is added here and killed at teardown (its own process group, by pid)."""
    started: list[NodeProc] = []
    yield started
    failures = []
    for node in started:
        try:
            node.kill()
        except OSError as e:  # keep going: the other nodes must not outlive the test either
            failures.append(f"{node.config['name']}: {e!r}")
    assert not failures, f"could not kill: {'; '.join(failures)}"


@pytest.fixture
def matching_node(tmp_path: Path, nodes: list[NodeProc]) -> NodeFactory:
    """Make one matching-engine node of shard 0 (MARKETS) under tmp_path.

    ``matching_node(name="me-solo", start=True, **make_node_args)``: started and ready unless
    ``start=False``, in which case the test starts it.
    """

    def make(name: str = "me-solo", start: bool = True, **kw: Any) -> NodeProc:
        node = make_node(tmp_path, name, MATCHING, shard=0, markets=MARKETS, **kw)
        nodes.append(node)
        if start:
            node.start()
            node.wait_ready()
        return node

    return make


@pytest.fixture
def matching_pair(tmp_path: Path, nodes: list[NodeProc]) -> PairFactory:
    """Make a primary (me-a) and a standby (me-b) of shard 0, started, ready and replicating in sync.

    ``matching_pair(fault_a=None, fault_b=None)`` installs the named release fault on either node.
    """

    def make(fault_a: str | None = None, fault_b: str | None = None) -> tuple[NodeProc, NodeProc]:
        addr_a, addr_b = next_address(), next_address()
        common: dict[str, Any] = {"replication_token": REPLICATION_TOKEN, "shard": 0, "markets": MARKETS}
        a = make_node(tmp_path, "me-a", MATCHING, fault=fault_a, address=addr_a, initial_role="primary",
                      peer={"name": "me-b", "url": f"http://{addr_b}:8080"}, **common)
        b = make_node(tmp_path, "me-b", MATCHING, fault=fault_b, address=addr_b, initial_role="standby",
                      peer={"name": "me-a", "url": f"http://{addr_a}:8080"}, **common)
        nodes.extend([a, b])
        a.start()
        b.start()
        a.wait_ready(role="primary")
        b.wait_ready()
        wait_for(lambda: status(a)["replication"]["state"] == "sync", "primary in sync")
        return a, b

    return make
