"""``exchpatch`` command line.

Every command takes ``--json`` (one JSON document on stdout, nothing else) and exits
0 on success, 1 when the operation ran and failed, 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [[("-" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    out = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths))]
    out += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(out)


# --------------------------------------------------------------------------- testbed commands


def _fleet(args: argparse.Namespace) -> Any:
    from testbed import fleet

    return fleet.load(args.root)


def cmd_testbed_up(args: argparse.Namespace) -> tuple[int, Any, str]:
    from testbed import fleet

    f = fleet.up(args.root, shards=args.shards, wallets=args.wallets)
    st = fleet.status(f)
    text = (f"testbed up: {f.shards} shards, {f.wallets} wallets, HAProxy at {f.frontend_url}\n"
            f"inventory: {f.inventory_dir}\n\n" + _status_text(st))
    return EXIT_OK, {"root": f.root, "inventory": f.inventory_dir, "frontend": f.frontend_url, **st}, text


def cmd_testbed_down(args: argparse.Namespace) -> tuple[int, Any, str]:
    from testbed import fleet

    report = fleet.down(args.root)
    ok = not report["processes_left"] and not report["ports_left"]
    text = (f"testbed down: stopped {report['stopped']} supervisors/HAProxy"
            + ("" if ok else f"; LEFT BEHIND: pids {report['processes_left']}, ports {report['ports_left']}"))
    return (EXIT_OK if ok else EXIT_FAILED), report, text


def _status_text(st: dict[str, Any]) -> str:
    rows = []
    for n in st["nodes"]:
        rows.append({**n, "shard/chains": n.get("shard") if "shard" in n else ",".join(n.get("chains", [])),
                     "ready": "yes" if n["ready"] else ("no: " + n["error"] if n.get("error") else "no")})
    table = _table(rows, ["name", "component", "version", "role", "shard/chains", "address", "ready"])
    return table + f"\n\nHAProxy ready: {'yes' if st['haproxy']['ready'] else 'no'}"


def cmd_testbed_status(args: argparse.Namespace) -> tuple[int, Any, str]:
    from testbed import fleet

    st = fleet.status(_fleet(args))
    ok = all(n["ready"] for n in st["nodes"]) and st["haproxy"]["ready"]
    return (EXIT_OK if ok else EXIT_FAILED), st, _status_text(st)


def cmd_testbed_release(args: argparse.Namespace) -> tuple[int, Any, str]:
    from testbed import fleet, release

    root = fleet.testbed_root(args.root)
    built = release.build_release(
        root / "releases", root / "keys", args.catalog or root / "catalog",
        args.component, args.version, fault=args.fault, fixes=args.fixes, restart=args.restart,
        migration=args.migration, patch_id=args.id,
    )
    text = (f"built {built.component} {built.version}" + (f" (fault: {args.fault})" if args.fault else "")
            + f"\n  artifact: {built.artifact}\n  sha256:   {built.sha256}\n  catalog:  {built.catalog_entry}")
    return EXIT_OK, built.as_json(), text


def cmd_testbed_load(args: argparse.Namespace) -> tuple[int, Any, str]:
    from testbed.loadgen import LoadTarget, run_load

    f = _fleet(args)
    target = LoadTarget(
        frontend_url=f.frontend_url, markets=f.markets(), chains=f.chains(),
        wallet_admin=[(n.url, n.token()) for n in f.nodes if n.component == "wallet-signer"],
    )

    def progress(p: dict[str, Any]) -> None:
        if not args.json:
            print(f"  {p['elapsed_s']:5.1f}s  sent {p['sent']:6d}  acked {p['acked']:6d}  errors {p['errors']}",
                  file=sys.stderr, flush=True)

    report = run_load(target, args.rate, args.duration, progress=progress).as_json()
    ok = (report["lost"] == 0 and report["duplicated"] == 0 and report["double_withdrawals"] == 0
          and report["ledger_balanced"])
    lines = [
        f"sent {report['sent']}, acked {report['acked']}, lost {report['lost']}, duplicated {report['duplicated']}, "
        f"double withdrawals {report['double_withdrawals']}, ledger balanced: "
        f"{'yes' if report['ledger_balanced'] else 'NO'}",
        f"latency p50 {report['latency_ms']['p50']} ms, p99 {report['latency_ms']['p99']} ms",
        _table([{"market": m, "longest unavailability (ms)": ms} for m, ms in report["max_unavailable_ms"].items()],
               ["market", "longest unavailability (ms)"]),
    ]
    return (EXIT_OK if ok else EXIT_FAILED), report, "\n".join(lines)


def cmd_testbed_kill(args: argparse.Namespace) -> tuple[int, Any, str]:
    from testbed import fleet

    res = fleet.kill(_fleet(args), args.node)
    return EXIT_OK, res, f"sent SIGKILL to {args.node} (pid {res['killed_pid']})"


def cmd_testbed_promote(args: argparse.Namespace) -> tuple[int, Any, str]:
    from testbed import fleet

    res = fleet.promote(_fleet(args), args.node)
    return EXIT_OK, res, f"promoted {args.node} to primary (term {res.get('term')}, seq {res.get('seq')})"


# --------------------------------------------------------------------------- plan


def _existing(path: str, what: str, folder: bool = False) -> str:
    p = Path(path).expanduser()
    if not (p.is_dir() if folder else p.is_file()):
        raise CliError(f"{what} {path}: no such {'folder' if folder else 'file'}; check the path", EXIT_BAD_INPUT)
    return str(p.resolve())


def _plan_text(plan: dict[str, Any]) -> str:
    rows = [{
        "rank": p["rank"], "patch": p["id"], "component": p["component"], "version": p["version"],
        "class": p["class"], "due": (p["due"] or "on upgrade") + (" OVERDUE" if p.get("overdue") else ""),
        "score": p["score"], "window": p["window"], "targets": len(p["targets"]),
        "cves": ",".join(c["id"] for c in p["cves"]) or "-",
    } for p in plan["patches"]]
    out = [f"patch plan at {plan['generated_at']}", ""]
    out.append(_table(rows, ["rank", "patch", "component", "version", "class", "due", "score", "window",
                             "targets", "cves"]) if rows else "no patch is needed")
    for p in plan["patches"]:
        out.append(f"\n{p['rank']}. {p['id']} -> {p['class']}"
                   + (f", due {p['due']}" if p["due"] else ", fix on upgrade")
                   + f" on {', '.join(p['targets'])}")
        for c in p["cves"]:
            epss = "-" if c["epss"] is None else f"{c['epss']:.3f}"
            out.append(f"   {c['id']}: {'KEV, ' if c['kev'] else ''}exploitation {c['exploitation']}, "
                       f"automatable {c['automatable']}, impact {c['technical_impact']}, EPSS {epss}, "
                       f"CVSS {c['cvss'] if c['cvss'] is not None else '-'} -> {c['ssvc_deployer']} "
                       f"(CISA: {c['ssvc_cisa']}), BOD 26-04 {c['bod_26_04']}")
    if plan.get("not_needed"):
        out.append("\nnot needed:")
        out += [f"   {n['id']}: {n['reason']}" for n in plan["not_needed"]]
    return "\n".join(out)


def cmd_plan(args: argparse.Namespace) -> tuple[int, Any, str]:
    from exchpatch.runner import data_dir, run_playbook

    if args.inventory and args.facts:
        raise CliError("give --inventory (live facts) or --facts FILE (offline), not both", EXIT_BAD_INPUT)
    extravars: dict[str, Any] = {
        "plan_feeds": [_existing(f, "--feed") for f in args.feed],
        "plan_catalog": _existing(args.catalog, "--catalog", folder=True),
    }
    if args.facts:
        extravars["plan_facts_file"] = _existing(args.facts, "--facts")
    if args.now:
        extravars["plan_now"] = args.now
    dest = data_dir() / f"plan-{os.getpid()}.json"
    extravars["plan_dest"] = str(dest)
    inventory = args.inventory
    if args.facts and not inventory:
        inventory = str(Path(__file__).resolve().parent / "empty_inventory.yml")
    try:
        result = run_playbook("plan.yml", extravars, inventory=inventory)
        if not result.ok:
            bad = [f for f in result.failures if f.bad_input]
            first = (bad or result.failures or [None])[0]
            if first is None:
                msg = f"plan playbook {result.status} (rc {result.rc}); see {result.artifacts}"
            else:
                msg = first.msg if first.host in ("localhost", "?") else f"{first.host}: {first.msg}"
            raise CliError(msg, EXIT_BAD_INPUT if bad else EXIT_FAILED)
        plan = json.loads(dest.read_text())
    finally:
        dest.unlink(missing_ok=True)
    return EXIT_OK, plan, _plan_text(plan)


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON document on stdout, nothing else")
    parser = argparse.ArgumentParser(prog="exchpatch", description="Patch exchange trading systems safely.")
    sub = parser.add_subparsers(dest="command", required=True)

    tb = sub.add_parser("testbed", help="the local exchange-in-a-box")
    tb.add_argument("--root", help="testbed folder (default: $EXCHPATCH_TESTBED_DIR or <checkout>/.testbed)")
    tbs = tb.add_subparsers(dest="testbed_command", required=True)

    p = tbs.add_parser("up", parents=[common], help="start the fleet and HAProxy, write the inventory")
    p.add_argument("--shards", type=int, default=2, help="matching shards, 2 nodes each (default 2)")
    p.add_argument("--wallets", type=int, default=2, help="wallet-signer nodes (default 2)")
    p.set_defaults(func=cmd_testbed_up)
    p = tbs.add_parser("down", parents=[common], help="stop every testbed process")
    p.set_defaults(func=cmd_testbed_down)
    p = tbs.add_parser("status", parents=[common], help="nodes: version, HA role, ready")
    p.set_defaults(func=cmd_testbed_status)

    p = tbs.add_parser("release", parents=[common], help="build a signed release and its catalog entry")
    p.add_argument("--component", required=True, choices=["matching-engine", "wallet-signer"])
    p.add_argument("--version", required=True)
    p.add_argument("--fault", choices=["crash", "never-ready", "slow-start", "latency", "state-divergence",
                                       "ledger-mismatch"])
    p.add_argument("--catalog", help="catalog folder for the entry (default: the testbed's own catalog)")
    p.add_argument("--fixes", nargs="*", default=[], metavar="CVE", help="CVE IDs the release fixes")
    p.add_argument("--restart", default="service", choices=["none", "service", "system"])
    p.add_argument("--migration", default="none", choices=["none", "forward_compatible", "irreversible"])
    p.add_argument("--id", help="patch id (default: <component>-<version>)")
    p.set_defaults(func=cmd_testbed_release)

    p = tbs.add_parser("load", parents=[common], help="send orders and withdrawals, then prove nothing was lost")
    p.add_argument("--rate", type=float, required=True, help="requests per second")
    p.add_argument("--duration", type=float, required=True, help="seconds")
    p.set_defaults(func=cmd_testbed_load)
    p = tbs.add_parser("kill", parents=[common], help="SIGKILL a node's service")
    p.add_argument("node")
    p.set_defaults(func=cmd_testbed_kill)
    p = tbs.add_parser("promote", parents=[common], help="promote a matching standby")
    p.add_argument("node")
    p.set_defaults(func=cmd_testbed_promote)
    p = sub.add_parser("plan", parents=[common], help="rank pending patches by risk, with explanations")
    p.add_argument("--feed", action="append", required=True, metavar="PATH",
                   help="advisory feed file (OSV, CSAF, NVD 2.0, CVE 5 + vulnrichment, KEV, EPSS CSV); repeatable")
    p.add_argument("--catalog", required=True, metavar="DIR", help="patch catalog folder (patches/*.yml)")
    p.add_argument("--inventory", metavar="INV", help="inventory for live facts (default: the testbed's)")
    p.add_argument("--facts", metavar="FILE", help='offline fleet facts: {"nodes": [{"name", "component", ...}]}')
    p.add_argument("--now", metavar="ISO8601", help="plan as of this time (default: now)")
    p.set_defaults(func=cmd_plan)
    return parser


def _classify(exc: Exception) -> int | None:
    from testbed.fleet import TestbedError, TestbedInputError
    from testbed.release import ReleaseError

    if isinstance(exc, CliError):
        return exc.code
    if isinstance(exc, (TestbedInputError, ReleaseError, ValueError)):
        return EXIT_BAD_INPUT
    if isinstance(exc, (TestbedError, OSError)):
        return EXIT_FAILED
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], tuple[int, Any, str]] = args.func
    try:
        code, doc, text = func(args)
    except Exception as e:
        code = _classify(e)
        if code is None:
            raise
        if args.json:
            print(json.dumps({"error": str(e)}))
        print(f"exchpatch: error: {e}", file=sys.stderr)
        return code
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=False))
    else:
        print(text)
    return code


if __name__ == "__main__":
    sys.exit(main())
