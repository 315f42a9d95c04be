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
    averaging windows before and after) and checks whether the rollout from O(start) for
    O(duration) seconds overlaps any window occurrence. Daily windows are expanded over the
    rollout, including occurrences on the days before and after it.
  - A rollout that overlaps nothing returns RV(allowed=true). One that overlaps a window fails,
    naming the rollout, every window it overlaps, and RV(next_start), the earliest start at which
    a rollout of the same duration overlaps nothing (searched up to 7 days ahead).
  - An emergency override (O(emergency=true)) lets an overlapping rollout go ahead; it needs a
    O(reason) and a second O(approver) other than the O(operator), and returns
    RV(emergency_override) for the audit record.
  - A bad schedule (missing file, bad YAML, unknown keys, bad time or duration, negative margin)
    fails naming the file, the window and the fix.
  - Read-only; runs on the controller (run it on C(localhost) or delegate it there).
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
      - YAML file of freeze windows, C({windows:[...]}). Each window has C(name), C(at) (UTC times of
        day C("HH:MM") with C(recurring=daily), or full ISO 8601 date-times with a zone for one-off
        windows), and optionally C(before) and C(after) margins as durations like C(90s), C(15m),
        C(2h) or C(1h30m). See C(testbed/freeze-windows.yml).
    type: path
    required: true
  start:
    description:
      - When the rollout starts, ISO 8601 (for example C(2026-11-24T10:00:00Z); a time without a zone
        is UTC). Defaults to now.
    type: str
  duration:
    description: Estimated duration of the rollout in seconds.
    type: int
    required: true
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
      description: O(duration) in seconds.
      type: int
      sample: 1800
    estimated:
      description: O(duration) in words.
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
from ansible_collections.exchangeops.patching.plugins.module_utils import _calendar


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            schedule=dict(type="path", required=True),
            start=dict(type="str"),
            duration=dict(type="int", required=True),
            emergency=dict(type="bool", default=False),
            reason=dict(type="str"),
            approver=dict(type="str"),
            operator=dict(type="str", required=True),
        ),
        supports_check_mode=True,
    )
    if not _calendar.HAS_YAML:
        module.fail_json(msg=missing_required_lib("PyYAML"), exception=_calendar.YAML_IMPORT_ERROR, allowed=False)
    p = module.params
    now = dt.datetime.now(dt.UTC)
    try:
        _calendar.check_operator(p["operator"])
        start = _calendar.parse_start(p["start"], now)
        windows = _calendar.load_schedule(p["schedule"])
        decision = _calendar.evaluate(windows, start, p["duration"])
    except (_calendar.CalendarError, _calendar.ScheduleError) as e:
        module.fail_json(msg=str(e), allowed=False, bad_input=True)
    result = dict(
        changed=False,
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
