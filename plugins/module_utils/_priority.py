# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Rank catalog patches by real risk, with a per-factor explanation.

The decision is the one specified for the product (issue "Patch priority"):

* per CVE: exploitation (``active`` when in KEV or SSVC says so, else the SSVC value,
  else ``none``), automatable and technical impact (SSVC when present, else from the
  CVSS vector; KEV overrides a stale SSVC ``none``);
* per patch and target node: the SSVC Deployer tree with human impact = the node's
  criticality and system exposure = the node's exposure; the patch's class is the most
  urgent over its CVEs and targets;
* due date: the BOD 26-04 timeline counted from KEV ``dateAdded`` (KEV entries), else
  the advisory's publication date, else ``now``; never later than KEV ``dueDate``;
* order: class, due date, EPSS, CVSS base score; then change risk (smaller, restart-free,
  migration-free changes first) and the patch id. Trading impact and change risk only
  order patches inside a class and pick the rollout window.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.exchangeops.patching.plugins.module_utils import _safe_io, _ssvc
from ansible_collections.exchangeops.patching.plugins.module_utils._catalog import COMPONENTS, Patch, version_key
from ansible_collections.exchangeops.patching.plugins.module_utils._errors import InputError
from ansible_collections.exchangeops.patching.plugins.module_utils._feeds import Advisory, Intel, parse_cvss

CRITICALITIES = ("low", "medium", "high", "very_high")
EXPOSURES = ("small", "controlled", "open")
DEFAULT_CRITICALITY = {"matching-engine": "very_high", "wallet-signer": "very_high"}
DEFAULT_EXPOSURE = "controlled"
RESTART_RISK = {"none": 0, "service": 1, "system": 2}
MIGRATION_RISK = {"none": 0, "forward_compatible": 1, "irreversible": 3}
CLASS_BASE = {"immediate": 75.0, "out_of_cycle": 50.0, "scheduled": 25.0, "defer": 0.0}
MAX_FACTS_SIZE = _safe_io.MAX_FACTS_SIZE

# What a node reports as its version: dotted numbers, then an optional ASCII suffix (1.4.2, 1.4.2-rc1, 2.3.0+b7).
_NODE_VERSION_RE = re.compile(r"[0-9]+(?:\.[0-9]+)*(?:[-+.~][0-9A-Za-z.+~-]*)?\Z", re.ASCII)


class PlanError(ValueError):
    """Bad planning input (facts, dates); the message names the thing and the fix."""


@dataclass(frozen=True)
class Node:
    name: str
    component: str
    version: str
    criticality: str
    exposure: str
    markets: tuple[str, ...] = ()


@dataclass
class CveDecision:
    id: str
    kev: bool
    epss: float | None
    cvss: float | None
    exploitation: str
    automatable: str
    technical_impact: str
    ssvc_deployer: str
    ssvc_cisa: str
    due: str | None
    overdue: bool
    bod: str
    explanation: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "kev": self.kev, "epss": self.epss, "cvss": self.cvss,
            "exploitation": self.exploitation, "automatable": self.automatable,
            "technical_impact": self.technical_impact, "ssvc_deployer": self.ssvc_deployer,
            "ssvc_cisa": self.ssvc_cisa, "due": self.due, "overdue": self.overdue, "bod_26_04": self.bod,
        }


# --------------------------------------------------------------------------- inputs


def parse_now(value: str | dt.datetime | None) -> dt.datetime:
    """``--now`` as an aware UTC datetime; a clear error when it is not ISO 8601."""
    if value is None or value == "":
        return dt.datetime.now(dt.UTC).replace(microsecond=0)
    if isinstance(value, dt.datetime):
        parsed = value
    else:
        text = str(value).strip()
        try:
            parsed = dt.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
        except ValueError:
            try:
                parsed = dt.datetime.combine(dt.date.fromisoformat(text), dt.time())
            except ValueError:
                raise PlanError(
                    f"now: {value!r} is not an ISO 8601 date or time; use e.g. 2026-11-24 or 2026-11-24T09:00:00Z"
                ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC)


def nodes_from_facts(records: Any, source: str) -> list[Node]:
    """Validate fleet facts: ``[{"name", "component", "version", "criticality"?, "exposure"?}]``."""
    if isinstance(records, dict) and "nodes" in records:
        records = records["nodes"]
    if not isinstance(records, list):
        raise PlanError(f'{source}: fleet facts must be {{"nodes": [...]}} or a list of node records')
    nodes = []
    seen: set[str] = set()
    for i, rec in enumerate(records):
        where = f"{source}: nodes[{i}]"
        if not isinstance(rec, dict):
            raise PlanError(f"{where}: a node record must be a mapping with name, component and version")
        for key in ("name", "component", "version"):
            if not rec.get(key) or not isinstance(rec[key], str):
                example = {"name": "match-0a", "component": "matching-engine", "version": "1.4.2"}[key]
                raise PlanError(f'{where}: missing {key}; every node record needs "{key}", e.g. "{example}"')
        name = rec["name"]
        where = f"{source}: node {name}"
        if name in seen:
            raise PlanError(f"{where}: listed twice; give every node one record")
        seen.add(name)
        component = rec["component"]
        if component not in COMPONENTS:
            allowed = ", ".join(COMPONENTS)
            raise PlanError(f"{where}: unknown component {component!r}; use one of: {allowed}")
        version = rec["version"]
        bad = _safe_io.non_ascii(version)
        if bad is not None:
            raise PlanError(f"{where}: version {version!r} contains a non-ASCII character ({bad}); "
                            "versions are ASCII, e.g. 1.4.2")
        if not _NODE_VERSION_RE.match(version):
            raise PlanError(f"{where}: version {version!r} is not a dotted version like 1.4.2")
        criticality = rec.get("criticality") or DEFAULT_CRITICALITY[component]
        if criticality not in CRITICALITIES:
            raise PlanError("{}: criticality {!r}; use one of: {}".format(where, criticality, ", ".join(CRITICALITIES)))
        exposure = rec.get("exposure") or DEFAULT_EXPOSURE
        if exposure not in EXPOSURES:
            raise PlanError("{}: exposure {!r}; use one of: {}".format(where, exposure, ", ".join(EXPOSURES)))
        markets = rec.get("markets") or rec.get("chains") or ()
        if not isinstance(markets, (list, tuple)) or not all(isinstance(m, str) for m in markets):
            raise PlanError(f"{where}: markets {markets!r} is not a list of names; "
                            'give it like "markets": ["BTC-USD", "ETH-USD"]')
        nodes.append(Node(name, component, version, criticality, exposure, tuple(markets)))
    return nodes


def load_facts_file(path: str, max_size: int = MAX_FACTS_SIZE) -> list[Node]:
    """Fleet facts from a JSON file ``{"nodes": [...]}``: a regular file of at most ``max_size`` bytes, strict JSON.

    PlanError naming the file, the problem and the fix.
    """
    try:
        data = _safe_io.read_regular(path, max_size, what="facts file")
        doc = _safe_io.load_json(path, _safe_io.decode_utf8(path, data, what="facts file"), what="facts file")
    except InputError as e:
        raise PlanError(str(e)) from None
    if not isinstance(doc, (dict, list)):
        raise PlanError(f'{path}: fleet facts are a JSON {type(doc).__name__}; write {{"nodes": [...]}}')
    return nodes_from_facts(doc, path)


# --------------------------------------------------------------------------- per CVE


def _date(value: str | None) -> dt.date | None:
    return dt.date.fromisoformat(value[:10]) if value else None


def _fact(factor: str, value: Any, source: str, effect: str) -> dict[str, Any]:
    return {"factor": factor, "value": value, "source": source, "effect": effect}


def decide_cve(cve: str, intel: Intel, targets: list[Node], now: dt.datetime,
               cvss_cache: dict[str, Any] | None = None) -> CveDecision:
    """Exploitation, automatable, technical impact, SSVC outcomes and due date of one CVE
    on the given target nodes, each with the source and date of its input."""
    adv: Advisory | None = intel.advisories.get(cve)
    kev = intel.kev.get(cve)
    epss = intel.epss.get(cve)
    ssvc = adv.ssvc if adv else None
    why: list[dict[str, Any]] = []
    ssvc_src = "{} ({})".format(ssvc.source, ssvc.date or "undated") if ssvc else None

    # Exploitation: KEV wins, then SSVC, then none.
    if kev:
        exploitation = "active"
        stale = ssvc is not None and ssvc.exploitation not in (None, "active")
        why.append(_fact("exploitation", "active", f"CISA KEV catalog, dateAdded {kev.date_added}",
                         "active exploitation" + (f" (overrides SSVC {ssvc.exploitation!r} from {ssvc_src})"
                                                  if stale else "")))
    elif ssvc is not None and ssvc.exploitation:
        exploitation = ssvc.exploitation
        why.append(_fact("exploitation", exploitation, ssvc_src or "", "SSVC exploitation"))
    else:
        exploitation = "none"
        why.append(_fact("exploitation", "none", f"no KEV entry or SSVC point for {cve}", "no known exploitation"))

    info = None
    if adv and adv.cvss_vector:
        if cvss_cache is not None and adv.cvss_vector in cvss_cache:
            info = cvss_cache[adv.cvss_vector]
        else:
            info = parse_cvss(adv.cvss_vector)
            if cvss_cache is not None:
                cvss_cache[adv.cvss_vector] = info
    cvss_src = "{} ({})".format(adv.source, adv.source_date or adv.published or "undated") if adv else ""

    if ssvc is not None and ssvc.automatable:
        automatable = ssvc.automatable
        why.append(_fact("automatable", automatable, ssvc_src or "", "SSVC automatable"))
    elif info is not None:
        automatable = "yes" if info.automatable else "no"
        why.append(_fact("automatable", automatable, f"CVSS {info.version} {info.vector} from {cvss_src}",
                         "AV:N/AC:L/PR:N/UI:N" + (" all hold" if info.automatable else " do not all hold")))
    else:
        automatable = "yes"
        why.append(_fact("automatable", "yes", f"no SSVC point or CVSS vector for {cve}",
                         "assumed yes: missing data never lowers a priority"))

    if ssvc is not None and ssvc.technical_impact:
        impact = ssvc.technical_impact
        why.append(_fact("technical_impact", impact, ssvc_src or "", "SSVC technical impact"))
    elif info is not None:
        impact = "total" if info.total_impact else "partial"
        why.append(_fact("technical_impact", impact, f"CVSS {info.version} {info.vector} from {cvss_src}",
                         "C:H and I:H" + (" hold" if info.total_impact else " do not both hold")))
    else:
        impact = "total"
        why.append(_fact("technical_impact", "total", f"no SSVC point or CVSS vector for {cve}",
                         "assumed total: missing data never lowers a priority"))

    # SSVC over the targets: the most urgent node decides.
    deployer, deciding = "defer", None
    for node in targets:
        outcome = _ssvc.deployer_decision(exploitation, node.exposure, automatable, node.criticality)
        if deciding is None or _ssvc.class_rank(outcome) < _ssvc.class_rank(deployer):
            deployer, deciding = outcome, node
    if deciding is not None:
        why.append(_fact("ssvc_deployer", deployer,
                         f"SSVC deployer tree 1.0.0 on {deciding.name} (exposure {deciding.exposure}, "
                         f"human impact {deciding.criticality})", f"class {deployer}"))
    top_crit = max((n.criticality for n in targets), key=CRITICALITIES.index, default="very_high")
    cisa = _ssvc.coordinator_decision(exploitation, automatable, impact,
                                      _ssvc.mission_wellbeing_from_criticality(top_crit))

    # Due date (BOD 26-04).
    exposed = any(n.exposure == "open" for n in targets)
    timeline = _ssvc.bod_timeline(kev is not None, exposed, automatable, impact)
    if kev:
        base, base_src = _date(kev.date_added), "KEV dateAdded"
    elif adv and adv.published:
        base, base_src = _date(adv.published), f"published {adv.source}"
    else:
        base, base_src = now.date(), "--now (no KEV or publication date)"
    due: dt.date | None = None
    if timeline.days is not None and base is not None:
        due = base + dt.timedelta(days=timeline.days)
    if kev and kev.due_date:
        kev_due = _date(kev.due_date)
        if kev_due is not None and (due is None or kev_due < due):
            due = kev_due
            base_src += ", capped by KEV dueDate"
    overdue = due is not None and due < now.date()
    yes_no = {True: "yes", False: "no"}
    why.append(_fact("due", due.isoformat() if due else None,
                     f"BOD 26-04 {timeline.label} (in KEV {yes_no[kev is not None]}, publicly exposed "
                     f"{yes_no[exposed]}, automatable {automatable}, technical impact {impact}) from {base_src} "
                     f"{base.isoformat() if base else ''}",
                     ("overdue" if overdue else "due") if due else "fix on system upgrade"))
    if epss:
        why.append(_fact("epss", epss.epss, f"FIRST EPSS {epss.model_version or ''} ({epss.score_date or ''})",
                         "orders within class and due date"))
    if info is not None:
        why.append(_fact("cvss", info.score, f"CVSS {info.version} base score, {cvss_src}",
                         "orders after EPSS"))
    return CveDecision(
        id=cve, kev=kev is not None, epss=epss.epss if epss else None, cvss=info.score if info else None,
        exploitation=exploitation, automatable=automatable, technical_impact=impact, ssvc_deployer=deployer,
        ssvc_cisa=cisa, due=due.isoformat() if due else None, overdue=overdue, bod=timeline.label,
        explanation=why,
    )


# --------------------------------------------------------------------------- per patch


def _change_risk(patch: Patch) -> tuple[int, int, int]:
    return (MIGRATION_RISK.get(patch.migration, 3), RESTART_RISK.get(patch.restart, 2),
            patch.change_files * 1000 + patch.change_lines)


def _window(patch: Patch, klass: str, overdue: bool) -> str:
    if klass == "immediate" or overdue:
        return "now"
    if patch.migration == "irreversible" or patch.restart == "system":
        return "maintenance_window"
    if patch.restart == "service" or patch.migration != "none":
        return "low_volume_hours"
    return "any"


def sort_key(entry: dict[str, Any]) -> tuple[Any, ...]:
    """Class, due date (none last), EPSS (high first), CVSS (high first), change risk, id."""
    due = entry["due"] or "9999-12-31"
    return (_ssvc.class_rank(entry["class"]), due, -(entry["_epss"] or 0.0), -(entry["_cvss"] or 0.0),
            entry["_change_risk"], entry["id"])


def _score(klass: str, due: str | None, epss: float | None, cvss: float | None, now: dt.datetime) -> float:
    """A 0-100 summary: the class sets the band (bands never overlap), due date, EPSS and
    CVSS place it inside the band. The order itself is ``sort_key``."""
    band = CLASS_BASE[klass]
    if due is None:
        urgency = 0.0
    else:
        days = (dt.date.fromisoformat(due) - now.date()).days
        urgency = 1.0 if days <= 0 else max(0.0, 1.0 - days / 365.0)
    inner = 12.5 * urgency + 7.5 * (epss or 0.0) + 4.99 * ((cvss or 0.0) / 10.0)
    return round(band + inner, 2)


def load_exposure(path: str, max_size: int = MAX_FACTS_SIZE) -> dict[str, Any]:
    """An exposure document (``exchpatch exposure``, schema 1); PlanError naming the file and the fix."""
    try:
        data = _safe_io.read_regular(path, max_size, what="exposure file")
        doc = _safe_io.load_json(path, _safe_io.decode_utf8(path, data, what="exposure file"), what="exposure file")
    except InputError as e:
        raise PlanError(str(e)) from None
    if not isinstance(doc, dict) or doc.get("schema") != 1 or not isinstance(doc.get("cves"), dict) \
            or not isinstance(doc.get("patches", {}), dict):
        raise PlanError(f"{path}: not an exposure document (schema 1 with cves and patches); "
                        "write it with `exchpatch exposure --output FILE`")
    for cve, entry in doc["cves"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("unfixed_nodes", []), list) \
                or not all(isinstance(n, str) for n in entry.get("unfixed_nodes", [])):
            raise PlanError(f"{path}: cves.{cve}: unfixed_nodes must be a list of node names; "
                            "write the file with `exchpatch exposure`")
    return doc


def _needs_mitigation(intel: Intel, exposure: dict[str, Any], nodes: list[Node], now: dt.datetime,
                      cvss_cache: dict[str, Any]) -> list[dict[str, Any]]:
    """CVEs exposed on nodes that no catalog patch fixes, ranked like patches (same class and due date)."""
    by_name = {n.name: n for n in nodes}
    exposed_nodes = exposure.get("nodes") or {}
    out = []
    for cve, entry in exposure["cves"].items():
        if not entry.get("needs_mitigation") or not entry.get("unfixed_nodes"):
            continue
        targets = []
        for name in entry["unfixed_nodes"]:
            node = by_name.get(name)
            if node is None:
                info = exposed_nodes.get(name) or {}
                component = str(info.get("component") or "")
                node = Node(name, component, str(info.get("version") or ""),
                            DEFAULT_CRITICALITY.get(component, "very_high"), DEFAULT_EXPOSURE)
            targets.append(node)
        d = decide_cve(cve, intel, targets, now, cvss_cache)
        explanation = [dict(f, factor=f"{d.id} {f['factor']}") for f in d.explanation]
        explanation.append(_fact("needs_mitigation", entry["unfixed_nodes"],
                                 "exposure: SBOM matched against OSV/NVD, VEX applied",
                                 "no catalog patch removes it from these nodes: mitigate (config, WAF, isolate) "
                                 "or build a release"))
        out.append({
            "cve": cve, "id": cve, "class": d.ssvc_deployer, "due": d.due, "overdue": d.overdue,
            "score": _score(d.ssvc_deployer, d.due, d.epss, d.cvss, now), "window": "now" if (
                d.ssvc_deployer == "immediate" or d.overdue) else "any",
            "nodes": sorted(entry["unfixed_nodes"]), "packages": list(entry.get("packages") or []),
            "flagged_by": list(entry.get("flagged_by") or []), "cves": [d.as_json()], "explanation": explanation,
            "_epss": d.epss, "_cvss": d.cvss, "_change_risk": (0, 0, 0),
        })
    out.sort(key=sort_key)
    for i, e in enumerate(out, 1):
        e["rank"] = i
        del e["id"], e["_epss"], e["_cvss"], e["_change_risk"]
    return out


def build_plan(intel: Intel, patches: list[Patch], nodes: list[Node], now: dt.datetime,
               exposure: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ranked plan document (see the ``patch_plan`` module's RETURN).

    With an ``exposure`` document, CVEs a patch removes without listing them are added to it (``derived``),
    claimed fixes its SBOM contradicts are marked ``flagged``, and CVEs no patch fixes are ranked under
    ``needs_mitigation`` with the same SSVC class and due date."""
    cvss_cache: dict[str, Any] = {}
    checks = (exposure or {}).get("patches") or {}
    ranked: list[dict[str, Any]] = []
    not_needed: list[dict[str, Any]] = []
    for patch in patches:
        same = [n for n in nodes if n.component == patch.component]
        targets = [n for n in same if version_key(n.version) < version_key(patch.version)]
        if not targets:
            reason = (f"no node runs {patch.component}" if not same else
                      f"every {patch.component} node already runs {patch.version} or newer")
            not_needed.append({"id": patch.id, "component": patch.component, "version": patch.version,
                               "reason": reason})
            continue
        check = checks.get(patch.id) or {}
        derived = [c for c in check.get("derived", []) if isinstance(c, str) and c not in patch.fixes]
        flagged = {f.get("cve") for f in check.get("flagged", []) if isinstance(f, dict)}
        decisions = [decide_cve(cve, intel, targets, now, cvss_cache) for cve in (*patch.fixes, *derived)]
        if decisions:
            klass = min((d.ssvc_deployer for d in decisions), key=_ssvc.class_rank)
            dues = [d.due for d in decisions if d.due]
            due = min(dues) if dues else None
            epss = max((d.epss for d in decisions if d.epss is not None), default=None)
            cvss = max((d.cvss for d in decisions if d.cvss is not None), default=None)
        else:
            klass, due, epss, cvss = "defer", None, None, None
        overdue = due is not None and due < now.date().isoformat()
        markets = sorted({m for n in targets for m in n.markets})
        explanation: list[dict[str, Any]] = []
        for d in decisions:
            explanation += [dict(f, factor=f"{d.id} {f['factor']}") for f in d.explanation]
        if not decisions:
            explanation.append(_fact("fixes", [], patch.source, "fixes no CVE: class defer, no due date"))
        if derived:
            explanation.append(_fact("derived_fixes", derived, "exposure: SBOM diff running release -> patch",
                                     "removed by the patch though not in its catalog fixes; ranked with them"))
        if flagged:
            explanation.append(_fact("flagged_fixes", sorted(flagged), "exposure: SBOM diff running release -> patch",
                                     "claimed in fixes, but the patch does not remove the affected component"))
        explanation += [
            _fact("class", klass, f"most urgent SSVC deployer outcome over {len(decisions)} CVE(s) and "
                  f"{len(targets)} target(s)", "primary order"),
            _fact("trading_impact", {"restart": patch.restart, "targets": len(targets), "markets": len(markets)},
                  f"{patch.source}; fleet facts", "orders within class and picks the window; never lowers class"),
            _fact("change_risk", {"files": patch.change_files, "lines": patch.change_lines,
                                  "migration": patch.migration},
                  patch.source, "smaller, safer changes first among equals; never lowers class or moves due"),
        ]
        window = _window(patch, klass, overdue)
        explanation.append(_fact("window", window,
                                 f"class {klass}, restart {patch.restart}, migration {patch.migration}",
                                 "rollout window"))
        ranked.append({
            "id": patch.id,
            "component": patch.component,
            "version": patch.version,
            "class": klass,
            "due": due,
            "overdue": overdue,
            "score": _score(klass, due, epss, cvss, now),
            "window": window,
            "targets": sorted(n.name for n in targets),
            "markets": markets,
            "cves": [dict(d.as_json(), derived=d.id in derived, flagged=d.id in flagged) for d in decisions],
            "explanation": explanation,
            "_epss": epss,
            "_cvss": cvss,
            "_change_risk": _change_risk(patch),
        })
    ranked.sort(key=sort_key)
    for i, entry in enumerate(ranked, 1):
        entry["rank"] = i
        for private in ("_epss", "_cvss", "_change_risk"):
            del entry[private]
    return {
        "generated_at": now.isoformat().replace("+00:00", "Z"),
        "patches": ranked,
        "not_needed": sorted(not_needed, key=lambda e: e["id"]),
        "needs_mitigation": _needs_mitigation(intel, exposure, nodes, now, cvss_cache) if exposure else [],
    }
