"""Hostile and malformed SBOM, VEX and OSV input: one clear error naming the file and the field."""

from __future__ import annotations

import json
import os

import pytest
from ansible_collections.exchangeops.patching.plugins.module_utils import _exposure, _sbom
from ansible_collections.exchangeops.patching.plugins.module_utils._errors import InputError

from tests.exposure import fleet


def _sbom_with(**change):
    doc = json.loads(json.dumps(fleet.ME_142))
    doc.update(change)
    return doc


BAD_SBOMS = {
    "SPDX, not CycloneDX": ({"spdxVersion": "SPDX-2.3"}, "bomFormat"),
    "old spec": (_sbom_with(specVersion="1.2"), "specVersion"),
    "components not a list": (_sbom_with(components={"a": 1}), "components"),
    "component without name": (_sbom_with(components=[{"type": "library", "purl": "pkg:pypi/x@1"}]),
                               "components[0].name"),
    "bad purl": (_sbom_with(components=[{"type": "library", "name": "x", "purl": "npm:left-pad@1"}]),
                 "components[0].purl"),
    "purl and version disagree": (
        _sbom_with(components=[{"type": "library", "name": "x", "version": "2", "purl": "pkg:pypi/x@1"}]),
        "components[0].purl"),
    "nested garbage": (_sbom_with(components=[{"type": "library", "name": "x", "components": [7]}]),
                       "components[0].components[0]"),
    "duplicate bom-ref": (_sbom_with(components=[{"type": "library", "name": "a", "bom-ref": "r"},
                                                 {"type": "library", "name": "b", "bom-ref": "r"}]),
                          "components[1].bom-ref"),
    "not an object": ([1, 2], None),
}


@pytest.mark.parametrize("case", sorted(BAD_SBOMS))
def test_bad_sbom_names_file_and_field(tmp_path, case):
    doc, field = BAD_SBOMS[case]
    path = tmp_path / "bad.cdx.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(_sbom.SbomError) as e:
        _sbom.load_sbom(str(path))
    assert e.value.path == str(path) and e.value.record == field and e.value.fix


@pytest.mark.parametrize("text", ['{"bomFormat": "CycloneDX", "bomFormat": "x"}', "[" * 200 + "]" * 200,
                                  '{"bomFormat": NaN}', "\xff\xfe"])
def test_strict_json_refused(tmp_path, text):
    path = tmp_path / "x.json"
    path.write_bytes(text.encode("utf-8", "surrogateescape") if text != "\xff\xfe" else b"\xff\xfe{")
    with pytest.raises(InputError) as e:
        _sbom.load_sbom(str(path))
    assert str(path) in str(e.value)


def test_fifo_and_oversize_refused_unread(tmp_path):
    fifo = tmp_path / "sbom.fifo"
    os.mkfifo(fifo)
    with pytest.raises(_sbom.SbomError, match="FIFO"):
        _sbom.load_sbom(str(fifo))
    big = tmp_path / "big.json"
    big.write_text(json.dumps(fleet.ME_142))
    with pytest.raises(_sbom.SbomError, match="larger than the limit"):
        _sbom.load_sbom(str(big), max_size=100)


BAD_VEX = {
    "openvex not_affected without why": (
        {"@context": "https://openvex.dev/ns/v0.2.0", "statements": [
            {"vulnerability": {"name": "CVE-2024-6387"}, "products": [{"@id": "pkg:pypi/x"}],
             "status": "not_affected"}]}, "statements[0]"),
    "openvex unknown status": (
        {"@context": "https://openvex.dev/ns/v0.2.0", "statements": [
            {"vulnerability": {"name": "CVE-2024-6387"}, "products": [{"@id": "pkg:pypi/x"}],
             "status": "fine"}]}, "statements[0].status"),
    "openvex bad justification": (
        {"@context": "https://openvex.dev/ns/v0.2.0", "statements": [
            {"vulnerability": {"name": "CVE-2024-6387"}, "products": [{"@id": "pkg:pypi/x"}],
             "status": "not_affected", "justification": "trust me"}]}, "statements[0].justification"),
    "openvex bad product purl": (
        {"@context": "https://openvex.dev/ns/v0.2.0", "statements": [
            {"vulnerability": {"name": "CVE-2024-6387"}, "products": [{"@id": "pkg:"}],
             "status": "affected"}]}, "statements[0].products[0]"),
    "cyclonedx not_affected without justification": (
        {"bomFormat": "CycloneDX", "specVersion": "1.6", "vulnerabilities": [
            {"id": "CVE-2024-6387", "analysis": {"state": "not_affected"}, "affects": [{"ref": "x"}]}]},
        "vulnerabilities[0].analysis"),
    "cyclonedx no affects": (
        {"bomFormat": "CycloneDX", "specVersion": "1.6", "vulnerabilities": [
            {"id": "CVE-2024-6387", "analysis": {"state": "exploitable"}}]}, "vulnerabilities[0].affects"),
    "cyclonedx bad id": (
        {"bomFormat": "CycloneDX", "specVersion": "1.6", "vulnerabilities": [
            {"id": "<script>", "analysis": {"state": "exploitable"}, "affects": [{"ref": "x"}]}]},
        "vulnerabilities[0].id"),
    "neither": ({"hello": "world"}, None),
}


@pytest.mark.parametrize("case", sorted(BAD_VEX))
def test_bad_vex_names_field(tmp_path, case):
    doc, field = BAD_VEX[case]
    path = tmp_path / "vex.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(_sbom.SbomError) as e:
        _sbom.load_vex(str(path))
    assert e.value.path == str(path) and e.value.record == field


def _osv(**affected):
    return {"id": "OSV-TEST-1", "aliases": ["CVE-2026-0001"],
            "affected": [{"package": {"ecosystem": "PyPI", "name": "x"}, **affected}]}


BAD_OSV = {
    "record without id": ({"vulns": [{"affected": []}]}, "vulns[0]"),
    "affected not a list": ({"vulns": [{"id": "OSV-1", "affected": {}}]}, "OSV-1"),
    "package without name": ({"vulns": [{"id": "OSV-1", "affected": [{"package": {"ecosystem": "PyPI"}}]}]},
                             "OSV-1 affected[0].package"),
    "event with two keys": ({"vulns": [_osv(ranges=[{"type": "ECOSYSTEM",
                                                     "events": [{"introduced": "0", "fixed": "1"}]}])]},
                            "OSV-TEST-1 affected[0].ranges[0].events[0]"),
    "unknown range type": ({"vulns": [_osv(ranges=[{"type": "DATE", "events": [{"introduced": "0"}]}])]},
                           "OSV-TEST-1 affected[0].ranges[0].type"),
    "versions not strings": ({"vulns": [_osv(versions=[1, 2])]}, "OSV-TEST-1 affected[0]"),
    "unknown shape": ({"hello": 1}, None),
}


@pytest.mark.parametrize("case", sorted(BAD_OSV))
def test_bad_osv_names_record(tmp_path, case):
    doc, record = BAD_OSV[case]
    path = tmp_path / "osv.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(_exposure.ExposureError) as e:
        _exposure.load_osv([str(path)])
    assert e.value.path == str(path) and e.value.record == record


def test_unparsable_versions_are_warned_not_dropped(tmp_path):
    db = _exposure.OsvDb()
    events = [{"introduced": "0"}, {"fixed": "not a version!"}]
    db.add_doc({"vulns": [_osv(ranges=[{"type": "ECOSYSTEM", "events": events}])]}, "o")
    matcher = _exposure.Matcher(db)
    comp = _sbom.sbom_from_doc(fleet.sbom("a", "1.0.0", ["pkg:pypi/x@1.0"]), "s").components[0]
    assert matcher.component(comp) == ()
    assert any("not a PyPI version" in w for w in matcher.warnings)
