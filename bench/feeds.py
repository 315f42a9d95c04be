"""Benchmark the NVD feed sync against a plain parse of the same pages.

Starts the tests' local feed server (tests/feeds/server.py) holding N NVD CVE API 2.0 records (default
300,000, CVSS vectors varied so the scorer's cache does not hide the work) and times, in the same run:

- ``json.loads`` of every page (the bytes already in memory): the floor;
- plain ``urllib`` GET + ``json.loads`` of every page: the floor with the HTTP transfer;
- the full first sync (``_feedsync.sync``, only nvd, no date filter, 2000 a page): GET, strict JSON,
  page checks, merge by CVE id, write, ``_feeds.load_feed`` validation, atomic replace;
- an incremental sync right after it (one window, nothing changed, still re-validates the cache);
- ``_feeds.load_feed`` of the written ``nvd.json`` alone (the validation share).

The local server has no rate limit (``rate_window=0``); the table adds what NVD's published limits would
cost for the same number of requests. Prints a Markdown table; never run by CI.

    .venv/bin/python bench/feeds.py [--records 300000] [--repeat 1]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "collections"))
sys.path.insert(0, str(REPO))

from ansible_collections.exchangeops.patching.plugins.module_utils import _feeds, _feedsync  # noqa: E402

from tests.feeds.server import FeedServer  # noqa: E402

METRICS = [("AV", "NALP"), ("AC", "LH"), ("PR", "NLH"), ("UI", "NR"), ("S", "UC"), ("C", "NLH"), ("I", "NLH"),
           ("A", "NLH")]
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def records(count: int) -> list[dict]:
    rnd = random.Random(2026)
    start = NOW - timedelta(days=3 * 365)
    out = []
    for i in range(count):
        vector = "CVSS:3.1/" + "/".join(f"{k}:{rnd.choice(v)}" for k, v in METRICS)
        modified = start + timedelta(seconds=i * 300)
        out.append({"cve": {
            "id": f"CVE-{2020 + i % 7}-{10000 + i}", "sourceIdentifier": "cve@mitre.org",
            "published": modified.strftime("%Y-%m-%dT%H:%M:%S.000"),
            "lastModified": modified.strftime("%Y-%m-%dT%H:%M:%S.000"), "vulnStatus": "Analyzed",
            "descriptions": [{"lang": "en", "value": f"Synthetic record {i} for the feed-sync benchmark."}],
            "metrics": {"cvssMetricV31": [{"source": "nvd@nist.gov", "type": "Primary", "cvssData": {
                "version": "3.1", "vectorString": vector, "baseScore": round(rnd.uniform(0.1, 10.0), 1)}}]},
            "weaknesses": [{"source": "nvd@nist.gov", "type": "Primary",
                            "description": [{"lang": "en", "value": "CWE-787"}]}],
            "references": [{"url": f"https://example.com/advisory/{i}", "source": "cve@mitre.org"}],
        }})
    return out


def timed(func) -> tuple[float, object]:
    gc.collect()
    t0 = time.perf_counter()
    value = func()
    return time.perf_counter() - t0, value


def page_urls(server: FeedServer, total: int, size: int) -> list[str]:
    base = server.urls()["nvd"]
    return [f"{base}?resultsPerPage={size}&startIndex={i}" for i in range(0, total, size)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each measurement; the best is shown")
    args = parser.parse_args()

    server = FeedServer()
    server.data.nvd = records(args.records)
    rows: list[tuple[str, float, str]] = []
    try:
        urls = page_urls(server, args.records, _feedsync.NVD_PAGE_SIZE)
        pages = [urllib.request.urlopen(u, timeout=120).read() for u in urls]
        size = sum(len(p) for p in pages)

        def best(func) -> tuple[float, object]:
            runs = [timed(func) for _run in range(args.repeat)]
            return min(runs, key=lambda r: r[0])

        t_parse, _parsed = best(lambda: [json.loads(p) for p in pages])
        rows.append(("json.loads of every page (bytes in memory)", t_parse, "floor"))
        t_http, _fetched = best(lambda: [json.loads(urllib.request.urlopen(u, timeout=120).read()) for u in urls])
        rows.append(("urllib GET + json.loads of every page", t_http, "floor with HTTP"))

        with tempfile.TemporaryDirectory(prefix="exchpatch-bench-feeds-") as tmp:
            def full_sync() -> dict:
                cache = Path(tmp) / f"cache-{time.monotonic_ns()}"
                opts = _feedsync.SyncOptions(cache_dir=str(cache), only=("nvd",), urls=server.urls(), proxy="",
                                             rate_window=0.0, timeout=300.0, now=lambda: NOW)
                result = _feedsync.sync(opts)
                assert result["ok"] and result["feeds"]["nvd"]["records"] == args.records, result["errors"]
                return {"cache": cache, "result": result}

            t_sync, out = best(full_sync)
            cache = out["cache"]
            rows.append(("feed sync, first run (fetch, check, merge, write, validate, replace)", t_sync,
                         f"{out['result']['feeds']['nvd']['requests']} requests"))
            later = NOW + timedelta(hours=2)

            def incremental() -> dict:
                opts = _feedsync.SyncOptions(cache_dir=str(cache), only=("nvd",), urls=server.urls(), proxy="",
                                             rate_window=0.0, timeout=300.0, now=lambda: later)
                result = _feedsync.sync(opts)
                assert result["ok"], result["errors"]
                return result

            t_inc, inc = best(incremental)
            rows.append(("feed sync, incremental (nothing changed)", t_inc,
                         f"{inc['feeds']['nvd']['requests']} request, nvd.json kept as it is"))
            t_load, _loaded = best(lambda: _feeds.load_feed(str(cache / "nvd.json"), _feedsync.MAX_CACHE_FILE))
            rows.append(("of which _feeds.load_feed of nvd.json (validation)", t_load, ""))
            written = (cache / "nvd.json").stat().st_size
    finally:
        server.stop()

    n = len(urls)
    print(f"NVD feed sync, {args.records:,} records in {n} pages of {_feedsync.NVD_PAGE_SIZE} "
          f"({size / 2**20:.0f} MiB of pages, nvd.json {written / 2**20:.0f} MiB), local server, best of "
          f"{args.repeat}\n")
    print("| step | seconds | x json.loads | note |")
    print("|---|---:|---:|---|")
    for name, seconds, note in rows:
        print(f"| {name} | {seconds:.2f} | {seconds / t_parse:.1f} | {note} |")
    no_key = max(0, n - _feedsync.NVD_LIMIT_NO_KEY) / _feedsync.NVD_LIMIT_NO_KEY * _feedsync.NVD_RATE_WINDOW_S
    key = max(0, n - _feedsync.NVD_LIMIT_WITH_KEY) / _feedsync.NVD_LIMIT_WITH_KEY * _feedsync.NVD_RATE_WINDOW_S
    print(f"\nNVD's rate limit alone, for {n} requests: at least {no_key:.0f} s without an API key "
          f"(5 per 30 s), {key:.0f} s with one (50 per 30 s).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
