# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The patch catalog: one YAML mapping per ``patches/*.yml`` file, validated into :class:`Patch` records.

Only regular files of at most :data:`MAX_ENTRY_SIZE` bytes are read; the YAML is strict (no duplicate
keys, no aliases) and ids, versions and CVE IDs are ASCII. Every problem raises one
:class:`CatalogError` naming the file, the field, the problem and the fix.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import os
import re
import stat
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from ansible_collections.exchangeops.patching.plugins.module_utils import _safe_io
from ansible_collections.exchangeops.patching.plugins.module_utils._errors import InputError

HAS_YAML = _safe_io.HAS_YAML
YAML_IMPORT_ERROR = _safe_io.YAML_IMPORT_ERROR
MAX_ENTRY_SIZE = _safe_io.MAX_CATALOG_ENTRY_SIZE
MAX_ENTRIES = 10_000

COMPONENTS = ("matching-engine", "wallet-signer")
RESTARTS = ("none", "service", "system")
MIGRATIONS = ("none", "forward_compatible", "irreversible")

# ASCII only: \d would also match "٣" (ARABIC-INDIC DIGIT THREE) and let "1.٤.3" pass as 1.4.3.
_ID_RE = re.compile(r"[A-Za-z0-9._-]+\Z", re.ASCII)
# Dotted numeric version with an optional suffix, as the testbed release builder writes them (1.4.3, 1.4.3-rc1).
_VERSION_RE = re.compile(r"[0-9]+(?:\.[0-9]+)+(?:[.-][0-9A-Za-z.-]+)?\Z", re.ASCII)
_VERSION_CORE_RE = re.compile(r"[0-9]+(?:\.[0-9]+)*", re.ASCII)
_CVE_RE = re.compile(r"CVE-[0-9]{4}-[0-9]{4,}\Z", re.ASCII)
_SHA256_RE = re.compile(r"[0-9a-fA-F]{64}\Z", re.ASCII)

# field -> example value shown when it is missing or wrong
_EXAMPLES = {
    "id": "matching-engine-1.4.3",
    "component": "matching-engine",
    "version": '"1.4.3"',
    "artifact": '{url: "file://.testbed/releases/matching-engine-1.4.3.tar.gz", sha256: "<64 hex>", '
    'signature: "<base64>"}',
    "fixes": "[CVE-2026-31337]  (or [] when the patch fixes no CVE)",
    "restart": "service",
    "migration": "none",
    "change_size": "{files: 3, lines: 42}",
    "released_at": '"2026-11-20T09:00:00Z"',
    "artifact.url": '"file://.testbed/releases/matching-engine-1.4.3.tar.gz"',
    "artifact.sha256": '"9f2c...e1" (64 hexadecimal characters, e.g. from sha256sum)',
    "artifact.signature": '"MEUCIQ..." (base64)',
    "sbom": '{url: "file://.testbed/releases/matching-engine-1.4.3.cdx.json", sha256: "<64 hex>"}',
    "sbom.url": '"file://.testbed/releases/matching-engine-1.4.3.cdx.json"',
    "sbom.sha256": '"9f2c...e1" (64 hexadecimal characters, e.g. from sha256sum)',
    "change_size.files": "3",
    "change_size.lines": "42",
}
_FIELDS = ("id", "component", "version", "artifact", "fixes", "restart", "migration", "change_size", "released_at")
_OPTIONAL_FIELDS = ("sbom",)
_ARTIFACT_FIELDS = ("url", "sha256", "signature")
_SBOM_FIELDS = ("url", "sha256")
_CHANGE_FIELDS = ("files", "lines")


class CatalogError(InputError):
    """A catalog entry that cannot be used; ``str()`` is ``"<path>: <record>: <message>; <fix>"``."""


@dataclass(frozen=True)
class Patch:
    id: str
    component: str
    version: str
    artifact_url: str
    sha256: str  # lower-case hex
    signature: str  # base64, as written
    fixes: tuple[str, ...]
    restart: str  # none | service | system
    migration: str  # none | forward_compatible | irreversible
    change_files: int
    change_lines: int
    released_at: str  # ISO 8601, UTC, e.g. 2026-11-20T09:00:00Z
    source: str  # catalog file
    sbom_url: str | None = None  # the release's CycloneDX SBOM, when the entry names one
    sbom_sha256: str | None = None  # lower-case hex


def version_key(version: str) -> tuple[int, ...]:
    """Sort key of a dotted version: ``version_key("1.4.10") > version_key("1.4.9")``.

    Only the leading dotted-numeric part counts ("1.4.3-rc1" sorts equal to "1.4.3"); ValueError without one
    and for any non-ASCII character (a version is an identifier).
    """
    if isinstance(version, str) and not version.isascii():
        raise ValueError(f"version {version!r} contains a non-ASCII character ({_safe_io.non_ascii(version)})")
    match = _VERSION_CORE_RE.match(version.strip()) if isinstance(version, str) else None
    if match is None:
        raise ValueError(f"version {version!r} is not a dotted version like 1.4.3")
    return tuple(int(part) for part in match.group(0).split("."))


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if value is None:
        return "null"
    return f"{type(value).__name__} {value!r}"


def _yaml_hint(value: Any) -> str:
    if isinstance(value, bool):
        return " (YAML reads unquoted yes/no/on/off/true/false as booleans)"
    if isinstance(value, (int, float)):
        return " (YAML reads unquoted numbers as numbers)"
    return ""


def _need_str(path: str, field: str, value: Any) -> str:
    key = field.rsplit(".", 1)[-1]
    if not isinstance(value, str):
        hint = _yaml_hint(value)
        raise CatalogError(
            path, field, f"must be a string, not {_describe(value)}{hint}",
            f"{'quote the value, e.g.' if hint else 'write it like'} {key}: {_EXAMPLES[field]}",
        )
    text = value.strip()
    if not text:
        raise CatalogError(path, field, "is empty", f"write it like {key}: {_EXAMPLES[field]}")
    return text


def _choice(path: str, field: str, value: Any, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise CatalogError(
            path, field, f"unknown value {_describe(value)}{_yaml_hint(value)}", f"use one of: {', '.join(allowed)}"
        )
    return value


def _unknown_keys(path: str, where: str | None, mapping: dict[Any, Any], allowed: tuple[str, ...]) -> None:
    unknown = [k for k in mapping if k not in allowed]
    if not unknown:
        return
    key = unknown[0]
    close = difflib.get_close_matches(str(key), allowed, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    label = f"{where}.{key}" if where else str(key)
    scope = f" in {where}" if where else ""
    raise CatalogError(path, label, f"unknown key {key!r}", f"{hint}allowed keys{scope}: {', '.join(allowed)}")


def _missing(path: str, where: str | None, mapping: dict[Any, Any], required: tuple[str, ...]) -> None:
    for name in required:
        if name not in mapping:
            field = f"{where}.{name}" if where else name
            raise CatalogError(path, field, "required field is missing", f"add it, e.g. {name}: {_EXAMPLES[field]}")


def _mapping(path: str, field: str, value: Any) -> dict[Any, Any]:
    if not isinstance(value, dict):
        raise CatalogError(path, field, f"must be a mapping, not {_describe(value)}",
                           f"write it like {field}: {_EXAMPLES[field]}")
    return value


def _count(path: str, field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CatalogError(path, field, f"must be a whole number >= 0, not {_describe(value)}",
                           f"write it like {field.split('.')[-1]}: {_EXAMPLES[field]}")
    return value


def _released_at(path: str, value: Any) -> str:
    field = "released_at"
    moment: datetime | None = None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        text = value.strip()
        try:
            moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
        except ValueError:
            moment = None
    if moment is None:
        raise CatalogError(
            path, field, f"{_describe(value)} is not an ISO 8601 date or date-time",
            f"write it like {field}: {_EXAMPLES[field]} (UTC) or 2026-11-20",
        )
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


def _non_ascii(path: str, field: str, text: str, example: str) -> None:
    bad = _safe_io.non_ascii(text)
    if bad is not None:
        raise CatalogError(path, field, f"{text!r} contains a non-ASCII character ({bad})",
                           f"identifiers are ASCII; write it like {example}")


def load_patch(path: str) -> Patch:
    """One catalog entry; CatalogError naming the file, the field and the fix on any problem."""
    data = _safe_io.read_regular(path, MAX_ENTRY_SIZE, what="catalog entry", error=CatalogError)
    text = _safe_io.decode_utf8(path, data, what="catalog entry", error=CatalogError)
    doc = _safe_io.load_yaml(path, text, what="patch catalog", error=CatalogError)
    if doc is None:
        raise CatalogError(path, None, "file is empty", "write one patch as a YAML mapping (see patches/*.yml)")
    if not isinstance(doc, dict):
        raise CatalogError(path, None, f"must be a YAML mapping, not {_describe(doc)}",
                           "write one patch per file as a mapping with keys " + ", ".join(_FIELDS))
    _unknown_keys(path, None, doc, _FIELDS + _OPTIONAL_FIELDS)
    _missing(path, None, doc, _FIELDS)

    patch_id = _need_str(path, "id", doc["id"])
    _non_ascii(path, "id", patch_id, _EXAMPLES["id"])
    if not _ID_RE.match(patch_id):
        raise CatalogError(path, "id", f"{patch_id!r} has characters other than letters, digits, '.', '_' and '-'",
                           f"use an id like {_EXAMPLES['id']}")
    component = _choice(path, "component", doc["component"], COMPONENTS)
    version = _need_str(path, "version", doc["version"])
    _non_ascii(path, "version", version, "version: " + _EXAMPLES["version"])
    if not _VERSION_RE.match(version):
        raise CatalogError(path, "version", f"{version!r} is not a dotted version",
                           f"write it like version: {_EXAMPLES['version']}")

    artifact = _mapping(path, "artifact", doc["artifact"])
    _unknown_keys(path, "artifact", artifact, _ARTIFACT_FIELDS)
    _missing(path, "artifact", artifact, _ARTIFACT_FIELDS)
    url = _url(path, "artifact.url", artifact["url"])
    sha256 = _sha256(path, "artifact.sha256", artifact["sha256"], "the artifact", "<artifact>")
    signature = _need_str(path, "artifact.signature", artifact["signature"])
    try:
        base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        raise CatalogError(path, "artifact.signature", f"{signature[:40]!r} is not base64",
                           "give the detached signature of the artifact, base64-encoded") from None

    fixes_raw = doc["fixes"]
    if fixes_raw is None or not isinstance(fixes_raw, list):
        raise CatalogError(path, "fixes", f"must be a list of CVE IDs, not {_describe(fixes_raw)}",
                           f"write it like fixes: {_EXAMPLES['fixes']}")
    fixes: list[str] = []
    for i, cve in enumerate(fixes_raw):
        if isinstance(cve, str):
            _non_ascii(path, f"fixes[{i}]", cve, "CVE-2026-31337")
        if not isinstance(cve, str) or not _CVE_RE.match(cve.strip()):
            raise CatalogError(path, f"fixes[{i}]", f"{_describe(cve)} is not a CVE ID",
                               "write CVE IDs as CVE-YYYY-NNNN (four-digit year, at least four digits)")
        if cve.strip() in fixes:
            raise CatalogError(path, f"fixes[{i}]", f"{cve.strip()} is listed twice", "list each CVE once")
        fixes.append(cve.strip())

    restart = _choice(path, "restart", doc["restart"], RESTARTS)
    migration = _choice(path, "migration", doc["migration"], MIGRATIONS)
    change = _mapping(path, "change_size", doc["change_size"])
    _unknown_keys(path, "change_size", change, _CHANGE_FIELDS)
    _missing(path, "change_size", change, _CHANGE_FIELDS)
    files = _count(path, "change_size.files", change["files"])
    lines = _count(path, "change_size.lines", change["lines"])
    released = _released_at(path, doc["released_at"])
    sbom_url, sbom_sha256 = _sbom(path, doc.get("sbom", None)) if "sbom" in doc else (None, None)
    return Patch(patch_id, component, version, url, sha256.lower(), signature, tuple(fixes), restart, migration,
                 files, lines, released, path, sbom_url, sbom_sha256)


def _sbom(path: str, value: Any) -> tuple[str, str]:
    """``sbom: {url, sha256}``: where the release's CycloneDX SBOM is, and its SHA-256."""
    sbom = _mapping(path, "sbom", value)
    _unknown_keys(path, "sbom", sbom, _SBOM_FIELDS)
    _missing(path, "sbom", sbom, _SBOM_FIELDS)
    return _url(path, "sbom.url", sbom["url"]), _sha256(path, "sbom.sha256", sbom["sha256"], "the SBOM file",
                                                        "<file>").lower()


def _url(path: str, field: str, value: Any) -> str:
    """A URL field (``artifact.url``, ``sbom.url``): a non-empty string without whitespace."""
    url = _need_str(path, field, value)
    if any(c.isspace() for c in url):
        raise CatalogError(path, field, f"{url!r} contains whitespace",
                           f"percent-encode it, e.g. url: {_EXAMPLES[field]}")
    return url


def _sha256(path: str, field: str, value: Any, what: str, file_arg: str) -> str:
    """A SHA-256 field, as written: 64 hexadecimal characters."""
    sha256 = _need_str(path, field, value)
    if not _SHA256_RE.match(sha256):
        raise CatalogError(path, field, f"{sha256!r} is not 64 hexadecimal characters",
                           f"give the SHA-256 of {what} as printed by 'sha256sum {file_arg}'")
    return sha256


def load_catalog(directory: str) -> list[Patch]:
    """Every ``*.yml``/``*.yaml`` file directly in ``directory`` (dot-files skipped), sorted by id."""
    if not os.path.isdir(directory):
        what = "is not a directory" if os.path.exists(directory) else "directory not found"
        raise CatalogError(directory, None, what, "point at the patch catalog directory (e.g. patches/)")
    try:
        names = sorted(os.listdir(directory))
    except OSError as exc:
        raise CatalogError(directory, None, f"cannot list the directory: {exc.strerror or exc}",
                           "check the directory's permissions") from None
    files = [os.path.join(directory, n) for n in names if n.endswith((".yml", ".yaml")) and not n.startswith(".")]
    for path in files:
        # A FIFO or /dev/zero named *.yml is refused rather than skipped: a catalog that silently loses an entry lies.
        # load_patch checks the opened file again, so a swap after this check changes nothing.
        try:
            mode = os.stat(path).st_mode
        except OSError as exc:
            raise CatalogError(path, None, f"cannot read the catalog entry: {exc.strerror or exc}",
                               "remove the broken entry or fix its permissions") from None
        if not stat.S_ISREG(mode):
            raise CatalogError(path, None, f"is {_safe_io.describe_mode(mode)}, not a regular file",
                               "keep only patch files (*.yml) in the catalog directory")
    if len(files) > MAX_ENTRIES:
        raise CatalogError(directory, None, f"{len(files)} patch files, more than {MAX_ENTRIES}",
                           "point at the patch catalog directory, or archive old entries")
    if not files:
        raise CatalogError(directory, None, "no patch files (*.yml, *.yaml)",
                           "add one YAML file per patch, e.g. matching-engine-1.4.3.yml")
    seen: dict[str, str] = {}
    patches: list[Patch] = []
    for path in files:
        patch = load_patch(path)
        if patch.id in seen:
            raise CatalogError(path, "id", f"duplicate id {patch.id!r}, already defined in {seen[patch.id]}",
                               "give every patch a unique id (one file per patch)")
        seen[patch.id] = path
        patches.append(patch)
    return sorted(patches, key=lambda p: p.id)
