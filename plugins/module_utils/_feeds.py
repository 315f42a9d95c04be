# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Vulnerability intelligence feeds parsed into typed records.

Supported feeds, recognised by their content (never by the file name):

``osv``   an OSV record, a JSON list of them, or an ``{"vulns": [...]}`` API answer
``csaf``  a CSAF 2.0 (or 2.1) document
``nvd``   an NVD CVE API 2.0 answer (``vulnerabilities[].cve``), including ``metrics.ssvcV203``
``cve5``  a CVE JSON 5.x record (or a JSON list of them), e.g. as enriched by CISA Vulnrichment
``kev``   the CISA Known Exploited Vulnerabilities catalog JSON
``epss``  the FIRST EPSS CSV (``#model_version:...,score_date:...`` then ``cve,epss,percentile``)

Gzip-compressed files are read transparently. Only regular files are read, at most ``max_size``
bytes (default :data:`MAX_FEED_SIZE`, also once decompressed); JSON is parsed strictly (no duplicate
keys, NaN, over-long numbers or deep nesting) and identifiers must be ASCII (``CVE-2026-\u0663...`` is
refused, not read as another CVE). Every problem raises one :class:`FeedError` naming the file, the
record, the problem and the fix.
"""

from __future__ import annotations

import csv
import io
import re
import traceback
from dataclasses import dataclass, replace
from datetime import date, datetime
from types import MappingProxyType
from typing import Any

from ansible_collections.exchangeops.patching.plugins.module_utils import _safe_io
from ansible_collections.exchangeops.patching.plugins.module_utils._errors import InputError

try:
    from cvss import CVSS2, CVSS3, CVSS4
    from cvss.exceptions import CVSSError
except ImportError:
    HAS_CVSS = False
    CVSS_IMPORT_ERROR: str | None = traceback.format_exc()
else:
    HAS_CVSS = True
    CVSS_IMPORT_ERROR = None

FORMATS = ("osv", "csaf", "nvd", "cve5", "kev", "epss")
ADVISORY_FORMATS = ("osv", "csaf", "nvd", "cve5")

MAX_FEED_SIZE = _safe_io.MAX_FEED_SIZE

_CVE_RE = re.compile(r"CVE-[0-9]{4}-[0-9]{4,}\Z", re.ASCII)
# An EPSS probability as FIRST writes it (0.00043, 1.0, 4.3e-05); float() alone also takes "٠.٥", "nan", "1_0".
_EPSS_NUMBER_RE = re.compile(r"[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]{1,3})?\Z", re.ASCII)
_ID_FIX = "identifiers (CVE, OSV, GHSA, vendor ids) are ASCII; download the feed again from its publisher"
_EXPECTED = (
    "supply one of: an OSV record or list of records, a CSAF 2.0 document, an NVD CVE API 2.0 response, "
    "a CVE JSON 5 record (or list), the CISA KEV catalog JSON, or a FIRST EPSS CSV"
)
_DATE_FIX = "write it as an ISO 8601 date or date-time, e.g. 2026-11-23 or 2026-11-23T10:15:00Z"
_CVE_FIX = "write CVE IDs as CVE-YYYY-NNNN (four-digit year, at least four digits), e.g. CVE-2026-31337"
_VECTOR_FIX = "correct the vector string (grammar: https://www.first.org/cvss/) or drop that metric from the feed"

# Higher wins when several CVSS metrics describe one CVE: v3.x first, then v4.0, then v2.
_VERSION_RANK = MappingProxyType({"3.1": 4, "3.0": 3, "4.0": 2, "2.0": 1})
# Then the feed: NVD, the CVE record (CNA/ADP), a vendor CSAF, OSV.
_FORMAT_RANK = MappingProxyType({"nvd": 4, "cve5": 3, "csaf": 2, "osv": 1})
# Most specific first within one NVD record.
_NVD_CVSS_KEYS = ("cvssMetricV31", "cvssMetricV30", "cvssMetricV40", "cvssMetricV2")
_CVE5_CVSS_KEYS = ("cvssV3_1", "cvssV3_0", "cvssV4_0", "cvssV2_0")
_CSAF_CVSS_KEYS = ("cvss_v3", "cvss_v4", "cvss_v2")

_SSVC_FIELDS = MappingProxyType(
    {"exploitation": "exploitation", "automatable": "automatable", "technicalimpact": "technical_impact"}
)
_SSVC_VALUES = MappingProxyType(
    {
        "exploitation": MappingProxyType(
            {"none": "none", "poc": "poc", "publicpoc": "poc", "proofofconcept": "poc", "active": "active"}
        ),
        "automatable": MappingProxyType({"yes": "yes", "no": "no", "true": "yes", "false": "no"}),
        "technical_impact": MappingProxyType({"partial": "partial", "total": "total"}),
    }
)
_SSVC_ALLOWED = MappingProxyType(
    {"exploitation": "none, poc, active", "automatable": "yes, no", "technical_impact": "partial, total"}
)


class FeedError(InputError):
    """A feed that cannot be used; ``str()`` is ``"<path>: <record>: <message>; <fix>"``."""


@dataclass
class SsvcPoint:
    exploitation: str | None  # none | poc | active
    automatable: str | None  # yes | no
    technical_impact: str | None  # partial | total
    source: str  # feed file the decision points came from
    date: str | None  # YYYY-MM-DD of the SSVC assessment


@dataclass
class Advisory:
    cve: str  # CVE ID; an OSV record without any CVE alias is keyed by its own id
    aliases: list[str]
    published: str | None  # YYYY-MM-DD
    cvss_vector: str | None
    cvss_score: float | None
    cvss_version: str | None  # "2.0" | "3.0" | "3.1" | "4.0"
    ssvc: SsvcPoint | None
    source: str  # feed file; merged records list every file, joined with " + "
    source_format: str  # osv | csaf | nvd | cve5; merged records join them with "+"
    source_date: str | None  # YYYY-MM-DD the record was last modified


@dataclass
class KevEntry:
    cve: str
    date_added: str
    due_date: str | None
    ransomware: bool
    source: str
    catalog_version: str | None


@dataclass
class EpssEntry:
    cve: str
    epss: float
    percentile: float
    model_version: str | None
    score_date: str | None
    source: str


@dataclass
class Intel:
    advisories: dict[str, Advisory]
    kev: dict[str, KevEntry]
    epss: dict[str, EpssEntry]
    aliases: dict[str, str]  # alias id (GHSA-..., OSV id, vendor id) -> CVE id


@dataclass(frozen=True)
class CvssInfo:
    version: str
    score: float
    vector: str
    automatable: bool
    total_impact: bool


# --------------------------------------------------------------------------------------------------------------
# CVSS


def _vector_version(vector: str) -> str:
    return vector[5:8] if vector.startswith("CVSS:") else "2.0"


def parse_cvss(vector: str) -> CvssInfo:
    """Score a CVSS v2, v3.x or v4.0 vector with the ``cvss`` library.

    ``automatable`` is AV:N, AC:L, PR:N and UI:N (v4 also AT:N; v2: AV:N, AC:L, Au:N);
    ``total_impact`` is C:H and I:H (v4: VC:H and VI:H; v2: C:C and I:C).
    """
    if not HAS_CVSS:
        raise RuntimeError(
            "the Python library 'cvss' is required to score CVSS vectors; install it with 'pip install cvss' "
            f"on the controller. Import error: {CVSS_IMPORT_ERROR}"
        )
    if not isinstance(vector, str) or not vector.strip():
        raise ValueError(f"CVSS vector {vector!r} is empty or not a string")
    text = vector.strip()
    try:
        if text.startswith("CVSS:3."):
            parsed = CVSS3(text)
            m = parsed.metrics
            automatable = m["AV"] == "N" and m["AC"] == "L" and m["PR"] == "N" and m["UI"] == "N"
            total = m["C"] == "H" and m["I"] == "H"
            version = text[5:8]
        elif text.startswith("CVSS:4."):
            parsed = CVSS4(text)
            m = parsed.metrics
            automatable = all(m[k] == v for k, v in (("AV", "N"), ("AC", "L"), ("AT", "N"), ("PR", "N"), ("UI", "N")))
            total = m["VC"] == "H" and m["VI"] == "H"
            version = "4.0"
        elif text.startswith("CVSS:"):
            raise ValueError(f"CVSS vector {text!r}: unsupported CVSS version {text.split('/', 1)[0]!r}")
        else:
            parsed = CVSS2(text)
            m = parsed.metrics
            automatable = m["AV"] == "N" and m["AC"] == "L" and m["Au"] == "N"
            total = m["C"] == "C" and m["I"] == "C"
            version = "2.0"
    except CVSSError as exc:
        raise ValueError(f"CVSS vector {text!r} is invalid: {exc}") from exc
    return CvssInfo(version, float(parsed.base_score), text, automatable, total)


# --------------------------------------------------------------------------------------------------------------
# small validators


def _ascii_id(value: str, path: str, record: str | None, field: str) -> str:
    bad = _safe_io.non_ascii(value)
    if bad is not None:
        raise FeedError(path, record, f"{field} {value!r} contains a non-ASCII character ({bad})", _ID_FIX)
    return value


def _cve(value: Any, path: str, record: str | None, field: str) -> str:
    if not isinstance(value, str):
        raise FeedError(path, record, f"{field} {value!r} is not a string", _CVE_FIX)
    cve = _ascii_id(value, path, record, field).strip().upper()
    if not _CVE_RE.match(cve):
        raise FeedError(path, record, f"{field} {value!r} is not a CVE ID", _CVE_FIX)
    return cve


def _is_cve(value: str) -> bool:
    return _CVE_RE.match(value) is not None


def _date(value: Any, path: str, record: str | None, field: str) -> str | None:
    """ISO 8601 date or date-time -> ``YYYY-MM-DD`` (the date as written); None stays None."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise FeedError(path, record, f"{field} {value!r} is not a date string", _DATE_FIX)
    text = value.strip()
    try:
        if len(text) == 10:
            return date.fromisoformat(text).isoformat()
        return datetime.fromisoformat(text).date().isoformat()
    except ValueError:
        raise FeedError(path, record, f"{field} {value!r} is not an ISO 8601 date", _DATE_FIX) from None


def _obj(value: Any, path: str, record: str | None, what: str, fix: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise FeedError(path, record, f"{what} is not a JSON object (got {type(value).__name__})", fix)
    return value


def _list(value: Any, path: str, record: str | None, what: str, fix: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise FeedError(path, record, f"{what} is not a JSON list (got {type(value).__name__})", fix)
    return value


def _str_list(value: Any, path: str, record: str | None, what: str) -> list[str]:
    items = _list(value, path, record, what, f"make {what} a list of strings")
    for item in items:
        if not isinstance(item, str):
            raise FeedError(path, record, f"{what} holds {item!r}, not a string", f"make {what} a list of strings")
    return items


def _score(value: Any, path: str, record: str, field: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 10:
        raise FeedError(path, record, f"{field} {value!r} is not a CVSS score", "use a number from 0.0 to 10.0")
    return float(value)


# A CVSS candidate: (vector, declared base score or None, field path for messages).
_Candidate = tuple[Any, Any, str]


def _best_cvss(
    path: str, record: str, candidates: list[_Candidate], cache: dict[str, CvssInfo | str]
) -> tuple[str | None, float | None, str | None]:
    """Pick the preferred CVSS metric (v3.x > v4.0 > v2, first wins on ties), validate and score it.

    The declared base score is kept when the feed gives one; otherwise the library's score is used.
    Each distinct vector string is parsed once per load (``cache``).
    """
    best: _Candidate | None = None
    best_rank = -1
    for cand in candidates:
        vector = cand[0]
        if not isinstance(vector, str) or not vector.strip():
            raise FeedError(path, record, f"{cand[2]}.vectorString is missing or empty", _VECTOR_FIX)
        rank = _VERSION_RANK.get(_vector_version(vector), 0)
        if rank > best_rank:
            best, best_rank = cand, rank
    if best is None:
        return None, None, None
    vector, declared, field = best
    info = cache.get(vector)
    if info is None:
        try:
            info = parse_cvss(vector)
        except ValueError as exc:
            info = str(exc)
        cache[vector] = info
    if isinstance(info, str):
        raise FeedError(path, record, f"{field}.vectorString: {info}", _VECTOR_FIX)
    score = _score(declared, path, record, f"{field}.baseScore")
    return info.vector, info.score if score is None else score, info.version


def _ssvc(content: Any, path: str, record: str, field: str) -> SsvcPoint | None:
    """SSVC decision points from the shapes in use.

    CISA ADP (CVE 5): ``{"options": [{"Exploitation": "poc"}, {"Automatable": "no"}, {"Technical Impact": "total"}],
    "timestamp": ...}``; NVD ``ssvcData``: the same with camelCase keys (``technicalImpact``); the SSVC 1.0.1 shape:
    ``{"selections": [{"name": "Exploitation", "values": ["PoC"]}, ...]}``; flat keys are also accepted.
    Values are matched case-insensitively ("PoC", "Public PoC", "poc" -> poc).
    """
    if not isinstance(content, dict):
        raise FeedError(path, record, f"{field} is not a JSON object", "give the SSVC content as a JSON object")
    pairs: list[tuple[str, Any]] = []
    options = content.get("options")
    if isinstance(options, list):
        for opt in options:
            if isinstance(opt, dict):
                pairs.extend(opt.items())
    elif isinstance(options, dict):
        pairs.extend(options.items())
    for sel in _list(content.get("selections"), path, record, f"{field}.selections", "make selections a list"):
        if isinstance(sel, dict) and isinstance(sel.get("name"), str):
            values = sel.get("values")
            pairs.append((sel["name"], values[0] if isinstance(values, list) and values else values))
    pairs.extend(item for item in content.items() if isinstance(item[0], str) and item[0] != "options")
    found: dict[str, str] = {}
    for key, raw in pairs:
        name = _SSVC_FIELDS.get(key.replace(" ", "").replace("_", "").replace("-", "").lower())
        if name is None:
            continue
        value = raw
        if isinstance(raw, bool):
            value = "yes" if raw else "no"
        norm = value.replace(" ", "").replace("_", "").replace("-", "").lower() if isinstance(value, str) else None
        mapped = _SSVC_VALUES[name].get(norm) if norm is not None else None
        if mapped is None:
            raise FeedError(
                path, record, f"{field}: SSVC option {key!r} has unknown value {raw!r}",
                f"use one of {_SSVC_ALLOWED[name]} (case-insensitive)",
            )
        found[name] = mapped
    if not found:
        return None
    return SsvcPoint(
        found.get("exploitation"), found.get("automatable"), found.get("technical_impact"), path,
        _date(content.get("timestamp"), path, record, f"{field}.timestamp"),
    )


def _later_ssvc(a: SsvcPoint | None, b: SsvcPoint | None) -> SsvcPoint | None:
    """The more recent of two SSVC assessments (undated counts as oldest; ties keep ``a``)."""
    if a is None:
        return b
    if b is None:
        return a
    return b if (b.date or "") > (a.date or "") else a


# --------------------------------------------------------------------------------------------------------------
# reading and format detection


def _read(path: str, max_size: int = MAX_FEED_SIZE) -> bytes:
    """The feed's bytes, decompressed when gzip; FeedError for a non-regular file or one over ``max_size``."""
    return _safe_io.read_input(path, max_size, what="feed", error=FeedError, option="max_feed_size")


def _text(path: str, data: bytes | str) -> str:
    if isinstance(data, str):
        return data
    if data[:2] == b"\x1f\x8b":
        data = _safe_io.gunzip_bounded(path, data, MAX_FEED_SIZE, what="feed", error=FeedError,
                                       option="max_feed_size")
    return _safe_io.decode_utf8(path, data, what="feed", error=FeedError)


_OSV_KEYS = ("modified", "affected", "aliases", "schema_version")


def _json_format(path: str, doc: Any) -> str:
    if isinstance(doc, dict):
        vulns = doc.get("vulnerabilities")
        first = vulns[0] if isinstance(vulns, list) and vulns else None
        if isinstance(doc.get("document"), dict):
            return "csaf"
        if "cveMetadata" in doc or doc.get("dataType") == "CVE_RECORD":
            return "cve5"
        if isinstance(vulns, list):
            if "catalogVersion" in doc or "dateReleased" in doc or (isinstance(first, dict) and "cveID" in first):
                return "kev"
            if doc.get("format") == "NVD_CVE" or "totalResults" in doc or (isinstance(first, dict) and "cve" in first):
                return "nvd"
        if isinstance(doc.get("vulns"), list):
            return "osv"
        if any(k in doc for k in _OSV_KEYS):
            return "osv"
        keys = ", ".join(sorted(str(k) for k in doc)[:8]) or "none"
        raise FeedError(path, None, f"JSON object of unknown shape (top-level keys: {keys})", _EXPECTED)
    if isinstance(doc, list):
        if not doc:
            raise FeedError(path, None, "JSON list is empty, so its format cannot be told", _EXPECTED)
        first = doc[0]
        if isinstance(first, dict):
            if "cveMetadata" in first or first.get("dataType") == "CVE_RECORD":
                return "cve5"
            if "id" in first or any(k in first for k in _OSV_KEYS):
                return "osv"
        raise FeedError(path, None, "JSON list of unknown records (first item is not OSV or CVE 5)", _EXPECTED)
    raise FeedError(path, None, f"JSON {type(doc).__name__} of unknown shape", _EXPECTED)


def _sniff(path: str, text: str) -> tuple[str, Any]:
    """(format, parsed JSON document or the CSV text)."""
    stripped = text.lstrip()
    if not stripped:
        raise FeedError(path, None, "file is empty", "download the feed again; " + _EXPECTED)
    if stripped[0] in "{[":
        doc = _safe_io.load_json(path, text, what="feed", error=FeedError)
        return _json_format(path, doc), doc
    first = stripped.split("\n", 1)[0].strip()
    lower = first.lower()
    if lower.startswith("#model_version") or lower.replace(" ", "").startswith("cve,epss"):
        return "epss", text
    if lower.startswith("cve-") and "," in lower:
        return "epss", text  # an EPSS CSV that lost its header; the parser names the problem
    raise FeedError(path, None, f"neither JSON nor an EPSS CSV (first line: {first[:60]!r})", _EXPECTED)


def detect_format(path: str, data: bytes | str) -> str:
    """``"osv" | "csaf" | "nvd" | "cve5" | "kev" | "epss"``, from the content; FeedError naming ``path`` otherwise."""
    return _sniff(path, _text(path, data))[0]


# --------------------------------------------------------------------------------------------------------------
# parsers


def _parse_nvd(path: str, doc: dict[str, Any], cache: dict[str, CvssInfo | str]) -> list[Advisory]:
    fix_shape = "use the NVD CVE API 2.0 shape: {\"vulnerabilities\": [{\"cve\": {\"id\": ..., \"metrics\": ...}}]}"
    feed_date = _date(doc.get("timestamp"), path, None, "timestamp")
    out: list[Advisory] = []
    for i, item in enumerate(_list(doc.get("vulnerabilities"), path, None, "vulnerabilities", fix_shape)):
        record = f"vulnerabilities[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("cve"), dict):
            raise FeedError(path, record, "has no 'cve' object", fix_shape)
        cve_obj = item["cve"]
        if "id" not in cve_obj:
            raise FeedError(path, record, "cve has no 'id'", 'add "id": "CVE-YYYY-NNNN" to the cve object')
        cve = _cve(cve_obj["id"], path, record, "cve.id")
        record = f"{record} {cve}"
        metrics = cve_obj.get("metrics") or {}
        if not isinstance(metrics, dict):
            raise FeedError(path, record, "cve.metrics is not a JSON object", fix_shape)
        candidates: list[_Candidate] = []
        for key in _NVD_CVSS_KEYS:
            entries = metrics.get(key)
            if not entries:
                continue
            entries = _list(entries, path, record, f"cve.metrics.{key}", fix_shape)
            indexed = [(j, e) for j, e in enumerate(entries) if isinstance(e, dict)]
            # NVD's own ("Primary") metric before the CNA's ("Secondary"); j stays the index in the file
            for j, entry in sorted(indexed, key=lambda je: je[1].get("type") != "Primary"):
                data = entry.get("cvssData")
                if isinstance(data, dict):
                    candidates.append((data.get("vectorString"), data.get("baseScore"), f"cve.metrics.{key}[{j}]"))
        vector, score, version = _best_cvss(path, record, candidates, cache) if candidates else (None, None, None)
        ssvc = None
        for j, entry in enumerate(_list(metrics.get("ssvcV203"), path, record, "cve.metrics.ssvcV203", fix_shape)):
            if isinstance(entry, dict):
                field = f"cve.metrics.ssvcV203[{j}]"
                content = entry.get("ssvcData", entry.get("content", entry))
                ssvc = _later_ssvc(ssvc, _ssvc(content, path, record, field))
        out.append(Advisory(
            cve, [], _date(cve_obj.get("published"), path, record, "cve.published"), vector, score, version, ssvc,
            path, "nvd", _date(cve_obj.get("lastModified"), path, record, "cve.lastModified") or feed_date,
        ))
    return out


def _cve5_metrics(path: str, record: str, metrics: Any, where: str, candidates: list[_Candidate]) -> SsvcPoint | None:
    ssvc = None
    for j, metric in enumerate(_list(metrics, path, record, where, "make metrics a list of objects")):
        if not isinstance(metric, dict):
            continue
        for key in _CVE5_CVSS_KEYS:
            data = metric.get(key)
            if isinstance(data, dict):
                candidates.append((data.get("vectorString"), data.get("baseScore"), f"{where}[{j}].{key}"))
        other = metric.get("other")
        if isinstance(other, dict) and str(other.get("type", "")).lower() == "ssvc":
            ssvc = _later_ssvc(ssvc, _ssvc(other.get("content"), path, record, f"{where}[{j}].other.content"))
        for key, data in metric.items():
            if key.lower().startswith("ssvc") and isinstance(data, dict):  # proposed "ssvcV1_0_1" shape
                ssvc = _later_ssvc(ssvc, _ssvc(data, path, record, f"{where}[{j}].{key}"))
    return ssvc


def _parse_cve5(path: str, doc: Any, cache: dict[str, CvssInfo | str]) -> list[Advisory]:
    fix_shape = 'use the CVE JSON 5 record shape: {"cveMetadata": {"cveId": ...}, "containers": {"cna": ...}}'
    records = doc if isinstance(doc, list) else [doc]
    out: list[Advisory] = []
    for i, rec in enumerate(records):
        prefix = f"[{i}]" if isinstance(doc, list) else ""
        record = prefix or "record"
        rec = _obj(rec, path, record, "the CVE record", fix_shape)
        meta = _obj(rec.get("cveMetadata"), path, record, "cveMetadata", fix_shape)
        if "cveId" not in meta:
            raise FeedError(path, record, "cveMetadata has no 'cveId'", 'add "cveId": "CVE-YYYY-NNNN"')
        cve = _cve(meta["cveId"], path, record, "cveMetadata.cveId")
        record = f"{prefix} {cve}".strip()
        if str(meta.get("state", "")).upper() == "REJECTED":
            continue
        containers = _obj(rec.get("containers") or {}, path, record, "containers", fix_shape)
        candidates: list[_Candidate] = []
        cna = containers.get("cna") or {}
        if isinstance(cna, dict):
            _cve5_metrics(path, record, cna.get("metrics"), "containers.cna.metrics", candidates)
        ssvc = None
        for k, adp in enumerate(_list(containers.get("adp"), path, record, "containers.adp", fix_shape)):
            if isinstance(adp, dict):
                where = f"containers.adp[{k}].metrics"
                ssvc = _later_ssvc(ssvc, _cve5_metrics(path, record, adp.get("metrics"), where, candidates))
        vector, score, version = _best_cvss(path, record, candidates, cache)
        out.append(Advisory(
            cve, [], _date(meta.get("datePublished"), path, record, "cveMetadata.datePublished"),
            vector, score, version, ssvc, path, "cve5",
            _date(meta.get("dateUpdated"), path, record, "cveMetadata.dateUpdated"),
        ))
    return out


def _parse_osv(path: str, doc: Any, cache: dict[str, CvssInfo | str]) -> list[Advisory]:
    fix_shape = "use the OSV schema (https://ossf.github.io/osv-schema/): an object with id, modified, aliases, ..."
    if isinstance(doc, dict) and isinstance(doc.get("vulns"), list):
        records, label = doc["vulns"], "vulns"
    elif isinstance(doc, list):
        records, label = doc, ""
    else:
        records, label = [doc], None
    out: list[Advisory] = []
    for i, rec in enumerate(records):
        prefix = f"{label}[{i}]" if label is not None else ""
        rec = _obj(rec, path, prefix or "record", "the OSV record", fix_shape)
        osv_id = rec.get("id")
        if not isinstance(osv_id, str) or not osv_id.strip():
            raise FeedError(
                path, prefix or "record", f"OSV record has no 'id' (got {osv_id!r})",
                'add the record\'s OSV id, e.g. "id": "GHSA-xxxx-xxxx-xxxx"',
            )
        osv_id = _ascii_id(osv_id.strip(), path, prefix or "record", "id")
        record = f"{prefix} {osv_id}".strip()
        if rec.get("withdrawn"):
            continue
        ids = [osv_id, *(_ascii_id(a.strip(), path, record, "aliases")
                         for a in _str_list(rec.get("aliases"), path, record, "aliases"))]
        cves = [_cve(a, path, record, "id" if n == 0 else "aliases") for n, a in enumerate(ids)
                if a.upper().startswith("CVE-")]
        key = cves[0] if cves else osv_id
        aliases = sorted({a for a in ids if a.upper() != key})
        candidates: list[_Candidate] = []
        sources = [("severity", rec.get("severity"))]
        for j, aff in enumerate(_list(rec.get("affected"), path, record, "affected", fix_shape)):
            if isinstance(aff, dict):
                sources.append((f"affected[{j}].severity", aff.get("severity")))
        for where, severity in sources:
            for j, sev in enumerate(_list(severity, path, record, where, fix_shape)):
                if isinstance(sev, dict) and str(sev.get("type", "")).upper().startswith("CVSS_"):
                    candidates.append((sev.get("score"), None, f"{where}[{j}].score"))
        vector, score, version = _best_cvss(path, record, candidates, cache)
        out.append(Advisory(
            key, aliases, _date(rec.get("published"), path, record, "published"), vector, score, version, None,
            path, "osv", _date(rec.get("modified"), path, record, "modified"),
        ))
    return out


def _parse_csaf(path: str, doc: dict[str, Any], cache: dict[str, CvssInfo | str]) -> list[Advisory]:
    document = doc["document"]
    category = document.get("category")
    if not isinstance(category, str) or not category.strip():
        raise FeedError(
            path, "document", "CSAF document has no 'category'",
            'set document.category, e.g. "csaf_security_advisory" (or "csaf_vex")',
        )
    fix_shape = "use the CSAF 2.0 shape (https://docs.oasis-open.org/csaf/csaf/v2.0/)"
    tracking = document.get("tracking") or {}
    tracking = _obj(tracking, path, "document.tracking", "document.tracking", fix_shape)
    initial = _date(tracking.get("initial_release_date"), path, "document.tracking", "initial_release_date")
    current = _date(tracking.get("current_release_date"), path, "document.tracking", "current_release_date")
    vulns = _list(doc.get("vulnerabilities"), path, None, "vulnerabilities", fix_shape)
    doc_id = tracking.get("id") if isinstance(tracking.get("id"), str) and len(vulns) == 1 else None
    out: list[Advisory] = []
    for i, vuln in enumerate(vulns):
        record = f"vulnerabilities[{i}]"
        vuln = _obj(vuln, path, record, "the vulnerability", fix_shape)
        if "cve" not in vuln:
            raise FeedError(
                path, record, "vulnerability has no 'cve'",
                'add "cve": "CVE-YYYY-NNNN"; a vulnerability known only by vendor ids cannot be joined with '
                "the other feeds",
            )
        cve = _cve(vuln["cve"], path, record, "cve")
        record = f"{record} {cve}"
        aliases = set()
        for j, ident in enumerate(_list(vuln.get("ids"), path, record, "ids", fix_shape)):
            text = ident.get("text") if isinstance(ident, dict) else None
            if not isinstance(text, str) or not text.strip():
                raise FeedError(path, record, f"ids[{j}] has no 'text'",
                                'give each id as {"system_name": "...", "text": "..."}')
            aliases.add(_ascii_id(text.strip(), path, record, f"ids[{j}].text"))
        if doc_id:
            aliases.add(_ascii_id(doc_id.strip(), path, "document.tracking", "id"))
        aliases.discard(cve)
        candidates: list[_Candidate] = []
        ssvc = None
        for j, sc in enumerate(_list(vuln.get("scores"), path, record, "scores", fix_shape)):  # CSAF 2.0
            for key in _CSAF_CVSS_KEYS:
                data = sc.get(key) if isinstance(sc, dict) else None
                if isinstance(data, dict):
                    candidates.append((data.get("vectorString"), data.get("baseScore"), f"scores[{j}].{key}"))
        for j, metric in enumerate(_list(vuln.get("metrics"), path, record, "metrics", fix_shape)):  # CSAF 2.1
            content = metric.get("content") if isinstance(metric, dict) else None
            if not isinstance(content, dict):
                continue
            for key in _CSAF_CVSS_KEYS:
                data = content.get(key)
                if isinstance(data, dict):
                    candidates.append((data.get("vectorString"), data.get("baseScore"), f"metrics[{j}].content.{key}"))
            if isinstance(content.get("ssvc_v1"), dict):
                point = _ssvc(content["ssvc_v1"], path, record, f"metrics[{j}].content.ssvc_v1")
                ssvc = _later_ssvc(ssvc, point)
        vector, score, version = _best_cvss(path, record, candidates, cache)
        published = _date(vuln.get("release_date"), path, record, "release_date") or initial
        out.append(Advisory(cve, sorted(aliases), published, vector, score, version, ssvc, path, "csaf", current))
    return out


def _parse_kev(path: str, doc: dict[str, Any], _cache: dict[str, CvssInfo | str]) -> list[KevEntry]:
    fix_shape = 'use the CISA KEV catalog shape: {"catalogVersion": ..., "vulnerabilities": [{"cveID": ...}]}'
    version = doc.get("catalogVersion")
    version = str(version) if version is not None else None
    out: list[KevEntry] = []
    for i, item in enumerate(_list(doc.get("vulnerabilities"), path, None, "vulnerabilities", fix_shape)):
        record = f"vulnerabilities[{i}]"
        item = _obj(item, path, record, "the KEV entry", fix_shape)
        if "cveID" not in item:
            raise FeedError(path, record, "KEV entry has no 'cveID'",
                            'add "cveID": "CVE-YYYY-NNNN" as in the CISA catalog')
        cve = _cve(item["cveID"], path, record, "cveID")
        record = f"{record} {cve}"
        if item.get("dateAdded") is None:
            raise FeedError(path, record, "KEV entry has no 'dateAdded'", 'add "dateAdded": "YYYY-MM-DD"')
        added = _date(item["dateAdded"], path, record, "dateAdded")
        ransomware = str(item.get("knownRansomwareCampaignUse", "")).strip().lower() == "known"
        out.append(KevEntry(cve, added or "", _date(item.get("dueDate"), path, record, "dueDate"), ransomware, path,
                            version))
    return out


def _csv_rows(path: str, reader: Any) -> Any:
    """The reader's rows; a malformed line (an over-long field, a stray quote) as a FeedError."""
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise FeedError(path, f"line {reader.line_num}", f"not a valid CSV line: {exc}",
                            "download the EPSS CSV again") from None
        yield row


def _parse_epss(path: str, text: str, _cache: dict[str, CvssInfo | str]) -> list[EpssEntry]:
    model: str | None = None
    score_date: str | None = None
    reader = csv.reader(io.StringIO(text))
    header: list[str] | None = None
    out: list[EpssEntry] = []
    seen: set[str] = set()
    fix_header = "the first line after the '#model_version:...' comment must be the header 'cve,epss,percentile'"
    cols = (0, 1, 2)
    for row in _csv_rows(path, reader):
        if not row or not "".join(row).strip():
            continue
        line = reader.line_num
        if header is None:
            if row[0].lstrip().startswith("#"):
                for part in ",".join(row).lstrip("# ").split(","):
                    key, _sep, value = part.partition(":")
                    if key.strip() == "model_version":
                        model = value.strip() or None
                    elif key.strip() == "score_date":
                        score_date = _date(value.strip() or None, path, f"line {line}", "score_date")
                continue
            names = [c.strip().lower() for c in row]
            if "cve" not in names or "epss" not in names or "percentile" not in names:
                raise FeedError(path, f"line {line}", f"EPSS CSV has no header line (found {','.join(row)[:60]!r})",
                                fix_header)
            header = names
            cols = (names.index("cve"), names.index("epss"), names.index("percentile"))
            continue
        if len(row) < len(header):
            raise FeedError(path, f"line {line}", f"row has {len(row)} fields, the header {len(header)}",
                            "give every row cve,epss,percentile")
        cve = _cve(row[cols[0]], path, f"line {line}", "cve")
        record = f"line {line} {cve}"
        if cve in seen:
            raise FeedError(path, record, "duplicate row for this CVE", "keep one row per CVE")
        seen.add(cve)
        values = []
        for name, col in (("epss", cols[1]), ("percentile", cols[2])):
            raw = row[col]
            try:
                if not _EPSS_NUMBER_RE.match(raw.strip()):
                    raise ValueError(raw)
                value = float(raw)
            except ValueError:
                raise FeedError(path, record, f"{name} {raw!r} is not a number", f"give {name} as a probability "
                                "between 0 and 1, e.g. 0.00043") from None
            if not 0.0 <= value <= 1.0:  # also rejects nan
                raise FeedError(path, record, f"{name} {raw!r} is outside 0..1",
                                f"give {name} as a probability between 0 and 1 (not a percentage)")
            values.append(value)
        out.append(EpssEntry(cve, values[0], values[1], model, score_date, path))
    if header is None:
        raise FeedError(path, None, "EPSS CSV has no header line", fix_header)
    return out


_PARSERS = MappingProxyType(
    {"nvd": _parse_nvd, "cve5": _parse_cve5, "osv": _parse_osv, "csaf": _parse_csaf, "kev": _parse_kev,
     "epss": _parse_epss}
)


def load_feed(
    path: str, max_size: int = MAX_FEED_SIZE
) -> tuple[str, list[Advisory] | list[KevEntry] | list[EpssEntry]]:
    """Read one feed file (at most ``max_size`` bytes, also once decompressed): ``(format, records)``.

    FeedError on any problem.
    """
    # _read gunzipped already; _text (for detect_format's raw bytes) would look for gzip a second time
    fmt, doc = _sniff(path, _safe_io.decode_utf8(path, _read(path, max_size), what="feed", error=FeedError))
    cache: dict[str, CvssInfo | str] = {}
    return fmt, _PARSERS[fmt](path, doc, cache)


# --------------------------------------------------------------------------------------------------------------
# merging


def _cvss_rank(adv: Advisory) -> tuple[int, int]:
    if adv.cvss_score is None:
        return (-1, -1)
    return (_VERSION_RANK.get(adv.cvss_version or "", 0), _FORMAT_RANK.get(adv.source_format, 0))


def _join(first: str, second: str, sep: str) -> str:
    parts = first.split(sep)
    parts += [p for p in second.split(sep) if p not in parts]
    return sep.join(parts)


def _merge(a: Advisory, b: Advisory, rank_a: tuple[int, int], rank_b: tuple[int, int]) -> Advisory:
    """``a`` (already merged) with ``b`` folded in, field by field.

    ``source``/``source_format`` list every contributing file/format, the one whose CVSS metric was kept first.
    """
    best, other = (b, a) if rank_b > rank_a else (a, b)
    dates = [d for d in (a.published, b.published) if d]
    updated = [d for d in (a.source_date, b.source_date) if d]
    return replace(
        a,
        aliases=sorted((set(a.aliases) | set(b.aliases)) - {a.cve}),
        published=min(dates) if dates else None,
        cvss_vector=best.cvss_vector,
        cvss_score=best.cvss_score,
        cvss_version=best.cvss_version,
        ssvc=_later_ssvc(a.ssvc, b.ssvc),
        source=_join(best.source, other.source, " + "),
        source_format=_join(best.source_format, other.source_format, "+"),
        source_date=max(updated) if updated else None,
    )


def load_intel(paths: list[str], max_size: int = MAX_FEED_SIZE) -> Intel:
    """Load and join several feeds.

    Advisories for one CVE are merged: aliases unioned; earliest published date; latest source date; CVSS from the
    best metric (v3.x over v4.0 over v2, then NVD over CVE 5 over CSAF over OSV; NVD's Primary metric first); SSVC
    from the most recent assessment (CISA ADP via CVE 5 or NVD). OSV records join by their CVE alias; an OSV record
    without one is keyed by its own id unless one of its ids is an alias of a CVE advisory. KEV: the entry from the
    newest catalog wins; EPSS: the row with the latest score date wins. Each file is read with
    :func:`load_feed` and ``max_size``.
    """
    advisories: dict[str, Advisory] = {}
    ranks: dict[str, tuple[int, int]] = {}
    kev: dict[str, KevEntry] = {}
    epss: dict[str, EpssEntry] = {}

    def add(adv: Advisory, rank: tuple[int, int]) -> None:
        prev = advisories.get(adv.cve)
        if prev is None:
            advisories[adv.cve], ranks[adv.cve] = adv, rank
        else:
            advisories[adv.cve] = _merge(prev, adv, ranks[adv.cve], rank)
            ranks[adv.cve] = max(ranks[adv.cve], rank)

    for path in paths:
        fmt, records = load_feed(path, max_size)
        if fmt == "kev":
            for entry in records:
                prev_kev = kev.get(entry.cve)
                if prev_kev is None or (entry.catalog_version or "") >= (prev_kev.catalog_version or ""):
                    kev[entry.cve] = entry
        elif fmt == "epss":
            for row in records:
                prev_epss = epss.get(row.cve)
                if prev_epss is None or (row.score_date or "") >= (prev_epss.score_date or ""):
                    epss[row.cve] = row
        else:
            for adv in records:
                add(adv, _cvss_rank(adv))

    # Fold records keyed by a non-CVE id into the CVE they alias, then map every remaining alias to its CVE.
    by_alias: dict[str, str] = {}
    for key in sorted(advisories):
        if _is_cve(key):
            for alias in advisories[key].aliases:
                by_alias.setdefault(alias, key)
    for key in sorted(k for k in advisories if not _is_cve(k)):
        adv = advisories[key]
        target = by_alias.get(key) or next((by_alias[a] for a in adv.aliases if a in by_alias), None)
        if target is not None:
            del advisories[key]
            rank = ranks.pop(key)
            folded = replace(adv, cve=target, aliases=[*adv.aliases, key])
            advisories[target] = _merge(advisories[target], folded, ranks[target], rank)
            ranks[target] = max(ranks[target], rank)
    aliases: dict[str, str] = {}
    for key in sorted(advisories):
        if _is_cve(key):
            for alias in advisories[key].aliases:
                if alias not in advisories:
                    aliases.setdefault(alias, key)
    return Intel({k: advisories[k] for k in sorted(advisories)}, dict(sorted(kev.items())), dict(sorted(epss.items())),
                 aliases)
