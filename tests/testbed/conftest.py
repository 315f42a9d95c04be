"""Node fixtures for the node-level tests (defined once, in tests/testbed/node_fixtures.py)."""

from tests.testbed.node_fixtures import matching_node, matching_pair, nodes  # noqa: F401 - fixtures
