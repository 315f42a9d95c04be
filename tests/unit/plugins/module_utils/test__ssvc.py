# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests for module_utils/_ssvc.py.

Every row of each decision table is checked against an independent copy of the published
table, kept as CSV fixtures in ``fixtures/`` with the published spellings:

* ``ssvc_deployer_1_0_0.csv`` -- CERTCC/SSVC ``data/csvs/deployer-options.csv`` (verbatim),
  the rows of decision table ``ssvc:DT_DP`` 1.0.0
  (``data/json/decision_tables/ssvc/deployer_patch_application_priority_1_0_0.json``).
* ``cisa_coordinator_2_0_3.csv`` -- CERTCC/SSVC
  ``data/json/decision_tables/cisa/cisa_coordinator_2_0_3.json`` (``cisa:DT_CO`` 2.0.3),
  mapping transcribed row by row with the value names of that file; the same rows as
  CISA's SSVC guide (Figure 1 / Table 9).
* ``cisa_bod_26_04_1_0_0.csv`` -- CERTCC/SSVC
  ``data/json/decision_tables/cisa/cisa_bod_26_04_1_0_0.json`` (``cisa:DT_BOD2604`` 1.0.0,
  CISA BOD 26-04 Table 1), rows in the published order with the value names of that file.
"""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import pytest
from ansible_collections.exchangeops.patching.plugins.module_utils import _ssvc
from ansible_collections.exchangeops.patching.plugins.module_utils._ssvc import (
    AUTOMATABLE,
    BOD_TABLE,
    COORDINATOR_OUTCOMES,
    COORDINATOR_TREE,
    DEPLOYER_OUTCOMES,
    DEPLOYER_TREE,
    EXPLOITATION,
    EXPOSURE,
    HUMAN_IMPACT,
    MISSION_WELLBEING,
    TECHNICAL_IMPACT,
    BodTimeline,
    SsvcError,
    bod_timeline,
    class_rank,
    coordinator_decision,
    deployer_decision,
    mission_wellbeing_from_criticality,
    normalize_automatable,
    normalize_exploitation,
    normalize_technical_impact,
)

FIXTURES = Path(__file__).parent / "fixtures"


def _rows(name: str) -> list[dict[str, str]]:
    with (FIXTURES / name).open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# Published spellings -> the module's normalised values (kept here, independent of the module).
PUB_EXPLOITATION = {"none": "none", "PoC": "poc", "None": "none", "Public PoC": "poc", "active": "active",
                    "Active": "active"}
PUB_HUMAN_IMPACT = {"low": "low", "medium": "medium", "high": "high", "very high": "very_high"}
PUB_DEPLOYER = {"defer": "defer", "scheduled": "scheduled", "out-of-cycle": "out_of_cycle", "immediate": "immediate"}
PUB_CISA = {"Track": "track", "Track*": "track_star", "Attend": "attend", "Act": "act"}
PUB_YES_NO = {"No": "no", "Yes": "yes"}
PUB_BOD = {
    "Fix on system upgrade": ("fix_on_system_upgrade", None, False),
    "60 days": ("60_days", 60, False),
    "14 days": ("14_days", 14, False),
    "3 days": ("3_days", 3, False),
    "3 days & forensic investigation": ("3_days_forensic_investigation", 3, True),
}

DEPLOYER_ROWS = _rows("ssvc_deployer_1_0_0.csv")
COORDINATOR_ROWS = _rows("cisa_coordinator_2_0_3.csv")
BOD_ROWS = _rows("cisa_bod_26_04_1_0_0.csv")


def _ids(rows: list[dict[str, str]]) -> list[str]:
    return [f"row{r['row']}" for r in rows]


# ---------------------------------------------------------------------------------------
# Fixtures themselves: right size, every combination exactly once
# ---------------------------------------------------------------------------------------

def test_fixtures_cover_every_combination_once():
    dep = [(PUB_EXPLOITATION[r["Exploitation"]], r["Exposure"], r["Automatable"], PUB_HUMAN_IMPACT[r["Human Impact"]])
           for r in DEPLOYER_ROWS]
    assert len(dep) == 72
    assert set(dep) == set(itertools.product(EXPLOITATION, EXPOSURE, AUTOMATABLE, HUMAN_IMPACT))
    coo = [(PUB_EXPLOITATION[r["Exploitation"]], PUB_YES_NO[r["Automatable"]], r["Technical Impact"].lower(),
            r["Mission and Well-Being Impact"].lower()) for r in COORDINATOR_ROWS]
    assert len(coo) == 36
    assert set(coo) == set(itertools.product(EXPLOITATION, AUTOMATABLE, TECHNICAL_IMPACT, MISSION_WELLBEING))
    bod = [(r["In KEV"], r["Asset Exposure"], r["Automatable"], r["Technical Impact"]) for r in BOD_ROWS]
    assert len(bod) == 16
    assert set(bod) == set(itertools.product(("No", "Yes"), ("No", "Yes"), ("No", "Yes"), ("Partial", "Total")))


# ---------------------------------------------------------------------------------------
# Every published row
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("row", DEPLOYER_ROWS, ids=_ids(DEPLOYER_ROWS))
def test_deployer_every_published_row(row):
    expected = PUB_DEPLOYER[row["Priority"]]
    key = (PUB_EXPLOITATION[row["Exploitation"]], row["Exposure"], row["Automatable"],
           PUB_HUMAN_IMPACT[row["Human Impact"]])
    assert DEPLOYER_TREE[key] == expected
    assert deployer_decision(*key) == expected
    # the published spellings ("PoC", "very high") are accepted as they are
    assert deployer_decision(row["Exploitation"], row["Exposure"], row["Automatable"], row["Human Impact"]) == expected


@pytest.mark.parametrize("row", COORDINATOR_ROWS, ids=_ids(COORDINATOR_ROWS))
def test_coordinator_every_published_row(row):
    expected = PUB_CISA[row["CISA Levels"]]
    key = (PUB_EXPLOITATION[row["Exploitation"]], PUB_YES_NO[row["Automatable"]], row["Technical Impact"].lower(),
           row["Mission and Well-Being Impact"].lower())
    assert COORDINATOR_TREE[key] == expected
    assert coordinator_decision(*key) == expected
    assert coordinator_decision(row["Exploitation"], row["Automatable"], row["Technical Impact"],
                                row["Mission and Well-Being Impact"]) == expected


@pytest.mark.parametrize("row", BOD_ROWS, ids=_ids(BOD_ROWS))
def test_bod_every_published_row(row):
    label, days, forensic = PUB_BOD[row["CISA BOD 26-04 Remediation Timelines"]]
    in_kev = row["In KEV"] == "Yes"
    exposed = row["Asset Exposure"] == "Yes"
    automatable = PUB_YES_NO[row["Automatable"]]
    impact = row["Technical Impact"].lower()
    assert BOD_TABLE[(in_kev, exposed, automatable, impact)] == label
    assert bod_timeline(in_kev, exposed, automatable, impact) == BodTimeline(days, forensic, label)
    # automatable as a boolean, technical impact in the published casing
    timeline = bod_timeline(in_kev, exposed, automatable == "yes", row["Technical Impact"])
    assert (timeline.days, timeline.forensic_triage, timeline.label) == (days, forensic, label)


# ---------------------------------------------------------------------------------------
# Completeness, read-only data, monotonicity
# ---------------------------------------------------------------------------------------

def test_tables_complete():
    assert len(DEPLOYER_TREE) == 72
    assert set(DEPLOYER_TREE) == set(itertools.product(EXPLOITATION, EXPOSURE, AUTOMATABLE, HUMAN_IMPACT))
    assert set(DEPLOYER_TREE.values()) == set(DEPLOYER_OUTCOMES)
    assert len(COORDINATOR_TREE) == 36
    assert set(COORDINATOR_TREE) == set(itertools.product(EXPLOITATION, AUTOMATABLE, TECHNICAL_IMPACT,
                                                          MISSION_WELLBEING))
    assert set(COORDINATOR_TREE.values()) == set(COORDINATOR_OUTCOMES)
    assert len(BOD_TABLE) == 16
    assert set(BOD_TABLE) == set(itertools.product((False, True), (False, True), AUTOMATABLE, TECHNICAL_IMPACT))
    assert set(BOD_TABLE.values()) == set(_ssvc.BOD_OUTCOMES) == set(_ssvc.BOD_TIMELINES)


@pytest.mark.parametrize("table", [DEPLOYER_TREE, COORDINATOR_TREE, BOD_TABLE, _ssvc.BOD_TIMELINES])
def test_tables_read_only(table):
    key = next(iter(table))
    with pytest.raises(TypeError):
        table[key] = "act"  # type: ignore[index]
    with pytest.raises(TypeError):
        del table[key]  # type: ignore[attr-defined]


def _assert_monotone(table, domains, outcomes):
    """Raising any one decision point by one step never lowers the outcome."""
    checked = 0
    for key, outcome in table.items():
        for i, domain in enumerate(domains):
            pos = domain.index(key[i])
            if pos + 1 < len(domain):
                higher = (*key[:i], domain[pos + 1], *key[i + 1:])
                assert outcomes.index(table[higher]) >= outcomes.index(outcome), (key, higher)
                checked += 1
    return checked


def test_deployer_monotone():
    # holds for every decision point in the published table
    assert _assert_monotone(DEPLOYER_TREE, (EXPLOITATION, EXPOSURE, AUTOMATABLE, HUMAN_IMPACT), DEPLOYER_OUTCOMES)


def test_coordinator_monotone():
    assert _assert_monotone(COORDINATOR_TREE, (EXPLOITATION, AUTOMATABLE, TECHNICAL_IMPACT, MISSION_WELLBEING),
                            COORDINATOR_OUTCOMES)


def test_bod_monotone():
    # 3 days with forensic triage ranks above plain 3 days
    assert _assert_monotone(BOD_TABLE, ((False, True), (False, True), AUTOMATABLE, TECHNICAL_IMPACT),
                            _ssvc.BOD_OUTCOMES)


def test_bod_outcome_order_matches_days():
    timelines = [_ssvc.BOD_TIMELINES[label] for label in _ssvc.BOD_OUTCOMES]
    assert [t.label for t in timelines] == list(_ssvc.BOD_OUTCOMES)
    assert [t.days for t in timelines] == [None, 60, 14, 3, 3]
    assert [t.forensic_triage for t in timelines] == [False, False, False, False, True]


# ---------------------------------------------------------------------------------------
# Normalisation and errors
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "expected"), [
    ("None", "none"), ("none", "none"), ("NONE", "none"), (" none ", "none"),
    ("PoC", "poc"), ("poc", "poc"), ("public poc", "poc"), ("Public PoC", "poc"), ("public_poc", "poc"),
    ("public-poc", "poc"), ("active", "active"), ("Active", "active"),
])
def test_normalize_exploitation(raw, expected):
    assert normalize_exploitation(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), [
    ("Yes", "yes"), ("yes", "yes"), (True, "yes"), ("No", "no"), ("no", "no"), (False, "no"),
])
def test_normalize_automatable(raw, expected):
    assert normalize_automatable(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), [
    ("Total", "total"), ("total", "total"), ("Partial", "partial"), ("partial", "partial"),
])
def test_normalize_technical_impact(raw, expected):
    assert normalize_technical_impact(raw) == expected


@pytest.mark.parametrize(("func", "value", "point", "allowed"), [
    (normalize_exploitation, "weaponized", "exploitation", "none, poc, active"),
    (normalize_exploitation, None, "exploitation", "none, poc, active"),
    (normalize_exploitation, "", "exploitation", "none, poc, active"),
    (normalize_automatable, "maybe", "automatable", "no, yes"),
    (normalize_automatable, 1, "automatable", "no, yes"),
    (normalize_technical_impact, "high", "technical_impact", "partial, total"),
])
def test_normalize_rejects(func, value, point, allowed):
    with pytest.raises(SsvcError) as err:
        func(value)
    message = str(err.value)
    assert point in message
    assert repr(value) in message
    assert allowed in message
    assert isinstance(err.value, ValueError)


def test_decisions_reject_bad_values_naming_the_point():
    with pytest.raises(SsvcError, match=r"system_exposure.*'internet'.*small, controlled, open"):
        deployer_decision("active", "internet", "yes", "high")
    with pytest.raises(SsvcError, match=r"human_impact.*'critical'.*low, medium, high, very_high"):
        deployer_decision("active", "open", "yes", "critical")
    with pytest.raises(SsvcError, match=r"mission_wellbeing.*'very_high'.*low, medium, high"):
        coordinator_decision("active", "yes", "total", "very_high")
    with pytest.raises(SsvcError, match=r"in_kev"):
        bod_timeline("perhaps", True, "yes", "total")  # type: ignore[arg-type]
    with pytest.raises(SsvcError, match=r"technical_impact"):
        bod_timeline(True, True, "yes", "severe")


def test_decisions_accept_variants():
    assert deployer_decision("Active", "Open", True, "Very High") == "immediate"
    assert deployer_decision("public poc", "controlled", "Yes", "very-high") == "out_of_cycle"
    assert coordinator_decision("Active", True, "Total", "High") == "act"
    assert bod_timeline(True, True, True, "Total").label == "3_days_forensic_investigation"
    assert bod_timeline("yes", "no", "no", "partial").label == "14_days"


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("criticality", "expected"), [
    ("low", "low"), ("medium", "medium"), ("high", "high"), ("very_high", "high"), ("Very High", "high"),
])
def test_mission_wellbeing_from_criticality(criticality, expected):
    assert mission_wellbeing_from_criticality(criticality) == expected


def test_mission_wellbeing_from_criticality_rejects():
    with pytest.raises(SsvcError, match=r"criticality.*'extreme'"):
        mission_wellbeing_from_criticality("extreme")


def test_class_rank():
    assert [class_rank(c) for c in ("immediate", "out_of_cycle", "scheduled", "defer")] == [0, 1, 2, 3]
    assert class_rank("Out-of-Cycle") == 1
    assert sorted(DEPLOYER_OUTCOMES, key=class_rank) == ["immediate", "out_of_cycle", "scheduled", "defer"]
    with pytest.raises(SsvcError, match=r"deployer outcome.*'act'"):
        class_rank("act")
