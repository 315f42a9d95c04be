# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import copy
import gzip
import json
import pickle
from pathlib import Path

import pytest
from ansible_collections.exchangeops.patching.plugins.module_utils import _feeds
from ansible_collections.exchangeops.patching.plugins.module_utils._feeds import (
    Advisory,
    EpssEntry,
    FeedError,
    KevEntry,
    detect_format,
    load_feed,
    load_intel,
    parse_cvss,
)

REPO = Path(__file__).resolve().parents[4]
FIXTURES = REPO / "tests" / "fixtures" / "feeds"
DEMO = REPO / "feeds"

V31_CRIT = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"
V40_CRIT = "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N"


def fixture(name: str) -> str:
    return str(FIXTURES / name)


def write(tmp_path: Path, name: str, content: str | bytes | object) -> str:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_text(json.dumps(content), encoding="utf-8")
    return str(path)


def load_json(name: str) -> object:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def nvd_record(cve: str, vector: str | None = V31_CRIT, published: str = "2026-11-01T10:15:00.000") -> dict:
    metrics = {}
    if vector:
        metrics["cvssMetricV31"] = [{"source": "nvd@nist.gov", "type": "Primary",
                                     "cvssData": {"version": "3.1", "vectorString": vector}}]
    return {"cve": {"id": cve, "published": published, "lastModified": published, "metrics": metrics}}


def nvd_doc(*records: dict) -> dict:
    return {"resultsPerPage": len(records), "startIndex": 0, "totalResults": len(records), "format": "NVD_CVE",
            "version": "2.0", "timestamp": "2026-11-23T08:00:00.000", "vulnerabilities": list(records)}


# ---------------------------------------------------------------------------------------------------- formats


@pytest.mark.parametrize(
    ("name", "fmt", "count"),
    [
        ("osv.json", "osv", 2),
        ("csaf.json", "csaf", 2),
        ("nvd.json", "nvd", 2),
        ("nvd-with-ssvc.json", "nvd", 1),
        ("cve5-vulnrichment.json", "cve5", 1),
        ("kev.json", "kev", 2),
        ("epss.csv", "epss", 4),
    ],
)
def test_every_fixture_is_detected_by_content_and_loads(name, fmt, count, tmp_path):
    data = (FIXTURES / name).read_bytes()
    assert detect_format(fixture(name), data) == fmt
    assert detect_format(fixture(name), data.decode()) == fmt
    # the file name plays no part: the same content under a misleading name
    renamed = write(tmp_path, "feed.txt", data)
    got_fmt, records = load_feed(renamed)
    assert (got_fmt, len(records)) == (fmt, count)


@pytest.mark.parametrize("path", sorted(str(p) for p in DEMO.iterdir()))
def test_demo_feeds_load(path):
    fmt, records = load_feed(path)
    assert fmt in _feeds.FORMATS and records


def test_nvd_prefers_primary_v31_and_keeps_declared_score():
    _fmt, records = load_feed(fixture("nvd.json"))
    first, second = records
    assert isinstance(first, Advisory)
    assert first.cve == "CVE-2026-10001"
    assert (first.cvss_vector, first.cvss_score, first.cvss_version) == (V31_CRIT, 9.8, "3.1")
    assert first.published == "2026-10-28" and first.source_date == "2026-11-12"
    assert first.source == fixture("nvd.json") and first.source_format == "nvd"
    # only a v4.0 secondary metric: used as is
    assert (second.cvss_version, second.cvss_score) == ("4.0", 5.3)


def test_nvd_camelcase_ssvc_is_normalised():
    _fmt, [adv] = load_feed(fixture("nvd-with-ssvc.json"))
    assert adv.ssvc is not None
    assert (adv.ssvc.exploitation, adv.ssvc.automatable, adv.ssvc.technical_impact) == ("poc", "no", "partial")
    assert adv.ssvc.date == "2026-11-07" and adv.ssvc.source == fixture("nvd-with-ssvc.json")


def test_cve5_vulnrichment_ssvc_and_cna_cvss():
    _fmt, [adv] = load_feed(fixture("cve5-vulnrichment.json"))
    assert adv.cve == "CVE-2026-10001" and adv.source_format == "cve5"
    assert adv.ssvc is not None
    assert (adv.ssvc.exploitation, adv.ssvc.automatable, adv.ssvc.technical_impact) == ("none", "yes", "total")
    assert adv.ssvc.date == "2026-11-02"
    assert adv.cvss_version == "3.1" and adv.cvss_score == 8.1


def test_cve5_list_skips_rejected_and_reads_selection_shape(tmp_path):
    rec = load_json("cve5-vulnrichment.json")
    other = copy.deepcopy(rec)
    other["cveMetadata"]["cveId"] = "CVE-2026-20002"
    other["containers"]["adp"][0]["metrics"] = [{"ssvcV1_0_1": {
        "id": "CVE-2026-20002", "timestamp": "2026-11-20T00:00:00Z", "schemaVersion": "1-0-1",
        "selections": [{"namespace": "ssvc", "name": "Exploitation", "values": ["Public PoC"], "version": "1.1.0"},
                       {"namespace": "ssvc", "name": "Automatable", "values": ["No"], "version": "2.0.0"},
                       {"namespace": "ssvc", "name": "Technical Impact", "values": ["Partial"], "version": "1.0.0"}]}}]
    rejected = copy.deepcopy(rec)
    rejected["cveMetadata"].update(cveId="CVE-2026-20003", state="REJECTED")
    fmt, records = load_feed(write(tmp_path, "records.json", [rec, other, rejected]))
    assert fmt == "cve5"
    assert [a.cve for a in records] == ["CVE-2026-10001", "CVE-2026-20002"]
    assert records[1].ssvc is not None
    assert (records[1].ssvc.exploitation, records[1].ssvc.automatable) == ("poc", "no")


def test_ssvc_values_are_case_insensitive(tmp_path):
    rec = load_json("cve5-vulnrichment.json")
    rec["containers"]["adp"][0]["metrics"][0]["other"]["content"]["options"] = [
        {"Exploitation": "Active"}, {"Automatable": "YES"}, {"Technical Impact": "Partial"}]
    _fmt, [adv] = load_feed(write(tmp_path, "cve.json", rec))
    assert adv.ssvc is not None
    assert (adv.ssvc.exploitation, adv.ssvc.automatable, adv.ssvc.technical_impact) == ("active", "yes", "partial")


def test_osv_single_record_list_and_api_answer(tmp_path):
    records = load_json("osv.json")
    ghsa, pysec = records
    _fmt, [single] = load_feed(write(tmp_path, "one.json", ghsa))
    assert single.cve == "CVE-2026-10001" and single.aliases == ["GHSA-q4m5-8x2v-7h3c"]
    assert single.cvss_score == 8.1 and single.published == "2026-10-28"
    _fmt, listed = load_feed(write(tmp_path, "list.json", records))
    assert [a.cve for a in listed] == ["CVE-2026-10001", "PYSEC-2026-77"]
    assert listed[1].aliases == ["GHSA-9w3r-2c6j-p5xq"] and listed[1].cvss_score is None
    withdrawn = dict(pysec, withdrawn="2026-11-12T00:00:00Z")
    fmt, answer = load_feed(write(tmp_path, "api.json", {"vulns": [ghsa, withdrawn]}))
    assert fmt == "osv" and [a.cve for a in answer] == ["CVE-2026-10001"]


def test_csaf_vulnerabilities_and_vendor_ids():
    _fmt, records = load_feed(fixture("csaf.json"))
    assert [a.cve for a in records] == ["CVE-2026-10002", "CVE-2026-10004"]
    assert records[0].aliases == ["EXO-BUG-7711"]
    assert records[0].cvss_score == 4.3 and records[0].published == "2026-11-04"
    assert records[0].source_date == "2026-11-06"


def test_kev_entries():
    _fmt, records = load_feed(fixture("kev.json"))
    by_cve = {e.cve: e for e in records}
    assert all(isinstance(e, KevEntry) for e in records)
    assert by_cve["CVE-2026-10003"].ransomware is True
    entry = by_cve["CVE-2026-10001"]
    assert (entry.date_added, entry.due_date, entry.ransomware, entry.catalog_version) == (
        "2026-11-10", "2026-12-01", False, "2026.11.21")


def test_epss_rows_and_model_line():
    _fmt, records = load_feed(fixture("epss.csv"))
    first = records[0]
    assert isinstance(first, EpssEntry)
    assert (first.cve, first.epss, first.percentile) == ("CVE-2026-10001", 0.94112, 0.99913)
    assert (first.model_version, first.score_date) == ("v2025.03.14", "2026-11-23")


def test_epss_without_model_line_and_gzip(tmp_path):
    text = "cve,epss,percentile\nCVE-2026-10001,0.5,0.9\n"
    path = write(tmp_path, "epss.csv.gz", gzip.compress(text.encode()))
    fmt, [row] = load_feed(path)
    assert fmt == "epss" and row.model_version is None and row.epss == 0.5


# ---------------------------------------------------------------------------------------------------- joins


def test_load_intel_joins_all_fixtures():
    intel = load_intel(sorted(str(p) for p in FIXTURES.iterdir()))
    adv = intel.advisories["CVE-2026-10001"]
    # NVD primary v3.1 wins over the CNA's and OSV's AC:H vectors
    assert (adv.cvss_vector, adv.cvss_score) == (V31_CRIT, 9.8)
    # SSVC from the vulnrichment record is kept as is, even though KEV says the CVE is exploited (stale)
    assert adv.ssvc is not None and adv.ssvc.exploitation == "none"
    assert "CVE-2026-10001" in intel.kev
    assert adv.aliases == ["GHSA-q4m5-8x2v-7h3c"]
    assert set(adv.source_format.split("+")) == {"nvd", "cve5", "osv"}
    assert adv.source.split(" + ")[0] == fixture("nvd.json")
    assert adv.published == "2026-10-28" and adv.source_date == "2026-11-12"
    assert intel.aliases["GHSA-q4m5-8x2v-7h3c"] == "CVE-2026-10001"
    assert intel.aliases["EXO-BUG-7711"] == "CVE-2026-10002"
    # v3.1 from the vendor CSAF beats NVD's v4.0-only record; the earliest published date is kept
    cve2 = intel.advisories["CVE-2026-10002"]
    assert (cve2.cvss_version, cve2.cvss_score, cve2.published) == ("3.1", 4.3, "2026-11-03")
    # an OSV record without a CVE alias stays keyed by its own id
    assert "PYSEC-2026-77" in intel.advisories
    assert set(intel.epss) == {"CVE-2026-10001", "CVE-2026-10002", "CVE-2026-10003", "CVE-2026-10004"}
    assert list(intel.advisories) == sorted(intel.advisories)


def test_osv_record_without_cve_joins_through_a_shared_alias(tmp_path):
    osv_only = {"id": "PYSEC-2026-90", "modified": "2026-11-01T00:00:00Z", "aliases": ["GHSA-aaaa-bbbb-cccc"]}
    with_cve = {"id": "GHSA-aaaa-bbbb-cccc", "modified": "2026-11-02T00:00:00Z", "aliases": ["CVE-2026-30001"]}
    intel = load_intel([write(tmp_path, "a.json", osv_only), write(tmp_path, "b.json", with_cve)])
    assert list(intel.advisories) == ["CVE-2026-30001"]
    assert intel.advisories["CVE-2026-30001"].aliases == ["GHSA-aaaa-bbbb-cccc", "PYSEC-2026-90"]
    assert intel.aliases == {"GHSA-aaaa-bbbb-cccc": "CVE-2026-30001", "PYSEC-2026-90": "CVE-2026-30001"}


def test_newer_kev_catalog_and_epss_day_win(tmp_path):
    kev = load_json("kev.json")
    newer = copy.deepcopy(kev)
    newer["catalogVersion"] = "2026.11.22"
    newer["vulnerabilities"][1]["knownRansomwareCampaignUse"] = "Known"
    old_epss = "#model_version:v2025.03.14,score_date:2026-11-20T00:00:00+0000\ncve,epss,percentile\n" \
               "CVE-2026-10001,0.1,0.2\n"
    intel = load_intel([write(tmp_path, "k2.json", newer), fixture("kev.json"), fixture("epss.csv"),
                        write(tmp_path, "e.csv", old_epss)])
    assert intel.kev["CVE-2026-10001"].ransomware is True
    assert intel.epss["CVE-2026-10001"].epss == 0.94112


# ---------------------------------------------------------------------------------------------------- CVSS


@pytest.mark.parametrize(
    ("vector", "version", "score", "automatable", "total"),
    [
        (V31_CRIT, "3.1", 9.8, True, True),
        ("CVSS:3.0/AV:N/AC:L/PR:N/UI:R/S:U/C:H/I:H/A:H", "3.0", 8.8, False, True),
        ("CVSS:3.1/AV:L/AC:H/PR:L/UI:N/S:U/C:L/I:N/A:N", "3.1", 2.5, False, False),
        (V40_CRIT, "4.0", 9.3, True, True),
        ("CVSS:4.0/AV:N/AC:L/AT:P/PR:N/UI:N/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N", "4.0", 9.2, False, True),
        ("AV:N/AC:L/Au:N/C:C/I:C/A:C", "2.0", 10.0, True, True),
        ("AV:N/AC:L/Au:S/C:N/I:P/A:N", "2.0", 4.0, False, False),
    ],
)
def test_parse_cvss(vector, version, score, automatable, total):
    info = parse_cvss(vector)
    assert (info.version, info.score, info.vector, info.automatable, info.total_impact) == (
        version, score, vector, automatable, total)


@pytest.mark.parametrize(
    ("vector", "reason"),
    [
        ("CVSS:3.1/AV:X/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", 'Unknown value "X"'),
        ("CVSS:3.1/AV:N", "Missing mandatory metrics"),
        ("CVSS:4.0/AV:N/AC:L", "Missing mandatory metrics"),
        ("CVSS:9.9/AV:N", "unsupported CVSS version"),
        ("", "empty"),
    ],
)
def test_parse_cvss_rejects_bad_vectors(vector, reason):
    with pytest.raises(ValueError, match=reason) as err:
        parse_cvss(vector)
    assert repr(vector) in str(err.value)


def test_each_distinct_vector_is_parsed_once_per_load(tmp_path, monkeypatch):
    calls = []
    real = _feeds.parse_cvss
    monkeypatch.setattr(_feeds, "parse_cvss", lambda v: calls.append(v) or real(v))
    records = [nvd_record(f"CVE-2026-{50000 + i}", V31_CRIT if i % 2 else V40_CRIT) for i in range(400)]
    _fmt, advisories = load_feed(write(tmp_path, "nvd.json", nvd_doc(*records)))
    assert len(advisories) == 400
    assert sorted(calls) == sorted([V31_CRIT, V40_CRIT])


def test_missing_cvss_library_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(_feeds, "HAS_CVSS", False)
    with pytest.raises(RuntimeError, match="'cvss' is required"):
        parse_cvss(V31_CRIT)


# ---------------------------------------------------------------------------------------------------- errors


def test_feed_error_shape_and_pickle():
    err = FeedError("f.json", "vulnerabilities[3] CVE-2026-1234", "bad thing", "do this")
    assert str(err) == "f.json: vulnerabilities[3] CVE-2026-1234: bad thing; do this"
    expected = ("f.json", "vulnerabilities[3] CVE-2026-1234", "bad thing", "do this")
    assert (err.path, err.record, err.message, err.fix) == expected
    assert str(FeedError("f.json", None, "bad", "fix")) == "f.json: bad; fix"
    assert isinstance(err, ValueError)
    clone = pickle.loads(pickle.dumps(err))
    assert (clone.path, clone.record, str(clone)) == (err.path, err.record, str(err))


def _kev_with(**changes) -> dict:
    doc = load_json("kev.json")
    doc["vulnerabilities"][1].update(changes)
    return doc


def _nvd_with_published(value: str) -> dict:
    doc = load_json("nvd.json")
    doc["vulnerabilities"][1]["cve"]["published"] = value
    return doc


def _nvd_bad_vector() -> dict:
    doc = load_json("nvd.json")
    doc["vulnerabilities"][1]["cve"]["metrics"]["cvssMetricV40"][0]["cvssData"]["vectorString"] = \
        "CVSS:4.0/AV:N/AC:L/AT:N/PR:L/UI:N/VC:L/VI:N/VA:Q/SC:N/SI:N/SA:N"
    return doc


def _nvd_bad_id() -> dict:
    doc = load_json("nvd.json")
    doc["vulnerabilities"][0]["cve"]["id"] = "CVE-26-1"
    return doc


def _nvd_bad_ssvc() -> dict:
    doc = load_json("nvd-with-ssvc.json")
    doc["vulnerabilities"][0]["cve"]["metrics"]["ssvcV203"][0]["ssvcData"]["options"][2] = {"technicalImpact": "huge"}
    return doc


def _nvd_bad_score() -> dict:
    doc = load_json("nvd.json")
    doc["vulnerabilities"][0]["cve"]["metrics"]["cvssMetricV31"][1]["cvssData"]["baseScore"] = "9.8"
    return doc


def _csaf_without_category() -> dict:
    doc = load_json("csaf.json")
    del doc["document"]["category"]
    return doc


def _csaf_without_cve() -> dict:
    doc = load_json("csaf.json")
    del doc["vulnerabilities"][1]["cve"]
    return doc


def _cve5_maybe() -> dict:
    doc = load_json("cve5-vulnrichment.json")
    doc["containers"]["adp"][0]["metrics"][0]["other"]["content"]["options"][0] = {"Exploitation": "maybe"}
    return doc


def _osv_without_id() -> list:
    records = load_json("osv.json")
    del records[1]["id"]
    return records


def _osv_bad_alias() -> dict:
    record = load_json("osv.json")[0]
    record["aliases"] = ["CVE-26-1"]
    return record


EPSS_HEAD = "#model_version:v2025.03.14,score_date:2026-11-23T00:00:00+0000\ncve,epss,percentile\n"

BAD = [
    # (case id, file content, record or None, message part, fix part)
    ("truncated-json", '{"vulnerabilities": [{"cve": ', None, "not valid JSON", "download the feed again"),
    ("not-json-or-csv", "<html><body>503 Service Unavailable</body></html>", None,
     "neither JSON nor an EPSS CSV (first line: '<html><body>503 Service", "supply one of"),
    ("unknown-json", {"items": [], "generator": "x"}, None, "unknown shape (top-level keys: generator, items)",
     "supply one of"),
    ("empty-file", "", None, "file is empty", "download the feed again"),
    ("blank-file", "  \n\n", None, "file is empty", "download the feed again"),
    ("empty-json-list", [], None, "JSON list is empty", "supply one of"),
    ("not-utf8", b'{"id": "\xff\xfe"}', None, "not UTF-8 text", "UTF-8"),
    ("osv-without-id", _osv_without_id(), "[1]", "OSV record has no 'id'", '"id": "GHSA-'),
    ("osv-bad-cve-alias", _osv_bad_alias(), "GHSA-q4m5-8x2v-7h3c", "aliases 'CVE-26-1' is not a CVE ID",
     "CVE-YYYY-NNNN"),
    ("nvd-bad-vector", _nvd_bad_vector(), "vulnerabilities[1] CVE-2026-10002",
     "cve.metrics.cvssMetricV40[0].vectorString: CVSS vector", "correct the vector string"),
    ("nvd-bad-cve-id", _nvd_bad_id(), "vulnerabilities[0]", "cve.id 'CVE-26-1' is not a CVE ID", "CVE-YYYY-NNNN"),
    ("nvd-bad-published", _nvd_with_published("last tuesday"), "vulnerabilities[1] CVE-2026-10002",
     "cve.published 'last tuesday' is not an ISO 8601 date", "2026-11-23"),
    ("nvd-bad-ssvc", _nvd_bad_ssvc(), "vulnerabilities[0] CVE-2026-10003",
     "SSVC option 'technicalImpact' has unknown value 'huge'", "partial, total"),
    ("nvd-bad-score", _nvd_bad_score(), "vulnerabilities[0] CVE-2026-10001",
     "cve.metrics.cvssMetricV31[1].baseScore '9.8' is not a CVSS score",
     "0.0 to 10.0"),
    ("nvd-no-cve-object", {"format": "NVD_CVE", "vulnerabilities": [{"id": "CVE-2026-1111"}]}, "vulnerabilities[0]",
     "has no 'cve' object", "NVD CVE API 2.0 shape"),
    ("csaf-without-category", _csaf_without_category(), "document", "has no 'category'", "csaf_security_advisory"),
    ("csaf-vuln-without-cve", _csaf_without_cve(), "vulnerabilities[1]", "vulnerability has no 'cve'",
     '"cve": "CVE-YYYY-NNNN"'),
    ("cve5-ssvc-maybe", _cve5_maybe(), "CVE-2026-10001", "SSVC option 'Exploitation' has unknown value 'maybe'",
     "none, poc, active"),
    ("kev-bad-date", _kev_with(dateAdded="11/10/2026"), "vulnerabilities[1] CVE-2026-10001",
     "dateAdded '11/10/2026' is not an ISO 8601 date", "2026-11-23"),
    ("kev-missing-cveid", _kev_with(cveID=None) | {}, "vulnerabilities[1]", "cveID None is not a string",
     "CVE-YYYY-NNNN"),
    ("epss-not-a-number", EPSS_HEAD + "CVE-2026-10001,high,0.9\n", "line 3 CVE-2026-10001",
     "epss 'high' is not a number", "between 0 and 1"),
    ("epss-out-of-range", EPSS_HEAD + "CVE-2026-10001,94.1,0.9\n", "line 3 CVE-2026-10001",
     "epss '94.1' is outside 0..1", "not a percentage"),
    ("epss-nan", EPSS_HEAD + "CVE-2026-10001,0.5,nan\n", "line 3 CVE-2026-10001", "percentile 'nan' is not a number",
     "between 0 and 1"),
    ("epss-without-header", "#model_version:v2025.03.14,score_date:2026-11-23T00:00:00+0000\n"
     "CVE-2026-10001,0.5,0.9\n", "line 2", "EPSS CSV has no header line", "cve,epss,percentile"),
    ("epss-headerless", "CVE-2026-10001,0.5,0.9\n", "line 1", "EPSS CSV has no header line", "cve,epss,percentile"),
    ("epss-bad-cve", EPSS_HEAD + "CVE-26-1,0.5,0.9\n", "line 3", "cve 'CVE-26-1' is not a CVE ID", "CVE-YYYY-NNNN"),
    ("epss-duplicate", EPSS_HEAD + "CVE-2026-10001,0.5,0.9\nCVE-2026-10001,0.4,0.8\n", "line 4 CVE-2026-10001",
     "duplicate row", "one row per CVE"),
]


@pytest.mark.parametrize(("content", "record", "message", "fix"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_feed_is_one_clear_error(tmp_path, content, record, message, fix):
    path = write(tmp_path, "feed.dat", content)
    with pytest.raises(FeedError) as err:
        load_feed(path)
    e = err.value
    assert e.path == path
    assert e.record == record
    assert message in e.message
    assert fix in e.fix
    assert str(e).startswith(f"{path}: {record}: " if record else f"{path}: ")


def test_kev_entry_missing_cveid_key(tmp_path):
    doc = load_json("kev.json")
    del doc["vulnerabilities"][0]["cveID"]
    with pytest.raises(FeedError, match=r"vulnerabilities\[0\]: KEV entry has no 'cveID'; add \"cveID\""):
        load_feed(write(tmp_path, "kev.json", doc))


def test_detect_format_names_the_file_for_unknown_content():
    with pytest.raises(FeedError, match=r"^mystery\.bin: JSON object of unknown shape"):
        detect_format("mystery.bin", b'{"hello": "world"}')


def test_file_not_found_and_unreadable(tmp_path):
    missing = str(tmp_path / "nope.json")
    with pytest.raises(FeedError, match="file not found") as err:
        load_feed(missing)
    assert err.value.path == missing and "check the path" in err.value.fix
    with pytest.raises(FeedError, match="is a directory"):
        load_feed(str(tmp_path))
    with pytest.raises(FeedError, match="corrupt gzip"):
        load_feed(write(tmp_path, "broken.gz", gzip.compress(b'{"a": 1}')[:12]))


def test_load_intel_stops_at_the_first_bad_file(tmp_path):
    with pytest.raises(FeedError) as err:
        load_intel([fixture("nvd.json"), write(tmp_path, "bad.json", {"x": 1}), fixture("kev.json")])
    assert err.value.path.endswith("bad.json")


# --------------------------------------------------------------------------- hostile feeds


@pytest.mark.parametrize(("content", "message"), [
    ('{"catalogVersion": "1", "vulnerabilities": [{"cveID": "CVE-2026-\u0663\u0661\u0663\u0663\u0667", '
     '"dateAdded": "2026-11-18"}]}', "cveID 'CVE-2026-٣١٣٣٧' contains a non-ASCII character (U+0663"),
    ('{"id": "GHSA-\u0661", "modified": "2026-11-20T00:00:00Z"}', "id 'GHSA-١' contains a non-ASCII character"),
    ("#model_version:v1,score_date:2026-11-23\ncve,epss,percentile\nCVE-2026-10001,\u0660.\u0665,0.9\n",
     "epss '٠.٥' is not a number"),
    ("cve,epss,percentile\nCVE-2026-10001,0.5,0.9," + "x" * 200_000 + "\n", "not a valid CSV line"),
    ('{"catalogVersion": "1", "vulnerabilities": [], "vulnerabilities": [1]}', "duplicate key 'vulnerabilities'"),
    ("[" * 10_000 + "]" * 10_000, "JSON nested deeper than 64 levels"),
])
def test_hostile_feed_content(tmp_path, content, message):
    with pytest.raises(FeedError) as err:
        load_feed(write(tmp_path, "feed.dat", content))
    assert message in err.value.message


def test_feed_size_cap_applies_to_the_gunzipped_feed(tmp_path):
    path = write(tmp_path, "epss.csv.gz", gzip.compress(b"cve,epss,percentile\n" + b"\n" * 4096))
    with pytest.raises(FeedError, match=r"decompressed feed is larger than the limit of 2 KiB.*raise max_feed_size"):
        load_feed(path, max_size=2048)
    with pytest.raises(FeedError, match="is a character device"):
        load_intel(["/dev/zero"])
