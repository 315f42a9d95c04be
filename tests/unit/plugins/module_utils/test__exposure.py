"""OSV range semantics (univers), ecosystems from purls, NVD CPE fallback, caching, and the plan's needs
mitigation / derived / flagged handling of an exposure document."""

from __future__ import annotations

import datetime as dt

import pytest
from ansible_collections.exchangeops.patching.plugins.module_utils import _exposure, _priority, _sbom
from ansible_collections.exchangeops.patching.plugins.module_utils._catalog import Patch
from ansible_collections.exchangeops.patching.plugins.module_utils._feeds import Intel, KevEntry


def comp(purl, cpe=None):
    c = {"type": "library", "name": purl.split("/")[-1].split("@")[0], "purl": purl}
    if cpe:
        c["cpe"] = cpe
    return _sbom.sbom_from_doc({"bomFormat": "CycloneDX", "specVersion": "1.6", "components": [c]}, "s").components[0]


def db(*affected, cve="CVE-2026-0001"):
    d = _exposure.OsvDb()
    d.add_doc({"vulns": [{"id": "OSV-1", "aliases": [cve], "affected": list(affected)}]}, "osv.json")
    return d


def hits(d, purl, nvd=None):
    return {c for c, _r, _s in _exposure.Matcher(d, nvd).component(comp(purl))}


@pytest.mark.parametrize(("events", "version", "expected"), [
    ([{"introduced": "1.0.0"}, {"fixed": "1.2.0"}], "1.1.9", True),
    ([{"introduced": "1.0.0"}, {"fixed": "1.2.0"}], "1.2.0", False),
    ([{"introduced": "1.0.0"}, {"fixed": "1.2.0"}], "0.9.0", False),
    ([{"introduced": "0"}, {"last_affected": "1.2.0"}], "1.2.0", True),
    ([{"introduced": "0"}, {"last_affected": "1.2.0"}], "1.2.1", False),
    ([{"introduced": "1.0.0"}], "99.0.0", True),
    ([{"introduced": "0"}], "0.0.1", True),
    ([{"introduced": "1.0.0"}, {"limit": "1.5.0"}], "1.4.0", True),
    ([{"introduced": "1.0.0"}, {"limit": "1.5.0"}], "1.5.0", False),
    # pairs given out of order (as PYSEC records do) are evaluated in version order
    ([{"introduced": "3.0.0"}, {"fixed": "3.1.0"}, {"introduced": "1.0.0"}, {"fixed": "1.1.0"}], "1.0.5", True),
    ([{"introduced": "3.0.0"}, {"fixed": "3.1.0"}, {"introduced": "1.0.0"}, {"fixed": "1.1.0"}], "2.0.0", False),
])
@pytest.mark.parametrize("rtype", ["ECOSYSTEM", "SEMVER"])
def test_osv_range_events(events, version, expected, rtype):
    d = db({"package": {"ecosystem": "npm", "name": "left-pad"}, "ranges": [{"type": rtype, "events": events}]})
    assert (hits(d, f"pkg:npm/left-pad@{version}") == {"CVE-2026-0001"}) is expected


def test_pypi_prerelease_and_versions_list():
    d = db({"package": {"ecosystem": "PyPI", "name": "Foo_Bar"},
            "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "2.0"}, {"fixed": "2.1"}]}],
            "versions": ["1.0"]})
    assert hits(d, "pkg:pypi/foo-bar@2.1rc1") == {"CVE-2026-0001"}  # 2.1rc1 < 2.1 in PEP 440
    assert hits(d, "pkg:pypi/foo.bar@1.0.0") == {"CVE-2026-0001"}  # listed 1.0 == 1.0.0
    assert hits(d, "pkg:pypi/foo-bar@2.1") == set()


def test_debian_release_must_match_and_codenames_map():
    d = db({"package": {"ecosystem": "Debian:12", "name": "openssh"},
            "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "1:9.2p1-2+deb12u3"}]}]},
           cve="CVE-2024-6387")
    assert hits(d, "pkg:deb/debian/openssh@1:9.2p1-2%2Bdeb12u2?distro=debian-12") == {"CVE-2024-6387"}
    assert hits(d, "pkg:deb/debian/openssh@1:9.2p1-2%2Bdeb12u2?distro=bookworm") == {"CVE-2024-6387"}
    assert hits(d, "pkg:deb/debian/openssh@1:9.2p1-2%2Bdeb12u3?distro=debian-12") == set()
    assert hits(d, "pkg:deb/debian/openssh@1:9.2p1-2%2Bdeb12u2?distro=debian-11") == set()
    assert hits(d, "pkg:generic/openssh@9.2p1") == set()


def test_osv_ecosystem_names():
    assert _exposure.osv_ecosystem("Ubuntu:Pro:22.04:LTS") == ("Ubuntu", "22.04")
    assert _exposure.osv_ecosystem("Alpine:v3.19") == ("Alpine", "v3.19")
    assert _exposure.osv_ecosystem("PyPI") == ("PyPI", None)


def _nvd(tmp_path, **match):
    import json
    config = {"nodes": [{"operator": "OR", "cpeMatch": [
        {"vulnerable": True, "criteria": "cpe:2.3:a:openbsd:openssh:*:*:*:*:*:*:*:*", **match}]}]}
    doc = {"format": "NVD_CVE", "version": "2.0",
           "vulnerabilities": [{"cve": {"id": "CVE-2023-9999", "configurations": [config]}}]}
    path = tmp_path / "nvd.json"
    path.write_text(json.dumps(doc))
    return _exposure.load_nvd(str(path))


def test_nvd_cpe_fallback_uses_upstream_version(tmp_path):
    nvd = _nvd(tmp_path, versionStartIncluding="8.5", versionEndExcluding="9.8")
    empty = _exposure.OsvDb()
    assert hits(empty, "pkg:deb/debian/openssh@1:9.2p1-2?distro=debian-12", nvd) == {"CVE-2023-9999"}
    assert hits(empty, "pkg:deb/debian/openssh@1:9.8p1-1?distro=debian-12", nvd) == set()
    assert hits(empty, "pkg:deb/debian/openssh@1:8.4p1-5?distro=debian-12", nvd) == set()
    # a CVE OSV describes is decided by OSV (distribution backports), never by the CPE range
    osv = db({"package": {"ecosystem": "Debian:12", "name": "openssh"},
              "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "1:9.2p1-1"}]}]},
             cve="CVE-2023-9999")
    assert hits(osv, "pkg:deb/debian/openssh@1:9.2p1-2?distro=debian-12", nvd) == set()


def test_answers_are_cached_per_package_version():
    d = db({"package": {"ecosystem": "npm", "name": "a"},
            "ranges": [{"type": "SEMVER", "events": [{"introduced": "0"}, {"fixed": "2.0.0"}]}]})
    m = _exposure.Matcher(d)
    first = m.component(comp("pkg:npm/a@1.0.0"))
    assert m.component(comp("pkg:npm/a@1.0.0")) is first


NOW = dt.datetime(2026, 11, 24, tzinfo=dt.UTC)


def _patch(fixes=("CVE-2026-31337",)):
    return Patch(id="matching-engine-1.4.3", component="matching-engine", version="1.4.3",
                 artifact_url="file:///x.tar.gz", sha256="0" * 64, signature="AA==", fixes=tuple(fixes),
                 restart="service", migration="none", change_files=1, change_lines=10,
                 released_at="2026-11-19T14:00:00Z", source="patches/me.yml")


def test_plan_needs_mitigation_derived_and_flagged():
    unfixed = {"nodes": ["me-a", "ws-0"], "unfixed_nodes": ["me-a", "ws-0"], "needs_mitigation": True,
               "packages": ["pkg:pypi/django@3.2.12"], "flagged_by": ["matching-engine-1.4.3"]}
    check = {"derived": ["CVE-2024-6387"], "flagged": [{"cve": "CVE-2026-31337", "reason": "x"}]}
    exposure = {"schema": 1, "cves": {
        "CVE-2024-6387": {"nodes": ["me-a"], "unfixed_nodes": [], "needs_mitigation": False, "packages": []},
        "CVE-2022-28346": unfixed}, "patches": {"matching-engine-1.4.3": check}}
    nodes = [_priority.Node("me-a", "matching-engine", "1.4.2", "very_high", "open"),
             _priority.Node("ws-0", "wallet-signer", "2.3.0", "very_high", "small")]
    entry = KevEntry("CVE-2022-28346", "2026-11-01", "2026-11-22", False, "kev.json", "2026.11.20")
    intel = Intel(advisories={}, kev={"CVE-2022-28346": entry}, epss={}, aliases={})
    plan = _priority.build_plan(intel, [_patch()], nodes, NOW, exposure)
    (p,) = plan["patches"]
    assert [(c["id"], c["derived"], c["flagged"]) for c in p["cves"]] == [
        ("CVE-2026-31337", False, True), ("CVE-2024-6387", True, False)]
    (m,) = plan["needs_mitigation"]
    assert m["cve"] == "CVE-2022-28346" and m["nodes"] == ["me-a", "ws-0"] and m["rank"] == 1
    # KEV + an open node: the same SSVC class and due date a patch would get
    same = _priority.decide_cve("CVE-2022-28346", intel, nodes, NOW)
    assert (m["class"], m["due"], m["overdue"]) == (same.ssvc_deployer, same.due, True)
    assert (m["class"], m["due"]) == ("immediate", "2026-11-04")
    assert _priority.build_plan(intel, [_patch()], nodes, NOW)["needs_mitigation"] == []
