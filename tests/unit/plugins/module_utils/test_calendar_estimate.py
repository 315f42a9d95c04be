# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The rollout's duration from its real plan: batches, bakes, gate and switchover timeouts, per-node restart."""

from __future__ import annotations

import pytest
from ansible_collections.exchangeops.patching.plugins.module_utils._estimate import (
    Plan,
    PlanError,
    batch_sizes,
    estimate_run,
    make_plan,
    parse_serial,
)

# defaults: restart 45 + gate 60 = 105 per node; switchover 30 + traffic gate 60 = 90; canary bake 10;
# traffic bake 5; in-flight 30
NODE = 105
SWITCH = 90


def phases(estimate) -> dict[str, tuple[tuple[int, ...], int]]:
    return {s.phase: (s.batches, s.seconds) for s in estimate.steps}


@pytest.mark.parametrize(("count", "serial", "sizes"), [
    (4, (1, 2, "50%"), [1, 2, 1]),
    (10, (1, 2, "50%"), [1, 2, 5, 2]),
    (3, (1, 2, "50%"), [1, 2]),
    (1, ("50%",), [1]),
    (5, (2,), [2, 2, 1]),
    (3, ("30%",), [1, 1, 1]),  # int(0.9) is 0: Ansible takes at least one host
    (0, (1,), []),
])
def test_batch_sizes_split_hosts_as_ansible_serial_does(count, serial, sizes):
    assert batch_sizes(count, serial) == sizes


def test_whole_matching_run_is_canary_switchover_standbys_then_primaries():
    estimate = estimate_run(Plan(standbys=4, primaries=4))
    assert phases(estimate) == {
        "canary": ((1,), NODE + 10),
        "canary_switchover": ((), SWITCH + 10),
        "standbys": ((2, 1), 2 * NODE),  # the other 3 standbys by serial[1:] = [2, "50%"]
        "primaries": ((1, 2, 1), 3 * (SWITCH + 5 + NODE)),
    }
    assert estimate.seconds == 115 + 100 + 210 + 600
    assert estimate.nodes == 8
    assert estimate.as_dict()["steps"][3]["formula"] == (
        "3 batches × (switchover up to 30 s + traffic gate up to 60 s + traffic bake 5 s + restart 45 s + gate up to "
        "60 s + bake 0 s)")


def test_wallets_go_one_at_a_time_the_first_with_the_canary_bake():
    estimate = estimate_run(Plan(wallets=3, bake=4))
    assert phases(estimate) == {"wallets": ((1, 1, 1), 3 * (30 + NODE) + 10 + 2 * 4)}


def test_bakes_and_timeouts_count():
    base = estimate_run(Plan(standbys=2, primaries=2)).seconds
    assert estimate_run(Plan(standbys=2, primaries=2, canary_bake=70)).seconds == base + 2 * 60
    # bake: the other standby (1 batch) and the primaries (2 batches)
    assert estimate_run(Plan(standbys=2, primaries=2, bake=7)).seconds == base + 3 * 7
    # gate timeout: every node gate and traffic gate (canary, its switchover, standby, 2 × (switchover + node))
    assert estimate_run(Plan(standbys=2, primaries=2, gate_timeout=120)).seconds == base + 60 * 7
    assert estimate_run(Plan(standbys=2, primaries=2, seconds_per_node=100)).seconds == base + 55 * 4


def test_larger_batches_take_fewer_steps():
    one_by_one = estimate_run(Plan(standbys=9, primaries=8, serial=(1,)))
    growing = estimate_run(Plan(standbys=9, primaries=8))
    assert phases(one_by_one)["primaries"][0] == (1,) * 8
    # the canary shard's old primary goes with the standbys (the playbook's split; as long as the other one)
    assert phases(growing)["primaries"][0] == (1, 2, 3, 1)
    assert growing.seconds < one_by_one.seconds


def test_without_a_pending_primary_there_is_no_switchover():
    assert list(phases(estimate_run(Plan(standbys=1)))) == ["canary"]


@pytest.mark.parametrize(("phase", "done", "left"), [
    ("canary", 0, ["canary", "canary_switchover", "standbys", "primaries"]),
    ("canary_switchover", 0, ["canary_switchover", "standbys", "primaries"]),
    ("standbys", 0, ["standbys", "primaries"]),
    ("standbys", 2, ["standbys", "primaries"]),
    ("primaries", 0, ["primaries"]),
    ("primaries", 3, ["primaries"]),
])
def test_progress_leaves_the_work_from_the_batch_about_to_start(phase, done, left):
    assert list(phases(estimate_run(Plan(standbys=4, primaries=4), phase, done))) == left


def test_progress_skips_the_batches_already_done():
    plan = Plan(standbys=1, primaries=4)
    assert phases(estimate_run(plan, "primaries", 1))["primaries"] == ((2, 1), 2 * (SWITCH + 5 + NODE))
    assert phases(estimate_run(plan, "primaries", 3))["primaries"] == ((1,), SWITCH + 5 + NODE)
    # a batch only partly done counts whole: the check errs on the long side
    assert phases(estimate_run(plan, "primaries", 2))["primaries"][0] == (2, 1)
    assert estimate_run(plan, "primaries", 4).steps == ()


def test_later_wallets_have_no_canary_bake():
    plan = Plan(wallets=3)
    assert phases(estimate_run(plan, "wallets", 0))["wallets"] == ((1, 1, 1), 3 * (30 + NODE) + 10)
    assert phases(estimate_run(plan, "wallets", 1))["wallets"] == ((1, 1), 2 * (30 + NODE))


def test_nothing_left_is_zero():
    assert estimate_run(Plan()).seconds == 0
    assert estimate_run(Plan()).as_dict() == {
        "seconds": 0, "nodes": 0, "progress": {"phase": "canary", "done": 0}, "steps": [],
        "plan": {**Plan().as_dict(), "serial": [1, 2, "50%"]}}


def test_make_plan_reads_option_values():
    plan = make_plan(standbys=2, primaries=None, serial=["1", 3, "25%"], canary_bake=20)
    assert plan == Plan(standbys=2, serial=(1, 3, "25%"), canary_bake=20)


@pytest.mark.parametrize(("values", "says"), [
    ({"standbys": -1}, "plan.standbys: must be a whole number of zero or more (got -1)"),
    ({"bake": True}, "plan.bake: must be a whole number"),
    ({"serial": []}, "plan.serial: is empty"),
    ({"serial": [0]}, "plan.serial: 0 is not a batch size"),
    ({"serial": ["150%"]}, "plan.serial: '150%' is not a batch size"),
    ({"serial": ["half"]}, "plan.serial: 'half' is not a batch size"),
    ({"shards": 2}, "plan: unknown field shards"),
])
def test_bad_plans_name_the_field_and_the_fix(values, says):
    with pytest.raises(PlanError) as err:
        make_plan(**values)
    assert str(err.value).startswith(says)


@pytest.mark.parametrize(("phase", "done", "says"), [
    ("rollback", 0, "progress.phase: 'rollback' is not a phase"),
    ("primaries", 5, "progress.done: 5 nodes of the primaries phase are done but it has 4"),
    ("canary", 1, "progress.done: 1 nodes of the canary phase are done"),
    ("wallets", -1, "plan.progress.done: must be a whole number"),
])
def test_bad_progress_is_refused(phase, done, says):
    with pytest.raises(PlanError) as err:
        estimate_run(Plan(standbys=4, primaries=4), phase, done)
    assert str(err.value).startswith(says)


def test_parse_serial_takes_a_single_size():
    assert parse_serial(3) == (3,)


def test_the_canary_shards_old_primary_is_budgeted_with_the_standbys_or_the_primaries_whichever_is_longer():
    # rolling_patch.yml patches the canary shard's old primary (a standby once the canary took over) in the
    # standbys phase; the plan's counts cannot say whether that primary is pending, so both ways are budgeted
    # and the longer one counts
    plan = Plan(standbys=3, primaries=3)
    est = estimate_run(plan)
    # standbys phase: 2 others + the old primary = [2, 1]; primaries: 2 = [1, 1]
    assert phases(est)["standbys"][0] == (2, 1) and phases(est)["primaries"][0] == (1, 1)
    # two primaries (with the canary's old primary among them) would be one standby batch fewer: shorter
    assert phases(estimate_run(Plan(standbys=2, primaries=2)))["primaries"][0] == (1, 1)
    # the standbys phase may now count one more node than the other standbys
    assert estimate_run(plan, "standbys", 3).steps[0].phase == "primaries"
    with pytest.raises(PlanError, match="4 nodes of the standbys phase are done but it has 3"):
        estimate_run(plan, "standbys", 4)
