"""The chatops service's runs: what a chat command or an API call asked for, through the driver.

Every run goes through :mod:`exchpatch.api` (ansible-runner, the collection's playbooks): the same
preflight, lease, gates, rollback and audit trail as a shell operator gets, with the requester's
identity as the operator. What only the service adds is checked here, before any job starts: the
requester's role, the patch id or component (the closest valid ones named), free text, a scope someone
else holds, and the approvals a run needs — given in chat by an approver who is not the requester,
signed with that approver's chat key (docs/chatops.md), so the preflight verifies the same approval
record as for ``exchpatch approve``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import difflib
import glob
import json
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from exchpatch import api
from exchpatch.jobs import TEMPLATE_MARKERS, BadInput, Job, JobEvent, JobStatus, data_dir, new_job_id
from exchpatch.progress import Progress
from exchpatch.serve.config import Config, Identity
from exchpatch.serve.store import LIVE_STATES, RunStore, now_iso

# component -> the lease scope prefix its rollouts take (roles/preflight/tasks/main.yml: shard-N, chain-X)
SCOPE_PREFIX = {"matching-engine": "shard-", "wallet-signer": "chain-"}
_VERSION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$")
MAX_TEXT = 500
READ_CACHE_S = 5.0  # a burst of /patch status shares one playbook run


class Refused(Exception):
    """A request refused before any job started: ``code`` (docs/chatops.md), HTTP ``status``, one-line message."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


def check_text(value: Any, what: str) -> str:
    """Free text a person typed (a reason): plain, one line, no template markers."""
    if not isinstance(value, str) or not value.strip():
        raise Refused("bad_text", f"{what} is empty; say why in a sentence")
    if len(value) > MAX_TEXT:
        raise Refused("bad_text", f"{what} is {len(value)} characters long; keep it under {MAX_TEXT}")
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in value):
        raise Refused("bad_text", f"{what} contains control characters; use plain text on one line")
    if any(m in value for m in TEMPLATE_MARKERS):
        raise Refused("bad_text", f"{what} contains a template marker ({{{{, {{%, {{# or #jinja2:}}); text is never "
                      "run as a template: rephrase it without them")
    return value.strip()


def _closest(word: str, choices: list[str]) -> str:
    near = difflib.get_close_matches(word, choices, n=3, cutoff=0.5)
    return f"closest: {', '.join(near)}" if near else f"known: {', '.join(choices[:8]) or 'none'}"


class _Lines:
    """A text stream for :class:`exchpatch.progress.Progress`: each line it prints becomes a callback."""

    def __init__(self, emit: Callable[[str], None]) -> None:
        self._emit = emit
        self._buf = ""

    def write(self, text: str) -> int:
        self._buf += text
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            if line.strip():
                self._emit(line.rstrip())
        return len(text)

    def flush(self) -> None:
        return None


class RunManager:
    """Starts, follows, cancels and approves runs; the store keeps them across restarts."""

    def __init__(self, config: Config, store: RunStore, notify: Callable[[dict[str, Any], str, dict[str, Any]], None],
                 on_outcome: Callable[[str, str], None] | None = None) -> None:
        self.config = config
        self.store = store
        self._notify = notify  # (run, kind, data): the Slack side posts progress and summaries
        self._on_outcome = on_outcome or (lambda kind, outcome: None)
        self._jobs: dict[str, Job] = {}
        self._lock = threading.RLock()
        self._reads: dict[str, tuple[float, threading.Event, dict[str, Any]]] = {}

    # ------------------------------------------------------------------ restart
    def recover(self) -> list[str]:
        """Runs that were in flight when the service stopped: interrupted (the rollout's own resume rules apply
        to the next deploy: a stale lease is taken over and done nodes are skipped)."""
        ids = []
        for run in self.store.list_runs(limit=1000, states=["running"]):
            if self.store.update_run(run["id"], expect_state=["running"], state="interrupted",
                                     finished_at=now_iso(), message="the service stopped while this run was in "
                                     "flight; its outcome is the audit trail's (/patch history); deploy again to "
                                     "resume: the stale lease is taken over and done nodes are skipped"):
                self._event(run["id"], "interrupted", {"text": "the service restarted while this run was in flight"})
                ids.append(run["id"])
        return ids

    def reconcile(self, history: list[dict[str, Any]]) -> None:
        """Give interrupted runs the outcome the audit trail recorded for their job."""
        by_job = {r.get("run"): r for r in history}
        for run in self.store.list_runs(limit=200, states=["interrupted"]):
            row = by_job.get(run.get("job_id"))
            if row and row.get("outcome") and run.get("outcome") != row["outcome"]:
                self.store.update_run(run["id"], outcome=row["outcome"])

    # ------------------------------------------------------------------ checks
    def _catalog(self) -> dict[str, dict[str, Any]]:
        """The catalog's entries by id, parsed again only when a file changed (every deploy command reads it)."""
        paths = sorted(glob.glob(os.path.join(self.config.catalog or "", "*.y*ml")))
        stamp = tuple((p, os.stat(p).st_mtime_ns) for p in paths if os.path.isfile(p))
        with self._lock:
            if getattr(self, "_catalog_stamp", None) == stamp:
                return self._catalog_cache
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        entries: dict[str, dict[str, Any]] = {}
        for path, _mtime in stamp:
            try:
                doc = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=loader)  # a safe loader (C if built)
            except (OSError, yaml.YAMLError):
                continue
            if isinstance(doc, dict) and isinstance(doc.get("id"), str):
                entries.setdefault(doc["id"], doc)
        with self._lock:
            self._catalog_stamp, self._catalog_cache = stamp, entries
        return entries

    def catalog_ids(self) -> list[str]:
        return sorted(self._catalog())

    def catalog_entry(self, patch_id: str) -> dict[str, Any]:
        if not isinstance(patch_id, str) or not patch_id:
            raise Refused("bad_input", "give a patch id, e.g. /patch deploy matching-engine-1.4.3")
        entries = self._catalog()
        if patch_id in entries:
            return entries[patch_id]
        shown = patch_id if len(patch_id) <= 80 and patch_id.isprintable() else repr(patch_id[:80])
        raise Refused("unknown_patch", f"patch {shown} is not in the catalog; "
                      f"{_closest(patch_id, sorted(entries))} (/patch plan lists what is pending)", 422)

    @staticmethod
    def check_component(component: Any) -> str:
        if component not in api.COMPONENTS:
            shown = str(component)[:80]
            raise Refused("unknown_component", f"component {shown!r} is not known; "
                          f"{_closest(shown, list(api.COMPONENTS))}", 422)
        return component

    def holder(self, component: str) -> str | None:
        """Who holds (or is about to hold) ``component``'s scopes: a live run of this service, or a lease."""
        prefix = SCOPE_PREFIX[component]
        for run in self.store.list_runs(limit=200, states=list(LIVE_STATES)):
            if run["params"].get("component") == component and not run["params"].get("check"):
                what = run["params"].get("patch_id") or f"rollback of {component}"
                return (f"{component} is being changed by {run['requester']}'s run {run['id']} ({run['kind']} of "
                        f"{what}, {run['state'].replace('_', ' ')}) since {run['started_at'] or run['created_at']}; "
                        f"wait for it to finish (/patch status), or cancel it: /patch cancel {run['id']}")
        for lease in self._leases(prefix):
            return (f"{lease['scope']} is held by {lease['owner']} (run {lease['run_id']}, "
                    f"{'patch ' + lease['patch'] if lease.get('patch') else 'no patch recorded'}) since "
                    f"{lease['acquired_at']}, until {lease['expires_at']}; wait for that rollout to finish")
        return None

    def _leases(self, prefix: str) -> list[dict[str, Any]]:
        from exchpatch.collection import module_utils

        store = module_utils("_store")
        conf = store.settings()
        if conf.is_postgresql:
            with store.connect(conf) as conn, conn.cursor() as cur:
                cur.execute("SELECT scope, owner, run_id, patch, acquired_at, expires_at FROM exchpatch_lease "
                            "WHERE scope LIKE %s AND expires_at > now() ORDER BY scope", (prefix + "%",))
                return [{"scope": s, "owner": o, "run_id": r, "patch": p, "acquired_at": a.isoformat(),
                         "expires_at": e.isoformat()} for s, o, r, p, a, e in cur.fetchall()]
        lock = module_utils("_lock")
        out = []
        now = dt.datetime.now(dt.UTC)
        for path in sorted(glob.glob(os.path.join(self.config.lock_dir or "/nonexistent", prefix + "*.lock"))):
            scope = os.path.basename(path)[: -len(".lock")]
            try:
                record = lock.read_lock(self.config.lock_dir, scope)
            except lock.LockError:
                out.append({"scope": scope, "owner": "unknown (unreadable lock file " + path + ")", "run_id": "?",
                            "patch": None, "acquired_at": "?", "expires_at": "?"})
                continue
            if record is not None and not record.expired(now):
                out.append(record.to_dict())
        return out

    # ------------------------------------------------------------------ submit
    def submit_deploy(self, who: Identity, source: str, *, patch_id: str, check: bool = False,
                      emergency: bool = False, downgrade: bool = False, reason: str | None = None,
                      notify: dict[str, Any] | None = None) -> dict[str, Any]:
        entry = self.catalog_entry(patch_id)
        component = entry.get("component")
        if reason is not None:
            reason = check_text(reason, "reason")
        if (emergency or downgrade) and not reason:
            raise Refused("bad_input", f"an {'emergency' if emergency else 'downgrade'} deploy needs a reason: "
                          f"/patch deploy {patch_id} {'emergency' if emergency else 'downgrade'} because <why>")
        kinds = (["emergency"] if emergency else []) + (["downgrade"] if downgrade else [])
        if entry.get("migration") == "irreversible":
            kinds.append("irreversible")
        params = {"patch_id": patch_id, "component": component, "check": bool(check), "emergency": bool(emergency),
                  "downgrade": bool(downgrade), "reason": reason}
        return self._new_run("deploy", who, source, params, kinds, notify)

    def submit_rollback(self, who: Identity, source: str, *, component: str, to: str | None = None,
                        check: bool = False, notify: dict[str, Any] | None = None) -> dict[str, Any]:
        self.check_component(component)
        if to is not None and (not isinstance(to, str) or not _VERSION_RE.match(to)):
            raise Refused("bad_input", f"version {str(to)[:80]!r} is not a version; e.g. /patch rollback "
                          f"{component} to 1.4.2")
        return self._new_run("rollback", who, source, {"component": component, "to": to, "check": bool(check)}, [],
                             notify)

    def _new_run(self, kind: str, who: Identity, source: str, params: dict[str, Any], kinds: list[str],
                 notify: dict[str, Any] | None) -> dict[str, Any]:
        with self._lock:  # two commands for one component at once: the second sees the first's row
            if not params.get("check") and (held := self.holder(params["component"])):
                raise Refused("scope_held", held, 409)
            run = {"id": new_job_id(), "kind": kind, "requester": who.name, "source": source, "params": params,
                   "state": "awaiting_approval" if kinds else "running", "notify": notify,
                   "approval": {"kinds": kinds, "requested_at": now_iso(), "approver": None, "decided_at": None}
                   if kinds else None}
            run = self.store.create_run(run)
        self._event(run["id"], "requested", {"text": f"{who.name} asked for {describe(run)} ({source})"})
        if kinds:
            self._event(run["id"], "approval_requested",
                        {"text": f"{describe(run)} needs an approval ({', '.join(kinds)}) from an approver other "
                         f"than {who.name}", "kinds": kinds})
            self._notify(run, "approval_requested", {"kinds": kinds})
            return run
        return self._start(run)

    # ------------------------------------------------------------------ approve, cancel
    def decide(self, who: Identity, run_id: str, decision: str, reason: str | None = None) -> dict[str, Any]:
        if decision not in ("approve", "deny"):
            raise Refused("bad_input", f"decision {str(decision)[:40]!r} is not valid; use approve or deny")
        if not who.may("approve"):
            raise Refused("forbidden_role", f"{who.name} is not an approver; ask someone with the approver role",
                          403)
        run = self.store.get_run(run_id) if isinstance(run_id, str) else None
        if run is None:
            raise Refused("not_found", f"run {str(run_id)[:80]!r} does not exist; GET /v1/runs lists the runs (in "
                          "chat: give the run id a deploy or rollback answered with)", 404)
        if run["requester"].casefold() == who.name.casefold():
            raise Refused("self_approval", f"{who.name} asked for this run and cannot approve it; another approver "
                          "must", 403)
        if run["state"] != "awaiting_approval":
            raise Refused("not_awaiting", f"run {run_id} is {run['state'].replace('_', ' ')}, not waiting for an "
                          "approval", 409)
        if reason is not None:
            reason = check_text(reason, "reason")
        if decision == "deny":
            denied = {**run["approval"], "denied_by": who.name, "decided_at": now_iso()}
            if not self.store.update_run(run_id, expect_state=["awaiting_approval"], state="denied",
                                         finished_at=now_iso(), approval=denied):
                raise Refused("not_awaiting", f"run {run_id} was decided a moment ago", 409)
            self._event(run_id, "denied", {"text": f"{who.name} denied {describe(run)}", "by": who.name})
            run = self.store.get_run(run_id) or run
            self._notify(run, "denied", {"by": who.name})
            return run
        if not who.approval_key:
            raise Refused("forbidden_role", f"{who.name} has no chat signing key (identities.{who.name}.approval_key)"
                          "; an approval in chat is signed with the approver's key listed in allowed_signers "
                          "(docs/chatops.md)", 403)
        # claim the run first: two approvers clicking at once start one job
        if not self.store.update_run(run_id, expect_state=["awaiting_approval"], state="running"):
            raise Refused("not_awaiting", f"run {run_id} was decided a moment ago", 409)
        try:
            files, verified = self._sign_approvals(who, run, reason)
        except Refused:
            self.store.update_run(run_id, state="awaiting_approval")
            raise
        approval = {**run["approval"], "approver": verified[0]["approver"], "approved_by": who.name,
                    "decided_at": now_iso(), "approvals": verified}
        self.store.update_run(run_id, approval=approval)
        kinds = ", ".join(a["kind"] for a in verified)
        self._event(run_id, "approved", {"text": f"{who.name} approved {describe(run)} ({kinds}, signed with "
                                         f"{verified[0]['approver_key_fingerprint']})", "by": who.name})
        run = self.store.get_run(run_id) or run
        self._notify(run, "approved", {"by": who.name})
        return self._start(run, approval_files=files)

    def _sign_approvals(self, who: Identity, run: dict[str, Any], reason: str | None
                        ) -> tuple[list[str], list[dict[str, Any]]]:
        from exchpatch.collection import module_utils

        approval = module_utils("_approval")
        seconds = approval.parse_validity(self.config.approval_valid_for).total_seconds()
        now = dt.datetime.now(dt.UTC)
        params = run["params"]
        text = (reason or params.get("reason") or "approved in chat") + f" (approved in chat by {who.name})"
        folder = data_dir() / "approvals"
        folder.mkdir(exist_ok=True, mode=0o700)
        files, verified = [], []
        for kind in run["approval"]["kinds"]:
            try:
                doc = approval.make_document(kind, params["patch_id"], run["requester"], text[:approval.MAX_REASON],
                                             now + dt.timedelta(seconds=seconds), now)
                signed = approval.load_approval(approval.approval_file_text(
                    doc.canonical(), approval.sign(doc.canonical(), str(who.approval_key))), f"{kind} approval")
                # the checks the preflight makes, so a bad key shows here and not at deploy time
                ok = approval.verify(signed, kinds=[kind], patch_id=params["patch_id"], operator=run["requester"],
                                     allowed_signers=str(self.config.allowed_signers), now=now)
            except approval.ApprovalError as e:
                raise Refused("approval_failed", f"the approval could not be made with {who.name}'s chat key: {e}",
                              409) from None
            path = folder / f"{run['id']}-{kind}.approval.json"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as fh:
                fh.write(signed.file_text())
            files.append(str(path))
            verified.append(ok.to_dict())
            self._publish(approval, signed, ok)
        return files, verified

    @staticmethod
    def _publish(approval: Any, signed: Any, ok: Any) -> None:
        """With the PostgreSQL state store the approval is also published, as `exchpatch approve --store` does."""
        from exchpatch.collection import module_utils

        store = module_utils("_store")
        conf = store.settings()
        if conf.is_postgresql:
            with store.connect(conf) as conn:
                approval.publish(conn, signed, ok.approver, ok.fingerprint)

    def cancel(self, who: Identity, run_id: str) -> dict[str, Any]:
        if not who.may("cancel"):
            raise Refused("forbidden_role", f"{who.name} may not cancel runs (operator role needed)", 403)
        run = self.store.get_run(run_id) if isinstance(run_id, str) else None
        if run is None:
            raise Refused("not_found", f"run {str(run_id)[:80]!r} does not exist; GET /v1/runs lists the runs (in "
                          "chat: give the run id a deploy or rollback answered with)", 404)
        if run["state"] == "awaiting_approval" and self.store.update_run(
                run_id, expect_state=["awaiting_approval"], state="canceled", outcome="canceled",
                finished_at=now_iso()):
            self._event(run_id, "canceled", {"text": f"{who.name} canceled {describe(run)} before it started"})
            return self.store.get_run(run_id) or run
        with self._lock:
            job = self._jobs.get(run_id)
        if run["state"] != "running" or job is None:
            raise Refused("not_running", f"run {run_id} is {run['state'].replace('_', ' ')}; only a running run can "
                          "be canceled", 409)
        job.cancel(grace=self.config.cancel_grace)
        self._event(run_id, "cancel_requested", {"text": f"{who.name} asked to cancel: the run stops before its next "
                                                 "node and rolls back the node in flight", "by": who.name})
        return self.store.get_run(run_id) or run

    def shutdown(self, wait: float) -> None:
        """On SIGTERM: ask every rollout to stop safely, wait up to ``wait`` seconds."""
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            job.cancel(grace=max(wait - 5, 0))
        deadline = time.time() + wait
        for job in jobs:
            with contextlib.suppress(Exception):  # shutting down: whatever it ended with is in the store
                job.wait(max(deadline - time.time(), 0.1))

    # ------------------------------------------------------------------ running
    def _start(self, run: dict[str, Any], approval_files: list[str] | None = None) -> dict[str, Any]:
        params = run["params"]
        progress = Progress(_Lines(lambda line: self._event(run["id"], "progress", {"text": line})))

        def on_event(job: Job, event: JobEvent) -> None:
            progress(job, event)

        def on_status(job: Job, status: JobStatus) -> None:
            if status.done:
                self._finished(run["id"], job)

        common = {"inventory": self.config.inventory, "check": bool(params.get("check")),
                  "operator": run["requester"], "event_handler": on_event, "status_handler": on_status}
        try:
            if run["kind"] == "deploy":
                job = api.deploy(params["patch_id"], emergency=bool(params.get("emergency")),
                                 reason=params.get("reason"), approval=approval_files or None,
                                 allow_downgrade=bool(params.get("downgrade")),
                                 accept_irreversible="irreversible" in ((run.get("approval") or {}).get("kinds") or []),
                                 catalog=self.config.catalog, **common)
            else:
                job = api.rollback(params["component"], to=params.get("to"), **common)
        except BadInput as e:
            self.store.update_run(run["id"], state="finished", outcome="refused", message=str(e),
                                  finished_at=now_iso())
            self._event(run["id"], "finished", {"text": f"refused: {e}", "outcome": "refused"})
            run = self.store.get_run(run["id"]) or run
            self._notify(run, "finished", {})
            return run
        with self._lock:
            if not job.done:  # a job that already ended was finished by on_status
                self._jobs[run["id"]] = job
        self.store.update_run(run["id"], job_id=job.id, started_at=now_iso())
        self._event(run["id"], "started", {"text": f"started {describe(run)} as job {job.id}", "job_id": job.id})
        return self.store.get_run(run["id"]) or run

    def _finished(self, run_id: str, job: Job) -> None:
        result = job.result
        if job.error is not None or result is None:
            outcome, message, data = "failed", f"the run ended with an error: {job.error}", {}
        else:
            data = result.as_json()
            outcome, message = data.get("outcome") or "failed", data.get("message")
        stats = data.get("stats") or {}
        report = None
        if job.kind in ("deploy", "rollback") and outcome not in ("refused", "check"):
            # the run's self-contained HTML report beside the audit trail, as `exchpatch deploy` writes it
            with contextlib.suppress(Exception):
                rep = api.audit("report", run=job.id).wait(120)
                report = rep.data.get("path") if rep.exit_code == 0 else None
        summary = {"outcome": outcome, "message": message, "converged_version": stats.get("converged_version"),
                   "failed_nodes": data.get("failed_nodes") or stats.get("failed_nodes") or [],
                   "failures": stats.get("failures") or [], "report": report or stats.get("report"), "job_id": job.id,
                   "approver": (data.get("change") or {}).get("approver")}
        state = "canceled" if outcome == "canceled" else "finished"
        self.store.update_run(run_id, state=state, outcome=outcome, message=message, finished_at=now_iso(),
                              result=summary)
        with self._lock:
            self._jobs.pop(run_id, None)
        self._event(run_id, "finished", {"text": f"finished: {outcome}" + (f" ({message})" if message else ""),
                                         **summary})
        run = self.store.get_run(run_id)
        if run:
            self._on_outcome(run["kind"], outcome)
            self._notify(run, "finished", summary)

    def _event(self, run_id: str, kind: str, data: dict[str, Any]) -> None:
        self.store.add_event(run_id, kind, data)
        if kind == "progress":
            run = self.store.get_run(run_id)
            if run:
                self._notify(run, "progress", data)

    def in_flight(self) -> int:
        with self._lock:
            return len(self._jobs)

    # ------------------------------------------------------------------ read-only
    def read(self, what: str) -> dict[str, Any]:
        """plan, status or history through the driver; concurrent callers share one run (and its result for
        a few seconds), so fifty chat users asking at once start one playbook."""
        with self._lock:
            entry = self._reads.get(what)
            if entry and (not entry[1].is_set() or time.time() - entry[0] < READ_CACHE_S):
                started, done, box = entry
            else:
                started, done, box = time.time(), threading.Event(), {}
                self._reads[what] = (started, done, box)
                threading.Thread(target=self._read, args=(what, done, box), daemon=True,
                                 name=f"exchpatch-serve-{what}").start()
        done.wait()
        if "error" in box:
            raise box["error"]
        return box["result"]

    def _read(self, what: str, done: threading.Event, box: dict[str, Any]) -> None:
        try:
            if what == "status":
                result = api.status(inventory=self.config.inventory).wait()
                box["result"] = result.as_json()
            elif what == "history":
                result = api.audit("history").wait()
                box["result"] = {"runs": (result.data or {}).get("runs", []), "exit_code": result.exit_code,
                                 "message": result.message}
                if result.exit_code == 0:
                    self.reconcile(box["result"]["runs"])
            else:
                if not (self.config.feeds or self.config.feed_cache):
                    raise Refused("not_configured", "plan needs advisory feeds: set driver.feed_cache (a folder "
                                  "exchpatch feeds sync keeps) or driver.feeds in the service's config", 503)
                result = api.plan(list(self.config.feeds), self.config.catalog or "", inventory=self.config.inventory,
                                  feed_cache=self.config.feed_cache).wait()
                box["result"] = {"plan": result.plan, "exit_code": result.exit_code, "message": result.message}
        except (Refused, BadInput, Exception) as e:  # noqa: BLE001 - handed to every waiting caller
            box["error"] = e if isinstance(e, Refused) else Refused(
                "failed", f"{what} could not be read: {e}", 502)
        finally:
            done.set()


def describe(run: dict[str, Any]) -> str:
    p = run.get("params") or {}
    if run.get("kind") == "deploy":
        flags = [f for f in ("check", "emergency", "downgrade") if p.get(f)]
        return f"deploy of {p.get('patch_id')}" + (f" ({', '.join(flags)})" if flags else "")
    to = f" to {p['to']}" if p.get("to") else ""
    return f"rollback of {p.get('component')}{to}" + (" (check)" if p.get("check") else "")


def public(run: dict[str, Any]) -> dict[str, Any]:
    """A run as the API shows it (the response URL is a bearer credential of Slack's: never shown)."""
    out = {k: v for k, v in run.items() if k != "notify"}
    return json.loads(json.dumps(out))
