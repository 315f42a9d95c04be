#!/usr/bin/python
# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: freeze_window
short_description: Refuse a rollout that would overlap a market freeze window
version_added: 0.1.0
description:
  - Reads the market calendar O(schedule) (funding timestamps, expiry and settlement, with their
    averaging windows before and after) and checks whether the rollout from O(start) overlaps
    any window occurrence. Recurring windows (daily, or RFC 5545 rules for weekly and monthly
    expiries) are expanded over the rollout only.
  - How long the rollout takes is either given as O(duration) seconds, or estimated from its real
    O(plan) (nodes by role, batches, bakes, gate and switchover timeouts, per-node restart) and
    returned as RV(estimate) with its breakdown. With O(progress), only the work left from the
    batch about to start is estimated, so the calendar can be checked again before every batch.
  - A rollout that overlaps nothing returns RV(allowed=true). One that overlaps a window fails,
    naming the rollout, every window it overlaps, and RV(next_start), the earliest start at which
    a rollout of the same duration overlaps nothing (searched up to 7 days ahead).
  - An emergency override (O(emergency=true)) lets an overlapping rollout go ahead; it needs a
    O(reason) and a second O(approver) other than the O(operator), and returns
    RV(emergency_override) for the audit record.
  - A bad schedule (missing file, bad YAML, unknown keys, bad time, duration or rule, negative margin)
    fails naming the file, the window and the fix.
  - Read-only; runs on the controller (run it on C(localhost) or delegate it there).
requirements:
  - python-dateutil (for windows with an C(rrule))
author:
  - exchangeops engineering (@exchangeops)
attributes:
  check_mode:
    description: Can run in check mode and return the decision.
    support: full
    details: Read-only; it runs the same in check mode.
  diff_mode:
    description: Will return details on what has changed.
    support: none
options:
  schedule:
    description:
      - YAML file of freeze windows, C({windows:[...]}). Each window has C(name), and either C(at)
        (UTC times of day C("HH:MM") with C(recurring=daily), or full ISO 8601 date-times with a zone
        for one-off windows) or C(rrule) (an RFC 5545 rule in UTC such as
        C(FREQ=MONTHLY;BYDAY=-1FR;BYHOUR=8;BYMINUTE=0), optionally after a line
        C(DTSTART:20260102T080000Z)), and optionally C(before) and C(after) margins as durations like
        C(90s), C(15m), C(2h) or C(1h30m). See C(testbed/freeze-windows.yml) and C(docs/calendar.md).
    type: path
    required: true
  start:
    description:
      - When the rollout starts, ISO 8601 (for example C(2026-11-24T10:00:00Z); a time without a zone
        is UTC). Defaults to now.
    type: str
  duration:
    description:
      - Estimated duration of the rollout in seconds, when the caller computed it.
      - Exactly one of O(duration) and O(plan) is required.
    type: int
  plan:
    description:
      - The rollout's plan, to estimate its duration as C(playbooks/rolling_patch.yml) runs it, that is the
        canary (the first standby) and the switchover of its shard, the other standbys in batches of
        O(plan.serial) without its first size (with the canary shard's old primary, a standby once the
        canary took over), the other primaries in batches of O(plan.serial) each after a switchover,
        the wallet nodes one at a time. The counts do not say whether the canary shard's primary is
        pending, so both splits are estimated and the longer counts. Every gate counts at its timeout, so the
        estimate is the longest a run whose gates pass takes.
      - Exactly one of O(duration) and O(plan) is required.
    type: dict
    suboptions:
      standbys:
        description: Matching standbys to patch, the canary included.
        type: int
        default: 0
      primaries:
        description: Matching primaries to patch.
        type: int
        default: 0
      wallets:
        description: Wallet nodes to patch.
        type: int
        default: 0
      serial:
        description: Batch sizes or percentages, as the playbook's C(rolling_serial).
        type: list
        elements: raw
        default: [1, 2, "50%"]
      canary_bake:
        description: Seconds the canary (and the first wallet node) bakes, C(rolling_canary_bake).
        type: int
        default: 10
      bake:
        description: Seconds every other node bakes, C(rolling_bake).
        type: int
        default: 0
      traffic_bake:
        description: Seconds a promoted standby is gated under client traffic.
        type: int
        default: 5
      gate_timeout:
        description: Seconds a health gate may take to pass (the health_gate module's C(timeout)).
        type: int
        default: 60
      switchover_timeout:
        description: Seconds a promoted standby may take to serve as a ready primary.
        type: int
        default: 30
      in_flight_timeout:
        description: Seconds in-flight signing may take to finish once a wallet node's withdrawals are paused.
        type: int
        default: 30
      seconds_per_node:
        description: Restart estimate of one node (drain, install, switch, restart) before its gate starts.
        type: int
        default: 45
  progress:
    description:
      - Where the run is, to estimate only the work left from the batch about to start (with O(plan)).
    type: dict
    suboptions:
      phase:
        description:
          - The phase whose batch is about to start; the phases before it are done.
        type: str
        choices: [canary, canary_switchover, standbys, primaries, wallets]
        default: canary
      done:
        description: Nodes of that phase patched by its earlier batches.
        type: int
        default: 0
  emergency:
    description:
      - Let the rollout overlap freeze windows. Needs O(reason) and O(approver); the override is
        returned in RV(emergency_override) so the playbook can record it.
    type: bool
    default: false
  reason:
    description: Why the emergency cannot wait, for the audit trail. Required when O(emergency=true).
    type: str
  approver:
    description:
      - The second person who approved the emergency override; must differ from O(operator)
        (compared case-insensitively). Required when O(emergency=true).
    type: str
  operator:
    description: The person running the rollout, for example C(alice@ops-laptop).
    type: str
    required: true
"""

EXAMPLES = r"""
- name: Check the market calendar before the rollout
  exchangeops.patching.freeze_window:
    schedule: /etc/exchpatch/freeze-windows.yml
    duration: 2520
    operator: alice@ops-laptop
  delegate_to: localhost
  run_once: true

- name: Check a planned start
  exchangeops.patching.freeze_window:
    schedule: testbed/freeze-windows.yml
    start: "2026-11-24T15:30:00Z"
    duration: 1800
    operator: alice@ops-laptop
  delegate_to: localhost
  run_once: true
  register: calendar
  failed_when: false

- name: Check the calendar for the whole run, estimated from its plan
  exchangeops.patching.freeze_window:
    schedule: /etc/exchpatch/freeze-windows.yml
    plan:
      standbys: 4
      primaries: 4
      serial: [1, 2, "50%"]
      canary_bake: 20
    operator: alice@ops-laptop
  delegate_to: localhost
  run_once: true

- name: Check it again before the second batch of primaries, for the work left
  exchangeops.patching.freeze_window:
    schedule: /etc/exchpatch/freeze-windows.yml
    plan:
      standbys: 4
      primaries: 4
    progress:
      phase: primaries
      done: 1
    operator: alice@ops-laptop
  delegate_to: localhost
  run_once: true

- name: Show when it could start
  ansible.builtin.debug:
    msg: "Earliest free start: {{ calendar.next_start }}"

- name: Patch an actively exploited hole during a freeze, with a second approver
  exchangeops.patching.freeze_window:
    schedule: /etc/exchpatch/freeze-windows.yml
    duration: 2520
    operator: alice@ops-laptop
    emergency: true
    reason: CVE-2026-31337 is exploited in the wild (KEV) against our order gateway
    approver: bob@ops-desktop
  delegate_to: localhost
  run_once: true
  register: freeze
"""

RETURN = r"""
allowed:
  description: Whether the rollout may go ahead (nothing overlapped, or an emergency override was granted).
  returned: always
  type: bool
  sample: true
rollout:
  description: The rollout interval checked.
  returned: when the options are valid
  type: dict
  contains:
    start:
      description: Start, ISO 8601 UTC.
      type: str
      sample: "2026-11-24T15:30:00Z"
    end:
      description: Start plus O(duration), ISO 8601 UTC.
      type: str
      sample: "2026-11-24T16:00:00Z"
    duration:
      description: O(duration), or the estimate from O(plan), in seconds.
      type: int
      sample: 1800
    estimated:
      description: The duration in words.
      type: str
      sample: 30 min
overlaps:
  description: The window occurrences the rollout overlaps, earliest first (empty when none).
  returned: when the options are valid
  type: list
  elements: dict
  contains:
    name:
      description: Window name.
      type: str
    at:
      description: The window's instant (the funding timestamp, the expiry), ISO 8601 UTC.
      type: str
    start:
      description: Start of the frozen interval (the window's instant minus its C(before) margin), ISO 8601 UTC.
      type: str
    end:
      description: End of the frozen interval (the window's instant plus its C(after) margin), ISO 8601 UTC.
      type: str
  sample:
    - name: perpetual funding
      at: "2026-11-24T16:00:00Z"
      start: "2026-11-24T15:45:00Z"
      end: "2026-11-24T16:05:00Z"
estimate:
  description: The estimate from O(plan) (and O(progress)), phase by phase; null with O(duration).
  returned: when the options are valid
  type: dict
  contains:
    seconds:
      description: The whole estimate (with no work left, the instant of O(start) is checked).
      type: int
    nodes:
      description: Nodes left to patch.
      type: int
    progress:
      description: O(progress) as applied (phase and done).
      type: dict
    steps:
      description: One entry per phase with work left.
      type: list
      elements: dict
      contains:
        phase:
          description: canary, canary_switchover, standbys, primaries or wallets.
          type: str
        nodes:
          description: Nodes patched in this phase (none for the canary switchover).
          type: int
        batches:
          description: Batch sizes, as Ansible splits the play's hosts by the serial list.
          type: list
          elements: int
        seconds:
          description: Seconds budgeted for the phase.
          type: int
        formula:
          description: How the seconds add up, in words.
          type: str
    plan:
      description: O(plan) with its defaults, to pass back with O(progress) before a later batch.
      type: dict
  sample:
    seconds: 215
    nodes: 1
    progress: {phase: canary, done: 0}
    steps:
      - phase: canary
        nodes: 1
        batches: [1]
        seconds: 115
        formula: restart 45 s + gate up to 60 s + canary bake 10 s
      - phase: canary_switchover
        nodes: 0
        batches: []
        seconds: 100
        formula: switchover up to 30 s + traffic gate up to 60 s + canary bake 10 s
    plan: {standbys: 1, primaries: 1, wallets: 0, serial: [1, 2, "50%"], canary_bake: 10, bake: 0,
           traffic_bake: 5, gate_timeout: 60, switchover_timeout: 30, in_flight_timeout: 30, seconds_per_node: 45}
schedule:
  description: The schedule file read (O(schedule)), for a later check of the same run.
  returned: always
  type: str
  sample: /etc/exchpatch/freeze-windows.yml
next_start:
  description:
    - Earliest start, at or after O(start), at which a rollout of O(duration) overlaps no window;
      O(start) itself when nothing overlaps; null when no slot is free within 7 days.
  returned: when the options are valid
  type: str
  sample: "2026-11-24T16:05:00Z"
emergency_override:
  description: The granted emergency override, to record in the audit trail; null when none was needed.
  returned: when the options are valid
  type: dict
  contains:
    reason:
      description: O(reason).
      type: str
    approver:
      description: O(approver).
      type: str
    operator:
      description: O(operator).
      type: str
    overlaps:
      description: The window occurrences overridden (as in RV(overlaps)).
      type: list
      elements: dict
    granted_at:
      description: When the override was granted, ISO 8601 UTC.
      type: str
  sample:
    reason: CVE-2026-31337 is exploited in the wild (KEV) against our order gateway
    approver: bob@ops-desktop
    operator: alice@ops-laptop
    overlaps:
      - name: perpetual funding
        at: "2026-11-24T16:00:00Z"
        start: "2026-11-24T15:45:00Z"
        end: "2026-11-24T16:05:00Z"
    granted_at: "2026-11-24T15:31:07Z"
bad_input:
  description: True when the module failed because of its options or the schedule rather than a freeze window.
  returned: failure
  type: bool
  sample: true
"""

import datetime as dt

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.exchangeops.patching.plugins.module_utils import _calendar, _estimate

PLAN_OPTIONS = dict(
    standbys=dict(type="int", default=0),
    primaries=dict(type="int", default=0),
    wallets=dict(type="int", default=0),
    serial=dict(type="list", elements="raw", default=list(_estimate.DEFAULT_SERIAL)),
    canary_bake=dict(type="int", default=10),
    bake=dict(type="int", default=0),
    traffic_bake=dict(type="int", default=5),
    gate_timeout=dict(type="int", default=60),
    switchover_timeout=dict(type="int", default=30),
    in_flight_timeout=dict(type="int", default=30),
    seconds_per_node=dict(type="int", default=45),
)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            schedule=dict(type="path", required=True),
            start=dict(type="str"),
            duration=dict(type="int"),
            plan=dict(type="dict", options=PLAN_OPTIONS),
            progress=dict(type="dict", options=dict(
                phase=dict(type="str", default="canary", choices=list(_estimate.PHASES)),
                done=dict(type="int", default=0),
            )),
            emergency=dict(type="bool", default=False),
            reason=dict(type="str"),
            approver=dict(type="str"),
            operator=dict(type="str", required=True),
        ),
        mutually_exclusive=[("duration", "plan"), ("duration", "progress")],
        required_one_of=[("duration", "plan")],
        supports_check_mode=True,
    )
    if not _calendar.HAS_YAML:
        module.fail_json(msg=missing_required_lib("PyYAML"), exception=_calendar.YAML_IMPORT_ERROR, allowed=False)
    p = module.params
    now = dt.datetime.now(dt.UTC)
    estimate = None
    try:
        _calendar.check_operator(p["operator"])
        start = _calendar.parse_start(p["start"], now)
        if p["plan"] is not None:
            progress = p["progress"] or {"phase": "canary", "done": 0}
            estimate = _estimate.estimate_run(_estimate.make_plan(**p["plan"]), progress["phase"], progress["done"])
        windows = _calendar.load_schedule(p["schedule"])
        # with no work left the check is of the instant itself
        decision = _calendar.evaluate(windows, start, max(estimate.seconds, 1) if estimate else p["duration"])
    except _calendar.MissingLibraryError as e:
        module.fail_json(msg=missing_required_lib(e.library), exception=e.error, allowed=False, bad_input=True)
    except (_calendar.CalendarError, _calendar.ScheduleError, _estimate.PlanError) as e:
        module.fail_json(msg=str(e), allowed=False, bad_input=True, schedule=p["schedule"])
    result = dict(
        changed=False,
        schedule=p["schedule"],
        estimate=estimate.as_dict() if estimate else None,
        allowed=decision.allowed,
        rollout=decision.rollout(),
        overlaps=[o.to_dict() for o in decision.overlaps],
        next_start=_calendar.format_time(decision.next_start) if decision.next_start else None,
        emergency_override=None,
    )
    if p["emergency"]:
        # an emergency claim is checked even when nothing overlaps: the flag alone must never pass unapproved
        try:
            override = _calendar.emergency_override(decision, p["reason"], p["approver"], p["operator"], now)
        except _calendar.CalendarError as e:
            module.fail_json(msg=str(e), bad_input=True, **{**result, "allowed": False})
        if not decision.allowed:
            result.update(allowed=True, emergency_override=override)
    elif not decision.allowed:
        module.fail_json(msg=_calendar.conflict_message(decision), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
