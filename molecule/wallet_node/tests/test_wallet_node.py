# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""wallet_node: the wallet node runs 2.3.1 from `current`, withdrawals resumed and none in flight,
synced and reconciled, back in HAProxy, and no withdrawal lost or processed twice."""

from __future__ import annotations

import json

from conftest import (
    assert_data_intact,
    assert_serving,
    current_release,
    get_json,
    haproxy_servers,
    node_vars,
    releases_on_disk,
)

testinfra_hosts = ["wallet_nodes"]


def test_current_points_at_the_new_release_and_keeps_the_old(host):
    assert current_release(host) == "2.3.1"
    assert releases_on_disk(host) == {"2.3.0", "2.3.1"}


def test_node_runs_the_new_release_and_listens(host):
    assert assert_serving(host)["version"] == "2.3.1"


def test_withdrawals_resumed_synced_and_ready(host):
    status = get_json(host, "/v1/status")
    assert status["ready"] is True
    assert status["withdrawals"] == "running", "withdrawals were left paused"
    assert status["synced_height"] == status["chain_height"]


def test_ledger_reconciled_and_nothing_processed_twice(host):
    reconcile = get_json(host, "/v1/ledger/reconcile")
    assert reconcile["balanced"] is True, reconcile
    assert all(not chain["double_processed"] for chain in reconcile["chains"].values()), reconcile


def test_data_is_intact_and_every_seeded_withdrawal_is_kept(host, seed):
    assert_data_intact(host, seed)
    hv = node_vars(host)
    kept = {}
    for chain in hv["exchange_chains"]:
        url = f"{hv['exchange_admin_url']}/chains/{chain}/withdrawals"
        listed = json.loads(host.check_output(f"curl -fsS --max-time 5 {url}"))["withdrawals"]
        kept.update({w["client_withdrawal_id"]: w for w in listed})
    # create queued molecule-seed-<chain> on every chain before converge paused withdrawals
    for chain in hv["exchange_chains"]:
        assert kept[f"molecule-seed-{chain}"]["status"] == "processed", kept[f"molecule-seed-{chain}"]
    assert len(kept) >= seed["load"]["withdrawals"]["acked"] + len(hv["exchange_chains"])


def test_haproxy_serves_the_node_again(host, fleet_host):
    hv = node_vars(host)
    server = haproxy_servers(fleet_host("haproxy"))[f"{hv['exchange_haproxy_backend']}/{hv['inventory_hostname']}"]
    assert server["status"] == "UP", f"{hv['inventory_hostname']} is {server['status']} in HAProxy"
