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

# The testbed is a development harness: it ships with the source checkout, not with the installed package.
TESTBED_FROM_CHECKOUT = ("the testbed ships with the source checkout, not with the installed exchpatch: "
                         "git clone https://github.com/exchangeops/patching && cd patching && make demo")


def _use_checkout_testbed() -> None:
    """Make the checkout's ``testbed`` package importable (it sits beside ``exchpatch/`` in a clone), or stop
    with the way to get it. Never a ``testbed`` from anywhere else on ``sys.path``: the name is generic."""
    from exchpatch.jobs import CHECKOUT

    if CHECKOUT is None or not (CHECKOUT / "testbed" / "__init__.py").is_file():
        raise CliError(TESTBED_FROM_CHECKOUT, EXIT_BAD_INPUT)
    if str(CHECKOUT) not in sys.path:
        sys.path.insert(0, str(CHECKOUT))


def _fleet(args: argparse.Namespace) -> Any:
    from testbed import fleet

    return fleet.load(args.root)


def cmd_testbed_up(args: argparse.Namespace) -> tuple[int, Any, str]:
    from testbed import fleet

    f = fleet.up(args.root, shards=args.shards, wallets=args.wallets,
                 freeze_windows=_existing(args.freeze_windows, "--freeze-windows") if args.freeze_windows else None)
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

    # SIGTERM or Ctrl-C ends the sending early; the audit of what was sent still runs and is reported
    import signal
    import threading

    stop = threading.Event()
    before = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        report = run_load(target, args.rate, args.duration, progress=progress, stop=stop).as_json()
    finally:  # main() may run in-process (tests, a bot): give the caller its handlers back
        for sig, handler in before.items():
            signal.signal(sig, handler)
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
    fresh = plan.get("feed_freshness")
    if fresh:
        out += [f"feeds from {fresh['cache_dir']}"] + [f"   WARNING: {w}" for w in fresh["warnings"]] + [""]
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
    for p in plan["patches"]:
        derived = [c["id"] for c in p["cves"] if c.get("derived")]
        flagged = [c["id"] for c in p["cves"] if c.get("flagged")]
        if derived or flagged:
            out.append(f"\n{p['id']} fixes check: "
                       + "; ".join(filter(None, [derived and f"derived (not in catalog fixes) {', '.join(derived)}",
                                                 flagged and f"FLAGGED (SBOM still affected) {', '.join(flagged)}"])))
    if plan.get("needs_mitigation"):
        out.append("\nneeds mitigation (no catalog patch fixes these):")
        out.append(_table([{
            "rank": m["rank"], "cve": m["cve"], "class": m["class"],
            "due": (m["due"] or "on upgrade") + (" OVERDUE" if m["overdue"] else ""), "score": m["score"],
            "nodes": ",".join(m["nodes"]), "packages": ",".join(m["packages"]) or "-",
        } for m in plan["needs_mitigation"]], ["rank", "cve", "class", "due", "score", "nodes", "packages"]))
    if plan.get("not_needed"):
        out.append("\nnot needed:")
        out += [f"   {n['id']}: {n['reason']}" for n in plan["not_needed"]]
    return "\n".join(out)


def _wait(job: Any, args: argparse.Namespace) -> Any:
    """Wait for a job; the first Ctrl-C cancels it safely, a second one kills it."""
    import signal

    interrupts = 0
    while True:
        try:
            return job.wait()
        except KeyboardInterrupt:
            interrupts += 1
            if interrupts == 1:
                print("\nexchpatch: canceling: the run stops before its next node and rolls back what it "
                      "touched (Ctrl-C again to kill it now)", file=sys.stderr, flush=True)
                job.cancel()
            else:
                job.cancel(grace=0)
                signal.signal(signal.SIGINT, signal.SIG_IGN)


def _start(factory: Callable[..., Any], args: argparse.Namespace, *pos: Any, **kw: Any) -> Any:
    from exchpatch.api import BadInput
    from exchpatch.progress import Progress

    try:
        job = factory(*pos, **kw)
    except BadInput as e:
        raise CliError(str(e), EXIT_BAD_INPUT) from None
    if not args.json and getattr(args, "progress", True):
        job.on_event(Progress())
    return _wait(job, args)


def _failed(result: Any) -> None:
    """A run that ended in bad input exits through CliError (code 2 and the message)."""
    if result.exit_code == EXIT_BAD_INPUT:
        raise CliError(result.message or "bad input", EXIT_BAD_INPUT)


def cmd_plan(args: argparse.Namespace) -> tuple[int, Any, str]:
    from exchpatch import api

    args.progress = False
    result = _start(api.plan, args, args.feed, args.catalog, inventory=args.inventory, facts=args.facts,
                    now=args.now, allow_inventory_scripts=args.allow_inventory_scripts, exposure=args.exposure,
                    feed_cache=args.feed_cache, max_feed_age_hours=args.max_feed_age_hours,
                    max_kev_age_hours=args.max_kev_age_hours, allow_stale_kev=args.allow_stale_kev)
    _failed(result)
    if result.exit_code:
        raise CliError(result.message or "plan failed", result.exit_code)
    if args.output:
        Path(args.output).write_text(json.dumps(result.plan, indent=2) + "\n")
    return EXIT_OK, result.plan, _plan_text(result.plan)


def _write_report(result: Any) -> None:
    """Every deploy and rollback leaves its HTML report beside the audit trail (path in the result)."""
    from exchpatch import api

    try:
        rep = api.audit("report", run=result.job["id"]).wait()
    except api.JobError:
        rep = None
    result.report = (rep.data.get("path") if rep is not None and rep.exit_code == 0 else None)


def _closing(result: Any, headline: str) -> tuple[int, Any, str]:
    """Deploy and rollback end alike: report written, headline, nodes touched, failure, run and report."""
    from exchpatch.progress import summary_lines

    _write_report(result)
    lines = [headline, *summary_lines(result)]
    if result.message:
        lines.append(f"  {result.message}")
    lines.append(f"  run {result.job['id']}, report {result.report or '(not written)'}")
    return result.exit_code, result.as_json(), "\n".join(lines)


def _trusted_files(args: argparse.Namespace) -> dict[str, Any]:
    """The vault password file and the opt-ins for files Ansible would run as programs."""
    return {"vault_password_file": args.vault_password_file,
            "allow_vault_password_script": args.allow_vault_password_script,
            "allow_inventory_scripts": args.allow_inventory_scripts}


def cmd_deploy(args: argparse.Namespace) -> tuple[int, Any, str]:
    from exchpatch import api

    result = _start(api.deploy, args, args.patch_id, inventory=args.inventory, check=args.check,
                    emergency=args.emergency, reason=args.reason, approval=args.approval, operator=args.operator,
                    serial=args.serial, canary_bake=args.canary_bake, bake=args.bake, on_failure=args.on_failure,
                    on_inconclusive=args.on_inconclusive,
                    accept_irreversible=args.accept_irreversible, catalog=args.catalog,
                    allow_downgrade=args.allow_downgrade, timeout=args.timeout, **_trusted_files(args))
    _failed(result)
    headline = {
        "successful": f"{args.patch_id}: rolled out; every node converged",
        "check": f"{args.patch_id}: check mode, nothing was touched",
        "rolled_back": f"{args.patch_id}: FAILED and rolled back",
        "halted": f"{args.patch_id}: FAILED and halted for a human to decide (lock kept)",
        "inconclusive": f"{args.patch_id}: HALTED for a human: a traffic gate had too few client requests to judge",
        "refused": f"{args.patch_id}: refused before any node was touched",
        "canceled": f"{args.patch_id}: canceled",
        "failed": f"{args.patch_id}: FAILED",
    }[result.outcome]
    return _closing(result, headline)


def cmd_rollback(args: argparse.Namespace) -> tuple[int, Any, str]:
    from exchpatch import api

    result = _start(api.rollback, args, args.component, to=args.to, inventory=args.inventory, check=args.check,
                    accept_irreversible=args.accept_irreversible, operator=args.operator, timeout=args.timeout,
                    **_trusted_files(args))
    _failed(result)
    head = (f"{args.component}: rolled back" + (f" to {result.to_version}" if result.to_version else "")
            if result.outcome == "successful" else f"{args.component}: rollback {result.outcome}")
    return _closing(result, head)


def cmd_status(args: argparse.Namespace) -> tuple[int, Any, str]:
    from exchpatch import api

    args.progress = False
    result = _start(api.status, args, inventory=args.inventory, **_trusted_files(args))
    _failed(result)
    rows = [{**n, "shard/chains": n["shard"] if n["shard"] is not None else ",".join(n["chains"] or []),
             "ready": "yes" if n["ready"] else ("no: " + _clip(n["error"]) if n["error"] else "no")}
            for n in result.nodes]
    out = [_table(rows, ["name", "component", "version", "role", "shard/chains", "mode", "ready"]), ""]
    for name, comp in result.components.items():
        versions = ", ".join(f"{v} ({len(ns)})" for v, ns in comp["versions"].items()) or "unknown"
        out.append(f"{name}: {versions}" + ("  DRIFT" if comp["drift"] else ""))
    for shard, info in sorted(result.shards.items()):
        if not info["healthy"]:
            out.append(f"shard {shard}: no single ready primary ({info['primary'] or 'none'})")
    if result.locks:
        out.append("")
        out.append(_table([{**lk, "state": "STALE" if lk["stale"] else "held"} for lk in result.locks],
                          ["scope", "owner", "run_id", "patch", "expires_at", "state"]))
    else:
        out.append("locks: none held")
    if result.message:
        out.append(result.message)
    return result.exit_code, result.as_json(), "\n".join(out)


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _audit(args: argparse.Namespace, action: str, **kw: Any) -> Any:
    from exchpatch import api

    args.progress = False
    result = _start(api.audit, args, action, audit_file=args.audit_file, **kw)
    _failed(result)
    return result


def cmd_history(args: argparse.Namespace) -> tuple[int, Any, str]:
    result = _audit(args, "history", unverified=args.unverified)
    runs = result.data.get("runs", [])
    rows = [{**r, "duration": f"{r['duration_s']:.0f}s" if r.get("duration_s") is not None else "-"} for r in runs]
    text = _table(rows, ["started", "run", "playbook", "patch_id", "version", "operator", "outcome", "duration"]) \
        if rows else "no runs recorded yet"
    return result.exit_code, result.as_json(), text


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    s = int(seconds)
    return f"{s // 86400}d {s % 86400 // 3600}h" if s >= 86400 else f"{s // 3600}h {s % 3600 // 60}m" \
        if s >= 3600 else f"{s // 60}m {s % 60}s" if s >= 60 else f"{seconds:.1f}s"


def _metrics_text(m: dict[str, Any]) -> str:
    if not m.get("runs"):
        return "no runs recorded yet"
    cfr = m.get("change_failure_rate")
    mttr = m.get("mttr") or {}
    out = [
        f"deployments {m.get('deployments', 0)}, failed {m.get('failed_deployments', 0)}, "
        f"rollbacks {m.get('rollbacks', 0)}, runs {m.get('runs', 0)}",
        "change failure rate: " + ("-" if cfr is None else f"{cfr:.0%}"),
        f"inconclusive (halted for a human, too few client requests to judge): "
        f"{m.get('inconclusive_deployments', 0)} deployments, "
        f"{sum((m.get('inconclusive_gates') or {}).values())} traffic gates",
        f"MTTR (mean over {mttr.get('fixed', 0)} fixed CVEs): {_duration(mttr.get('mean_s'))}",
        f"mean time to restore: {_duration(m.get('mean_time_to_restore_s'))}",
    ]
    rows = [{"cve": c.get("cve"), "status": c.get("status"), "first seen": (c.get("first_seen") or "")[:10],
             "fixed by": c.get("patch_id"), "time to remediate": _duration(c.get("mttr_s") or c.get("age_s"))
             + ("" if c.get("mttr_s") is not None else " (open)")} for c in mttr.get("per_cve", [])]
    if rows:
        out += ["", _table(rows, ["cve", "status", "first seen", "fixed by", "time to remediate"])]
    rows = [{"run": r.get("run"), "patch": r.get("patch_id"), "outcome": r.get("outcome"),
             "time to restore": _duration(r.get("time_to_restore_s")) if r.get("time_to_restore_s") is not None
             else "not restored"} for r in m.get("time_to_restore", [])]
    if rows:
        out += ["", _table(rows, ["run", "patch", "outcome", "time to restore"])]
    return "\n".join(out)


def cmd_metrics(args: argparse.Namespace) -> tuple[int, Any, str]:
    result = _audit(args, "metrics", prometheus=bool(args.prometheus), dest=args.prometheus or None,
                    unverified=args.unverified)
    text = _metrics_text(result.data.get("metrics", {}))
    if args.prometheus and result.exit_code == 0:
        text += f"\n\nPrometheus text written to {args.prometheus}"
    return result.exit_code, result.as_json(), text


def cmd_audit_verify(args: argparse.Namespace) -> tuple[int, Any, str]:
    result = _audit(args, "verify")
    d = result.data
    if result.exit_code == 0 and d.get("status") == "verified":
        text = f"audit trail intact: {d.get('summary') or str(d.get('records', '?')) + ' records'}"
    elif result.exit_code == 0:
        # links consistent, but no key vouches for them: never shown as a verified keyed trail
        text = f"audit trail intact but NOT verified with a key: {d.get('summary') or 'unkeyed'}"
    else:
        problems = d.get("problems") or []
        text = "AUDIT TRAIL TAMPERED OR DAMAGED:\n" + "\n".join(
            f"  {p}" if isinstance(p, str) else f"  line {p.get('line')}: {p.get('what') or p.get('problem') or p}"
            for p in problems
        ) if problems else f"audit verify failed: {result.message}"
    return result.exit_code, result.as_json(), text


def cmd_report(args: argparse.Namespace) -> tuple[int, Any, str]:
    result = _audit(args, "report", run=args.run, load_report=args.load, dest=args.output,
                    unverified=args.unverified)
    path = result.data.get("path") or result.data.get("dest")
    text = f"report: {path}" if result.exit_code == 0 else f"report failed: {result.message}"
    return result.exit_code, result.as_json(), text


def cmd_audit_export(args: argparse.Namespace) -> tuple[int, Any, str]:
    result = _audit(args, "export", dest=args.output, unverified=args.unverified)
    d = result.data
    text = (f"exported {d.get('records', '?')} records to {d.get('path')}" if result.exit_code == 0
            else f"audit export failed: {result.message}")
    return result.exit_code, result.as_json(), text


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
    p.add_argument("--freeze-windows", metavar="FILE",
                   help="market calendar for the inventory (default: testbed/freeze-windows.yml)")
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

    p = tbs.add_parser("load", parents=[common],
                       help="send orders and withdrawals, then prove nothing was lost (SIGTERM/Ctrl-C ends early)")
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
    p.add_argument("--feed", action="append", default=[], metavar="PATH",
                   help="advisory feed file (OSV, CSAF, NVD 2.0, CVE 5 + vulnrichment, KEV, EPSS CSV); repeatable")
    p.add_argument("--feed-cache", metavar="DIR",
                   help="read every feed `exchpatch feeds sync` keeps in DIR (and its exposure.json unless "
                        "--exposure is given); warns about stale feeds and refuses a stale KEV catalog")
    p.add_argument("--max-feed-age-hours", type=float, metavar="H",
                   help="with --feed-cache: warn about feeds older than H hours (default 48)")
    p.add_argument("--max-kev-age-hours", type=float, metavar="H",
                   help="with --feed-cache: refuse when the KEV catalog is older than H hours (default 72)")
    p.add_argument("--allow-stale-kev", action="store_true",
                   help="with --feed-cache: plan even on a stale or missing KEV catalog (recorded in the plan)")
    p.add_argument("--catalog", required=True, metavar="DIR", help="patch catalog folder (patches/*.yml)")
    p.add_argument("--inventory", metavar="INV", help="inventory for live facts (default: the testbed's)")
    p.add_argument("--facts", metavar="FILE", help='offline fleet facts: {"nodes": [{"name", "component", ...}]}')
    p.add_argument("--now", metavar="ISO8601", help="plan as of this time (default: now)")
    p.add_argument("--output", metavar="FILE", help="also write the plan's JSON document to FILE")
    p.add_argument("--exposure", metavar="FILE",
                   help="exposure document (exchpatch exposure; the feed cache's exposure.json): rank CVEs no patch "
                        "fixes under needs mitigation, add derived fixes, mark flagged ones")
    p.add_argument("--allow-inventory-scripts", action="store_true",
                   help="accept an executable (dynamic) inventory, which Ansible runs as a program")
    p.set_defaults(func=cmd_plan)

    secrets = argparse.ArgumentParser(add_help=False)
    secrets.add_argument("--inventory", metavar="INV", help="inventory (default: the testbed's)")
    secrets.add_argument("--vault-password-file", metavar="FILE", help="Ansible Vault password file for the inventory")
    secrets.add_argument("--allow-vault-password-script", action="store_true",
                         help="accept an executable vault password file (a vault client script Ansible runs)")
    secrets.add_argument("--allow-inventory-scripts", action="store_true",
                         help="accept an executable (dynamic) inventory, which Ansible runs as a program")
    run = argparse.ArgumentParser(add_help=False)
    run.add_argument("--check", action="store_true", help="touch no node; show what would happen, batch by batch")
    run.add_argument("--operator", help="who runs it (default: $EXCHPATCH_OPERATOR or the login name)")
    run.add_argument("--accept-irreversible", action="store_true",
                     help="accept a release whose migration cannot be rolled back")
    run.add_argument("--timeout", type=float, metavar="S", help="kill the run after S seconds (status: timeout)")

    p = sub.add_parser("deploy", parents=[common, secrets, run], help="roll a catalog patch out, canary first")
    p.add_argument("patch_id", metavar="PATCH_ID", help="catalog id, e.g. matching-engine-1.4.3")
    p.add_argument("--emergency", action="store_true",
                   help="override a freeze window (needs --reason and a signed approval, see exchpatch approve)")
    p.add_argument("--reason", help="why (recorded with the change); needed by --emergency and --allow-downgrade")
    p.add_argument("--allow-downgrade", action="store_true",
                   help="let a release older than what a node runs go out (needs --reason; recorded as a "
                        "downgrade). To undo a bad release use exchpatch rollback")
    p.add_argument("--approval", action="append", metavar="FILE",
                   help="approval signed by a second person (exchpatch approve): for --emergency, "
                        "--accept-irreversible, --allow-downgrade; repeatable")
    p.add_argument("--serial", nargs="+", metavar="N", help="batch sizes after the canary, e.g. 1 2 50%%")
    p.add_argument("--canary-bake", type=float, metavar="S", help="seconds the canary bakes under traffic")
    p.add_argument("--bake", type=float, metavar="S", help="seconds every other node bakes")
    p.add_argument("--on-failure", choices=["rollback", "halt"], default="rollback",
                   help="after a failed gate: roll back (default) or halt for a human")
    p.add_argument("--on-inconclusive", choices=["halt", "fail", "proceed"], default="halt",
                   help="a traffic gate with too few client requests to judge: halt for a human (default), "
                        "fail (roll back) or proceed with a warning")
    p.add_argument("--catalog", metavar="DIR", help="catalog folder (default: the testbed's, else patches/)")
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser("rollback", parents=[common, secrets, run], help="put a component back on its previous release")
    p.add_argument("--component", required=True, choices=["matching-engine", "wallet-signer"])
    p.add_argument("--to", metavar="VERSION", help="version to go back to (default: the previous one kept on disk)")
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("status", parents=[common, secrets], help="fleet versions, drift, HA roles, locks held")
    p.set_defaults(func=cmd_status)

    trail = argparse.ArgumentParser(add_help=False)
    trail.add_argument("--audit-file", metavar="FILE",
                       help="audit trail file (default: the state store's: $EXCHPATCH_STATE_STORE, else "
                            "$EXCHPATCH_AUDIT_FILE or ~/.local/state/exchpatch/audit.jsonl)")
    unverified = argparse.ArgumentParser(add_help=False)
    unverified.add_argument("--unverified", action="store_true",
                            help="read the trail even when its chain does not verify (default: refuse)")
    p = sub.add_parser("history", parents=[common, trail, unverified], help="every recorded run, newest last")
    p.set_defaults(func=cmd_history)
    p = sub.add_parser("metrics", parents=[common, trail, unverified],
                       help="MTTR per CVE, change failure rate, time to restore")
    p.add_argument("--prometheus", metavar="FILE", help="also write the Prometheus text format to FILE")
    p.set_defaults(func=cmd_metrics)
    p = sub.add_parser("report", parents=[common, trail, unverified], help="write a run's self-contained HTML report")
    p.add_argument("run", metavar="RUN", nargs="?", help="run id or unique prefix (default: the last run)")
    p.add_argument("--load", metavar="FILE", help="load generator JSON report to include")
    p.add_argument("--output", metavar="FILE", help="where to write the HTML (default: next to the audit trail)")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("audit", help="the audit trail")
    asub = p.add_subparsers(dest="audit_command", required=True)
    p = asub.add_parser("verify", parents=[common, trail], help="check the hash chain: edited, removed, reordered")
    p.set_defaults(func=cmd_audit_verify)
    p = asub.add_parser("export", parents=[common, trail, unverified],
                        help="write the trail as JSON Lines for an auditor (verifiable with audit verify)")
    p.add_argument("--output", metavar="FILE", required=True, help="the JSON Lines file to write (mode 0600)")
    p.set_defaults(func=cmd_audit_export)
    from exchpatch import store as store_cli

    store_cli.add_parser(sub, common)
    from exchpatch import approve as approve_cli

    approve_cli.add_parser(sub, common)
    from exchpatch import serve as serve_cli

    serve_cli.add_parser(sub, common)
    from exchpatch import feeds_cli

    feeds_cli.add_parser(sub, common)
    from exchpatch import exposure_cli

    exposure_cli.add_parser(sub, common)
    return parser


def _classify(exc: Exception) -> int | None:
    from exchpatch.approve import ApproveCliError
    from exchpatch.store import StoreCliError

    if isinstance(exc, CliError | StoreCliError | ApproveCliError):
        return exc.code
    # the testbed's errors, when a testbed command loaded it (an installed exchpatch has no testbed)
    fleet, release = sys.modules.get("testbed.fleet"), sys.modules.get("testbed.release")
    bad_input = tuple(getattr(m, n) for m, n in ((fleet, "TestbedInputError"), (release, "ReleaseError")) if m)
    failed = tuple(getattr(m, n) for m, n in ((fleet, "TestbedError"),) if m)
    if isinstance(exc, (*bad_input, ValueError)):
        return EXIT_BAD_INPUT
    if isinstance(exc, (*failed, OSError)):
        return EXIT_FAILED
    return None


def _refuse_templates(args: argparse.Namespace) -> None:
    """Every string a caller types is data: a template marker in any option is bad input (exit 2)."""
    from exchpatch.jobs import BadInput, refuse_template_markers

    for name, value in vars(args).items():
        if name == "func":
            continue
        try:
            refuse_template_markers(value, f"--{name.replace('_', '-')}" if name not in _POSITIONALS else name)
        except BadInput as e:
            raise CliError(str(e), EXIT_BAD_INPUT) from None


_POSITIONALS = ("patch_id", "run", "node", "command", "testbed_command", "audit_command", "store_command",
                "feeds_command")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], tuple[int, Any, str]] = args.func
    try:
        _refuse_templates(args)
        if args.command == "testbed":
            _use_checkout_testbed()
        code, doc, text = func(args)
    except Exception as e:
        code = _classify(e)
        if code is None:
            raise
        if args.json:
            print(json.dumps({"error": str(e)}))
        print(f"exchpatch: error: {e}", file=sys.stderr)
        return code
    try:
        print(json.dumps(doc, indent=2, sort_keys=False) if args.json else text, flush=True)
    except BrokenPipeError:  # e.g. `exchpatch ... | head -1`: the reader left, the exit code still counts
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return code


if __name__ == "__main__":
    sys.exit(main())
