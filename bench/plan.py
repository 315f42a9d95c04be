"""Benchmark planning against merely loading the same inputs.

Generates (once, cached in a temp folder) a 300,000-record NVD CVE API 2.0 feed, a KEV
catalog and an EPSS CSV covering those CVEs, and a 200-patch catalog; then, in the same
run, times ``json.load``/``csv`` of the inputs and the full plan (detect, parse, join,
decide, rank). Goal: planning at most 3x the load time. Prints a table; never run by CI.

    .venv/bin/python bench/plan.py [--records 300000] [--patches 200] [--repeat 3]
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import gc
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "collections"))

from ansible_collections.exchangeops.patching.plugins.module_utils import _catalog, _feeds, _priority  # noqa: E402
from cvss import CVSS3  # noqa: E402

METRICS = [("AV", "NALP"), ("AC", "LH"), ("PR", "NLH"), ("UI", "NR"), ("S", "UC"), ("C", "NLH"), ("I", "NLH"),
           ("A", "NLH")]


def generate(folder: Path, records: int, patches: int) -> dict[str, Path]:
    rnd = random.Random(2026)
    paths = {"nvd": folder / "nvd.json", "kev": folder / "kev.json", "epss": folder / "epss.csv",
             "catalog": folder / "catalog", "facts": folder / "facts.json"}
    if paths["nvd"].exists() and (paths["catalog"] / f"p{patches - 1:03d}.yml").exists():
        return paths
    scores: dict[str, float] = {}
    items, cves = [], []
    for i in range(records):
        vector = "CVSS:3.1/" + "/".join(f"{k}:{rnd.choice(v)}" for k, v in METRICS)
        if vector not in scores:
            scores[vector] = float(CVSS3(vector).base_score)
        year = 2018 + i % 9
        cve = f"CVE-{year}-{10000 + i}"
        cves.append(cve)
        items.append({"cve": {
            "id": cve, "sourceIdentifier": "cna@vendor.example",
            "published": f"{year}-{1 + i % 12:02d}-{1 + i % 28:02d}T10:15:00.000",
            "lastModified": "2026-11-01T10:00:00.000", "vulnStatus": "Analyzed",
            "descriptions": [{"lang": "en", "value": f"Synthetic benchmark record {i}: overflow in component "
                                                     f"{i % 997} allows a crafted request to crash the service."}],
            "metrics": {"cvssMetricV31": [{"source": "nvd@nist.gov", "type": "Primary", "cvssData": {
                "version": "3.1", "vectorString": vector, "baseScore": scores[vector], "baseSeverity": "HIGH"},
                "exploitabilityScore": 3.9, "impactScore": 5.9}]},
            "weaknesses": [{"source": "nvd@nist.gov", "type": "Primary",
                            "description": [{"lang": "en", "value": f"CWE-{100 + i % 700}"}]}],
            "references": [{"url": f"https://vendor{i % 113}.example/advisories/{i}", "source": "cna@vendor.example",
                            "tags": ["Vendor Advisory"]}]}})
    paths["nvd"].write_text(json.dumps({
        "resultsPerPage": records, "startIndex": 0, "totalResults": records, "format": "NVD_CVE", "version": "2.0",
        "timestamp": "2026-11-23T08:00:00.000", "vulnerabilities": items}))
    del items
    kev = [{"cveID": c, "vendorProject": "Vendor", "product": "Product", "vulnerabilityName": "Synthetic",
            "dateAdded": "2026-10-01", "shortDescription": "Synthetic.", "requiredAction": "Apply updates.",
            "dueDate": "2026-10-22", "knownRansomwareCampaignUse": "Unknown", "notes": "", "cwes": []}
           for c in cves[::97]]
    paths["kev"].write_text(json.dumps({"title": "CISA Catalog of Known Exploited Vulnerabilities",
                                        "catalogVersion": "2026.11.23", "dateReleased": "2026-11-23T12:00:00.000Z",
                                        "count": len(kev), "vulnerabilities": kev}))
    with open(paths["epss"], "w", newline="") as fh:
        fh.write("#model_version:v2025.03.14,score_date:2026-11-23T00:00:00+0000\n")
        w = csv.writer(fh)
        w.writerow(["cve", "epss", "percentile"])
        for c in cves:
            e = rnd.random() ** 4
            w.writerow([c, f"{e:.5f}", f"{min(1.0, e * 1.7):.5f}"])
    paths["catalog"].mkdir(exist_ok=True)
    for n in range(patches):
        component = ("matching-engine", "wallet-signer")[n % 2]
        fixes = "\n".join(f"  - {c}" for c in rnd.sample(cves, 5))
        (paths["catalog"] / f"p{n:03d}.yml").write_text(
            f"---\nid: p{n:03d}\ncomponent: {component}\nversion: 9.{n // 10}.{n % 10}\nartifact:\n"
            f"  url: file:///releases/p{n:03d}.tar.gz\n  sha256: {'ab' * 32}\n  signature: c2lnbmF0dXJl\n"
            f"fixes:\n{fixes}\nrestart: service\nmigration: none\nchange_size:\n  files: {1 + n % 9}\n"
            f"  lines: {10 + n}\nreleased_at: '2026-11-20T00:00:00Z'\n")
    paths["facts"].write_text(json.dumps({"nodes": [
        {"name": f"match-{s}{x}", "component": "matching-engine", "version": "1.4.2"} for s in range(25)
        for x in "ab"] + [{"name": f"wallet-{w}", "component": "wallet-signer", "version": "2.3.0"}
                          for w in range(1, 3)]}))
    return paths


def load_only(paths: dict[str, Path]) -> float:
    t0 = time.perf_counter()
    for key in ("nvd", "kev"):
        with open(paths[key], encoding="utf-8") as fh:
            json.load(fh)
    with open(paths["epss"], newline="") as fh:
        list(csv.reader(fh))
    return time.perf_counter() - t0


def plan(paths: dict[str, Path]) -> tuple[float, int]:
    t0 = time.perf_counter()
    intel = _feeds.load_intel([str(paths["nvd"]), str(paths["kev"]), str(paths["epss"])])
    patches = _catalog.load_catalog(str(paths["catalog"]))
    nodes = _priority.nodes_from_facts(json.loads(paths["facts"].read_text()), str(paths["facts"]))
    doc = _priority.build_plan(intel, patches, nodes, dt.datetime(2026, 11, 24, tzinfo=dt.UTC))
    return time.perf_counter() - t0, len(doc["patches"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=300_000)
    ap.add_argument("--patches", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    folder = Path(tempfile.gettempdir()) / f"exchpatch-bench-plan-{args.records}-{args.patches}"
    folder.mkdir(exist_ok=True)
    paths = generate(folder, args.records, args.patches)
    size = sum(os.path.getsize(paths[k]) for k in ("nvd", "kev", "epss")) / 1e6
    loads, plans, ranked = [], [], 0
    for _round in range(args.repeat):
        gc.collect()
        loads.append(load_only(paths))
        gc.collect()
        t, ranked = plan(paths)
        plans.append(t)
    load_s, plan_s = min(loads), min(plans)
    rows = [("records", f"{args.records:,}"), ("inputs (MB)", f"{size:.0f}"), ("patches", str(args.patches)),
            ("ranked", str(ranked)), ("json.load + csv (s, best)", f"{load_s:.2f}"),
            ("plan (s, best)", f"{plan_s:.2f}"), ("plan / load", f"{plan_s / load_s:.2f}x"),
            ("goal", "<= 3.00x")]
    width = max(len(k) for k, _value in rows)
    for k, v in rows:
        print(f"{k.ljust(width)}  {v}")
    print(f"(inputs cached in {folder}; delete it to regenerate)")


if __name__ == "__main__":
    main()
