"""CycloneDX 1.6 SBOMs for the testbed's releases.

A release of the testbed node code stands for a real trading-system release, which ships on a
base image and links third-party code: OpenSSL, OpenSSH, xz/liblzma, zlib, libsecp256k1 (the
wallet's signer), CPython and a few Python packages. Each release's SBOM lists them as they would
be on Ubuntu 24.04 LTS (noble), by source-package purl, at the versions that release ships, so
exposure can be matched against real OSV records (Ubuntu publishes its OSV feed). Older releases
ship versions with real, published vulnerabilities (OpenSSH ``1:9.6p1-3ubuntu13``: CVE-2024-6387
"regreSSHion", fixed in ``1:9.6p1-3ubuntu13.3``); the releases that follow upgrade them. xz-utils
is noble's ``5.6.1+really5.4.5-1``: the name says 5.6.1, the code is 5.4.5, and the backdoor
(CVE-2024-3094) is not in it.

The document is deterministic (no timestamp; the serial number is derived from the component
and version), so a release's tarball stays byte-for-byte reproducible.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from packageurl import PackageURL

SBOM_FILE = "sbom.cdx.json"
_NAMESPACE = uuid.UUID("5b0f8a58-3f57-4d2b-9d0e-6c1d1f5c2a71")
_DISTRO = "ubuntu-24.04"

# (first release of the component that ships it, package, version), newest last per package.
# A release ships, per package, the version of the newest row whose first release <= its version.
# Ubuntu 24.04 LTS ("noble") source packages at versions noble shipped.
_DEB = {
    "matching-engine": [
        ("0", "glibc", "2.39-0ubuntu8"),
        ("0", "openssl", "3.0.13-0ubuntu3"),
        ("0", "openssh", "1:9.6p1-3ubuntu13"),
        ("0", "xz-utils", "5.6.1+really5.4.5-1"),
        ("0", "zlib", "1:1.3.dfsg-3.1ubuntu2"),
        ("0", "python3.12", "3.12.3-1"),
        ("0", "ca-certificates", "20240203"),
        ("1.4.3", "openssh", "1:9.6p1-3ubuntu13.3"),
        ("1.5.0", "openssl", "3.0.13-0ubuntu3.4"),
        ("1.5.0", "glibc", "2.39-0ubuntu8.3"),
    ],
    "wallet-signer": [
        ("0", "glibc", "2.39-0ubuntu8"),
        ("0", "openssl", "3.0.13-0ubuntu3"),
        ("0", "openssh", "1:9.6p1-3ubuntu13"),
        ("0", "xz-utils", "5.6.1+really5.4.5-1"),
        ("0", "zlib", "1:1.3.dfsg-3.1ubuntu2"),
        ("0", "libsecp256k1", "0.2.0-2"),
        ("0", "python3.12", "3.12.3-1"),
        ("0", "ca-certificates", "20240203"),
        ("2.3.1", "openssh", "1:9.6p1-3ubuntu13.3"),
        ("2.3.1", "openssl", "3.0.13-0ubuntu3.4"),
    ],
}
_PYPI = {
    "matching-engine": [("0", "pyyaml", "6.0.1"), ("0", "idna", "3.6"), ("1.5.0", "idna", "3.7")],
    "wallet-signer": [("0", "cryptography", "42.0.4"), ("0", "idna", "3.6"), ("2.3.1", "cryptography", "42.0.8")],
}


def version_key(version: str) -> tuple[int, ...]:
    """Sort key of a testbed release version: its first three numbers (``"1.4.10"`` > ``"1.4.9"``)."""
    return tuple(int(x) for x in re.findall(r"[0-9]+", version)[:3])


def _pick(rows: list[tuple[str, str, str]], version: str) -> dict[str, str]:
    chosen: dict[str, str] = {}
    for since, name, pkg_version in rows:
        if version_key(since) <= version_key(version):
            chosen[name] = pkg_version
    return chosen


def release_sbom(component: str, version: str) -> dict[str, Any]:
    """The CycloneDX 1.6 document of one testbed release."""
    components: list[dict[str, Any]] = [{
        "type": "operating-system", "name": "ubuntu", "version": "24.04",
        "bom-ref": "os:ubuntu@24.04",
    }]
    for name, pkg_version in sorted(_pick(_DEB[component], version).items()):
        purl = PackageURL(type="deb", namespace="ubuntu", name=name, version=pkg_version,
                          qualifiers={"arch": "source", "distro": _DISTRO}).to_string()
        components.append({"type": "library", "name": name, "version": pkg_version, "purl": purl,
                           "bom-ref": purl})
    for name, pkg_version in sorted(_pick(_PYPI[component], version).items()):
        purl = PackageURL(type="pypi", name=name, version=pkg_version).to_string()
        components.append({"type": "library", "name": name, "version": pkg_version, "purl": purl,
                           "bom-ref": purl})
    product = f"pkg:generic/exchangeops/{component}@{version}"
    return {
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "serialNumber": f"urn:uuid:{uuid.uuid5(_NAMESPACE, f'{component}@{version}')}",
        "version": 1,
        "metadata": {
            "component": {"type": "application", "name": component, "version": version, "purl": product,
                          "bom-ref": product, "supplier": {"name": "exchangeops testbed"}},
            "tools": {"components": [{"type": "application", "name": "exchangeops testbed release builder"}]},
        },
        "components": components,
        "dependencies": [{"ref": product, "dependsOn": [c["bom-ref"] for c in components]}],
    }


def sbom_bytes(component: str, version: str) -> bytes:
    return (json.dumps(release_sbom(component, version), indent=2, sort_keys=True) + "\n").encode()
