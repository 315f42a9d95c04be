"""Benchmark our rollout against a naive rolling update, on one testbed fleet under client load.

Brings up the default testbed fleet (2 shards x primary/standby + 2 wallet nodes, HAProxy)
in a temporary folder, builds two signed matching-engine releases, and in the same run on
the same fleet, each under its own window of load from the load generator (--rate orders/s):

  1. ``playbooks/rolling_patch.yml -e patch_id=matching-engine-1.4.3`` (our rollout: canary,
     standbys first, switchover before a primary is patched, health gates), then
  2. ``bench/naive_rolling_update.yml`` rolling 1.4.4 the way ansible-examples'
     ``rolling_update.yml`` does (serial 1, disable in HAProxy, restart, wait_for the port,
     enable).

Both run through ansible-runner with a private data dir under the temporary folder; the
time of every batch (one ``serial`` batch of one play) comes from the job events. Prints
the two side by side (total time, batches, longest per-market unavailability, lost and
duplicated orders, acked, errors, p99 latency) and the per-batch breakdown. The fleet is
stopped and the folder removed at the end, also on error or Ctrl-C. Never run by CI; tests
do not assert on timing. Exit status: 0 when both playbooks ran to the end and our rollout
lost nothing, 1 otherwise, 130 when interrupted.

    .venv/bin/python bench/rollout.py [--rate 500] [--net 62] [--shards 2] [--wallets 2] [--skip-naive]
                                      [--rollback] [--ours-vars JSON] [--json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ansible_runner

from testbed import fleet as tb
from testbed.loadgen import LoadTarget, run_load
from testbed.release import build_release

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# how long one playbook may run before ansible-runner stops it (--cap)
CAP = [1800]
OURS, OURS_BACK, NAIVE = "our rollout", "our rollback", "naive rolling update"
COMPONENT = "matching-engine"
HOST_EVENTS = ("runner_on_ok", "runner_on_failed", "runner_on_skipped", "runner_on_unreachable",
               "runner_item_on_ok", "runner_item_on_failed")


@dataclass
class Batch:
    """One ``serial`` batch of one play, timed from its play-start event to the next one."""

    play: str
    start: dt.datetime
    end: dt.datetime | None = None
    hosts: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds() if self.end else 0.0


@dataclass
class Run:
    """One playbook run under load: what ansible-runner and the load generator reported."""

    name: str
    release: str
    status: str = "not run"
    total_s: float = 0.0
    batches: list[Batch] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str | None] = field(default_factory=dict)
    # health_gate outcomes of the run's traffic gates (on promoted nodes and wallets): passed, failed, inconclusive
    gates: dict[str, int] = field(default_factory=dict)
    # wall time per task name, summed over every batch that ran it (where a rollout spends its time)
    tasks: dict[str, float] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        unavailable = self.report.get("max_unavailable_ms") or {}
        worst = max(unavailable, key=unavailable.get) if unavailable else None
        return {
            "release": self.release, "status": self.status, "total_s": round(self.total_s, 1),
            "batches": [{"play": b.play, "hosts": b.hosts, "seconds": round(b.seconds, 2)} for b in self.batches],
            "max_unavailable_ms": unavailable.get(worst, 0) if worst else 0, "max_unavailable_market": worst,
            "failures": self.failures, "versions": self.versions, "load": self.report, "traffic_gates": self.gates,
            "task_seconds": {k: round(v, 2) for k, v in sorted(self.tasks.items(), key=lambda kv: -kv[1])},
        }


class Interrupt:
    """SIGINT/SIGTERM: cancel a playbook in flight through ansible-runner, otherwise raise KeyboardInterrupt."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.in_runner = False

    def __call__(self, signum: int, _frame: Any) -> None:
        if self.event.is_set():
            return  # already stopping: let the cleanup finish
        self.event.set()
        if not self.in_runner:
            raise KeyboardInterrupt(signal.Signals(signum).name)


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def batches_from_events(events: list[dict[str, Any]]) -> list[Batch]:
    """Cut the job events into batches: ansible sends a play-start event for every serial batch."""
    batches: list[Batch] = []
    for ev in events:
        kind, data = ev.get("event"), ev.get("event_data") or {}
        created = dt.datetime.fromisoformat(ev["created"]) if ev.get("created") else None
        if kind in ("playbook_on_play_start", "playbook_on_stats") and created:
            if batches and batches[-1].end is None:
                batches[-1].end = created
            if kind == "playbook_on_play_start":
                batches.append(Batch(data.get("play") or data.get("name") or "?", created))
        elif kind in HOST_EVENTS and batches and data.get("host") and data["host"] not in batches[-1].hosts:
            batches[-1].hosts.append(data["host"])
    return [b for b in batches if b.hosts]  # plays that matched no host took no time worth a row


def task_seconds(events: list[dict[str, Any]]) -> dict[str, float]:
    """Wall time per task: from its task-start event to the next task, play or end event, summed by name."""
    out: dict[str, float] = {}
    current: tuple[str, dt.datetime] | None = None
    for ev in events:
        kind, data = ev.get("event"), ev.get("event_data") or {}
        if kind not in ("playbook_on_task_start", "playbook_on_handler_task_start", "playbook_on_play_start",
                        "playbook_on_stats") or not ev.get("created"):
            continue
        created = dt.datetime.fromisoformat(ev["created"])
        if current:
            out[current[0]] = out.get(current[0], 0.0) + (created - current[1]).total_seconds()
        name = data.get("task") or data.get("name") or "?"
        role = data.get("role")
        current = (f"{role} : {name}" if role else name, created) if "task_start" in kind else None
    return out


def run_playbook(root: Path, ident: str, playbook: Path, inventory: str, extravars: dict[str, Any],
                 interrupt: Interrupt, run: Run) -> None:
    events: list[dict[str, Any]] = []

    def on_event(ev: dict[str, Any]) -> bool:
        events.append(ev)
        data = ev.get("event_data") or {}
        res = data.get("res") or {}
        if ev.get("event") in ("runner_on_ok", "runner_on_failed") and isinstance(res, dict) \
                and res.get("outcome") and "error_rate" in (res.get("checks") or []):
            run.gates[res["outcome"]] = run.gates.get(res["outcome"], 0) + 1
        if ev.get("event") == "runner_on_failed" and not (ev.get("event_data") or {}).get("ignore_errors"):
            res = ev["event_data"].get("res") or {}
            run.failures.append(f"{ev['event_data'].get('host')}: {ev['event_data'].get('task')}: "
                                f"{res.get('msg', 'failed')}")
        return True

    env = {"ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    (root / "runner").mkdir(mode=0o700, exist_ok=True)
    interrupt.in_runner = True
    t0 = time.monotonic()
    try:
        r = ansible_runner.run(private_data_dir=str(root / "runner"), ident=ident, project_dir=str(REPO),
                               playbook=str(playbook), inventory=inventory, extravars=extravars, envvars=env,
                               quiet=True, event_handler=on_event, cancel_callback=interrupt.event.is_set,
                               timeout=CAP[0])
    finally:
        interrupt.in_runner = False
    run.total_s = time.monotonic() - t0
    run.status = r.status
    run.batches = batches_from_events(events)
    run.tasks = task_seconds(events)
    if interrupt.event.is_set():
        raise KeyboardInterrupt("canceled")


def under_load(f: tb.Fleet, rate: float, action) -> dict[str, Any]:
    """Run ``action()`` while the load generator sends orders and withdrawals; return the load report."""
    target = LoadTarget(f.frontend_url, f.markets(), f.chains(),
                        [(n.url, n.token()) for n in f.nodes if n.component == "wallet-signer"])
    stop = threading.Event()
    box: dict[str, Any] = {}
    t = threading.Thread(target=lambda: box.update(report=run_load(target, rate, 3600, stop=stop).as_json()),
                         daemon=True)
    t.start()
    try:
        time.sleep(2)
        action()
        time.sleep(2)
    except BaseException:
        stop.set()  # the fleet goes down next; the audit is not worth waiting for
        t.join(timeout=5)
        raise
    stop.set()
    t.join(timeout=180)
    if "report" not in box:
        raise RuntimeError("the load generator did not finish its audit within 180 s")
    return box["report"]


def bench(args: argparse.Namespace, interrupt: Interrupt) -> tuple[list[Run], dict[str, Any]]:
    root = Path(tempfile.mkdtemp(prefix="bench-rollout-"))
    try:
        say(f"starting a fleet of {args.shards} shards and {args.wallets} wallets on 127.{args.net}.0.0/16 in {root}")
        t0 = time.monotonic()
        # an empty market calendar (--ours-vars preflight_schedule overrides it): the bench measures the
        # rollout, and the testbed's funding windows would refuse it at some times of day, as they should
        f = tb.up(root, shards=args.shards, wallets=args.wallets, net=args.net, timeout=120 + 10 * args.shards,
                  freeze_windows=tb.empty_calendar(root))
        fleet_info = {"shards": f.shards, "wallets": f.wallets, "nodes": len(f.nodes),
                      "up_s": round(time.monotonic() - t0, 1), "rate": args.rate, "ours_vars": args.ours_vars}
        base = tb.BASELINE[COMPONENT]
        rels = [build_release(root / "releases", root / "keys", root / "catalog", COMPONENT, v)
                for v in ("1.4.3", "1.4.4")]
        ours = Run(OURS, f"{base} -> {rels[0].version}")
        naive = Run(NAIVE, f"{rels[0].version} -> {rels[1].version}")

        ours_vars: dict[str, Any] = {**args.ours_vars, "patch_id": rels[0].id}
        say(f"{OURS}: playbooks/rolling_patch.yml -e patch_id={rels[0].id} under {args.rate:g} orders/s")
        ours.report = under_load(f, args.rate, lambda: run_playbook(
            root, "ours", REPO / "playbooks" / "rolling_patch.yml", f.inventory_dir, ours_vars, interrupt, ours))
        ours.versions = versions(f)
        say(f"{OURS}: {ours.status} in {ours.total_s:.1f} s")
        runs = [ours]
        if args.rollback:
            back = Run(OURS_BACK, f"{rels[0].version} -> {base}")
            say(f"{OURS_BACK}: playbooks/rollback.yml -e component={COMPONENT} under {args.rate:g} orders/s")
            back_vars = {**{k: v for k, v in args.ours_vars.items() if k != "patch_id"}, "component": COMPONENT,
                         "version": base}
            back.report = under_load(f, args.rate, lambda: run_playbook(
                root, "ours-back", REPO / "playbooks" / "rollback.yml", f.inventory_dir, back_vars, interrupt, back))
            back.versions = versions(f)
            say(f"{OURS_BACK}: {back.status} in {back.total_s:.1f} s")
            runs.append(back)
        if args.skip_naive:
            return runs, fleet_info

        naive_vars = {"naive_version": rels[1].version, "naive_artifact": rels[1].artifact,
                      "naive_sha256": rels[1].sha256}
        say(f"{NAIVE}: bench/naive_rolling_update.yml to {rels[1].version} under {args.rate:g} orders/s")
        naive.report = under_load(f, args.rate, lambda: run_playbook(
            root, "naive", REPO / "bench" / "naive_rolling_update.yml", f.inventory_dir, naive_vars, interrupt,
            naive))
        naive.versions = versions(f)
        say(f"{NAIVE}: {naive.status} in {naive.total_s:.1f} s")
        return [*runs, naive], fleet_info
    finally:
        say(f"stopping the fleet and removing {root}")
        try:
            if (root / "testbed.json").exists():
                tb.down(root)
        finally:
            shutil.rmtree(root, ignore_errors=True)


def versions(f: tb.Fleet) -> dict[str, str | None]:
    return {n.name: tb.node_status(n).get("version") for n in f.nodes if n.component == COMPONENT}


def table(rows: list[list[str]], right_from: int = 1) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) if i >= right_from else c.ljust(w) for i, (c, w) in
                               enumerate(zip(r, widths))).rstrip() for r in rows)


def render(runs: list[Run], fleet_info: dict[str, Any]) -> str:
    docs = [r.as_json() for r in runs]

    def load(key: str, d: dict[str, Any]) -> str:
        return str(d["load"].get(key, "-"))

    target = {r.name: r.release.split(" -> ")[-1] for r in runs}
    rows = [["", *(r.name for r in runs)],
            ["release", *(r.release for r in runs)],
            ["playbook status", *(r.status for r in runs)],
            ["total time (s)", *(f"{r.total_s:.1f}" for r in runs)],
            ["batches (plays x serial)", *(str(len(r.batches)) for r in runs)],
            ["longest batch (s)", *(f"{max((b.seconds for b in r.batches), default=0):.1f}" for r in runs)],
            ["longest market unavailability (ms)",
             *(f"{d['max_unavailable_ms']} ({d['max_unavailable_market']})" if d["max_unavailable_ms"] else "0"
               for d in docs)],
            ["lost orders", *(load("lost", d) for d in docs)],
            ["duplicated orders", *(load("duplicated", d) for d in docs)],
            ["double withdrawals", *(load("double_withdrawals", d) for d in docs)],
            ["acked", *(load("acked", d) for d in docs)],
            ["unacked (gave up after retries)", *(load("unacked", d) for d in docs)],
            ["errors (failed attempts)", *(load("errors", d) for d in docs)],
            ["p99 latency (ms)", *(str(d["load"].get("latency_ms", {}).get("p99", "-")) for d in docs)],
            ["achieved rate (req/s)", *(load("achieved_rate", d) for d in docs)],
            ["traffic gates passed/failed/inconclusive",
             *("/".join(str(r.gates.get(k, 0)) for k in ("passed", "failed", "inconclusive")) for r in runs)],
            ["nodes on the target release",
             *(f"{sum(v == target[r.name] for v in r.versions.values())}/{len(r.versions)}" for r in runs)]]
    out = [f"fleet: {fleet_info['shards']} shards x primary/standby + {fleet_info['wallets']} wallets "
           f"({fleet_info['nodes']} nodes, up in {fleet_info['up_s']} s); load {fleet_info['rate']:g} req/s", "",
           table(rows), "", "per batch (one serial batch of one play; time from its play start to the next):"]
    brows = [["run", "#", "play", "hosts", "s"]]
    for r in runs:
        for i, b in enumerate(r.batches, 1):
            brows.append([r.name, str(i), b.play[:60], ",".join(b.hosts), f"{b.seconds:.1f}"])
    out.append(table(brows, right_from=4))
    for r in runs:
        top = sorted(r.tasks.items(), key=lambda kv: -kv[1])[:12]
        if top:
            out += ["", f"{r.name}: where the time went (wall s per task, summed over batches; top {len(top)})"]
            out.append(table([["task", "s"], *([name[:90], f"{s:.1f}"] for name, s in top)]))
    for r in runs:
        for msg in r.failures[:3]:
            out.append(f"{r.name} failed: {msg[:400]}")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=500, help="orders (and withdrawals) per second; default 500")
    ap.add_argument("--net", type=int, default=62, help="second octet of the fleet's loopback /16; default 62")
    ap.add_argument("--shards", type=int, default=2, help="matching shards (2 nodes each); default 2")
    ap.add_argument("--wallets", type=int, default=2, help="wallet-signer nodes; default 2")
    ap.add_argument("--skip-naive", action="store_true", help="run our rollout only (large fleets)")
    ap.add_argument("--rollback", action="store_true",
                    help="after our rollout, roll the fleet back with playbooks/rollback.yml under the same load")
    ap.add_argument("--cap", type=int, default=1800, metavar="S",
                    help="stop a playbook that runs longer than S seconds (ansible-runner's timeout); default 1800")
    ap.add_argument("--ours-vars", type=json.loads, default={}, metavar="JSON",
                    help="extra vars for our rollout as a JSON object, e.g. '{\"rolling_canary_bake\": 3}'; "
                         "default: the playbook's defaults")
    ap.add_argument("--json", action="store_true", help="print one JSON document, nothing else")
    args = ap.parse_args()
    CAP[0] = args.cap
    if args.rate <= 0 or not 1 <= args.net <= 254 or not 1 <= args.shards <= 100 or not 0 <= args.wallets <= 20:
        ap.error("--rate must be positive, --net between 1 and 254, --shards 1 to 100, --wallets 0 to 20")
    if not isinstance(args.ours_vars, dict):
        ap.error("--ours-vars must be a JSON object")

    interrupt = Interrupt()
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        runs, fleet_info = bench(args, interrupt)
    except KeyboardInterrupt:
        say("interrupted; the fleet was stopped and its folder removed")
        return 130
    if args.json:
        print(json.dumps({"fleet": fleet_info, "runs": {r.name: r.as_json() for r in runs}}, indent=2))
    else:
        print(render(runs, fleet_info))
    ours = runs[0].report
    if ours.get("lost") or ours.get("duplicated") or ours.get("double_withdrawals"):
        say(f"BUG: {OURS} lost or duplicated client requests: lost {ours.get('lost')}, "
            f"duplicated {ours.get('duplicated')}, double withdrawals {ours.get('double_withdrawals')}")
        return 1
    return 0 if all(r.status == "successful" for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
