"""Exposure on real OSV records (tests/fixtures/osv-real: regreSSHion, the xz backdoor, a Django SQL injection):
affected and not-affected versions, VEX honoured, derived and flagged fixes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ansible_collections.exchangeops.patching.plugins.module_utils import _catalog, _exposure, _sbom

from tests.exposure import fleet


@pytest.fixture(scope="module")
def osv():
    return _exposure.load_osv(fleet.OSV_REAL)


def comp(purl: str) -> _sbom.Component:
    return _sbom.sbom_from_doc(fleet.sbom("x", "1.0.0", [purl]), "t").components[0]


@pytest.mark.parametrize(("purl", "expected"), [
    # UBUNTU-CVE-2024-6387 (regreSSHion): noble fixed in 1:9.6p1-3ubuntu13.3, jammy in 1:8.9p1-3ubuntu0.10
    ("pkg:deb/ubuntu/openssh@1:9.6p1-3ubuntu13?distro=ubuntu-24.04", {"CVE-2024-6387"}),
    ("pkg:deb/ubuntu/openssh@1:9.6p1-3ubuntu13.2?distro=noble", {"CVE-2024-6387"}),
    ("pkg:deb/ubuntu/openssh@1:9.6p1-3ubuntu13.3?distro=noble", set()),
    ("pkg:deb/ubuntu/openssh@1:9.7p1-7ubuntu4?distro=ubuntu-24.04", set()),
    ("pkg:deb/ubuntu/openssh@1:8.9p1-3ubuntu0.7?distro=jammy", {"CVE-2024-6387"}),
    ("pkg:deb/ubuntu/openssh@1:8.9p1-3ubuntu0.10?distro=ubuntu-22.04", set()),
    # epoch matters: 9.6p1-3ubuntu13 without the 1: epoch sorts below every 1: version
    ("pkg:deb/ubuntu/openssh@9.9p1-1?distro=noble", {"CVE-2024-6387"}),
    # DEBIAN-CVE-2024-3094 (xz backdoor): only Debian 13/14 entries, fixed in 5.6.1+really5.4.5-1
    ("pkg:deb/debian/xz-utils@5.6.0-0.2?distro=debian-13", {"CVE-2024-3094"}),
    ("pkg:deb/debian/xz-utils@5.6.1-1?distro=trixie", {"CVE-2024-3094"}),
    ("pkg:deb/debian/xz-utils@5.6.1%2Breally5.4.5-1?distro=debian-13", set()),
    ("pkg:deb/debian/xz-utils@5.4.1-0.2?distro=debian-12", set()),  # bookworm never shipped 5.6
    ("pkg:deb/ubuntu/xz-utils@5.6.0-0.2?distro=noble", set()),  # another ecosystem
    # PYSEC-2022-190 (Django): 2.2 <= v < 2.2.28, 3.2 <= v < 3.2.13, 4.0 <= v < 4.0.4; names normalised
    ("pkg:pypi/Django@3.2.12", {"CVE-2022-28346"}),
    ("pkg:pypi/django@3.2.13", set()),
    ("pkg:pypi/django@4.0.3", {"CVE-2022-28346"}),
    ("pkg:pypi/django@4.0.4", set()),
    ("pkg:pypi/django@2.2.27", {"CVE-2022-28346"}),
    ("pkg:pypi/django@3.1.14", set()),
    ("pkg:pypi/django@4.1", set()),
])
def test_real_osv_affected_and_not_affected(osv, purl, expected):
    matcher = _exposure.Matcher(osv)
    assert {cve for cve, _rec, _src in matcher.component(comp(purl))} == expected
    assert matcher.warnings == []


def test_withdrawn_record_is_ignored(osv):
    rec = json.loads(Path(fleet.OSV_REAL[0]).read_text())
    rec["withdrawn"] = "2025-07-18T16:56:17Z"
    db = _exposure.OsvDb()
    db.add_doc({"vulns": [rec]}, "withdrawn.json")
    assert db.withdrawn == 1 and db.index == {}


def _doc(tmp_path, vex=()):
    paths = fleet.build(tmp_path)
    nodes, overrides = _exposure.load_facts(str(paths["facts"]))
    patches = _exposure.patch_sboms(_catalog.load_catalog(str(paths["catalog"])), nodes, overrides,
                                    _catalog.version_key)
    statements = [st for doc in vex for st in _sbom.vex_from_doc(doc, "vex.json")]
    return _exposure.compute(nodes, _exposure.Matcher(_exposure.load_osv(fleet.OSV_REAL)), statements, patches,
                             "2026-11-24T00:00:00Z")


def test_fleet_exposure_fixed_by_derived_and_flagged(tmp_path):
    doc = _doc(tmp_path)
    assert doc["schema"] == 1 and doc["generated_at"] == "2026-11-24T00:00:00Z"
    cves = doc["cves"]
    assert set(cves) == {"CVE-2024-6387", "CVE-2024-3094", "CVE-2022-28346"}
    ssh = cves["CVE-2024-6387"]
    assert ssh["nodes"] == ["me-s0-a", "me-s0-b"]  # ws-0 runs the fixed openssh
    assert ssh["packages"] == [fleet.OPENSSH_VULN]
    assert ssh["records"] == ["UBUNTU-CVE-2024-6387"]
    assert ssh["fixed_by"] == ["matching-engine-1.4.3"] and not ssh["needs_mitigation"]
    assert cves["CVE-2024-3094"]["packages"] == [fleet.XZ_VULN]  # found in a nested component
    django = cves["CVE-2022-28346"]
    assert django["fixed_by"] == [] and django["flagged_by"] == ["matching-engine-1.4.3"]
    assert django["needs_mitigation"] and django["unfixed_nodes"] == ["me-s0-a", "me-s0-b"]
    patch = doc["patches"]["matching-engine-1.4.3"]
    assert patch["derived"] == ["CVE-2024-3094", "CVE-2024-6387"]
    assert patch["verified"] == []
    assert [f["cve"] for f in patch["flagged"]] == ["CVE-2022-28346"]
    assert "does not change pkg:pypi/django@3.2.12" in patch["flagged"][0]["reason"]
    assert [u["cve"] for u in patch["unverified"]] == ["CVE-2026-31337"]
    assert patch["from"][0]["nodes"] == ["me-s0-a", "me-s0-b"]
    assert {"from": fleet.OPENSSH_VULN, "to": fleet.OPENSSH_FIXED} in patch["from"][0]["diff"]["changed"]
    assert doc["nodes"]["ws-0"]["cves"] == []


def test_vex_not_affected_is_honoured_and_shown(tmp_path):
    doc = _doc(tmp_path, vex=[fleet.OPENVEX, fleet.CDX_VEX])
    assert "CVE-2022-28346" not in doc["nodes"]["me-s0-a"]["cves"]
    django = doc["cves"]["CVE-2022-28346"]
    assert django["nodes"] == [] and not django["needs_mitigation"]
    assert [(a["node"], a["justification"]) for a in django["not_affected"]] == [
        ("me-s0-a", "vulnerable_code_not_in_execute_path"), ("me-s0-b", "vulnerable_code_not_in_execute_path")]
    ssh = doc["cves"]["CVE-2024-6387"]
    assert ssh["nodes"] == [] and ssh["not_affected"][0]["justification"] == "protected_at_perimeter"
    # a statement about another product version does not apply
    other = json.loads(json.dumps(fleet.OPENVEX))
    other["statements"][0]["products"][0]["@id"] = "pkg:generic/exchangeops/matching-engine@1.4.1"
    assert _doc(tmp_path / "o", vex=[other])["cves"]["CVE-2022-28346"]["nodes"] == ["me-s0-a", "me-s0-b"]


def test_a_fix_the_patch_sbom_shows_is_verified(tmp_path):
    paths = fleet.build(tmp_path)
    entry = paths["catalog"] / "matching-engine-1.4.3.yml"
    entry.write_text(entry.read_text().replace("  - CVE-2022-28346\n", "  - CVE-2024-6387\n"))
    nodes, overrides = _exposure.load_facts(str(paths["facts"]))
    patches = _exposure.patch_sboms(_catalog.load_catalog(str(paths["catalog"])), nodes, overrides,
                                    _catalog.version_key)
    doc = _exposure.compute(nodes, _exposure.Matcher(_exposure.load_osv(fleet.OSV_REAL)), [], patches, None)
    patch = doc["patches"]["matching-engine-1.4.3"]
    assert patch["verified"] == ["CVE-2024-6387"] and patch["derived"] == ["CVE-2024-3094"]
    assert patch["flagged"] == []
