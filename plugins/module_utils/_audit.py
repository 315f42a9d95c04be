# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The audit trail: a hash-chained, append-only JSON Lines file of playbook runs.

One record per line (keys sorted, compact separators, UTF-8). Every record carries ``seq``
(1, 2, 3, ... over the whole file), ``prev`` (the ``hash`` of the record before it, ``"0" * 64``
for the first) and ``hash`` (sha256 of the canonical JSON of the record without ``hash``), so
an edited, removed, inserted or reordered record breaks the chain where it happened.
The format is the contract in docs/audit.md; the audit callback writes it, the audit_trail
module reads it. Writers serialise on an exclusive ``flock`` of the file and fsync every
append, so concurrent runs interleave whole records and a killed run leaves only whole
records behind.

Redaction (what is cut out of a record before it is hashed and written) is in ``_redact``;
its names are re-exported here. This module is pure stdlib; it raises :class:`AuditError`
with a message naming the file and the fix, which the module turns into ``fail_json``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

VERSION = 1
GENESIS = "0" * 64
KINDS = ("change_opened", "event", "change_updated", "change_closed")
OUTCOMES = ("successful", "failed", "rolled_back", "halted", "canceled", "check", "refused")
FAILED_OUTCOMES = ("rolled_back", "failed", "halted")
INTERRUPTED = "interrupted"
DEPLOY_PLAYBOOK = "rolling_patch.yml"
ROLLBACK_PLAYBOOK = "rollback.yml"
PLAN_PLAYBOOK = "plan.yml"
# Keys every record must carry, and the extra keys of each kind.
BASE_KEYS = ("v", "seq", "ts", "run", "kind", "prev", "hash")
KIND_KEYS = {
    "change_opened": ("playbook", "operator", "check_mode"),
    "change_updated": ("change",),
    "event": ("event",),
    "change_closed": ("outcome", "started", "finished"),
}
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class AuditError(Exception):
    """A problem with the audit file itself (unreadable, unwritable); the message names the fix."""


# --- time, paths, canonical form ------------------------------------------------------------

def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso(ts: dt.datetime) -> str:
    """UTC ISO-8601 with microseconds and Z: ``2026-11-24T13:50:00.123456Z``."""
    return ts.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_ts(text: str) -> dt.datetime:
    """An ISO date or timestamp (``Z`` or offset; a bare date is midnight UTC) as an aware datetime."""
    value = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def default_path(environ: Mapping[str, str] | None = None) -> str:
    """``$EXCHPATCH_AUDIT_FILE``, else ``$XDG_STATE_HOME/exchpatch/audit.jsonl``
    (``~/.local/state/exchpatch/audit.jsonl`` when XDG_STATE_HOME is unset)."""
    env = os.environ if environ is None else environ
    if env.get("EXCHPATCH_AUDIT_FILE"):
        return os.path.expanduser(env["EXCHPATCH_AUDIT_FILE"])
    state = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "exchpatch", "audit.jsonl")


def canonical(record: Mapping[str, Any]) -> str:
    """The one serialisation that is hashed and written: sorted keys, compact, UTF-8."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def record_hash(record: Mapping[str, Any]) -> str:
    """sha256 hex of the canonical JSON of ``record`` without its ``hash`` key."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(canonical(body).encode("utf-8")).hexdigest()


# --- event values ---------------------------------------------------------------------------

def trim(value: Any, limit: int = 2000) -> Any:
    """A value small enough for an event record: strings over ``limit`` characters are cut, and
    lists or dicts whose JSON is over ``limit * 4`` are summarised."""
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit] + f"... <{len(value) - limit} more characters>"
    if isinstance(value, Mapping | list | tuple):
        try:
            size = len(json.dumps(value, default=str))
        except (TypeError, ValueError):
            return "<unserialisable>"
        if size > limit * 4:
            kind = "items" if isinstance(value, list | tuple) else "keys"
            return f"<{len(value)} {kind}, {size} characters, trimmed>"
        if isinstance(value, Mapping):
            return {k: trim(v, limit) for k, v in value.items()}
        return [trim(v, limit) for v in value]
    return value


# --- writing --------------------------------------------------------------------------------

def _tail_record(fh) -> tuple[dict[str, Any] | None, bool]:
    """The last parseable record of an open file, and whether the file ends mid-line."""
    fh.seek(0, os.SEEK_END)
    end = fh.tell()
    if end == 0:
        return None, False
    fh.seek(end - 1)
    partial = fh.read(1) != b"\n"
    chunk, pos, buf = 65536, end, b""
    while pos > 0:
        step = min(chunk, pos)
        pos -= step
        fh.seek(pos)
        buf = fh.read(step) + buf
        lines = buf.split(b"\n")
        # lines[0] may be incomplete unless we reached the start of the file
        candidates = lines if pos == 0 else lines[1:]
        if partial and candidates:
            candidates = candidates[:-1]
        for raw in reversed(candidates):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except ValueError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("seq"), int) and isinstance(rec.get("hash"), str):
                return rec, partial
    return None, partial


def _open_for_append(path: str) -> int:
    folder = os.path.dirname(os.path.abspath(path))
    try:
        if not os.path.isdir(folder):
            os.makedirs(folder, mode=0o700, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    except OSError as e:
        raise AuditError(f"{path}: cannot open the audit trail for writing ({e.strerror}); "
                         "make its folder writable or point EXCHPATCH_AUDIT_FILE elsewhere") from e


def append(path: str, records: Iterable[Mapping[str, Any]], now: dt.datetime | None = None) -> list[dict[str, Any]]:
    """Chain and append ``records`` (each with at least ``run`` and ``kind``) under an exclusive
    flock, fsync, and return them as written. ``v``, ``seq``, ``prev``, ``hash`` (and ``ts`` when
    missing) are filled in here. A file ending mid-line (a tampered or torn tail) gets a newline
    first, so the torn line stays visible to verify and the chain continues from the last
    whole record."""
    fd = _open_for_append(path)
    with os.fdopen(fd, "r+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            last, partial = _tail_record(fh)
            seq = last["seq"] if last else 0
            prev = last["hash"] if last else GENESIS
            out: list[dict[str, Any]] = []
            lines: list[str] = ["\n"] if partial else []
            for rec in records:
                full = dict(rec)
                full["v"] = VERSION
                full.setdefault("ts", iso(now or utc_now()))
                seq += 1
                full["seq"] = seq
                full["prev"] = prev
                full.pop("hash", None)
                full["hash"] = record_hash(full)
                prev = full["hash"]
                lines.append(canonical(full) + "\n")
                out.append(full)
            if lines:
                os.write(fh.fileno(), "".join(lines).encode("utf-8"))
                os.fsync(fh.fileno())
            return out
        except OSError as e:
            raise AuditError(f"{path}: cannot append to the audit trail ({e.strerror}); "
                             "check the disk and the file's permissions") from e
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


# --- reading and verifying ------------------------------------------------------------------

@dataclass
class Problem:
    """One break in the chain: the 1-based line, the record's seq (if readable) and what is wrong."""

    line: int
    seq: int | None
    what: str

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        where = f"line {self.line}" + (f" (seq {self.seq})" if self.seq is not None else "")
        return f"{where}: {self.what}"


def iter_lines(path: str) -> Iterator[tuple[int, str, bool]]:
    """(line number, text without newline, ended with a newline) for each line of the file."""
    try:
        with open(path, encoding="utf-8", errors="replace", newline="\n") as fh:
            for number, line in enumerate(fh, 1):
                yield number, line.rstrip("\n"), line.endswith("\n")
    except FileNotFoundError:
        raise
    except OSError as e:
        raise AuditError(f"{path}: cannot read the audit trail ({e.strerror}); check its permissions") from e


def read_records(path: str) -> list[dict[str, Any]]:
    """Every parseable record, in file order (unreadable lines are skipped: verify reports them).
    A missing file is an empty trail."""
    records = []
    try:
        for _number, text, _ended in iter_lines(path):
            if not text.strip():
                continue
            try:
                rec = json.loads(text)
            except ValueError:
                continue
            if isinstance(rec, dict) and rec.get("kind") in KINDS:
                records.append(rec)
    except FileNotFoundError:
        return []
    return records


def verify(path: str) -> tuple[int, list[Problem]]:
    """Check every record's hash, its ``prev`` link and ``seq`` continuity; return the number of
    records read and the problems, each naming its line and seq. After a break the chain is
    re-anchored on the record found, so one tampered spot is reported where it is, not on
    every record after it. Raises FileNotFoundError when there is no file."""
    problems: list[Problem] = []
    count = 0
    prev_hash, prev_seq, prev_line = GENESIS, 0, 0
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    for number, text, ended in iter_lines(path):
        if not text.strip():
            problems.append(Problem(number, None, "empty line: the file was edited"))
            continue
        try:
            rec = json.loads(text)
        except ValueError:
            what = ("truncated record: the last line is cut short and has no newline" if not ended
                    else "not a JSON record: the line was edited or corrupted")
            problems.append(Problem(number, None, what))
            continue
        if not isinstance(rec, dict):
            problems.append(Problem(number, None, "not a JSON object: the line was edited"))
            continue
        count += 1
        seq = rec.get("seq") if isinstance(rec.get("seq"), int) else None
        missing = [k for k in (*BASE_KEYS, *KIND_KEYS.get(rec.get("kind"), ())) if k not in rec]
        if rec.get("kind") not in KINDS:
            problems.append(Problem(number, seq, f"unknown kind {rec.get('kind')!r}"))
        elif missing:
            problems.append(Problem(number, seq, "missing " + ", ".join(missing)))
        stored = rec.get("hash")
        if not isinstance(stored, str) or not _HEX64.match(stored):
            problems.append(Problem(number, seq, "no valid hash"))
        elif record_hash(rec) != stored:
            problems.append(Problem(number, seq, "edited: the hash does not match the record's content"))
        if rec.get("prev") != prev_hash:
            before = f"line {prev_line} (seq {prev_seq})" if prev_line else "the start of the file"
            problems.append(Problem(number, seq, f"chain broken: prev does not match the hash of {before}; "
                                                 "a record was removed, inserted or reordered here"))
        if seq is None:
            problems.append(Problem(number, None, "no integer seq"))
        elif seq != prev_seq + 1:
            if seq > prev_seq + 1:
                what = f"seq jumps from {prev_seq} to {seq}: {seq - prev_seq - 1} record(s) removed"
            else:
                what = f"seq {seq} after {prev_seq}: a record was inserted, duplicated or reordered"
            problems.append(Problem(number, seq, what))
        if not ended:
            problems.append(Problem(number, seq, "the last line has no newline: the file was cut or edited"))
        prev_hash = stored if isinstance(stored, str) else ""
        prev_seq = seq if seq is not None else prev_seq + 1
        prev_line = number
    return count, problems


# --- runs, changes, history -----------------------------------------------------------------

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


OPENED_FIELDS = ("playbook", "operator", "approver", "reason", "emergency", "patch_id", "component", "check_mode",
                 "extra_vars")


def group_runs(records: Iterable[Mapping[str, Any]]) -> list[Run]:
    """Runs in the order they were opened. Records of concurrent runs interleave in the file and
    are told apart by ``run``; a run id reused after its change was closed starts a new run
    (``<id>#2``). The change merges change_opened, every change_updated (later values win;
    null never overwrites a value) and change_closed (outcome, stats, finished). A run with no
    change_closed has outcome ``interrupted``."""
    runs: list[Run] = []
    current: dict[str, Run] = {}
    seen: dict[str, int] = {}
    for rec in records:
        rid = str(rec.get("run"))
        kind = rec.get("kind")
        run = current.get(rid)
        if kind == "change_opened" and (run is None or run.opened is not None):
            seen[rid] = seen.get(rid, 0) + 1
            run = Run(rid if seen[rid] == 1 else f"{rid}#{seen[rid]}")
            current[rid] = run
            runs.append(run)
        elif run is None:
            # records of a run whose opening is not in this file (e.g. trail rotated)
            seen[rid] = seen.get(rid, 0) + 1
            run = Run(rid if seen[rid] == 1 else f"{rid}#{seen[rid]}")
            run.change["started"] = rec.get("ts")
            current[rid] = run
            runs.append(run)
        run.records.append(dict(rec))
        if kind == "change_opened":
            run.opened = dict(rec)
            for key in OPENED_FIELDS:
                if key in rec:
                    run.change[key] = rec[key]
            run.change["run"] = run.run
            run.change["started"] = rec.get("ts")
        elif kind == "change_updated" and isinstance(rec.get("change"), Mapping):
            for key, value in rec["change"].items():
                if value is not None or key not in run.change:
                    run.change[key] = value
        elif kind == "change_closed":
            run.closed = dict(rec)
            run.change["outcome"] = rec.get("outcome")
            run.change["stats"] = rec.get("stats")
            run.change["started"] = rec.get("started") or run.change.get("started")
            run.change["finished"] = rec.get("finished") or rec.get("ts")
    for run in runs:
        run.change.setdefault("run", run.run)
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


def write_text_atomic(path: str, text: str, mode: int = 0o644) -> None:
    """Write a whole file or nothing (temporary file in the same folder, fsync, rename), so a
    textfile collector never reads half a file."""
    folder = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
