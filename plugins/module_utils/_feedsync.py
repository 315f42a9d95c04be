# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Keep the local feed cache current from the public sources (controller side, stdlib ``urllib`` only).

Feeds, in the order they sync (vulnrichment reads the KEV just synced):

``kev``          CISA KEV catalog JSON -> ``kev.json`` (conditional GET)
``epss``         FIRST EPSS daily gzip CSV -> ``epss.csv`` decompressed (conditional GET)
``nvd``          NVD CVE API 2.0, incremental by ``lastModStartDate``/``lastModEndDate`` windows of at most
                 120 days from the cursor, ``startIndex``/``resultsPerPage`` pages, rate limited (5 requests per
                 rolling 30 s, 50 with an API key), merged by CVE id -> ``nvd.json``
``vulnrichment`` CISA vulnrichment CVE 5 records for the KEV CVEs, the fleet's exposure and any extra CVEs
                 -> ``vulnrichment.json`` (a list; per-record ETags)
``osv``          OSV ``POST /v1/querybatch`` for the purls of the given CycloneDX SBOMs (``next_page_token``
                 followed), then ``GET /v1/vulns/{id}`` -> ``osv.json`` (``{"vulns": [...]}``)
``csaf``         CSAF 2.0 providers from their ``provider-metadata.json`` (ROLIE feeds or directory
                 ``changes.csv``), each document's published sha256/sha512 checked -> ``csaf/<host>/<name>.json``

Nothing is half-written: a feed is fully fetched, parsed with :func:`_feeds.load_feed` and validated in a
temporary file beside its target before ``os.replace``; ``state.json`` is replaced after the files it
describes. Any failure keeps the previous copy, records ``last_error`` and marks the run failed, while the
other feeds still sync. See docs/feeds.md for the cache layout, the mirror layout and the defaults.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import hashlib
import http.client
import io
import json
import os
import re
import socket
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from types import MappingProxyType
from typing import Any

from ansible_collections.exchangeops.patching.plugins.module_utils import _feeds, _safe_io, _sbom
from ansible_collections.exchangeops.patching.plugins.module_utils._errors import InputError

FEEDS = ("kev", "epss", "nvd", "vulnrichment", "osv", "csaf")

DEFAULT_URLS = MappingProxyType({
    "kev": "https://www.cisa.gov/sites/default/files/feeds/known_exploited_vulnerabilities.json",
    # FIRST's published location (302 to the dated file epss_scores-YYYY-MM-DD.csv.gz)
    "epss": "https://epss.empiricalsecurity.com/epss_scores-current.csv.gz",
    "nvd": "https://services.nvd.nist.gov/rest/json/cves/2.0",
    "vulnrichment": "https://raw.githubusercontent.com/cisagov/vulnrichment/develop",
    "osv": "https://api.osv.dev",
})

FILES = MappingProxyType({
    "kev": "kev.json", "epss": "epss.csv", "nvd": "nvd.json", "vulnrichment": "vulnrichment.json", "osv": "osv.json",
})
STATE_FILE = "state.json"
EXPOSURE_FILE = "exposure.json"
STATE_SCHEMA = 1

# NVD (https://nvd.nist.gov/developers/start-here, .../vulnerabilities): date ranges at most 120 consecutive
# days, at most 2000 results a page, 5 requests per rolling 30 s without a key and 50 with one.
NVD_MAX_WINDOW = timedelta(days=120)
NVD_PAGE_SIZE = 2000
NVD_RATE_WINDOW_S = 30.0
NVD_LIMIT_NO_KEY = 5
NVD_LIMIT_WITH_KEY = 50
OSV_BATCH = 1000  # the querybatch API's limit of queries per request
# Distribution packages are asked by ecosystem, name and version, not by purl: the API answers nothing for
# pkg:deb/ubuntu purls with a version and ignores the distro qualifier (google/osv.dev#2842, #3126). The
# records come back for every release of the distribution; exposure matches the node's own release.
_OSV_DISTROS = MappingProxyType({("deb", "debian"): "Debian", ("deb", "ubuntu"): "Ubuntu", ("apk", "alpine"): "Alpine"})


def osv_query(purl: str) -> dict[str, Any]:
    """The querybatch query for one SBOM purl: ``{"package": {"purl"}}``, or by ecosystem for a distro package."""
    if _sbom.HAS_PACKAGEURL:
        try:
            p = _sbom.parse_purl(purl)
        except _sbom.SbomError:
            p = None
        ecosystem = _OSV_DISTROS.get((p.type, (p.namespace or "").lower())) if p is not None else None
        if ecosystem and p.version:
            return {"package": {"name": p.name, "ecosystem": ecosystem}, "version": p.version}
    return {"package": {"purl": purl}}


OSV_MAX_PAGES = 1000

MAX_AGE_S = 48 * 3600.0  # warn: any feed older than this
KEV_MAX_AGE_S = 72 * 3600.0  # refuse to plan: a stale KEV hides active exploitation
MAX_BODY = 2 * 1024 * _safe_io.MiB  # one HTTP answer, also once decompressed (a full NVD page is ~10 MiB)
MAX_CACHE_FILE = 4 * 1024 * _safe_io.MiB  # the merged nvd.json of the whole NVD is the largest
MAX_SMALL_FILE = 64 * _safe_io.MiB  # exposure.json, SBOMs, state.json
RETRY_STATUSES = (403, 429, 503)
CSAF_PUBLIC_TLP = ("WHITE", "CLEAR")
WEBHOOK_EVENT = "new_kev_affecting_nodes"

_CVE_RE = re.compile(r"CVE-([0-9]{4})-([0-9]{4,})\Z", re.ASCII)


class FeedSyncInput(InputError):
    """Bad settings for a sync (unknown feed, missing SBOM file, malformed URL): nothing was fetched."""


class FeedFailure(Exception):
    """One feed could not be refreshed; ``str()`` names why (the feed's name is added by the caller)."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: Any) -> datetime | None:
    """An ISO 8601 time (``Z`` or an offset; naive means UTC) or None."""
    if not isinstance(text, str) or not text.strip():
        return None
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def default_cache_dir(checkout: str) -> str:
    """``$EXCHPATCH_FEED_CACHE``, else ``<checkout>/.feeds-cache``."""
    return os.environ.get("EXCHPATCH_FEED_CACHE") or os.path.join(checkout, ".feeds-cache")


# --------------------------------------------------------------------------------------------------------------
# settings


@dataclass
class SyncOptions:
    cache_dir: str
    only: tuple[str, ...] = FEEDS
    urls: dict[str, str] = field(default_factory=dict)  # per-feed override of DEFAULT_URLS
    csaf_providers: list[str] = field(default_factory=list)  # provider-metadata.json URLs
    sboms: list[str] = field(default_factory=list)  # CycloneDX JSON files (OSV queries their purls)
    mirror: str | None = None  # read every feed from this folder instead of the network
    nvd_api_key: str | None = None
    nvd_since: str | None = None  # first NVD sync: windows from this date instead of the whole NVD
    vulnrichment_cves: list[str] = field(default_factory=list)
    proxy: str | None = None  # None: the environment's http(s)_proxy; "": direct
    webhook_url: str | None = None
    timeout: float = 60.0
    rate_window: float = NVD_RATE_WINDOW_S  # seconds; tests scale it down
    max_retries: int = 4
    backoff: float = 6.0  # first wait after a 403/429/503 without Retry-After (NVD recommends 6 s)
    max_retry_after: float = 600.0
    nvd_page_size: int = NVD_PAGE_SIZE
    check: bool = False
    user_agent: str = "exchangeops.patching-feed-sync/1"
    now: Callable[[], datetime] = utcnow
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic


def _bad(what: str, message: str, fix: str) -> FeedSyncInput:
    return FeedSyncInput(what, None, message, fix)


def _check_url(url: Any, what: str) -> str:
    parts = urllib.parse.urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise _bad(what, f"{url!r} is not an http(s) URL", "give a URL such as https://host/path")
    return url.rstrip("/") if what.endswith(("vulnrichment", "osv")) else url


def validate(opts: SyncOptions) -> dict[str, list[str]]:
    """Check the settings before anything is fetched; returns ``{"purls": [...]}`` from the SBOMs."""
    unknown = [f for f in opts.only if f not in FEEDS]
    if unknown or not opts.only:
        raise _bad("only", f"unknown feed(s) {', '.join(unknown) or '(none given)'}",
                   f"choose from {', '.join(FEEDS)}")
    for name, url in opts.urls.items():
        if name not in DEFAULT_URLS:
            raise _bad("urls", f"no URL setting for feed {name!r}", f"set one of {', '.join(DEFAULT_URLS)}")
        opts.urls[name] = _check_url(url, f"urls.{name}")
    opts.csaf_providers = [_check_url(u, "csaf_providers") for u in opts.csaf_providers]
    if opts.proxy:
        _check_url(opts.proxy, "proxy")
    if opts.webhook_url:
        parts = urllib.parse.urlsplit(opts.webhook_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise _bad("webhook_url", "is not an http(s) URL (value not shown: it is a secret)",
                       "give the chatops service's incoming-webhook URL")
    if opts.mirror is not None and not os.path.isdir(opts.mirror):
        raise _bad(opts.mirror, "mirror folder not found", "give the folder holding the mirrored feeds")
    if opts.nvd_since is not None and parse_time(opts.nvd_since) is None:
        raise _bad("nvd_since", f"{opts.nvd_since!r} is not an ISO 8601 time", "e.g. 2026-01-01T00:00:00Z")
    for cve in opts.vulnrichment_cves:
        if not _CVE_RE.match(cve):
            raise _bad("vulnrichment_cves", f"{cve!r} is not a CVE ID", "write CVE-YYYY-NNNN")
    if not 1 <= opts.nvd_page_size <= NVD_PAGE_SIZE:
        raise _bad("nvd_page_size", f"{opts.nvd_page_size} is outside 1..{NVD_PAGE_SIZE}", "NVD's maximum is 2000")
    if opts.timeout <= 0 or opts.rate_window < 0 or opts.max_retries < 0:
        raise _bad("timeout", "timeout must be positive, rate_window and max_retries not negative",
                   "correct the setting")
    purls: list[str] = []
    for path in opts.sboms:
        purls.extend(sbom_purls(path))
    return {"purls": sorted(set(purls))}


def sbom_purls(path: str) -> list[str]:
    """The purls of a CycloneDX JSON SBOM: ``metadata.component`` and every ``components[]``, nested too."""
    data = _safe_io.read_input(path, MAX_SMALL_FILE, what="SBOM", error=FeedSyncInput)
    doc = _safe_io.load_json(path, _safe_io.decode_utf8(path, data, what="SBOM", error=FeedSyncInput),
                             what="SBOM", error=FeedSyncInput)
    if not isinstance(doc, dict) or doc.get("bomFormat") != "CycloneDX":
        raise FeedSyncInput(path, None, "is not a CycloneDX JSON SBOM (no \"bomFormat\": \"CycloneDX\")",
                            "give the release's sbom.cdx.json")
    out: list[str] = []
    stack: list[Any] = [doc.get("components") or []]
    meta = doc.get("metadata")
    if isinstance(meta, dict) and isinstance(meta.get("component"), dict):
        stack.append([meta["component"]])
    while stack:
        items = stack.pop()
        if not isinstance(items, list):
            raise FeedSyncInput(path, None, "components is not a list", "fix the SBOM (CycloneDX 1.4+)")
        for comp in items:
            if not isinstance(comp, dict):
                continue
            purl = comp.get("purl")
            if isinstance(purl, str) and purl.startswith("pkg:") and "@" in purl and _safe_io.non_ascii(purl) is None:
                out.append(purl)
            if comp.get("components"):
                stack.append(comp["components"])
    return out


# --------------------------------------------------------------------------------------------------------------
# HTTP


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    url: str


class RateLimiter:
    """At most ``limit`` requests in any rolling ``window`` seconds.

    A request counts from the moment its answer arrived, so the server, which saw it earlier, never
    counts more than ``limit`` in its own window.
    """

    def __init__(self, limit: int, window: float, clock: Callable[[], float], sleep: Callable[[float], None]):
        self.limit = limit
        self.window = window
        self._clock = clock
        self._sleep = sleep
        self._done: deque[float] = deque()

    def acquire(self) -> None:
        while len(self._done) >= self.limit:
            wait = self._done[0] + self.window - self._clock()
            if wait > 0:
                self._sleep(wait)
            else:
                self._done.popleft()

    def release(self) -> None:
        self._done.append(self._clock())


def build_opener(opts: SyncOptions) -> urllib.request.OpenerDirector:
    """urllib with the proxy setting: None takes the environment's http(s)_proxy, "" goes direct."""
    if opts.proxy is None:
        proxy = urllib.request.ProxyHandler()
    elif opts.proxy == "":
        proxy = urllib.request.ProxyHandler({})
    else:
        proxy = urllib.request.ProxyHandler({"http": opts.proxy, "https": opts.proxy})
    return urllib.request.build_opener(proxy)


class Http:
    """GET/POST with retries on 403/429/503 (``Retry-After`` honoured), a size cap, and a request count."""

    def __init__(self, opts: SyncOptions) -> None:
        self.opts = opts
        self._opener = build_opener(opts)
        self.requests = 0

    def _retry_wait(self, err: urllib.error.HTTPError, attempt: int) -> float:
        header = err.headers.get("Retry-After") if err.headers else None
        if header:
            text = header.strip()
            if text.isdigit():
                return float(text)
            try:
                when = parsedate_to_datetime(text)
            except (TypeError, ValueError):
                when = None
            if when is not None:
                return max(0.0, (when - self.opts.now()).total_seconds())
        return self.opts.backoff * (2 ** attempt)

    def fetch(self, url: str, *, headers: dict[str, str] | None = None, secret: dict[str, str] | None = None,
              data: bytes | None = None, limiter: RateLimiter | None = None, allow: Iterable[int] = (),
              max_size: int = MAX_BODY) -> Response:
        """One answer; raises :class:`FeedFailure` for an HTTP error (unless in ``allow``), a timeout,
        a truncated or oversized body. ``secret`` headers are never forwarded across a redirect."""
        attempt = 0
        while True:
            req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
            req.add_header("User-Agent", self.opts.user_agent)
            for key, value in (headers or {}).items():
                req.add_header(key, value)
            for key, value in (secret or {}).items():
                req.add_unredirected_header(key, value)  # urllib drops these on a redirect
            if data is not None:
                req.add_header("Content-Type", "application/json")
            if limiter is not None:
                limiter.acquire()
            self.requests += 1
            try:
                try:
                    with self._opener.open(req, timeout=self.opts.timeout) as resp:
                        body = _read_capped(resp, max_size)
                        return Response(resp.status, {k.lower(): v for k, v in resp.headers.items()}, body,
                                        resp.geturl())
                finally:
                    if limiter is not None:
                        limiter.release()
            except urllib.error.HTTPError as err:
                if err.code in allow:
                    return Response(err.code, {k.lower(): v for k, v in (err.headers or {}).items()}, b"", url)
                if err.code in RETRY_STATUSES and attempt < self.opts.max_retries:
                    wait = self._retry_wait(err, attempt)
                    if wait > self.opts.max_retry_after:
                        raise FeedFailure(f"HTTP {err.code} from {_show(url)} asks to retry after {wait:.0f} s, "
                                          f"more than the {self.opts.max_retry_after:.0f} s limit") from None
                    attempt += 1
                    self.opts.sleep(wait)
                    continue
                tries = f" after {attempt + 1} attempts" if attempt else ""
                raise FeedFailure(f"HTTP {err.code} {err.reason} from {_show(url)}{tries}") from None
            except http.client.IncompleteRead as err:
                raise FeedFailure(f"truncated answer from {_show(url)} ({len(err.partial)} bytes, "
                                  f"{err.expected} more expected)") from None
            except TimeoutError:
                raise FeedFailure(f"no answer from {_show(url)} within {self.opts.timeout:g} s (timeout)") from None
            except urllib.error.URLError as err:
                reason = err.reason
                if isinstance(reason, (socket.timeout, TimeoutError)):
                    raise FeedFailure(f"no answer from {_show(url)} within {self.opts.timeout:g} s "
                                      "(timeout)") from None
                raise FeedFailure(f"cannot reach {_show(url)}: {reason}") from None
            except (http.client.HTTPException, ConnectionError, OSError) as err:
                raise FeedFailure(f"connection to {_show(url)} failed: {err!r}") from None


def _read_capped(resp: Any, max_size: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = resp.read(_safe_io.CHUNK)
        if not chunk:
            break
        total += len(chunk)
        if total > max_size:
            raise FeedFailure(f"answer larger than {_safe_io.human_size(max_size)}")
        chunks.append(chunk)
    expected = resp.headers.get("Content-Length")
    if expected is not None and expected.isdigit() and int(expected) != total:
        raise http.client.IncompleteRead(b"".join(chunks), int(expected) - total)
    return b"".join(chunks)


def _show(url: str) -> str:
    """The URL without its query string or credentials (an API key never travels in one, but be safe)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def _json(body: bytes, where: str) -> Any:
    try:
        return _safe_io.load_json(where, _safe_io.decode_utf8(where, body, what="answer", error=InputError),
                                  what="answer", error=InputError)
    except InputError as err:
        raise FeedFailure(f"invalid JSON from {where}: {err.message}") from None


# --------------------------------------------------------------------------------------------------------------
# cache files and state


class Staging:
    """Files a feed wants to write: validated in temporary files beside their targets, then all replaced."""

    def __init__(self, cache_dir: str) -> None:
        self.cache_dir = cache_dir
        self._staged: list[tuple[str, str]] = []  # (temp path, final relative path)

    def add(self, rel: str, data: bytes, expect: str | None) -> int:
        """Stage ``data`` for ``rel``; when ``expect`` is a feed format, parse it with _feeds.load_feed first.
        Returns the record count (0 when not parsed)."""
        final = os.path.join(self.cache_dir, rel)
        folder = os.path.dirname(final)
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".part")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        self._staged.append((tmp, rel))
        if expect is None:
            return 0
        try:
            fmt, records = _feeds.load_feed(tmp, MAX_CACHE_FILE)
        except _feeds.FeedError as err:
            where = f" ({err.record})" if err.record else ""
            raise FeedFailure(f"the downloaded {rel} is not a valid feed{where}: {err.message}") from None
        if fmt != expect:
            raise FeedFailure(f"the downloaded {rel} is {fmt} data, not {expect}")
        return len(records)

    def commit(self) -> list[str]:
        for tmp, rel in self._staged:
            os.replace(tmp, os.path.join(self.cache_dir, rel))
        done = [rel for _tmp, rel in self._staged]
        self._staged = []
        return done

    def discard(self) -> None:
        for tmp, _rel in self._staged:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self._staged = []


def _blank_feed_state() -> dict[str, Any]:
    return {"files": [], "synced_at": None, "records": 0, "source": None, "etag": None, "last_modified": None,
            "cursor": {}, "last_attempt_at": None, "last_error": None}


def load_state(cache_dir: str) -> dict[str, Any]:
    """``state.json`` (a fresh one when absent); a state file that cannot be read counts as absent."""
    path = os.path.join(cache_dir, STATE_FILE)
    doc: Any = None
    if os.path.exists(path):
        try:
            doc = _safe_io.load_json(path, _safe_io.read_regular(path, MAX_SMALL_FILE, what="state").decode("utf-8"),
                                     what="state")
        except (InputError, UnicodeDecodeError):
            doc = None
    if not isinstance(doc, dict) or not isinstance(doc.get("feeds"), dict):
        doc = {"schema": STATE_SCHEMA, "feeds": {}}
    for name in list(doc["feeds"]):
        if not isinstance(doc["feeds"][name], dict):
            doc["feeds"][name] = _blank_feed_state()
        else:
            doc["feeds"][name] = {**_blank_feed_state(), **doc["feeds"][name]}
    return doc


def save_state(cache_dir: str, state: dict[str, Any]) -> None:
    _safe_io.write_atomic(os.path.join(cache_dir, STATE_FILE),
                          (json.dumps(state, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def _read_cache_json(cache_dir: str, rel: str, max_size: int = MAX_CACHE_FILE, strict: bool = True) -> Any:
    """A cached JSON file, None when absent or unreadable; ``strict=False`` for files this module wrote and
    validates again before use (the plain parser is several times faster on a 300,000-record nvd.json)."""
    path = os.path.join(cache_dir, rel)
    if not os.path.isfile(path):
        return None
    try:
        data = _safe_io.read_regular(path, max_size, what="cache file")
        if not strict:
            return json.loads(data)
        return _safe_io.load_json(path, data.decode("utf-8"), what="cache file")
    except (InputError, UnicodeDecodeError, ValueError):
        return None


def kev_ids(cache_dir: str) -> set[str] | None:
    """The cveIDs of the cached KEV catalog, None when there is none."""
    doc = _read_cache_json(cache_dir, FILES["kev"])
    if not isinstance(doc, dict) or not isinstance(doc.get("vulnerabilities"), list):
        return None
    return {v["cveID"] for v in doc["vulnerabilities"] if isinstance(v, dict) and isinstance(v.get("cveID"), str)}


def exposure(cache_dir: str) -> dict[str, list[str]] | None:
    """``exposure.json``'s ``{cve: nodes}`` (EXPOSURE writes it), None when absent or unreadable."""
    doc = _read_cache_json(cache_dir, EXPOSURE_FILE, MAX_SMALL_FILE)
    if not isinstance(doc, dict) or not isinstance(doc.get("cves"), dict):
        return None
    out: dict[str, list[str]] = {}
    for cve, info in doc["cves"].items():
        nodes = info.get("nodes") if isinstance(info, dict) else None
        out[cve] = sorted(n for n in nodes if isinstance(n, str)) if isinstance(nodes, list) else []
    return out


# --------------------------------------------------------------------------------------------------------------
# feeds


@dataclass
class Outcome:
    status: str  # updated | not_modified | skipped | would_sync
    records: int | None = None
    files: list[str] | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    etag: str | None = None
    last_modified: str | None = None
    cursor: dict[str, Any] | None = None


class Context:
    def __init__(self, opts: SyncOptions, purls: list[str], state: dict[str, Any]) -> None:
        self.opts = opts
        self.purls = purls
        self.state = state
        self.http = Http(opts)
        self.source_prefix = f"mirror:{opts.mirror}" if opts.mirror else None

    def url(self, feed: str) -> str:
        return self.opts.urls.get(feed) or DEFAULT_URLS[feed]

    def source(self, feed: str) -> str:
        return self.source_prefix or (", ".join(self.opts.csaf_providers) if feed == "csaf" else self.url(feed))

    def mirror_path(self, *names: str) -> str | None:
        """The first of ``names`` that exists in the mirror folder."""
        for name in names:
            path = os.path.join(self.opts.mirror or "", name)
            if os.path.isfile(path):
                return path
        return None


def _mirror_bytes(path: str) -> bytes:
    try:
        return _safe_io.read_regular(path, MAX_CACHE_FILE, what="mirrored feed")
    except InputError as err:
        raise FeedFailure(f"{path}: {err.message}") from None


def _conditional(fs: dict[str, Any], cache_dir: str) -> dict[str, str]:
    if not all(os.path.isfile(os.path.join(cache_dir, f)) for f in fs.get("files") or ["-"]):
        return {}  # nothing cached to fall back on: ask for the whole answer
    headers = {}
    if fs.get("etag"):
        headers["If-None-Match"] = fs["etag"]
    if fs.get("last_modified"):
        headers["If-Modified-Since"] = fs["last_modified"]
    return headers


def _single_file(ctx: Context, fs: dict[str, Any], feed: str, mirror_names: tuple[str, ...],
                 expect: str) -> Outcome:
    """KEV and EPSS: one file, conditional GET, gzip (EPSS) decompressed before validation."""
    rel = FILES[feed]
    if ctx.opts.check:
        return Outcome("would_sync", detail={"would_request": [ctx.source(feed)],
                                             "conditional": bool(_conditional(fs, ctx.opts.cache_dir))})
    etag = last_modified = None
    if ctx.opts.mirror:
        path = ctx.mirror_path(*mirror_names)
        if path is None:
            raise FeedFailure(f"the mirror has none of {', '.join(mirror_names)}")
        body = _mirror_bytes(path)
    else:
        resp = ctx.http.fetch(ctx.url(feed), headers=_conditional(fs, ctx.opts.cache_dir), allow=(304,))
        if resp.status == 304:
            return Outcome("not_modified", etag=fs.get("etag"), last_modified=fs.get("last_modified"))
        body, etag, last_modified = resp.body, resp.headers.get("etag"), resp.headers.get("last-modified")
    if body[:2] == b"\x1f\x8b":
        try:
            body = _safe_io.gunzip_bounded(feed, body, MAX_BODY, what="feed", error=InputError)
        except InputError as err:
            raise FeedFailure(err.message) from None
    current = os.path.join(ctx.opts.cache_dir, rel)
    stage = Staging(ctx.opts.cache_dir)
    try:
        records = stage.add(rel, body, expect)
        if os.path.isfile(current) and _same_file(current, body):
            stage.discard()
            return Outcome("not_modified", records, [rel], etag=etag, last_modified=last_modified)
        files = stage.commit()
    finally:
        stage.discard()
    return Outcome("updated", records, files, etag=etag, last_modified=last_modified)


def _same_file(path: str, body: bytes) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(len(body) + 1) == body
    except OSError:
        return False


def sync_kev(ctx: Context, fs: dict[str, Any]) -> Outcome:
    return _single_file(ctx, fs, "kev", ("kev.json", "known_exploited_vulnerabilities.json"), "kev")


def sync_epss(ctx: Context, fs: dict[str, Any]) -> Outcome:
    return _single_file(ctx, fs, "epss", ("epss_scores-current.csv.gz", "epss.csv.gz", "epss.csv"), "epss")


def nvd_time(when: datetime) -> str:
    """NVD's extended ISO 8601 form, ``2026-11-24T09:00:00.000+00:00``."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}+00:00"


def nvd_windows(start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    """Consecutive ``[start, end]`` windows of at most 120 days (NVD's limit for date ranges)."""
    out = []
    while start < end:
        stop = min(start + NVD_MAX_WINDOW, end)
        out.append((start, stop))
        start = stop
    return out or [(end, end)]


def _nvd_page(doc: Any, where: str, start_index: int) -> tuple[int, list[dict[str, Any]], str | None]:
    if not isinstance(doc, dict):
        raise FeedFailure(f"{where}: the answer is not a JSON object")
    if doc.get("format") not in (None, "NVD_CVE"):
        raise FeedFailure(f"{where}: format is {doc.get('format')!r}, not NVD_CVE")
    total, index, items = doc.get("totalResults"), doc.get("startIndex"), doc.get("vulnerabilities")
    if not isinstance(total, int) or isinstance(total, bool) or total < 0:
        raise FeedFailure(f"{where}: totalResults is missing or not a count")
    if index != start_index:
        raise FeedFailure(f"{where}: startIndex is {index!r}, {start_index} was asked for")
    if not isinstance(items, list):
        raise FeedFailure(f"{where}: vulnerabilities is not a list")
    per_page = doc.get("resultsPerPage")
    if not isinstance(per_page, int) or per_page != len(items):
        raise FeedFailure(f"{where}: resultsPerPage is {per_page!r} but the page holds {len(items)} records")
    for i, item in enumerate(items):
        cve = item.get("cve") if isinstance(item, dict) else None
        if not isinstance(cve, dict) or not isinstance(cve.get("id"), str):
            raise FeedFailure(f"{where}: vulnerabilities[{i}] has no cve.id")
    stamp = doc.get("timestamp")
    return total, items, stamp if isinstance(stamp, str) else None


def sync_nvd(ctx: Context, fs: dict[str, Any]) -> Outcome:
    opts = ctx.opts
    now = opts.now().astimezone(UTC)
    cursor = parse_time((fs.get("cursor") or {}).get("lastModEndDate"))
    have_file = os.path.isfile(os.path.join(opts.cache_dir, FILES["nvd"]))
    if cursor is None or not have_file:
        cursor = parse_time(opts.nvd_since)
    windows: list[tuple[datetime, datetime] | None] = [None] if cursor is None else list(nvd_windows(cursor, now))
    if opts.check:
        plan = ["the whole NVD (no date filter)" if w is None else f"{nvd_time(w[0])} .. {nvd_time(w[1])}"
                for w in windows]
        return Outcome("would_sync", detail={"windows": plan, "source": ctx.source("nvd")})
    collected: dict[str, dict[str, Any]] = {}
    stamp = None
    pages = 0
    if opts.mirror:
        paths = sorted(os.path.join(opts.mirror, "nvd", n) for n in os.listdir(os.path.join(opts.mirror, "nvd"))
                       if n.endswith(".json")) if os.path.isdir(os.path.join(opts.mirror, "nvd")) else []
        single = ctx.mirror_path("nvd.json")
        paths += [single] if single else []
        if not paths:
            raise FeedFailure("the mirror has neither nvd/*.json pages nor nvd.json")
        for path in paths:
            doc = _json(_mirror_bytes(path), path)
            start = doc.get("startIndex", 0) if isinstance(doc, dict) else 0
            _total, items, page_stamp = _nvd_page(doc, path, start)
            for item in items:
                collected[item["cve"]["id"]] = item
            stamp = max(filter(None, (stamp, page_stamp)), default=None)
            pages += 1
        windows = []
        merge = True
    else:
        limiter = RateLimiter(NVD_LIMIT_WITH_KEY if opts.nvd_api_key else NVD_LIMIT_NO_KEY, opts.rate_window,
                              opts.clock, opts.sleep)
        secret = {"apiKey": opts.nvd_api_key} if opts.nvd_api_key else None
        for window in windows:
            start_index, total = 0, None
            while True:
                params: dict[str, Any] = {}
                if window is not None:
                    params["lastModStartDate"] = nvd_time(window[0])
                    params["lastModEndDate"] = nvd_time(window[1])
                params.update(resultsPerPage=opts.nvd_page_size, startIndex=start_index)
                url = ctx.url("nvd") + "?" + urllib.parse.urlencode(params)
                where = f"NVD page at startIndex {start_index}" + (
                    f" of window {nvd_time(window[0])} .. {nvd_time(window[1])}" if window else "")
                resp = ctx.http.fetch(url, secret=secret, limiter=limiter)
                page_total, items, page_stamp = _nvd_page(_json(resp.body, where), where, start_index)
                pages += 1
                if total is None:
                    total = page_total
                elif page_total != total:
                    raise FeedFailure(f"{where}: totalResults changed from {total} to {page_total} during "
                                      "pagination (NVD was updating these records); run the sync again")
                for item in items:
                    collected[item["cve"]["id"]] = item
                stamp = max(filter(None, (stamp, page_stamp)), default=None)
                start_index += len(items)
                if start_index >= total:
                    break
                if not items:
                    raise FeedFailure(f"{where}: empty page before totalResults {total} was reached")
        merge = windows != [None]
    new_cursor = dict(fs.get("cursor") or {})
    if windows:
        last = windows[-1]
        new_cursor["lastModEndDate"] = iso(last[1] if last is not None else now)
    new_cursor["pages"] = pages
    new_cursor["windows"] = len(windows)
    detail = {"changed": len(collected), "pages": pages, "windows": len(windows)}
    if merge and not collected and have_file and not opts.mirror:
        # nothing modified in the windows: the cached copy stands as it is, only the cursor moves
        return Outcome("not_modified", fs.get("records"), fs.get("files") or [FILES["nvd"]], cursor=new_cursor,
                       detail=detail)
    merged: dict[str, dict[str, Any]] = {}
    if merge:
        # our own file, validated when written (and the merged result is validated again below)
        old = _read_cache_json(opts.cache_dir, FILES["nvd"], strict=False)
        for item in (old.get("vulnerabilities") if isinstance(old, dict) else None) or []:
            if isinstance(item, dict) and isinstance(item.get("cve"), dict) and isinstance(item["cve"].get("id"), str):
                merged[item["cve"]["id"]] = item
    merged.update(collected)
    doc = {"resultsPerPage": len(merged), "startIndex": 0, "totalResults": len(merged), "format": "NVD_CVE",
           "version": "2.0", "timestamp": stamp or now.strftime("%Y-%m-%dT%H:%M:%S.000"),
           "vulnerabilities": list(merged.values())}
    stage = Staging(opts.cache_dir)
    try:
        records = stage.add(FILES["nvd"], json.dumps(doc, separators=(",", ":")).encode("utf-8"), "nvd")
        files = stage.commit()
    finally:
        stage.discard()
    return Outcome("updated", records, files, cursor=new_cursor, detail=detail)


def vulnrichment_path(cve: str) -> str:
    """``CVE-2024-6387`` -> ``2024/6xxx/CVE-2024-6387.json`` (the cisagov/vulnrichment layout)."""
    m = _CVE_RE.match(cve)
    if m is None:
        raise ValueError(cve)
    return f"{m.group(1)}/{int(m.group(2)) // 1000}xxx/{cve}.json"


def vulnrichment_cves(ctx: Context) -> list[str]:
    """The CVEs of interest: every KEV entry, the fleet's exposure (exposure.json) and any extra ones."""
    wanted = set(ctx.opts.vulnrichment_cves)
    wanted |= kev_ids(ctx.opts.cache_dir) or set()
    wanted |= set(exposure(ctx.opts.cache_dir) or {})
    return sorted(c for c in wanted if _CVE_RE.match(c))


def sync_vulnrichment(ctx: Context, fs: dict[str, Any]) -> Outcome:
    cves = vulnrichment_cves(ctx)
    if not cves:
        return Outcome("skipped", detail={"reason": "no CVE of interest yet (sync KEV, or write exposure.json)"})
    if ctx.opts.check:
        return Outcome("would_sync", detail={"cves": len(cves), "source": ctx.source("vulnrichment")})
    old = _read_cache_json(ctx.opts.cache_dir, FILES["vulnrichment"])
    by_id = {r["cveMetadata"]["cveId"]: r for r in old or [] if isinstance(r, dict)
             and isinstance(r.get("cveMetadata"), dict) and isinstance(r["cveMetadata"].get("cveId"), str)}
    etags: dict[str, str] = dict((fs.get("cursor") or {}).get("etags") or {})
    records: dict[str, Any] = {}
    fetched = 0
    for cve in cves:
        rel = vulnrichment_path(cve)
        if ctx.opts.mirror:
            path = ctx.mirror_path(os.path.join("vulnrichment", rel))
            if path is None:
                continue
            rec = _json(_mirror_bytes(path), path)
        else:
            headers = {"If-None-Match": etags[cve]} if cve in by_id and etags.get(cve) else {}
            resp = ctx.http.fetch(f"{ctx.url('vulnrichment')}/{rel}", headers=headers, allow=(304, 404))
            if resp.status == 404:
                etags.pop(cve, None)
                continue  # vulnrichment has no record for it
            if resp.status == 304:
                records[cve] = by_id[cve]
                continue
            rec = _json(resp.body, f"vulnrichment {rel}")
            if resp.headers.get("etag"):
                etags[cve] = resp.headers["etag"]
            fetched += 1
        meta = rec.get("cveMetadata") if isinstance(rec, dict) else None
        if not isinstance(meta, dict) or meta.get("cveId") != cve:
            raise FeedFailure(f"vulnrichment {rel}: not the CVE 5 record of {cve}")
        records[cve] = rec
    etags = {k: v for k, v in etags.items() if k in records}
    body = json.dumps([records[c] for c in sorted(records)], separators=(",", ":")).encode("utf-8")
    stage = Staging(ctx.opts.cache_dir)
    try:
        count = stage.add(FILES["vulnrichment"], body, "cve5" if records else None)
        files = stage.commit()
    finally:
        stage.discard()
    return Outcome("updated", count, files, cursor={"etags": etags},
                   detail={"cves": len(cves), "records": len(records), "fetched": fetched})


def sync_osv(ctx: Context, fs: dict[str, Any]) -> Outcome:
    if not ctx.purls and not ctx.opts.mirror:
        return Outcome("skipped", detail={"reason": "no SBOM given (--sbom FILE): no package to query"})
    if ctx.opts.check:
        return Outcome("would_sync", detail={"purls": len(ctx.purls), "source": ctx.source("osv")})
    records: dict[str, Any] = {}
    if ctx.opts.mirror:
        folder = os.path.join(ctx.opts.mirror, "osv")
        names = sorted(n for n in os.listdir(folder) if n.endswith(".json")) if os.path.isdir(folder) else []
        single = ctx.mirror_path("osv.json")
        paths = [os.path.join(folder, n) for n in names] + ([single] if single else [])
        if not paths:
            raise FeedFailure("the mirror has neither osv/*.json records nor osv.json")
        for path in paths:
            doc = _json(_mirror_bytes(path), path)
            items = doc.get("vulns") if isinstance(doc, dict) and "vulns" in doc else doc
            for rec in items if isinstance(items, list) else [items]:
                if not isinstance(rec, dict) or not isinstance(rec.get("id"), str):
                    raise FeedFailure(f"{path}: an OSV record without an id")
                records[rec["id"]] = rec
        queried = 0
    else:
        base = ctx.url("osv")
        wanted: dict[str, str | None] = {}
        pending: list[tuple[str, str | None]] = [(p, None) for p in ctx.purls]
        rounds = 0
        while pending:
            rounds += 1
            if rounds > OSV_MAX_PAGES:
                raise FeedFailure(f"querybatch still paginating after {OSV_MAX_PAGES} rounds")
            batch, pending = pending[:OSV_BATCH], pending[OSV_BATCH:]
            queries = [{**osv_query(p), **({"page_token": t} if t else {})} for p, t in batch]
            resp = ctx.http.fetch(f"{base}/v1/querybatch", data=json.dumps({"queries": queries}).encode("utf-8"))
            doc = _json(resp.body, "OSV querybatch")
            results = doc.get("results") if isinstance(doc, dict) else None
            if not isinstance(results, list) or len(results) != len(batch):
                raise FeedFailure(f"OSV querybatch answered {len(results) if isinstance(results, list) else 'no'} "
                                  f"results for {len(batch)} queries")
            for (purl, _token), result in zip(batch, results):
                vulns = result.get("vulns") if isinstance(result, dict) else None
                for v in vulns or []:
                    if not isinstance(v, dict) or not isinstance(v.get("id"), str):
                        raise FeedFailure(f"OSV querybatch: a result for {purl} has a vuln without an id")
                    wanted[v["id"]] = v.get("modified") if isinstance(v.get("modified"), str) else None
                token = result.get("next_page_token") if isinstance(result, dict) else None
                if token:
                    pending.append((purl, token))
        old = _read_cache_json(ctx.opts.cache_dir, FILES["osv"])
        cached = {r["id"]: r for r in (old.get("vulns") if isinstance(old, dict) else None) or []
                  if isinstance(r, dict) and isinstance(r.get("id"), str)}
        queried = 0
        for vid in sorted(wanted):
            prev = cached.get(vid)
            if prev is not None and wanted[vid] is not None and prev.get("modified") == wanted[vid]:
                records[vid] = prev
                continue
            resp = ctx.http.fetch(f"{base}/v1/vulns/{urllib.parse.quote(vid, safe='')}")
            rec = _json(resp.body, f"OSV vuln {vid}")
            if not isinstance(rec, dict) or rec.get("id") != vid:
                raise FeedFailure(f"OSV vuln {vid}: the answer is not that record")
            records[vid] = rec
            queried += 1
    body = json.dumps({"vulns": [records[k] for k in sorted(records)]}, separators=(",", ":")).encode("utf-8")
    stage = Staging(ctx.opts.cache_dir)
    try:
        count = stage.add(FILES["osv"], body, "osv")
        files = stage.commit()
    finally:
        stage.discard()
    return Outcome("updated", count, files, detail={"purls": len(ctx.purls), "vulns": len(records),
                                                    "fetched": queried})


_HASH_SUFFIXES = ((".sha512", "sha512"), (".sha256", "sha256"))


def _check_hash(body: bytes, hash_text: bytes, algo: str, where: str) -> None:
    published = hash_text.decode("ascii", "replace").strip().split()
    expected = published[0].lower() if published else ""
    actual = hashlib.new(algo, body).hexdigest()
    if expected != actual:
        raise FeedFailure(f"{where}: {algo} does not match the published one (expected {expected[:16]}..., "
                          f"got {actual[:16]}...); the document or its hash file was altered")


def _csaf_docs(ctx: Context, provider: str) -> list[tuple[str, str | None, str | None]]:
    """(document URL, updated, hash URL or None) for every public document the provider lists."""
    meta = _json(ctx.http.fetch(provider).body, f"CSAF provider metadata {_show(provider)}")
    if not isinstance(meta, dict) or not isinstance(meta.get("distributions", []), list):
        raise FeedFailure(f"{_show(provider)}: not a CSAF provider-metadata.json (no distributions list)")
    if str(meta.get("metadata_version", "")) not in ("2.0", "2.1"):
        raise FeedFailure(f"{_show(provider)}: metadata_version {meta.get('metadata_version')!r} is not 2.0")
    docs: list[tuple[str, str | None, str | None]] = []
    for dist in meta.get("distributions") or []:
        if not isinstance(dist, dict):
            continue
        rolie = dist.get("rolie")
        for feed in (rolie.get("feeds") if isinstance(rolie, dict) else None) or []:
            if not isinstance(feed, dict) or not isinstance(feed.get("url"), str):
                continue
            if str(feed.get("tlp_label", "WHITE")).upper() not in CSAF_PUBLIC_TLP:
                continue  # TLP:GREEN and above need the provider's access control
            url = urllib.parse.urljoin(provider, feed["url"])
            rolie_doc = _json(ctx.http.fetch(url).body, f"ROLIE feed {_show(url)}")
            entries = rolie_doc.get("feed", {}).get("entry") if isinstance(rolie_doc, dict) else None
            if not isinstance(entries, list):
                raise FeedFailure(f"ROLIE feed {_show(url)}: feed.entry is not a list")
            for entry in entries:
                if not isinstance(entry, dict):
                    continue
                links = [lk for lk in entry.get("link") or [] if isinstance(lk, dict)]
                content = entry.get("content") if isinstance(entry.get("content"), dict) else {}
                src = content.get("src") or next((lk.get("href") for lk in links if lk.get("rel") == "self"), None)
                if not isinstance(src, str):
                    continue
                hash_url = next((lk.get("href") for lk in links if lk.get("rel") == "hash"
                                 and str(lk.get("href", "")).endswith((".sha256", ".sha512"))), None)
                docs.append((urllib.parse.urljoin(url, src), entry.get("updated"),
                             urllib.parse.urljoin(url, hash_url) if hash_url else None))
        directory = dist.get("directory_url")
        if isinstance(directory, str):
            base = urllib.parse.urljoin(provider, directory.rstrip("/") + "/")
            changes = ctx.http.fetch(base + "changes.csv").body.decode("utf-8", "replace")
            for row in csv.reader(io.StringIO(changes)):
                if len(row) < 2 or not row[0].strip().endswith(".json"):
                    if row and "".join(row).strip():
                        raise FeedFailure(f"{_show(base)}changes.csv: line {row!r} is not \"path\",\"time\"")
                    continue
                docs.append((urllib.parse.urljoin(base, row[0].strip()), row[1].strip(), ""))  # "": probe hashes
    return docs


def sync_csaf(ctx: Context, fs: dict[str, Any]) -> Outcome:
    if not ctx.opts.csaf_providers and not ctx.opts.mirror:
        return Outcome("skipped", detail={"reason": "no CSAF provider configured (csaf_providers)"})
    if ctx.opts.check:
        return Outcome("would_sync", detail={"providers": len(ctx.opts.csaf_providers), "source": ctx.source("csaf")})
    stage = Staging(ctx.opts.cache_dir)
    seen = dict((fs.get("cursor") or {}).get("documents") or {})
    files = set(fs.get("files") or [])
    total = fetched = 0
    try:
        if ctx.opts.mirror:
            root = os.path.join(ctx.opts.mirror, "csaf")
            for host in sorted(os.listdir(root)) if os.path.isdir(root) else []:
                for name in sorted(os.listdir(os.path.join(root, host))):
                    if not name.endswith(".json") or name == "provider-metadata.json":
                        continue
                    path = os.path.join(root, host, name)
                    body = _mirror_bytes(path)
                    for suffix, algo in _HASH_SUFFIXES:
                        if os.path.isfile(path + suffix):
                            _check_hash(body, _mirror_bytes(path + suffix), algo, path)
                    rel = f"csaf/{host}/{name}"
                    stage.add(rel, body, "csaf")
                    files.add(rel)
                    total += 1
                    fetched += 1
        for provider in ctx.opts.csaf_providers if not ctx.opts.mirror else []:
            host = urllib.parse.urlsplit(provider).hostname or "provider"
            for url, updated, hash_url in _csaf_docs(ctx, provider):
                name = os.path.basename(urllib.parse.urlsplit(url).path)
                if not name.endswith(".json") or name.startswith("."):
                    raise FeedFailure(f"{_show(url)}: a CSAF document name must end in .json")
                rel = f"csaf/{host}/{name}"
                total += 1
                if updated is not None and seen.get(url) == updated and os.path.isfile(
                        os.path.join(ctx.opts.cache_dir, rel)):
                    continue
                body = ctx.http.fetch(url).body
                if hash_url:
                    algo = "sha512" if hash_url.endswith(".sha512") else "sha256"
                    _check_hash(body, ctx.http.fetch(hash_url).body, algo, _show(url))
                elif hash_url == "":
                    for suffix, algo in _HASH_SUFFIXES:
                        answer = ctx.http.fetch(url + suffix, allow=(404,))
                        if answer.status != 404:
                            _check_hash(body, answer.body, algo, _show(url))
                            break
                stage.add(rel, body, "csaf")
                seen[url] = updated
                files.add(rel)
                fetched += 1
        stage.commit()
    finally:
        stage.discard()
    present = sorted(f for f in files if os.path.isfile(os.path.join(ctx.opts.cache_dir, f)))
    return Outcome("updated", len(present), present, cursor={"documents": seen},
                   detail={"documents": total, "fetched": fetched})


SYNCERS: MappingProxyType[str, Callable[[Context, dict[str, Any]], Outcome]] = MappingProxyType({
    "kev": sync_kev, "epss": sync_epss, "nvd": sync_nvd, "vulnrichment": sync_vulnrichment, "osv": sync_osv,
    "csaf": sync_csaf,
})


# --------------------------------------------------------------------------------------------------------------
# the run


def new_kev_hits(new: Iterable[str], cache_dir: str) -> tuple[list[dict[str, Any]], bool]:
    """The new KEV entries with running nodes exposed (from exposure.json); and whether exposure.json was read."""
    exposed = exposure(cache_dir)
    if exposed is None:
        return [], False
    doc = _read_cache_json(cache_dir, FILES["kev"]) or {}
    entries = {v.get("cveID"): v for v in doc.get("vulnerabilities") or [] if isinstance(v, dict)}
    hits = []
    for cve in sorted(new):
        nodes = exposed.get(cve) or []
        if nodes:
            entry = entries.get(cve) or {}
            hits.append({"cve": cve, "nodes": nodes, "date_added": entry.get("dateAdded"),
                         "due_date": entry.get("dueDate"), "name": entry.get("vulnerabilityName")})
    return hits, True


def post_webhook(opts: SyncOptions, hits: list[dict[str, Any]]) -> dict[str, Any]:
    """POST the hits as JSON to the webhook; the answer never names the URL (it carries a token)."""
    lines = [f"{h['cve']} ({h.get('name') or 'no name'}) is now in CISA KEV and hits {', '.join(h['nodes'])}"
             for h in hits]
    payload = {"event": WEBHOOK_EVENT, "text": "New known-exploited vulnerabilities hit running nodes:\n"
               + "\n".join(lines), "entries": hits}
    req = urllib.request.Request(opts.webhook_url or "", data=json.dumps(payload).encode("utf-8"), method="POST",
                                 headers={"Content-Type": "application/json", "User-Agent": opts.user_agent})
    try:
        with build_opener(opts).open(req, timeout=opts.timeout) as resp:
            resp.read(65536)
            return {"sent": True, "status": resp.status, "error": None}
    except urllib.error.HTTPError as err:
        return {"sent": False, "status": err.code, "error": f"the webhook answered HTTP {err.code}"}
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", None) or type(err).__name__
        return {"sent": False, "status": None, "error": f"the webhook could not be reached ({reason})"}


def sync(opts: SyncOptions) -> dict[str, Any]:
    """Refresh the selected feeds; one result document (``ok`` false when any feed or the webhook failed).

    Raises :class:`FeedSyncInput` for bad settings before anything is fetched or written.
    """
    found = validate(opts)
    state = load_state(opts.cache_dir) if os.path.isdir(opts.cache_dir) else {"schema": STATE_SCHEMA, "feeds": {}}
    if not opts.check:
        os.makedirs(opts.cache_dir, exist_ok=True)
        _sweep_partials(opts.cache_dir)
    ctx = Context(opts, found["purls"], state)
    before_kev = kev_ids(opts.cache_dir)
    results: dict[str, dict[str, Any]] = {}
    failed: list[str] = []
    for name in FEEDS:
        if name not in opts.only:
            continue
        fs = state["feeds"].get(name) or _blank_feed_state()
        requests_before = ctx.http.requests
        started = opts.now()
        try:
            out = SYNCERS[name](ctx, fs)
        except FeedFailure as err:
            message = f"{name}: {err}"
            results[name] = {"status": "failed", "error": message, "records": fs.get("records"),
                             "requests": ctx.http.requests - requests_before}
            failed.append(name)
            if not opts.check:
                fs.update(last_attempt_at=iso(started), last_error={"at": iso(opts.now()), "message": message})
                state["feeds"][name] = fs
                save_state(opts.cache_dir, state)
            continue
        results[name] = {"status": out.status, "records": out.records if out.records is not None
                         else fs.get("records"), "error": None, "requests": ctx.http.requests - requests_before,
                         **out.detail}
        if out.status in ("skipped", "would_sync"):
            continue
        fs.update(last_attempt_at=iso(started), last_error=None, synced_at=iso(opts.now()), source=ctx.source(name))
        if out.records is not None:
            fs["records"] = out.records
        if out.files is not None:
            fs["files"] = out.files
        if out.cursor is not None:
            fs["cursor"] = out.cursor
        if not opts.mirror:
            fs["etag"], fs["last_modified"] = out.etag, out.last_modified
        state["feeds"][name] = fs
        save_state(opts.cache_dir, state)
    report: dict[str, Any] = {"new": [], "affecting_nodes": [], "exposure_read": None, "baseline": before_kev is None}
    if results.get("kev", {}).get("status") == "updated" and before_kev is not None:
        new = sorted((kev_ids(opts.cache_dir) or set()) - before_kev)
        hits, read = new_kev_hits(new, opts.cache_dir)
        report.update(new=new, affecting_nodes=hits, exposure_read=read)
        state["new_kev"] = {"at": iso(opts.now()), "new": new, "affecting_nodes": hits}
        save_state(opts.cache_dir, state)
    webhook = None
    if report["affecting_nodes"] and opts.webhook_url:
        webhook = post_webhook(opts, report["affecting_nodes"])
        if not webhook["sent"]:
            failed.append("webhook")
    changed = any(r["status"] == "updated" for r in results.values()) or (
        opts.check and any(r["status"] == "would_sync" for r in results.values()))
    return {"ok": not failed, "check": opts.check, "cache_dir": opts.cache_dir, "feeds": results,
            "failed": failed, "new_kev": report, "webhook": webhook, "changed": changed,
            "errors": [results[n]["error"] for n in failed if n in results]
            + ([webhook["error"]] if webhook and not webhook["sent"] else [])}


def _sweep_partials(cache_dir: str) -> None:
    """Temporary files a killed sync left behind (the cached copies themselves were never touched)."""
    for folder, _dirs, names in os.walk(cache_dir):
        for name in names:
            if name.startswith(".tmp-") and name.endswith(".part"):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, name))


# --------------------------------------------------------------------------------------------------------------
# freshness


def freshness(cache_dir: str, now: datetime | None = None, max_age: float = MAX_AGE_S,
              kev_max_age: float = KEV_MAX_AGE_S) -> dict[str, Any]:
    """Per feed: synced_at, age_s, records, last_error, stale; plus ``warnings`` and ``refuse``.

    ``refuse`` is a sentence when KEV was never synced or is older than ``kev_max_age`` seconds
    (a plan made from it would hide active exploitation), else None. Ages in seconds.
    """
    now = (now or utcnow()).astimezone(UTC)
    state = load_state(cache_dir)
    feeds: dict[str, Any] = {}
    warnings: list[str] = []
    for name in FEEDS:
        fs = state["feeds"].get(name)
        synced = parse_time(fs.get("synced_at")) if fs else None
        age = max(0.0, (now - synced).total_seconds()) if synced else None
        limit = kev_max_age if name == "kev" else max_age
        entry = {
            "synced_at": fs.get("synced_at") if fs else None, "age_s": age, "records": fs.get("records") if fs else 0,
            "files": fs.get("files") if fs else [], "source": fs.get("source") if fs else None,
            "last_attempt_at": fs.get("last_attempt_at") if fs else None,
            "last_error": fs.get("last_error") if fs else None,
            "stale": age is None or age > min(limit, max_age), "max_age_s": min(limit, max_age),
        }
        feeds[name] = entry
        if fs is None:
            if name in ("kev", "epss", "nvd"):
                warnings.append(f"{name} has never been synced into {cache_dir}")
            continue
        if age is not None and age > max_age:
            warnings.append(f"{name} is {_hours(age)} old (warning at {_hours(max_age)})")
        if entry["last_error"]:
            warnings.append(f"{name}: the last sync failed: {entry['last_error'].get('message')}")
    kev = feeds["kev"]
    refuse = None
    if kev["age_s"] is None:
        refuse = (f"the KEV catalog has never been synced into {cache_dir}; run `exchpatch feeds sync` (a plan "
                  "without it cannot see active exploitation)")
    elif kev["age_s"] > kev_max_age:
        refuse = (f"the KEV catalog is {_hours(kev['age_s'])} old (limit {_hours(kev_max_age)}): a stale KEV hides "
                  "active exploitation; run `exchpatch feeds sync`, or raise the KEV age limit")
    return {"cache_dir": cache_dir, "now": iso(now), "max_age_s": max_age, "kev_max_age_s": kev_max_age,
            "feeds": feeds, "warnings": warnings, "refuse": refuse, "new_kev": state.get("new_kev")}


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h"


def cache_files(cache_dir: str) -> list[str]:
    """The cached feed files a plan should read (absolute paths, existing, each loadable by _feeds.load_feed)."""
    state = load_state(cache_dir)
    out: list[str] = []
    for name in FEEDS:
        fs = state["feeds"].get(name)
        for rel in (fs.get("files") if fs else None) or []:
            path = os.path.join(cache_dir, rel)
            if not os.path.isfile(path):
                continue
            if name == "vulnrichment" and fs.get("records") == 0:
                continue  # "[]": load_feed cannot tell the format of an empty list
            out.append(os.path.abspath(path))
    return out


def prometheus(fresh: dict[str, Any]) -> str:
    """Prometheus text exposition of :func:`freshness` (gauges per feed)."""
    lines = [
        "# HELP exchpatch_feed_age_seconds Seconds since the feed was last refreshed (-1: never).",
        "# TYPE exchpatch_feed_age_seconds gauge",
    ]
    feeds = fresh["feeds"]
    lines += [f'exchpatch_feed_age_seconds{{feed="{n}"}} {-1 if f["age_s"] is None else round(f["age_s"], 3)}'
              for n, f in feeds.items()]
    lines += ["# HELP exchpatch_feed_records Records in the cached feed.", "# TYPE exchpatch_feed_records gauge"]
    lines += [f'exchpatch_feed_records{{feed="{n}"}} {int(f["records"] or 0)}' for n, f in feeds.items()]
    lines += ["# HELP exchpatch_feed_last_error 1 when the feed's last sync failed.",
              "# TYPE exchpatch_feed_last_error gauge"]
    lines += [f'exchpatch_feed_last_error{{feed="{n}"}} {1 if f["last_error"] else 0}' for n, f in feeds.items()]
    lines += ["# HELP exchpatch_feed_stale 1 when the feed is older than its age limit or was never synced.",
              "# TYPE exchpatch_feed_stale gauge"]
    lines += [f'exchpatch_feed_stale{{feed="{n}"}} {1 if f["stale"] else 0}' for n, f in feeds.items()]
    hits = ((fresh.get("new_kev") or {}).get("affecting_nodes")) or []
    lines += ["# HELP exchpatch_feed_new_kev_affecting_nodes New KEV entries at the last KEV update that hit a "
              "running node.", "# TYPE exchpatch_feed_new_kev_affecting_nodes gauge",
              f"exchpatch_feed_new_kev_affecting_nodes {len(hits)}",
              "# HELP exchpatch_feed_kev_refused 1 when a plan would refuse the KEV as too old.",
              "# TYPE exchpatch_feed_kev_refused gauge",
              f"exchpatch_feed_kev_refused {1 if fresh.get('refuse') else 0}"]
    return "\n".join(lines) + "\n"


def write_text_atomic(path: str, text: str) -> None:
    _safe_io.write_atomic(os.path.abspath(path), text.encode("utf-8"))


def gzip_bytes(data: bytes) -> bytes:
    """gzip ``data`` (tests and mirrors build EPSS files with it)."""
    return gzip.compress(data, mtime=0)
