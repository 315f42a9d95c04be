"""Benchmark the testbed itself: time to bring a fleet to ready, and what load it sustains.

Prints a table; never run by CI (tests do not assert on timing). Uses its own folder and
loopback /16 (127.88.0.0/16 unless --net), so a running demo testbed is not disturbed.

    .venv/bin/python bench/testbed_capacity.py [--shards 2 25] [--rates 100 200 500] [--duration 15]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

# the testbed is the checkout's (the driver's wheel does not ship it)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from testbed import fleet as tb
from testbed.loadgen import LoadTarget, run_load


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, nargs="+", default=[2, 25])
    ap.add_argument("--wallets", type=int, default=2)
    ap.add_argument("--rates", type=float, nargs="+", default=[100, 200, 500])
    ap.add_argument("--duration", type=float, default=15)
    ap.add_argument("--net", type=int, default=88)
    args = ap.parse_args()

    rows = []
    for shards in args.shards:
        root = Path(tempfile.mkdtemp(prefix=f"bench-testbed-{shards}-"))
        try:
            t0 = time.monotonic()
            f = tb.up(root, shards=shards, wallets=args.wallets, net=args.net, timeout=300)
            up_s = time.monotonic() - t0
            target = LoadTarget(f.frontend_url, f.markets(), f.chains(),
                                [(n.url, n.token()) for n in f.nodes if n.component == "wallet-signer"])
            for rate in args.rates:
                r = run_load(target, rate, args.duration).as_json()
                rows.append([shards, len(f.nodes), f"{up_s:.1f}", int(rate), r.get("achieved_rate", "-"),
                             r["acked"], r["lost"], r["duplicated"], r["double_withdrawals"],
                             r["latency_ms"]["p50"], r["latency_ms"]["p99"], max(r["max_unavailable_ms"].values())])
        finally:
            tb.down(root)
            shutil.rmtree(root, ignore_errors=True)

    head = ["shards", "nodes", "up_s", "rate", "achieved", "acked", "lost", "dup", "double_wd",
            "p50_ms", "p99_ms", "max_unavail_ms"]
    widths = [max(len(str(x)) for x in [h] + [r[i] for r in rows]) for i, h in enumerate(head)]
    print("  ".join(h.rjust(w) for h, w in zip(head, widths)))
    for r in rows:
        print("  ".join(str(v).rjust(w) for v, w in zip(r, widths)))


if __name__ == "__main__":
    main()
