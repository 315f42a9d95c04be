# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
name: audit
type: notification
short_description: Write every playbook event, redacted, to a keyed hash-chained audit trail
version_added: 0.1.0
description:
  - Appends one JSON record per event to the audit trail, in which every record carries the link of the
    record before it, so that an edited, removed, inserted or reordered record is found by the
    M(exchangeops.patching.audit_trail) module (C(action=verify)). With an audit key the link is an
    HMAC-SHA256 (C(mac=hmac-sha256)), so a chain recomputed without the key does not verify; without one it
    is plain sha256 (C(mac=sha256)) and the trail verifies only as C(unkeyed).
  - The trail is a JSON Lines file (the file state store, the default) or the C(exchpatch_audit) table of
    the PostgreSQL state store shared by a team (inventory C(exchange_state_store=postgresql) and the
    vaulted C(exchange_state_store_dsn), or E(EXCHPATCH_STATE_STORE) and E(EXCHPATCH_STATE_STORE_DSN)), where
    appends from every controller form one chain.
  - The key comes from the inventory variable C(exchange_audit_key) (vault or AWX credential) or from
    O(key_file). It is never written anywhere, and is redacted wherever it would appear in a record.
  - Records that cannot be written (database unreachable, key file refused) are never dropped and never
    stop the run. They are kept, in order, in a spool file (mode C(0600)) in the C(spool) folder beside
    the audit file, and appended (chained, in order) as soon as the trail can be written again, at the
    latest at the end of the run; a spool a run could not write is appended by the next run. Store
    settings and the key are read when the first play starts, so records before that wait in memory.
  - Each run opens a change record (V(change_opened)) with the operator, approver, reason, emergency
    flag, patch and check mode; adds what the playbook learns (V(change_updated), from the
    C(audit_change) fact that the collection's playbooks set with M(ansible.builtin.set_fact));
    records every task start and result (V(event)); and closes the change with its outcome
    (V(change_closed)) at the end of the run. A run killed before its end keeps every record
    already written; the history shows it as interrupted.
  - "Redacted before hashing and writing, keys and values alike: the value of any key whose name
    contains token, password, passwd, passphrase, secret, credential, vault, private_key, api_key,
    dsn or auth (authorization, auth_token; not author), or is pass or pwd as a word
    (ansible_become_pass); the password of any URL (C(https://user:pass@host),
    C(postgresql://u:p@h/db)), Bearer and Basic credentials and the value of C(password=...)-like
    pairs in any text; and every secret value seen in extra vars, inventory variables, vault
    secrets or task results (the values of such keys and URL passwords, of any length), also
    percent-encoded, JSON- or HTML-escaped or base64-encoded. Secrets of 6 characters or more are
    cut wherever they occur, of 4 or 5 characters where they stand as a word of their own, of 1 to
    3 characters where a whole value equals them. Results of C(no_log) tasks stay censored."
  - The operator is the AWX user when the job runs under AWX (the extra var C(awx_user_name) or
    C(tower_user_name)), else the extra var C(preflight_operator), else the environment variable
    E(EXCHPATCH_OPERATOR), else the login user; reason and emergency from the extra vars
    C(preflight_reason) and C(preflight_emergency). Only plain values count (letters, digits and
    C(. _ @ + -)); a value holding a template (C({{ awx_user_name }})) is never rendered and never
    recorded as a name. The approver is never taken from a variable; the
    preflight records the identity and key fingerprint of a verified signed approval through the
    C(audit_change) fact.
  - The run id is E(EXCHPATCH_RUN_ID) when set (the exchpatch driver sets it to its job id); under AWX
    C(awx-job-<id>) from the extra var C(awx_job_id) (or C(tower_job_id)) or the job environment's
    E(JOB_ID); else a fresh uuid4. The callback exports it as E(EXCHPATCH_RUN_ID) to the playbook, whose
    run_contract role and set_stats name the same change record; the AWX job and workflow job ids are
    recorded in the change record (C(awx)).
  - Several runs may write the same trail at once; a file append holds an exclusive C(flock) on the file and
    is fsynced, a PostgreSQL append locks the head row in its transaction. A write error is shown as a
    warning and never stops the playbook.
  - The file format is documented in docs/audit.md of the collection.
requirements:
  - Enable the callback, for example C(callbacks_enabled = exchangeops.patching.audit) in the
    C([defaults]) section of C(ansible.cfg).
options:
  audit_file:
    description:
      - The audit trail file. Its folder is created with mode C(0700) and the file with C(0600).
      - Defaults to C($XDG_STATE_HOME/exchpatch/audit.jsonl), that is
        C(~/.local/state/exchpatch/audit.jsonl) when E(XDG_STATE_HOME) is unset.
    type: path
    env:
      - name: EXCHPATCH_AUDIT_FILE
    ini:
      - section: exchpatch_audit
        key: file
  key_file:
    description:
      - A file holding the audit key (at least 16 characters), readable by its owner only (mode C(0400));
        a file group or others may read is refused (the records then wait in the spool). The inventory
        variable C(exchange_audit_key) wins when both are set.
    type: path
    env:
      - name: EXCHPATCH_AUDIT_KEY_FILE
    ini:
      - section: exchpatch_audit
        key: key_file
  exclude_playbooks:
    description:
      - Playbook file names (basenames) that are not recorded. Reading the trail is not a change.
    type: list
    elements: str
    default: [audit.yml]
    env:
      - name: EXCHPATCH_AUDIT_EXCLUDE
    ini:
      - section: exchpatch_audit
        key: exclude_playbooks
"""

import atexit
import contextlib
import datetime as dt
import fcntl
import getpass
import glob
import json
import os
import re
import time
import uuid
from typing import Any

from ansible import context
from ansible.plugins.callback import CallbackBase
from ansible.utils.display import Display
from ansible.utils.vars import load_extra_vars
from ansible_collections.exchangeops.patching.plugins.module_utils._audit import (
    AuditError,
    Trail,
    default_path,
    iso,
    load_key,
    open_trail,
    trim,
    utc_now,
)
from ansible_collections.exchangeops.patching.plugins.module_utils._redact import Redactor

display = Display()

# Result keys that never go into an event: Ansible internals, the module's arguments, and
# bulky copies of other keys.
DROP_KEYS = {"invocation", "stdout_lines", "stderr_lines", "diff", "_ansible_no_log", "_ansible_verbose_always",
             "_ansible_item_label", "_ansible_delegated_vars", "ansible_loop_var", "_ansible_parsed",
             "warnings", "deprecations", "module_args"}


# Inventory variables the trail is configured from (see docs/audit.md).
KEY_VAR = "exchange_audit_key"
STORE_VAR = "exchange_state_store"
DSN_VAR = "exchange_state_store_dsn"
# Seconds between two attempts to write after a failure: doubled up to the maximum.
RETRY_FIRST = 1.0
RETRY_MAX = 30.0
# A shorter connect timeout than the store's default: a controller waiting on a dead database holds up the run.
CONNECT_TIMEOUT = 3


class Spool:
    """Records not yet in the trail, kept in a 0600 file (whole lines, fsynced) while this run holds an
    exclusive flock on it; truncated once they are written, removed at the end when empty."""

    def __init__(self, folder: str, run_id: str) -> None:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        self.path = os.path.join(folder, re.sub(r"[^A-Za-z0-9._-]", "_", run_id) + ".jsonl")
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0), 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        os.ftruncate(self.fd, 0)
        self.count = 0

    def add(self, records: list[dict[str, Any]]) -> None:
        if records:
            os.write(self.fd, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode("utf-8"))
            os.fsync(self.fd)
            self.count += len(records)

    def clear(self) -> None:
        os.ftruncate(self.fd, 0)
        os.fsync(self.fd)
        self.count = 0

    def close(self) -> bool:
        """Release the spool; True when it was empty (and removed)."""
        empty = self.count == 0
        if empty:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        os.close(self.fd)
        return empty


def recover_spools(folder: str, trail: Trail, own: str | None = None) -> int:
    """Append the records of spools no running run holds (a run that ended with the trail unreachable, or
    was killed), each spool in its order; remove each once written. Returns the number of records."""
    written = 0
    for path in sorted(glob.glob(os.path.join(folder, "*.jsonl"))):
        if own and os.path.abspath(path) == os.path.abspath(own):
            continue
        try:
            fd = os.open(path, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # its run is still going and will write it
            with os.fdopen(os.dup(fd), "rb") as fh:
                lines = fh.read().decode("utf-8", errors="replace").splitlines()
            records = []
            for line in lines:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict) and rec.get("kind"):
                    records.append(rec)
            trail.append(records)
            written += len(records)
            os.ftruncate(fd, 0)
            os.unlink(path)
        finally:
            os.close(fd)
    return written


def _clean(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k not in DROP_KEYS and not str(k).startswith("_ansible")}


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on", "y")
    return bool(value)


_PERSON_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,149}\Z")
_JOB_ID_RE = re.compile(r"[0-9]{1,18}\Z")
_RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}\Z")


def _plain(value: Any, pattern: re.Pattern[str]) -> str | None:
    """A variable's value as it was given when it is a plain value of the pattern; never a template."""
    if isinstance(value, bool) or value is None:
        return None
    text = str(value) if isinstance(value, int | str) else ""
    return text if pattern.match(text) else None


def _awx_identity(extra: dict[str, Any]) -> dict[str, str | None]:
    """AWX's own variables (awx_*, their tower_* aliases, the job environment's JOB_ID), plain values only."""
    return {
        "user": _plain(extra.get("awx_user_name"), _PERSON_RE) or _plain(extra.get("tower_user_name"), _PERSON_RE),
        "job_id": (_plain(extra.get("awx_job_id"), _JOB_ID_RE) or _plain(extra.get("tower_job_id"), _JOB_ID_RE)
                   or _plain(os.environ.get("JOB_ID"), _JOB_ID_RE)),
        "workflow_job_id": (_plain(extra.get("awx_workflow_job_id"), _JOB_ID_RE)
                            or _plain(extra.get("tower_workflow_job_id"), _JOB_ID_RE)),
    }


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


class CallbackModule(CallbackBase):
    """Appends the audit records of a run to the hash-chained trail."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "exchangeops.patching.audit"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, display=None):
        super().__init__(display=display)
        self.path = default_path()
        self.key_file: str | None = None
        self.exclude: list[str] = ["audit.yml"]
        self.run_id_given = bool(_plain(os.environ.get("EXCHPATCH_RUN_ID"), _RUN_ID_RE))
        job = _plain(os.environ.get("JOB_ID"), _JOB_ID_RE)
        self.run_id = (os.environ.get("EXCHPATCH_RUN_ID") if self.run_id_given
                       else f"awx-job-{job}" if job else uuid.uuid4().hex)
        # the playbook (run_contract role, set_stats) names the same change record
        os.environ["EXCHPATCH_RUN_ID"] = self.run_id
        self.redactor = Redactor()
        self.opened = False
        self.closed = False
        self.skip = False
        # records not yet in the trail, in order; the trail is resolved when the first play starts
        self.pending: list[dict[str, Any]] = []
        self.trail: Trail | None = None
        self.resolved = False
        self.setup_error: str | None = None
        self.spool: Spool | None = None
        self.retry_at = 0.0
        self.retry_wait = RETRY_FIRST
        self.warned = False
        self.inventory_conf: dict[str, Any] = {}
        self.started: dt.datetime | None = None
        self.check_mode = False
        self.change: dict[str, Any] = {}
        self.play_name: str | None = None
        self.learned_inventory = False
        self.task_started: dict[str, float] = {}
        self.failures = 0

    def set_options(self, task_keys=None, var_options=None, direct=None):
        super().set_options(task_keys=task_keys, var_options=var_options, direct=direct)
        self.path = os.path.expanduser(self.get_option("audit_file") or default_path())
        self.key_file = self.get_option("key_file") or None
        self.exclude = [str(p) for p in self.get_option("exclude_playbooks") or []]

    # --- writing ---------------------------------------------------------------------------

    def _write(self, kind: str, **fields: Any) -> None:
        if self.skip:
            return
        record = {"run": self.run_id, "kind": kind, "ts": iso(utc_now())}
        record.update(self.redactor.redact(fields))
        self.pending.append(record)
        if self.resolved:
            self._flush()

    def _resolve(self) -> None:
        """Open the trail from the inventory (key, store, DSN) or the callback's options and environment,
        and append what earlier runs left in the spool."""
        if self.resolved:
            return
        self.resolved = True
        conf = self.inventory_conf
        try:
            key = load_key(conf.get(KEY_VAR), self.key_file)
            if key:
                self.redactor.learn(key.decode("utf-8", errors="replace"))
            # audit_file is the trail of the file store; with postgresql it only places the spool
            self.trail = open_trail(None, conf.get(STORE_VAR), conf.get(DSN_VAR), key,
                                    connect_timeout=CONNECT_TIMEOUT, file_path=self.path)
        except AuditError as e:
            self.setup_error = str(e)
            self._display.warning(self.redactor.redact_text(
                f"audit trail not configured ({e}); records are kept in the spool until it is fixed"))
            return
        try:
            recovered = recover_spools(self._spool_folder(), self.trail)
            if recovered:
                self._display.display(f"audit: appended {recovered} record(s) an earlier run had spooled")
        except (AuditError, OSError) as e:
            self._display.warning(self.redactor.redact_text(f"audit: earlier spooled records not written yet: {e}"))

    def _spool_folder(self) -> str:
        return os.path.join(os.path.dirname(os.path.abspath(self.path)), "spool")

    def _to_spool(self) -> None:
        if self.spool is None:
            self.spool = Spool(self._spool_folder(), self.run_id)
        self.spool.add(self.pending[self.spool.count:])

    def _flush(self, final: bool = False) -> None:
        """Write the pending records; on failure keep them (in memory and in the spool) for a retry."""
        if not self.pending:
            return
        if not final and time.monotonic() < self.retry_at:
            try:
                self._to_spool()
            except OSError as e:
                self._display.warning(f"audit: cannot write the spool ({e.strerror})")
            return
        error = self.setup_error
        if self.trail is not None and error is None:
            try:
                self.trail.append(self.pending)
                self.pending.clear()
                if self.spool is not None:
                    self.spool.clear()
                if self.warned:
                    self._display.display(f"audit: trail in {self.trail.where} writable again; spooled records "
                                          "appended")
                self.warned = False
                self.retry_wait = RETRY_FIRST
                return
            except (AuditError, OSError) as e:
                error = str(e)
        # The audit trail must never take a rollout down halfway: keep the records, say so loudly.
        self.retry_at = time.monotonic() + self.retry_wait
        self.retry_wait = min(self.retry_wait * 2, RETRY_MAX)
        try:
            self._to_spool()
            where = self.spool.path if self.spool else "memory"
        except OSError as e:
            where = f"memory only (spool not writable: {e.strerror})"
        if not self.warned:
            self.warned = True
            self._display.warning(self.redactor.redact_text(
                f"audit trail not written ({error}); {len(self.pending)} record(s) kept in {where}, to be appended "
                "in order when the trail is back"))

    def _finish(self) -> None:
        """End of the run: a last attempt, then release the spool (kept when records remain)."""
        self._resolve()
        self._flush(final=True)
        if self.spool is not None:
            path, count = self.spool.path, self.spool.count
            if not self.spool.close():
                self._display.warning(f"audit: {count} record(s) of this run could not be written to the trail; "
                                      f"they are kept in {path} and the next run appends them")
            self.spool = None
        if self.trail is not None:
            self.trail.close()

    # --- secrets ----------------------------------------------------------------------------

    def _learn_vault_secrets(self, loader: Any) -> None:
        vault = getattr(loader, "_vault", None)
        for _vault_id, secret in getattr(vault, "secrets", None) or []:
            try:
                self.redactor.learn(secret.bytes)
            except Exception:  # noqa: BLE001 - a secret that cannot be read cannot leak either
                continue

    def _learn_inventory_secrets(self, play: Any) -> None:
        if self.learned_inventory:
            return
        self.learned_inventory = True
        manager = play.get_variable_manager()
        inventory = getattr(manager, "_inventory", None)
        if inventory is None:
            return
        hosts = list(inventory.get_hosts(ignore_restrictions=True))
        local = inventory.get_host("localhost")
        for host in ([local] if local is not None and local not in hosts else []) + hosts:
            try:
                hostvars = manager.get_vars(play=play, host=host, include_hostvars=False)
                self.redactor.learn_from(hostvars)
                self._learn_conf(play, hostvars)
            except Exception as e:  # noqa: BLE001 - an inventory that cannot be read is reported, not fatal
                self._display.warning(self.redactor.redact_text(
                    f"audit: could not read the variables of {host} for redaction: {e}"))

    def _learn_conf(self, play: Any, hostvars: dict[str, Any]) -> None:
        """The audit key and the state store from the first host that has them (group_vars/all in practice)."""
        for name in (KEY_VAR, STORE_VAR, DSN_VAR):
            if name in self.inventory_conf or hostvars.get(name) in (None, ""):
                continue
            value = hostvars[name]
            try:
                from ansible.template import Templar  # pylint: disable=import-outside-toplevel
                value = Templar(loader=getattr(play, "_loader", None), variables=hostvars).template(value)
            except Exception:  # noqa: BLE001 - an untemplatable value is used as it is  # pylint: disable=broad-except
                pass
            self.inventory_conf[name] = str(value)
            if name != STORE_VAR:
                self.redactor.learn(str(value))

    # --- change record ----------------------------------------------------------------------

    def v2_playbook_on_start(self, playbook):
        name = os.path.basename(getattr(playbook, "_file_name", "") or "")
        if name in self.exclude:
            self.skip = True
            return
        loader = getattr(playbook, "_loader", None)
        extra: dict[str, Any] = {}
        if loader is not None:
            self._learn_vault_secrets(loader)
            try:
                extra = dict(load_extra_vars(loader))
            except Exception:  # noqa: BLE001 - bad extra vars fail the run itself, with Ansible's message
                extra = {}
        self.redactor.learn_from(extra)
        self.check_mode = bool(context.CLIARGS.get("check"))
        self.started = utc_now()
        emergency = _as_bool(extra.get("preflight_emergency", False))
        awx = _awx_identity(extra)
        if awx["job_id"] and not self.run_id_given and not self.pending:
            self.run_id = f"awx-job-{awx['job_id']}"
            os.environ["EXCHPATCH_RUN_ID"] = self.run_id
        operator = (awx["user"] or _plain(extra.get("preflight_operator"), _PERSON_RE)
                    or _plain(os.environ.get("EXCHPATCH_OPERATOR"), _PERSON_RE) or getpass.getuser())
        self.change = {"patch_id": _text(extra.get("patch_id")), "component": _text(extra.get("component"))}
        self._write(
            "change_opened", playbook=name, operator=operator, approver=None,
            awx={k: v for k, v in awx.items() if v} or None,
            reason=_text(extra.get("preflight_reason")), emergency=emergency, patch_id=self.change["patch_id"],
            component=self.change["component"], check_mode=self.check_mode, extra_vars=extra,
        )
        self.opened = True
        atexit.register(self._close_if_interrupted)

    def _close_if_interrupted(self) -> None:
        # Ctrl-C or a cancel that lets Python exit: close the change as canceled. A SIGKILL runs
        # nothing here; the history shows such a run as interrupted, and its spool (if any) is
        # appended by the next run.
        if self.opened and not self.closed and not self.skip:
            self._close("canceled", {})
            self._finish()

    def _close(self, outcome: str, stats: dict[str, Any]) -> None:
        self.closed = True
        finished = utc_now()
        self._write("change_closed", outcome=outcome, stats=stats,
                    started=iso(self.started or finished), finished=iso(finished))

    def _outcome(self, stats: dict[str, dict[str, int]]) -> str:
        if self.check_mode:
            return "check"
        stopped = self.change.get("stopped")
        if isinstance(stopped, dict) and stopped.get("reason") == "inconclusive":
            return "inconclusive"  # halted for a human: a traffic gate could not judge
        if _as_bool(self.change.get("halted")):
            return "halted"
        if _as_bool(self.change.get("rolled_back")):
            return "rolled_back"
        if any(s.get("failures") or s.get("unreachable") for s in stats.values()):
            # a playbook that marks its stages failed before any node could change: a refusal
            return "refused" if self.change.get("stage") == "preflight" else "failed"
        return "successful"

    def v2_playbook_on_stats(self, stats):
        per_host = {h: stats.summarize(h) for h in sorted(stats.processed)}
        self._write("event", event="playbook_on_stats", play=None, task=None, host=None, changed=None,
                    res={"hosts": len(per_host)}, duration_s=None)
        if self.opened and not self.closed:
            self._close(self._outcome(per_host), per_host)
        if not self.skip:
            self._finish()

    # --- events -----------------------------------------------------------------------------

    def v2_playbook_on_play_start(self, play):
        self.play_name = play.get_name()
        if self.skip:
            return
        self._learn_inventory_secrets(play)
        if not self.resolved:
            self._resolve()
            self._flush()
        self._write("event", event="playbook_on_play_start", play=self.play_name, task=None, host=None,
                    changed=None, res={"hosts": list(play.hosts) if isinstance(play.hosts, list) else play.hosts},
                    duration_s=None)

    def _task_start(self, event: str, task: Any) -> None:
        self.task_started[task._uuid] = time.monotonic()
        self._write("event", event=event, play=self.play_name, task=task.get_name(), host=None, changed=None,
                    res={"action": task.action}, duration_s=None)

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._task_start("playbook_on_task_start", task)

    def v2_playbook_on_handler_task_start(self, task):
        self._task_start("playbook_on_handler_task_start", task)

    def _result(self, event: str, result: Any, **extra: Any) -> None:
        task = result.task
        raw = dict(result.result)
        self.redactor.learn_from(raw)
        # redact before trimming: a cut must never leave half a secret behind
        data = self.redactor.redact({k: v for k, v in raw.items() if k != "_ansible_delegated_vars"})
        facts = data.get("ansible_facts")
        res = {k: trim(v) for k, v in _clean(data).items()}
        if isinstance(data.get("results"), list):
            res["results"] = trim([_clean(r) if isinstance(r, dict) else r for r in data["results"]])
        if isinstance(facts, dict):
            res["ansible_facts"] = sorted(facts)
        if event.startswith("runner_item"):
            res["item"] = trim(data.get("_ansible_item_label", data.get(data.get("ansible_loop_var", "item"))), 200)
        delegated = raw.get("_ansible_delegated_vars") or {}
        started = self.task_started.get(task._uuid)
        changed = data.get("changed")
        self._write("event", event=event, play=self.play_name, task=task.get_name(), host=result.host.get_name(),
                    action=task.action, delegated_to=delegated.get("ansible_delegated_host"),
                    changed=bool(changed) if changed is not None else None, res=res,
                    duration_s=round(time.monotonic() - started, 3) if started is not None else None, **extra)
        if event == "runner_on_ok" and isinstance(facts, dict) and isinstance(facts.get("audit_change"), dict):
            update = dict(facts["audit_change"])
            self.change.update({k: v for k, v in update.items() if v is not None})
            self._write("change_updated", change=update)

    def v2_runner_on_ok(self, result):
        self._result("runner_on_ok", result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._result("runner_on_failed", result, ignored=bool(ignore_errors))

    def v2_runner_on_unreachable(self, result):
        self._result("runner_on_unreachable", result)

    def v2_runner_on_skipped(self, result):
        self._result("runner_on_skipped", result)

    def v2_runner_item_on_ok(self, result):
        self._result("runner_item_on_ok", result)

    def v2_runner_item_on_failed(self, result):
        self._result("runner_item_on_failed", result)

    def v2_runner_item_on_skipped(self, result):
        self._result("runner_item_on_skipped", result)
