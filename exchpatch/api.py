"""The driver's public Python API: ``plan``, ``deploy``, ``rollback``, ``status``, ``audit``.

Every call validates its parameters (a refusal raises :class:`BadInput` and runs nothing),
starts the collection's playbook through ansible-runner and returns a :class:`~exchpatch.jobs.Job`
at once; ``job.wait()`` returns the typed result below, ``job.on_event(...)`` streams events,
``job.cancel()`` stops it safely. The CLI, an HTTP API for chatops and tests all use this;
nothing here imports collection code.

    job = deploy("matching-engine-1.4.3", event_handler=print_progress)
    result = job.wait()          # DeployResult
    result.outcome   # successful | rolled_back | halted | inconclusive | refused | failed | canceled | check
"""

from __future__ import annotations

import datetime as dt
import functools
import inspect
import json
import os
import re
import stat
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from exchpatch.jobs import (
    BadInput,
    EventHandler,
    Job,
    JobError,
    JobEvent,
    JobStatus,
    StatusHandler,
    data_dir,
    play_stats,
    refuse_template_markers,
    start,
)

__all__ = [
    "AuditResult", "BadInput", "DeployResult", "Job", "JobError", "JobEvent", "JobStatus", "PlanResult",
    "RollbackResult", "StatusResult", "audit", "deploy", "plan", "rollback", "status",
]

COMPONENTS = ("matching-engine", "wallet-signer")
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}\Z")
_VERSION_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}\Z")
_PERSON_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}\Z")
_SERIAL_RE = re.compile(r"([1-9][0-9]{0,3}|[1-9][0-9]?%|100%)\Z")
# Every playbook publishes its result with set_stats under this key (the AWX run contract, docs/awx.md):
# outcome, failed nodes with their evidence, converged version, message, the playbook's own result.
STATS_KEY = "exchpatch"


# --------------------------------------------------------------------------- validation


def _check(pattern: re.Pattern[str], value: Any, what: str, example: str) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise BadInput(f"{what} {value!r} is not valid; use letters, digits and . _ + - only, e.g. {example}")
    return value


def _check_text(value: Any, what: str, limit: int = 500) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadInput(f"{what} is empty; say why in a sentence")
    if len(value) > limit:
        raise BadInput(f"{what} is {len(value)} characters long; keep it under {limit}")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise BadInput(f"{what} contains control characters; use plain text on one line")
    return value


def _data_only(func: Callable[..., Job]) -> Callable[..., Job]:
    """Refuse a template marker in any argument of a public entry point, before anything else runs:
    callers (a shell, AWX, a chatops bot) hand us text, and text is never a template."""
    signature = inspect.signature(func)

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Job:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as e:
            raise BadInput(f"{func.__name__}(): {e}") from None
        for name, value in bound.arguments.items():
            if not callable(value):
                refuse_template_markers(value, name.replace("_", " "))
        return func(*args, **kwargs)

    return wrapper


def _executable(path: Path) -> bool:
    try:
        st = path.stat()
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and bool(st.st_mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH))


def _check_inventory(inventory: str | Path | None, allow_scripts: bool = False) -> str | None:
    """The inventory's resolved path. Ansible *runs* an executable inventory file (a dynamic
    inventory script): one is accepted only with ``allow_inventory_scripts=True``."""
    if inventory is None:
        return None
    p = Path(inventory).expanduser()
    if not p.exists():
        raise BadInput(f"inventory {inventory}: no such file or folder; give an inventory path, "
                       "or, in a checkout, leave it out for the testbed's")
    p = p.resolve()
    if not allow_scripts:
        candidates = [p] if p.is_file() else [
            Path(d) / f for d, dirs, files in os.walk(p)
            for f in files if not (set(Path(d).relative_to(p).parts) & {"group_vars", "host_vars"})]
        scripts = [c for c in candidates if _executable(c)]
        if scripts:
            raise BadInput(f"inventory {inventory}: {scripts[0]} is executable and Ansible would run it as a "
                           "program; pass allow_inventory_scripts=True (--allow-inventory-scripts) if it is your "
                           "dynamic inventory, or chmod -x it")
    return str(p)


def _check_vault_password_file(path: str | None, allow_script: bool) -> str | None:
    """The vault password file's path. Ansible *runs* an executable one (a vault client script):
    accepted only with ``allow_vault_password_script=True``."""
    resolved = _check_file(path, "vault password file")
    if resolved is not None and not allow_script and _executable(Path(resolved)):
        raise BadInput(f"vault password file {path}: is executable and Ansible would run it as a program; pass "
                       "allow_vault_password_script=True (--allow-vault-password-script) if it is your vault "
                       "client script, or chmod -x it")
    return resolved


def _check_file(path: str | None, what: str) -> str | None:
    if path is None:
        return None
    p = Path(path).expanduser()
    if not p.is_file():
        raise BadInput(f"{what} {path}: no such file; check the path")
    return str(p.resolve())


def _check_serial(serial: Sequence[int | str] | None) -> list[int | str] | None:
    if serial is None:
        return None
    out: list[int | str] = []
    for item in serial:
        text = str(item)
        if not _SERIAL_RE.match(text):
            raise BadInput(f"serial step {item!r} is not valid; use node counts or percentages, e.g. 1 2 50%")
        out.append(text if text.endswith("%") else int(text))
    if not out:
        raise BadInput("serial is empty; give at least one batch size, e.g. 1 2 50%")
    return out


def _nonneg(value: float | None, what: str) -> float | None:
    if value is None:
        return None
    if not isinstance(value, int | float) or value < 0 or value > 86400:
        raise BadInput(f"{what} {value!r} is not valid; give seconds between 0 and 86400")
    return value


# --------------------------------------------------------------------------- results


@dataclass
class NodeStep:
    """One thing done to a node, for the progress display and the summary."""

    host: str
    task: str
    status: str  # ok | changed | failed | unreachable
    at: str
    msg: str | None = None
    gates: list[dict[str, Any]] = field(default_factory=list)


def _steps(job: Job) -> list[NodeStep]:
    steps = []
    for e in job.events:
        if e.event not in ("runner_on_ok", "runner_on_failed", "runner_on_unreachable") or not e.host:
            continue
        if e.host == "localhost" and not e.failed:
            continue
        status = ("unreachable" if e.event == "runner_on_unreachable" else "failed" if e.failed
                  else "changed" if e.changed else "ok")
        gates = e.res.get("gates") if isinstance(e.res.get("gates"), list) else []
        if status == "ok" and not gates:
            continue
        steps.append(NodeStep(host=e.host, task=e.task or "?", status=status, at=e.created,
                              msg=e.msg or None, gates=gates))
    return steps


def _audit_change(job: Job) -> dict[str, Any]:
    """The change record the playbook published as ``audit_change`` facts (merged in order)."""
    change: dict[str, Any] = {}
    for e in job.events:
        facts = e.res.get("ansible_facts") if e.event == "runner_on_ok" else None
        if isinstance(facts, dict) and isinstance(facts.get("audit_change"), dict):
            change.update(facts["audit_change"])
    return change


def _stats(job: Job) -> dict[str, Any]:
    """What the playbook published with set_stats (``exchpatch``); empty when it did not get that far
    (killed, or a syntax error)."""
    data = play_stats(job).get(STATS_KEY)
    return data if isinstance(data, dict) else {}


def _failures(job: Job) -> list[JobEvent]:
    return [e for e in job.events if e.failed]


def _bad_input(job: Job) -> bool:
    return any(e.res.get("bad_input") for e in _failures(job))


def _first_failure_msg(job: Job) -> str | None:
    fails = _failures(job)
    bad = [e for e in fails if e.res.get("bad_input")]
    first = (bad or fails or [None])[0]
    if first is None:
        return None
    return first.msg if first.host in (None, "localhost") else f"{first.host}: {first.msg}"


@dataclass
class Result:
    job: dict[str, Any]
    exit_code: int
    message: str | None
    report: str | None = field(default=None, kw_only=True)
    # what the playbook published with set_stats (key exchpatch): the same document AWX shows as artifacts
    stats: dict[str, Any] = field(default_factory=dict, kw_only=True)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PlanResult(Result):
    plan: dict[str, Any] | None = None


@dataclass
class DeployResult(Result):
    patch_id: str = ""
    outcome: str = ""  # successful | check | rolled_back | halted | inconclusive | refused | failed | canceled
    check: bool = False
    change: dict[str, Any] = field(default_factory=dict)
    failed_nodes: list[str] = field(default_factory=list)
    steps: list[NodeStep] = field(default_factory=list)


@dataclass
class RollbackResult(Result):
    component: str = ""
    outcome: str = ""  # successful | check | halted | refused | failed | canceled
    to_version: str | None = None
    change: dict[str, Any] = field(default_factory=dict)
    steps: list[NodeStep] = field(default_factory=list)


@dataclass
class StatusResult(Result):
    nodes: list[dict[str, Any]] = field(default_factory=list)
    components: dict[str, dict[str, Any]] = field(default_factory=dict)
    shards: dict[str, dict[str, Any]] = field(default_factory=dict)
    locks: list[dict[str, Any]] = field(default_factory=list)
    drift: bool = False
    unreachable: list[str] = field(default_factory=list)


@dataclass
class AuditResult(Result):
    action: str = ""
    data: dict[str, Any] = field(default_factory=dict)


def _exit_code(job: Job, ok: bool) -> int:
    if ok:
        return 0
    return 2 if _bad_input(job) else 1


# --------------------------------------------------------------------------- plan


@_data_only
def plan(feeds: Sequence[str], catalog: str, *, inventory: str | Path | None = None, facts: str | None = None,
         now: str | None = None, allow_inventory_scripts: bool = False, event_handler: EventHandler | None = None,
         status_handler: StatusHandler | None = None, exposure: str | None = None, feed_cache: str | None = None,
         max_feed_age_hours: float | None = None, max_kev_age_hours: float | None = None,
         allow_stale_kev: bool = False) -> Job:
    """Rank pending patches (``playbooks/plan.yml``); the result carries the plan document. ``exposure`` (an
    ``exchpatch exposure`` document) adds derived/flagged fixes and the CVEs no patch fixes (needs mitigation).
    ``feed_cache`` (a folder ``exchpatch feeds sync`` keeps) adds every cached feed and its ``exposure.json``;
    the plan warns about feeds older than ``max_feed_age_hours`` and refuses a KEV catalog older than
    ``max_kev_age_hours`` unless ``allow_stale_kev``."""
    if not feeds and feed_cache is None:
        raise BadInput("give an advisory feed (--feed PATH) or a feed cache (--feed-cache DIR, filled by "
                       "exchpatch feeds sync)")
    if feed_cache is None and (max_feed_age_hours is not None or max_kev_age_hours is not None or allow_stale_kev):
        raise BadInput("--max-feed-age-hours, --max-kev-age-hours and --allow-stale-kev judge a feed cache; "
                       "give --feed-cache DIR too")
    if inventory is not None and facts is not None:
        raise BadInput("give an inventory (live facts) or a facts file (offline), not both")
    extravars: dict[str, Any] = {"plan_feeds": [_check_file(f, "feed") for f in feeds]}
    cat = Path(catalog).expanduser()
    if not cat.is_dir():
        raise BadInput(f"catalog {catalog}: no such folder; check the path")
    extravars["plan_catalog"] = str(cat.resolve())
    if facts is not None:
        extravars["plan_facts_file"] = _check_file(facts, "facts file")
        inventory = inventory or str(Path(__file__).resolve().parent / "empty_inventory.yml")
    if now is not None:
        try:
            dt.datetime.fromisoformat(now.replace("Z", "+00:00"))
        except ValueError:
            raise BadInput(f"now {now!r} is not an ISO 8601 time; e.g. 2026-11-24T12:00:00Z") from None
        extravars["plan_now"] = now
    if exposure is not None:
        extravars["plan_exposure"] = _check_file(exposure, "exposure file")
    if feed_cache is not None:
        cache = Path(feed_cache).expanduser()
        if not (cache / "state.json").is_file():
            raise BadInput(f"feed cache {feed_cache}: no state.json, so no feed was ever synced there; run "
                           f"`exchpatch feeds sync --cache {feed_cache}` first, or check the path")
        extravars["plan_feed_cache"] = str(cache.resolve())
        for name, flag, hours in (("plan_feed_max_age_hours", "--max-feed-age-hours", max_feed_age_hours),
                                  ("plan_kev_max_age_hours", "--max-kev-age-hours", max_kev_age_hours)):
            if hours is not None:
                if not hours > 0:
                    raise BadInput(f"{flag} {hours}: give a positive number of hours")
                extravars[name] = float(hours)
        extravars["plan_allow_stale_kev"] = bool(allow_stale_kev)
    dest = data_dir() / f"plan-{os.getpid()}-{id(extravars):x}.json"
    extravars["plan_dest"] = str(dest)

    def finish(job: Job) -> PlanResult:
        try:
            ok = job.rc == 0 and dest.is_file()
            doc = json.loads(dest.read_text()) if ok else None
        finally:
            dest.unlink(missing_ok=True)
        msg = None if ok else (_first_failure_msg(job) or _stats(job).get("message")
                               or f"plan playbook ended {job.status}; see {job.artifact_dir}")
        return PlanResult(job=job.as_json(), exit_code=_exit_code(job, ok), message=msg, plan=doc)

    return start("plan", "plan.yml", extravars, finish, inventory=_check_inventory(inventory, allow_inventory_scripts),
                 event_handler=event_handler, status_handler=status_handler)


# --------------------------------------------------------------------------- deploy


@_data_only
def deploy(patch_id: str, *, inventory: str | Path | None = None, check: bool = False, emergency: bool = False,
           reason: str | None = None, approval: str | Sequence[str] | None = None, operator: str | None = None,
           serial: Sequence[int | str] | None = None, canary_bake: float | None = None, bake: float | None = None,
           on_failure: str = "rollback", on_inconclusive: str = "halt", accept_irreversible: bool = False,
           catalog: str | None = None, allow_downgrade: bool = False, vault_password_file: str | None = None,
           allow_vault_password_script: bool = False, allow_inventory_scripts: bool = False,
           timeout: float | None = None, event_handler: EventHandler | None = None,
           status_handler: StatusHandler | None = None) -> Job:
    """Roll one catalog patch out (``playbooks/rolling_patch.yml``).

    ``on_inconclusive`` is what a traffic gate with too few client requests to judge does: ``halt``
    (a human decides; outcome ``inconclusive``), ``fail`` (roll back) or ``proceed`` (docs/gates.md).

    ``allow_downgrade`` (with a ``reason``) lets a patch older than what a node runs go out; it is
    recorded as a downgrade. The way back from a bad release is :func:`rollback`, not a patch.

    ``emergency``, ``accept_irreversible`` and ``allow_downgrade`` each need an ``approval`` file (or
    several) signed by a second person (``exchpatch approve``, docs/approvals.md); the preflight
    verifies them, and with the PostgreSQL state store finds published ones without a file."""
    _check(_ID_RE, patch_id, "patch id", "matching-engine-1.4.3")
    extravars: dict[str, Any] = {"patch_id": patch_id, "rolling_on_failure": on_failure}
    if on_failure not in ("rollback", "halt"):
        raise BadInput(f"on_failure {on_failure!r} is not valid; use rollback or halt")
    if on_inconclusive not in ("halt", "fail", "proceed"):
        raise BadInput(f"on_inconclusive {on_inconclusive!r} is not valid; use halt (a human decides), fail (roll "
                       "back) or proceed (go on with a warning)")
    extravars["rolling_on_inconclusive"] = on_inconclusive
    operator = _check(_PERSON_RE, operator, "operator", "alice") if operator else _login()
    extravars["preflight_operator"] = operator
    if emergency:
        if not reason:
            raise BadInput("an emergency rollout needs --reason (and an approval signed by a second person: "
                           "exchpatch approve, then --approval FILE)")
        extravars["preflight_emergency"] = True
    if reason is not None:
        extravars["preflight_reason"] = _check_text(reason, "reason")
    if approval is not None:
        files = [approval] if isinstance(approval, str | Path) else list(approval)
        extravars["preflight_approval_file"] = [_check_file(str(f), "approval file") for f in files]
    if (s := _check_serial(serial)) is not None:
        extravars["rolling_serial"] = s
    if (v := _nonneg(canary_bake, "canary bake")) is not None:
        extravars["rolling_canary_bake"] = v
    if (v := _nonneg(bake, "bake")) is not None:
        extravars["rolling_bake"] = v
    if accept_irreversible:
        extravars["preflight_accept_irreversible"] = True
    if allow_downgrade:
        if not reason:
            raise BadInput("a downgrade needs --reason (why an older release must go out); to undo a bad "
                           "release use exchpatch rollback instead")
        extravars["preflight_allow_downgrade"] = True
    if catalog is not None:
        cat = Path(catalog).expanduser()
        if not cat.is_dir():
            raise BadInput(f"catalog {catalog}: no such folder; check the path")
        extravars["preflight_catalog"] = str(cat.resolve())
    _nonneg(timeout, "timeout")

    def finish(job: Job) -> DeployResult:
        ok = job.status is JobStatus.SUCCESSFUL and job.rc == 0
        stats = _stats(job)
        change = _audit_change(job)
        published = stats.get("outcome")
        stopped = (stats.get("result") or {}).get("stopped") or {}
        if ok:
            outcome = "check" if check else "successful"
        elif published == "halted" and stopped.get("reason") == "inconclusive":
            outcome = "inconclusive"  # a traffic gate could not judge: halted for a human, nothing rolled back
        elif job.cancel_requested:
            outcome = "canceled"  # the operator's cancel: the node in flight was rolled back, the run ended cleanly
        elif published in ("rolled_back", "halted", "refused", "failed"):
            outcome = published  # halted: by rolling_on_failure=halt, or stopped before a batch (lease, calendar)
        else:
            outcome = "failed"  # ended before it could publish (killed, or an error outside the playbook)
        failed_nodes = sorted(stats.get("failed_nodes")
                              or {e.host for e in _failures(job) if e.host and e.host != "localhost"})
        msg = None if ok else (stats.get("message") or _first_failure_msg(job)
                               or f"rollout ended {job.status}; see {job.artifact_dir}")
        return DeployResult(job=job.as_json(), exit_code=_exit_code(job, ok), message=msg, patch_id=patch_id,
                            outcome=outcome, check=check, change=change, failed_nodes=failed_nodes, steps=_steps(job),
                            stats=stats)

    return start("deploy", "rolling_patch.yml", extravars, finish,
                 inventory=_check_inventory(inventory, allow_inventory_scripts),
                 graceful_cancel=not check, timeout=timeout, check=check,
                 vault_password_file=_check_vault_password_file(vault_password_file, allow_vault_password_script),
                 operator=operator,
                 event_handler=event_handler, status_handler=status_handler)


def _login() -> str:
    name = os.environ.get("EXCHPATCH_OPERATOR") or os.environ.get("USER") or os.environ.get("LOGNAME") or "unknown"
    return name if _PERSON_RE.match(name) else "unknown"


# --------------------------------------------------------------------------- rollback


@_data_only
def rollback(component: str, *, to: str | None = None, inventory: str | Path | None = None, check: bool = False,
             accept_irreversible: bool = False, operator: str | None = None, vault_password_file: str | None = None,
             allow_vault_password_script: bool = False, allow_inventory_scripts: bool = False,
             timeout: float | None = None, event_handler: EventHandler | None = None,
             status_handler: StatusHandler | None = None) -> Job:
    """Put a component back on its previous release, or on ``to`` (``playbooks/rollback.yml``)."""
    if component not in COMPONENTS:
        raise BadInput(f"component {component!r} is not valid; use one of {', '.join(COMPONENTS)}")
    extravars: dict[str, Any] = {"component": component}
    if to is not None:
        extravars["version"] = _check(_VERSION_RE, to, "version", "1.4.2")
    if accept_irreversible:
        extravars["rollback_accept_irreversible"] = True
    operator = _check(_PERSON_RE, operator, "operator", "alice") if operator else _login()
    extravars["preflight_operator"] = operator
    _nonneg(timeout, "timeout")

    def finish(job: Job) -> RollbackResult:
        ok = job.status is JobStatus.SUCCESSFUL and job.rc == 0
        stats = _stats(job)
        change = _audit_change(job)
        published = stats.get("outcome")
        if ok:
            outcome = "check" if check else "successful"
        elif job.cancel_requested:
            outcome = "canceled"
        elif published in ("halted", "refused", "failed"):
            outcome = published
        else:
            outcome = "failed"
        msg = None if ok else (stats.get("message") or _first_failure_msg(job)
                               or f"rollback ended {job.status}; see {job.artifact_dir}")
        return RollbackResult(job=job.as_json(), exit_code=_exit_code(job, ok), message=msg, component=component,
                              outcome=outcome, to_version=stats.get("converged_version")
                              or change.get("converged_version") or to, change=change, steps=_steps(job),
                              stats=stats)

    return start("rollback", "rollback.yml", extravars, finish,
                 inventory=_check_inventory(inventory, allow_inventory_scripts), timeout=timeout, check=check,
                 vault_password_file=_check_vault_password_file(vault_password_file, allow_vault_password_script),
                 operator=operator,
                 event_handler=event_handler, status_handler=status_handler)


# --------------------------------------------------------------------------- status


def _parse_time(text: Any) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None


def summarize_status(doc: dict[str, Any], now: dt.datetime | None = None) -> dict[str, Any]:
    """Fleet status document → nodes, per-component versions and drift, shard primaries, locks."""
    now = now or dt.datetime.now(dt.UTC)
    nodes, components, shards, unreachable = [], {}, {}, []
    for rec in doc.get("nodes", []):
        st = rec.get("status") or {}
        node = {
            "name": rec.get("name"), "component": rec.get("component"), "address": rec.get("address"),
            "shard": rec.get("shard"), "chains": rec.get("chains"), "version": st.get("version"),
            "role": st.get("ha_role"), "ready": bool(st.get("ready")), "seq": st.get("seq"),
            "mode": st.get("market_mode") or st.get("withdrawals"), "error": rec.get("error"),
        }
        nodes.append(node)
        if not st:
            unreachable.append(node["name"])
        comp = components.setdefault(node["component"], {"versions": {}, "drift": False})
        if node["version"]:
            comp["versions"].setdefault(node["version"], []).append(node["name"])
        if node["shard"] not in (None, "") and node["component"] == "matching-engine":
            shard = shards.setdefault(str(node["shard"]), {"primary": None, "standbys": [], "healthy": False})
            if node["role"] == "primary":
                shard["primary"] = node["name"] if shard["primary"] is None else f"{shard['primary']},{node['name']}"
                shard["healthy"] = node["ready"] and "," not in shard["primary"]
            elif node["role"] == "standby":
                shard["standbys"].append(node["name"])
    for comp in components.values():
        comp["drift"] = len(comp["versions"]) > 1
    locks = []
    for lock in doc.get("locks", []):
        expires = _parse_time(lock.get("expires_at"))
        locks.append({**lock, "stale": bool(expires and expires < now)})
    return {"nodes": nodes, "components": components, "shards": shards, "locks": locks,
            "drift": any(c["drift"] for c in components.values()), "unreachable": unreachable}


@_data_only
def status(*, inventory: str | Path | None = None, vault_password_file: str | None = None,
           allow_vault_password_script: bool = False, allow_inventory_scripts: bool = False,
           event_handler: EventHandler | None = None, status_handler: StatusHandler | None = None) -> Job:
    """Fleet versions, drift, HA roles and locks held (``playbooks/fleet_status.yml``); read-only."""

    def finish(job: Job) -> StatusResult:
        facts = (_stats(job).get("result") or {}).get("fleet_status")
        if facts is None:
            return StatusResult(job=job.as_json(), exit_code=_exit_code(job, False),
                                message=_first_failure_msg(job) or f"status playbook ended {job.status}; "
                                f"see {job.artifact_dir}")
        s = summarize_status(facts)
        msg = f"no answer from {', '.join(s['unreachable'])}" if s["unreachable"] else None
        return StatusResult(job=job.as_json(), exit_code=1 if s["unreachable"] else 0, message=msg, **s)

    return start("status", "fleet_status.yml", {}, finish,
                 inventory=_check_inventory(inventory, allow_inventory_scripts),
                 vault_password_file=_check_vault_password_file(vault_password_file, allow_vault_password_script),
                 event_handler=event_handler, status_handler=status_handler)


# --------------------------------------------------------------------------- audit trail


AUDIT_ACTIONS = ("verify", "history", "metrics", "report", "export")


@_data_only
def audit(action: str, *, audit_file: str | None = None, run: str | None = None, load_report: str | None = None,
          dest: str | None = None, prometheus: bool = False, unverified: bool = False,
          event_handler: EventHandler | None = None) -> Job:
    """Verify the audit trail, list runs, compute metrics, write a run's report or export the trail
    (``playbooks/audit.yml``). Every action but verify refuses a trail that does not verify, naming the
    broken record, unless ``unverified``. The trail is the file (``audit_file``) or the state store's."""
    if action not in AUDIT_ACTIONS:
        raise BadInput(f"audit action {action!r} is not valid; use one of {', '.join(AUDIT_ACTIONS)}")
    extravars: dict[str, Any] = {"audit_action": action}
    if audit_file is not None:
        extravars["audit_file"] = str(Path(audit_file).expanduser().resolve())
    if run is not None:
        extravars["audit_run"] = _check(_ID_RE, run, "run id", "20261124T101500-1a2b3c4d")
    if load_report is not None:
        extravars["audit_load_report"] = _check_file(load_report, "load report")
    if dest is not None:
        parent = Path(dest).expanduser().resolve().parent
        if not parent.is_dir():
            raise BadInput(f"{dest}: folder {parent} does not exist; create it or choose another path")
        extravars["audit_dest"] = str(Path(dest).expanduser().resolve())
    if prometheus:
        extravars["audit_prometheus"] = True
    if unverified:
        extravars["audit_unverified"] = True
    if action == "export" and dest is None:
        raise BadInput("audit export needs a destination file (--output FILE)")

    def finish(job: Job) -> AuditResult:
        stats = _stats(job)
        data = stats.get("result") if isinstance(stats.get("result"), dict) else {}
        ok = job.status is JobStatus.SUCCESSFUL and stats.get("outcome") == "succeeded"
        msg = None if ok else (_first_failure_msg(job) or stats.get("message")
                               or f"audit playbook ended {job.status}; see {job.artifact_dir}")
        return AuditResult(job=job.as_json(), exit_code=_exit_code(job, ok), message=msg, action=action, data=data)

    empty = Path(__file__).resolve().parent / "empty_inventory.yml"  # the trail is read on the controller
    return start("audit", "audit.yml", extravars, finish, inventory=str(empty), event_handler=event_handler)
