#!/usr/bin/python
# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: audit_trail
short_description: Verify the audit trail, list the run history, compute rollout metrics, render a run report
version_added: 0.1.0
description:
  - Reads the hash-chained audit trail that the C(exchangeops.patching.audit) callback writes (format in
    docs/audit.md), from its file or from the PostgreSQL state store, and, depending on O(action),
    verifies it, lists one history row per playbook run, computes the rollout metrics (deployments,
    rollbacks, change failure rate, MTTR per CVE, time to restore) optionally as Prometheus text, renders
    the self-contained HTML report of one run, or exports the trail as JSON Lines for an auditor.
  - Every action but V(verify) verifies the chain first and fails, naming the first broken record, when
    it does not verify, unless O(unverified=true).
  - With an audit key (O(key) or O(key_file)) every keyed record's HMAC is checked; without one the
    result says the trail is C(unkeyed) (its links are consistent, but nothing vouches that they were not
    recomputed), which is never reported as a verified keyed trail.
  - Runs on the controller; run it on C(localhost). It only reads the trail; O(dest) is the only file it
    writes (the report, the Prometheus text or the export).
  - A missing trail is an empty history and empty metrics; for O(action=verify) it is an error.
author:
  - exchangeops engineering (@exchangeops)
attributes:
  check_mode:
    description: Can run in check mode and return the same result.
    support: full
    details: In check mode nothing is written; for O(action=report) and O(prometheus) the path that would be
      written is returned.
  diff_mode:
    description: Will return details on what has changed.
    support: none
options:
  action:
    description:
      - V(verify) recomputes every record's hash and checks the C(prev) links and C(seq) continuity; the task
        fails, listing every problem with its line and seq, when any record was edited, removed, inserted,
        reordered or cut short.
      - V(history) returns one row per playbook run, oldest first.
      - V(metrics) returns the metrics defined in docs/audit.md, and the Prometheus text when O(prometheus)
        is true.
      - V(report) renders the HTML report of the run O(run) (the last run when omitted) to O(dest).
      - V(export) writes the whole trail as JSON Lines to O(dest) (mode C(0600)); the export verifies with
        V(verify) and the same key.
    type: str
    choices: [verify, history, metrics, report, export]
    required: true
  file:
    description:
      - The audit trail file. When given, this file is read whatever O(store) says (for example an export).
      - When omitted, the state store decides (O(store)); for the file store the default is
        E(EXCHPATCH_AUDIT_FILE), else C($XDG_STATE_HOME/exchpatch/audit.jsonl), that is
        C(~/.local/state/exchpatch/audit.jsonl).
    type: path
  store:
    description:
      - The state store holding the trail, V(file) or V(postgresql). Defaults to E(EXCHPATCH_STATE_STORE),
        else V(file). Pass the inventory's C(exchange_state_store).
    type: str
    choices: [file, postgresql]
  dsn:
    description:
      - The PostgreSQL DSN for O(store=postgresql). Defaults to E(EXCHPATCH_STATE_STORE_DSN). Pass the vaulted
        C(exchange_state_store_dsn); it is never returned or logged.
    type: str
  key:
    description:
      - The audit key (HMAC-SHA256), from the vault or an AWX credential (C(exchange_audit_key)). Never returned
        or logged. At least 16 characters.
    type: str
  key_file:
    description:
      - A file holding the audit key, readable by its owner only (mode C(0400) or C(0600)); a file that group
        or others may read is refused. Defaults to E(EXCHPATCH_AUDIT_KEY_FILE). O(key) wins when both are set.
    type: path
  unverified:
    description:
      - For V(history), V(metrics), V(report) and V(export), read the trail even when its chain does not verify.
        The result's C(verification) then says it was not verified.
    type: bool
    default: false
  run:
    description:
      - Run id (or a unique prefix of one) for O(action=report). The last run when omitted.
    type: str
  load_report:
    description:
      - JSON file written by the testbed load generator during the run, shown in the report.
    type: path
  dest:
    description:
      - For O(action=report), the HTML file to write. Defaults to C(reports/<run>.html) beside the audit trail.
      - For O(action=metrics) with O(prometheus=true), the Prometheus text file to write (atomically, for a
        node-exporter textfile collector, whose files must end in C(.prom)). When omitted the text is only
        returned.
      - For O(action=export), the JSON Lines file to write (required).
    type: path
  prometheus:
    description:
      - For O(action=metrics), also return (and with O(dest) write) the Prometheus text format.
    type: bool
    default: false
  now:
    description:
      - Time the ages of open CVEs and unrestored failures are counted to, ISO 8601. Defaults to now.
    type: str
"""

EXAMPLES = r"""
- name: Verify the audit trail
  exchangeops.patching.audit_trail:
    action: verify

- name: List the runs
  exchangeops.patching.audit_trail:
    action: history
    file: /var/lib/exchpatch/audit.jsonl
  register: audit_history

- name: Write the metrics for the node-exporter textfile collector
  exchangeops.patching.audit_trail:
    action: metrics
    prometheus: true
    dest: /var/lib/node_exporter/textfile/exchpatch.prom

- name: Verify the team's trail in PostgreSQL with the audit key
  exchangeops.patching.audit_trail:
    action: verify
    store: postgresql
    dsn: "{{ exchange_state_store_dsn }}"
    key: "{{ exchange_audit_key }}"

- name: Export the trail for an auditor
  exchangeops.patching.audit_trail:
    action: export
    dest: /srv/audit/exchpatch-2026-11.jsonl

- name: Render the report of one run
  exchangeops.patching.audit_trail:
    action: report
    run: 5f0c1e9a
    load_report: /tmp/load.json
    dest: /tmp/rollout.html
"""

RETURN = r"""
file:
  description: The audit trail read (its file, or the PostgreSQL store without its password).
  returned: always
  type: str
  sample: /root/.local/state/exchpatch/audit.jsonl
ok:
  description: True when the chain has no problem (RV(status) says whether a key vouches for it).
  returned: action=verify
  type: bool
  sample: true
status:
  description:
    - "V(verified) (every link checked, keyed records with the key), V(unkeyed) (links consistent but not checked
      with a key because no key is configured, or plain sha256 records), or V(broken)."
  returned: action=verify
  type: str
  sample: verified
keyed:
  description: Records whose HMAC was checked with the key.
  returned: action=verify
  type: int
unkeyed:
  description: Records linked with plain sha256.
  returned: action=verify
  type: int
unchecked:
  description: Keyed records that could not be checked because no key was configured.
  returned: action=verify
  type: int
key_configured:
  description: Whether an audit key was given.
  returned: action=verify
  type: bool
summary:
  description: One sentence on what was verified, for people.
  returned: action=verify
  type: str
verification:
  description:
    - For the reading actions, the verification done first (as for O(action=verify)), or C(status=not_verified)
      with O(unverified=true).
  returned: action=history, metrics, report, export
  type: dict
records:
  description: Number of records read (verify) or written (export).
  returned: action=verify or action=export
  type: int
  sample: 1234
problems:
  description: Every break in the chain, in file order.
  returned: action=verify
  type: list
  elements: dict
  contains:
    line:
      description: 1-based line number in the file.
      type: int
    seq:
      description: The record's C(seq), or null when the line cannot be read.
      type: int
    what:
      description: What is wrong, for example C(edited) or C(chain broken).
      type: str
  sample: [{"line": 42, "seq": 42, "what": "edited: the hash does not match the record's content"}]
runs:
  description:
    - One row per playbook run, oldest first. A run without a closing record has outcome C(interrupted).
  returned: action=history
  type: list
  elements: dict
  contains:
    run:
      description: Run id (the driver's job id, or a uuid). A reused id after a closed run gets C(#2), C(#3).
      type: str
    playbook:
      description: Playbook file name.
      type: str
    patch_id:
      description: Catalog id of the patch, or null.
      type: str
    component:
      description: matching-engine, wallet-signer or null.
      type: str
    version:
      description: Version rolled out (or rolled back to), or null.
      type: str
    cves:
      description: CVE ids the patch fixes.
      type: list
      elements: str
    operator:
      description: Who ran it.
      type: str
    approver:
      description: Second approver of an emergency change, or null.
      type: str
    reason:
      description: Reason given for an emergency change, or null.
      type: str
    emergency:
      description: Whether the emergency override was asked for.
      type: bool
    check_mode:
      description: Whether it ran in check mode.
      type: bool
    outcome:
      description:
        - successful, failed, rolled_back, halted, canceled, check, refused (failed in preflight, nothing
          changed) or interrupted.
      type: str
    started:
      description: ISO timestamp of the change_opened record.
      type: str
    finished:
      description: ISO timestamp of the change_closed record, or null.
      type: str
    duration_s:
      description: Seconds from started to finished, or null.
      type: float
metrics:
  description: The metrics (definitions in docs/audit.md).
  returned: action=metrics
  type: dict
  contains:
    deployments:
      description: Non-check runs of rolling_patch.yml.
      type: int
    failed_deployments:
      description: Deployments with outcome rolled_back, failed or halted.
      type: int
    rollbacks:
      description: Non-check runs of rollback.yml plus rolling_patch.yml runs with outcome rolled_back.
      type: int
    change_failure_rate:
      description: failed_deployments / deployments, or null without deployments.
      type: float
    outcomes:
      description: Number of runs per playbook and outcome.
      type: dict
    mttr:
      description: C(per_cve) rows (C(cve), C(first_seen), C(first_seen_source), C(status) fixed or open,
        C(fixed_at), C(fixed_by_run), C(patch_id), C(version), C(mttr_s), and C(age_s) when open), C(fixed),
        C(open) (CVE ids) and C(mean_s).
      type: dict
    time_to_restore:
      description: Per failed deployment C(run), C(patch_id), C(component), C(outcome), C(failed_at),
        C(restored_at), C(restored_by_run), C(time_to_restore_s) (null while not restored).
      type: list
      elements: dict
    mean_time_to_restore_s:
      description: Mean of the restored ones, or null.
      type: float
prometheus:
  description: The metrics in the Prometheus text format (names prefixed C(exchpatch_)).
  returned: action=metrics and prometheus=true
  type: str
path:
  description: The file written (the report, the Prometheus text, or the export).
  returned: action=report or export, or action=metrics with prometheus and dest
  type: str
run:
  description: The run the report shows.
  returned: action=report
  type: str
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.exchangeops.patching.plugins.module_utils._audit import (
    AuditError,
    Trail,
    Verification,
    default_path,
    load_key,
    open_trail,
    parse_ts,
    write_text_atomic,
)
from ansible_collections.exchangeops.patching.plugins.module_utils._audit_runs import (
    find_run,
    group_runs,
    history,
    metrics,
    prometheus,
)
from ansible_collections.exchangeops.patching.plugins.module_utils._redact import redact
from ansible_collections.exchangeops.patching.plugins.module_utils._report import render_html

NO_TRAIL = ("no audit trail at {where} yet: enable the exchangeops.patching.audit callback (callbacks_enabled in "
            "ansible.cfg) and run a playbook, or point file / EXCHPATCH_AUDIT_FILE (or the state store) at the trail")


def _problems_text(v: Verification) -> str:
    more = f"; and {len(v.problems) - 10} more" if len(v.problems) > 10 else ""
    return "; ".join(str(p) for p in v.problems[:10]) + more


def run_verify(module: AnsibleModule, trail: Trail) -> dict:
    try:
        v = trail.verify()
    except FileNotFoundError:
        module.fail_json(msg=NO_TRAIL.format(where=trail.where), file=trail.where, ok=False, records=0, problems=[])
    result = {"file": trail.where, **v.as_json()}
    if v.problems:
        module.fail_json(msg=f"{trail.where}: the audit trail does not verify ({len(v.problems)} problem(s)): "
                             f"{_problems_text(v)}. Restore it from a trusted copy (or export) and investigate who "
                             "changed it.", **result)
    if v.status != "verified":
        module.warn(f"{trail.where}: {v.summary()}")
    return result


def verified_first(module: AnsibleModule, trail: Trail) -> dict:
    """Verify before reading: a broken chain is refused (naming its first broken record) unless unverified."""
    if module.params["unverified"]:
        return {"status": "not_verified", "ok": None, "problems": [],
                "summary": "read without verifying the chain (unverified: true)"}
    try:
        v = trail.verify()
    except FileNotFoundError:
        return {"status": "empty", "ok": True, "problems": [], "summary": "no trail yet"}
    if v.problems:
        module.fail_json(msg=f"{trail.where}: refusing to read an audit trail that does not verify; first broken "
                             f"record: {v.problems[0]} ({len(v.problems)} problem(s) in all). Investigate with "
                             "exchpatch audit verify; to read it anyway pass --unverified (unverified: true).",
                         file=trail.where, verification=v.as_json())
    return v.as_json()


def _default_dest(trail: Trail, name: str) -> str:
    base = os.path.dirname(os.path.abspath(getattr(trail, "path", None) or default_path()))
    return os.path.join(base, "reports", name)


def run_report(module: AnsibleModule, trail: Trail, verification: dict) -> dict:
    runs = group_runs(trail.records())
    try:
        run = find_run(runs, module.params["run"])
    except LookupError as e:
        module.fail_json(msg=f"{trail.where}: {e}", file=trail.where)
    load = None
    if module.params["load_report"]:
        try:
            with open(module.params["load_report"], encoding="utf-8") as fh:
                load = json.load(fh)
        except (OSError, ValueError) as e:
            module.fail_json(msg=f"{module.params['load_report']}: cannot read the load report ({e}); give the JSON "
                                 "file the load generator wrote, or leave load_report out", file=trail.where)
    dest = module.params["dest"] or _default_dest(trail, run.run.replace("/", "_").replace("#", "-") + ".html")
    html = render_html(dict(run.change), [dict(r) for r in run.records], load)
    if not module.check_mode:
        try:
            write_text_atomic(dest, html)
        except OSError as e:
            module.fail_json(msg=f"{dest}: cannot write the report ({e.strerror}); choose a writable dest",
                             file=trail.where)
    return {"file": trail.where, "run": run.run, "path": dest, "changed": not module.check_mode,
            "verification": verification}


def run_export(module: AnsibleModule, trail: Trail, verification: dict) -> dict:
    dest = module.params["dest"]
    if not dest:
        module.fail_json(msg="action=export needs dest: the JSON Lines file to write", file=trail.where)
    if module.check_mode:
        return {"file": trail.where, "path": dest, "changed": True, "verification": verification}
    try:
        count = trail.export(dest)
    except FileNotFoundError:
        module.fail_json(msg=NO_TRAIL.format(where=trail.where), file=trail.where)
    return {"file": trail.where, "path": dest, "records": count, "changed": True, "verification": verification}


def run_metrics(module: AnsibleModule, trail: Trail, verification: dict) -> dict:
    try:
        now = parse_ts(module.params["now"]) if module.params["now"] else None
    except ValueError:
        module.fail_json(msg=f"now: {module.params['now']!r} is not an ISO 8601 time; give e.g. 2026-11-24T00:00:00Z")
    values = metrics(group_runs(trail.records()), now=now)
    result = {"changed": False, "file": trail.where, "metrics": values, "verification": verification}
    if module.params["prometheus"]:
        text = prometheus(values)
        result["prometheus"] = text
        if module.params["dest"]:
            result["path"] = module.params["dest"]
            if not module.check_mode:
                write_text_atomic(module.params["dest"], text)
            result["changed"] = not module.check_mode
    return result


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            action=dict(type="str", required=True, choices=["verify", "history", "metrics", "report", "export"]),
            file=dict(type="path"),
            store=dict(type="str", choices=["file", "postgresql"]),
            dsn=dict(type="str", no_log=True),
            key=dict(type="str", no_log=True),
            key_file=dict(type="path", no_log=False),
            unverified=dict(type="bool", default=False),
            run=dict(type="str"),
            load_report=dict(type="path"),
            dest=dict(type="path"),
            prometheus=dict(type="bool", default=False),
            now=dict(type="str"),
        ),
        supports_check_mode=True,
    )
    action = module.params["action"]
    where = module.params["file"] or "audit trail"
    try:
        key = load_key(module.params["key"], module.params["key_file"])
        trail = open_trail(module.params["file"], module.params["store"], module.params["dsn"], key)
        where = trail.where
        try:
            if action == "verify":
                module.exit_json(changed=False, **run_verify(module, trail))
            verification = verified_first(module, trail)
            if action == "report":
                module.exit_json(**run_report(module, trail, verification))
            if action == "export":
                module.exit_json(**run_export(module, trail, verification))
            if action == "history":
                # the callback redacted the records; this also cleans trails written before its rules
                module.exit_json(changed=False, file=trail.where, verification=verification,
                                 runs=redact(history(group_runs(trail.records()))))
            module.exit_json(**run_metrics(module, trail, verification))
        finally:
            trail.close()
    except AuditError as e:
        module.fail_json(msg=str(e), file=where)
    except OSError as e:
        module.fail_json(msg=f"{e.filename or where}: {e.strerror}; check the path and its permissions", file=where)


if __name__ == "__main__":
    main()
