"""Benchmark exposure against merely loading the same inputs.

Generates (once, cached in a temp folder) 50,000 OSV records for 5,000 Debian 12 and PyPI packages (each with
introduced/fixed ranges, some with versions lists and last_affected), and 500 nodes x 200 components: the nodes
run RELEASES distinct releases (nodes of one release share an SBOM, as in a real fleet), each release's
components drawn from those packages at versions inside and outside the ranges. Then, in one run, times a
plain parse (``json.load`` of the OSV file and of every node's SBOM) and the full exposure (strict load and
validation of OSV and SBOMs, purl parsing, univers ranges, VEX, the document). Prints a table; never run by CI.

    .venv/bin/python bench/exposure.py [--records 50000] [--nodes 500] [--components 200] [--releases 10]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "collections"))

from ansible_collections.exchangeops.patching.plugins.module_utils import _exposure  # noqa: E402


def _deb(major: int, minor: int, rev: int) -> str:
    return f"1:{major}.{minor}-{rev}+deb12u{rev}"


def generate(folder: Path, records: int, nodes: int, components: int, releases: int) -> dict[str, Path]:
    rnd = random.Random(2026)
    tag = f"{records}-{nodes}-{components}-{releases}"
    paths = {"osv": folder / f"osv-{tag}.json", "facts": folder / f"facts-{tag}.json"}
    if paths["osv"].exists() and paths["facts"].exists():
        return paths
    packages = [("Debian:12", f"lib{i}") if i % 5 else ("PyPI", f"py-pkg-{i}") for i in range(5000)]
    vulns = []
    for i in range(records):
        eco, name = packages[i % len(packages)]
        major = rnd.randint(1, 9)
        if eco == "PyPI":
            events = [{"introduced": f"{major}.0"}, {"fixed": f"{major}.{rnd.randint(1, 9)}"}]
            versions = [f"{major}.0.{k}" for k in range(3)]
        else:
            last = rnd.random() < 0.2
            events = [{"introduced": "0"},
                      {"last_affected" if last else "fixed": _deb(major, rnd.randint(0, 9), rnd.randint(1, 9))}]
            versions = []
        vulns.append({"id": f"BENCH-{i}", "aliases": [f"CVE-2026-{100000 + i}"], "modified": "2026-11-01T00:00:00Z",
                      "affected": [{"package": {"ecosystem": eco, "name": name},
                                    "ranges": [{"type": "ECOSYSTEM", "events": events}], "versions": versions}]})
    paths["osv"].write_text(json.dumps({"vulns": vulns}))
    facts = {"nodes": []}
    for r in range(releases):
        comps = []
        for pkg_i in rnd.sample(range(len(packages)), components):
            eco, name = packages[pkg_i]
            major, minor = rnd.randint(1, 9), rnd.randint(0, 9)
            purl = (f"pkg:pypi/{name}@{major}.{minor}" if eco == "PyPI"
                    else f"pkg:deb/debian/{name}@{_deb(major, minor, rnd.randint(1, 9)).replace('+', '%2B')}"
                    "?distro=debian-12")
            comps.append({"type": "library", "name": name, "purl": purl})
        doc = {"bomFormat": "CycloneDX", "specVersion": "1.6", "version": 1,
               "metadata": {"component": {"type": "application", "name": "matching-engine", "version": f"1.{r}.0"}},
               "components": comps}
        (folder / f"release-{tag}-{r}.cdx.json").write_text(json.dumps(doc))
    for n in range(nodes):
        r = n % releases
        facts["nodes"].append({"name": f"node-{n}", "component": "matching-engine", "version": f"1.{r}.0",
                               "sbom": f"release-{tag}-{r}.cdx.json"})
    paths["facts"].write_text(json.dumps(facts))
    return paths


def plain_parse(paths: dict[str, Path]) -> int:
    osv = json.loads(paths["osv"].read_text())
    facts = json.loads(paths["facts"].read_text())
    total = len(osv["vulns"])
    for node in facts["nodes"]:  # every node's SBOM, as a naive reader would
        total += len(json.loads((paths["facts"].parent / node["sbom"]).read_text())["components"])
    return total


def exposure(paths: dict[str, Path]) -> dict:
    nodes, _patch_sboms = _exposure.load_facts(str(paths["facts"]))
    matcher = _exposure.Matcher(_exposure.load_osv([str(paths["osv"])]))
    return _exposure.compute(nodes, matcher, [], [], "2026-11-24T00:00:00Z")


def timed(fn, repeat: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _round in range(repeat):
        gc.collect()
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=50_000)
    ap.add_argument("--nodes", type=int, default=500)
    ap.add_argument("--components", type=int, default=200)
    ap.add_argument("--releases", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    folder = Path(tempfile.gettempdir()) / "exchpatch-bench-exposure"
    folder.mkdir(exist_ok=True)
    paths = generate(folder, args.records, args.nodes, args.components, args.releases)
    t_parse, _count = timed(lambda: plain_parse(paths), args.repeat)
    t_exp, doc = timed(lambda: exposure(paths), args.repeat)
    pairs = sum(len(e["nodes"]) for e in doc["cves"].values())
    rows = {
        "OSV records": f"{args.records:,}",
        "nodes x components": f"{args.nodes} x {args.components} ({args.releases} distinct releases)",
        "plain parse (json.load OSV + every node SBOM)": f"{t_parse:.2f} s",
        "exposure (validate, index, univers ranges, document)": f"{t_exp:.2f} s",
        "ratio exposure / plain parse": f"{t_exp / t_parse:.1f}x",
        "CVEs exposed / node-CVE pairs": f"{len(doc['cves']):,} / {pairs:,}",
        "warnings": str(len(doc["warnings"])),
    }
    width = max(len(k) for k in rows)
    for k, v in rows.items():
        print(f"{k.ljust(width)}  {v}")
    print(f"(inputs cached in {folder}; delete it to regenerate)")


if __name__ == "__main__":
    main()
