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
    docs/audit.md) and, depending on O(action), verifies it, lists one history row per playbook run,
    computes the rollout metrics (deployments, rollbacks, change failure rate, MTTR per CVE, time to
    restore) optionally as Prometheus text, or renders the self-contained HTML report of one run.
  - Runs on the controller; run it on C(localhost). It only reads the trail; O(dest) is the only file it
    writes (the report or the Prometheus text).
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
    type: str
    choices: [verify, history, metrics, report]
    required: true
  file:
    description:
      - The audit trail.
      - Defaults to E(EXCHPATCH_AUDIT_FILE), else C($XDG_STATE_HOME/exchpatch/audit.jsonl), that is
        C(~/.local/state/exchpatch/audit.jsonl).
    type: path
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

- name: Render the report of one run
  exchangeops.patching.audit_trail:
    action: report
    run: 5f0c1e9a
    load_report: /tmp/load.json
    dest: /tmp/rollout.html
"""

RETURN = r"""
file:
  description: The audit trail read.
  returned: always
  type: str
  sample: /root/.local/state/exchpatch/audit.jsonl
ok:
  description: True when every record verified.
  returned: action=verify
  type: bool
  sample: true
records:
  description: Number of records read.
  returned: action=verify
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
  description: The file written (the report, or the Prometheus text).
  returned: action=report, or action=metrics with prometheus and dest
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
    default_path,
    find_run,
    group_runs,
    history,
    metrics,
    parse_ts,
    prometheus,
    read_records,
    verify,
    write_text_atomic,
)
from ansible_collections.exchangeops.patching.plugins.module_utils._redact import redact
from ansible_collections.exchangeops.patching.plugins.module_utils._report import render_html


def run_verify(module: AnsibleModule, path: str) -> dict:
    try:
        count, problems = verify(path)
    except FileNotFoundError:
        module.fail_json(msg=f"no audit trail at {path} yet: enable the exchangeops.patching.audit callback "
                             "(callbacks_enabled in ansible.cfg) and run a playbook, or point file / "
                             "EXCHPATCH_AUDIT_FILE at the trail", file=path, ok=False, records=0, problems=[])
    result = {"file": path, "ok": not problems, "records": count, "problems": [p.as_json() for p in problems]}
    if problems:
        more = f"; and {len(problems) - 10} more" if len(problems) > 10 else ""
        shown = "; ".join(str(p) for p in problems[:10]) + more
        module.fail_json(msg=f"{path}: the audit trail does not verify ({len(problems)} problem(s)): {shown}. "
                             "Restore the file from a trusted copy and investigate who changed it.", **result)
    return result


def run_report(module: AnsibleModule, path: str) -> dict:
    runs = group_runs(read_records(path))
    try:
        run = find_run(runs, module.params["run"])
    except LookupError as e:
        module.fail_json(msg=f"{path}: {e}", file=path)
    load = None
    if module.params["load_report"]:
        try:
            with open(module.params["load_report"], encoding="utf-8") as fh:
                load = json.load(fh)
        except (OSError, ValueError) as e:
            module.fail_json(msg=f"{module.params['load_report']}: cannot read the load report ({e}); give the JSON "
                                 "file the load generator wrote, or leave load_report out", file=path)
    dest = module.params["dest"] or os.path.join(os.path.dirname(os.path.abspath(path)), "reports",
                                                 run.run.replace("/", "_").replace("#", "-") + ".html")
    html = render_html(dict(run.change), [dict(r) for r in run.records], load)
    if not module.check_mode:
        try:
            write_text_atomic(dest, html)
        except OSError as e:
            module.fail_json(msg=f"{dest}: cannot write the report ({e.strerror}); choose a writable dest", file=path)
    return {"file": path, "run": run.run, "path": dest, "changed": not module.check_mode}


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            action=dict(type="str", required=True, choices=["verify", "history", "metrics", "report"]),
            file=dict(type="path"),
            run=dict(type="str"),
            load_report=dict(type="path"),
            dest=dict(type="path"),
            prometheus=dict(type="bool", default=False),
            now=dict(type="str"),
        ),
        supports_check_mode=True,
    )
    path = module.params["file"] or default_path()
    action = module.params["action"]
    try:
        if action == "verify":
            module.exit_json(changed=False, **run_verify(module, path))
        if action == "report":
            module.exit_json(**run_report(module, path))
        runs = group_runs(read_records(path))
        if action == "history":
            # the callback redacted the records; this also cleans trails written before its rules
            module.exit_json(changed=False, file=path, runs=redact(history(runs)))
        try:
            now = parse_ts(module.params["now"]) if module.params["now"] else None
        except ValueError:
            module.fail_json(msg=f"now: {module.params['now']!r} is not an ISO 8601 time; "
                                 "give e.g. 2026-11-24T00:00:00Z")
        values = metrics(runs, now=now)
        result = {"changed": False, "file": path, "metrics": values}
        if module.params["prometheus"]:
            text = prometheus(values)
            result["prometheus"] = text
            if module.params["dest"]:
                result["path"] = module.params["dest"]
                if not module.check_mode:
                    write_text_atomic(module.params["dest"], text)
                result["changed"] = not module.check_mode
        module.exit_json(**result)
    except AuditError as e:
        module.fail_json(msg=str(e), file=path)
    except OSError as e:
        module.fail_json(msg=f"{e.filename or path}: {e.strerror}; check the path and its permissions", file=path)


if __name__ == "__main__":
    main()
