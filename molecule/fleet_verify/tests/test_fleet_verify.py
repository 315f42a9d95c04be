# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""fleet_verify: read-only on a converged fleet, and it fails, naming the node, when a node runs
another version or does not answer (Knight Capital, 2012)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from conftest import assert_data_intact, assert_serving, current_release, node_vars, program, releases_on_disk

testinfra_hosts = ["matching_nodes", "wallet_nodes"]
CHECK = Path(__file__).resolve().parents[1] / "check_fleet.yml"


def check_fleet(controller, inventory: str, expect: dict[str, str]):
    extra = shlex.quote(json.dumps({"check_fleet_expect": expect}))
    res = controller.run(f"ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0 ansible-playbook -i {shlex.quote(inventory)} "
                         f"-e {extra} {shlex.quote(str(CHECK))}")
    # ansible-core prints the failed assertion's message on stderr
    return res.rc, " ".join((res.stdout + res.stderr).split())


@pytest.fixture()
def inventory(request) -> str:
    return request.config.option.ansible_inventory


def test_converge_left_every_node_as_it_was(host, seed):
    baseline = seed["nodes"][node_vars(host)["inventory_hostname"]]["version"]
    assert current_release(host) == baseline
    assert releases_on_disk(host) == {baseline}
    assert assert_serving(host)["version"] == baseline
    assert_data_intact(host, seed)


def test_a_wrong_version_fails_and_names_every_node(controller, inventory):
    rc, out = check_fleet(controller, inventory, {"matching-engine": "9.9.9"})
    assert rc != 0, out
    assert "has not converged on matching-engine 9.9.9" in out, out
    assert "match-0a runs another version" in out and "match-0b runs another version" in out, out


def test_a_node_that_does_not_answer_fails_the_check(fleet_host, controller, inventory):
    # one stopped node is enough; the wallet node has no HA peer to disturb
    name = "wallet-1"
    host = fleet_host(name)
    prog = program(host)
    conf = shlex.quote(node_vars(host)["exchange_supervisor_config"])
    ctl = shlex.quote(node_vars(host)["exchange_supervisorctl"])
    host.run_expect([0], f"{ctl} -c {conf} stop {shlex.quote(prog.name)}")
    try:
        rc, out = check_fleet(controller, inventory, {"matching-engine": "1.4.2"})
    finally:
        host.run_expect([0], f"{ctl} -c {conf} start {shlex.quote(prog.name)}")
    assert rc != 0, out
    assert f"{name} did not answer" in out, out
    # and the node is back: the rest of the scenario (destroy) finds the fleet as create left it
    assert program(host).is_running
