# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""SSVC decision tables as data, and pure functions over them.

Three published decision tables are encoded here, each exactly once, as a tuple of rows
(``_DEPLOYER_ROWS``, ``_COORDINATOR_ROWS``, ``_BOD_ROWS``); everything else is derived
from those rows at import time and exposed read-only (``MappingProxyType``).

Sources (CERT/CC SSVC repository, https://github.com/CERTCC/SSVC):

* ``DEPLOYER_TREE`` -- SSVC "Deployer Patch Application Priority" decision table,
  ``ssvc:DT_DP`` version 1.0.0, ``data/json/decision_tables/ssvc/deployer_patch_application_priority_1_0_0.json``
  (decision points ``ssvc:E:1.1.0`` Exploitation, ``ssvc:EXP:1.0.1`` System Exposure,
  ``ssvc:A:2.0.0`` Automatable, ``ssvc:HI:2.0.2`` Human Impact; outcome ``ssvc:DSOI:1.0.0``).
  The same 72 rows are published as ``data/csvs/deployer-options.csv`` and rendered in
  ``docs/howto/deployer_tree.md`` (https://certcc.github.io/SSVC/howto/deployer_tree/).
* ``COORDINATOR_TREE`` -- CISA coordinator decision table, ``cisa:DT_CO`` version 2.0.3,
  ``data/json/decision_tables/cisa/cisa_coordinator_2_0_3.json`` (decision points
  ``ssvc:E:1.1.0``, ``ssvc:A:2.0.0``, ``ssvc:TI:1.0.0`` Technical Impact,
  ``ssvc:MWI:1.0.0`` Mission and Well-Being Impact; outcome ``cisa:CISA:1.1.0`` Track,
  Track*, Attend, Act). This is the tree of CISA's "Stakeholder-Specific Vulnerability
  Categorization Guide" (Figure 1 / Table 9,
  https://www.cisa.gov/sites/default/files/publications/cisa-ssvc-guide%20508c.pdf);
  every row agrees with the independent transcription in the CPAN module ``SSVC::CISA``
  (https://github.com/giterlizzi/perl-SSVC, ``lib/SSVC/CISA.pm``).
* ``BOD_TABLE`` -- CISA BOD 26-04 "Prioritizing Security Updates Based on Risk"
  (June 10, 2026), Table 1 "Remediation Timelines", as published by CERT/CC as decision
  table ``cisa:DT_BOD2604`` version 1.0.0,
  ``data/json/decision_tables/cisa/cisa_bod_26_04_1_0_0.json`` and
  ``src/ssvc/decision_tables/cisa/bod_2604_dt.py`` (decision points ``cisa:KEV:1.0.0``
  In KEV, ``cisa:AE:1.0.0`` Asset Exposure -- earlier ``cisa:PE:1.0.0`` Publicly
  Exposed, same rows --, ``ssvc:A:2.0.0``, ``ssvc:TI:1.0.0``; outcome
  ``cisa:BOD2604:1.0.0``), documented at ``docs/howto/cisa_response_levels.md``
  (https://certcc.github.io/SSVC/howto/cisa_response/). The CPAN module
  ``SSVC::CISA::BOD2604`` (https://metacpan.org/pod/SSVC::CISA::BOD2604) names the same
  outcomes ``fix_on_system_upgrade``, ``60_days``, ``14_days``, ``3_days`` and
  ``3_days_forensic_investigation``; those names are used here as labels. The rows are
  CERT/CC's encoding of the directive's Table 1; the directive's own table was not
  available as text to compare row by row, but public summaries of it agree (16 rows;
  3/14/60 days or fix on system upgrade; exactly three rows -- KEV and total control with
  public exposure or automatable -- add forensic triage; any three of the four risk
  factors give 3 days).

Value spellings are normalised to lower-case snake case: ``poc`` for "Public PoC",
``very_high``, ``out_of_cycle``, ``track_star`` for "Track*".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

EXPLOITATION = ("none", "poc", "active")
EXPOSURE = ("small", "controlled", "open")
AUTOMATABLE = ("no", "yes")
HUMAN_IMPACT = ("low", "medium", "high", "very_high")
TECHNICAL_IMPACT = ("partial", "total")
MISSION_WELLBEING = ("low", "medium", "high")
DEPLOYER_OUTCOMES = ("defer", "scheduled", "out_of_cycle", "immediate")  # ascending urgency
COORDINATOR_OUTCOMES = ("track", "track_star", "attend", "act")  # ascending urgency
BOD_OUTCOMES = ("fix_on_system_upgrade", "60_days", "14_days", "3_days", "3_days_forensic_investigation")  # ascending

CRITICALITY = ("low", "medium", "high", "very_high")


class SsvcError(ValueError):
    """A value is not one of the values a decision point (or outcome) allows."""


# --------------------------------------------------------------------------------------
# The tables. Each row: the decision point values in the table's column order, then the
# outcome. Rows are in the published order.
# --------------------------------------------------------------------------------------

# CERTCC/SSVC ssvc:DT_DP 1.0.0 -- (exploitation, exposure, automatable, human_impact) -> outcome
_DEPLOYER_ROWS = (
    ("none", "small", "no", "low", "defer"),
    ("none", "small", "no", "medium", "defer"),
    ("none", "small", "no", "high", "scheduled"),
    ("none", "small", "no", "very_high", "scheduled"),
    ("none", "small", "yes", "low", "defer"),
    ("none", "small", "yes", "medium", "scheduled"),
    ("none", "small", "yes", "high", "scheduled"),
    ("none", "small", "yes", "very_high", "scheduled"),
    ("none", "controlled", "no", "low", "defer"),
    ("none", "controlled", "no", "medium", "scheduled"),
    ("none", "controlled", "no", "high", "scheduled"),
    ("none", "controlled", "no", "very_high", "scheduled"),
    ("none", "controlled", "yes", "low", "scheduled"),
    ("none", "controlled", "yes", "medium", "scheduled"),
    ("none", "controlled", "yes", "high", "scheduled"),
    ("none", "controlled", "yes", "very_high", "scheduled"),
    ("none", "open", "no", "low", "defer"),
    ("none", "open", "no", "medium", "scheduled"),
    ("none", "open", "no", "high", "scheduled"),
    ("none", "open", "no", "very_high", "scheduled"),
    ("none", "open", "yes", "low", "scheduled"),
    ("none", "open", "yes", "medium", "scheduled"),
    ("none", "open", "yes", "high", "scheduled"),
    ("none", "open", "yes", "very_high", "out_of_cycle"),
    ("poc", "small", "no", "low", "defer"),
    ("poc", "small", "no", "medium", "scheduled"),
    ("poc", "small", "no", "high", "scheduled"),
    ("poc", "small", "no", "very_high", "scheduled"),
    ("poc", "small", "yes", "low", "scheduled"),
    ("poc", "small", "yes", "medium", "scheduled"),
    ("poc", "small", "yes", "high", "scheduled"),
    ("poc", "small", "yes", "very_high", "scheduled"),
    ("poc", "controlled", "no", "low", "defer"),
    ("poc", "controlled", "no", "medium", "scheduled"),
    ("poc", "controlled", "no", "high", "scheduled"),
    ("poc", "controlled", "no", "very_high", "scheduled"),
    ("poc", "controlled", "yes", "low", "scheduled"),
    ("poc", "controlled", "yes", "medium", "scheduled"),
    ("poc", "controlled", "yes", "high", "scheduled"),
    ("poc", "controlled", "yes", "very_high", "out_of_cycle"),
    ("poc", "open", "no", "low", "scheduled"),
    ("poc", "open", "no", "medium", "scheduled"),
    ("poc", "open", "no", "high", "scheduled"),
    ("poc", "open", "no", "very_high", "out_of_cycle"),
    ("poc", "open", "yes", "low", "scheduled"),
    ("poc", "open", "yes", "medium", "scheduled"),
    ("poc", "open", "yes", "high", "out_of_cycle"),
    ("poc", "open", "yes", "very_high", "out_of_cycle"),
    ("active", "small", "no", "low", "scheduled"),
    ("active", "small", "no", "medium", "scheduled"),
    ("active", "small", "no", "high", "out_of_cycle"),
    ("active", "small", "no", "very_high", "out_of_cycle"),
    ("active", "small", "yes", "low", "scheduled"),
    ("active", "small", "yes", "medium", "out_of_cycle"),
    ("active", "small", "yes", "high", "out_of_cycle"),
    ("active", "small", "yes", "very_high", "out_of_cycle"),
    ("active", "controlled", "no", "low", "scheduled"),
    ("active", "controlled", "no", "medium", "scheduled"),
    ("active", "controlled", "no", "high", "out_of_cycle"),
    ("active", "controlled", "no", "very_high", "out_of_cycle"),
    ("active", "controlled", "yes", "low", "out_of_cycle"),
    ("active", "controlled", "yes", "medium", "out_of_cycle"),
    ("active", "controlled", "yes", "high", "out_of_cycle"),
    ("active", "controlled", "yes", "very_high", "out_of_cycle"),
    ("active", "open", "no", "low", "scheduled"),
    ("active", "open", "no", "medium", "out_of_cycle"),
    ("active", "open", "no", "high", "out_of_cycle"),
    ("active", "open", "no", "very_high", "immediate"),
    ("active", "open", "yes", "low", "out_of_cycle"),
    ("active", "open", "yes", "medium", "out_of_cycle"),
    ("active", "open", "yes", "high", "immediate"),
    ("active", "open", "yes", "very_high", "immediate"),
)

# CERTCC/SSVC cisa:DT_CO 2.0.3 -- (exploitation, automatable, technical_impact, mission_wellbeing) -> outcome
_COORDINATOR_ROWS = (
    ("none", "no", "partial", "low", "track"),
    ("none", "no", "partial", "medium", "track"),
    ("none", "no", "partial", "high", "track"),
    ("none", "no", "total", "low", "track"),
    ("none", "no", "total", "medium", "track"),
    ("none", "no", "total", "high", "track_star"),
    ("none", "yes", "partial", "low", "track"),
    ("none", "yes", "partial", "medium", "track"),
    ("none", "yes", "partial", "high", "attend"),
    ("none", "yes", "total", "low", "track"),
    ("none", "yes", "total", "medium", "track"),
    ("none", "yes", "total", "high", "attend"),
    ("poc", "no", "partial", "low", "track"),
    ("poc", "no", "partial", "medium", "track"),
    ("poc", "no", "partial", "high", "track_star"),
    ("poc", "no", "total", "low", "track"),
    ("poc", "no", "total", "medium", "track_star"),
    ("poc", "no", "total", "high", "attend"),
    ("poc", "yes", "partial", "low", "track"),
    ("poc", "yes", "partial", "medium", "track"),
    ("poc", "yes", "partial", "high", "attend"),
    ("poc", "yes", "total", "low", "track"),
    ("poc", "yes", "total", "medium", "track_star"),
    ("poc", "yes", "total", "high", "attend"),
    ("active", "no", "partial", "low", "track"),
    ("active", "no", "partial", "medium", "track"),
    ("active", "no", "partial", "high", "attend"),
    ("active", "no", "total", "low", "track"),
    ("active", "no", "total", "medium", "attend"),
    ("active", "no", "total", "high", "act"),
    ("active", "yes", "partial", "low", "attend"),
    ("active", "yes", "partial", "medium", "attend"),
    ("active", "yes", "partial", "high", "act"),
    ("active", "yes", "total", "low", "attend"),
    ("active", "yes", "total", "medium", "act"),
    ("active", "yes", "total", "high", "act"),
)

# CERTCC/SSVC cisa:DT_BOD2604 1.0.0 (BOD 26-04 Table 1) --
# (in_kev, publicly_exposed, automatable, technical_impact) -> outcome label
_BOD_ROWS = (
    (False, False, "no", "partial", "fix_on_system_upgrade"),
    (True, False, "no", "partial", "14_days"),
    (False, True, "no", "partial", "60_days"),
    (False, False, "yes", "partial", "60_days"),
    (False, False, "no", "total", "fix_on_system_upgrade"),
    (True, True, "no", "partial", "14_days"),
    (True, False, "yes", "partial", "14_days"),
    (False, True, "yes", "partial", "14_days"),
    (True, False, "no", "total", "14_days"),
    (False, True, "no", "total", "14_days"),
    (False, False, "yes", "total", "60_days"),
    (True, True, "yes", "partial", "3_days"),
    (True, True, "no", "total", "3_days_forensic_investigation"),
    (True, False, "yes", "total", "3_days_forensic_investigation"),
    (False, True, "yes", "total", "3_days"),
    (True, True, "yes", "total", "3_days_forensic_investigation"),
)

DEPLOYER_TREE = MappingProxyType({row[:4]: row[4] for row in _DEPLOYER_ROWS})
COORDINATOR_TREE = MappingProxyType({row[:4]: row[4] for row in _COORDINATOR_ROWS})
BOD_TABLE = MappingProxyType({row[:4]: row[4] for row in _BOD_ROWS})


@dataclass(frozen=True)
class BodTimeline:
    """A BOD 26-04 remediation timeline.

    ``days`` is the number of days to remediate, or None for "fix on system upgrade"
    (remediate at the asset's next scheduled major upgrade or rebuild).
    ``forensic_triage`` is True where the directive also requires a forensic triage of
    the asset ("3 days & forensic investigation").
    """

    days: int | None
    forensic_triage: bool
    label: str


BOD_TIMELINES = MappingProxyType({
    "fix_on_system_upgrade": BodTimeline(None, False, "fix_on_system_upgrade"),
    "60_days": BodTimeline(60, False, "60_days"),
    "14_days": BodTimeline(14, False, "14_days"),
    "3_days": BodTimeline(3, False, "3_days"),
    "3_days_forensic_investigation": BodTimeline(3, True, "3_days_forensic_investigation"),
})


# --------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------

def _key(value: object) -> str | None:
    """Lower-case, trimmed, with runs of spaces/hyphens/underscores turned into one '_'."""
    if not isinstance(value, str):
        return None
    return "_".join(value.strip().lower().replace("-", " ").replace("_", " ").split())


def _choose(point: str, value: object, allowed: tuple[str, ...], aliases: Mapping[str, str] | None = None) -> str:
    key = _key(value)
    if key is not None:
        if key in allowed:
            return key
        if aliases and key in aliases:
            return aliases[key]
    raise SsvcError(f"invalid {point} value {value!r}; allowed values: {', '.join(allowed)}")


_EXPLOITATION_ALIASES = MappingProxyType({"public_poc": "poc"})
_YES_NO_ALIASES = MappingProxyType({"true": "yes", "false": "no"})


def normalize_exploitation(value: str) -> str:
    """``none`` | ``poc`` | ``active``; accepts e.g. "None", "PoC", "public poc", "Public PoC", "Active"."""
    return _choose("exploitation", value, EXPLOITATION, _EXPLOITATION_ALIASES)


def _yes_no(point: str, value: str | bool) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return _choose(point, value, AUTOMATABLE, _YES_NO_ALIASES)


def normalize_automatable(value: str | bool) -> str:
    """``yes`` | ``no``; accepts booleans and "Yes"/"yes"/"No"/"no" (and "true"/"false")."""
    return _yes_no("automatable", value)


def normalize_technical_impact(value: str) -> str:
    """``partial`` | ``total``; case-insensitive."""
    return _choose("technical_impact", value, TECHNICAL_IMPACT)


def normalize_exposure(value: str) -> str:
    """``small`` | ``controlled`` | ``open`` (SSVC System Exposure); case-insensitive."""
    return _choose("system_exposure", value, EXPOSURE)


def normalize_human_impact(value: str) -> str:
    """``low`` | ``medium`` | ``high`` | ``very_high``; accepts "Very High", "very high", "very-high"."""
    return _choose("human_impact", value, HUMAN_IMPACT)


def normalize_mission_wellbeing(value: str) -> str:
    """``low`` | ``medium`` | ``high`` (CISA Mission & Well-being Impact); case-insensitive."""
    return _choose("mission_wellbeing", value, MISSION_WELLBEING)


def _to_bool(point: str, value: str | bool) -> bool:
    return _yes_no(point, value) == "yes"


# --------------------------------------------------------------------------------------
# Decisions
# --------------------------------------------------------------------------------------

def deployer_decision(exploitation: str, exposure: str, automatable: str, human_impact: str) -> str:
    """SSVC Deployer patch application priority: one of DEPLOYER_OUTCOMES."""
    key = (normalize_exploitation(exploitation), normalize_exposure(exposure),
           normalize_automatable(automatable), normalize_human_impact(human_impact))
    return DEPLOYER_TREE[key]


def coordinator_decision(exploitation: str, automatable: str, technical_impact: str, mission_wellbeing: str) -> str:
    """CISA SSVC decision: one of COORDINATOR_OUTCOMES (track, track_star, attend, act)."""
    key = (normalize_exploitation(exploitation), normalize_automatable(automatable),
           normalize_technical_impact(technical_impact), normalize_mission_wellbeing(mission_wellbeing))
    return COORDINATOR_TREE[key]


def mission_wellbeing_from_criticality(criticality: str) -> str:
    """Map a node criticality (low, medium, high, very_high) to CISA Mission & Well-being.

    CISA's Mission & Well-being Impact has three levels; its top level, ``high``, already
    means "Mission Prevalence: Essential OR Public Well-Being Impact: Irreversible", i.e.
    the asset is essential to the mission. A ``very_high`` criticality (the deployer
    tree's Human Impact "Very High": mission failure) cannot go higher than that, so it
    maps to ``high``; mapping it lower would understate it. The other levels map 1:1.
    """
    crit = _choose("criticality", criticality, CRITICALITY)
    return "high" if crit == "very_high" else crit


def bod_timeline(in_kev: bool, publicly_exposed: bool, automatable: str | bool, technical_impact: str) -> BodTimeline:
    """CISA BOD 26-04 remediation timeline for one vulnerability on one asset.

    ``in_kev`` and ``publicly_exposed`` are booleans (strings "yes"/"no" are accepted too).
    """
    key = (_to_bool("in_kev", in_kev), _to_bool("publicly_exposed", publicly_exposed),
           normalize_automatable(automatable), normalize_technical_impact(technical_impact))
    return BOD_TIMELINES[BOD_TABLE[key]]


def class_rank(outcome: str) -> int:
    """Rank of a deployer outcome, lower = more urgent: immediate=0, out_of_cycle=1, scheduled=2, defer=3.

    Accepts the published spellings too ("Out-of-Cycle", "Immediate").
    """
    cls = _choose("deployer outcome", outcome, DEPLOYER_OUTCOMES)
    return len(DEPLOYER_OUTCOMES) - 1 - DEPLOYER_OUTCOMES.index(cls)
