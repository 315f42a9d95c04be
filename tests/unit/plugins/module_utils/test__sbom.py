"""CycloneDX SBOMs: flattening, purls, diff; VEX coverage of components."""

from __future__ import annotations

import pytest
from ansible_collections.exchangeops.patching.plugins.module_utils import _sbom


def bom(components, spec="1.6", subject=None):
    doc = {"bomFormat": "CycloneDX", "specVersion": spec, "serialNumber": "urn:uuid:1111", "components": components}
    if subject:
        doc["metadata"] = {"component": subject}
    return _sbom.sbom_from_doc(doc, "sbom.json")


def lib(purl, **extra):
    name = purl.split("/")[-1].split("@")[0]
    return {"type": "library", "name": name, "purl": purl, **extra}


@pytest.mark.parametrize("spec", ["1.4", "1.5", "1.6"])
def test_nested_components_are_flattened_with_parsed_purls(spec):
    s = bom([lib("pkg:deb/debian/zlib@1.2.13?distro=debian-12",
                 components=[lib("pkg:deb/debian/xz-utils@5.4.1-0.2?distro=debian-12")])], spec)
    assert [c.pname for c in s.components] == ["zlib", "xz-utils"]
    xz = s.components[1]
    assert (xz.ptype, xz.namespace, xz.pversion) == ("deb", "debian", "5.4.1-0.2")
    assert dict(xz.qualifiers) == {"distro": "debian-12"}
    assert xz.version == "5.4.1-0.2" and xz.package == ("deb", "debian", "xz-utils", "debian-12")


def test_digest_is_the_same_for_the_same_document():
    assert bom([lib("pkg:pypi/a@1")]).digest == bom([lib("pkg:pypi/a@1")]).digest
    assert bom([lib("pkg:pypi/a@1")]).digest != bom([lib("pkg:pypi/a@2")]).digest


def test_diff_added_removed_changed():
    old = bom([lib("pkg:pypi/a@1"), lib("pkg:pypi/b@1"), lib("pkg:deb/debian/c@1?distro=debian-12")])
    new = bom([lib("pkg:pypi/a@2"), lib("pkg:deb/debian/c@1?distro=debian-12"), lib("pkg:pypi/d@1")])
    d = _sbom.diff(old, new)
    assert [(o.purl, n.purl) for o, n in d.changed] == [("pkg:pypi/a@1", "pkg:pypi/a@2")]
    assert [c.purl for c in d.removed] == ["pkg:pypi/b@1"]
    assert [c.purl for c in d.added] == ["pkg:pypi/d@1"]
    assert d.changes(old.components[0]) and d.changes(old.components[1]) and not d.changes(old.components[2])
    assert _sbom.diff(old, old) == _sbom.SbomDiff((), (), ())


def test_purl_and_ref_coverage():
    s = bom([lib("pkg:deb/debian/openssh@1:9.2p1-2?distro=debian-12", **{"bom-ref": "ssh"})])
    ssh = s.components[0]
    assert _sbom.purl_covers("pkg:deb/debian/openssh", ssh)
    assert _sbom.purl_covers("pkg:deb/debian/openssh@1:9.2p1-2?distro=debian-12", ssh)
    assert not _sbom.purl_covers("pkg:deb/debian/openssh@1:9.2p1-3", ssh)
    assert not _sbom.purl_covers("pkg:deb/debian/openssh?distro=debian-11", ssh)
    assert not _sbom.purl_covers("pkg:deb/ubuntu/openssh", ssh)
    assert _sbom.ref_covers("ssh", ssh, s) and not _sbom.ref_covers("other", ssh, s)
    assert _sbom.ref_covers("urn:cdx:1111/1#ssh", ssh, s) and not _sbom.ref_covers("urn:cdx:2222/1#ssh", ssh, s)


def test_openvex_v0_0_shape_and_cyclonedx_vex():
    old_openvex = {"@context": "https://openvex.dev/ns", "statements": [
        {"vulnerability": "CVE-2024-6387", "products": ["pkg:deb/debian/openssh"], "status": "not_affected",
         "impact_statement": "sshd is not installed on signer hosts"}]}
    (st,) = _sbom.vex_from_doc(old_openvex, "v.json")
    assert st.not_affected and st.why() == "sshd is not installed on signer hosts" and st.format == "openvex"
    cdx = {"bomFormat": "CycloneDX", "specVersion": "1.5", "vulnerabilities": [
        {"id": "cve-2024-3094", "analysis": {"state": "exploitable"}, "affects": [{"ref": "x"}]}]}
    (st,) = _sbom.vex_from_doc(cdx, "c.json")
    assert st.vulnerability == "CVE-2024-3094" and not st.not_affected
