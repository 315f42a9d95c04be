# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Runs, history, rollout metrics and their Prometheus text, read from audit records.

The records come from any backend (``_audit.Trail.records()``); a run's change record is the
one merge in ``_changes``. Metric definitions are in docs/audit.md (section "Metrics"). Pure
standard library; ``now`` is passed in where ages are counted.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.exchangeops.patching.plugins.module_utils._audit import iso, parse_ts, utc_now
from ansible_collections.exchangeops.patching.plugins.module_utils._changes import merge_record

OUTCOMES = ("successful", "failed", "rolled_back", "halted", "inconclusive", "canceled", "check", "refused")
# inconclusive: a traffic gate had too few client requests to judge and the run halted for a human.
# Nothing failed and nothing was rolled back: not a failed change; counted on its own.
FAILED_OUTCOMES = ("rolled_back", "failed", "halted")
INTERRUPTED = "interrupted"
DEPLOY_PLAYBOOK = "rolling_patch.yml"
ROLLBACK_PLAYBOOK = "rollback.yml"
PLAN_PLAYBOOK = "plan.yml"


@dataclass
class Run:
    """One playbook run: its records and the merged change record."""

    run: str
    records: list[dict[str, Any]] = field(default_factory=list)
    change: dict[str, Any] = field(default_factory=dict)
    opened: dict[str, Any] | None = None
    closed: dict[str, Any] | None = None

    @property
    def playbook(self) -> str | None:
        return self.change.get("playbook")

    @property
    def outcome(self) -> str:
        return self.change.get("outcome") or INTERRUPTED

    @property
    def started(self) -> dt.datetime | None:
        text = self.change.get("started")
        return parse_ts(text) if text else None

    @property
    def finished(self) -> dt.datetime | None:
        text = self.change.get("finished")
        return parse_ts(text) if text and self.closed else None

    @property
    def check_mode(self) -> bool:
        return bool(self.change.get("check_mode")) or self.outcome == "check"

    @property
    def cves(self) -> list[str]:
        return [str(c) for c in self.change.get("cves") or []]


def _new_run(rid: str, seen: dict[str, int]) -> Run:
    seen[rid] = seen.get(rid, 0) + 1
    return Run(rid if seen[rid] == 1 else f"{rid}#{seen[rid]}")


def group_runs(records: Iterable[Mapping[str, Any]]) -> list[Run]:
    """Runs in the order they were opened. Records of concurrent runs interleave in the trail and
    are told apart by ``run``; a run id reused after its change was opened again starts a new run
    (``<id>#2``). The change record is ``_changes.merge_record`` over the run's records (later
    values win, null never overwrites a value). A run with no change_closed has outcome
    ``interrupted``."""
    runs: list[Run] = []
    current: dict[str, Run] = {}
    seen: dict[str, int] = {}
    for rec in records:
        rid = str(rec.get("run"))
        kind = rec.get("kind")
        run = current.get(rid)
        if kind == "change_opened" and (run is None or run.opened is not None):
            run = current[rid] = _new_run(rid, seen)
            runs.append(run)
        elif run is None:
            # records of a run whose opening is not in this trail (e.g. trail rotated)
            run = current[rid] = _new_run(rid, seen)
            run.change["started"] = rec.get("ts")
            runs.append(run)
        run.records.append(dict(rec))
        merge_record(run.change, rec)
        if kind == "change_opened":
            run.opened = dict(rec)
        elif kind == "change_closed":
            run.closed = dict(rec)
    for run in runs:
        run.change["run"] = run.run
        run.change.setdefault("outcome", INTERRUPTED)
        if run.closed is None:
            run.change["outcome"] = INTERRUPTED
            run.change["last_record"] = run.records[-1].get("ts") if run.records else None
    return runs


def find_run(runs: list[Run], run_id: str | None) -> Run:
    """The run with that id (or id prefix), or the last run when ``run_id`` is empty."""
    if not runs:
        raise LookupError("the audit trail has no runs yet")
    if not run_id:
        return runs[-1]
    exact = [r for r in runs if r.run == run_id]
    if exact:
        return exact[-1]
    prefixed = [r for r in runs if r.run.startswith(run_id)]
    if len(prefixed) == 1:
        return prefixed[0]
    if prefixed:
        raise LookupError(f"run id {run_id!r} is ambiguous: " + ", ".join(r.run for r in prefixed[:5]))
    raise LookupError(f"no run {run_id!r} in the audit trail; see the history for run ids")


def history(runs: Iterable[Run]) -> list[dict[str, Any]]:
    """One row per run, oldest first."""
    rows = []
    for run in runs:
        c = run.change
        started, finished = run.started, run.finished
        rows.append({
            "run": run.run,
            "playbook": c.get("playbook"),
            "patch_id": c.get("patch_id"),
            "component": c.get("component"),
            "version": c.get("version"),
            "cves": run.cves,
            "operator": c.get("operator"),
            "approver": c.get("approver"),
            "reason": c.get("reason"),
            "emergency": bool(c.get("emergency")),
            "check_mode": run.check_mode,
            "outcome": run.outcome,
            "started": c.get("started"),
            "finished": c.get("finished") if run.closed else None,
            "duration_s": round((finished - started).total_seconds(), 3) if started and finished else None,
        })
    return rows


# --- metrics --------------------------------------------------------------------------------

def _is_deployment(run: Run) -> bool:
    # a refused run (preflight failed: bad patch id, lock held, freeze window) changed nothing
    return run.playbook == DEPLOY_PLAYBOOK and not run.check_mode and run.outcome != "refused"


def _is_rollback(run: Run) -> bool:
    return (run.playbook == ROLLBACK_PLAYBOOK and not run.check_mode) or (
        _is_deployment(run) and run.outcome == "rolled_back")


def _first_failure(run: Run) -> dt.datetime | None:
    for rec in run.records:
        if rec.get("kind") == "event" and rec.get("event") in ("runner_on_failed", "runner_on_unreachable") \
                and not rec.get("ignored"):
            return parse_ts(rec["ts"])
    return None


def _seconds(a: dt.datetime, b: dt.datetime) -> float:
    return round((b - a).total_seconds(), 3)


def metrics(runs: list[Run], now: dt.datetime | None = None) -> dict[str, Any]:
    """Deployments, rollbacks, change failure rate, MTTR per CVE and time to restore, as defined
    in docs/audit.md (section "Metrics")."""
    now = now or utc_now()
    deployments = [r for r in runs if _is_deployment(r)]
    failed = [r for r in deployments if r.outcome in FAILED_OUTCOMES]
    rollbacks = [r for r in runs if _is_rollback(r)]
    inconclusive_runs = [r for r in deployments if r.outcome == "inconclusive"]
    inconclusive_gates: dict[str, int] = {}
    for run in runs:
        gates = run.change.get("inconclusive_gates")
        if isinstance(gates, list) and gates and not run.check_mode:
            key = run.playbook or "unknown"
            inconclusive_gates[key] = inconclusive_gates.get(key, 0) + len(gates)
    outcomes: dict[str, dict[str, int]] = {}
    for run in runs:
        per = outcomes.setdefault(run.playbook or "unknown", {})
        per[run.outcome] = per.get(run.outcome, 0) + 1

    # MTTR per CVE
    first_seen: dict[str, tuple[dt.datetime, str]] = {}
    for run in runs:
        seen = run.change.get("cve_first_seen")
        if run.playbook == PLAN_PLAYBOOK and isinstance(seen, Mapping):
            for cve, day in seen.items():
                try:
                    when = parse_ts(str(day))
                except ValueError:
                    continue
                if cve not in first_seen or when < first_seen[cve][0]:
                    first_seen[cve] = (when, f"feed date in plan run {run.run}")
    for run in runs:
        if run.started is None:
            continue
        for cve in run.cves:
            if cve not in first_seen:
                first_seen[cve] = (run.started, f"change_opened of run {run.run}")
    fixed: dict[str, Run] = {}
    for run in deployments:
        if run.outcome == "successful" and run.finished is not None:
            for cve in run.cves:
                fixed.setdefault(cve, run)
    per_cve = []
    for cve in sorted(first_seen):
        seen_at, source = first_seen[cve]
        row: dict[str, Any] = {"cve": cve, "first_seen": iso(seen_at), "first_seen_source": source}
        by = fixed.get(cve)
        if by is not None and by.finished is not None:
            row.update(status="fixed", fixed_at=iso(by.finished), fixed_by_run=by.run,
                       patch_id=by.change.get("patch_id"), version=by.change.get("version"),
                       mttr_s=_seconds(seen_at, by.finished))
        else:
            row.update(status="open", fixed_at=None, fixed_by_run=None, patch_id=None, version=None,
                       mttr_s=None, age_s=_seconds(seen_at, now))
        per_cve.append(row)
    fixed_rows = [r for r in per_cve if r["status"] == "fixed"]

    # time to restore
    restores = []
    for run in failed:
        failed_at = _first_failure(run) or run.started
        restored_at, restored_by = None, None
        if run.outcome == "rolled_back" and run.change.get("converged_version") and run.finished:
            restored_at, restored_by = run.finished, run.run
        else:
            component = run.change.get("component")
            for later in runs:
                if (later.playbook in (DEPLOY_PLAYBOOK, ROLLBACK_PLAYBOOK) and not later.check_mode
                        and later.outcome == "successful" and later.finished is not None
                        and later.change.get("component") == component
                        and failed_at is not None and later.finished > failed_at):
                    restored_at, restored_by = later.finished, later.run
                    break
        row = {"run": run.run, "patch_id": run.change.get("patch_id"), "component": run.change.get("component"),
               "outcome": run.outcome, "failed_at": iso(failed_at) if failed_at else None,
               "restored_at": iso(restored_at) if restored_at else None, "restored_by_run": restored_by,
               "time_to_restore_s": _seconds(failed_at, restored_at) if failed_at and restored_at else None}
        if restored_at is None and failed_at is not None:
            row["unrestored_for_s"] = _seconds(failed_at, now)
        restores.append(row)
    restored = [r["time_to_restore_s"] for r in restores if r["time_to_restore_s"] is not None]

    return {
        "generated_at": iso(now),
        "runs": len(runs),
        "deployments": len(deployments),
        "failed_deployments": len(failed),
        "rollbacks": len(rollbacks),
        "change_failure_rate": round(len(failed) / len(deployments), 6) if deployments else None,
        "inconclusive_deployments": len(inconclusive_runs),
        "inconclusive_gates": inconclusive_gates,
        "outcomes": outcomes,
        "mttr": {
            "per_cve": per_cve,
            "fixed": len(fixed_rows),
            "open": [r["cve"] for r in per_cve if r["status"] == "open"],
            "mean_s": round(sum(r["mttr_s"] for r in fixed_rows) / len(fixed_rows), 3) if fixed_rows else None,
        },
        "time_to_restore": restores,
        "mean_time_to_restore_s": round(sum(restored) / len(restored), 3) if restored else None,
    }


# --- Prometheus text format -----------------------------------------------------------------

def _label(value: Any) -> str:
    text = "" if value is None else str(value)
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float | int) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def prometheus(m: Mapping[str, Any]) -> str:
    """The metrics in the Prometheus text exposition format (0.0.4), names prefixed ``exchpatch_``,
    for a node-exporter textfile collector."""
    out: list[str] = []

    def family(name: str, kind: str, helptext: str, samples: list[tuple[dict[str, Any], Any]]) -> None:
        out.append(f"# HELP exchpatch_{name} {_help(helptext)}")
        out.append(f"# TYPE exchpatch_{name} {kind}")
        for labels, value in samples:
            if value is None:
                continue
            text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            out.append(f"exchpatch_{name}{{{text}}} {_number(value)}" if text else f"exchpatch_{name} {_number(value)}")

    family("deployments_total", "counter", "Non-check runs of rolling_patch.yml in the audit trail.",
           [({}, m["deployments"])])
    family("failed_deployments_total", "counter",
           "Deployments whose outcome was rolled_back, failed or halted.", [({}, m["failed_deployments"])])
    family("rollbacks_total", "counter",
           "Runs of rollback.yml plus rolling_patch.yml runs that rolled back.", [({}, m["rollbacks"])])
    family("change_failure_rate", "gauge", "Failed deployments divided by deployments (0 to 1).",
           [({}, m["change_failure_rate"])])
    family("inconclusive_deployments_total", "counter",
           "Deployments halted for a human because a traffic gate had too few client requests to judge "
           "(not failed changes).", [({}, m.get("inconclusive_deployments", 0))])
    family("inconclusive_gates_total", "counter",
           "Traffic gates that ended inconclusive, by playbook, whatever the policy did with them.",
           [({"playbook": pb}, n) for pb, n in sorted((m.get("inconclusive_gates") or {}).items())])
    family("runs_total", "counter", "Playbook runs in the audit trail by playbook and outcome.",
           [({"playbook": pb, "outcome": oc}, n) for pb, per in sorted(m["outcomes"].items())
            for oc, n in sorted(per.items())])
    mttr = m["mttr"]
    family("cve_time_to_remediate_seconds", "gauge",
           "Per fixed CVE: seconds from first seen (feed date, KEV dateAdded, or first run naming it) to the end "
           "of the first successful deployment of a patch fixing it.",
           [({"cve": r["cve"], "patch_id": r["patch_id"]}, r["mttr_s"]) for r in mttr["per_cve"]
            if r["status"] == "fixed"])
    family("cve_open_age_seconds", "gauge", "Per CVE with no successful deployment yet: seconds since first seen.",
           [({"cve": r["cve"]}, r["age_s"]) for r in mttr["per_cve"] if r["status"] == "open"])
    family("mttr_seconds", "gauge", "Mean time to remediate over fixed CVEs.", [({}, mttr["mean_s"])])
    family("open_cves", "gauge", "CVEs seen with no successful deployment fixing them yet.",
           [({}, len(mttr["open"]))])
    family("time_to_restore_seconds", "gauge",
           "Per failed deployment: seconds from its first failure to the fleet converged again.",
           [({"run": r["run"], "patch_id": r["patch_id"]}, r["time_to_restore_s"]) for r in m["time_to_restore"]])
    family("mean_time_to_restore_seconds", "gauge", "Mean time to restore over restored failed deployments.",
           [({}, m["mean_time_to_restore_s"])])
    return "\n".join(out) + "\n"
