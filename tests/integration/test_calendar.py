# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The market calendar through Ansible: freeze_window's plan estimate and RFC 5545 windows, and the per-batch check
(playbooks/tasks/calendar_batch_check.yml) stopping a run between batches. No fleet: localhost only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ENV = {
    **os.environ,
    "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
    "ANSIBLE_NOCOLOR": "1",
    "ANSIBLE_DEPRECATION_WARNINGS": "false",
    "ANSIBLE_LOCALHOST_WARNING": "false",
    "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
}
EXPIRIES = """\
windows:
  - name: weekly options expiry
    rrule: FREQ=WEEKLY;BYDAY=FR;BYHOUR=8;BYMINUTE=0
    before: 30m
    after: 15m
  - name: monthly futures expiry
    rrule: |
      RRULE:FREQ=MONTHLY;BYDAY=-1FR;BYHOUR=16;BYMINUTE=0
    before: 30m
"""


@pytest.fixture
def expiries(tmp_path: Path) -> str:
    path = tmp_path / "expiries.yml"
    path.write_text(EXPIRIES)
    return str(path)


def run_module(args: dict, *flags: str) -> tuple[str, dict]:
    """Run freeze_window on localhost; (status, result) with status SUCCESS or FAILED!."""
    proc = subprocess.run(
        [str(BIN / "ansible"), "localhost", "-m", "exchangeops.patching.freeze_window", "-a", json.dumps(args),
         *flags],
        capture_output=True, text=True, cwd=REPO, env={**ENV, "ANSIBLE_STDOUT_CALLBACK": "minimal"}, timeout=120,
        check=False,
    )
    head, sep, body = proc.stdout.partition(" => ")
    assert sep, f"no result in the output (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    result, _end = json.JSONDecoder().raw_decode(body.strip())
    return head.rsplit("|", 1)[1].strip(), result


# --- freeze_window: the estimate and rule windows ---------------------------------------------------------------


def test_plan_is_estimated_and_checked(expiries):
    status, res = run_module({"schedule": expiries, "start": "2026-11-27T06:00:00Z", "operator": "alice@ops-laptop",
                              "plan": {"standbys": 2, "primaries": 2, "canary_bake": 20}})
    assert status == "SUCCESS", res
    estimate = res["estimate"]
    assert [s["phase"] for s in estimate["steps"]] == ["canary", "canary_switchover", "standbys", "primaries"]
    assert estimate["seconds"] == 125 + 110 + 105 + 2 * 200
    assert res["rollout"] == {"start": "2026-11-27T06:00:00Z", "end": "2026-11-27T06:12:20Z", "duration": 740,
                              "estimated": "12 min 20 s"}
    assert estimate["plan"]["serial"] == [1, 2, "50%"]
    assert res["schedule"] == expiries


def test_plan_running_into_a_weekly_window_is_refused_with_the_next_start(expiries):
    status, res = run_module({"schedule": expiries, "start": "2026-11-27T07:20:00Z", "operator": "alice@ops-laptop",
                              "plan": {"standbys": 2, "primaries": 2}})
    assert status == "FAILED!"
    assert res["msg"].startswith("the rollout (07:20–07:32 UTC, estimated 12 min) overlaps 'weekly options expiry' "
                                 "07:30–08:15 UTC; start at or after 08:15 UTC")
    assert res["next_start"] == "2026-11-27T08:15:00Z"


def test_progress_estimates_only_the_work_left(expiries):
    status, res = run_module({"schedule": expiries, "start": "2026-11-27T07:20:00Z", "operator": "alice@ops-laptop",
                              "plan": {"standbys": 2, "primaries": 2}, "progress": {"phase": "primaries", "done": 1}})
    assert status == "SUCCESS", res
    assert res["estimate"]["seconds"] == 200
    assert res["estimate"]["progress"] == {"phase": "primaries", "done": 1}


def test_last_friday_window_and_emergency_override(expiries):
    args = {"schedule": expiries, "start": "2026-11-27T15:40:00Z", "duration": 600, "operator": "alice@ops-laptop"}
    status, res = run_module(args)
    assert status == "FAILED!"
    assert [o["name"] for o in res["overlaps"]] == ["monthly futures expiry"]
    status, res = run_module({**args, "start": "2026-11-20T15:40:00Z"})  # not the last Friday
    assert status == "SUCCESS"
    assert res["estimate"] is None
    status, res = run_module({**args, "emergency": True, "reason": "KEV-listed RCE", "approver": "bob@ops-desktop"})
    assert status == "SUCCESS"
    assert res["emergency_override"]["overlaps"][0]["at"] == "2026-11-27T16:00:00Z"


def test_bad_rule_names_the_window_and_the_fix(tmp_path):
    schedule = tmp_path / "freeze.yml"
    schedule.write_text("windows:\n  - name: expiry\n    rrule: FREQ=WEEKLY;BYDAY=FR;COUNT=4\n")
    status, res = run_module({"schedule": str(schedule), "duration": 60, "operator": "alice@ops-laptop"})
    assert status == "FAILED!"
    assert res["msg"].startswith(f"{schedule}: window 'expiry': rrule: COUNT would count from DTSTART")
    assert res["bad_input"] is True


@pytest.mark.parametrize(("args", "says"), [
    ({"plan": {"standbys": 1, "serial": ["half"]}}, "plan.serial: 'half' is not a batch size"),
    ({"plan": {"primaries": 2}, "progress": {"phase": "primaries", "done": 3}}, "progress.done: 3 nodes"),
    ({"plan": {"primaries": 2}, "duration": 60}, "parameters are mutually exclusive: duration|plan"),
    ({}, "one of the following is required: duration, plan"),
])
def test_bad_plans_are_bad_input(expiries, args, says):
    status, res = run_module({"schedule": expiries, "operator": "alice@ops-laptop", **args})
    assert status == "FAILED!"
    assert says in res["msg"]


# --- the check before every batch -------------------------------------------------------------------------------

BATCH_PLAYBOOK = """\
- name: Stand in for the preflight
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Record what the preflight would
      ansible.builtin.set_fact:
        rollout_operator: alice@ops-laptop
        preflight_calendar:
          schedule: {schedule}
          emergency_override: null
          estimate:
            plan: {{standbys: 0, primaries: 3, serial: [1, 2]}}
    - name: Queue three primaries
      ansible.builtin.add_host:
        name: "{{{{ item }}}}"
        groups: rollout_primaries
        ansible_connection: local
        ansible_python_interpreter: "{python}"
      loop: [n1, n2, n3]

- name: Patch the primaries
  hosts: rollout_primaries
  serial: [1, 2]
  gather_facts: false
  tasks:
    - name: Check the calendar before the batch
      ansible.builtin.include_tasks: {tasks}
      vars:
        # time passes between batches: the first starts at 06:00, the second at batch_two
        calendar_batch_start: "{{{{ '2026-11-27T06:00:00Z' if inventory_hostname == 'n1' else batch_two }}}}"
    - name: Patch the node
      ansible.builtin.debug:
        msg: "patched {{{{ inventory_hostname }}}}"
"""


def run_batches(tmp_path: Path, expiries: str, *extra: str) -> subprocess.CompletedProcess:
    book = tmp_path / "batches.yml"
    book.write_text(BATCH_PLAYBOOK.format(schedule=expiries, python=sys.executable,
                                          tasks=REPO / "playbooks" / "tasks" / "calendar_batch_check.yml"))
    return subprocess.run([str(BIN / "ansible-playbook"), str(book), *extra], capture_output=True, text=True, cwd=REPO,
                          env=ENV, timeout=180, check=False)


def test_a_batch_that_would_enter_a_window_stops_the_run_between_batches(tmp_path, expiries):
    # the two nodes left (one batch: 200 s) from 07:28 would reach into the 07:30 averaging window
    proc = run_batches(tmp_path, expiries, "-e", "batch_two=2026-11-27T07:28:00Z")
    out = proc.stdout
    assert proc.returncode == 2, out + proc.stderr
    assert "patched n1" in out
    assert "patched n2" not in out and "patched n3" not in out
    assert (
        "market calendar: stopped before n2, n3 (primaries): the work left, estimated 3 min 20 s from "
        "2026-11-27T07:28:00Z to 2026-11-27T07:31:20Z, would enter the freeze window 'weekly options expiry' "
        "(2026-11-27T07:30:00Z to 2026-11-27T08:15:00Z); the fleet is converged: every node patched so far passed "
        "its gates and no node of this batch was touched; rerun the same rollout at or after 2026-11-27T08:15:00Z to "
        "finish it, or take the emergency path (preflight_emergency=true with a reason and a second approver)"
    ) in out


def test_batches_clear_of_windows_all_run(tmp_path, expiries):
    proc = run_batches(tmp_path, expiries, "-e", "batch_two=2026-11-27T07:20:00Z")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert all(f"patched {n}" in proc.stdout for n in ("n1", "n2", "n3"))


def test_the_emergency_path_still_enters_the_window(tmp_path, expiries):
    proc = run_batches(tmp_path, expiries, "-e", "batch_two=2026-11-27T07:28:00Z", "-e", "preflight_emergency=true",
                       "-e", "preflight_reason=KEV-listed RCE in the gateway",
                       "-e", "preflight_approver=bob@ops-desktop")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "patched n3" in proc.stdout


def test_the_emergency_path_still_needs_a_second_approver(tmp_path, expiries):
    proc = run_batches(tmp_path, expiries, "-e", "batch_two=2026-11-27T07:28:00Z", "-e", "preflight_emergency=true",
                       "-e", "preflight_reason=KEV-listed RCE in the gateway")
    assert proc.returncode == 2
    assert "an emergency override needs a second approver different from the operator" in proc.stdout
    assert "patched n2" not in proc.stdout
