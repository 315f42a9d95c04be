# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""rolling_patch.yml (converge) left the shard on 1.4.3, caught up, with the lock released and
HAProxy serving it from the new primary. test_2_rollback.py runs after this file."""

from __future__ import annotations

from conftest import (
    assert_data_intact,
    assert_serving,
    current_release,
    fleet_root,
    get_json,
    haproxy_servers,
    node_vars,
    releases_on_disk,
)

testinfra_hosts = ["matching_nodes"]


def shard_state(host, fleet_host, seed, version: str) -> None:
    assert current_release(host) == version
    assert releases_on_disk(host) == {"1.4.2", "1.4.3"}
    assert assert_serving(host)["version"] == version
    status = get_json(host, "/v1/status")
    assert status["ready"] is True
    name = node_vars(host)["inventory_hostname"]
    peer = get_json(fleet_host(next(h for h in node_vars(host)["groups"]["matching_nodes"] if h != name)),
                    "/v1/status")
    assert {status["ha_role"], peer["ha_role"]} == {"primary", "standby"}
    assert (status["seq"], status["state_hash"]) == (peer["seq"], peer["state_hash"])
    assert_data_intact(host, seed)
    server = haproxy_servers(fleet_host("haproxy"))[f"{node_vars(host)['exchange_haproxy_backend']}/{name}"]
    assert server["status"] == ("UP" if status["ha_role"] == "primary" else "DOWN"), server["status"]


def test_rollout_left_the_shard_on_the_new_release(host, fleet_host, seed):
    shard_state(host, fleet_host, seed, "1.4.3")


def test_rollout_released_its_lock(controller):
    locks = controller.file(str(fleet_root() / "locks"))
    assert not locks.exists or not [n for n in locks.listdir() if n.endswith(".lock")]
