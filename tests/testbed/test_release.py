"""Release builder: reproducible artifacts, checksums, signatures, catalog entries, bad input."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from testbed.release import ReleaseError, build_release, ensure_signing_key, verify


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    return {"out": tmp_path / "releases", "keys": tmp_path / "keys", "catalog": tmp_path / "catalog"}


def _build(dirs: dict[str, Path], version: str = "1.4.3", **kw):
    return build_release(dirs["out"], dirs["keys"], dirs["catalog"], kw.pop("component", "matching-engine"),
                         version, **kw)


def test_artifact_checksum_and_signature_verify(dirs):
    built = _build(dirs, fixes=["CVE-2026-1111"])
    blob = Path(built.artifact).read_bytes()
    assert hashlib.sha256(blob).hexdigest() == built.sha256
    assert Path(built.artifact + ".sha256").read_text().split()[0] == built.sha256
    pub = ensure_signing_key(dirs["keys"])[1].read_bytes()
    assert verify(pub, blob, built.signature)
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    assert not verify(pub, tampered, built.signature)
    other_key_dir = dirs["keys"].parent / "other-keys"
    other_pub = ensure_signing_key(other_key_dir)[1].read_bytes()
    assert not verify(other_pub, blob, built.signature)


def test_private_key_is_owner_only(dirs):
    priv, pub = ensure_signing_key(dirs["keys"])
    assert priv.stat().st_mode & 0o077 == 0
    assert b"PRIVATE" not in pub.read_bytes()


def test_tarball_is_reproducible_and_holds_the_release(dirs):
    first = Path(_build(dirs).artifact).read_bytes()
    second = Path(_build(dirs).artifact).read_bytes()
    assert first == second
    with tarfile.open(_build(dirs, fault="crash").artifact) as tar:
        names = tar.getnames()
        manifest = json.load(tar.extractfile("RELEASE.json"))
    assert {"bin/exchnode", "exchnode/common.py", "RELEASE.json"} <= set(names)
    sbom_digest = hashlib.sha256(Path(dirs["out"] / "matching-engine-1.4.3.cdx.json").read_bytes()).hexdigest()
    assert manifest == {"component": "matching-engine", "version": "1.4.3", "fault": "crash", "fixes": [],
                        "migration": "none", "restart": "service", "sbom_sha256": sbom_digest}
    assert "sbom.cdx.json" in names
    assert not any(n.startswith(("data", "/")) or ".." in n for n in names)


def test_catalog_entry_has_every_field(dirs):
    _build(dirs, version="1.4.2")
    built = _build(dirs, version="1.4.3", fixes=["CVE-2026-1111", "CVE-2026-2222"], migration="forward_compatible")
    entry = yaml.safe_load(Path(built.catalog_entry).read_text())
    assert entry["id"] == "matching-engine-1.4.3"
    assert entry["artifact"]["sha256"] == built.sha256
    assert entry["artifact"]["signature"] == built.signature
    assert entry["artifact"]["url"] == Path(built.artifact).as_uri()
    assert entry["fixes"] == ["CVE-2026-1111", "CVE-2026-2222"]
    assert entry["restart"] == "service" and entry["migration"] == "forward_compatible"
    # Against 1.4.2 only the manifest differs: one file, its version, fixes, migration and SBOM digest lines
    # (the SBOM is not the release's code; what it changed is for exposure to judge).
    assert entry["change_size"] == {"files": 1, "lines": 11}
    assert entry["released_at"].endswith("Z")


def test_every_release_carries_its_sbom_bound_to_the_signed_manifest(dirs):
    """sbom.cdx.json is in the signed tarball and beside it; the catalog names it and the manifest signs its digest."""
    old, new = _build(dirs, version="1.4.2"), _build(dirs, version="1.4.3")
    entry = yaml.safe_load(Path(new.catalog_entry).read_text())
    beside = dirs["out"] / "matching-engine-1.4.3.cdx.json"
    with tarfile.open(new.artifact) as tar:
        inside = tar.extractfile("sbom.cdx.json").read()
        manifest = json.load(tar.extractfile("RELEASE.json"))
    assert inside == beside.read_bytes()
    assert entry["sbom"] == {"url": beside.as_uri(), "sha256": hashlib.sha256(inside).hexdigest()}
    assert manifest["sbom_sha256"] == entry["sbom"]["sha256"]
    doc = json.loads(inside)
    assert (doc["bomFormat"], doc["specVersion"]) == ("CycloneDX", "1.6")
    assert doc["metadata"]["component"]["purl"] == "pkg:generic/exchangeops/matching-engine@1.4.3"
    purls = {c["name"]: c["purl"] for c in doc["components"] if "purl" in c}
    assert purls["openssh"] == "pkg:deb/ubuntu/openssh@1:9.6p1-3ubuntu13.3?arch=source&distro=ubuntu-24.04"
    old_doc = json.loads((dirs["out"] / "matching-engine-1.4.2.cdx.json").read_text())
    old_versions = {c["name"]: c.get("version") for c in old_doc["components"]}
    assert old_versions["openssh"] == "1:9.6p1-3ubuntu13"  # CVE-2024-6387 (regreSSHion), fixed in ...ubuntu13.3
    assert old.sha256 != new.sha256
    assert {"openssl", "xz-utils", "zlib", "python3.12"} <= set(old_versions)


def test_signed_manifest_carries_the_catalog_facts(dirs):
    """RELEASE.json is inside the signed tarball: what the catalog states about the release is signed too."""
    built = _build(dirs, version="1.4.3", fixes=["CVE-2026-2222", "CVE-2026-1111"], restart="system",
                   migration="forward_compatible")
    with tarfile.open(built.artifact) as tar:
        manifest = json.load(tar.extractfile("RELEASE.json"))
    entry = yaml.safe_load(Path(built.catalog_entry).read_text())
    facts = ("component", "version", "fixes", "migration", "restart")
    assert {k: manifest[k] for k in facts} == {
        "component": "matching-engine", "version": "1.4.3", "fixes": ["CVE-2026-1111", "CVE-2026-2222"],
        "migration": "forward_compatible", "restart": "system"}
    assert {k: entry[k] for k in facts} == {k: manifest[k] for k in facts}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"component": "order-gateway"}, "unknown component 'order-gateway'"),
        ({"version": "latest"}, "version 'latest' is not a dotted version"),
        ({"fault": "ledger-mismatch"}, "fault 'ledger-mismatch' does not exist for matching-engine"),
        ({"component": "wallet-signer", "fault": "state-divergence"}, "does not exist for wallet-signer"),
        ({"fixes": ["CVE-26-1"]}, "is not a CVE ID"),
        ({"fixes": ["CVE-2026-\u0663\u0661\u0663\u0663\u0667"]}, "is not a CVE ID"),
        ({"fixes": ["CVE-2026-1111", "CVE-2026-1111"]}, "CVE-2026-1111 is listed twice"),
        ({"restart": "reboot"}, "restart 'reboot'"),
        ({"migration": "maybe"}, "migration 'maybe'"),
        ({"patch_id": "../evil"}, "patch id '../evil'"),
    ],
)
def test_bad_input_is_refused_and_writes_nothing(dirs, kwargs, message):
    version = kwargs.pop("version", "1.4.3")
    with pytest.raises(ReleaseError, match=message):
        _build(dirs, version=version, **kwargs)
    assert not dirs["out"].exists() or not list(dirs["out"].glob("*.tar.gz"))
    assert not dirs["catalog"].exists() or not list(dirs["catalog"].iterdir())


def test_cli_release_json_and_exit_codes(tmp_path):
    env = {"EXCHPATCH_TESTBED_DIR": str(tmp_path / "tb"), "PATH": "/usr/bin:/bin"}
    cmd = [sys.executable, "-m", "exchpatch", "testbed", "release", "--component", "wallet-signer",
           "--version", "2.3.1", "--fault", "ledger-mismatch", "--json"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert set(doc) == {"id", "artifact", "sha256", "catalog_entry"}
    assert Path(doc["catalog_entry"]).parent == tmp_path / "tb" / "catalog"

    bad = [*cmd[:-3], "--fault", "state-divergence", "--json"]
    res = subprocess.run(bad, capture_output=True, text=True, env=env, check=False)
    assert res.returncode == 2
    assert "state-divergence" in json.loads(res.stdout)["error"]
