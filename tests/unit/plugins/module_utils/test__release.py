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
    with pytest.raises(ReleaseError, match=f"{missing}: cannot read the artifact"):
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
