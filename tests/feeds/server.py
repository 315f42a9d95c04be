"""A local stand-in for the public feed services, answering with their real shapes.

One ``http.server`` on 127.0.0.1, port 0, in a thread. Routes (all under one origin):

``GET  /kev.json``                      the CISA KEV catalog (ETag / Last-Modified, 304 when unchanged)
``GET  /epss_scores-current.csv.gz``    the FIRST EPSS gzip CSV (ETag, 304)
``GET  /rest/json/cves/2.0``            NVD CVE API 2.0: lastModStartDate/lastModEndDate (both or neither,
                                        at most 120 days apart, else 404 like NVD), startIndex, resultsPerPage
                                        (at most 2000); answers resultsPerPage/startIndex/totalResults/format/
                                        version/timestamp/vulnerabilities
``GET  /vulnrichment/<year>/<n>xxx/CVE-....json``  CVE 5 records (404 when vulnrichment has none)
``POST /v1/querybatch``                 OSV: {"queries": [{"package": {"purl"}, "page_token"?}]} ->
                                        {"results": [{"vulns": [{"id", "modified"}], "next_page_token"?}]}
``GET  /v1/vulns/<id>``                 OSV record
``GET  /csaf/provider-metadata.json``   CSAF provider metadata (a ROLIE feed and/or a directory distribution)
``GET  /csaf/feed-tlp-white.json``      ROLIE feed;  ``/csaf/docs/...`` documents, ``.sha256``/``.sha512``;
``GET  /csaf/dir/changes.csv``          the directory distribution

Misbehaviour on demand: ``server.fail(route, kind, times=1)`` with kind one of ``500``, ``403``, ``429``
(``Retry-After`` from ``server.retry_after``), ``503``, ``truncated`` (Content-Length larger than the body),
``invalid_json``, ``hang`` (no answer until the server stops); ``data.nvd_totals_change`` makes NVD's
totalResults grow after the first page. Every request is logged with its receipt time (``time.monotonic()``),
method, path, query and headers, so tests check rate limits and conditional requests from the server's side.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def nvd_record(cve: str, last_modified: datetime, score: float = 7.5) -> dict[str, Any]:
    return {"cve": {
        "id": cve, "sourceIdentifier": "cve@mitre.org", "published": "2024-07-01T13:15:10.327",
        "lastModified": last_modified.strftime("%Y-%m-%dT%H:%M:%S.000"), "vulnStatus": "Analyzed",
        "descriptions": [{"lang": "en", "value": f"test record {cve}"}],
        "metrics": {"cvssMetricV31": [{"source": "nvd@nist.gov", "type": "Primary", "cvssData": {
            "version": "3.1", "vectorString": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N", "baseScore": score,
            "baseSeverity": "HIGH"}}]},
    }}


def kev_doc(cves: list[str], version: str = "2026.11.20") -> dict[str, Any]:
    return {"title": "CISA Catalog of Known Exploited Vulnerabilities", "catalogVersion": version,
            "dateReleased": "2026-11-20T15:00:00.000Z", "count": len(cves),
            "vulnerabilities": [{"cveID": c, "vendorProject": "OpenBSD", "product": "OpenSSH",
                                 "vulnerabilityName": f"{c} test entry", "dateAdded": "2026-11-20",
                                 "shortDescription": "test", "requiredAction": "Apply updates.",
                                 "dueDate": "2026-12-11", "knownRansomwareCampaignUse": "Unknown", "notes": "",
                                 "cwes": []} for c in cves]}


def epss_csv(rows: dict[str, float]) -> bytes:
    lines = ["#model_version:v2025.03.14,score_date:2026-11-20T12:55:00+0000", "cve,epss,percentile"]
    lines += [f"{c},{v:.5f},0.50000" for c, v in rows.items()]
    return ("\n".join(lines) + "\n").encode()


def cve5_record(cve: str) -> dict[str, Any]:
    return {"dataType": "CVE_RECORD", "dataVersion": "5.1",
            "cveMetadata": {"cveId": cve, "state": "PUBLISHED", "datePublished": "2024-07-01T12:48:05.000Z",
                            "dateUpdated": "2026-11-01T10:00:00.000Z"},
            "containers": {"cna": {"descriptions": [{"lang": "en", "value": "test"}]}, "adp": [{
                "title": "CISA ADP Vulnrichment", "metrics": [{"other": {"type": "ssvc", "content": {
                    "timestamp": "2026-11-01T10:00:00Z", "id": cve, "role": "CISA Coordinator", "version": "2.0.3",
                    "options": [{"Exploitation": "active"}, {"Automatable": "no"},
                                {"Technical Impact": "total"}]}}}]}]}}


def osv_record(vid: str, cve: str, package: str = "openssh", fixed: str = "1:9.2p1-2+deb12u3") -> dict[str, Any]:
    return {"id": vid, "modified": "2026-11-01T00:00:00Z", "published": "2024-07-01T00:00:00Z",
            "schema_version": "1.6.0", "aliases": [cve],
            "affected": [{"package": {"ecosystem": "Debian:12", "name": package, "purl": f"pkg:deb/debian/{package}"},
                          "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": fixed}]}]}]}


def csaf_doc(tracking_id: str, cve: str) -> dict[str, Any]:
    return {"document": {"category": "csaf_security_advisory", "csaf_version": "2.0", "title": tracking_id,
                         "publisher": {"category": "vendor", "name": "Example", "namespace": "https://example.com"},
                         "tracking": {"id": tracking_id, "status": "final", "version": "1",
                                      "initial_release_date": "2026-11-01T00:00:00Z",
                                      "current_release_date": "2026-11-02T00:00:00Z",
                                      "revision_history": [{"number": "1", "date": "2026-11-01T00:00:00Z",
                                                            "summary": "initial"}]}},
            "vulnerabilities": [{"cve": cve, "scores": [{"products": ["p1"], "cvss_v3": {
                "version": "3.1", "vectorString": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", "baseScore": 9.8,
                "baseSeverity": "CRITICAL"}}]}]}


@dataclass
class Logged:
    at: float
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes = b""
    proxied_host: str | None = None


@dataclass
class FeedData:
    kev: dict[str, Any] = field(default_factory=lambda: kev_doc(["CVE-2024-6387"]))
    epss: dict[str, float] = field(default_factory=lambda: {"CVE-2024-6387": 0.9, "CVE-2024-3094": 0.8})
    nvd: list[dict[str, Any]] = field(default_factory=list)
    nvd_totals_change: bool = False  # pages after the first report one more record (NVD updating mid-sync)
    nvd_api_key: str | None = None  # when set, a request without it is answered 403 (like a wrong key)
    vulnrichment: dict[str, dict[str, Any]] = field(default_factory=dict)
    osv: dict[str, dict[str, Any]] = field(default_factory=dict)
    osv_by_purl: dict[str, list[str]] = field(default_factory=dict)  # purl, or "Ecosystem/name@version" -> ids
    osv_page: int = 1000  # ids per querybatch result page (next_page_token beyond)
    csaf: dict[str, dict[str, Any]] = field(default_factory=dict)  # doc name -> document
    csaf_mode: str = "rolie"  # rolie | directory
    csaf_hash: str = "sha256"
    csaf_bad_hash: set[str] = field(default_factory=set)
    last_modified: str = "Fri, 20 Nov 2026 15:00:00 GMT"


class FeedServer:
    def __init__(self) -> None:
        self.data = FeedData()
        self.log: list[Logged] = []
        self.faults: dict[str, list[str]] = {}
        self.retry_after = "0"
        self._stop = threading.Event()
        self._lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"app": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)

    def urls(self) -> dict[str, str]:
        return {"kev": f"{self.url}/kev.json", "epss": f"{self.url}/epss_scores-current.csv.gz",
                "nvd": f"{self.url}/rest/json/cves/2.0", "vulnrichment": f"{self.url}/vulnrichment",
                "osv": self.url}

    def fail(self, route: str, kind: str, times: int = 1) -> None:
        self.faults.setdefault(route, []).extend([kind] * times)

    def requests(self, route: str) -> list[Logged]:
        return [r for r in self.log if r.path.startswith(route)]

    def _fault(self, path: str) -> str | None:
        with self._lock:
            for route, kinds in self.faults.items():
                if path.startswith(route) and kinds:
                    return kinds.pop(0)
        return None


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:16] + '"'


class _Handler(BaseHTTPRequestHandler):
    app: FeedServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              length: int | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        if length is not None:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)
            self.wfile.flush()

    def do_GET(self) -> None:
        self._handle(b"")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self._handle(self.rfile.read(length))

    def _handle(self, body: bytes) -> None:
        at = time.monotonic()
        raw = self.path
        proxied = None
        if raw.startswith(("http://", "https://")):  # a proxy request carries the absolute URI
            parts = urllib.parse.urlsplit(raw)
            proxied, raw = parts.netloc, parts.path + (f"?{parts.query}" if parts.query else "")
        parts = urllib.parse.urlsplit(raw)
        query = dict(urllib.parse.parse_qsl(parts.query))
        headers = {k.lower(): v for k, v in self.headers.items()}  # HTTP header names are case-insensitive
        entry = Logged(at, self.command, parts.path, query, headers, body, proxied)
        self.app.log.append(entry)
        fault = self.app._fault(parts.path)  # pylint: disable=protected-access
        if fault in ("500", "403", "503"):
            return self._send(int(fault), b"error")
        if fault == "429":
            return self._send(429, b"slow down", {"Retry-After": self.app.retry_after})
        if fault == "hang":
            self.app._stop.wait(10)  # pylint: disable=protected-access
            return None
        try:
            status, out, headers = self._route(parts.path, query, body, fault)
        except _Answer as ans:
            status, out, headers = ans.status, ans.body, {}
        if fault == "truncated":
            return self._send(status, out[: len(out) // 2], headers, length=len(out))
        if fault == "invalid_json":
            out = out[: len(out) // 2] + b"}}}"
        return self._send(status, out, headers)

    def _conditional(self, body: bytes, content_type: str) -> tuple[int, bytes, dict[str, str]]:
        tag = _etag(body)
        headers = {"ETag": tag, "Last-Modified": self.app.data.last_modified, "Content-Type": content_type}
        if self.headers.get("If-None-Match") == tag or (
                self.headers.get("If-None-Match") is None
                and self.headers.get("If-Modified-Since") == self.app.data.last_modified):
            return 304, b"", headers
        return 200, body, headers

    def _route(self, path: str, query: dict[str, str], body: bytes,
               fault: str | None) -> tuple[int, bytes, dict[str, str]]:
        d = self.app.data
        if path == "/kev.json":
            return self._conditional(json.dumps(d.kev).encode(), "application/json")
        if path == "/epss_scores-current.csv.gz":
            return self._conditional(gzip.compress(epss_csv(d.epss), mtime=0), "application/gzip")
        if path == "/rest/json/cves/2.0":
            return self._nvd(query, fault)
        if path.startswith("/vulnrichment/"):
            cve = path.rsplit("/", 1)[-1].removesuffix(".json")
            if cve not in d.vulnrichment:
                raise _Answer(404, b"404: Not Found")
            return self._conditional(json.dumps(d.vulnrichment[cve]).encode(), "text/plain")
        if path == "/v1/querybatch":
            return self._osv_batch(body)
        if path.startswith("/v1/vulns/"):
            vid = urllib.parse.unquote(path.rsplit("/", 1)[-1])
            if vid not in d.osv:
                raise _Answer(404, b'{"code":5,"message":"Bug not found."}')
            return 200, json.dumps(d.osv[vid]).encode(), {"Content-Type": "application/json"}
        if path.startswith("/csaf/"):
            return self._csaf(path)
        if path.startswith("/hook/") and self.command == "POST":
            return 200, b"ok", {"Content-Type": "text/plain"}
        raise _Answer(404, b"not found")

    def _nvd(self, query: dict[str, str], _fault: str | None) -> tuple[int, bytes, dict[str, str]]:
        d = self.app.data
        if d.nvd_api_key is not None and self.headers.get("apiKey") != d.nvd_api_key:
            raise _Answer(403, b"")
        start, end = query.get("lastModStartDate"), query.get("lastModEndDate")
        if (start is None) != (end is None):
            raise _Answer(404, b"")  # NVD: both dates or neither
        records = d.nvd
        if start is not None and end is not None:
            lo, hi = datetime.fromisoformat(start), datetime.fromisoformat(end)
            if hi - lo > timedelta(days=120):
                raise _Answer(404, b"")  # NVD: "The maximum allowable range ... is 120 consecutive days"
            records = [r for r in records
                       if lo <= datetime.fromisoformat(r["cve"]["lastModified"]).replace(tzinfo=UTC) <= hi]
        per_page = int(query.get("resultsPerPage", 2000))
        index = int(query.get("startIndex", 0))
        if per_page > 2000:
            raise _Answer(404, b"")
        page = records[index:index + per_page]
        total = len(records) + (1 if d.nvd_totals_change and index > 0 else 0)
        doc = {"resultsPerPage": len(page), "startIndex": index, "totalResults": total, "format": "NVD_CVE",
               "version": "2.0", "timestamp": "2026-11-24T08:00:00.000", "vulnerabilities": page}
        return 200, json.dumps(doc).encode(), {"Content-Type": "application/json"}

    def _osv_batch(self, body: bytes) -> tuple[int, bytes, dict[str, str]]:
        d = self.app.data
        queries = json.loads(body)["queries"]
        results = []
        for q in queries:
            pkg = q["package"]
            key = pkg["purl"] if "purl" in pkg else f"{pkg['ecosystem']}/{pkg['name']}@{q['version']}"
            ids = d.osv_by_purl.get(key, [])
            start = int(q.get("page_token") or 0)
            chunk = ids[start:start + d.osv_page]
            res: dict[str, Any] = {"vulns": [{"id": i, "modified": d.osv[i]["modified"]} for i in chunk]} \
                if chunk else {}
            if start + d.osv_page < len(ids):
                res["next_page_token"] = str(start + d.osv_page)
            results.append(res)
        return 200, json.dumps({"results": results}).encode(), {"Content-Type": "application/json"}

    def _csaf(self, path: str) -> tuple[int, bytes, dict[str, str]]:
        d = self.app.data
        base = self.app.url + "/csaf"
        if path == "/csaf/provider-metadata.json":
            dist = ({"rolie": {"feeds": [{"summary": "TLP:WHITE", "tlp_label": "WHITE",
                                          "url": f"{base}/feed-tlp-white.json"},
                                         {"summary": "TLP:AMBER", "tlp_label": "AMBER",
                                          "url": f"{base}/feed-tlp-amber.json"}]}}
                    if d.csaf_mode == "rolie" else {"directory_url": f"{base}/dir/"})
            meta = {"canonical_url": f"{base}/provider-metadata.json", "distributions": [dist],
                    "last_updated": "2026-11-02T00:00:00Z", "list_on_CSAF_aggregators": True,
                    "metadata_version": "2.0", "mirror_on_CSAF_aggregators": True,
                    "publisher": {"category": "vendor", "name": "Example", "namespace": "https://example.com"},
                    "role": "csaf_provider"}
            return 200, json.dumps(meta).encode(), {"Content-Type": "application/json"}
        if path == "/csaf/feed-tlp-white.json":
            entries = [{"id": name, "title": name, "updated": "2026-11-02T00:00:00Z",
                        "link": [{"rel": "self", "href": f"{base}/docs/{name}"},
                                 {"rel": "hash", "href": f"{base}/docs/{name}.{d.csaf_hash}"}],
                        "content": {"type": "application/json", "src": f"{base}/docs/{name}"},
                        "format": {"schema": "https://docs.oasis-open.org/csaf/csaf/v2.0/csaf_json_schema.json",
                                   "version": "2.0"}} for name in sorted(d.csaf)]
            feed = {"feed": {"id": "example-tlp-white", "title": "Example", "updated": "2026-11-02T00:00:00Z",
                             "link": [{"rel": "self", "href": f"{base}/feed-tlp-white.json"}], "entry": entries}}
            return 200, json.dumps(feed).encode(), {"Content-Type": "application/json"}
        if path == "/csaf/dir/changes.csv":
            text = "".join(f'"2026/{name}","2026-11-02T00:00:00Z"\n' for name in sorted(d.csaf))
            return 200, text.encode(), {"Content-Type": "text/csv"}
        name = path.rsplit("/", 1)[-1]
        for suffix in (".sha256", ".sha512"):
            if name.endswith(suffix):
                doc = name.removesuffix(suffix)
                if doc not in d.csaf or suffix != f".{d.csaf_hash}":
                    raise _Answer(404, b"")
                digest = hashlib.new(suffix[1:], json.dumps(d.csaf[doc]).encode()).hexdigest()
                if doc in d.csaf_bad_hash:
                    digest = "0" * len(digest)
                return 200, f"{digest}  {doc}\n".encode(), {"Content-Type": "text/plain"}
        if name in d.csaf:
            return 200, json.dumps(d.csaf[name]).encode(), {"Content-Type": "application/json"}
        raise _Answer(404, b"")


class _Answer(Exception):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
