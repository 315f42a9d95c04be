# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Which node is exposed to which CVE now, from the running release's SBOM.

* OSV records (``affected[]``: package ecosystem + name, ``ranges`` of type ECOSYSTEM or SEMVER with
  introduced / fixed / last_affected / limit events, and ``versions`` lists) are matched against each SBOM
  component; the component's ecosystem and name come from its purl (``pkg:deb/debian/openssh?distro=debian-12``
  -> ``Debian:12`` / ``openssh``; ``pkg:pypi/Django`` -> ``PyPI`` / ``django``). Versions are parsed and ranges
  evaluated with ``univers`` (Debian, PyPI, semver, Maven, ... version classes and ``VersionRange``).
* NVD CPE configurations (``cpeMatch`` with versionStart/End Including/Excluding) are the fallback for a CVE
  no OSV record describes; they compare the component's upstream version and are marked ``nvd-cpe``.
* VEX statements (OpenVEX, CycloneDX VEX) that say a product is not affected take a node out of a CVE's
  exposure; they are kept in the result with their justification.
* Catalog patches: a patch removes a CVE when the running release's SBOM matches it and the patch's SBOM no
  longer does. The catalog's ``fixes`` is checked against that: a claimed fix whose component the patch does not
  change is *flagged*; a CVE the patch removes but does not list is *derived*.

Speed: OSV is indexed by (ecosystem, package) and a record's ranges are compiled only when a component asks for
that package; parsed versions and per-package answers are cached; nodes whose SBOMs are identical are computed
once. Nothing here reads a clock: ``generated_at`` is passed in.
"""

from __future__ import annotations

import os
import re
import traceback
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.exchangeops.patching.plugins.module_utils import _release, _safe_io, _sbom
from ansible_collections.exchangeops.patching.plugins.module_utils._errors import InputError

try:
    from univers import versions as uv
    from univers.version_constraint import VersionConstraint
    from univers.version_range import VersionRange
except ImportError:
    HAS_UNIVERS = False
    UNIVERS_IMPORT_ERROR: str | None = traceback.format_exc()
else:
    HAS_UNIVERS = True
    UNIVERS_IMPORT_ERROR = None

SCHEMA = 1
MAX_OSV_SIZE = _safe_io.MAX_FEED_SIZE
_CVE_RE = re.compile(r"(?:^|-)(CVE-[0-9]{4}-[0-9]{4,})\Z", re.ASCII)
_OSV_FIX = "use the OSV schema (https://ossf.github.io/osv-schema/): {\"vulns\": [{\"id\", \"affected\": [...]}]}"
_EVENTS = ("introduced", "fixed", "last_affected", "limit")
_DEBIAN_CODENAMES = {"buster": "10", "bullseye": "11", "bookworm": "12", "trixie": "13", "forky": "14"}
_UBUNTU_CODENAMES = {"bionic": "18.04", "focal": "20.04", "jammy": "22.04", "noble": "24.04", "oracular": "24.10",
                     "plucky": "25.04"}


class ExposureError(InputError):
    """Bad exposure input (OSV, NVD, facts); ``str()`` is ``"<path>: <record>: <message>; <fix>"``."""


def _version_classes() -> dict[str, Any]:
    if not HAS_UNIVERS:
        return {}
    return {"Debian": uv.DebianVersion, "Ubuntu": uv.DebianVersion, "PyPI": uv.PypiVersion,
            "npm": uv.SemverVersion, "crates.io": uv.SemverVersion, "Go": uv.GolangVersion,
            "Maven": uv.MavenVersion, "NuGet": uv.NugetVersion, "RubyGems": uv.RubygemsVersion,
            "Alpine": uv.AlpineLinuxVersion, "SEMVER": uv.SemverVersion, "generic": uv.GenericVersion}


# --------------------------------------------------------------------------- ecosystems


def osv_ecosystem(ecosystem: str) -> tuple[str, str | None]:
    """``"Debian:12"`` -> ``("Debian", "12")``; ``"Ubuntu:Pro:22.04:LTS"`` -> ``("Ubuntu", "22.04")``;
    ``"PyPI"`` -> ``("PyPI", None)``."""
    parts = ecosystem.split(":")
    release = next((p for p in parts[1:] if p and (p[0].isdigit() or re.match(r"v[0-9]", p))), None)
    return parts[0], release


def _pypi_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def component_ecosystem(comp: _sbom.Component) -> tuple[str, str | None, str] | None:
    """(OSV ecosystem, release or None, OSV package name) of a component from its purl; None when OSV has no
    ecosystem for it (``pkg:generic``, no purl)."""
    t, ns, name = comp.ptype, comp.namespace, comp.pname
    if t is None or name is None:
        return None
    quals = dict(comp.qualifiers)
    if t == "deb":
        distro = (quals.get("distro") or "").lower()
        if (ns or "").lower() == "ubuntu":
            rel = distro.removeprefix("ubuntu-")
            return "Ubuntu", (_UBUNTU_CODENAMES.get(rel, rel) or None), name
        rel = distro.removeprefix("debian-")
        return "Debian", (_DEBIAN_CODENAMES.get(rel, rel).split(".")[0] or None), name
    if t == "apk":
        distro = (quals.get("distro") or "").lower()
        m = re.search(r"([0-9]+\.[0-9]+)", distro)
        return "Alpine", (f"v{m.group(1)}" if m else None), name
    if t == "pypi":
        return "PyPI", None, _pypi_name(name)
    if t == "npm":
        return "npm", None, f"{ns}/{name}" if ns else name
    if t == "maven":
        return "Maven", None, f"{ns}:{name}" if ns else name
    if t == "golang":
        return "Go", None, f"{ns}/{name}" if ns else name
    if t == "cargo":
        return "crates.io", None, name
    if t == "gem":
        return "RubyGems", None, name
    if t == "nuget":
        return "NuGet", None, name
    return None


# --------------------------------------------------------------------------- versions


class Versions:
    """Parsed versions, cached per (class, text); None for a text the class cannot parse."""

    def __init__(self) -> None:
        self._cache: dict[tuple[Any, str], Any] = {}

    def parse(self, cls: Any, text: str) -> Any:
        key = (cls, text)
        try:
            return self._cache[key]
        except KeyError:
            pass
        try:
            value = cls(text)
        except (ValueError, TypeError, AttributeError, IndexError):
            value = None
        self._cache[key] = value
        return value


def _range_class(version_cls: Any) -> Any:
    return type(f"{version_cls.__name__}Range", (VersionRange,), {"scheme": "osv", "version_class": version_cls})


_RANGE_CLASSES: dict[Any, Any] = {}


def _range_for(version_cls: Any) -> Any:
    # A VersionRange subclass per version class (univers ships them per purl type; OSV names ecosystems).
    cls = _RANGE_CLASSES.get(version_cls)
    if cls is None:
        cls = _RANGE_CLASSES[version_cls] = _range_class(version_cls)
    return cls


@dataclass
class Affected:
    """One ``affected[]`` entry of an OSV record, compiled on first use."""

    record: str  # OSV id
    cves: tuple[str, ...]
    ecosystem: str
    release: str | None
    name: str
    ranges: list[dict[str, Any]]
    versions: tuple[str, ...]
    published: str | None = None
    _compiled: tuple[list[Any], frozenset[str], list[Any]] | None = field(default=None, repr=False)
    problems: list[str] = field(default_factory=list)

    def compile(self, versions: Versions) -> tuple[list[Any], frozenset[str], list[Any]]:
        """([VersionRange ...], {listed version texts}, [listed parsed versions])."""
        if self._compiled is not None:
            return self._compiled
        classes = _version_classes()
        eco_cls = classes.get(self.ecosystem)
        out = []
        for r in self.ranges:
            rtype = r.get("type", "ECOSYSTEM")
            if rtype == "GIT":
                continue  # commit ranges need the source tree; the `versions` list covers them
            cls = classes["SEMVER"] if rtype == "SEMVER" else eco_cls
            if cls is None:
                self.problems.append(f"{self.record}: no version scheme for ecosystem {self.ecosystem!r}")
                continue
            out += self._intervals(r["events"], cls, versions)
        listed = [versions.parse(eco_cls, v) for v in self.versions] if eco_cls else []
        self._compiled = (out, frozenset(self.versions), [v for v in listed if v is not None])
        return self._compiled

    def _intervals(self, events: list[dict[str, str]], cls: Any, versions: Versions) -> list[Any]:
        parsed = []
        for ev in events:
            kind, text = next(iter(ev.items()))
            if kind == "introduced" and text == "0":
                parsed.append((kind, None))
                continue
            value = versions.parse(cls, text)
            if value is None:
                self.problems.append(f"{self.record}: {kind} {text!r} is not a {self.ecosystem} version; "
                                     "that range is skipped")
                return []
            parsed.append((kind, value))
        # OSV evaluates events in version order; "introduced: 0" is the lowest of all.
        parsed.sort(key=lambda e: (False, 0) if e[1] is None else (True, e[1]))
        rng = _range_for(cls)
        out, start, open_ = [], None, False
        for kind, value in parsed:
            if kind == "introduced":
                if not open_:
                    start, open_ = value, True
                continue
            if not open_:
                continue
            upper = VersionConstraint(comparator="<=" if kind == "last_affected" else "<", version=value)
            cons = [upper] if start is None else [VersionConstraint(comparator=">=", version=start), upper]
            out.append(rng(constraints=tuple(cons)))
            open_ = False
        if open_:
            cons = ([VersionConstraint(comparator="*", version_class=cls)] if start is None
                    else [VersionConstraint(comparator=">=", version=start)])
            out.append(rng(constraints=tuple(cons)))
        return out

    def matches(self, version_text: str, versions: Versions) -> bool | None:
        """True/False; None when the component's version cannot be parsed in this ecosystem."""
        ranges, listed_text, listed = self.compile(versions)
        if version_text in listed_text:
            return True
        cls = _version_classes().get(self.ecosystem)
        if cls is None:
            return None
        value = versions.parse(cls, version_text)
        if value is None:
            return None
        if value in listed:
            return True
        for rng in ranges:
            if rng.version_class is cls and value in rng:
                return True
            if rng.version_class is not cls:
                other = versions.parse(rng.version_class, version_text)
                if other is not None and other in rng:
                    return True
        return False


def _str_list(path: str, record: str, fieldname: str, value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ExposureError(path, record, f"{fieldname} must be a list of strings", _OSV_FIX)
    return value


def _cves_of(osv_id: str, rec: dict[str, Any], path: str) -> tuple[str, ...]:
    ids = [osv_id, *_str_list(path, osv_id, "aliases", rec.get("aliases")),
           *_str_list(path, osv_id, "upstream", rec.get("upstream"))]
    out = []
    for i in ids:
        m = _CVE_RE.search(i.strip().upper())
        if m and m.group(1) not in out:
            out.append(m.group(1))
    return tuple(out)


@dataclass
class OsvDb:
    """OSV ``affected`` entries indexed by (ecosystem, package name)."""

    index: dict[tuple[str, str], list[Affected]] = field(default_factory=dict)
    records: int = 0
    withdrawn: int = 0
    cves: set[str] = field(default_factory=set)  # every CVE some OSV record describes
    sources: list[str] = field(default_factory=list)

    def add_record(self, rec: Any, path: str, where: str) -> None:
        if not isinstance(rec, dict):
            raise ExposureError(path, where, f"an OSV record must be an object, not {type(rec).__name__}", _OSV_FIX)
        osv_id = rec.get("id")
        if not isinstance(osv_id, str) or not osv_id.strip() or _safe_io.non_ascii(osv_id) is not None:
            raise ExposureError(path, where, f"OSV record without an ASCII 'id' (got {osv_id!r})",
                                'give every record its OSV id, e.g. "id": "DEBIAN-CVE-2024-3094"')
        osv_id = osv_id.strip()
        if rec.get("withdrawn"):
            self.withdrawn += 1
            return
        cves = _cves_of(osv_id, rec, path) or (osv_id,)
        affected = rec.get("affected", [])
        if not isinstance(affected, list):
            raise ExposureError(path, osv_id, "affected must be a list", _OSV_FIX)
        self.records += 1
        self.cves.update(cves)
        for j, aff in enumerate(affected):
            at = f"{osv_id} affected[{j}]"
            if not isinstance(aff, dict):
                raise ExposureError(path, at, "must be an object", _OSV_FIX)
            pkg = aff.get("package")
            if pkg is None:
                continue  # an affected entry without a package names ranges of a repository only
            if not isinstance(pkg, dict) or not isinstance(pkg.get("ecosystem"), str) \
                    or not isinstance(pkg.get("name"), str) or not pkg["name"].strip():
                raise ExposureError(path, f"{at}.package", "needs string 'ecosystem' and 'name'",
                                    'write it like {"ecosystem": "Debian:12", "name": "openssh"}')
            ranges = aff.get("ranges", [])
            if not isinstance(ranges, list):
                raise ExposureError(path, f"{at}.ranges", "must be a list", _OSV_FIX)
            for k, r in enumerate(ranges):
                if not isinstance(r, dict) or not isinstance(r.get("events"), list) or not r["events"]:
                    raise ExposureError(path, f"{at}.ranges[{k}]", "needs a non-empty 'events' list",
                                        'write it like {"type": "ECOSYSTEM", "events": [{"introduced": "0"}, '
                                        '{"fixed": "1.2.3"}]}')
                if r.get("type", "ECOSYSTEM") not in ("ECOSYSTEM", "SEMVER", "GIT"):
                    raise ExposureError(path, f"{at}.ranges[{k}].type", f"{r.get('type')!r} is not a range type",
                                        "use ECOSYSTEM, SEMVER or GIT")
                for m, ev in enumerate(r["events"]):
                    if not isinstance(ev, dict) or len(ev) != 1 or next(iter(ev)) not in _EVENTS \
                            or not isinstance(next(iter(ev.values())), str) or not next(iter(ev.values())):
                        raise ExposureError(path, f"{at}.ranges[{k}].events[{m}]", f"{ev!r} is not an OSV event",
                                            "each event has one key, introduced, fixed, last_affected or limit, "
                                            "with a version string")
            versions = _str_list(path, at, "versions", aff.get("versions"))
            eco, release = osv_ecosystem(pkg["ecosystem"].strip())
            name = _pypi_name(pkg["name"]) if eco == "PyPI" else pkg["name"].strip()
            entry = Affected(osv_id, cves, eco, release, name, ranges, tuple(versions))
            self.index.setdefault((eco, name), []).append(entry)

    def add_doc(self, doc: Any, path: str) -> None:
        if isinstance(doc, dict) and isinstance(doc.get("vulns"), list):
            recs, label = doc["vulns"], "vulns"
        elif isinstance(doc, list):
            recs, label = doc, ""
        elif isinstance(doc, dict) and "id" in doc:
            recs, label = [doc], None
        else:
            raise ExposureError(path, None, "not OSV: expected {\"vulns\": [...]}, a list of records or one record",
                                _OSV_FIX)
        for i, rec in enumerate(recs):
            self.add_record(rec, path, f"{label}[{i}]" if label is not None else "record")
        self.sources.append(path)


def load_osv(paths: list[str], max_size: int = MAX_OSV_SIZE) -> OsvDb:
    """OSV files: the feed cache's ``osv.json`` ``{"vulns": [...]}``, a list of records or one record each."""
    db = OsvDb()
    for path in paths:
        data = _safe_io.read_input(path, max_size, what="OSV file", error=ExposureError)
        doc = _safe_io.load_json(path, _safe_io.decode_utf8(path, data, what="OSV file", error=ExposureError),
                                 what="OSV file", error=ExposureError)
        db.add_doc(doc, path)
    return db


# --------------------------------------------------------------------------- NVD CPE fallback


@dataclass(frozen=True)
class CpeMatch:
    cve: str
    vendor: str
    product: str
    version: str  # "*" or "-" or a version
    start_incl: str | None
    start_excl: str | None
    end_incl: str | None
    end_excl: str | None


@dataclass
class CpeDb:
    by_product: dict[str, list[CpeMatch]] = field(default_factory=dict)
    cves: set[str] = field(default_factory=set)


def load_nvd(path: str, max_size: int = MAX_OSV_SIZE) -> CpeDb:
    """The vulnerable ``cpeMatch`` entries of an NVD CVE API 2.0 document (applications and OS packages)."""
    fix = 'use the NVD CVE API 2.0 shape: {"vulnerabilities": [{"cve": {"id": ..., "configurations": [...]}}]}'
    data = _safe_io.read_input(path, max_size, what="NVD file", error=ExposureError)
    doc = _safe_io.load_json(path, _safe_io.decode_utf8(path, data, what="NVD file", error=ExposureError),
                             what="NVD file", error=ExposureError)
    if not isinstance(doc, dict) or not isinstance(doc.get("vulnerabilities"), list):
        raise ExposureError(path, None, "not an NVD CVE API 2.0 document", fix)
    db = CpeDb()
    for i, item in enumerate(doc["vulnerabilities"]):
        cve = item.get("cve") if isinstance(item, dict) else None
        if not isinstance(cve, dict) or not isinstance(cve.get("id"), str):
            raise ExposureError(path, f"vulnerabilities[{i}]", "has no cve.id", fix)
        cve_id = cve["id"].strip().upper()
        for config in cve.get("configurations") or []:
            for node in (config.get("nodes") or []) if isinstance(config, dict) else []:
                for m in (node.get("cpeMatch") or []) if isinstance(node, dict) else []:
                    if not isinstance(m, dict) or not m.get("vulnerable") or not isinstance(m.get("criteria"), str):
                        continue
                    parts = m["criteria"].split(":")
                    if len(parts) < 6 or parts[2] not in ("a", "o"):
                        continue
                    entry = CpeMatch(cve_id, parts[3].lower(), parts[4].lower(), parts[5],
                                     m.get("versionStartIncluding"), m.get("versionStartExcluding"),
                                     m.get("versionEndIncluding"), m.get("versionEndExcluding"))
                    db.by_product.setdefault(entry.product, []).append(entry)
                    db.cves.add(cve_id)
    return db


def _upstream(comp: _sbom.Component) -> str | None:
    """The upstream version NVD speaks of: a Debian version without epoch and revision (1:9.2p1-2 -> 9.2p1)."""
    text = comp.pversion or comp.version
    if not text:
        return None
    if comp.ptype == "deb" and HAS_UNIVERS:
        try:
            return str(uv.DebianVersion(text).value.upstream)
        except (ValueError, TypeError, AttributeError):
            return None
    return text


def _cpe_matches(m: CpeMatch, version: str, versions: Versions) -> bool:
    cls = uv.GenericVersion
    value = versions.parse(cls, version)
    if value is None:
        return False
    cons = []
    if m.version not in ("*", "-", ""):
        cons.append(("=", m.version))
    for comparator, bound in ((">=", m.start_incl), (">", m.start_excl), ("<=", m.end_incl), ("<", m.end_excl)):
        if isinstance(bound, str) and bound:
            cons.append((comparator, bound))
    if not cons:
        return True
    rng = _range_for(cls)
    parsed = []
    for comparator, text in cons:
        bound_value = versions.parse(cls, text)
        if bound_value is None:
            return False
        parsed.append(VersionConstraint(comparator=comparator, version=bound_value))
    return value in rng(constraints=tuple(parsed))


# --------------------------------------------------------------------------- matching


@dataclass(frozen=True)
class Finding:
    cve: str
    component: _sbom.Component
    record: str  # OSV id or "NVD"
    source: str  # osv | nvd-cpe


@dataclass
class Matcher:
    osv: OsvDb
    nvd: CpeDb | None = None
    versions: Versions = field(default_factory=Versions)
    _answers: dict[tuple[Any, ...], tuple[tuple[str, str, str], ...]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    _warned: set[str] = field(default_factory=set)

    def _warn(self, text: str) -> None:
        if text not in self._warned:
            self._warned.add(text)
            self.warnings.append(text)

    def component(self, comp: _sbom.Component) -> tuple[tuple[str, str, str], ...]:
        """((cve, record, source), ...) of one component; cached per package and version."""
        version = comp.pversion or comp.version
        eco = component_ecosystem(comp)
        key = (eco, comp.cpe, comp.pname, version)
        hit = self._answers.get(key)
        if hit is not None:
            return hit
        found: list[tuple[str, str, str]] = []
        if eco is not None and version:
            ecosystem, release, name = eco
            for aff in self.osv.index.get((ecosystem, name), ()):
                if aff.release is not None and release is not None and aff.release != release:
                    continue
                answer = aff.matches(version, self.versions)
                for problem in aff.problems:
                    self._warn(problem)
                if answer is None:
                    self._warn(f"{comp.label()}: version {version!r} is not a {ecosystem} version; "
                               f"{aff.record} not evaluated")
                elif answer:
                    found += [(cve, aff.record, "osv") for cve in aff.cves]
        if self.nvd is not None:
            found += self._nvd(comp)
        result = tuple(dict.fromkeys(found))
        self._answers[key] = result
        return result

    def _nvd(self, comp: _sbom.Component) -> list[tuple[str, str, str]]:
        if comp.cpe:
            parts = comp.cpe.split(":")
            vendor, product = parts[3].lower(), parts[4].lower()
        else:
            vendor, product = None, (comp.pname or comp.name).lower()
        upstream = _upstream(comp)
        if not upstream:
            return []
        out = []
        for m in self.nvd.by_product.get(product, ()) if self.nvd else ():
            if m.cve in self.osv.cves or (vendor is not None and m.vendor != vendor):
                continue  # OSV describes this CVE: its ranges (with distribution backports) decide
            if _cpe_matches(m, upstream, self.versions):
                out.append((m.cve, "NVD", "nvd-cpe"))
        return out

    def sbom(self, sbom: _sbom.Sbom) -> dict[str, list[Finding]]:
        """CVE -> findings for every component of ``sbom`` (the release subject included)."""
        out: dict[str, list[Finding]] = {}
        comps = (sbom.subject, *sbom.components) if sbom.subject is not None else sbom.components
        for comp in comps:
            for cve, record, source in self.component(comp):
                out.setdefault(cve, []).append(Finding(cve, comp, record, source))
        return out


def vex_verdict(statements: list[_sbom.VexStatement], cve: str, comp: _sbom.Component,
                sbom: _sbom.Sbom) -> _sbom.VexStatement | None:
    """The not-affected statement covering ``comp`` in ``sbom`` for ``cve``, if any."""
    for st in statements:
        if not st.not_affected or (st.vulnerability != cve and cve not in st.aliases):
            continue
        subject = sbom.subject
        for ref in st.products:
            on_comp = _sbom.ref_covers(ref, comp, sbom)
            on_release = subject is not None and _sbom.ref_covers(ref, subject, sbom)
            if st.subcomponents:
                if (on_release or on_comp) and any(_sbom.ref_covers(s, comp, sbom) for s in st.subcomponents):
                    return st
            elif on_comp or (on_release and comp is subject):
                return st
    return None


# --------------------------------------------------------------------------- the exposure document


@dataclass(frozen=True)
class NodeSbom:
    name: str
    component: str
    version: str
    sbom: _sbom.Sbom


@dataclass(frozen=True)
class PatchSbom:
    id: str
    component: str
    version: str
    fixes: tuple[str, ...]
    sbom: _sbom.Sbom | None  # None: the catalog entry carries no SBOM
    newer_than: tuple[str, ...] = ()  # node names the patch upgrades (its version is newer than theirs)


def _release_exposure(matcher: Matcher, sbom: _sbom.Sbom, vex: list[_sbom.VexStatement]
                      ) -> tuple[dict[str, list[Finding]], dict[str, list[tuple[Finding, _sbom.VexStatement]]]]:
    exposed: dict[str, list[Finding]] = {}
    waived: dict[str, list[tuple[Finding, _sbom.VexStatement]]] = {}
    for cve, findings in matcher.sbom(sbom).items():
        for f in findings:
            st = vex_verdict(vex, cve, f.component, sbom)
            if st is None:
                exposed.setdefault(cve, []).append(f)
            else:
                waived.setdefault(cve, []).append((f, st))
    return exposed, waived


def compute(nodes: list[NodeSbom], matcher: Matcher, vex: list[_sbom.VexStatement] | None = None,
            patches: list[PatchSbom] | None = None, generated_at: str | None = None) -> dict[str, Any]:
    """The exposure document (schema 1; see docs/exposure.md)."""
    vex = vex or []
    patches = patches or []
    releases: dict[str, _sbom.Sbom] = {}
    groups: dict[str, list[NodeSbom]] = {}
    for n in nodes:
        releases.setdefault(n.sbom.digest, n.sbom)
        groups.setdefault(n.sbom.digest, []).append(n)
    per_release = {d: _release_exposure(matcher, s, vex) for d, s in releases.items()}

    cves: dict[str, dict[str, Any]] = {}

    def entry(cve: str) -> dict[str, Any]:
        return cves.setdefault(cve, {"nodes": [], "packages": [], "records": [], "sources": [], "fixed_by": [],
                                     "claimed_by": [], "flagged_by": [], "unfixed_nodes": [], "not_affected": [],
                                     "needs_mitigation": False})

    node_doc: dict[str, Any] = {}
    for digest, members in groups.items():
        exposed, waived = per_release[digest]
        for n in members:
            node_doc[n.name] = {"component": n.component, "version": n.version, "sbom_sha256": digest,
                                "release": n.sbom.label(), "cves": sorted(exposed)}
        for cve, findings in exposed.items():
            e = entry(cve)
            e["nodes"] += [n.name for n in members]
            e["packages"] += [f.component.label() for f in findings]
            e["records"] += [f.record for f in findings]
            e["sources"] += [f.source for f in findings]
        for cve, pairs in waived.items():
            e = entry(cve)
            for n in members:
                for f, st in pairs:
                    e["not_affected"].append({"node": n.name, "package": f.component.label(),
                                              "justification": st.why(), "status": st.status,
                                              "statement": f"{st.source} ({st.format})"})

    patch_doc: dict[str, Any] = {}
    patch_findings: dict[str, dict[str, list[Finding]]] = {}
    for p in patches:
        if p.sbom is not None:
            patch_findings[p.id] = _release_exposure(matcher, p.sbom, vex)[0]
    for p in patches:
        doc: dict[str, Any] = {"component": p.component, "version": p.version,
                               "sbom": p.sbom.source if p.sbom else None, "claimed": list(p.fixes),
                               "verified": [], "flagged": [], "unverified": [], "derived": [], "removes": [],
                               "from": []}
        patch_doc[p.id] = doc
        targets = set(p.newer_than)
        if p.sbom is None:
            doc["unverified"] = [{"cve": c, "reason": "the catalog entry carries no SBOM"} for c in p.fixes]
            for cve in p.fixes:
                if cve in cves:
                    cves[cve]["claimed_by"].append(p.id)
            continue
        after = patch_findings[p.id]
        for digest, members in groups.items():
            covered = [n.name for n in members if n.name in targets]
            if not covered:
                continue
            running = releases[digest]
            before = per_release[digest][0]
            change = _sbom.diff(running, p.sbom)
            doc["from"].append({"release": running.label(), "sbom_sha256": digest, "nodes": covered,
                                "diff": change.as_json()})
            removed = sorted(c for c in before if c not in after)
            for cve in removed:
                cves[cve]["fixed_by"].append(p.id)
                cves[cve].setdefault("_fixed_nodes", set()).update(covered)
                if cve not in doc["removes"]:
                    doc["removes"].append(cve)
            for cve in p.fixes:
                if cve in removed:
                    if cve not in doc["verified"]:
                        doc["verified"].append(cve)
                elif cve in before:
                    comps = {f.component.label(): f.component for f in before[cve]}
                    touched = [lbl for lbl, c in comps.items() if change.changes(c)]
                    reason = (f"the patch changes {', '.join(touched)} but the new version is still affected"
                              if touched else f"the patch does not change {', '.join(sorted(comps))}")
                    doc["flagged"].append({"cve": cve, "from": running.label(), "reason": reason})
                    cves[cve]["flagged_by"].append(p.id)
                else:
                    doc["unverified"].append({"cve": cve, "from": running.label(),
                                              "reason": f"no advisory names a component of {running.label()} "
                                                        "(first-party code, or no OSV/NVD record)"})
            for cve in removed:
                if cve not in p.fixes and cve not in doc["derived"]:
                    doc["derived"].append(cve)
        for key in ("verified", "derived", "removes"):
            doc[key].sort()

    for e in cves.values():
        fixed_nodes = e.pop("_fixed_nodes", set())
        claimed = {p.id for p in patches if p.id in e["claimed_by"]}
        claimed_nodes = {n for p in patches if p.id in claimed for n in p.newer_than}
        e["nodes"] = sorted(set(e["nodes"]))
        e["unfixed_nodes"] = [n for n in e["nodes"] if n not in fixed_nodes and n not in claimed_nodes]
        e["needs_mitigation"] = bool(e["unfixed_nodes"])
        for key in ("packages", "records", "sources", "fixed_by", "claimed_by", "flagged_by"):
            e[key] = sorted(set(e[key]))
        e["not_affected"].sort(key=lambda a: (a["node"], a["package"]))
    return {
        "schema": SCHEMA,
        "generated_at": generated_at,
        "cves": {k: cves[k] for k in sorted(cves)},
        "nodes": {k: node_doc[k] for k in sorted(node_doc)},
        "patches": {k: patch_doc[k] for k in sorted(patch_doc)},
        "osv": {"records": matcher.osv.records, "withdrawn": matcher.osv.withdrawn,
                "sources": matcher.osv.sources},
        "warnings": list(matcher.warnings),
    }


# --------------------------------------------------------------------------- inputs: nodes and patches

_NODE_FIX = ('give node records like {"name": "me-s0-a", "component": "matching-engine", "version": "1.4.2", '
             '"sbom": "sboms/matching-engine-1.4.2.cdx.json"} (a path, or the SBOM document itself)')


def nodes_from_records(records: Any, source: str, base_dir: str | None = None,
                       max_size: int = _sbom.MAX_SBOM_SIZE) -> list[NodeSbom]:
    """Validate node records ``[{"name", "component", "version", "sbom": path | document}]``; SBOMs given by
    path are read (relative to ``base_dir``) once per distinct path."""
    if isinstance(records, dict) and "nodes" in records:
        records = records["nodes"]
    if not isinstance(records, list):
        raise ExposureError(source, None, 'must be {"nodes": [...]} or a list of node records', _NODE_FIX)
    loaded: dict[str, _sbom.Sbom] = {}
    out: list[NodeSbom] = []
    seen: set[str] = set()
    for i, rec in enumerate(records):
        where = f"nodes[{i}]"
        if not isinstance(rec, dict):
            raise ExposureError(source, where, "a node record must be an object", _NODE_FIX)
        if isinstance(rec.get("node"), dict):  # a fleet_info result: item, node (the status), sbom
            rec = {"name": rec.get("name") or rec.get("item"), "component": rec["node"].get("component"),
                   "version": rec["node"].get("version"), "sbom": rec.get("sbom")}
        for key in ("name", "component", "version"):
            if not isinstance(rec.get(key), str) or not rec[key].strip():
                raise ExposureError(source, where, f"missing {key}", _NODE_FIX)
        name = rec["name"].strip()
        if name in seen:
            raise ExposureError(source, f"node {name}", "listed twice", "give every node one record")
        seen.add(name)
        ref = rec.get("sbom")
        if isinstance(ref, dict):
            sbom = _sbom.sbom_from_doc(ref, f"{source}: node {name} sbom")
        elif isinstance(ref, str) and ref.strip():
            path = os.path.join(base_dir or os.getcwd(), os.path.expanduser(ref.strip()))
            if path not in loaded:
                loaded[path] = _sbom.load_sbom(path, max_size)
            sbom = loaded[path]
        else:
            raise ExposureError(source, f"node {name}", "has no sbom (a file path or the SBOM document)",
                                "read the fleet with fleet_info sbom=true, or add the path of the node's "
                                "release SBOM (<component>-<version>.cdx.json)")
        out.append(NodeSbom(name, rec["component"].strip(), rec["version"].strip(), sbom))
    return out


def load_facts(path: str, max_size: int = _safe_io.MAX_FACTS_SIZE) -> tuple[list[NodeSbom], dict[str, str]]:
    """Offline facts: ``{"nodes": [...], "patch_sboms": {"<patch id>": "<path>"}}``; paths relative to the file."""
    data = _safe_io.read_regular(path, max_size, what="facts file", error=ExposureError)
    doc = _safe_io.load_json(path, _safe_io.decode_utf8(path, data, what="facts file", error=ExposureError),
                             what="facts file", error=ExposureError)
    if not isinstance(doc, dict):
        raise ExposureError(path, None, 'must be a JSON object {"nodes": [...]}', _NODE_FIX)
    base = os.path.dirname(os.path.abspath(path))
    extra = doc.get("patch_sboms") or {}
    if not isinstance(extra, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in extra.items()):
        raise ExposureError(path, "patch_sboms", "must map patch ids to SBOM paths",
                            'write it like "patch_sboms": {"matching-engine-1.4.3": "matching-engine-1.4.3.cdx.json"}')
    return nodes_from_records(doc.get("nodes"), path, base), {k: os.path.join(base, v) for k, v in extra.items()}


def catalog_sbom_ref(patch: Any) -> tuple[str, str | None] | None:
    """(url, sha256) of a catalog entry's ``sbom: {url, sha256}``, whichever way the catalog record carries it."""
    ref = getattr(patch, "sbom", None)
    if isinstance(ref, dict) and ref.get("url"):
        return str(ref["url"]), ref.get("sha256")
    if ref is not None and getattr(ref, "url", None):
        return str(ref.url), getattr(ref, "sha256", None)
    url = getattr(patch, "sbom_url", None)
    if url:
        return str(url), getattr(patch, "sbom_sha256", None)
    return None


def patch_sboms(patches: list[Any], nodes: list[NodeSbom], overrides: dict[str, str] | None = None,
                version_key: Any = None, base_dir: str | None = None,
                max_size: int = _sbom.MAX_SBOM_SIZE) -> list[PatchSbom]:
    """Catalog patches with their SBOMs (``overrides`` first, then the entry's ``sbom``; the sha256 checked)
    and the nodes each one upgrades."""
    overrides = overrides or {}
    out = []
    for p in patches:
        sbom = None
        path = overrides.get(p.id)
        expected = None
        if path is None:
            ref = catalog_sbom_ref(p)
            if ref is not None:
                try:
                    path = _release.artifact_path(ref[0], base_dir)
                except _release.ReleaseError as e:
                    raise ExposureError(p.source, "sbom.url", str(e), "give a file:// URL or a local path") from None
                expected = ref[1]
        if path is not None:
            if expected:
                actual = _safe_io.sha256_file(path, max_size, what="SBOM", error=ExposureError)
                if actual.lower() != str(expected).lower():
                    raise ExposureError(p.source, "sbom.sha256",
                                        f"does not match {path} (expected {str(expected)[:12]}..., "
                                        f"got {actual[:12]}...)", "rebuild the release or fix the catalog entry")
            sbom = _sbom.load_sbom(path, max_size)
        newer = tuple(n.name for n in nodes if n.component == p.component and (
            version_key is None or _older(version_key, n.version, p.version)))
        out.append(PatchSbom(p.id, p.component, p.version, tuple(p.fixes), sbom, newer))
    return out


def _older(version_key: Any, node_version: str, patch_version: str) -> bool:
    try:
        return version_key(node_version) < version_key(patch_version)
    except ValueError:
        return False
