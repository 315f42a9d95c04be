"""Benchmark our rollout against its floor and a naive rolling update, on one testbed fleet under client load.

Brings up the default testbed fleet (2 shards x primary/standby + 2 wallet nodes, HAProxy)
in a temporary folder, builds two signed matching-engine releases, and in the same run on
the same fleet, each under its own window of load from the load generator (--rate orders/s):

  0. the floor: the steps no rollout of this fleet can skip, measured directly, without Ansible
     (below), then
  1. ``playbooks/rolling_patch.yml -e patch_id=matching-engine-1.4.3`` (our rollout: canary,
     standbys first, switchover before a primary is patched, health gates), optionally
     ``playbooks/rollback.yml`` back to the baseline (--rollback), then
  2. ``bench/naive_rolling_update.yml`` rolling 1.4.4 the way ansible-examples'
     ``rolling_update.yml`` does (serial 1, disable in HAProxy, restart, wait_for the port,
     enable).

The floor is what our rollout would take if Ansible and the gates' own work cost nothing:

    floor = batches x restart_to_ready + switchovers x switchover + bakes

  restart_to_ready  ``supervisorctl -c <node>/etc/supervisord.conf restart matching-engine`` on one
                    standby, then its ``/v1/status`` polled every 20 ms until it is ready (a standby
                    following its primary) and caught up (its sequence, read after the primary's,
                    within 5 of it: the health gate's ``caught_up``); median of 3.
  switchover        on shard 0, what the switchover module does: ``POST /v1/ha/step-down`` to the
                    primary, ``POST /v1/ha/promote`` to the standby, poll until it is a ready primary,
                    flip HAProxy through its runtime API (``set server ... health up/down``), until
                    ``show servers state`` shows the new primary taking traffic and the old one not;
                    median of 3, each switched back the same way so the fleet is as before.
  batches           the sequential ``serial`` batches of the matching engine (the bench rolls nothing
                    else): 1 canary, the other standbys by ``rolling_serial[1:]``, the primaries by
                    ``rolling_serial`` (default [1, 2, "50%"]); nodes of one batch restart in parallel.
  switchovers       the canary switchover, then per batch of primaries ceil(n / max_switchovers) for
                    the n primaries still serving (``matching_node_max_switchovers``, default 4, is the
                    switchover task's throttle); the canary shard's primary is already a standby by
                    then and switches nothing.
  bakes             ``rolling_canary_bake`` (default 10) twice, for the canary's node gate and for the
                    canary switchover's traffic gate; ``matching_node_traffic_bake`` (default 5) per batch
                    of primaries that switched over; ``rolling_bake`` (default 0) per later batch.

Wallet nodes would add one batch each (serial 1) when the component is wallet-signer; the bench
rolls matching-engine only. Values in --ours-vars replace the defaults above. The floor is
measured under its own window of the same load, before the playbooks run, so a restart
replays a shorter journal than the rollout's later ones do.

All playbooks run through ansible-runner with a private data dir under the temporary folder;
the time of every batch (one ``serial`` batch of one play) comes from the job events. Prints the
floor and its steps, then the runs side by side (total time and its multiple of the floor,
batches, longest per-market unavailability, lost and duplicated orders, acked, errors, p99
latency), the per-batch breakdown and where the time went. ``--json`` prints one document::

    {"floor_s", "floor_steps": {"restart_to_ready_s", "switchover_s", "bakes_s", "batches",
     "switchover_batches"}, "floor_detail": {samples, plan, load},
     "ours": {"total_s", "max_unavailable_ms", "lost", "duplicated", "acked", "floor_multiple",
              "batches", "task_seconds", "traffic_gates", "load", ...},
     "ours_rollback": {...} (with --rollback), "naive": {...} (unless --skip-naive), "fleet": {...}}

The fleet is stopped and the folder removed at the end, also on error or Ctrl-C. Never run by
CI; tests do not assert on timing. Exit status: 0 when every playbook ran to the end and our
rollout lost nothing, 1 otherwise (also when the floor could not be measured), 130 when interrupted.

    .venv/bin/python bench/rollout.py [--rate 500] [--net 62] [--shards 2] [--wallets 2] [--skip-naive]
                                      [--rollback] [--cap S] [--ours-vars JSON] [--json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ansible_runner

# the testbed is the checkout's (the driver's wheel does not ship it)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from testbed import fleet as tb
from testbed.loadgen import LoadTarget, run_load
from testbed.release import build_release

REPO = Path(__file__).resolve().parent.parent
# collections/ holds the ignored link that makes the collection importable (as pytest's pythonpath does):
# the floor calls the nodes and HAProxy with the same client code our modules use
sys.path.insert(0, str(REPO / "collections"))
from ansible_collections.exchangeops.patching.plugins.module_utils._admin_api import (  # noqa: E402
    AdminApi,
    AdminApiError,
)
from ansible_collections.exchangeops.patching.plugins.module_utils._estimate import (  # noqa: E402
    DEFAULT_SERIAL,
    PlanError,
    batch_sizes,
    parse_serial,
)
from ansible_collections.exchangeops.patching.plugins.module_utils._haproxy import (  # noqa: E402
    HaproxyError,
    RuntimeApi,
    flip_commands,
)

BIN = Path(sys.executable).parent
OURS, OURS_BACK, NAIVE = "our rollout", "our rollback", "naive rolling update"
RUN_KEYS = {OURS: "ours", OURS_BACK: "ours_rollback", NAIVE: "naive"}  # the --json document's keys
COMPONENT = "matching-engine"
# the defaults of rolling_patch.yml and the matching_node role, replaced by --ours-vars
CANARY_BAKE, BAKE, TRAFFIC_BAKE, MAX_SWITCHOVERS = 10, 0, 5, 4
FLOOR_SAMPLES = 3
POLL_S = 0.02  # the switchover module polls a promoted node this often; the floor polls as often
MAX_LAG = 5  # health_gate's bounds.max_lag: a standby this close to its primary is caught up
STEP_TIMEOUT_S = 120.0  # one floor step (a restart, a wait for a caught-up standby) may take this long
PROMOTE_TIMEOUT_S = 30.0  # matching_node_switchover_timeout
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
        worst, worst_ms = worst_market(self.report)
        return {
            "release": self.release, "status": self.status, "total_s": round(self.total_s, 1),
            "max_unavailable_ms": worst_ms, "max_unavailable_market": worst,
            # the load report's audit, lifted to the top: what a reader of the issue compares first
            **{k: self.report.get(k) for k in AUDIT_KEYS},
            "batches": [{"play": b.play, "hosts": b.hosts, "seconds": round(b.seconds, 2)} for b in self.batches],
            "failures": self.failures, "versions": self.versions, "load": self.report, "traffic_gates": self.gates,
            "task_seconds": {k: round(v, 2) for k, v in sorted(self.tasks.items(), key=lambda kv: -kv[1])},
        }


AUDIT_KEYS = ("lost", "duplicated", "double_withdrawals", "acked")


def worst_market(report: dict[str, Any]) -> tuple[str | None, int]:
    """The market that was unavailable longest in a load report, and for how many ms (None, 0 when none was)."""
    unavailable = report.get("max_unavailable_ms") or {}
    worst = max(unavailable, key=unavailable.get) if unavailable else None
    return worst, unavailable.get(worst, 0) if worst else 0


@dataclass(frozen=True)
class FloorPlan:
    """The sequential steps of our rollout of the matching engine, as ``playbooks/rolling_patch.yml`` runs them.

    Every shard's standby and primary need the patch. Batch lists hold the nodes of each batch; a primary
    batch's number in ``primary_switching`` is how many of its primaries still serve and switch over.
    """

    standby_batches: tuple[int, ...]  # after the canary
    primary_batches: tuple[int, ...]
    primary_switching: tuple[int, ...]
    canary_bake: int
    bake: int
    traffic_bake: int
    max_switchovers: int

    @property
    def batches(self) -> int:
        return 1 + len(self.standby_batches) + len(self.primary_batches)

    @property
    def switchover_batches(self) -> int:
        """The canary switchover, then per batch of primaries its switchovers in rounds of ``max_switchovers``."""
        return 1 + sum(math.ceil(n / self.max_switchovers) for n in self.primary_switching)

    @property
    def bakes_s(self) -> int:
        switched = sum(1 for n in self.primary_switching if n)
        later = len(self.standby_batches) + len(self.primary_batches)
        return 2 * self.canary_bake + switched * self.traffic_bake + later * self.bake

    def bakes_text(self) -> str:
        switched = sum(1 for n in self.primary_switching if n)
        later = len(self.standby_batches) + len(self.primary_batches)
        return (f"canary bake {self.canary_bake} s x 2 (node gate, canary switchover) + traffic bake "
                f"{self.traffic_bake} s x {switched} primary batches that switched over + bake {self.bake} s x "
                f"{later} later batches")

    def as_json(self) -> dict[str, Any]:
        return {"canary_batches": 1, "standby_batches": list(self.standby_batches),
                "primary_batches": list(self.primary_batches), "primary_switchovers": list(self.primary_switching),
                "canary_bake": self.canary_bake, "bake": self.bake, "traffic_bake": self.traffic_bake,
                "max_switchovers": self.max_switchovers}


def floor_plan(shards: int, ours_vars: dict[str, Any]) -> FloorPlan:
    """The plan of a rollout of ``shards`` unpatched shards with the playbook's defaults and ``ours_vars``.

    PlanError or ValueError names a bad value. Standbys and primaries are in inventory order, so the canary
    (the first standby) is shard 0's; shard 0's primary, a standby since the canary switchover, is patched in
    the first batch of standbys (as playbooks/rolling_patch.yml does), so every batch of primaries switches over.
    """
    serial = parse_serial(ours_vars.get("rolling_serial", list(DEFAULT_SERIAL)))
    values: dict[str, int] = {}
    for name, var, default, least in (("canary_bake", "rolling_canary_bake", CANARY_BAKE, 0),
                                      ("bake", "rolling_bake", BAKE, 0),
                                      ("traffic_bake", "matching_node_traffic_bake", TRAFFIC_BAKE, 0),
                                      ("max_switchovers", "matching_node_max_switchovers", MAX_SWITCHOVERS, 1)):
        raw = ours_vars.get(var, default)
        try:
            values[name] = int(raw)
        except (TypeError, ValueError):
            values[name] = -1
        if isinstance(raw, bool) or values[name] < least:
            raise ValueError(f"{var}: {raw!r} is not a whole number of {least} or more")
    primaries = batch_sizes(shards - 1, serial)
    return FloorPlan(
        # the other standbys and the canary shard's old primary
        standby_batches=tuple(batch_sizes(shards, serial[1:] or serial)),
        primary_batches=tuple(primaries),
        primary_switching=tuple(primaries),
        **values)


@dataclass
class Floor:
    """The floor of our rollout on this fleet: the plan, and its restart and switchover measured without Ansible."""

    plan: FloorPlan
    restart_node: str = ""
    switchover_shard: int | None = None
    restart_s: list[float] = field(default_factory=list)  # restart to ready and caught up, per sample
    restart_ctl_s: list[float] = field(default_factory=list)  # of which until supervisorctl restart returned
    switchover_s: list[float] = field(default_factory=list)  # step-down to routed, per sample
    switchback_s: list[float] = field(default_factory=list)  # the same, switching back
    report: dict[str, Any] = field(default_factory=dict)  # the load report of the floor's window

    @property
    def restart_to_ready(self) -> float:
        return statistics.median(self.restart_s)

    @property
    def switchover(self) -> float:
        return statistics.median(self.switchover_s)

    @property
    def total_s(self) -> float:
        p = self.plan
        return p.batches * self.restart_to_ready + p.switchover_batches * self.switchover + p.bakes_s

    def formula(self) -> str:
        p = self.plan
        return (f"{p.batches} batches x {self.restart_to_ready:.2f} s + {p.switchover_batches} switchovers x "
                f"{self.switchover:.3f} s + bakes {p.bakes_s} s = {self.total_s:.1f} s")

    def steps_json(self) -> dict[str, Any]:
        return {"restart_to_ready_s": round(self.restart_to_ready, 3), "switchover_s": round(self.switchover, 3),
                "bakes_s": self.plan.bakes_s, "batches": self.plan.batches,
                "switchover_batches": self.plan.switchover_batches}

    def detail_json(self) -> dict[str, Any]:
        worst, worst_ms = worst_market(self.report)
        return {
            "formula": self.formula(), "plan": self.plan.as_json(), "bakes": self.plan.bakes_text(),
            "restart_node": self.restart_node, "restart_to_ready_samples_s": [round(s, 3) for s in self.restart_s],
            "supervisorctl_restart_samples_s": [round(s, 3) for s in self.restart_ctl_s],
            "switchover_shard": self.switchover_shard,
            "switchover_samples_s": [round(s, 3) for s in self.switchover_s],
            "switchback_samples_s": [round(s, 3) for s in self.switchback_s],
            "load": {**{k: self.report.get(k) for k in AUDIT_KEYS}, "max_unavailable_ms": worst_ms,
                     "max_unavailable_market": worst},
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


class BenchError(RuntimeError):
    """The bench could not measure something; the message names the node, what was seen and where to look."""


def admin(node: tb.NodeSpec) -> AdminApi:
    return AdminApi(node.url, node.token(), request_timeout=2.0)


def node_status(api: AdminApi) -> dict[str, Any] | None:
    """The node's ``/v1/status``, or None while it does not answer (restarting)."""
    try:
        return api.get_json("/v1/status")
    except AdminApiError:
        return None


def wait_until(what: str, check: Callable[[], bool], timeout: float) -> None:
    """Poll ``check`` every POLL_S until it holds; BenchError naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            raise BenchError(f"{what}: not within {timeout:g} s; see the node logs under <testbed>/nodes/*/log/")
        time.sleep(POLL_S)


def standby_caught_up(node: AdminApi, primary: AdminApi) -> bool:
    """The health gate's ``ready`` and ``caught_up`` for a standby: ready (following its primary), and its
    sequence within MAX_LAG of the primary's, "behind" judged on a read of the standby taken after the primary's."""
    before = node_status(node)
    if not before or before.get("ha_role") != "standby" or not before.get("ready") \
            or (before.get("replication") or {}).get("state") != "following":
        return False
    peer, after = node_status(primary), node_status(node)
    if not peer or not after or peer.get("ha_role") != "primary":
        return False
    seq, peer_seq, seq_after = (int(d.get("seq", -1)) for d in (before, peer, after))
    return seq_after >= peer_seq - MAX_LAG and seq <= peer_seq + MAX_LAG


def ready_primary(node: AdminApi) -> bool:
    st = node_status(node)
    return bool(st and st.get("ha_role") == "primary" and st.get("ready"))


def measure_restart(node: tb.NodeSpec, primary: tb.NodeSpec) -> tuple[float, float]:
    """Restart a standby's program by supervisorctl, as the role's handler does, and time it until the standby
    is ready and caught up; (seconds, of which until supervisorctl returned)."""
    n, p = admin(node), admin(primary)
    wait_until(f"{node.name} ready and caught up before its restart", lambda: standby_caught_up(n, p),
               STEP_TIMEOUT_S)
    t0 = time.monotonic()
    try:
        res = tb.supervisorctl(node, "restart", node.program, timeout=STEP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise BenchError(f"supervisorctl -c {node.supervisor_conf} restart {node.program}: no answer within "
                         f"{STEP_TIMEOUT_S:g} s") from None
    ctl = time.monotonic() - t0
    if res.returncode != 0 or "ERROR" in res.stdout:
        raise BenchError(f"supervisorctl -c {node.supervisor_conf} restart {node.program} failed "
                         f"(exit {res.returncode}): {(res.stdout + res.stderr).strip()[:300]}")
    wait_until(f"{node.name} ready and caught up with {primary.name} after its restart",
               lambda: standby_caught_up(n, p), STEP_TIMEOUT_S)
    return time.monotonic() - t0, ctl


def measure_switchover(haproxy: RuntimeApi, primary: tb.NodeSpec, standby: tb.NodeSpec) -> float:
    """Switch a shard over as the switchover module does (step-down, promote, wait for a ready primary, flip
    HAProxy) and time it from the step-down until HAProxy routes to the new primary and not to the old one."""
    p, s = admin(primary), admin(standby)
    backend = primary.backend
    wait_until(f"{standby.name} ready and caught up before the switchover", lambda: standby_caught_up(s, p),
               STEP_TIMEOUT_S)
    t0 = time.monotonic()
    try:
        p.post_json("/v1/ha/step-down", {})
        s.post_json("/v1/ha/promote", {"force": False})
    except AdminApiError as e:
        raise BenchError(f"switchover of shard {primary.shard} from {primary.name} to {standby.name}: {e}; "
                         "check which node serves with `exchpatch testbed status`") from None
    wait_until(f"{standby.name} a ready primary after its promote", lambda: ready_primary(s), PROMOTE_TIMEOUT_S)

    def routed() -> bool:
        servers = haproxy.servers_state(backend)
        return servers[standby.name].takes_traffic and not servers[primary.name].takes_traffic

    try:
        haproxy.run(flip_commands(backend, standby.name, primary.name))
        wait_until(f"HAProxy {backend} routing to {standby.name} only", routed, 5.0)
    except (HaproxyError, KeyError) as e:
        raise BenchError(f"HAProxy {backend}: the flip to {standby.name} failed ({e})") from None
    return time.monotonic() - t0


def measure_floor(f: tb.Fleet, floor: Floor) -> None:
    """Restart shard 0's standby FLOOR_SAMPLES times, then switch shard 0 over and back FLOOR_SAMPLES times."""
    primary = next(n for n in f.nodes if n.component == COMPONENT and n.initial_role == "primary")
    standby = f.node(primary.peer or "")
    floor.restart_node, floor.switchover_shard = standby.name, primary.shard
    for i in range(FLOOR_SAMPLES):
        took, ctl = measure_restart(standby, primary)
        floor.restart_s.append(took)
        floor.restart_ctl_s.append(ctl)
        say(f"floor: restart {i + 1}/{FLOOR_SAMPLES} of {standby.name} to ready and caught up in {took:.2f} s "
            f"(supervisorctl restart returned after {ctl:.2f} s)")
    haproxy = RuntimeApi(f.haproxy_socket)
    for i in range(FLOOR_SAMPLES):
        floor.switchover_s.append(measure_switchover(haproxy, primary, standby))
        # and back: the old standby is the primary now
        floor.switchback_s.append(measure_switchover(haproxy, primary=standby, standby=primary))
        say(f"floor: switchover {i + 1}/{FLOOR_SAMPLES} of shard {primary.shard} to {standby.name} in "
            f"{floor.switchover_s[-1]:.3f} s, back to {primary.name} in {floor.switchback_s[-1]:.3f} s")


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
                 interrupt: Interrupt, run: Run, cap: int) -> None:
    """Run ``playbook`` through ansible-runner into ``run``; ansible-runner stops it after ``cap`` seconds."""
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
                               timeout=cap)
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


def bench(args: argparse.Namespace, plan: FloorPlan, interrupt: Interrupt) -> tuple[list[Run], dict[str, Any], Floor]:
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

        floor = Floor(plan)
        say(f"floor: {FLOOR_SAMPLES} restarts and {FLOOR_SAMPLES} switchovers without Ansible under "
            f"{args.rate:g} orders/s")
        floor.report = under_load(f, args.rate, lambda: measure_floor(f, floor))
        say(f"floor: {floor.formula()}")
        if any(floor.report.get(k) for k in ("lost", "duplicated", "double_withdrawals")):
            say("BUG: the floor's restarts and switchovers lost or duplicated client requests: "
                + ", ".join(f"{k} {floor.report.get(k)}" for k in ("lost", "duplicated", "double_withdrawals")))

        ours_vars: dict[str, Any] = {**args.ours_vars, "patch_id": rels[0].id}
        say(f"{OURS}: playbooks/rolling_patch.yml -e patch_id={rels[0].id} under {args.rate:g} orders/s")
        ours.report = under_load(f, args.rate, lambda: run_playbook(
            root, "ours", REPO / "playbooks" / "rolling_patch.yml", f.inventory_dir, ours_vars, interrupt, ours,
            args.cap))
        ours.versions = versions(f)
        say(f"{OURS}: {ours.status} in {ours.total_s:.1f} s ({ours.total_s / floor.total_s:.1f}x floor)")
        runs = [ours]
        if args.rollback:
            back = Run(OURS_BACK, f"{rels[0].version} -> {base}")
            say(f"{OURS_BACK}: playbooks/rollback.yml -e component={COMPONENT} under {args.rate:g} orders/s")
            back_vars = {**{k: v for k, v in args.ours_vars.items() if k != "patch_id"}, "component": COMPONENT,
                         "version": base}
            back.report = under_load(f, args.rate, lambda: run_playbook(
                root, "ours-back", REPO / "playbooks" / "rollback.yml", f.inventory_dir, back_vars, interrupt, back,
                args.cap))
            back.versions = versions(f)
            say(f"{OURS_BACK}: {back.status} in {back.total_s:.1f} s")
            runs.append(back)
        if args.skip_naive:
            return runs, fleet_info, floor

        naive_vars = {"naive_version": rels[1].version, "naive_artifact": rels[1].artifact,
                      "naive_sha256": rels[1].sha256}
        say(f"{NAIVE}: bench/naive_rolling_update.yml to {rels[1].version} under {args.rate:g} orders/s")
        naive.report = under_load(f, args.rate, lambda: run_playbook(
            root, "naive", REPO / "bench" / "naive_rolling_update.yml", f.inventory_dir, naive_vars, interrupt,
            naive, args.cap))
        naive.versions = versions(f)
        say(f"{NAIVE}: {naive.status} in {naive.total_s:.1f} s")
        return [*runs, naive], fleet_info, floor
    finally:
        say(f"stopping the fleet and removing {root}")
        try:
            if (root / "testbed.json").exists():
                tb.down(root)
        finally:
            shutil.rmtree(root, ignore_errors=True)


def versions(f: tb.Fleet) -> dict[str, str | None]:
    return {n.name: tb.node_status(n).get("version") for n in f.nodes if n.component == COMPONENT}


def table(rows: list[list[str]], right_from: int = 1, right_until: int | None = None) -> str:
    """Columns padded to one width; columns right_from up to (not including) right_until right-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    until = len(widths) if right_until is None else right_until
    return "\n".join("  ".join(c.rjust(w) if right_from <= i < until else c.ljust(w) for i, (c, w) in
                               enumerate(zip(r, widths))).rstrip() for r in rows)


def document(runs: list[Run], fleet_info: dict[str, Any], floor: Floor) -> dict[str, Any]:
    """The --json document: the floor and its steps, one object per run by its key, the fleet."""
    doc: dict[str, Any] = {"floor_s": round(floor.total_s, 1), "floor_steps": floor.steps_json(),
                           "floor_detail": floor.detail_json()}
    for r in runs:
        doc[RUN_KEYS[r.name]] = r.as_json()
    doc["ours"]["floor_multiple"] = round(runs[0].total_s / floor.total_s, 2)
    doc["fleet"] = fleet_info
    return doc


def render_floor(floor: Floor) -> str:
    p = floor.plan

    def samples(values: list[float], digits: int) -> str:
        return " ".join(f"{v:.{digits}f}" for v in values)

    rows = [["floor step", "s", "how it was measured"],
            [f"restart to ready and caught up ({floor.restart_node})", f"{floor.restart_to_ready:.2f}",
             f"median of {samples(floor.restart_s, 2)}; supervisorctl restart returned after "
             f"{samples(floor.restart_ctl_s, 2)}"],
            [f"switchover (shard {floor.switchover_shard})", f"{floor.switchover:.3f}",
             f"median of {samples(floor.switchover_s, 3)}, step-down to HAProxy routing to the new primary; "
             f"back: {samples(floor.switchback_s, 3)}"],
            ["bakes", str(p.bakes_s), p.bakes_text()],
            ["batches", str(p.batches), f"1 canary + standbys {list(p.standby_batches)} + primaries "
                                        f"{list(p.primary_batches)}"],
            ["switchovers (sequential)", str(p.switchover_batches),
             f"1 canary + per primary batch {list(p.primary_switching)} in rounds of {p.max_switchovers}"]]
    worst, worst_ms = worst_market(floor.report)
    audit = ", ".join(f"{k} {floor.report.get(k, '-')}" for k in AUDIT_KEYS)
    return "\n".join([
        "floor: the unavoidable sequential steps of our rollout, measured on this fleet without Ansible, "
        "under the same load",
        table(rows, right_from=1, right_until=2),
        f"floor = {floor.formula()}",
        f"floor window: {audit}; longest market unavailability {worst_ms} ms" + (f" ({worst})" if worst else "")])


def render(runs: list[Run], fleet_info: dict[str, Any], floor: Floor) -> str:
    docs = [r.as_json() for r in runs]

    def load(key: str, d: dict[str, Any]) -> str:
        return str(d["load"].get(key, "-"))

    target = {r.name: r.release.split(" -> ")[-1] for r in runs}
    rows = [["", *(r.name for r in runs)],
            ["release", *(r.release for r in runs)],
            ["playbook status", *(r.status for r in runs)],
            ["total time (s)", *(f"{r.total_s:.1f}" for r in runs)],
            [f"vs the floor ({floor.total_s:.1f} s)",
             *(("" if r.status == "successful" else f"{r.status} after ") + f"{r.total_s / floor.total_s:.1f}x floor"
               if r.name == OURS else "-" for r in runs)],
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
           render_floor(floor), "",
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
                         "default: the playbook's defaults (the floor's bakes and batches follow them)")
    ap.add_argument("--json", action="store_true", help="print one JSON document, nothing else")
    args = ap.parse_args()
    if args.rate <= 0 or not 1 <= args.net <= 254 or not 1 <= args.shards <= 100 or not 0 <= args.wallets <= 20:
        ap.error("--rate must be positive, --net between 1 and 254, --shards 1 to 100, --wallets 0 to 20")
    if args.cap <= 0:
        ap.error(f"--cap must be a positive number of seconds, got {args.cap}")
    if not isinstance(args.ours_vars, dict):
        ap.error("--ours-vars must be a JSON object")
    try:
        plan = floor_plan(args.shards, args.ours_vars)
    except (PlanError, ValueError, TypeError) as e:
        ap.error(f"--ours-vars: {e}")

    interrupt = Interrupt()
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        runs, fleet_info, floor = bench(args, plan, interrupt)
    except KeyboardInterrupt:
        say("interrupted; the fleet was stopped and its folder removed")
        return 130
    except BenchError as e:
        say(f"bench failed: {e}; the fleet was stopped and its folder removed")
        return 1
    if args.json:
        print(json.dumps(document(runs, fleet_info, floor), indent=2))
    else:
        print(render(runs, fleet_info, floor))
    ours = runs[0].report
    if ours.get("lost") or ours.get("duplicated") or ours.get("double_withdrawals"):
        say(f"BUG: {OURS} lost or duplicated client requests: lost {ours.get('lost')}, "
            f"duplicated {ours.get('duplicated')}, double withdrawals {ours.get('double_withdrawals')}")
        return 1
    return 0 if all(r.status == "successful" for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
