# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""matching_node: both nodes of the shard run 1.4.3 from `current`, the old primary handed over
and rejoined as a caught-up standby, HAProxy serves the shard again, no order was lost."""

from __future__ import annotations

import json

import pytest
from conftest import (
    assert_data_intact,
    assert_serving,
    current_release,
    get_json,
    haproxy_servers,
    node_vars,
    releases_on_disk,
)

testinfra_hosts = ["matching_nodes"]


def test_current_points_at_the_new_release_and_keeps_the_old(host):
    assert current_release(host) == "1.4.3"
    assert releases_on_disk(host) == {"1.4.2", "1.4.3"}


def test_node_runs_the_new_release_and_listens(host):
    assert assert_serving(host)["version"] == "1.4.3"
    assert get_json(host, "/v1/status")["ready"] is True


def test_roles_swapped_and_standby_caught_up(host, fleet_host, seed):
    name = node_vars(host)["inventory_hostname"]
    peer = next(h for h in node_vars(host)["groups"]["matching_nodes"] if h != name)
    me = get_json(host, "/v1/status")
    other = get_json(fleet_host(peer), "/v1/status")
    # the primary stepped down and its patched standby was promoted: the roles are swapped
    assert me["ha_role"] != seed["nodes"][name]["ha_role"]
    assert {me["ha_role"], other["ha_role"]} == {"primary", "standby"}
    assert (me["seq"], me["state_hash"]) == (other["seq"], other["state_hash"])


def test_data_is_intact(host, seed):
    assert_data_intact(host, seed)


@pytest.fixture()
def lb(fleet_host):
    return fleet_host("haproxy")


def test_haproxy_serves_the_shard_from_the_new_primary(host, lb):
    hv = node_vars(host)
    server = haproxy_servers(lb)[f"{hv['exchange_haproxy_backend']}/{hv['inventory_hostname']}"]
    assert server["status"] not in ("MAINT", "DRAIN"), f"{hv['inventory_hostname']} left {server['status']}"
    if get_json(host, "/v1/status")["ha_role"] == "primary":
        assert server["status"] == "UP"


def test_every_seeded_order_is_still_served(host, lb, seed):
    hv = node_vars(lb)
    markets = node_vars(host)["exchange_markets"]
    orders = [json.loads(lb.check_output(f"curl -fsS --max-time 5 {hv['exchange_frontend_url']}/markets/{m}/orders"))
              for m in markets]
    assert sum(len(o["orders"]) for o in orders) >= seed["load"]["orders"]["acked"]
