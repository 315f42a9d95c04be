# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""CycloneDX SBOMs and VEX documents: strict loading, package URLs, and the difference between two releases.

* :func:`load_sbom` / :func:`sbom_from_doc`: a CycloneDX 1.4-1.6 JSON BOM, components flattened (nested
  ``components`` included), each purl parsed with ``packageurl-python``;
* :func:`diff`: components added, removed and changed (same package, other version) from one release to another;
* :func:`load_vex` / :func:`vex_from_doc`: CycloneDX VEX (``vulnerabilities[].analysis``) and OpenVEX
  (``statements[]``), validated into :class:`VexStatement` records.

Every problem raises :class:`SbomError` (an :class:`InputError`) naming the file, the field and the fix.
Files are read with :mod:`_safe_io` (regular files only, size capped, strict JSON).
"""

from __future__ import annotations

import hashlib
import json
import re
import traceback
from dataclasses import dataclass
from typing import Any

from ansible_collections.exchangeops.patching.plugins.module_utils import _safe_io
from ansible_collections.exchangeops.patching.plugins.module_utils._errors import InputError

try:
    from packageurl import PackageURL
except ImportError:
    HAS_PACKAGEURL = False
    PACKAGEURL_IMPORT_ERROR: str | None = traceback.format_exc()
else:
    HAS_PACKAGEURL = True
    PACKAGEURL_IMPORT_ERROR = None

MAX_SBOM_SIZE = 64 * _safe_io.MiB
MAX_COMPONENTS = 100_000
SPEC_VERSIONS = ("1.4", "1.5", "1.6")
# Statuses that take a product out of a CVE's exposure (CycloneDX analysis.state / OpenVEX status).
NOT_AFFECTED = ("not_affected", "false_positive", "fixed", "resolved")
CDX_STATES = ("resolved", "resolved_with_pedigree", "exploitable", "in_triage", "false_positive", "not_affected")
CDX_JUSTIFICATIONS = (
    "code_not_present", "code_not_reachable", "requires_configuration", "requires_dependency",
    "requires_environment", "protected_by_compiler", "protected_at_runtime", "protected_at_perimeter",
    "protected_by_mitigating_control",
)
OPENVEX_STATUSES = ("not_affected", "affected", "fixed", "under_investigation")
OPENVEX_JUSTIFICATIONS = (
    "component_not_present", "vulnerable_code_not_present", "vulnerable_code_not_in_execute_path",
    "vulnerable_code_cannot_be_controlled_by_adversary", "inline_mitigations_already_exist",
)
_VULN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{1,127}\Z", re.ASCII)
_SBOM_FIX = ('write a CycloneDX JSON BOM: {"bomFormat": "CycloneDX", "specVersion": "1.6", '
             '"components": [{"type": "library", "name": ..., "version": ..., "purl": "pkg:..."}]}')


class SbomError(InputError):
    """An SBOM or VEX document that cannot be used; ``str()`` is ``"<path>: <field>: <message>; <fix>"``."""


@dataclass(frozen=True)
class Component:
    name: str
    version: str | None
    purl: str | None  # as written in the SBOM
    bom_ref: str | None
    type: str
    cpe: str | None = None
    ptype: str | None = None  # purl type: deb, pypi, generic, ...
    namespace: str | None = None
    pname: str | None = None  # purl name
    pversion: str | None = None
    qualifiers: tuple[tuple[str, str], ...] = ()

    @property
    def package(self) -> tuple[str | None, str | None, str | None, str | None] | None:
        """The package's identity without its version (purl type, namespace, name, distro): what diff pairs on."""
        if self.ptype is None:
            return None
        return (self.ptype, self.namespace, self.pname, dict(self.qualifiers).get("distro"))

    def label(self) -> str:
        return self.purl or f"{self.name}@{self.version or '?'}"


@dataclass(frozen=True)
class Sbom:
    source: str
    spec_version: str
    serial: str | None
    subject: Component | None  # metadata.component: the release itself
    components: tuple[Component, ...]
    digest: str  # sha256 of the canonical JSON document: nodes with equal digests run the same release

    def label(self) -> str:
        if self.subject is not None:
            return f"{self.subject.name} {self.subject.version or ''}".strip()
        return self.source


@dataclass(frozen=True)
class SbomDiff:
    added: tuple[Component, ...]
    removed: tuple[Component, ...]
    changed: tuple[tuple[Component, Component], ...]  # (old, new)

    def changes(self, comp: Component) -> bool:
        """Whether the diff adds, removes or changes the package ``comp`` belongs to."""
        key = comp.package
        if key is None:
            return any(c.label() == comp.label() for c in self.removed)
        return (any(old.package == key for old, _new in self.changed)
                or any(c.package == key for c in self.removed))

    def as_json(self) -> dict[str, Any]:
        return {
            "added": [c.label() for c in self.added],
            "removed": [c.label() for c in self.removed],
            "changed": [{"from": o.label(), "to": n.label()} for o, n in self.changed],
        }


@dataclass(frozen=True)
class VexStatement:
    vulnerability: str  # CVE (or other advisory id) as written
    aliases: tuple[str, ...]
    products: tuple[str, ...]  # purls or bom-refs / BOM-links the statement is about
    subcomponents: tuple[str, ...]  # OpenVEX: purls inside the products
    status: str  # normalised: not_affected | false_positive | fixed | resolved | affected | ...
    justification: str | None
    detail: str | None  # impact statement / analysis detail
    source: str
    format: str  # openvex | cyclonedx

    @property
    def not_affected(self) -> bool:
        return self.status in NOT_AFFECTED

    def why(self) -> str:
        return self.justification or self.detail or self.status


# --------------------------------------------------------------------------- helpers


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    return names.get(type(value), type(value).__name__)


def _need_str(path: str, field: str, value: Any, fix: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SbomError(path, field, f"must be a non-empty string, not {_kind(value)}", fix)
    return value.strip()


def _opt_str(path: str, field: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise SbomError(path, field, f"must be a string, not {_kind(value)}", "write it as a JSON string")
    return value.strip() or None


def _list(path: str, field: str, value: Any, fix: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise SbomError(path, field, f"must be a list, not {_kind(value)}", fix)
    return value


def parse_purl(text: str, path: str = "purl", field: str | None = None) -> Any:
    """A ``PackageURL`` from ``text``; SbomError naming ``path``/``field`` when it is not a package URL."""
    if not HAS_PACKAGEURL:
        raise SbomError(path, field, "packageurl-python is not installed", "pip install packageurl-python")
    bad = _safe_io.non_ascii(text)
    if bad is not None:
        raise SbomError(path, field, f"purl {text[:80]!r} contains a non-ASCII character ({bad})",
                        "percent-encode it as the purl specification requires")
    try:
        return PackageURL.from_string(text)
    except ValueError as e:
        raise SbomError(path, field, f"{text[:80]!r} is not a package URL ({e})",
                        "write it like pkg:deb/debian/openssh@1:9.2p1-2+deb12u2?distro=debian-12") from None


def _read_json(path: str, max_size: int, what: str) -> Any:
    data = _safe_io.read_regular(path, max_size, what=what, error=SbomError)
    return _safe_io.load_json(path, _safe_io.decode_utf8(path, data, what=what, error=SbomError), what=what,
                              error=SbomError)


def doc_digest(doc: Any) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# --------------------------------------------------------------------------- SBOM


def _component(path: str, field: str, rec: Any) -> Component:
    if not isinstance(rec, dict):
        raise SbomError(path, field, f"a component must be an object, not {_kind(rec)}",
                        'write it like {"type": "library", "name": "openssh", "version": "...", "purl": "pkg:..."}')
    ctype = _need_str(path, f"{field}.type", rec.get("type"), 'give the component type, e.g. "type": "library"')
    name = _need_str(path, f"{field}.name", rec.get("name"), 'give the component name, e.g. "name": "openssh"')
    version = _opt_str(path, f"{field}.version", rec.get("version"))
    purl_text = _opt_str(path, f"{field}.purl", rec.get("purl"))
    bom_ref = _opt_str(path, f"{field}.bom-ref", rec.get("bom-ref"))
    cpe = _opt_str(path, f"{field}.cpe", rec.get("cpe"))
    if cpe is not None and not cpe.startswith("cpe:2.3:"):
        raise SbomError(path, f"{field}.cpe", f"{cpe[:80]!r} is not a CPE 2.3 name",
                        "write it like cpe:2.3:a:openbsd:openssh:9.2:p1:*:*:*:*:*:*, or leave it out")
    if purl_text is None:
        return Component(name, version, None, bom_ref, ctype, cpe)
    purl = parse_purl(purl_text, path, f"{field}.purl")
    if purl.version and version and purl.version != version:
        raise SbomError(path, f"{field}.purl", f"purl version {purl.version!r} differs from version {version!r}",
                        "make the component's version and its purl agree")
    quals = purl.qualifiers if isinstance(purl.qualifiers, dict) else {}
    return Component(name, version or purl.version, purl_text, bom_ref, ctype, cpe, purl.type, purl.namespace,
                     purl.name, purl.version or version, tuple(sorted(quals.items())))


def sbom_from_doc(doc: Any, path: str) -> Sbom:
    """Validate a parsed CycloneDX document; ``path`` names it in errors."""
    if not isinstance(doc, dict):
        raise SbomError(path, None, f"an SBOM must be a JSON object, not {_kind(doc)}", _SBOM_FIX)
    if doc.get("bomFormat") != "CycloneDX":
        raise SbomError(path, "bomFormat", f"is {doc.get('bomFormat')!r}, not 'CycloneDX'",
                        "give a CycloneDX JSON SBOM (SPDX is not supported; convert it with cyclonedx-cli)")
    spec = doc.get("specVersion")
    if spec not in SPEC_VERSIONS:
        raise SbomError(path, "specVersion", f"{spec!r} is not supported",
                        f"use CycloneDX {', '.join(SPEC_VERSIONS)} (e.g. export with specVersion 1.6)")
    serial = _opt_str(path, "serialNumber", doc.get("serialNumber"))
    meta = doc.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        raise SbomError(path, "metadata", f"must be an object, not {_kind(meta)}", _SBOM_FIX)
    subject = None
    if meta and meta.get("component") is not None:
        subject = _component(path, "metadata.component", meta["component"])
    out: list[Component] = []
    refs: dict[str, str] = {}
    stack = [(f"components[{i}]", c) for i, c in
             reversed(list(enumerate(_list(path, "components", doc.get("components"), _SBOM_FIX))))]
    while stack:
        field, rec = stack.pop()
        comp = _component(path, field, rec)
        if comp.bom_ref is not None:
            if comp.bom_ref in refs:
                raise SbomError(path, f"{field}.bom-ref", f"{comp.bom_ref!r} is used twice (also {refs[comp.bom_ref]})",
                                "give every component its own bom-ref")
            refs[comp.bom_ref] = field
        out.append(comp)
        if len(out) > MAX_COMPONENTS:
            raise SbomError(path, "components", f"more than {MAX_COMPONENTS} components",
                            "check that this is a release SBOM, not a whole image or repository")
        nested = _list(path, f"{field}.components", rec.get("components"), "nest components as a list")
        stack.extend((f"{field}.components[{j}]", c) for j, c in reversed(list(enumerate(nested))))
    return Sbom(path, spec, serial, subject, tuple(out), doc_digest(doc))


def load_sbom(path: str, max_size: int = MAX_SBOM_SIZE) -> Sbom:
    """A CycloneDX JSON SBOM from a regular file of at most ``max_size`` bytes."""
    return sbom_from_doc(_read_json(path, max_size, "SBOM"), path)


def diff(old: Sbom, new: Sbom) -> SbomDiff:
    """Components added, removed and changed (same package, other version) going from ``old`` to ``new``.

    Packages are paired by purl type, namespace, name and distro; components without a purl by name.
    """
    def keyed(sbom: Sbom) -> dict[Any, list[Component]]:
        table: dict[Any, list[Component]] = {}
        for c in sbom.components:
            table.setdefault(c.package or ("name", c.name), []).append(c)
        return table

    before, after = keyed(old), keyed(new)
    added: list[Component] = []
    removed: list[Component] = []
    changed: list[tuple[Component, Component]] = []
    for key in sorted(set(before) | set(after), key=repr):
        olds = sorted(before.get(key, []), key=lambda c: c.version or "")
        news = sorted(after.get(key, []), key=lambda c: c.version or "")
        old_versions = {c.version for c in olds}
        new_versions = {c.version for c in news}
        gone = [c for c in olds if c.version not in new_versions]
        came = [c for c in news if c.version not in old_versions]
        for o, n in zip(gone, came):
            changed.append((o, n))
        removed += gone[len(came):]
        added += came[len(gone):]
    return SbomDiff(tuple(added), tuple(removed), tuple(changed))


# --------------------------------------------------------------------------- VEX


def _vuln_id(path: str, field: str, value: Any) -> str:
    text = _need_str(path, field, value, "give the vulnerability id, e.g. CVE-2024-6387")
    if not _VULN_ID_RE.match(text):
        raise SbomError(path, field, f"{text[:80]!r} is not a vulnerability id",
                        "write it like CVE-2024-6387 or GHSA-xxxx-xxxx-xxxx (ASCII)")
    return text.upper() if text.upper().startswith("CVE-") else text


def _product_ref(path: str, field: str, value: Any) -> str:
    ref = value.get("@id") if isinstance(value, dict) else value
    text = _need_str(path, field, ref, 'name the product by purl, e.g. {"@id": "pkg:deb/debian/openssh@..."}')
    if text.startswith("pkg:"):
        parse_purl(text, path, field)
    return text


def _openvex(doc: dict[str, Any], path: str) -> list[VexStatement]:
    fix = 'write OpenVEX statements like {"vulnerability": {"name": "CVE-..."}, "products": [{"@id": "pkg:..."}], ' \
          '"status": "not_affected", "justification": "vulnerable_code_not_present"}'
    out = []
    statements = _list(path, "statements", doc.get("statements"), fix)
    if not statements:
        raise SbomError(path, "statements", "no statements", fix)
    for i, st in enumerate(statements):
        where = f"statements[{i}]"
        if not isinstance(st, dict):
            raise SbomError(path, where, f"must be an object, not {_kind(st)}", fix)
        vuln = st.get("vulnerability")
        aliases: tuple[str, ...] = ()
        if isinstance(vuln, dict):
            name = _vuln_id(path, f"{where}.vulnerability.name", vuln.get("name"))
            aliases = tuple(_vuln_id(path, f"{where}.vulnerability.aliases[{j}]", a) for j, a in
                            enumerate(_list(path, f"{where}.vulnerability.aliases", vuln.get("aliases"), fix)))
        else:
            name = _vuln_id(path, f"{where}.vulnerability", vuln)
        products = _list(path, f"{where}.products", st.get("products"), fix)
        if not products:
            raise SbomError(path, f"{where}.products", "names no product", fix)
        refs, subs = [], []
        for j, prod in enumerate(products):
            refs.append(_product_ref(path, f"{where}.products[{j}]", prod))
            if isinstance(prod, dict):
                for k, sub in enumerate(_list(path, f"{where}.products[{j}].subcomponents", prod.get("subcomponents"),
                                              fix)):
                    subs.append(_product_ref(path, f"{where}.products[{j}].subcomponents[{k}]", sub))
        status = st.get("status")
        if status not in OPENVEX_STATUSES:
            raise SbomError(path, f"{where}.status", f"{status!r} is not an OpenVEX status",
                            f"use one of: {', '.join(OPENVEX_STATUSES)}")
        justification = _opt_str(path, f"{where}.justification", st.get("justification"))
        impact = _opt_str(path, f"{where}.impact_statement", st.get("impact_statement"))
        if justification is not None and justification not in OPENVEX_JUSTIFICATIONS:
            raise SbomError(path, f"{where}.justification", f"{justification!r} is not an OpenVEX justification",
                            f"use one of: {', '.join(OPENVEX_JUSTIFICATIONS)}")
        if status == "not_affected" and justification is None and impact is None:
            raise SbomError(path, where, "says not_affected without a justification or impact_statement",
                            "say why, e.g. \"justification\": \"vulnerable_code_not_in_execute_path\"")
        out.append(VexStatement(name, aliases, tuple(refs), tuple(subs), status, justification, impact, path,
                                "openvex"))
    return out


def _cyclonedx_vex(doc: dict[str, Any], path: str) -> list[VexStatement]:
    fix = 'write CycloneDX VEX like {"id": "CVE-...", "analysis": {"state": "not_affected", ' \
          '"justification": "code_not_reachable"}, "affects": [{"ref": "pkg:..."}]}'
    out = []
    vulns = _list(path, "vulnerabilities", doc.get("vulnerabilities"), fix)
    if not vulns:
        raise SbomError(path, "vulnerabilities", "no vulnerabilities: a VEX document states at least one", fix)
    for i, v in enumerate(vulns):
        where = f"vulnerabilities[{i}]"
        if not isinstance(v, dict):
            raise SbomError(path, where, f"must be an object, not {_kind(v)}", fix)
        name = _vuln_id(path, f"{where}.id", v.get("id"))
        aliases = []
        for j, ref in enumerate(_list(path, f"{where}.references", v.get("references"), fix)):
            if isinstance(ref, dict) and isinstance(ref.get("id"), str):
                aliases.append(_vuln_id(path, f"{where}.references[{j}].id", ref["id"]))
        analysis = v.get("analysis")
        if not isinstance(analysis, dict):
            raise SbomError(path, f"{where}.analysis", f"must be an object, not {_kind(analysis)}", fix)
        state = analysis.get("state")
        if state not in CDX_STATES:
            raise SbomError(path, f"{where}.analysis.state", f"{state!r} is not a CycloneDX analysis state",
                            f"use one of: {', '.join(CDX_STATES)}")
        justification = _opt_str(path, f"{where}.analysis.justification", analysis.get("justification"))
        if justification is not None and justification not in CDX_JUSTIFICATIONS:
            raise SbomError(path, f"{where}.analysis.justification",
                            f"{justification!r} is not a CycloneDX justification",
                            f"use one of: {', '.join(CDX_JUSTIFICATIONS)}")
        detail = _opt_str(path, f"{where}.analysis.detail", analysis.get("detail"))
        if state == "not_affected" and justification is None:
            raise SbomError(path, f"{where}.analysis", "says not_affected without a justification",
                            f"say why with analysis.justification, one of: {', '.join(CDX_JUSTIFICATIONS)}")
        affects = _list(path, f"{where}.affects", v.get("affects"), fix)
        if not affects:
            raise SbomError(path, f"{where}.affects", "names no component", fix)
        refs = []
        for j, a in enumerate(affects):
            if not isinstance(a, dict):
                raise SbomError(path, f"{where}.affects[{j}]", f"must be an object, not {_kind(a)}", fix)
            refs.append(_product_ref(path, f"{where}.affects[{j}].ref", a.get("ref")))
        out.append(VexStatement(name, tuple(aliases), tuple(refs), (), state, justification, detail, path,
                                "cyclonedx"))
    return out


def vex_from_doc(doc: Any, path: str) -> list[VexStatement]:
    """Statements of an OpenVEX document or a CycloneDX BOM with ``vulnerabilities`` (the format is detected)."""
    if isinstance(doc, dict) and (str(doc.get("@context", "")).startswith("https://openvex.dev/")
                                  or ("statements" in doc and "bomFormat" not in doc)):
        return _openvex(doc, path)
    if isinstance(doc, dict) and doc.get("bomFormat") == "CycloneDX":
        if doc.get("specVersion") not in SPEC_VERSIONS:
            raise SbomError(path, "specVersion", f"{doc.get('specVersion')!r} is not supported",
                            f"use CycloneDX {', '.join(SPEC_VERSIONS)}")
        return _cyclonedx_vex(doc, path)
    raise SbomError(path, None, "neither an OpenVEX document nor a CycloneDX VEX BOM",
                    'give OpenVEX ({"@context": "https://openvex.dev/ns/v0.2.0", "statements": [...]}) or '
                    'CycloneDX ({"bomFormat": "CycloneDX", "vulnerabilities": [...]})')


def load_vex(path: str, max_size: int = MAX_SBOM_SIZE) -> list[VexStatement]:
    return vex_from_doc(_read_json(path, max_size, "VEX document"), path)


def purl_covers(ref: str, comp: Component) -> bool:
    """Whether the purl ``ref`` (from a VEX statement) names ``comp``: same type, namespace and name; the
    version and each qualifier only when ``ref`` gives them."""
    if comp.ptype is None or not ref.startswith("pkg:"):
        return False
    p = parse_purl(ref)
    if (p.type, p.namespace, p.name) != (comp.ptype, comp.namespace, comp.pname):
        return False
    if p.version and p.version != comp.pversion:
        return False
    quals = dict(comp.qualifiers)
    return all(quals.get(k) == v for k, v in (p.qualifiers or {}).items())


def ref_covers(ref: str, comp: Component, sbom: Sbom) -> bool:
    """A VEX product reference (purl, bom-ref, or BOM-link ``urn:cdx:<serial>/<version>#<bom-ref>``) names ``comp``."""
    if ref.startswith("pkg:"):
        return purl_covers(ref, comp)
    if ref.startswith("urn:cdx:"):
        head, _sep, bom_ref = ref.partition("#")
        serial = head[len("urn:cdx:"):].rsplit("/", 1)[0]
        return bool(bom_ref) and sbom.serial == f"urn:uuid:{serial}" and comp.bom_ref == bom_ref
    return comp.bom_ref is not None and comp.bom_ref == ref
