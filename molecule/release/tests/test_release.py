# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The release role: unpacked beside the running release, `current` switched atomically (or not,
for state=present), the previous release kept, data untouched, the running service untouched."""

from __future__ import annotations

from conftest import assert_data_intact, assert_serving, current_release, node_vars, releases_on_disk

testinfra_hosts = ["matching_nodes", "wallet_nodes"]


def test_current_points_at_the_expected_release(host):
    expected = "1.4.3" if node_vars(host)["exchange_component"] == "matching-engine" else "2.3.0"
    assert current_release(host) == expected


def test_new_release_unpacked_beside_the_previous_one(host):
    on_disk = releases_on_disk(host)
    if node_vars(host)["exchange_component"] == "matching-engine":
        assert on_disk == {"1.4.2", "1.4.3"}
    else:
        assert on_disk == {"2.3.0", "2.3.1"}


def test_switch_does_not_restart_the_service(host, seed):
    # The role only switches the link: the restart is the caller's (matching_node / wallet_node).
    health = assert_serving(host)
    assert health["version"] == seed["nodes"][node_vars(host)["inventory_hostname"]]["version"]


def test_data_outside_the_release_is_intact(host, seed):
    assert_data_intact(host, seed)
