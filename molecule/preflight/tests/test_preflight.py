# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""preflight: the shard lock is held by this run (owner, run id, patch, expiry), a second rollout
is refused while it is, and no node was touched."""

from __future__ import annotations

import datetime as dt
import json

from conftest import assert_data_intact, assert_serving, current_release, fleet_root, node_vars, releases_on_disk

testinfra_hosts = ["matching_nodes", "wallet_nodes"]


def lock_path() -> str:
    return str(fleet_root() / "locks" / "shard-0.lock")


def test_shard_lock_is_held_by_this_run(controller):
    lock = controller.file(lock_path())
    assert lock.is_file, f"{lock_path()} missing"
    record = json.loads(lock.content_string)
    assert (record["owner"], record["run_id"], record["patch"]) == (
        "molecule", "molecule-preflight", "matching-engine-1.4.3")
    assert dt.datetime.fromisoformat(record["expires_at"]) > dt.datetime.now(dt.UTC)
    assert controller.file(str(fleet_root() / "locks")).mode & 0o077 == 0


def test_no_chain_lock_for_a_matching_rollout(controller):
    locks = controller.file(str(fleet_root() / "locks")).listdir()
    assert [name for name in locks if name.endswith(".lock")] == ["shard-0.lock"]


def test_another_rollout_is_refused_while_the_lock_is_held(controller):
    args = json.dumps({"dir": str(fleet_root() / "locks"), "scopes": ["shard-0"], "owner": "bob",
                       "run_id": "another-run", "state": "acquired"})
    res = controller.run(f"ansible localhost -m exchangeops.patching.deploy_lock -a '{args}'")
    assert res.rc != 0, res.stdout
    assert "molecule" in res.stdout and "molecule-preflight" in res.stdout, res.stdout
    record = json.loads(controller.file(lock_path()).content_string)
    assert record["run_id"] == "molecule-preflight", "the refused run changed the lock"


def test_no_node_was_touched(host, seed):
    name = node_vars(host)["inventory_hostname"]
    baseline = seed["nodes"][name]["version"]
    assert current_release(host) == baseline
    assert releases_on_disk(host) == {baseline}
    assert not host.file(f"{node_vars(host)['exchange_node_root']}/releases/.incoming").exists
    assert assert_serving(host)["version"] == baseline
    assert_data_intact(host, seed)
