# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""SSVC and BOD 26-04 decisions as Jinja filters; the tables live in module_utils/_ssvc.py."""

from __future__ import annotations

import datetime as dt

from ansible.errors import AnsibleFilterError
from ansible_collections.exchangeops.patching.plugins.module_utils import _ssvc


def ssvc_deployer(exploitation, exposure, automatable, human_impact):
    """SSVC Deployer tree 1.0.0 outcome."""
    try:
        return _ssvc.deployer_decision(exploitation, exposure, automatable, human_impact)
    except _ssvc.SsvcError as e:
        raise AnsibleFilterError(f"ssvc_deployer: {e}") from e


def ssvc_coordinator(exploitation, automatable, technical_impact, mission_wellbeing):
    """CISA SSVC coordinator tree outcome."""
    try:
        return _ssvc.coordinator_decision(exploitation, automatable, technical_impact, mission_wellbeing)
    except _ssvc.SsvcError as e:
        raise AnsibleFilterError(f"ssvc_coordinator: {e}") from e


def bod_due_date(start, in_kev, publicly_exposed, automatable, technical_impact):
    """BOD 26-04 due date counted from ``start`` (ISO date), or None for fix-on-upgrade."""
    try:
        day = dt.date.fromisoformat(str(start)[:10])
    except ValueError as e:
        raise AnsibleFilterError(f"bod_due_date: start {start!r} is not an ISO date like 2026-11-24") from e
    try:
        timeline = _ssvc.bod_timeline(bool(in_kev), bool(publicly_exposed), automatable, technical_impact)
    except _ssvc.SsvcError as e:
        raise AnsibleFilterError(f"bod_due_date: {e}") from e
    if timeline.days is None:
        return None
    return (day + dt.timedelta(days=timeline.days)).isoformat()


class FilterModule:
    """SSVC decision filters."""

    def filters(self):
        return {
            "ssvc_deployer": ssvc_deployer,
            "ssvc_coordinator": ssvc_coordinator,
            "bod_due_date": bod_due_date,
        }
