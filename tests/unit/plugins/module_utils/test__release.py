"""Release artifacts: checksum and signature verification, artifact locations, safe unpacking,
the releases/ and current layout of a node root, and the prune plan.

Artifacts are real testbed releases (testbed.release.build_release) built in tmp_path.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import tarfile
from pathlib import Path

import pytest
from ansible_collections.exchangeops.patching.plugins.module_utils import _release
from ansible_collections.exchangeops.patching.plugins.module_utils._release import (
    ReleaseError,
    ReleaseVerifyError,
    UnsafeArchiveError,
)
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from testbed.release import BuiltRelease, build_release, ensure_signing_key, stage_release

COMPONENT = "matching-engine"


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    return {"out": tmp_path / "artifacts", "keys": tmp_path / "keys", "catalog": tmp_path / "catalog",
            "root": tmp_path / "node"}


def build(dirs: dict[str, Path], version: str = "1.4.3", component: str = COMPONENT) -> BuiltRelease:
    return build_release(dirs["out"], dirs["keys"], dirs["catalog"], component, version)


def pubkey(dirs: dict[str, Path]) -> str:
    return ensure_signing_key(dirs["keys"])[1].read_text()


def tarball(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> str:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return str(path)


def member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, 0o644
    return info


MANIFEST = b'{"component": "matching-engine", "version": "9.9.9", "fault": null}\n'


def node_root(dirs: dict[str, Path], *versions: str, current: str | None = None) -> str:
    """A node root with releases staged by the testbed and current -> releases/<current>."""
    root = dirs["root"]
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "data" / "journal.log").write_text("seq 1\n")
    (root / "releases").mkdir(exist_ok=True)
    for v in versions:
        stage_release(root / "releases" / v, COMPONENT, v)
    if current:
        (root / "current").symlink_to(Path("releases") / current)
    return str(root)


# --------------------------------------------------------------------------- verification


def test_sha256_file_matches_the_builder(dirs):
    built = build(dirs)
    assert _release.sha256_file(built.artifact) == built.sha256


def test_good_artifact_verifies(dirs):
    built = build(dirs)
    assert _release.verify_artifact(built.artifact, built.sha256, built.signature, pubkey(dirs)) == built.sha256
    # the catalog's digest may come upper-case or prefixed
    _release.verify_artifact(built.artifact, "sha256:" + built.sha256.upper(), built.signature + "\n", pubkey(dirs))


def test_tampered_bytes_fail_the_checksum(dirs, tmp_path):
    built = build(dirs)
    blob = bytearray(Path(built.artifact).read_bytes())
    blob[len(blob) // 2] ^= 1
    tampered = tmp_path / "tampered.tar.gz"
    tampered.write_bytes(bytes(blob))
    with pytest.raises(ReleaseVerifyError) as e:
        _release.verify_artifact(str(tampered), built.sha256, built.signature, pubkey(dirs))
    msg = str(e.value)
    assert msg.startswith(f"{tampered}: sha256 does not match the catalog (expected {built.sha256[:12]}…, got ")
    assert msg.endswith("rebuild the release or fix the catalog entry")
    with pytest.raises(ReleaseVerifyError, match=re.escape("sha256 does not match")):
        _release.check_sha256(str(tampered), built.sha256)


def test_tampered_bytes_with_a_matching_checksum_fail_the_signature(dirs, tmp_path):
    """An attacker who can also rewrite the catalog's checksum still cannot forge the signature."""
    built = build(dirs)
    blob = Path(built.artifact).read_bytes() + b"\0"
    tampered = tmp_path / "tampered.tar.gz"
    tampered.write_bytes(blob)
    expected = ("ed25519 signature does not verify against the pinned release key; "
                "re-sign the release or check exchange_release_pubkey")
    with pytest.raises(ReleaseVerifyError, match=re.escape(expected)):
        _release.verify_artifact(str(tampered), _release.sha256_file(str(tampered)), built.signature, pubkey(dirs))


def test_wrong_key_fails_the_signature(dirs, tmp_path):
    built = build(dirs)
    other = ensure_signing_key(tmp_path / "other-keys")[1].read_text()
    with pytest.raises(ReleaseVerifyError, match="signature does not verify against the pinned release key"):
        _release.verify_artifact(built.artifact, built.sha256, built.signature, other)


def test_signature_of_another_release_fails(dirs):
    a, b = build(dirs, "1.4.3"), build(dirs, "1.4.4")
    with pytest.raises(ReleaseVerifyError, match=re.escape("signature does not verify")):
        _release.verify_artifact(a.artifact, a.sha256, b.signature, pubkey(dirs))


@pytest.mark.parametrize(("signature", "match"), [
    ("not base64 at all!", "not valid base64"),
    (base64.b64encode(b"short").decode(), "5 bytes, an ed25519 signature is 64"),
    ("", "0 bytes"),
])
def test_malformed_signature(dirs, signature, match):
    built = build(dirs)
    with pytest.raises(ReleaseVerifyError, match=re.escape(match)):
        _release.verify_artifact(built.artifact, built.sha256, signature, pubkey(dirs))


def test_public_key_must_be_an_ed25519_pem(dirs):
    built = build(dirs)
    rsa_pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    with pytest.raises(ReleaseVerifyError, match=re.escape("not an ed25519 key; set exchange_release_pubkey")):
        _release.verify_artifact(built.artifact, built.sha256, built.signature, rsa_pem)
    with pytest.raises(ReleaseVerifyError, match=re.escape("not a PEM public key")):
        _release.verify_artifact(built.artifact, built.sha256, built.signature, "ssh-ed25519 AAAA... me@host")


@pytest.mark.parametrize("digest", ["", "abc", "z" * 64, "a" * 63])
def test_malformed_expected_sha256(dirs, digest):
    built = build(dirs)
    with pytest.raises(ReleaseError, match=re.escape("is not a SHA-256 digest; give the 64 hex digits")):
        _release.verify_artifact(built.artifact, digest, built.signature, pubkey(dirs))


def test_missing_artifact_names_the_path(dirs, tmp_path):
    built = build(dirs)
    missing = tmp_path / "nope.tar.gz"
    with pytest.raises(ReleaseError, match=f"{missing}: file not found; check the path of the release artifact"):
        _release.verify_artifact(str(missing), built.sha256, built.signature, pubkey(dirs))


def test_missing_cryptography_is_reported_at_call_time(dirs, monkeypatch):
    built = build(dirs)
    monkeypatch.setattr(_release, "HAS_CRYPTOGRAPHY", False)
    with pytest.raises(ReleaseError, match=re.escape("cryptography Python library is required")):
        _release.verify_artifact(built.artifact, built.sha256, built.signature, pubkey(dirs))
    # the node-side helpers do not need it
    assert _release.sha256_file(built.artifact) == built.sha256


# --------------------------------------------------------------------------- artifact locations


def test_artifact_path_accepts_local_references(tmp_path):
    assert _release.artifact_path("file:///srv/rel/a.tar.gz") == "/srv/rel/a.tar.gz"
    assert _release.artifact_path("file://localhost/srv/rel/a.tar.gz") == "/srv/rel/a.tar.gz"
    assert _release.artifact_path("file:///srv/my%20rel/a.tar.gz") == "/srv/my rel/a.tar.gz"
    assert _release.artifact_path((tmp_path / "a.tar.gz").as_uri()) == str(tmp_path / "a.tar.gz")
    assert _release.artifact_path("/srv/rel/../rel/a.tar.gz") == "/srv/rel/a.tar.gz"
    assert _release.artifact_path("staging/a.tar.gz", str(tmp_path)) == str(tmp_path / "staging" / "a.tar.gz")
    assert _release.artifact_path("a.tar.gz") == os.path.join(os.getcwd(), "a.tar.gz")


@pytest.mark.parametrize("ref", ["https://releases.example.com/a.tar.gz", "http://10.0.0.1/a.tar.gz",
                                 "s3://bucket/a.tar.gz", "ftp://host/a.tar.gz"])
def test_artifact_path_refuses_remote_urls(ref):
    expected = "only local artifacts are supported: stage it on the controller first"
    with pytest.raises(ReleaseError, match=re.escape(expected)):
        _release.artifact_path(ref)


def test_artifact_path_refuses_other_hosts_and_empty():
    with pytest.raises(ReleaseError, match=re.escape("names host 'fileserver'; only local artifacts are supported")):
        _release.artifact_path("file://fileserver/share/a.tar.gz")
    with pytest.raises(ReleaseError, match=re.escape("artifact: empty")):
        _release.artifact_path("  ")


# --------------------------------------------------------------------------- archives


def test_release_archive_members_are_safe(dirs):
    built = build(dirs)
    with tarfile.open(built.artifact) as tar:
        names = {m.name for m in _release.safe_members(tar)}
    assert {"RELEASE.json", "bin/exchnode", "exchnode/common.py"} <= names


@pytest.mark.parametrize(("members", "match"), [
    ([(member("/etc/cron.d/evil"), b"x")], "has an absolute path"),
    ([(member("../evil"), b"x")], "contains '..'"),
    ([(member("bin/../../evil"), b"x")], "contains '..'"),
    ([(member("./../evil"), b"x")], "contains '..'"),
    ([(member("bin/sh", tarfile.SYMTYPE, "/bin/sh"), None)], "symlink to '/bin/sh', outside the release"),
    ([(member("bin/up", tarfile.SYMTYPE, "../../data"), None)], "symlink to '../../data', outside the release"),
    ([(member("up", tarfile.SYMTYPE, ".."), None)], "symlink to '..'"),
    ([(member("bin/passwd", tarfile.LNKTYPE, "/etc/passwd"), None)], "hard link to '/etc/passwd'"),
    ([(member("bin/x", tarfile.LNKTYPE, "../x"), None)], "hard link to '../x'"),
    ([(member("dev/null", tarfile.CHRTYPE), None)], "device, FIFO or other special file"),
    ([(member("dev/sda", tarfile.BLKTYPE), None)], "device, FIFO or other special file"),
    ([(member("pipe", tarfile.FIFOTYPE), None)], "device, FIFO or other special file"),
])
def test_unsafe_archives_are_refused(tmp_path, members, match):
    path = tarball(tmp_path / "evil.tar.gz", [(member("RELEASE.json"), MANIFEST), *members])
    with tarfile.open(path) as tar, pytest.raises(UnsafeArchiveError, match=re.escape(match)):
        _release.safe_members(tar, path)


def test_links_inside_the_release_are_allowed(tmp_path):
    path = tarball(tmp_path / "ok.tar.gz", [
        (member("RELEASE.json"), MANIFEST),
        (member("lib/real.py"), b"print(1)\n"),
        (member("lib/alias.py", tarfile.SYMTYPE, "real.py"), None),
        (member("bin/up", tarfile.SYMTYPE, "../lib"), None),
        (member("lib/hard.py", tarfile.LNKTYPE, "lib/real.py"), None),
    ])
    with tarfile.open(path) as tar:
        assert len(_release.safe_members(tar, path)) == 5


def test_path_traversal_archive_writes_nothing(dirs, tmp_path):
    root = node_root(dirs, "9.9.8", current="9.9.8")
    evil = [(member("RELEASE.json"), MANIFEST), (member("../../data/journal.log"), b"overwritten\n")]
    path = tarball(tmp_path / "evil.tar.gz", evil)
    with pytest.raises(UnsafeArchiveError, match=re.escape("contains '..'")):
        _release.unpack_release(path, root, "9.9.9")
    with pytest.raises(UnsafeArchiveError):
        _release.archive_manifest(path)
    assert (Path(root) / "data" / "journal.log").read_text() == "seq 1\n"
    assert sorted(os.listdir(Path(root) / "releases")) == ["9.9.8"]


def test_archive_manifest_reads_without_unpacking(dirs, tmp_path):
    built = build(dirs, "2.0.0")
    assert _release.archive_manifest(built.artifact)["version"] == "2.0.0"
    no_manifest = tarball(tmp_path / "bare.tar.gz", [(member("bin/exchnode"), b"#!/bin/sh\n")])
    with pytest.raises(ReleaseError, match=re.escape("no RELEASE.json at the top of the archive")):
        _release.archive_manifest(no_manifest)
    not_tar = tmp_path / "junk.tar.gz"
    not_tar.write_bytes(b"not a tarball")
    with pytest.raises(ReleaseError, match=re.escape("not a readable .tar.gz release")):
        _release.archive_manifest(str(not_tar))


# --------------------------------------------------------------------------- unpack and switch


def test_unpack_release_is_complete_and_leaves_no_temp(dirs):
    built = build(dirs, "1.4.3")
    root = node_root(dirs, "1.4.2", current="1.4.2")
    final = _release.unpack_release(built.artifact, root, "1.4.3", COMPONENT)
    assert final == os.path.join(root, "releases", "1.4.3")
    assert _release.release_manifest(final)["version"] == "1.4.3"
    assert os.access(os.path.join(final, "bin", "exchnode"), os.X_OK)
    assert oct(os.stat(final).st_mode & 0o777) == oct(0o755)
    assert sorted(os.listdir(os.path.join(root, "releases"))) == ["1.4.2", "1.4.3"]
    assert _release.current_version(root) == "1.4.2"
    with pytest.raises(ReleaseError, match=re.escape("already exists")):
        _release.unpack_release(built.artifact, root, "1.4.3")


def test_unpack_refuses_a_manifest_for_another_version_or_component(dirs):
    root = node_root(dirs, "1.4.2", current="1.4.2")
    built = build(dirs, "1.4.3")
    with pytest.raises(ReleaseError, match=re.escape("RELEASE.json says version '1.4.3', not '1.4.4'")):
        _release.unpack_release(built.artifact, root, "1.4.4")
    wallet = build(dirs, "2.3.1", component="wallet-signer")
    with pytest.raises(ReleaseError, match=r"says component 'wallet-signer', not 'matching-engine'"):
        _release.unpack_release(wallet.artifact, root, "2.3.1", COMPONENT)
    assert sorted(os.listdir(os.path.join(root, "releases"))) == ["1.4.2"]  # nothing half-unpacked left


@pytest.mark.parametrize("version", ["", ".", "..", "../1.0.0", "1.0/evil", ".hidden", "a b"])
def test_versions_that_cannot_name_a_folder(version):
    with pytest.raises(ReleaseError, match=re.escape("cannot name a release folder")):
        _release.check_version(version)


def test_switch_current_is_a_relative_symlink(dirs):
    root = node_root(dirs, "1.4.2", "1.4.3", current="1.4.2")
    _release.switch_current(root, "1.4.3")
    assert os.readlink(os.path.join(root, "current")) == "releases/1.4.3"
    assert _release.current_version(root) == "1.4.3"
    assert [n for n in os.listdir(root) if n.startswith(".")] == []
    with pytest.raises(ReleaseError, match=re.escape("is not an unpacked release; install it first")):
        _release.switch_current(root, "9.9.9")


def test_current_must_be_a_symlink_into_releases(dirs, tmp_path):
    root = node_root(dirs, "1.4.2")
    assert _release.current_version(root) is None
    os.mkdir(os.path.join(root, "current"))
    with pytest.raises(ReleaseError, match=re.escape("is a real file or folder, not a symlink")):
        _release.current_version(root)
    os.rmdir(os.path.join(root, "current"))
    os.symlink(str(tmp_path), os.path.join(root, "current"))
    with pytest.raises(ReleaseError, match=re.escape("not to releases/<version>")):
        _release.current_version(root)


def test_remove_release_never_removes_current(dirs):
    root = node_root(dirs, "1.4.1", "1.4.2", current="1.4.2")
    with pytest.raises(ReleaseError, match=re.escape("is the current release")):
        _release.remove_release(root, "1.4.2")
    _release.remove_release(root, "1.4.1")
    assert os.listdir(os.path.join(root, "releases")) == ["1.4.2"]
    assert (Path(root) / "data" / "journal.log").exists()


# --------------------------------------------------------------------------- listing and pruning


def test_list_releases_sorted_by_version(dirs):
    root = node_root(dirs, "1.10.0", "1.9.0", "1.9.0-rc1", "0.9.12")
    releases = Path(root) / "releases"
    (releases / "1.9.0+build7").mkdir()  # build metadata sorts with its release
    (releases / ".1.11.0.abc.unpack").mkdir()  # an unpack in progress
    (releases / "notes.txt").write_text("x")
    (releases / "1.99.0").symlink_to("1.10.0")
    assert _release.list_releases(root) == ["0.9.12", "1.9.0-rc1", "1.9.0", "1.9.0+build7", "1.10.0"]
    shutil.rmtree(releases)
    assert _release.list_releases(root) == []


@pytest.mark.parametrize(("releases", "current", "previous", "keep", "expected"), [
    # keeps current, previous and the `keep` newest of the rest
    (["1.0", "1.1", "1.2", "1.3", "1.4", "1.5"], "1.5", "1.4", 2, ["1.0", "1.1"]),
    (["1.0", "1.1", "1.2", "1.3", "1.4", "1.5"], "1.5", "1.4", 0, ["1.0", "1.1", "1.2", "1.3"]),
    (["1.0", "1.1", "1.2"], "1.2", "1.1", 3, []),
    # after a rollback: previous is newer than current, both stay
    (["1.0", "1.1", "1.2", "1.3"], "1.2", "1.3", 1, ["1.0"]),
    # an old previous survives even with keep 0
    (["1.0", "1.1", "1.2", "1.3"], "1.3", "1.0", 0, ["1.1", "1.2"]),
    # version order, not string order
    (["1.9.0", "1.10.0", "1.2.0", "1.11.0"], "1.11.0", "1.10.0", 1, ["1.2.0"]),
    # failed canaries (1.4.5-1.4.8, each rolled back to 1.4.3) never push out the rollback chain
    (["1.4.2", "1.4.3", "1.4.5", "1.4.6", "1.4.7", "1.4.8"], "1.4.8", "1.4.3", 3, ["1.4.5"]),
    (["1.4.2", "1.4.3", "1.4.5", "1.4.6", "1.4.7", "1.4.8"], "1.4.3", "1.4.8", 1, ["1.4.5", "1.4.6", "1.4.7"]),
    # no current yet, no previous
    (["1.0", "1.1"], None, None, 1, ["1.0"]),
    ([], None, None, 0, []),
])
def test_prune_plan(releases, current, previous, keep, expected):
    assert _release.prune_plan(releases, current, previous, keep) == expected


def test_prune_plan_protects_and_refuses_negative_keep():
    assert _release.prune_plan(["1.0", "1.1", "2.0"], "1.1", "1.1", 0, protect=("2.0",)) == ["1.0"]
    with pytest.raises(ReleaseError, match=re.escape("keep: -1 is not a count")):
        _release.prune_plan(["1.0"], "1.0", None, -1)


def test_rollback_target():
    assert _release.rollback_target(["1.0", "1.1", "1.2"], "1.2") == "1.1"
    assert _release.rollback_target(["1.0", "1.1", "1.2"], "1.0") == "1.2"
    assert _release.rollback_target(["1.0"], "1.0") is None
    assert _release.rollback_target(["1.0", "1.1"], None) == "1.1"


# --------------------------------------------------------------------------- catalog bound to the signed manifest


FACTS = {"component": COMPONENT, "version": "1.4.2", "fixes": [], "migration": "none", "restart": "service"}


def test_verify_release_reads_the_manifest_from_the_verified_bytes(dirs):
    built = build_release(dirs["out"], dirs["keys"], dirs["catalog"], COMPONENT, "1.4.2",
                          fixes=["CVE-2026-2222", "CVE-2026-1111"], migration="forward_compatible")
    digest, manifest = _release.verify_release(built.artifact, built.sha256, built.signature, pubkey(dirs))
    assert digest == built.sha256
    assert {k: manifest[k] for k in _release.MANIFEST_FACTS} == {
        **FACTS, "fixes": ["CVE-2026-1111", "CVE-2026-2222"], "migration": "forward_compatible"}


def test_the_issues_attack_is_refused(dirs):
    """A hotfix entry pointing at the real signed 1.4.2 artifact, claiming two CVEs 1.4.2 does not fix."""
    built = build(dirs, "1.4.2")
    _digest, manifest = _release.verify_release(built.artifact, built.sha256, built.signature, pubkey(dirs))
    entry = {**FACTS, "fixes": ["CVE-2026-31337", "CVE-2026-31338"]}
    where = "patches/matching-engine-1.9.9-hotfix.yml: matching-engine-1.9.9-hotfix"
    with pytest.raises(_release.ManifestMismatchError) as e:
        _release.check_against_manifest(entry, manifest, where)
    assert e.value.fields == ["fixes"]
    assert str(e.value) == (
        f'{where}: fixes ["CVE-2026-31337", "CVE-2026-31338"] in the catalog, but the signed manifest says []; '
        "the catalog must describe the release that was signed: correct the entry, or build and sign a release "
        "that carries these facts")
    # the same entry calling itself 1.9.9 is refused on the version too
    with pytest.raises(_release.ManifestMismatchError) as e:
        _release.check_against_manifest({**entry, "version": "1.9.9"}, manifest, where)
    assert e.value.fields == ["version", "fixes"]
    assert str(e.value).startswith(f'{where}: version "1.9.9" in the catalog, but the signed manifest says "1.4.2"; ')


@pytest.mark.parametrize(("field", "value"), [
    ("component", "wallet-signer"),
    ("version", "1.9.9"),
    ("fixes", ["CVE-2026-1111"]),
    ("migration", "irreversible"),
    ("restart", "none"),
])
def test_each_lying_catalog_field_is_named(field, value):
    with pytest.raises(_release.ManifestMismatchError, match=rf"^x.yml: p: {field} ") as e:
        _release.check_against_manifest({**FACTS, field: value}, {**FACTS, "fault": None}, "x.yml: p")
    assert e.value.fields == [field]


def test_an_agreeing_entry_passes_whatever_the_order_of_its_fixes():
    manifest = {**FACTS, "fixes": ["CVE-2026-1111", "CVE-2026-2222"]}
    _release.check_against_manifest({**FACTS, "fixes": ["CVE-2026-2222", "CVE-2026-1111"]}, manifest, "x")
    _release.check_against_manifest({"version": "1.4.2"}, manifest, "x")  # only the facts given are compared


@pytest.mark.parametrize("manifest", [
    {"component": COMPONENT, "version": "1.4.2", "fault": None},  # built before manifests carried the facts
    {**FACTS, "fixes": "CVE-2026-1111"},
    {**FACTS, "restart": ""},
])
def test_a_manifest_without_the_facts_is_refused(manifest):
    with pytest.raises(_release.ManifestMismatchError, match=re.escape("rebuild the release with the release builder")):
        _release.check_against_manifest(FACTS, manifest, "x.yml: p")


# --------------------------------------------------------------------------- pinned key, downgrade


def test_one_key_for_the_fleet(dirs, tmp_path):
    key = pubkey(dirs)
    assert _release.check_pinned_key({"me-0a": key, "me-0b": key.strip() + "\n\n", "wallet-0": "  " + key}) \
        == _release._normal_pem(key)
    other = ensure_signing_key(tmp_path / "other")[1].read_text()
    with pytest.raises(ReleaseVerifyError) as e:
        _release.check_pinned_key({"me-0a": key, "me-0b": key, "wallet-0": other})
    assert str(e.value).startswith("exchange_release_pubkey: wallet-0 pins a different release key than the rest "
                                   "of the fleet (sha256:")
    assert str(e.value).endswith("set the same exchange_release_pubkey for every host (group_vars/all) and run again")
    with pytest.raises(ReleaseVerifyError, match=re.escape("exchange_release_pubkey: not set for me-0b, wallet-0;")):
        _release.check_pinned_key({"me-0a": key, "me-0b": "", "wallet-0": None})


def test_downgrade_is_refused_unless_allowed_with_a_reason():
    running = {"me-0a": "1.4.3", "me-0b": "1.4.2", "me-1a": "1.10.0"}
    assert _release.check_downgrade("1.10.0", running) == {}
    assert _release.check_downgrade("1.11.0-rc1", running) == {}
    with pytest.raises(_release.DowngradeError) as e:
        _release.check_downgrade("1.4.2", running, where="x.yml: p")
    assert str(e.value) == (
        "x.yml: p: version 1.4.2 is older than the fleet runs (me-0a runs 1.4.3, me-1a runs 1.10.0): a downgrade, "
        "not a patch; go back with playbooks/rollback.yml, or, to install the older release on purpose, allow it "
        "with a reason (preflight_allow_downgrade=true and preflight_reason)")
    with pytest.raises(_release.DowngradeError, match=re.escape("no reason is given; say why in preflight_reason")):
        _release.check_downgrade("1.4.2", running, allow=True, reason="  ")
    assert _release.check_downgrade("1.4.2", running, allow=True, reason="1.4.3 corrupts books") == {
        "me-0a": "1.4.3", "me-1a": "1.10.0"}


# --------------------------------------------------------------------------- archives: resolved destinations, caps


def test_symlink_chain_escape_is_caught_without_the_data_filter(tmp_path):
    """s -> ., s/esc -> .., s/esc/PWNED: each link looks harmless as text; resolved, the chain leaves the folder."""
    chain = [member("s", tarfile.SYMTYPE, "."), member("s/esc", tarfile.SYMTYPE, ".."), member("s/esc/PWNED")]
    with pytest.raises(UnsafeArchiveError, match=re.escape("member 's/esc' is a symlink to '..', outside the release")):
        _release.check_members(chain, "evil.tar.gz")
    # the checker is pure: no extraction, so the data filter plays no part
    with pytest.raises(UnsafeArchiveError, match=re.escape("lands outside the release through a symlink")):
        _release.check_members([member("up", tarfile.SYMTYPE, "a/.."), member("a", tarfile.SYMTYPE, "."),
                                member("up/PWNED")], "evil.tar.gz")


def test_a_later_link_that_turns_an_earlier_one_outward_is_caught():
    members = [member("a", tarfile.SYMTYPE, "b/.."), member("b", tarfile.SYMTYPE, ".")]
    with pytest.raises(UnsafeArchiveError, match=re.escape("symlink 'a' -> 'b/..' resolves outside the release")):
        _release.check_members(members, "evil.tar.gz")


def test_links_and_files_through_inside_links_are_allowed():
    members = [member("lib", tarfile.DIRTYPE), member("lib/real.py"), member("cur", tarfile.SYMTYPE, "lib"),
               member("cur/more.py"), member("bin/hard.py", tarfile.LNKTYPE, "cur/real.py")]
    assert _release.check_members(members, "ok.tar.gz") == members


@pytest.mark.parametrize(("members", "match"), [
    ([member("x"), member("x", tarfile.SYMTYPE, "y")], "is a link replacing an earlier member ('x')"),
    ([member("lib/a"), member("lib", tarfile.SYMTYPE, ".")], "is a link replacing an earlier member ('lib')"),
    ([member("h", tarfile.LNKTYPE, "later")], "hard link to 'later', outside the release (or not to an earlier"),
    ([member("s", tarfile.SYMTYPE, "."), member("h", tarfile.LNKTYPE, "s/../../etc/passwd")],
     "hard link to 's/../../etc/passwd', outside the release"),
])
def test_links_that_replace_or_reach_out_are_refused(members, match):
    with pytest.raises(UnsafeArchiveError, match=re.escape(match)):
        _release.check_members(members, "evil.tar.gz")


def test_member_count_and_unpacked_size_are_capped():
    many = (member(f"f{i}") for i in range(10**9))  # consumed lazily: the cap stops the read
    with pytest.raises(UnsafeArchiveError, match=re.escape("evil.tar.gz: holds more than 50 members")):
        _release.check_members(many, "evil.tar.gz", max_members=50)
    big = member("big")
    big.size = 5 << 30
    with pytest.raises(UnsafeArchiveError, match=re.escape("evil.tar.gz: unpacks to more than 4 GiB")):
        _release.check_members([big], "evil.tar.gz")


def test_unpack_refuses_a_python_without_the_data_filter(dirs, monkeypatch):
    built = build(dirs, "1.4.3")
    root = node_root(dirs, "1.4.2", current="1.4.2")
    monkeypatch.delattr(tarfile, "data_filter")
    with pytest.raises(ReleaseError, match=re.escape("has no tarfile data filter, so an archive cannot be unpacked")):
        _release.unpack_release(built.artifact, root, "1.4.3")
    assert sorted(os.listdir(os.path.join(root, "releases"))) == ["1.4.2"]


def test_unpack_chain_archive_writes_nothing_outside(dirs, tmp_path):
    root = node_root(dirs, "9.9.8", current="9.9.8")
    path = tarball(tmp_path / "chain.tar.gz", [
        (member("RELEASE.json"), MANIFEST), (member("s", tarfile.SYMTYPE, "."), None),
        (member("s/esc", tarfile.SYMTYPE, ".."), None), (member("s/esc/PWNED"), b"owned\n")])
    with pytest.raises(UnsafeArchiveError):
        _release.unpack_release(path, root, "9.9.9")
    assert not list(Path(root).rglob("PWNED")) and not (Path(root).parent / "PWNED").exists()
    assert sorted(os.listdir(os.path.join(root, "releases"))) == ["9.9.8"]


# --------------------------------------------------------------------------- artifacts: regular files, caps, copy


def test_artifacts_must_be_regular_files(dirs, tmp_path):
    built = build(dirs)
    fifo = tmp_path / "fifo.tar.gz"
    os.mkfifo(fifo)
    for path, kind in (("/dev/zero", "a character device"), (str(fifo), "a FIFO"), (str(tmp_path), "a directory")):
        expected = rf"{re.escape(path)}: is {kind}.*; give the path of .*release artifact"
        with pytest.raises(ReleaseError, match=expected):
            _release.verify_artifact(path, built.sha256, built.signature, pubkey(dirs))
        with pytest.raises(ReleaseError, match=expected):
            _release.sha256_file(path)
        with pytest.raises(ReleaseError, match=expected), _release.private_copy(path, built.sha256):
            pass


def test_artifact_size_is_capped(dirs):
    built = build(dirs)
    size = os.path.getsize(built.artifact)
    expected = f"{built.artifact}: is {_release.human_size(size)}, over the 1 KiB limit for a release artifact"
    with pytest.raises(ReleaseError, match=re.escape(expected)):
        _release.verify_artifact(built.artifact, built.sha256, built.signature, pubkey(dirs), max_size=1024)
    with pytest.raises(ReleaseError, match=re.escape("raise max_artifact_size")):
        _release.check_sha256(built.artifact, built.sha256, max_size=1024)


def test_private_copy_is_private_checked_and_removed(dirs, tmp_path):
    built = build(dirs, "1.4.3")
    staged = tmp_path / "staged.tar.gz"
    shutil.copyfile(built.artifact, staged)
    with _release.private_copy(str(staged), built.sha256, parent=str(tmp_path)) as copy:
        folder = os.path.dirname(copy)
        assert os.stat(folder).st_mode & 0o777 == 0o700
        assert os.stat(copy).st_mode & 0o777 == 0o600
        # whoever can write the staged file swaps it now: the copy, already checked, is what gets used
        staged.write_bytes(b"evil")
        assert _release.archive_manifest(copy, str(staged))["version"] == "1.4.3"
    assert not os.path.exists(folder)
    with pytest.raises(ReleaseVerifyError, match=re.escape(f"{staged}: sha256 does not match the catalog")), \
            _release.private_copy(str(staged), built.sha256, parent=str(tmp_path)):
        pass
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".artifact.")] == []


def test_the_catalogs_sbom_digest_must_be_the_signed_one():
    signed = {**FACTS, "sbom_sha256": "a" * 64}
    _release.check_against_manifest({**FACTS, "sbom_sha256": "A" * 64}, signed, "x")  # hex case does not matter
    _release.check_against_manifest(FACTS, signed, "x")  # an entry without an SBOM is not compared
    with pytest.raises(_release.ManifestMismatchError, match=r"^x.yml: p: sbom sha256 \"bbbb") as e:
        _release.check_against_manifest({**FACTS, "sbom_sha256": "b" * 64}, signed, "x.yml: p")
    assert e.value.fields == ["sbom_sha256"]
    with pytest.raises(_release.ManifestMismatchError, match="the signed manifest says null") as e:
        _release.check_against_manifest({**FACTS, "sbom_sha256": "b" * 64}, FACTS, "x.yml: p")  # built without one
    assert e.value.fields == ["sbom_sha256"]
