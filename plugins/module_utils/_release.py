# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Release artifacts: verification on the controller, safe unpacking and switching on a node.

A release artifact is a ``.tar.gz`` holding ``RELEASE.json`` (component, version, fixes,
migration, restart, fault),
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
import contextlib
import hashlib
import io
import json
import os
import posixpath
import re
import shutil
import sys
import tarfile
import tempfile
import traceback
import zlib
from collections.abc import Iterable, Iterator, Mapping
from urllib.parse import unquote, urlsplit

from ansible_collections.exchangeops.patching.plugins.module_utils._safe_io import capped_chunks, human_size
from ansible_collections.exchangeops.patching.plugins.module_utils._safe_io import open_regular as open_regular_input

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
    """The archive holds a member that could write outside the release folder, or is too big to unpack."""


class ManifestMismatchError(ReleaseVerifyError):
    """The catalog entry states something the signed release manifest does not; ``fields`` names what."""

    def __init__(self, message: str, fields: list[str]) -> None:
        super().__init__(message)
        self.fields = list(fields)

    def __reduce__(self):
        return (self.__class__, (str(self), self.fields))


class DowngradeError(ReleaseError):
    """The target version is older than a version the fleet runs, and the downgrade is not allowed."""


def _short(digest: str) -> str:
    return digest[:12] + "…" if len(digest) > 12 else digest


# --------------------------------------------------------------------------- limits

# Generous defaults: a real release is tens of MiB and a few thousand files.
DEFAULT_MAX_ARTIFACT_SIZE = 1 << 30  # 1 GiB
DEFAULT_MAX_MEMBERS = 100_000
DEFAULT_MAX_UNPACKED_SIZE = 4 << 30  # 4 GiB
MAX_MANIFEST_SIZE = 1 << 20
# The facts a catalog entry states about a release, which its signed manifest must carry too.
MANIFEST_FACTS = ("component", "version", "fixes", "migration", "restart")
_MAX_LINK_HOPS = 40  # as the kernel's MAXSYMLINKS


def _artifact_error(path: str, record: str | None, message: str, fix: str) -> ReleaseError:
    return ReleaseError(f"{path}: {message}; {fix}")


def open_regular(path: str, max_size: int | None = None) -> int:
    """A read descriptor on ``path``, after proving on that descriptor it is a regular file within ``max_size``.

    Opened non-blocking (``_safe_io.open_regular``), so a FIFO cannot hang the caller; checked with
    ``fstat`` on the open descriptor, so a swap after the check changes nothing. The caller closes it.
    """
    fd = open_regular_input(path, "release artifact", _artifact_error)
    try:
        size = os.fstat(fd).st_size
        if max_size is not None and size > max_size:
            raise ReleaseError(_too_big(path, human_size(size), max_size))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _too_big(path: str, size: str, max_size: int) -> str:
    return (f"{path}: is {size}, over the {human_size(max_size)} limit for a release artifact; check that it is "
            "the release tarball, or raise max_artifact_size")


def _artifact_chunks(fd: int, path: str, max_size: int | None) -> Iterator[bytes]:
    """The artifact's bytes from ``fd`` in chunks, refusing more than ``max_size`` (it may grow after the check)."""
    return capped_chunks(fd, max_size, lambda: ReleaseError(
        _too_big(path, f"more than {human_size(max_size)}", max_size)))


# --------------------------------------------------------------------------- verification


def sha256_file(path: str, max_size: int | None = None) -> str:
    """Hex SHA-256 of the regular file at ``path``, streamed (at most ``max_size`` bytes)."""
    digest = hashlib.sha256()
    fd = open_regular(path, max_size)
    try:
        for chunk in _artifact_chunks(fd, path, max_size):
            digest.update(chunk)
    except OSError as e:
        raise ReleaseError(f"{path}: cannot read the artifact ({e.strerror}); check the path and that "
                           "the file was staged") from e
    finally:
        os.close(fd)
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


def _sha256_mismatch(path: str, expected: str, actual: str) -> ReleaseVerifyError:
    return ReleaseVerifyError(f"{path}: sha256 does not match the catalog (expected {_short(expected)}, "
                              f"got {_short(actual)}); rebuild the release or fix the catalog entry")


def check_sha256(path: str, expected_sha256: str, max_size: int | None = None) -> str:
    """Raise :class:`ReleaseVerifyError` unless the file's SHA-256 is ``expected_sha256``; return it."""
    expected = normalize_sha256(expected_sha256)
    actual = sha256_file(path, max_size)
    if actual != expected:
        raise _sha256_mismatch(path, expected, actual)
    return actual


@contextlib.contextmanager
def private_copy(artifact: str, expected_sha256: str, max_size: int | None = DEFAULT_MAX_ARTIFACT_SIZE,
                 parent: str | None = None) -> Iterator[str]:
    """Copy ``artifact`` into a fresh 0700 folder, hashing while copying; yield the copy's path.

    The copy's SHA-256 must be ``expected_sha256``. Whoever could write the staged file can
    no longer swap it between the check and the use: the manifest is read and the release
    unpacked from the copy, which only this process can reach. The folder is removed on exit.
    """
    expected = normalize_sha256(expected_sha256)
    fd = open_regular(artifact, max_size)
    try:
        folder = tempfile.mkdtemp(prefix=".artifact.", suffix=".private", dir=parent)
    except OSError as e:
        os.close(fd)
        raise ReleaseError(f"{parent or tempfile.gettempdir()}: cannot make a private folder for the artifact "
                           f"({e.strerror}); check permissions and free space") from e
    try:
        try:
            copy = os.path.join(folder, "artifact.tar.gz")
            digest = hashlib.sha256()
            out = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
            with os.fdopen(out, "wb") as dst:
                for chunk in _artifact_chunks(fd, artifact, max_size):
                    digest.update(chunk)
                    dst.write(chunk)
        except OSError as e:
            raise ReleaseError(f"{artifact}: cannot copy the artifact to a private folder ({e.strerror}); check "
                               "permissions and free space") from e
        actual = digest.hexdigest()
        if actual != expected:
            raise _sha256_mismatch(artifact, expected, actual)
        yield copy
    finally:
        os.close(fd)
        shutil.rmtree(folder, ignore_errors=True)


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


def _verified_bytes(path: str, expected_sha256: str, signature_b64: str, public_key_pem: str,
                    max_size: int | None) -> tuple[str, bytes]:
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
    # ed25519 signs the whole message: the artifact is read into memory once, with a cap.
    fd = open_regular(path, max_size)
    try:
        data = b"".join(_artifact_chunks(fd, path, max_size))
    except OSError as e:
        raise ReleaseError(f"{path}: cannot read the artifact ({e.strerror}); check the path and that "
                           "the file was staged") from e
    finally:
        os.close(fd)
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise _sha256_mismatch(path, expected, actual)
    try:
        key.verify(signature, data)
    except InvalidSignature as e:
        raise ReleaseVerifyError(f"{path}: ed25519 signature does not verify against the pinned release key; "
                                 "re-sign the release or check exchange_release_pubkey") from e
    return actual, data


def verify_artifact(path: str, expected_sha256: str, signature_b64: str, public_key_pem: str,
                    max_size: int | None = DEFAULT_MAX_ARTIFACT_SIZE) -> str:
    """Check the artifact's SHA-256 and its ed25519 signature against the pinned public key.

    Both checks run over the same bytes read once (a regular file of at most ``max_size``
    bytes). Return the SHA-256; raise :class:`ReleaseVerifyError` on any mismatch,
    :class:`ReleaseError` when ``cryptography`` is missing or the file cannot be read.
    """
    return _verified_bytes(path, expected_sha256, signature_b64, public_key_pem, max_size)[0]


def verify_release(path: str, expected_sha256: str, signature_b64: str, public_key_pem: str,
                   max_size: int | None = DEFAULT_MAX_ARTIFACT_SIZE, *, max_members: int = DEFAULT_MAX_MEMBERS,
                   max_unpacked_size: int = DEFAULT_MAX_UNPACKED_SIZE) -> tuple[str, dict]:
    """:func:`verify_artifact`, then ``RELEASE.json`` read from the very bytes that were verified.

    Return ``(sha256, manifest)``. The manifest is parsed only once the signature holds, from
    the bytes in memory: no second read of the file, so nothing can be swapped in between.
    """
    digest, data = _verified_bytes(path, expected_sha256, signature_b64, public_key_pem, max_size)
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            return digest, _manifest_of(tar, path, max_members, max_unpacked_size)
    except (OSError, tarfile.TarError, EOFError) as e:
        raise ReleaseError(f"{path}: not a readable .tar.gz release ({e}); rebuild it with the release builder") from e


# --------------------------------------------------------------------------- catalog bound to the manifest


def _fact_text(value: object) -> str:
    return json.dumps(value, ensure_ascii=True)


def _fixes(value: object) -> list[str] | None:
    if not isinstance(value, (list, tuple)) or not all(isinstance(c, str) for c in value):
        return None
    return sorted({c.strip() for c in value})


def check_against_manifest(entry: Mapping[str, object], manifest: Mapping[str, object], where: str) -> None:
    """Raise :class:`ManifestMismatchError` unless the catalog ``entry`` states what the signed ``manifest`` says.

    Compared: :data:`MANIFEST_FACTS` (component, version, fixes as a set of CVE ids, migration,
    restart); every one the entry gives; and ``sbom_sha256`` when the entry names an SBOM. A manifest
    that lacks any of the facts (a release built before manifests carried them) cannot vouch for the
    catalog and is refused.
    ``where`` names the entry (``patches/x.yml: <id>``).
    """
    lacking = [f for f in MANIFEST_FACTS
               if (_fixes(manifest.get(f)) is None if f == "fixes"
                   else not isinstance(manifest.get(f), str) or not manifest.get(f))]
    if lacking:
        raise ManifestMismatchError(
            f"{where}: the signed {MANIFEST} lacks {', '.join(lacking)}, so the catalog entry cannot be checked "
            "against it; rebuild the release with the release builder (exchpatch testbed release) and sign it again",
            lacking)
    wrong: list[str] = []
    texts: list[str] = []
    for field in MANIFEST_FACTS:
        if field not in entry or entry[field] is None:
            continue
        stated: object = entry[field]
        signed: object = manifest[field]
        if field == "fixes":
            stated_fixes, signed = _fixes(stated), _fixes(signed)
            same = stated_fixes is not None and stated_fixes == signed
            stated = stated if stated_fixes is None else stated_fixes
        else:
            same = str(stated) == signed
        if not same:
            wrong.append(field)
            texts.append(f"{field} {_fact_text(stated)} in the catalog, but the signed manifest says "
                         f"{_fact_text(signed)}")
    stated_sbom = entry.get("sbom_sha256")
    if stated_sbom is not None:
        signed_sbom = manifest.get("sbom_sha256")
        if not isinstance(signed_sbom, str) or signed_sbom.lower() != str(stated_sbom).lower():
            wrong.append("sbom_sha256")
            texts.append(f"sbom sha256 {_fact_text(stated_sbom)} in the catalog, but the signed manifest says "
                         f"{_fact_text(signed_sbom)}")
    if wrong:
        raise ManifestMismatchError(
            f"{where}: {'; '.join(texts)}; the catalog must describe the release that was signed: correct the "
            "entry, or build and sign a release that carries these facts", wrong)


def _normal_pem(pem: str) -> str:
    return "\n".join(line.strip() for line in (pem or "").strip().splitlines() if line.strip())


def key_fingerprint(pem: str) -> str:
    """A short fingerprint of a PEM text, for messages (SHA-256 of its normalised lines)."""
    return "sha256:" + hashlib.sha256(_normal_pem(pem).encode()).hexdigest()[:16]


def check_pinned_key(keys: Mapping[str, str | None]) -> str:
    """The one release key every host pins (``exchange_release_pubkey``), normalised; raise naming odd hosts."""
    missing = sorted(h for h, k in keys.items() if not isinstance(k, str) or not k.strip())
    if missing:
        raise ReleaseVerifyError(f"exchange_release_pubkey: not set for {', '.join(missing)}; pin the one release "
                                 "signing key for the whole fleet (group_vars/all) and run again")
    groups: dict[str, list[str]] = {}
    for host, key in keys.items():
        groups.setdefault(_normal_pem(key or ""), []).append(host)
    if len(groups) > 1:
        ranked = sorted(groups.items(), key=lambda kv: (-len(kv[1]), sorted(kv[1])))
        odd = sorted(h for _key, hosts in ranked[1:] for h in hosts)
        detail = "; ".join(f"{key_fingerprint(k)} on {', '.join(sorted(hosts))}" for k, hosts in ranked)
        raise ReleaseVerifyError(
            f"exchange_release_pubkey: {', '.join(odd)} pin{'s' if len(odd) == 1 else ''} a different release key "
            f"than the rest of the fleet ({detail}); one key is pinned for the whole fleet: set the same "
            "exchange_release_pubkey for every host (group_vars/all) and run again")
    return next(iter(groups)) if groups else ""


def check_downgrade(version: str, running: Mapping[str, str | None], allow: bool = False,
                    reason: str | None = None, where: str = "patch") -> dict[str, str]:
    """The hosts running a newer release than ``version`` (host -> version); raise unless that downgrade is allowed.

    A downgrade is allowed only with ``allow`` and a non-empty ``reason``; the way back from a
    bad release is ``playbooks/rollback.yml``, not a "patch" to an older one.
    """
    newer = {h: str(v) for h, v in sorted(running.items())
             if v and version_key(str(v)) > version_key(version)}
    if not newer:
        return {}
    desc = ", ".join(f"{h} runs {v}" for h, v in newer.items())
    if not allow:
        raise DowngradeError(
            f"{where}: version {version} is older than the fleet runs ({desc}): a downgrade, not a patch; go back "
            "with playbooks/rollback.yml, or, to install the older release on purpose, allow it with a reason "
            "(preflight_allow_downgrade=true and preflight_reason)")
    if not (reason or "").strip():
        raise DowngradeError(
            f"{where}: a downgrade to {version} ({desc}) is allowed but no reason is given; say why in "
            "preflight_reason (it is recorded in the audit trail), or go back with playbooks/rollback.yml")
    return newer


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


def _resolve(parts: list[str], links: Mapping[str, str], follow_last: bool) -> list[str] | None:
    """Where the archive-relative path ``parts`` lands once the symlinks in ``links`` are followed.

    ``links`` maps the resolved path of every symlink made so far to its link text, as the
    file system will have them while unpacking into an empty folder. Return the resolved
    components, or None when the path leaves the folder (or loops).
    """
    stack: list[str] = []
    pending = list(parts)
    hops = 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not stack:
                return None
            stack.pop()
            continue
        key = "/".join([*stack, part])
        if key in links and (pending or follow_last):
            hops += 1
            target = links[key]
            if hops > _MAX_LINK_HOPS or target.startswith("/"):
                return None
            pending = target.split("/") + pending
            continue
        stack.append(part)
    return stack


def check_members(members: Iterable[tarfile.TarInfo], artifact: str = "archive", *,
                  max_members: int = DEFAULT_MAX_MEMBERS,
                  max_unpacked_size: int = DEFAULT_MAX_UNPACKED_SIZE) -> list[tarfile.TarInfo]:
    """``members`` (consumed in archive order), after proving none can write outside the target folder.

    Every member's destination is *resolved*, following the symlinks earlier members made (a
    chain ``s -> .``, ``s/esc -> ..``, ``s/esc/x`` is caught at ``s/esc``), and must stay
    inside. Refused: absolute names, ``..`` components, symlinks resolving outside (or
    absolute), hard links to anything but an earlier file of the archive, a link replacing an
    earlier member, devices, FIFOs and other special files, more than ``max_members``
    members, more than ``max_unpacked_size`` bytes of file data.
    """
    fix = "the archive is unsafe to unpack; rebuild the release with the release builder"
    links: dict[str, str] = {}
    files: set[str] = set()
    made: set[str] = set()
    checked: list[tarfile.TarInfo] = []
    total = 0

    def record(path: list[str]) -> None:
        for i in range(1, len(path) + 1):
            made.add("/".join(path[:i]))

    for count, m in enumerate(members, 1):
        if count > max_members:
            raise UnsafeArchiveError(f"{artifact}: holds more than {max_members} members; a release this big is "
                                     "not expected: rebuild the release, or raise max_members if it is right")
        name = _member_name(m.name)
        where = f"{artifact}: member {m.name!r}"
        if m.name.startswith("/") or posixpath.isabs(name):
            raise UnsafeArchiveError(f"{where} has an absolute path; {fix}")
        if ".." in name.split("/"):
            raise UnsafeArchiveError(f"{where} contains '..'; {fix}")
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if m.issym() or m.islnk():
            parent = _resolve(parts[:-1], links, follow_last=True)
            if parent is None or not parts:
                raise UnsafeArchiveError(f"{where} lands outside the release through a symlink; {fix}")
            dest = [*parent, parts[-1]]
            key = "/".join(dest)
            if key in made:
                raise UnsafeArchiveError(f"{where} is a link replacing an earlier member ({key!r}); {fix}")
            if m.issym():
                target = m.linkname
                if posixpath.isabs(target) or _resolve([*parent, *target.split("/")], links, True) is None:
                    raise UnsafeArchiveError(f"{where} is a symlink to {target!r}, outside the release; {fix}")
                links[key] = target
            else:
                target = _member_name(m.linkname)
                resolved = (None if posixpath.isabs(m.linkname) or not target
                            else _resolve(target.split("/"), links, True))
                if resolved is None or "/".join(resolved) not in files:
                    raise UnsafeArchiveError(f"{where} is a hard link to {m.linkname!r}, outside the release (or not "
                                             f"to an earlier file of the archive); {fix}")
                files.add(key)
            record(dest)
        elif m.isfile() or m.isdir():
            dest = _resolve(parts, links, follow_last=True)
            if dest is None:
                raise UnsafeArchiveError(f"{where} lands outside the release through a symlink; {fix}")
            if m.isfile():
                if not dest:
                    raise UnsafeArchiveError(f"{where} is a file in place of the release folder itself; {fix}")
                total += max(m.size, 0)
                if total > max_unpacked_size:
                    raise UnsafeArchiveError(
                        f"{artifact}: unpacks to more than {human_size(max_unpacked_size)}; a release this big is "
                        "not expected: rebuild the release, or raise max_unpacked_size if it is right")
                files.add("/".join(dest))
            record(dest)
        else:
            raise UnsafeArchiveError(f"{where} is a device, FIFO or other special file; {fix}")
        checked.append(m)
    # A later link may change where an earlier one points: every link must still resolve inside.
    for key, target in links.items():
        if _resolve([*key.split("/")[:-1], *target.split("/")], links, True) is None:
            raise UnsafeArchiveError(f"{artifact}: symlink {key!r} -> {target!r} resolves outside the release once "
                                     f"unpacked; {fix}")
    return checked


def safe_members(tar: tarfile.TarFile, artifact: str = "archive", *, max_members: int = DEFAULT_MAX_MEMBERS,
                 max_unpacked_size: int = DEFAULT_MAX_UNPACKED_SIZE) -> list[tarfile.TarInfo]:
    """The members of ``tar``, read one by one and checked with :func:`check_members`."""
    try:
        return check_members(tar, artifact, max_members=max_members, max_unpacked_size=max_unpacked_size)
    except (OSError, tarfile.TarError, EOFError, zlib.error) as e:
        raise ReleaseError(f"{artifact}: the archive is damaged ({e}); stage the artifact again") from e


def _open_tar(artifact: str, name: str | None = None) -> tarfile.TarFile:
    try:
        return tarfile.open(artifact, mode="r:*")
    except (OSError, tarfile.TarError, EOFError) as e:
        raise ReleaseError(f"{name or artifact}: not a readable .tar.gz release ({e}); stage the artifact again") from e


def _parse_manifest(raw: bytes, where: str) -> dict:
    try:
        manifest = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise ReleaseError(f"{where}: {MANIFEST} is not valid JSON ({e}); rebuild the release") from e
    if not isinstance(manifest, dict) or not manifest.get("version") or not manifest.get("component"):
        raise ReleaseError(f"{where}: {MANIFEST} lacks component or version; rebuild the release")
    return manifest


def _manifest_of(tar: tarfile.TarFile, where: str, max_members: int, max_unpacked_size: int) -> dict:
    try:
        members = safe_members(tar, where, max_members=max_members, max_unpacked_size=max_unpacked_size)
        found = [m for m in members if _member_name(m.name) == MANIFEST and m.isfile()]
        if not found:
            raise ReleaseError(f"{where}: no {MANIFEST} at the top of the archive; this is not a "
                               "release artifact, rebuild it with the release builder")
        if found[-1].size > MAX_MANIFEST_SIZE:
            raise ReleaseError(f"{where}: {MANIFEST} is {human_size(found[-1].size)}, over the "
                               f"{human_size(MAX_MANIFEST_SIZE)} a manifest may be; rebuild the release")
        fh = tar.extractfile(found[-1])
        raw = fh.read(MAX_MANIFEST_SIZE + 1) if fh else b""
    except (OSError, tarfile.TarError, EOFError, zlib.error) as e:
        raise ReleaseError(f"{where}: the archive is damaged ({e}); stage the artifact again") from e
    return _parse_manifest(raw, where)


def archive_manifest(artifact: str, name: str | None = None, *, max_members: int = DEFAULT_MAX_MEMBERS,
                     max_unpacked_size: int = DEFAULT_MAX_UNPACKED_SIZE) -> dict:
    """``RELEASE.json`` of an artifact, read without unpacking; the archive is checked with :func:`safe_members`.

    ``name`` is how messages call the artifact (default its path), e.g. the staged file a
    private copy was made from.
    """
    where = name or artifact
    with _open_tar(artifact, where) as tar:
        return _manifest_of(tar, where, max_members, max_unpacked_size)


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
    match = re.match(r"^([0-9]+(?:\.[0-9]+)*)(.*)$", version)
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


def unpack_release(artifact: str, root: str, version: str, component: str | None = None, name: str | None = None,
                   *, max_members: int = DEFAULT_MAX_MEMBERS,
                   max_unpacked_size: int = DEFAULT_MAX_UNPACKED_SIZE) -> str:
    """Unpack ``artifact`` to ``<root>/releases/<version>`` atomically; return that folder.

    The archive is checked with :func:`safe_members` (resolved destinations, caps) and then
    extracted with Python's ``data`` filter, which re-checks every path against the real
    folder; a Python without that filter is refused rather than trusted. Extraction goes to
    a hidden temporary folder beside the final one, the manifest is checked, and the folder
    renamed into place: a reader never sees a half-unpacked release, and a failure leaves
    nothing behind. ``name`` is how messages call the artifact (default its path).
    """
    check_version(version)
    where = name or artifact
    if not hasattr(tarfile, "data_filter"):
        raise ReleaseError(f"{where}: this Python ({sys.version.split()[0]}) has no tarfile data filter, so an "
                           "archive cannot be unpacked safely; run the node's modules with Python 3.11.4 or newer "
                           "(ansible_python_interpreter)")
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
        with _open_tar(artifact, where) as tar:
            members = safe_members(tar, where, max_members=max_members, max_unpacked_size=max_unpacked_size)
            try:
                tar.extractall(tmp, members=members, filter="data")
            except (tarfile.TarError, EOFError, zlib.error) as e:
                raise ReleaseError(f"{where}: cannot unpack ({e}); stage the artifact again") from e
        check_manifest(release_manifest(tmp), where, version, component)
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
