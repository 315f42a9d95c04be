"""Node fixtures for the node-level tests (defined once, in tests/testbed/node_fixtures.py)."""

from tests.testbed.node_fixtures import matching_node, matching_pair, nodes

# pytest finds fixtures by name in a conftest; __all__ says they are exported on purpose
__all__ = ["matching_node", "matching_pair", "nodes"]
