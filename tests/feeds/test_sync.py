"""The feed sync engine against a real local HTTP server answering with the real APIs' shapes."""

from __future__ import annotations

import gzip
import hashlib
import json
from datetime import timedelta
from pathlib import Path

import pytest
from ansible_collections.exchangeops.patching.plugins.module_utils import _feeds, _feedsync

from tests.feeds.conftest import NOW, nvd_records, options, snapshot
from tests.feeds.server import (
    FeedServer,
    csaf_doc,
    cve5_record,
    epss_csv,
    kev_doc,
    nvd_record,
    osv_record,
)

ALL = ("kev", "epss", "nvd", "vulnrichment", "osv", "csaf")
SSH = "pkg:deb/debian/openssh@1:9.2p1-2+deb12u2?distro=debian-12"
XZ = "pkg:deb/debian/xz-utils@5.4.1-0.2?distro=debian-12"
# what the server is asked for them: distro packages by ecosystem, name and version (osv.dev#2842)
SSH_Q, XZ_Q = "Debian/openssh@1:9.2p1-2+deb12u2", "Debian/xz-utils@5.4.1-0.2"


def sbom(tmp_path: Path) -> Path:
    """A CycloneDX 1.6 SBOM with a nested component (xz-utils inside a bundle)."""
    doc = {"bomFormat": "CycloneDX", "specVersion": "1.6", "version": 1, "metadata": {"component": {
        "type": "application", "name": "matching-engine", "version": "1.4.3",
        "purl": "pkg:generic/exchangeops/matching-engine@1.4.3"}},
        "components": [{"type": "library", "name": "openssh", "version": "1:9.2p1-2+deb12u2", "purl": SSH},
                       {"type": "application", "name": "bundle", "components": [
                           {"type": "library", "name": "xz-utils", "version": "5.4.1-0.2", "purl": XZ}]}]}
    path = tmp_path / "me-1.4.3.cdx.json"
    path.write_text(json.dumps(doc))
    return path


def full_server(server: FeedServer) -> None:
    d = server.data
    d.kev = kev_doc(["CVE-2024-6387"])
    d.nvd = nvd_records(5, NOW - timedelta(days=10), timedelta(days=1))
    d.vulnrichment = {"CVE-2024-6387": cve5_record("CVE-2024-6387")}
    d.osv = {"DEBIAN-CVE-2024-6387": osv_record("DEBIAN-CVE-2024-6387", "CVE-2024-6387"),
             "DEBIAN-CVE-2024-3094": osv_record("DEBIAN-CVE-2024-3094", "CVE-2024-3094", "xz-utils",
                                                "5.6.1+really5.4.5-1")}
    d.osv_by_purl = {SSH_Q: ["DEBIAN-CVE-2024-6387"], XZ_Q: ["DEBIAN-CVE-2024-3094"]}
    d.csaf = {"esa-2026-001.json": csaf_doc("ESA-2026-001", "CVE-2024-6387")}


def all_options(server: FeedServer, cache: Path, tmp_path: Path, **kw) -> _feedsync.SyncOptions:
    kw.setdefault("only", ALL)
    kw.setdefault("sboms", [str(sbom(tmp_path))])
    kw.setdefault("csaf_providers", [f"{server.url}/csaf/provider-metadata.json"])
    return options(server, cache, **kw)


def feed_files(cache: Path) -> dict[str, str]:
    """The cache without state.json (which records each attempt and its error by design)."""
    return {k: v for k, v in snapshot(cache).items() if k != "state.json"}


def test_first_sync_fills_a_cache_the_plan_can_read(server, cache, tmp_path):
    full_server(server)
    result = _feedsync.sync(all_options(server, cache, tmp_path))
    assert result["ok"], result["errors"]
    assert {n: r["status"] for n, r in result["feeds"].items()} == dict.fromkeys(ALL, "updated")
    files = _feedsync.cache_files(str(cache))
    assert sorted(Path(f).relative_to(cache).as_posix() for f in files) == [
        "csaf/127.0.0.1/esa-2026-001.json", "epss.csv", "kev.json", "nvd.json", "osv.json", "vulnrichment.json"]
    intel = _feeds.load_intel(files)  # the plan's own loader reads every cached file unchanged
    assert "CVE-2024-6387" in intel.kev and intel.epss["CVE-2024-3094"].epss == 0.8
    assert intel.advisories["CVE-2024-6387"].ssvc.exploitation == "active"  # from vulnrichment's ADP
    assert len([a for a in intel.advisories if a.startswith("CVE-2026-")]) == 5
    assert (cache / "epss.csv").read_text().startswith("#model_version:")
    state = json.loads((cache / "state.json").read_text())
    assert state["schema"] == 1
    for name in ALL:
        fs = state["feeds"][name]
        assert fs["synced_at"] == "2026-11-24T12:00:00Z" and fs["last_error"] is None
        assert set(fs) >= {"files", "records", "source", "etag", "last_modified", "cursor", "last_attempt_at"}
    assert state["feeds"]["kev"]["etag"] and state["feeds"]["nvd"]["cursor"]["lastModEndDate"] == "2026-11-24T12:00:00Z"
    # OSV: one querybatch for both purls (the nested one too), then one GET per vulnerability
    batch = server.requests("/v1/querybatch")
    assert len(batch) == 1
    assert sorted(json.dumps(q, sort_keys=True) for q in json.loads(batch[0].body)["queries"]) == sorted(
        json.dumps(q, sort_keys=True) for q in [
            {"package": {"name": "openssh", "ecosystem": "Debian"}, "version": "1:9.2p1-2+deb12u2"},
            {"package": {"name": "xz-utils", "ecosystem": "Debian"}, "version": "5.4.1-0.2"},
            {"package": {"purl": "pkg:generic/exchangeops/matching-engine@1.4.3"}}])
    assert len(server.requests("/v1/vulns/")) == 2
    # CSAF: the TLP:AMBER feed is not fetched, the document's published hash is
    assert not server.requests("/csaf/feed-tlp-amber.json") and server.requests("/csaf/docs/esa-2026-001.json.sha256")


def test_second_sync_uses_conditional_requests_and_304_keeps_the_files(server, cache, tmp_path):
    full_server(server)
    assert _feedsync.sync(all_options(server, cache, tmp_path))["ok"]
    before = feed_files(cache)
    server.log.clear()
    later = NOW + timedelta(hours=6)
    result = _feedsync.sync(all_options(server, cache, tmp_path, now=lambda: later))
    assert result["ok"], result["errors"]
    assert result["feeds"]["kev"]["status"] == result["feeds"]["epss"]["status"] == "not_modified"
    kev = server.requests("/kev.json")[0]
    assert kev.headers.get("if-none-match") and kev.headers.get("if-modified-since")
    assert server.requests("/epss_scores-current.csv.gz")[0].headers.get("if-none-match")
    assert server.requests("/vulnrichment/")[0].headers.get("if-none-match")  # per-record ETag
    assert not server.requests("/v1/vulns/")  # unchanged "modified": the cached record is kept
    assert feed_files(cache)["kev.json"] == before["kev.json"]
    state = json.loads((cache / "state.json").read_text())
    assert state["feeds"]["kev"]["synced_at"] == "2026-11-24T18:00:00Z"  # a 304 confirms freshness
    # the NVD window starts where the last one ended
    nvd = server.requests("/rest/json/cves/2.0")[0]
    assert nvd.query["lastModStartDate"] == "2026-11-24T12:00:00.000+00:00"
    assert nvd.query["lastModEndDate"] == "2026-11-24T18:00:00.000+00:00"


FAILURES = [
    ("kev", "/kev.json", "500", "HTTP 500"),
    ("kev", "/kev.json", "403", "HTTP 403"),
    ("kev", "/kev.json", "429", "HTTP 429"),
    ("epss", "/epss_scores-current.csv.gz", "503", "HTTP 503"),
    ("epss", "/epss_scores-current.csv.gz", "truncated", "truncated"),
    ("kev", "/kev.json", "invalid_json", "not a valid feed"),
    ("nvd", "/rest/json/cves/2.0", "invalid_json", "invalid JSON"),
    ("nvd", "/rest/json/cves/2.0", "truncated", "truncated"),
    ("nvd", "/rest/json/cves/2.0", "hang", "timeout"),
    ("osv", "/v1/vulns/", "500", "HTTP 500"),
    ("vulnrichment", "/vulnrichment/", "invalid_json", "invalid JSON"),
    ("csaf", "/csaf/feed-tlp-white.json", "truncated", "truncated"),
]


@pytest.mark.parametrize(("feed", "route", "kind", "needle"), FAILURES, ids=[f"{f[0]}-{f[2]}" for f in FAILURES])
def test_a_failing_feed_keeps_its_cached_copy_byte_identical_and_is_named(server, cache, tmp_path, feed, route,
                                                                          kind, needle):
    full_server(server)
    opts = all_options(server, cache, tmp_path, timeout=1.0, max_retries=1)
    assert _feedsync.sync(opts)["ok"]
    before = feed_files(cache)
    # new data everywhere, so a sync that wrongly went through would change the files
    d = server.data
    d.kev = kev_doc(["CVE-2024-6387", "CVE-2024-3094"], "2026.11.23")
    d.epss = {**d.epss, "CVE-2026-10001": 0.1}
    d.nvd = [*d.nvd, nvd_record("CVE-2026-20000", NOW + timedelta(hours=1))]
    d.vulnrichment["CVE-2024-3094"] = cve5_record("CVE-2024-3094")
    d.osv["DEBIAN-CVE-2024-6387"] = {**d.osv["DEBIAN-CVE-2024-6387"], "modified": "2026-11-23T00:00:00Z"}
    d.csaf["esa-2026-002.json"] = csaf_doc("ESA-2026-002", "CVE-2024-3094")
    server.fail(route, kind, times=opts.max_retries + 1)
    later = NOW + timedelta(hours=2)
    result = _feedsync.sync(all_options(server, cache, tmp_path, timeout=1.0, max_retries=1, now=lambda: later))
    assert not result["ok"]
    assert result["failed"] == [feed]
    error = result["feeds"][feed]["error"]
    assert error.startswith(f"{feed}: ") and needle in error, error
    after = feed_files(cache)
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    mine = {"kev": "kev.json", "epss": "epss.csv", "nvd": "nvd.json", "vulnrichment": "vulnrichment.json",
            "osv": "osv.json", "csaf": "csaf/"}[feed]
    assert not {k for k in changed if k.startswith(mine)}, "the failed feed's files changed"
    assert not [k for k in after if k.endswith(".part")]
    state = json.loads((cache / "state.json").read_text())
    assert state["feeds"][feed]["last_error"]["message"] == error
    assert state["feeds"][feed]["synced_at"] == "2026-11-24T12:00:00Z"  # the last good refresh
    # the other feeds still synced
    others = {n: r["status"] for n, r in result["feeds"].items() if n != feed}
    assert set(others.values()) <= {"updated", "not_modified"}, others


def test_nvd_totals_changing_mid_pagination_fails_the_feed(server, cache):
    server.data.nvd = nvd_records(6, NOW - timedelta(days=5), timedelta(hours=1))
    opts = options(server, cache, only=("nvd",), nvd_page_size=2)
    assert _feedsync.sync(opts)["ok"]
    before = feed_files(cache)
    server.data.nvd = [nvd_record(f"CVE-2026-{20000 + i}", NOW + timedelta(minutes=i + 1)) for i in range(5)]
    server.data.nvd_totals_change = True
    result = _feedsync.sync(options(server, cache, only=("nvd",), nvd_page_size=2, nvd_since=None,
                                    now=lambda: NOW + timedelta(hours=1)))
    assert result["failed"] == ["nvd"]
    assert "totalResults changed from" in result["feeds"]["nvd"]["error"]
    assert feed_files(cache) == before


def test_csaf_document_with_a_wrong_published_hash_is_refused(server, cache, tmp_path):
    full_server(server)
    server.data.csaf_bad_hash = {"esa-2026-001.json"}
    result = _feedsync.sync(all_options(server, cache, tmp_path, only=("csaf",)))
    assert result["failed"] == ["csaf"]
    assert "sha256 does not match the published one" in result["feeds"]["csaf"]["error"]
    assert not (cache / "csaf").exists() or not list((cache / "csaf").rglob("*.json"))


def test_csaf_directory_distribution_with_sha512(server, cache, tmp_path):
    full_server(server)
    server.data.csaf_mode, server.data.csaf_hash = "directory", "sha512"
    server.data.csaf["esa-2026-002.json"] = csaf_doc("ESA-2026-002", "CVE-2024-3094")
    result = _feedsync.sync(all_options(server, cache, tmp_path, only=("csaf",)))
    assert result["ok"], result["errors"]
    names = sorted(p.name for p in (cache / "csaf" / "127.0.0.1").iterdir())
    assert names == ["esa-2026-001.json", "esa-2026-002.json"]
    assert server.requests("/csaf/dir/changes.csv") and server.requests("/csaf/dir/2026/esa-2026-002.json.sha512")
    server.log.clear()
    assert _feedsync.sync(all_options(server, cache, tmp_path, only=("csaf",)))["ok"]
    assert not server.requests("/csaf/dir/2026/")  # unchanged timestamps in changes.csv: nothing fetched


def test_retry_after_is_honoured_from_the_servers_clock(server, cache):
    server.retry_after = "1"
    server.fail("/kev.json", "429")
    result = _feedsync.sync(options(server, cache, only=("kev",), backoff=30.0))
    assert result["ok"], result["errors"]
    first, second = server.requests("/kev.json")
    assert second.at - first.at >= 1.0


def _spacing_ok(times: list[float], limit: int, window: float) -> bool:
    """No ``limit + 1`` requests inside any rolling ``window`` (as the server received them)."""
    return all(times[i + limit] - times[i] >= window for i in range(len(times) - limit))


def test_nvd_incremental_across_120_day_windows_without_a_key_respects_5_per_window(server, cache):
    start = NOW - timedelta(days=300)
    server.data.nvd = nvd_records(12, start + timedelta(days=1), timedelta(days=25))
    first = options(server, cache, only=("nvd",), nvd_since=start.isoformat(), nvd_page_size=2, rate_window=0.25)
    result = _feedsync.sync(first)
    assert result["ok"], result["errors"]
    reqs = server.requests("/rest/json/cves/2.0")
    windows = sorted({(r.query["lastModStartDate"], r.query["lastModEndDate"]) for r in reqs})
    assert windows == [
        ("2026-01-28T12:00:00.000+00:00", "2026-05-28T12:00:00.000+00:00"),
        ("2026-05-28T12:00:00.000+00:00", "2026-09-25T12:00:00.000+00:00"),
        ("2026-09-25T12:00:00.000+00:00", "2026-11-24T12:00:00.000+00:00"),
    ]  # consecutive, none longer than 120 days (the server answers 404 to a longer one, like NVD)
    assert all(r.query["resultsPerPage"] == "2" for r in reqs)
    assert all("apikey" not in r.headers for r in reqs)
    assert len(reqs) >= 6
    assert _spacing_ok([r.at for r in reqs], 5, 0.25)
    doc = json.loads((cache / "nvd.json").read_text())
    assert doc["totalResults"] == 12 and doc["format"] == "NVD_CVE" and doc["version"] == "2.0"
    # incremental: a record modified since, and a new one, merged by CVE id
    server.log.clear()
    later = NOW + timedelta(days=2)
    server.data.nvd[0] = nvd_record("CVE-2026-10000", NOW + timedelta(days=1), score=9.1)
    server.data.nvd.append(nvd_record("CVE-2026-30000", NOW + timedelta(days=1)))
    result = _feedsync.sync(options(server, cache, only=("nvd",), nvd_since=None, now=lambda: later))
    assert result["ok"] and result["feeds"]["nvd"]["changed"] == 2
    (req,) = server.requests("/rest/json/cves/2.0")
    assert req.query["lastModStartDate"] == "2026-11-24T12:00:00.000+00:00"
    _fmt, advisories = _feeds.load_feed(str(cache / "nvd.json"))
    by_id = {a.cve: a for a in advisories}
    assert len(by_id) == 13 and by_id["CVE-2026-10000"].cvss_score == 9.1


def test_nvd_with_an_api_key_sends_it_as_a_header_and_allows_50_per_window(server, cache, tmp_path):
    key = "nvd-key-7f3a9c-SECRET"
    server.data.nvd_api_key = key
    server.data.nvd = nvd_records(60, NOW - timedelta(days=20), timedelta(hours=2))
    result = _feedsync.sync(options(server, cache, only=("nvd",), nvd_api_key=key, nvd_page_size=1,
                                    rate_window=0.3))
    assert result["ok"], result["errors"]
    reqs = server.requests("/rest/json/cves/2.0")
    assert len(reqs) == 60 and all(r.headers.get("apikey") == key for r in reqs)
    assert all(key not in json.dumps(r.query) for r in reqs)  # never in the URL
    assert _spacing_ok([r.at for r in reqs], 50, 0.3)
    assert key not in json.dumps(result)
    assert not [p for p in cache.rglob("*") if p.is_file() and key.encode() in p.read_bytes()]
    # the wrong key: 403 is retried with backoff, then the feed fails, named, and the key is not in the message
    bad = _feedsync.sync(options(server, cache, only=("nvd",), nvd_api_key="wrong", max_retries=1,
                                 now=lambda: NOW + timedelta(hours=1)))
    assert bad["failed"] == ["nvd"] and "HTTP 403" in bad["feeds"]["nvd"]["error"]
    assert "wrong" not in json.dumps(bad)


def test_osv_follows_next_page_token(server, cache, tmp_path):
    full_server(server)
    ids = [f"DEBIAN-CVE-2024-{n}" for n in (6387, 6388, 6389)]
    server.data.osv = {i: osv_record(i, i.removeprefix("DEBIAN-")) for i in ids}
    server.data.osv_by_purl = {SSH_Q: ids}
    server.data.osv_page = 1
    result = _feedsync.sync(all_options(server, cache, tmp_path, only=("osv",)))
    assert result["ok"], result["errors"]
    batches = [json.loads(r.body)["queries"] for r in server.requests("/v1/querybatch")]
    assert len(batches) == 3
    assert [q.get("page_token") for b in batches[1:] for q in b] == ["1", "2"]
    assert sorted(r["id"] for r in json.loads((cache / "osv.json").read_text())["vulns"]) == ids


def test_new_kev_entries_hitting_running_nodes_are_reported_and_posted(server, cache, tmp_path):
    full_server(server)
    assert _feedsync.sync(options(server, cache, only=("kev",)))["new_kev"]["baseline"]
    (cache / "exposure.json").write_text(json.dumps({"schema": 1, "generated_at": "2026-11-24T00:00:00Z", "cves": {
        "CVE-2024-3094": {"nodes": ["me-s0-a", "me-s0-b"], "packages": [XZ], "fixed_by": [], "not_affected": []},
        "CVE-2024-6387": {"nodes": ["me-s0-a"], "packages": [SSH], "fixed_by": [], "not_affected": []}}}))
    server.data.kev = kev_doc(["CVE-2024-6387", "CVE-2024-3094", "CVE-2023-44487"], "2026.11.24")
    hook = f"{server.url}/hook/T0KEN-s3cr3t"
    result = _feedsync.sync(options(server, cache, only=("kev",), webhook_url=hook))
    assert result["ok"], result["errors"]
    assert result["new_kev"]["new"] == ["CVE-2023-44487", "CVE-2024-3094"]
    assert [(h["cve"], h["nodes"]) for h in result["new_kev"]["affecting_nodes"]] == [
        ("CVE-2024-3094", ["me-s0-a", "me-s0-b"])]
    (post,) = server.requests("/hook/")
    payload = json.loads(post.body)
    assert payload["event"] == "new_kev_affecting_nodes" and payload["entries"][0]["cve"] == "CVE-2024-3094"
    assert "me-s0-b" in payload["text"]
    assert result["webhook"] == {"sent": True, "status": 200, "error": None}
    assert "T0KEN" not in json.dumps(result) and "T0KEN" not in (cache / "state.json").read_text()
    text = _feedsync.prometheus(_feedsync.freshness(str(cache), NOW))
    assert "exchpatch_feed_new_kev_affecting_nodes 1" in text
    # a webhook that fails makes the run fail, without naming its URL
    server.data.kev = kev_doc(["CVE-2024-6387", "CVE-2024-3094", "CVE-2023-44487", "CVE-2024-6387".replace(
        "6387", "6409")], "2026.11.25")
    exposure = json.loads((cache / "exposure.json").read_text())
    exposure["cves"]["CVE-2024-6409"] = {"nodes": ["me-s1-a"]}
    (cache / "exposure.json").write_text(json.dumps(exposure))
    bad = _feedsync.sync(options(server, cache, only=("kev",), webhook_url=f"{server.url}/nohook/T0KEN-s3cr3t"))
    assert bad["failed"] == ["webhook"] and "HTTP 404" in bad["errors"][0] and "T0KEN" not in json.dumps(bad)


def test_proxy_setting_sends_every_request_through_the_proxy(server, cache):
    opts = options(server, cache, only=("kev", "epss"), proxy=server.url)
    opts.urls = {"kev": "http://feeds.invalid/kev.json", "epss": "http://feeds.invalid/epss_scores-current.csv.gz"}
    result = _feedsync.sync(opts)
    assert result["ok"], result["errors"]
    assert [r.proxied_host for r in server.log] == ["feeds.invalid", "feeds.invalid"]


def test_mirror_mode_reads_the_same_files_from_a_folder(server, cache, tmp_path):
    mirror = tmp_path / "mirror"
    (mirror / "nvd").mkdir(parents=True)
    (mirror / "kev.json").write_text(json.dumps(kev_doc(["CVE-2024-6387"])))
    (mirror / "epss_scores-current.csv.gz").write_bytes(gzip.compress(epss_csv({"CVE-2024-6387": 0.9})))
    for i, chunk in enumerate((nvd_records(3, NOW - timedelta(days=3), timedelta(hours=1)),
                               [nvd_record("CVE-2026-20000", NOW)])):
        (mirror / "nvd" / f"page-{i}.json").write_text(json.dumps({
            "resultsPerPage": len(chunk), "startIndex": 0, "totalResults": len(chunk), "format": "NVD_CVE",
            "version": "2.0", "timestamp": "2026-11-24T08:00:00.000", "vulnerabilities": chunk}))
    vr = mirror / "vulnrichment" / "2024" / "6xxx"
    vr.mkdir(parents=True)
    (vr / "CVE-2024-6387.json").write_text(json.dumps(cve5_record("CVE-2024-6387")))
    (mirror / "osv").mkdir()
    record = osv_record("DEBIAN-CVE-2024-6387", "CVE-2024-6387")
    (mirror / "osv" / "DEBIAN-CVE-2024-6387.json").write_text(json.dumps(record))
    host = mirror / "csaf" / "psirt.example.com"
    host.mkdir(parents=True)
    body = json.dumps(csaf_doc("ESA-2026-001", "CVE-2024-6387")).encode()
    (host / "esa-2026-001.json").write_bytes(body)
    (host / "esa-2026-001.json.sha256").write_text(hashlib.sha256(body).hexdigest() + "  esa-2026-001.json\n")
    opts = _feedsync.SyncOptions(cache_dir=str(cache), mirror=str(mirror), now=lambda: NOW)
    result = _feedsync.sync(opts)
    assert result["ok"], result["errors"]
    assert not server.log  # nothing went to the network
    assert {n: r["status"] for n, r in result["feeds"].items()} == dict.fromkeys(ALL, "updated")
    assert json.loads((cache / "nvd.json").read_text())["totalResults"] == 4
    assert json.loads((cache / "state.json").read_text())["feeds"]["kev"]["source"] == f"mirror:{mirror}"
    _feeds.load_intel(_feedsync.cache_files(str(cache)))
    # a tampered mirror copy is refused like a tampered download
    before = feed_files(cache)
    (host / "esa-2026-001.json").write_bytes(body.replace(b"ESA-2026-001", b"ESA-2026-666"))
    bad = _feedsync.sync(_feedsync.SyncOptions(cache_dir=str(cache), mirror=str(mirror), only=("csaf",)))
    assert bad["failed"] == ["csaf"] and "does not match" in bad["errors"][0]
    assert feed_files(cache) == before


def test_check_mode_fetches_nothing_and_writes_nothing(server, cache, tmp_path):
    full_server(server)
    result = _feedsync.sync(all_options(server, cache, tmp_path, check=True))
    assert result["ok"] and result["changed"]
    assert {r["status"] for n, r in result["feeds"].items() if n != "vulnrichment"} == {"would_sync"}
    assert result["feeds"]["nvd"]["windows"] == ["2026-11-01T00:00:00.000+00:00 .. 2026-11-24T12:00:00.000+00:00"]
    assert not server.log and not list(cache.iterdir())


@pytest.mark.parametrize(("kw", "needle"), [
    ({"only": ("kev", "ghsa")}, "unknown feed(s) ghsa"),
    ({"sboms": ["/nonexistent/sbom.json"]}, "file not found"),
    ({"urls": {"kev": "ftp://x/kev.json"}}, "is not an http(s) URL"),
    ({"webhook_url": "not a url T0KEN"}, "value not shown"),
    ({"nvd_since": "yesterday"}, "not an ISO 8601 time"),
])
def test_bad_settings_are_refused_before_anything_is_fetched(server, cache, kw, needle):
    opts = options(server, cache, **kw)
    with pytest.raises(_feedsync.FeedSyncInput) as err:
        _feedsync.sync(opts)
    assert needle in str(err.value) and "T0KEN" not in str(err.value)
    assert not server.log and not list(cache.iterdir())


def test_freshness_warns_at_48h_and_refuses_a_kev_older_than_72h(server, cache):
    fresh = _feedsync.freshness(str(cache), NOW)
    assert fresh["refuse"].startswith("the KEV catalog has never been synced")
    assert _feedsync.sync(options(server, cache))["ok"]
    fresh = _feedsync.freshness(str(cache), NOW + timedelta(hours=47))
    assert fresh["refuse"] is None and not fresh["warnings"]
    assert fresh["feeds"]["kev"]["age_s"] == 47 * 3600 and fresh["feeds"]["kev"]["records"] == 1
    fresh = _feedsync.freshness(str(cache), NOW + timedelta(hours=50))
    assert fresh["refuse"] is None and "kev is 50.0 h old (warning at 48.0 h)" in fresh["warnings"]
    fresh = _feedsync.freshness(str(cache), NOW + timedelta(hours=73))
    assert "the KEV catalog is 73.0 h old (limit 72.0 h)" in fresh["refuse"]
    assert _feedsync.freshness(str(cache), NOW + timedelta(hours=73), kev_max_age=100 * 3600)["refuse"] is None
    text = _feedsync.prometheus(fresh)
    assert 'exchpatch_feed_age_seconds{feed="kev"} 262800' in text
    assert 'exchpatch_feed_records{feed="kev"} 1' in text
    assert 'exchpatch_feed_last_error{feed="kev"} 0' in text and "exchpatch_feed_kev_refused 1" in text
    assert 'exchpatch_feed_age_seconds{feed="csaf"} -1' in text
