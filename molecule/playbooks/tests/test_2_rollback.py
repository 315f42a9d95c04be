# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""rollback.yml, run once here after test_1_rollout.py checked the rollout, puts the shard back on
1.4.2 with the same switchover rules and gates; 1.4.3 stays on disk."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import testinfra
from test_1_rollout import shard_state

testinfra_hosts = ["matching_nodes"]
PLAYBOOKS = Path(__file__).resolve().parents[3] / "playbooks"


@pytest.fixture(scope="module")
def rollback(request):
    inventory = shlex.quote(request.config.option.ansible_inventory)
    res = testinfra.get_host("local://").run(
        f"ANSIBLE_NOCOLOR=1 ansible-playbook -i {inventory} -e component=matching-engine "
        f"-e rolling_baseline_sample=1 -e matching_node_traffic_bake=1 {shlex.quote(str(PLAYBOOKS / 'rollback.yml'))}")
    return res.rc, " ".join((res.stdout + res.stderr).split())


def test_rollback_puts_the_shard_back_on_the_previous_release(host, fleet_host, seed, rollback):
    rc, out = rollback
    assert rc == 0, out[-3000:]
    shard_state(host, fleet_host, seed, "1.4.2")
