"""Ranking: per-CVE decisions, due dates, order, explanations, and monotonicity."""

from __future__ import annotations

import datetime as dt
import itertools
import re

import pytest
from ansible_collections.exchangeops.patching.plugins.module_utils import _priority
from ansible_collections.exchangeops.patching.plugins.module_utils._catalog import Patch
from ansible_collections.exchangeops.patching.plugins.module_utils._feeds import (
    Advisory,
    EpssEntry,
    Intel,
    KevEntry,
    SsvcPoint,
    parse_cvss,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

NOW = dt.datetime(2026, 11, 24, tzinfo=dt.UTC)
V_LOW = "CVSS:3.1/AV:L/AC:H/PR:H/UI:R/S:U/C:L/I:L/A:N"
V_NET_PARTIAL = "CVSS:3.1/AV:N/AC:H/PR:L/UI:N/S:U/C:H/I:L/A:N"
V_AUTO_PARTIAL = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:L/A:N"
V_AUTO_TOTAL = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"
VECTORS = [V_LOW, V_NET_PARTIAL, V_AUTO_PARTIAL, V_AUTO_TOTAL]  # each at least as risky as the one before


def adv(cve: str, vector: str | None = V_AUTO_TOTAL, published: str | None = "2026-11-01",
        ssvc: SsvcPoint | None = None) -> Advisory:
    return Advisory(cve=cve, aliases=[], published=published, cvss_vector=vector,
                    cvss_score=None, cvss_version=None, ssvc=ssvc, source="nvd.json",
                    source_format="nvd", source_date="2026-11-20")


def point(exploitation=None, automatable=None, technical_impact=None) -> SsvcPoint:
    return SsvcPoint(exploitation=exploitation, automatable=automatable, technical_impact=technical_impact,
                     source="CISA ADP Vulnrichment", date="2026-11-02")


def kev(cve: str, added: str = "2026-11-10", due: str | None = None) -> KevEntry:
    return KevEntry(cve=cve, date_added=added, due_date=due, ransomware=False, source="kev.json",
                    catalog_version="2026.11.20")


def epss(cve: str, value: float) -> EpssEntry:
    return EpssEntry(cve=cve, epss=value, percentile=value, model_version="v2025.03.14",
                     score_date="2026-11-23", source="epss.csv")


def intel(advisories=(), kevs=(), epsses=()) -> Intel:
    return Intel(advisories={a.cve: a for a in advisories}, kev={k.cve: k for k in kevs},
                 epss={e.cve: e for e in epsses}, aliases={})


def patch(pid: str, fixes=(), component="matching-engine", version="1.4.3", restart="service",
          migration="none", files=1, lines=10) -> Patch:
    return Patch(id=pid, component=component, version=version, artifact_url="file:///x.tar.gz", sha256="0" * 64,
                 signature="c2ln", fixes=tuple(fixes), restart=restart, migration=migration, change_files=files,
                 change_lines=lines, released_at="2026-11-20T00:00:00Z", source=f"patches/{pid}.yml")


def fleet(criticality="very_high", exposure="controlled"):
    return _priority.nodes_from_facts({"nodes": [
        {"name": "match-0a", "component": "matching-engine", "version": "1.4.2", "criticality": criticality,
         "exposure": exposure, "markets": ["BTC-USD"]},
        {"name": "match-0b", "component": "matching-engine", "version": "1.4.2", "criticality": criticality,
         "exposure": exposure, "markets": ["BTC-USD"]},
        {"name": "wallet-1", "component": "wallet-signer", "version": "2.3.0", "criticality": criticality,
         "exposure": exposure},
    ]}, "facts.json")


def plan(i, patches, nodes=None):
    return _priority.build_plan(i, patches, nodes if nodes is not None else fleet(), NOW)


# --------------------------------------------------------------------------- per-CVE rules


def test_kev_overrides_a_stale_ssvc_none_and_says_so():
    p = plan(intel([adv("CVE-2026-1", ssvc=point("none", "yes", "total"))], [kev("CVE-2026-1")]),
             [patch("p1", ["CVE-2026-1"])])["patches"][0]
    cve = p["cves"][0]
    assert cve["kev"] is True and cve["exploitation"] == "active"
    why = next(e for e in p["explanation"] if e["factor"] == "CVE-2026-1 exploitation")
    assert "KEV" in why["source"] and "overrides SSVC 'none'" in why["effect"]


def test_ssvc_values_win_over_cvss_and_cvss_fills_the_gaps():
    i = intel([adv("CVE-2026-1", vector=V_LOW, ssvc=point("poc", "yes", "total")),
               adv("CVE-2026-2", vector=V_AUTO_PARTIAL)])
    cves = {c["id"]: c for p in plan(i, [patch("p1", ["CVE-2026-1"]), patch("p2", ["CVE-2026-2"])])["patches"]
            for c in p["cves"]}
    assert (cves["CVE-2026-1"]["automatable"], cves["CVE-2026-1"]["technical_impact"]) == ("yes", "total")
    assert cves["CVE-2026-1"]["exploitation"] == "poc"
    assert (cves["CVE-2026-2"]["automatable"], cves["CVE-2026-2"]["technical_impact"]) == ("yes", "partial")
    assert cves["CVE-2026-2"]["exploitation"] == "none"


def test_missing_data_is_assumed_risky_not_safe():
    p = plan(intel(), [patch("p1", ["CVE-2026-9"])])["patches"][0]
    cve = p["cves"][0]
    assert (cve["exploitation"], cve["automatable"], cve["technical_impact"]) == ("none", "yes", "total")
    assert any("assumed yes" in e["effect"] for e in p["explanation"])


def test_due_counts_from_kev_date_added_and_never_passes_kev_due_date():
    i = intel([adv("CVE-2026-1")], [kev("CVE-2026-1", added="2026-11-10")])
    first = plan(i, [patch("p1", ["CVE-2026-1"])])["patches"][0]
    days = (dt.date.fromisoformat(first["due"]) - dt.date(2026, 11, 10)).days
    assert days in (3, 14, 60)
    capped = plan(intel([adv("CVE-2026-1")], [kev("CVE-2026-1", added="2026-11-10", due="2026-11-11")]),
                  [patch("p1", ["CVE-2026-1"])])["patches"][0]
    assert capped["due"] == "2026-11-11"
    assert capped["overdue"] is True and capped["window"] == "now"


def test_due_counts_from_publication_then_from_now():
    published = plan(intel([adv("CVE-2026-1", published="2026-11-20")]), [patch("p1", ["CVE-2026-1"])])
    no_date = plan(intel([adv("CVE-2026-1", published=None)]), [patch("p1", ["CVE-2026-1"])])
    d1, d2 = published["patches"][0]["due"], no_date["patches"][0]["due"]
    # not in KEV, not publicly exposed, automatable, total: BOD 26-04 gives 60 days
    assert d1 == "2027-01-19"
    assert (dt.date.fromisoformat(d2) - dt.date.fromisoformat(d1)).days == 4


def test_fix_on_upgrade_has_no_due_date():
    i = intel([adv("CVE-2026-1", vector=V_LOW)])
    p = plan(i, [patch("p1", ["CVE-2026-1"])], fleet(exposure="small"))["patches"][0]
    assert p["due"] is None and p["cves"][0]["bod_26_04"] == "fix_on_system_upgrade"


def test_patch_due_is_the_earliest_over_its_cves():
    i = intel([adv("CVE-2026-1"), adv("CVE-2026-2")], [kev("CVE-2026-2", added="2026-11-20", due="2026-11-22")])
    p = plan(i, [patch("p1", ["CVE-2026-1", "CVE-2026-2"])])["patches"][0]
    assert p["due"] == min(c["due"] for c in p["cves"] if c["due"]) == "2026-11-22"


# --------------------------------------------------------------------------- targets and order


def test_targets_and_not_needed():
    i = intel([adv("CVE-2026-1")])
    nodes = _priority.nodes_from_facts([
        {"name": "a", "component": "matching-engine", "version": "1.4.3"},
        {"name": "b", "component": "matching-engine", "version": "1.4.2"},
        {"name": "w", "component": "wallet-signer", "version": "2.3.1"},
    ], "facts")
    doc = plan(i, [patch("me", ["CVE-2026-1"], version="1.4.3"),
                   patch("ws", ["CVE-2026-1"], component="wallet-signer", version="2.3.1")], nodes)
    assert [p["id"] for p in doc["patches"]] == ["me"]
    assert doc["patches"][0]["targets"] == ["b"]
    assert doc["not_needed"] == [{"id": "ws", "component": "wallet-signer", "version": "2.3.1",
                                  "reason": "every wallet-signer node already runs 2.3.1 or newer"}]


def test_version_comparison_is_numeric():
    nodes = _priority.nodes_from_facts([{"name": "a", "component": "matching-engine", "version": "1.4.9"}], "f")
    doc = plan(intel(), [patch("p", [], version="1.4.10")], nodes)
    assert doc["patches"][0]["targets"] == ["a"]


def test_order_is_class_then_due_then_epss_then_cvss_then_change_risk():
    i = intel(
        [adv("CVE-2026-1", ssvc=point("active", "yes", "total")),
         adv("CVE-2026-2", ssvc=point("none", "no", "partial"), vector=V_LOW),
         adv("CVE-2026-3", ssvc=point("poc", "no", "partial")),
         adv("CVE-2026-4", ssvc=point("poc", "no", "partial"))],
        epsses=[epss("CVE-2026-3", 0.9), epss("CVE-2026-4", 0.1)],
    )
    patches = [
        patch("low", ["CVE-2026-2"]),
        patch("poc-low-epss", ["CVE-2026-4"]),
        patch("active", ["CVE-2026-1"], migration="irreversible", restart="system", files=400, lines=90000),
        patch("poc-high-epss", ["CVE-2026-3"]),
    ]
    ranked = plan(i, patches)["patches"]
    order = [p["id"] for p in ranked]
    assert order[0] == "active"  # the riskiest change still leads: change risk never lowers a class
    assert order.index("poc-high-epss") < order.index("poc-low-epss")
    classes = [_priority._ssvc.class_rank(p["class"]) for p in ranked]
    assert classes == sorted(classes)
    scores = [p["score"] for p in ranked]
    assert all(a >= b for a, b in itertools.pairwise(scores)) or len({p["class"] for p in ranked}) > 1
    assert [p["rank"] for p in ranked] == list(range(1, len(ranked) + 1))


def test_smaller_safer_change_first_among_equals():
    i = intel([adv("CVE-2026-1"), adv("CVE-2026-2")])
    ranked = plan(i, [patch("big", ["CVE-2026-1"], migration="forward_compatible", files=50, lines=3000),
                      patch("small", ["CVE-2026-2"], files=1, lines=3)])["patches"]
    assert [p["id"] for p in ranked] == ["small", "big"]
    assert ranked[0]["class"] == ranked[1]["class"] and ranked[0]["due"] == ranked[1]["due"]


def test_patch_without_cves_is_deferred_and_explained():
    p = plan(intel(), [patch("feature", [])])["patches"][0]
    assert p["class"] == "defer" and p["due"] is None and p["cves"] == []
    assert any(e["factor"] == "fixes" for e in p["explanation"])


def test_every_explanation_names_a_source():
    i = intel([adv("CVE-2026-1", ssvc=point("poc", None, None))], [kev("CVE-2026-1")], [epss("CVE-2026-1", 0.5)])
    for e in plan(i, [patch("p", ["CVE-2026-1"])])["patches"][0]["explanation"]:
        assert set(e) == {"factor", "value", "source", "effect"}
        assert e["source"], e


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("records", "message"), [
    ("nope", "must be"),
    ([{"name": "a", "component": "order-gateway", "version": "1.0.0"}], "unknown component 'order-gateway'"),
    ([{"name": "a", "component": "matching-engine"}], "missing version"),
    ([{"name": "a", "component": "matching-engine", "version": "latest"}], "not a dotted version"),
    ([{"name": "a", "component": "matching-engine", "version": "1.0.0", "criticality": "huge"}], "criticality 'huge'"),
    ([{"name": "a", "component": "matching-engine", "version": "1.0.0", "exposure": "public"}], "exposure 'public'"),
    ([{"name": "a", "component": "matching-engine", "version": "1.0.0"}] * 2, "listed twice"),
])
def test_bad_facts_are_refused_with_the_fix(records, message):
    with pytest.raises(_priority.PlanError, match=message) as e:
        _priority.nodes_from_facts(records, "facts.json")
    assert str(e.value).startswith("facts.json")


@pytest.mark.parametrize("value", ["yesterday", "2026-13-01", "24/11/2026"])
def test_bad_now_is_refused(value):
    with pytest.raises(_priority.PlanError, match="not an ISO 8601"):
        _priority.parse_now(value)


def test_now_forms():
    assert _priority.parse_now("2026-11-24") == NOW
    assert _priority.parse_now("2026-11-24T00:00:00Z") == NOW
    assert _priority.parse_now("2026-11-24T01:00:00+01:00") == NOW


# --------------------------------------------------------------------------- monotonicity

EXPLOITATION = [None, "none", "poc", "active"]
AUTOMATABLE = [None, "no", "yes"]
IMPACT = [None, "partial", "total"]

cve_inputs = st.fixed_dictionaries({
    "kev": st.booleans(),
    "exploitation": st.integers(0, 3),
    "automatable": st.integers(0, 2),
    "impact": st.integers(0, 2),
    "vector": st.integers(0, 3),
    "epss": st.integers(0, 100),
    "published": st.integers(0, 60),
    "component": st.sampled_from(["matching-engine", "wallet-signer"]),
    "migration": st.sampled_from(["none", "forward_compatible", "irreversible"]),
    "lines": st.integers(1, 5000),
})


def _scenario(inputs: list[dict]):
    advisories, kevs, epsses, patches = [], [], [], []
    for n, x in enumerate(inputs):
        cve = f"CVE-2026-{1000 + n:04d}"
        published = (dt.date(2026, 9, 1) + dt.timedelta(days=x["published"])).isoformat()
        ssvc = None
        if x["exploitation"] or x["automatable"] or x["impact"]:
            ssvc = point(EXPLOITATION[x["exploitation"]], AUTOMATABLE[x["automatable"]], IMPACT[x["impact"]])
        advisories.append(adv(cve, vector=VECTORS[x["vector"]], published=published, ssvc=ssvc))
        if x["kev"]:  # added the day it was published, so KEV never moves the start of the clock
            kevs.append(kev(cve, added=published))
        epsses.append(epss(cve, x["epss"] / 100))
        patches.append(patch(f"p{n:02d}", [cve], component=x["component"],
                             version="9.0.0", migration=x["migration"], lines=x["lines"]))
    return intel(advisories, kevs, epsses), patches


def _raise(x: dict, what: str) -> dict | None:
    y = dict(x)
    if what == "kev":
        y["kev"] = True
    elif what == "exploitation":
        y["exploitation"] = min(3, max(1, x["exploitation"]) + 1)
    elif what == "automatable":
        y["automatable"] = 2
    elif what == "impact":
        y["impact"] = 2
    elif what == "vector":
        y["vector"] = min(3, x["vector"] + 1)
    elif what == "epss":
        y["epss"] = min(100, x["epss"] + 30)
    return None if y == x else y


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(cve_inputs, min_size=2, max_size=6), st.data())
def test_raising_a_risk_input_never_lowers_a_patchs_rank(inputs, data):
    who = data.draw(st.integers(0, len(inputs) - 1))
    what = data.draw(st.sampled_from(["kev", "exploitation", "automatable", "impact", "vector", "epss"]))
    raised = _raise(inputs[who], what)
    if raised is None:
        return
    pid = f"p{who:02d}"
    before = [p["id"] for p in plan(*_scenario(inputs))["patches"]]
    after = [p["id"] for p in plan(*_scenario([*inputs[:who], raised, *inputs[who + 1:]]))["patches"]]
    assert after.index(pid) <= before.index(pid), (what, inputs[who], raised)


def test_vectors_used_by_the_property_test_are_ordered():
    infos = [parse_cvss(v) for v in VECTORS]
    assert [i.score for i in infos] == sorted(i.score for i in infos)
    assert [i.automatable for i in infos] == sorted(i.automatable for i in infos)
    assert [i.total_impact for i in infos] == sorted(i.total_impact for i in infos)


# --------------------------------------------------------------------------- facts files and ASCII versions


def test_facts_file_is_read_strictly(tmp_path):
    good = tmp_path / "facts.json"
    good.write_text('{"nodes": [{"name": "match-0a", "component": "matching-engine", "version": "1.4.2"}]}')
    assert [n.version for n in _priority.load_facts_file(str(good))] == ["1.4.2"]
    dup = tmp_path / "dup.json"
    dup.write_text('{"nodes": [{"name": "m", "component": "matching-engine", "version": "1.4.2", "version": "9.9.9"}]}')
    with pytest.raises(_priority.PlanError, match=r"dup.json: duplicate key 'version'"):
        _priority.load_facts_file(str(dup))
    with pytest.raises(_priority.PlanError, match="is a character device, not a regular file"):
        _priority.load_facts_file("/dev/zero")
    with pytest.raises(_priority.PlanError, match="larger than the limit of 16 bytes"):
        _priority.load_facts_file(str(good), max_size=16)


@pytest.mark.parametrize(("version", "message"), [
    ("1.4.\u0662", "contains a non-ASCII character (U+0662 ARABIC-INDIC DIGIT TWO)"),
    ("1.4.2\u0663", "contains a non-ASCII character (U+0663"),
    ("1.4.2 ; reboot", "is not a dotted version"),
])
def test_node_versions_are_ascii(version, message):
    with pytest.raises(_priority.PlanError, match=re.escape(message)):
        _priority.nodes_from_facts([{"name": "m", "component": "matching-engine", "version": version}], "facts")


def test_node_markets_must_be_names():
    with pytest.raises(_priority.PlanError, match="markets 5 is not a list of names"):
        _priority.nodes_from_facts([{"name": "m", "component": "matching-engine", "version": "1.4.2",
                                     "markets": 5}], "facts")
