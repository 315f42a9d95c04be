# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Release artifacts: verification on the controller, safe unpacking and switching on a node.

A release artifact is a ``.tar.gz`` holding ``RELEASE.json`` (component, version, fault),
``bin/exchnode`` and the ``exchnode`` package (see ``testbed/release.py``). On a node root it
is unpacked to ``releases/<version>/``; ``current`` is a relative symlink to the release that
runs; ``data/`` is never inside a release and never touched here.

Everything a node runs is stdlib only; ``cryptography`` is needed just for
:func:`verify_artifact` on the controller and its absence is reported at call time.
Every problem raises a :class:`ReleaseError` (a ``ValueError``) whose message names the
thing, the value and the fix.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
import traceback
from urllib.parse import unquote, urlsplit

try:
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
except ImportError:
    HAS_CRYPTOGRAPHY = False
    CRYPTOGRAPHY_IMPORT_ERROR: str | None = traceback.format_exc()
else:
    HAS_CRYPTOGRAPHY = True
    CRYPTOGRAPHY_IMPORT_ERROR = None

MANIFEST = "RELEASE.json"
RELEASES_DIR = "releases"
CURRENT_LINK = "current"
# A version names a folder under releases/: one path component, no hidden names.
_VERSION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._+-]*$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_STAGE_HINT = ("stage it on the controller first (for example with ansible.builtin.get_url) and pass its path "
               "or a file:// URL")


class ReleaseError(ValueError):
    """A release cannot be verified, unpacked or switched; the message says why and what to do."""


class ReleaseVerifyError(ReleaseError):
    """The artifact's checksum or signature does not match what the catalog pins."""


class UnsafeArchiveError(ReleaseError):
    """The archive holds a member that could write outside the release folder."""


def _short(digest: str) -> str:
    return digest[:12] + "…" if len(digest) > 12 else digest


# --------------------------------------------------------------------------- verification


def sha256_file(path: str) -> str:
    """Hex SHA-256 of the file at ``path``."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as e:
        raise ReleaseError(f"{path}: cannot read the artifact ({e.strerror}); check the path and that "
                           "the file was staged") from e
    return digest.hexdigest()


def normalize_sha256(expected: str, what: str = "sha256") -> str:
    """``expected`` as 64 lower-case hex digits; a ``sha256:`` prefix is accepted."""
    value = (expected or "").strip().lower()
    if value.startswith("sha256:"):
        value = value[len("sha256:"):]
    if not _SHA256_RE.match(value):
        raise ReleaseError(f"{what}: {expected!r} is not a SHA-256 digest; give the 64 hex digits from the "
                           "catalog entry (artifact.sha256)")
    return value


def check_sha256(path: str, expected_sha256: str) -> str:
    """Raise :class:`ReleaseVerifyError` unless the file's SHA-256 is ``expected_sha256``; return it."""
    expected = normalize_sha256(expected_sha256)
    actual = sha256_file(path)
    if actual != expected:
        raise ReleaseVerifyError(f"{path}: sha256 does not match the catalog (expected {_short(expected)}, "
                                 f"got {_short(actual)}); rebuild the release or fix the catalog entry")
    return actual


def _public_key(public_key_pem: str) -> Ed25519PublicKey:
    data = public_key_pem.encode() if isinstance(public_key_pem, str) else public_key_pem
    try:
        key = load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise ReleaseVerifyError("public key: not a PEM public key (-----BEGIN PUBLIC KEY-----); set "
                                 "exchange_release_pubkey to the release signing key's public PEM") from e
    if not isinstance(key, Ed25519PublicKey):
        raise ReleaseVerifyError(f"public key: a {type(key).__name__.lstrip('_')} key, not an ed25519 key; set "
                                 "exchange_release_pubkey to the ed25519 release signing key's public PEM")
    return key


def verify_artifact(path: str, expected_sha256: str, signature_b64: str, public_key_pem: str) -> str:
    """Check the artifact's SHA-256 and its ed25519 signature against the pinned public key.

    Both checks run over the same bytes read once. Return the SHA-256; raise
    :class:`ReleaseVerifyError` on any mismatch, :class:`ReleaseError` when ``cryptography``
    is missing or the file cannot be read.
    """
    if not HAS_CRYPTOGRAPHY:
        raise ReleaseError("the cryptography Python library is required to verify release signatures; "
                           "install it on the controller (pip install cryptography)")
    expected = normalize_sha256(expected_sha256)
    key = _public_key(public_key_pem)
    try:
        signature = base64.b64decode((signature_b64 or "").strip(), validate=True)
    except ValueError as e:  # binascii.Error is a ValueError
        raise ReleaseVerifyError(f"{path}: the signature is not valid base64 ({e}); copy artifact.signature "
                                 "from the catalog entry (or the .sig file) unchanged") from e
    if len(signature) != 64:
        raise ReleaseVerifyError(f"{path}: the signature is {len(signature)} bytes, an ed25519 signature is 64; "
                                 "copy artifact.signature from the catalog entry (or the .sig file) unchanged")
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as e:
        raise ReleaseError(f"{path}: cannot read the artifact ({e.strerror}); check the path and that "
                           "the file was staged") from e
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise ReleaseVerifyError(f"{path}: sha256 does not match the catalog (expected {_short(expected)}, "
                                 f"got {_short(actual)}); rebuild the release or fix the catalog entry")
    try:
        key.verify(signature, data)
    except InvalidSignature as e:
        raise ReleaseVerifyError(f"{path}: ed25519 signature does not verify against the pinned release key; "
                                 "re-sign the release or check exchange_release_pubkey") from e
    return actual


def artifact_path(url_or_path: str, base_dir: str | None = None) -> str:
    """The local file an artifact reference names.

    Accepts ``file:///abs/path`` (``file://localhost/...`` too), an absolute path, or a
    relative path resolved against ``base_dir`` (default: the working directory).
    Remote URLs are refused: only staged, local artifacts are verified and installed.
    """
    ref = (url_or_path or "").strip()
    if not ref:
        raise ReleaseError("artifact: empty; give the artifact's path or file:// URL from the catalog entry")
    scheme = _SCHEME_RE.match(ref)
    if scheme and scheme.group(1).lower() == "file":
        parts = urlsplit(ref)
        if parts.netloc not in ("", "localhost"):
            raise ReleaseError(f"artifact: {ref} names host {parts.netloc!r}; only local artifacts are "
                               f"supported: {_STAGE_HINT}")
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise ReleaseError(f"artifact: {ref} is not an absolute file:// URL; write file:///absolute/path")
        return os.path.normpath(path)
    if scheme and "://" in ref:
        raise ReleaseError(f"artifact: {ref} is a {scheme.group(1)} URL; only local artifacts are supported: "
                           f"{_STAGE_HINT}")
    path = os.path.expanduser(ref)
    if not os.path.isabs(path):
        path = os.path.join(base_dir or os.getcwd(), path)
    return os.path.normpath(path)


# --------------------------------------------------------------------------- archives


def _member_name(name: str) -> str:
    """Archive member name without a leading ``./``; ``""`` for the archive root."""
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/") if name not in (".", "") else ""


def _inside(path: str) -> bool:
    """True when the archive-relative ``path`` stays inside the archive root once normalised."""
    norm = posixpath.normpath(path)
    return not (norm == ".." or norm.startswith("../") or posixpath.isabs(norm))


def safe_members(tar: tarfile.TarFile, artifact: str = "archive") -> list[tarfile.TarInfo]:
    """The members of ``tar``, after proving none of them can write outside the target folder.

    Refused: absolute names, ``..`` components, symlinks or hard links resolving outside
    the archive root (or absolute), devices, FIFOs and other special files.
    """
    members = []
    for m in tar.getmembers():
        name = _member_name(m.name)
        where = f"{artifact}: member {m.name!r}"
        fix = "the archive is unsafe to unpack; rebuild the release with the release builder"
        if m.name.startswith("/") or posixpath.isabs(name):
            raise UnsafeArchiveError(f"{where} has an absolute path; {fix}")
        if ".." in name.split("/"):
            raise UnsafeArchiveError(f"{where} contains '..'; {fix}")
        if m.issym():
            target = m.linkname
            if posixpath.isabs(target) or not _inside(posixpath.join(posixpath.dirname(name), target)):
                raise UnsafeArchiveError(f"{where} is a symlink to {target!r}, outside the release; {fix}")
        elif m.islnk():
            target = _member_name(m.linkname)
            if posixpath.isabs(m.linkname) or not target or not _inside(target):
                raise UnsafeArchiveError(f"{where} is a hard link to {m.linkname!r}, outside the release; {fix}")
        elif not (m.isfile() or m.isdir()):
            raise UnsafeArchiveError(f"{where} is a device, FIFO or other special file; {fix}")
        members.append(m)
    return members


def _open_tar(artifact: str) -> tarfile.TarFile:
    try:
        return tarfile.open(artifact, mode="r:*")
    except (OSError, tarfile.TarError, EOFError) as e:
        raise ReleaseError(f"{artifact}: not a readable .tar.gz release ({e}); stage the artifact again") from e


def _parse_manifest(raw: bytes, where: str) -> dict:
    try:
        manifest = json.loads(raw)
    except ValueError as e:
        raise ReleaseError(f"{where}: {MANIFEST} is not valid JSON ({e}); rebuild the release") from e
    if not isinstance(manifest, dict) or not manifest.get("version") or not manifest.get("component"):
        raise ReleaseError(f"{where}: {MANIFEST} lacks component or version; rebuild the release")
    return manifest


def archive_manifest(artifact: str) -> dict:
    """``RELEASE.json`` of an artifact, read without unpacking; the archive is checked with :func:`safe_members`."""
    with _open_tar(artifact) as tar:
        try:
            members = safe_members(tar, artifact)
            found = [m for m in members if _member_name(m.name) == MANIFEST and m.isfile()]
            if not found:
                raise ReleaseError(f"{artifact}: no {MANIFEST} at the top of the archive; this is not a "
                                   "release artifact, rebuild it with the release builder")
            fh = tar.extractfile(found[-1])
            raw = fh.read() if fh else b""
        except (OSError, tarfile.TarError, EOFError) as e:
            raise ReleaseError(f"{artifact}: the archive is damaged ({e}); stage the artifact again") from e
    return _parse_manifest(raw, artifact)


def release_manifest(release_dir: str) -> dict:
    """``RELEASE.json`` of an unpacked release folder."""
    path = os.path.join(release_dir, MANIFEST)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as e:
        raise ReleaseError(f"{path}: cannot read the release manifest ({e.strerror}); the release folder is "
                           "incomplete, remove it and install the release again") from e
    return _parse_manifest(raw, release_dir)


def check_manifest(manifest: dict, where: str, version: str, component: str | None = None) -> None:
    """Raise unless ``manifest`` is for ``version`` (and ``component`` when given)."""
    if manifest.get("version") != version:
        raise ReleaseError(f"{where}: {MANIFEST} says version {manifest.get('version')!r}, not {version!r}; "
                           "pass the version the artifact was built for, or the artifact of that version")
    if component and manifest.get("component") != component:
        raise ReleaseError(f"{where}: {MANIFEST} says component {manifest.get('component')!r}, not {component!r}; "
                           "this artifact is for another kind of node, pick the artifact for this component")


# --------------------------------------------------------------------------- node root


def check_version(version: str) -> str:
    """``version`` if it can name a folder under ``releases/``; raise otherwise."""
    if not isinstance(version, str) or not _VERSION_RE.match(version) or version in (".", ".."):
        raise ReleaseError(f"version: {version!r} cannot name a release folder; use a version like 1.4.3 "
                           "(letters, digits, '.', '_', '+', '-'; no '/')")
    return version


def version_key(version: str) -> tuple:
    """Sort key: numeric dotted parts first, a pre-release (``1.4.3-rc1``) before its release."""
    match = re.match(r"^(\d+(?:\.\d+)*)(.*)$", version)
    if not match:
        return ((), 0, version)
    nums = tuple(int(x) for x in match.group(1).split("."))
    suffix = match.group(2)
    if not suffix:
        return (nums, 1, "")
    if suffix.startswith("+"):  # build metadata: same precedence as the release
        return (nums, 1, suffix)
    return (nums, 0, suffix)


def releases_dir(root: str) -> str:
    return os.path.join(root, RELEASES_DIR)


def list_releases(root: str) -> list[str]:
    """Versions unpacked under ``<root>/releases``, oldest first (hidden temp folders excluded)."""
    folder = releases_dir(root)
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    except OSError as e:
        raise ReleaseError(f"{folder}: cannot list releases ({e.strerror}); check exchange_node_root and "
                           "permissions") from e
    found = [n for n in names
             if not n.startswith(".") and _VERSION_RE.match(n)
             and os.path.isdir(os.path.join(folder, n)) and not os.path.islink(os.path.join(folder, n))]
    return sorted(found, key=version_key)


def current_target(root: str) -> str | None:
    """Where ``<root>/current`` points (the link text), or None when it does not exist."""
    link = os.path.join(root, CURRENT_LINK)
    if not os.path.lexists(link):
        return None
    if not os.path.islink(link):
        raise ReleaseError(f"{link}: is a real file or folder, not a symlink to releases/<version>; move it away "
                           "so current can be switched atomically")
    return os.readlink(link)


def current_version(root: str) -> str | None:
    """The version ``<root>/current`` points to, or None when there is no ``current``."""
    target = current_target(root)
    if target is None:
        return None
    absolute = os.path.normpath(os.path.join(root, target))
    if os.path.dirname(absolute) != os.path.normpath(releases_dir(root)):
        raise ReleaseError(f"{os.path.join(root, CURRENT_LINK)}: points to {target!r}, not to releases/<version>; "
                           "switch it to a release with state=current")
    return os.path.basename(absolute)


def rollback_target(releases: list[str], current: str | None) -> str | None:
    """The release to fall back to from ``current``: the newest one older than it, else the newest other one."""
    others = [r for r in releases if r != current]
    if not others:
        return None
    if current is None:
        return others[-1]
    older = [r for r in others if version_key(r) < version_key(current)]
    return (older or others)[-1]


def prune_plan(releases: list[str], current: str | None, previous: str | None, keep: int,
               protect: tuple[str, ...] | list[str] = ()) -> list[str]:
    """Releases to delete, oldest first.

    ``current``, ``previous`` and anything in ``protect`` are never pruned. Of the rest,
    ``keep`` stay, chosen along the rollback chain first: releases older than both current
    and previous (newest first), then the others (newest first). The others are releases
    a node ran and was rolled back from (a failed canary keeps each one it tried); were they
    kept by plain version order, a few failed canaries would push out the release the fleet
    rolls back to after the next good one.
    """
    if not isinstance(keep, int) or isinstance(keep, bool) or keep < 0:
        raise ReleaseError(f"keep: {keep!r} is not a count of releases; use 0 or more")
    spared = {current, previous, *protect}
    candidates = [r for r in set(releases) if r not in spared]
    anchors = [version_key(v) for v in (current, previous) if v is not None]
    base = min(anchors) if anchors else None
    chain = sorted((r for r in candidates if base is None or version_key(r) < base), key=version_key, reverse=True)
    others = sorted((r for r in candidates if r not in chain), key=version_key, reverse=True)
    kept = set((chain + others)[:keep])
    return sorted((r for r in candidates if r not in kept), key=version_key)


def unpack_release(artifact: str, root: str, version: str, component: str | None = None) -> str:
    """Unpack ``artifact`` to ``<root>/releases/<version>`` atomically; return that folder.

    The archive is extracted into a hidden temporary folder beside the final one, its
    manifest checked, and the folder renamed into place: a reader never sees a half-unpacked
    release, and a failure leaves nothing behind.
    """
    check_version(version)
    folder = releases_dir(root)
    final = os.path.join(folder, version)
    if os.path.lexists(final):
        raise ReleaseError(f"{final}: already exists; remove it or install another version")
    try:
        os.makedirs(folder, mode=0o755, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{version}.", suffix=".unpack", dir=folder)
    except OSError as e:
        raise ReleaseError(f"{folder}: cannot create the release folder ({e.strerror}); check exchange_node_root "
                           "and permissions") from e
    try:
        with _open_tar(artifact) as tar:
            try:
                members = safe_members(tar, artifact)
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(tmp, members=members, filter="data")
                else:  # pragma: no cover - Python without extraction filters; safe_members did the checking
                    tar.extractall(tmp, members=members)
            except (tarfile.TarError, EOFError) as e:
                raise ReleaseError(f"{artifact}: cannot unpack ({e}); stage the artifact again") from e
        check_manifest(release_manifest(tmp), artifact, version, component)
        os.chmod(tmp, 0o755)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def switch_current(root: str, version: str) -> None:
    """Point ``<root>/current`` at ``releases/<version>`` with one atomic rename of a relative symlink."""
    check_version(version)
    target = os.path.join(releases_dir(root), version)
    if not os.path.isdir(target) or os.path.islink(target):
        raise ReleaseError(f"{target}: is not an unpacked release; install it first (give artifact and sha256)")
    current_target(root)  # refuses a real folder named current
    link = os.path.join(root, CURRENT_LINK)
    tmp = os.path.join(root, f".{CURRENT_LINK}.{os.getpid()}.tmp")
    try:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(posixpath.join(RELEASES_DIR, version), tmp)
        os.replace(tmp, link)
    except OSError as e:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise ReleaseError(f"{link}: cannot switch to releases/{version} ({e.strerror}); check permissions on "
                           f"{root}") from e


def remove_release(root: str, version: str) -> None:
    """Delete ``<root>/releases/<version>``: renamed to a hidden name first, so it disappears at once."""
    check_version(version)
    path = os.path.join(releases_dir(root), version)
    if version == current_version(root):
        raise ReleaseError(f"{path}: is the current release and cannot be removed; switch current first")
    if not os.path.isdir(path) or os.path.islink(path):
        raise ReleaseError(f"{path}: is not an unpacked release folder; it was not removed")
    try:
        doomed = tempfile.mkdtemp(prefix=f".{version}.", suffix=".prune", dir=releases_dir(root))
        try:
            os.rename(path, os.path.join(doomed, version))
        finally:
            shutil.rmtree(doomed, ignore_errors=True)
    except OSError as e:
        raise ReleaseError(f"{path}: cannot remove the release ({e.strerror}); check permissions on "
                           f"{releases_dir(root)}") from e
