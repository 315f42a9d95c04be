# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The rollout report's model: one run's timeline, read from its audit records.

``read_timeline(records)`` turns a run's records (in order) into steps (host, task, phase, start,
end, status, message, on a rollback band or not), health gates with their checks, failures, the
pre-rollout baselines and the first and last version read from every node. The HTML view is
``_report``; the change record (who, what, outcome) is ``_changes.merge_change``.

Each step's phase comes from its task name with one table, ``PHASE_PATTERNS`` (first match wins;
anything else is ``other``), so keeping the report in step with the playbooks means editing that
table only. Steps inside a rollback play (``ROLLBACK_PLAY``) are drawn over a rollback band,
whatever their phase. Missing fields and unreachable hosts are what is known, never success.
Pure standard library.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

# --------------------------------------------------------------------------- phases


@dataclass(frozen=True)
class Phase:
    name: str
    label: str
    colour: str
    meaning: str


PHASES = (
    Phase("preflight", "preflight / lock", "#8e9aaf",
          "catalog, signature, nodes, calendar, lock, order of the rollout; the lock's release at the end"),
    Phase("baseline", "baseline", "#b8c4d6", "error rate and p99 sampled before the rollout"),
    Phase("drain", "drain", "#f2b134", "out of HAProxy, market mode changed, withdrawals paused"),
    Phase("switch", "switch release", "#6a4c93", "release staged, unpacked beside the old one, symlink switched"),
    Phase("restart", "restart", "#1982c4", "service restarted"),
    Phase("switchover", "switchover", "#ff7f50", "primary stepped down, patched standby promoted"),
    Phase("gate", "health gates", "#2a9d8f", "ready, version, caught up, state hash, error rate, p99, ledger"),
    Phase("resume", "resume", "#8ac926", "back in HAProxy, withdrawals resumed"),
    Phase("verify", "verify", "#577590", "every node answers and runs the expected version"),
    Phase("rollback", "rollback", "#e07a5f", "deciding and queueing the rollback"),
    Phase("other", "other", "#d3d3d3", "reads and bookkeeping"),
)
PHASE_BY_NAME = {p.name: p for p in PHASES}

# Task name (case-insensitive search) -> phase; first match wins. Keep in step with
# playbooks/*.yml, playbooks/tasks/*.yml and roles/*/tasks|handlers/*.yml.
PHASE_PATTERNS: tuple[tuple[str, str], ...] = (
    # rollback decisions on the controller (the rollback's own steps keep their phases, on a band)
    (r"\broll(ed)? (the \w+ node )?back\b|\bfor the rollback\b|\bswitch the node back\b", "rollback"),
    # drain: load balancer, market mode, withdrawals
    (r"\bdrain\b|\bmarket mode\b|\bpause withdrawals\b|\bin-flight signing\b", "drain"),
    # health gates (handlers and traffic gates)
    (r"\bhealth gates?\b|\bgate the\b|\bgates?\b.*\bbefore the next\b", "gate"),
    # switchover on a primary: hand over, step down, promote
    (r"\bstep the primary down\b|\bpromoted?\b|\bhand the (primary role|shard)\b|\bswitchover\b|"
     r"\bstandby's live status\b", "switchover"),
    # the release switch
    (r"\brelease artifacts?\b|\bstage the release\b|\bunpack the release\b|\binstall the release\b|"
     r"\bswitched to the new release\b|\bwould be installed\b", "switch"),
    (r"^restart the\b", "restart"),
    (r"\bresume withdrawals\b|\breturn (the )?\w[\w ]* to haproxy\b|\bmarket open\b", "resume"),
    (r"\bbaseline\b|\bbefore the rollout\b", "baseline"),
    (r"\bread every node\b|\bevery node answered\b|\bconverged\b|\bsummarise the fleet\b", "verify"),
    (r"\bpreflight\b|\bpatch id\b|\brun id\b|\bcatalog\b|\bsignature\b|\bmarket calendar\b|\brollout lock\b|"
     r"\brollout order\b|\brefuse\b|\bcomponent's inventory group\b|\bqueue the\b|\bshow the plan\b|"
     r"\brecord the rollout\b|\bevery node of the component\b", "preflight"),
)
_PHASE_RES = tuple((re.compile(p, re.IGNORECASE), phase) for p, phase in PHASE_PATTERNS)

# A play whose name matches puts its steps on the rollback band.
ROLLBACK_PLAY = re.compile(r"^roll(ing)? ?back\b|^roll back\b", re.IGNORECASE)

# Single-node reads whose ``node`` result is the host's own live state (others read a peer).
OWN_STATE_READS = re.compile(r"^read the (node's|wallet node's) live", re.IGNORECASE)

RESULT_EVENTS = ("runner_on_ok", "runner_on_failed", "runner_on_unreachable")
ITEM_EVENTS = ("runner_item_on_ok", "runner_item_on_failed")
CONTROLLER = "localhost"


def phase_of(task: str | None) -> str:
    """The phase a task belongs to, by its name (``other`` when no pattern matches)."""
    name = (task or "").strip()
    for regex, phase in _PHASE_RES:
        if regex.search(name):
            return phase
    return "other"


# --------------------------------------------------------------------------- reading records


@dataclass
class Step:
    host: str
    task: str
    play: str
    phase: str
    start: float
    end: float
    status: str  # ok | changed | failed | unreachable | ignored (a failure the task ignores)
    msg: str
    rollback: bool
    delegated_to: str = ""


@dataclass
class Gate:
    ts: float
    host: str
    task: str
    passed: bool
    checks: list[dict[str, Any]]
    elapsed: Any
    polls: Any
    msg: str
    rollback: bool
    outcome: str = ""  # passed | failed | inconclusive (health_gate's outcome; "" from older trails)


@dataclass
class NodeState:
    before: str | None = None
    after: str | None = None
    component: str | None = None
    ha_role: str | None = None
    ready: Any = None
    answered: bool | None = None
    verified: bool = False
    error: str = ""


@dataclass
class Timeline:
    steps: list[Step] = field(default_factory=list)
    gates: list[Gate] = field(default_factory=list)
    baselines: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    failures: list[Step] = field(default_factory=list)
    nodes: dict[str, NodeState] = field(default_factory=dict)
    plan: dict[str, str] = field(default_factory=dict)
    first_ts: float | None = None
    last_ts: float | None = None
    events: int = 0


def as_time(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def as_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " ".join(as_text(v) for v in value)
    return str(value)


def _message(res: Mapping[str, Any], status: str) -> str:
    for key in ("msg", "reason", "stderr"):
        text = as_text(res.get(key)).strip()
        if text:
            return text
    return "unreachable" if status == "unreachable" else ("failed" if status == "failed" else "")


def _node_state(run: Timeline, name: str) -> NodeState:
    return run.nodes.setdefault(name, NodeState())


def _saw_node(run: Timeline, name: Any, node: Any, verified: bool, error: str = "") -> None:
    if not isinstance(name, str) or not name:
        return
    state = _node_state(run, name)
    if isinstance(node, Mapping):
        version = node.get("version")
        if version is not None:
            if state.before is None:
                state.before = str(version)
            state.after = str(version)
        state.component = node.get("component", state.component)
        state.ha_role = node.get("ha_role", state.ha_role)
        state.ready = node.get("ready", state.ready)
        state.answered = True
        state.error = ""
    elif verified:
        state.answered = False
        state.error = error
    state.verified = state.verified or verified


_PLAN = re.compile(r"patch (?P<patch_id>\S+): (?P<component>\S+) -> (?P<version>\S+)")


def read_timeline(records: Iterable[Mapping[str, Any]]) -> Timeline:
    """Steps, gates, failures and node versions of one run, from its records in order."""
    run = Timeline()
    task_started: dict[str, float] = {}
    for rec in records:
        if not isinstance(rec, Mapping):
            continue
        ts = as_time(rec.get("ts"))
        if ts is not None:
            run.first_ts = ts if run.first_ts is None else min(run.first_ts, ts)
            run.last_ts = ts if run.last_ts is None else max(run.last_ts, ts)
        if rec.get("kind") != "event":
            continue
        event = str(rec.get("event") or "")
        task = as_text(rec.get("task"))
        if event in ("playbook_on_task_start", "playbook_on_handler_task_start") and ts is not None:
            task_started[task] = ts
            continue
        res = rec.get("res") if isinstance(rec.get("res"), Mapping) else {}
        if event in ITEM_EVENTS:
            # one loop item: only what it read from a node counts (the loop's own result draws the step)
            if isinstance(res.get("item"), str) and "node" in res:
                _saw_node(run, res["item"], res.get("node"), phase_of(task) == "verify", as_text(res.get("msg")))
            continue
        if event not in RESULT_EVENTS:
            continue
        host = rec.get("host")
        if not isinstance(host, str) or not host:
            continue
        run.events += 1
        status = {"runner_on_failed": "failed", "runner_on_unreachable": "unreachable"}.get(event)
        if status == "failed" and rec.get("ignored") is True:
            status = "ignored"
        if status is None:
            status = "changed" if rec.get("changed") or res.get("changed") else "ok"
        end = ts if ts is not None else task_started.get(task)
        if end is None:
            continue
        duration = as_number(rec.get("duration_s"))
        start = end - duration if duration is not None and duration >= 0 else task_started.get(task, end)
        start = min(start, end)
        play = as_text(rec.get("play"))
        step = Step(host, task, play, phase_of(task), start, end, status, _message(res, status),
                    bool(ROLLBACK_PLAY.search(play.strip())), as_text(rec.get("delegated_to")))
        run.steps.append(step)
        if status in ("failed", "unreachable"):
            run.failures.append(step)
        _read_result(run, step, res)
    return run


def _read_result(run: Timeline, step: Step, res: Mapping[str, Any]) -> None:
    gates = res.get("gates")
    if isinstance(gates, list):
        checks = [g for g in gates if isinstance(g, Mapping)]
        passed = res.get("passed")
        if not isinstance(passed, bool):
            passed = step.status not in ("failed", "unreachable") and all(g.get("passed") is True for g in checks)
        run.gates.append(Gate(step.end, step.host, step.task, passed and step.status not in ("failed", "unreachable"),
                              [dict(g) for g in checks], res.get("elapsed"), res.get("polls"),
                              step.msg if step.status != "ok" or res.get("outcome") == "inconclusive" else "",
                              step.rollback, str(res.get("outcome") or "")))
    if isinstance(res.get("baseline"), Mapping):
        run.baselines.append((step.host, dict(res["baseline"])))
    results = res.get("results")
    verifying = step.phase == "verify"
    if isinstance(results, list):
        for item in results:
            if (isinstance(item, Mapping) and isinstance(item.get("item"), str) and "node" in item) or (
                    isinstance(item, Mapping) and verifying and isinstance(item.get("item"), str)):
                _saw_node(run, item.get("item"), item.get("node"), verifying, as_text(item.get("msg")))
    elif isinstance(res.get("item"), str) and "node" in res:
        _saw_node(run, res["item"], res.get("node"), verifying)
    elif step.host != CONTROLLER and OWN_STATE_READS.search(step.task) and isinstance(res.get("node"), Mapping):
        _saw_node(run, step.host, res["node"], False)
    facts = res.get("ansible_facts")
    if isinstance(facts, Mapping) and isinstance(facts.get("fleet_verify_report"), list):
        for entry in facts["fleet_verify_report"]:
            if isinstance(entry, Mapping):
                node = {k: entry.get(k) for k in ("version", "ha_role", "ready")} if entry.get("answered") else None
                _saw_node(run, entry.get("node"), node, True, as_text(entry.get("error")))
    if step.task.lower().startswith("show the plan") and not run.plan:
        match = _PLAN.search(as_text(res.get("msg")))
        if match:
            run.plan = match.groupdict()
