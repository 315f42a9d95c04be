"""A small fleet for exposure tests: release SBOMs, a facts file, a catalog, VEX documents, built in a folder.

The releases mirror the testbed's (Debian 12 / Ubuntu 24.04 packages by purl plus PyPI ones):

* matching-engine 1.4.2 ships openssh 1:9.6p1-3ubuntu13 (vulnerable to CVE-2024-6387 per UBUNTU-CVE-2024-6387),
  xz-utils 5.6.0-0.2 on Debian 13 (CVE-2024-3094 per DEBIAN-CVE-2024-3094) and Django 3.2.12 (CVE-2022-28346);
* matching-engine 1.4.3 (the patch) moves openssh to 1:9.6p1-3ubuntu13.3 and xz-utils to 5.6.1+really5.4.5-1
  but keeps Django 3.2.12; its catalog entry claims CVE-2022-28346 (flagged: Django unchanged) and
  CVE-2026-31337 (first-party: unverified), and does not list CVE-2024-6387 or CVE-2024-3094 (derived);
* wallet-signer 2.3.0 ships openssh 1:9.6p1-3ubuntu13.3 and xz-utils 5.4.1-0.2 on Debian 12: not affected.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OSV_REAL = sorted(str(p) for p in (REPO / "tests" / "fixtures" / "osv-real").glob("*.json"))
OPENSSH_VULN = "pkg:deb/ubuntu/openssh@1:9.6p1-3ubuntu13?distro=ubuntu-24.04"
OPENSSH_FIXED = "pkg:deb/ubuntu/openssh@1:9.6p1-3ubuntu13.3?distro=ubuntu-24.04"
XZ_VULN = "pkg:deb/debian/xz-utils@5.6.0-0.2?distro=debian-13"
XZ_FIXED = "pkg:deb/debian/xz-utils@5.6.1%2Breally5.4.5-1?distro=debian-13"
XZ_BOOKWORM = "pkg:deb/debian/xz-utils@5.4.1-0.2?distro=debian-12"
DJANGO_VULN = "pkg:pypi/django@3.2.12"
ZLIB = "pkg:deb/debian/zlib@1:1.2.13.dfsg-1?distro=debian-12"


def component(purl: str, nested: list | None = None) -> dict:
    name = purl.split("/")[-1].split("@")[0]
    version = purl.split("@")[1].split("?")[0].replace("%2B", "+")
    comp = {"type": "library", "name": name, "version": version, "purl": purl, "bom-ref": purl}
    if nested:
        comp["components"] = [component(p) for p in nested]
    return comp


def sbom(app: str, version: str, purls: list[str], nested: dict | None = None) -> dict:
    return {
        "bomFormat": "CycloneDX", "specVersion": "1.6", "version": 1,
        "serialNumber": f"urn:uuid:00000000-0000-4000-8000-{version.replace('.', '').zfill(12)}",
        "metadata": {"timestamp": "2026-11-20T09:00:00Z", "component": {
            "type": "application", "name": app, "version": version,
            "purl": f"pkg:generic/exchangeops/{app}@{version}", "bom-ref": f"{app}@{version}"}},
        "components": [component(p, (nested or {}).get(p)) for p in purls],
    }


ME_142 = sbom("matching-engine", "1.4.2", [OPENSSH_VULN, ZLIB, DJANGO_VULN], nested={ZLIB: [XZ_VULN]})
ME_143 = sbom("matching-engine", "1.4.3", [OPENSSH_FIXED, ZLIB, DJANGO_VULN], nested={ZLIB: [XZ_FIXED]})
WS_230 = sbom("wallet-signer", "2.3.0", [OPENSSH_FIXED, XZ_BOOKWORM, ZLIB])

CATALOG_ENTRY = """---
id: matching-engine-1.4.3
component: matching-engine
version: "1.4.3"
artifact:
  url: "file:///nonexistent/matching-engine-1.4.3.tar.gz"
  sha256: "b29f1613daf7698c087996e0bfdaf222c9af197c01b115408a4df48df3c2b701"
  signature: "x/ZPSl2MKHMOdx3aKQUIdMMPvJFUMEtmQ0IxM9gzcJ7CcMxgd3liIRDlxzlVsxlhxLe3nqMVxQq4v45Gk5acTQ=="
sbom:
  url: "file://{sbom}"
  sha256: "{sha}"
fixes:
  - CVE-2022-28346
  - CVE-2026-31337
restart: service
migration: none
change_size:
  files: 2
  lines: 14
released_at: "2026-11-19T14:00:00Z"
"""


def build(folder: Path) -> dict[str, Path]:
    """SBOM files, facts.json, catalog/ in ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, doc in (("matching-engine-1.4.2", ME_142), ("matching-engine-1.4.3", ME_143),
                      ("wallet-signer-2.3.0", WS_230)):
        paths[name] = folder / f"{name}.cdx.json"
        paths[name].write_text(json.dumps(doc, indent=2))
    me = {"component": "matching-engine", "version": "1.4.2", "sbom": "matching-engine-1.4.2.cdx.json"}
    facts = {"nodes": [
        {"name": "me-s0-a", **me}, {"name": "me-s0-b", **me},
        {"name": "ws-0", "component": "wallet-signer", "version": "2.3.0", "sbom": "wallet-signer-2.3.0.cdx.json"},
    ]}
    paths["facts"] = folder / "facts.json"
    paths["facts"].write_text(json.dumps(facts))
    catalog = folder / "catalog"
    catalog.mkdir(exist_ok=True)
    sha = hashlib.sha256(paths["matching-engine-1.4.3"].read_bytes()).hexdigest()
    (catalog / "matching-engine-1.4.3.yml").write_text(
        CATALOG_ENTRY.replace("{sbom}", str(paths["matching-engine-1.4.3"])).replace("{sha}", sha))
    paths["catalog"] = catalog
    return paths


OPENVEX = {
    "@context": "https://openvex.dev/ns/v0.2.0", "@id": "https://exchangeops.example/vex/2026-001",
    "author": "exchangeops security", "timestamp": "2026-11-21T00:00:00Z", "version": 1,
    "statements": [{
        "vulnerability": {"name": "CVE-2022-28346"},
        "products": [{"@id": "pkg:generic/exchangeops/matching-engine@1.4.2",
                      "subcomponents": [{"@id": "pkg:pypi/django"}]}],
        "status": "not_affected", "justification": "vulnerable_code_not_in_execute_path",
        "impact_statement": "the admin UI that uses QuerySet.annotate is not deployed",
    }],
}

CDX_VEX = {
    "bomFormat": "CycloneDX", "specVersion": "1.6", "version": 1,
    "vulnerabilities": [{
        "id": "CVE-2024-6387",
        "analysis": {"state": "not_affected", "justification": "protected_at_perimeter",
                     "detail": "sshd listens on the management VLAN only"},
        "affects": [{"ref": "pkg:deb/ubuntu/openssh@1:9.6p1-3ubuntu13?distro=ubuntu-24.04"}],
    }],
}
