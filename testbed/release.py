"""Release builder: real, signed tarballs of the testbed node code, and their catalog entries.

A release is the ``exchnode`` package, a ``bin/exchnode`` launcher, its CycloneDX SBOM
(``sbom.cdx.json``, see :mod:`testbed.sbom`; also written beside the tarball) and ``RELEASE.json``
(component, version, the CVEs it fixes, migration and restart scope, fault, the SBOM's sha256). ``RELEASE.json`` is
inside the signed tarball, so those facts are signed: preflight refuses a catalog entry that
states anything else. Faulty releases are the same code told by their manifest
to misbehave, so the fault is genuinely the behaviour of that release's code on the node.
"""

from __future__ import annotations

import base64
import datetime as dt
import difflib
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from testbed.exchnode.common import COMPONENT_FAULTS
from testbed.sbom import SBOM_FILE, sbom_bytes, version_key

SOURCE = Path(__file__).resolve().parent / "exchnode"
COMPONENTS = tuple(COMPONENT_FAULTS)
VERSION_RE = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+([.-][0-9A-Za-z.-]+)?$")
CVE_RE = re.compile(r"^CVE-[0-9]{4}-[0-9]{4,}$")
RESTARTS = ("none", "service", "system")
MIGRATIONS = ("none", "forward_compatible", "irreversible")


class ReleaseError(ValueError):
    """Bad input to the release builder; the message names the value and the fix."""


@dataclass(frozen=True)
class BuiltRelease:
    id: str
    component: str
    version: str
    artifact: str
    sha256: str
    signature: str
    catalog_entry: str

    def as_json(self) -> dict[str, str]:
        return {"id": self.id, "artifact": self.artifact, "sha256": self.sha256, "catalog_entry": self.catalog_entry}


def validate(component: str, version: str, fault: str | None) -> None:
    if component not in COMPONENTS:
        raise ReleaseError(f"unknown component {component!r}; use one of: {', '.join(COMPONENTS)}")
    if not VERSION_RE.match(version):
        raise ReleaseError(f"version {version!r} is not a dotted version like 1.4.3")
    if fault is not None and fault not in COMPONENT_FAULTS[component]:
        raise ReleaseError(
            f"fault {fault!r} does not exist for {component}; use one of: {', '.join(COMPONENT_FAULTS[component])}"
        )


def release_files(component: str, version: str, fault: str | None = None,
                  fault_params: dict[str, float] | None = None, fixes: list[str] | None = None,
                  restart: str = "service", migration: str = "none") -> dict[str, bytes]:
    """The files of a release, by relative path; ``RELEASE.json`` carries the facts the catalog states."""
    files: dict[str, bytes] = {}
    for src in sorted(SOURCE.glob("*.py")):
        if src.name == "launcher.py":
            continue
        files[f"exchnode/{src.name}"] = src.read_bytes()
    files["bin/exchnode"] = (SOURCE / "launcher.py").read_bytes()
    files[SBOM_FILE] = sbom_bytes(component, version)
    manifest: dict[str, Any] = {"component": component, "version": version, "fault": fault,
                                "fixes": sorted(fixes or []), "migration": migration, "restart": restart,
                                "sbom_sha256": hashlib.sha256(files[SBOM_FILE]).hexdigest()}
    if fault_params:
        manifest["fault_params"] = fault_params
    files["RELEASE.json"] = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    return files


def stage_release(dest: Path | str, component: str, version: str, fault: str | None = None,
                  fault_params: dict[str, float] | None = None) -> Path:
    """Write an unpacked release into ``dest`` (used by the testbed bootstrap and tests)."""
    validate(component, version, fault)
    dest = Path(dest)
    for rel, data in release_files(component, version, fault, fault_params).items():
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(0o755 if rel.startswith("bin/") else 0o644)
    return dest


def _tarball(files: dict[str, bytes]) -> bytes:
    """A byte-for-byte reproducible .tar.gz of ``files``."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({str(Path(p).parent) for p in files if "/" in p})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)
        for rel in sorted(files):
            info = tarfile.TarInfo(rel)
            info.size, info.mtime = len(files[rel]), 0
            info.mode = 0o755 if rel.startswith("bin/") else 0o644
            tar.addfile(info, io.BytesIO(files[rel]))
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def ensure_signing_key(keys_dir: Path | str) -> tuple[Path, Path]:
    """Create the testbed's ed25519 release key pair once; return (private, public) paths."""
    keys_dir = Path(keys_dir)
    keys_dir.mkdir(parents=True, exist_ok=True)
    priv, pub = keys_dir / "release-signing.key", keys_dir / "release-signing.pub"
    if not priv.exists():
        key = Ed25519PrivateKey.generate()
        fd = os.open(priv, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
        pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv, pub


def sign(private_key: Path, data: bytes) -> str:
    key = serialization.load_pem_private_key(private_key.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ReleaseError(f"{private_key}: not an ed25519 private key; delete it and let the testbed make a new one")
    return base64.b64encode(key.sign(data)).decode()


def verify(public_key_pem: bytes, data: bytes, signature_b64: str) -> bool:
    """True when ``signature_b64`` is a valid ed25519 signature of ``data``."""
    from cryptography.exceptions import InvalidSignature

    key = serialization.load_pem_public_key(public_key_pem)
    if not isinstance(key, Ed25519PublicKey):
        return False
    try:
        key.verify(base64.b64decode(signature_b64, validate=True), data)
    except (InvalidSignature, ValueError):
        return False
    return True


def _change_size(out_dir: Path, component: str, version: str, files: dict[str, bytes]) -> dict[str, int]:
    """Files and lines changed against the newest earlier release of the component in ``out_dir``."""
    earlier = sorted(
        (p for p in out_dir.glob(f"{component}-*.tar.gz")
         if version_key(p.name[len(component) + 1:-7]) < version_key(version)),
        key=lambda p: version_key(p.name[len(component) + 1:-7]),
    )
    old: dict[str, bytes] = {}
    if earlier:
        with tarfile.open(earlier[-1]) as tar:
            for m in tar.getmembers():
                if m.isfile():
                    fh = tar.extractfile(m)
                    old[m.name] = fh.read() if fh else b""
    changed_files, changed_lines = 0, 0
    for rel in sorted(set(files) | set(old)):
        if rel == SBOM_FILE:  # what third-party code changed is the SBOM's story, not lines of the release's code
            continue
        a = old.get(rel, b"").decode(errors="replace").splitlines()
        b = files.get(rel, b"").decode(errors="replace").splitlines()
        if a == b:
            continue
        changed_files += 1
        changed_lines += sum(1 for d in difflib.unified_diff(a, b, lineterm="", n=0)
                             if d[:1] in "+-" and not d.startswith(("+++", "---")))
    return {"files": changed_files, "lines": changed_lines}


def build_release(
    out_dir: Path | str,
    keys_dir: Path | str,
    catalog_dir: Path | str,
    component: str,
    version: str,
    fault: str | None = None,
    fault_params: dict[str, float] | None = None,
    fixes: list[str] | None = None,
    restart: str = "service",
    migration: str = "none",
    patch_id: str | None = None,
    now: dt.datetime | None = None,
) -> BuiltRelease:
    """Build, checksum and sign a release; write its patch catalog entry."""
    validate(component, version, fault)
    fixes = list(fixes or [])
    for cve in fixes:
        if not isinstance(cve, str) or not CVE_RE.match(cve) or not cve.isascii():
            raise ReleaseError(f"--fixes {cve!r} is not a CVE ID like CVE-2026-12345")
        if fixes.count(cve) > 1:
            raise ReleaseError(f"--fixes {cve} is listed twice; list each CVE once")
    fixes = sorted(fixes)
    if restart not in RESTARTS:
        raise ReleaseError(f"restart {restart!r}: use one of {', '.join(RESTARTS)}")
    if migration not in MIGRATIONS:
        raise ReleaseError(f"migration {migration!r}: use one of {', '.join(MIGRATIONS)}")
    patch_id = patch_id or f"{component}-{version}"
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", patch_id):
        raise ReleaseError(f"patch id {patch_id!r}: use letters, digits, '.', '_' and '-' only")
    out_dir, catalog_dir = Path(out_dir), Path(catalog_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    catalog_dir.mkdir(parents=True, exist_ok=True)
    priv = ensure_signing_key(keys_dir)[0]

    files = release_files(component, version, fault, fault_params, fixes=fixes, restart=restart,
                          migration=migration)
    change = _change_size(out_dir, component, version, files)
    blob = _tarball(files)
    artifact = out_dir / f"{component}-{version}.tar.gz"
    tmp = artifact.with_suffix(".tmp")
    tmp.write_bytes(blob)
    os.replace(tmp, artifact)
    digest = hashlib.sha256(blob).hexdigest()
    signature = sign(priv, blob)
    (out_dir / f"{artifact.name}.sha256").write_text(f"{digest}  {artifact.name}\n")
    (out_dir / f"{artifact.name}.sig").write_text(signature + "\n")
    sbom = out_dir / f"{component}-{version}.cdx.json"
    sbom_tmp = sbom.with_suffix(".tmp")
    sbom_tmp.write_bytes(files[SBOM_FILE])
    os.replace(sbom_tmp, sbom)

    released = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)
    entry = {
        "id": patch_id,
        "component": component,
        "version": version,
        "artifact": {"url": artifact.resolve().as_uri(), "sha256": digest, "signature": signature},
        "sbom": {"url": sbom.resolve().as_uri(), "sha256": hashlib.sha256(files[SBOM_FILE]).hexdigest()},
        "fixes": fixes,
        "restart": restart,
        "migration": migration,
        "change_size": change,
        "released_at": released.isoformat().replace("+00:00", "Z"),
    }
    catalog_entry = catalog_dir / f"{patch_id}.yml"
    with open(catalog_entry, "w", encoding="utf-8") as fh:
        fh.write("---\n")
        yaml.safe_dump(entry, fh, sort_keys=False)
    return BuiltRelease(patch_id, component, version, str(artifact), digest, signature, str(catalog_entry))


def install_release(node_root: Path | str, component: str, version: str, fault: str | None = None,
                    fault_params: dict[str, float] | None = None) -> Path:
    """Bootstrap a node root with a release and point ``current`` at it (testbed up only;
    the collection's release role does this on a live fleet)."""
    node_root = Path(node_root)
    rel_dir = node_root / "releases" / version
    if rel_dir.exists():
        shutil.rmtree(rel_dir)
    stage_release(rel_dir, component, version, fault, fault_params)
    link = node_root / "current"
    tmp = node_root / ".current.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(Path("releases") / version)
    os.replace(tmp, link)
    return rel_dir
