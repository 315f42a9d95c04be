#!/usr/bin/python
# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: deploy_lock
short_description: Hold one rollout at a time per shard or chain with an owner and an expiry
version_added: 0.1.0
description:
  - Takes, refreshes or releases rollout locks, one per scope (a shard such as C(shard-0) or a chain
    such as C(chain-BTC)), as JSON files C(<dir>/<scope>.lock) on the controller recording the scope,
    owner, run id, patch, acquisition and expiry times, controller host name and the pid of the
    ansible process.
  - Acquiring is all-or-nothing over O(scopes). A scope locked by another run until a later time
    fails the task with the holder, its run, its patch and its expiry, and nothing is locked.
  - Acquiring again with the same O(run_id) changes nothing, so a re-run after a dead controller
    finds its own locks. An expired lock of another run is taken over when O(takeover_stale) is
    true and reported in RV(stale_taken_over), so the playbook can resume or roll back that run's
    nodes.
  - Releasing removes only the locks of O(run_id); locks of other runs are reported in
    RV(not_owned) and left in place.
  - A lock file that cannot be read is treated as held by an unknown rollout; it is never deleted
    or overwritten and the task fails naming the file.
  - Runs on the controller; run it on C(localhost) or delegate it there, once per rollout
    (C(run_once)).
author:
  - exchangeops engineering (@exchangeops)
attributes:
  check_mode:
    description: Can run in check mode and report what would happen.
    support: full
    details: In check mode the lock files are read and the outcome is reported (including failures), but no file
      or folder is created, changed or removed.
  diff_mode:
    description: Will return details on what has changed.
    support: none
options:
  dir:
    description:
      - Folder of the lock files on the controller. Created with mode C(0700) when missing.
      - Every controller that may run a rollout of the same fleet must use the same folder.
    type: path
    required: true
  scopes:
    description:
      - What to lock, for example C(["shard-0", "chain-BTC"]). Letters, digits, C(.), C(_) and C(-),
        starting with a letter or digit.
    type: list
    elements: str
    required: true
  owner:
    description:
      - Who runs the rollout, for example C(alice@ops-laptop) or an AWX job id. Shown to anyone the
        lock refuses.
    type: str
    required: true
  run_id:
    description:
      - Unique id of this rollout run. Locks belong to a run id; the same run id re-acquires,
        refreshes and releases them.
    type: str
    required: true
  ttl:
    description:
      - Seconds the lock stays valid after it is acquired or refreshed. After that another run may
        take it over.
    type: int
    default: 3600
  state:
    description:
      - V(acquired) locks every scope for O(run_id) or none.
      - V(refreshed) moves the expiry of this run's locks to now plus O(ttl); it fails when a scope is
        no longer held by O(run_id).
      - V(released) removes this run's locks.
    type: str
    choices: [acquired, released, refreshed]
    default: acquired
  patch:
    description: The patch being rolled out (catalog id), recorded in the lock and shown to others.
    type: str
  takeover_stale:
    description:
      - Take over locks of other runs that have expired. When false, an expired lock of another run
        fails the task like a live one.
    type: bool
    default: true
notes:
  - Lock files are created whole (written to a temporary file, flushed, then hard-linked to their name,
    which fails when the name exists), and read-check-write steps are serialised by an exclusive
    C(flock) on C(<dir>/.guard), so two runs racing for one scope never both win.
"""

EXAMPLES = r"""
- name: Lock the shard and the chains this rollout touches
  exchangeops.patching.deploy_lock:
    dir: /var/lib/exchpatch/locks
    scopes: [shard-0, chain-BTC]
    owner: "{{ awx_job_id | default(lookup('ansible.builtin.env', 'USER') ~ '@' ~ ansible_facts['hostname']) }}"
    run_id: "{{ rollout_run_id }}"
    patch: matching-engine-1.4.3
    ttl: 3600
  delegate_to: localhost
  run_once: true
  register: rollout_lock

- name: Stop when an abandoned rollout was taken over
  ansible.builtin.fail:
    msg: "Took over {{ rollout_lock.stale_taken_over }}; check those nodes, then resume or roll back"
  when: rollout_lock.stale_taken_over | length > 0

- name: Extend the lock before a long batch
  exchangeops.patching.deploy_lock:
    dir: /var/lib/exchpatch/locks
    scopes: [shard-0, chain-BTC]
    owner: alice@ops-laptop
    run_id: "{{ rollout_run_id }}"
    state: refreshed
  delegate_to: localhost
  run_once: true

- name: Release the locks of this run
  exchangeops.patching.deploy_lock:
    dir: /var/lib/exchpatch/locks
    scopes: [shard-0, chain-BTC]
    owner: alice@ops-laptop
    run_id: "{{ rollout_run_id }}"
    state: released
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
acquired:
  description: Scopes this run holds after an acquire (all of O(scopes) on success, none on failure).
  returned: always
  type: list
  elements: str
  sample: [shard-0, chain-BTC]
already_held:
  description: Scopes this run held already before the call (left unchanged).
  returned: always
  type: list
  elements: str
  sample: []
released:
  description: Scopes whose lock of this run was removed.
  returned: always
  type: list
  elements: str
  sample: []
refreshed:
  description: Scopes whose expiry was moved (O(state=refreshed), or this run's own expired locks on acquire).
  returned: always
  type: list
  elements: str
  sample: []
not_locked:
  description: Scopes that had no lock at all on release or refresh.
  returned: always
  type: list
  elements: str
  sample: []
not_owned:
  description: On release, locks of O(scopes) held by other runs, left in place (their records plus C(path)).
  returned: always
  type: list
  elements: dict
  sample: []
held_by_others:
  description:
    - Locks of other runs that refused an acquire or refresh, with their records plus C(path) and
      C(expired) (true when the lock expired but O(takeover_stale) is false).
  returned: always
  type: list
  elements: dict
  sample:
    - scope: shard-0
      owner: alice@ops-laptop
      run_id: 20261124T0915Z-ab12
      patch: matching-engine-1.4.3
      acquired_at: "2026-11-24T09:15:00Z"
      expires_at: "2026-11-24T10:15:00Z"
      host: ops-laptop
      pid: 41877
      path: /var/lib/exchpatch/locks/shard-0.lock
      expired: false
stale_taken_over:
  description:
    - Expired locks of other runs taken over by this acquire. That run may have left nodes half
      patched; the playbook decides to resume or roll back.
  returned: always
  type: list
  elements: dict
  contains:
    scope:
      description: The scope.
      type: str
    previous_owner:
      description: Owner of the expired lock.
      type: str
    previous_run_id:
      description: Run id of the expired lock.
      type: str
    previous_patch:
      description: Patch recorded in the expired lock, or null.
      type: str
    expired_at:
      description: When that lock expired, ISO 8601 UTC.
      type: str
  sample:
    - scope: shard-0
      previous_owner: bob@ops-desktop
      previous_run_id: 20261124T0400Z-9f00
      previous_patch: matching-engine-1.4.3
      expired_at: "2026-11-24T05:00:00Z"
locks:
  description:
    - The lock records of this run for O(scopes) after the call (on release, the records removed).
      Each has C(scope), C(owner), C(run_id), C(patch), C(acquired_at), C(expires_at) (ISO 8601 UTC),
      C(host) (controller host name) and C(pid) (ansible process on that host).
  returned: always
  type: list
  elements: dict
  sample:
    - scope: shard-0
      owner: alice@ops-laptop
      run_id: 20261124T0915Z-ab12
      patch: matching-engine-1.4.3
      acquired_at: "2026-11-24T09:15:00Z"
      expires_at: "2026-11-24T10:15:00Z"
      host: ops-laptop
      pid: 41877
"""

import datetime as dt
import os
import socket

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.exchangeops.patching.plugins.module_utils import _lock


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return [a.decode("utf-8", "replace") for a in fh.read().split(b"\0") if a]
    except OSError:
        return []


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            # the command name (2nd field) may hold spaces; the fields after its closing ')' do not
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _is_ansible(args: list[str]) -> bool:
    return any(os.path.basename(a).startswith("ansible") and "AnsiballZ" not in a for a in args[:2])


def runner_pid() -> int:
    """The long-lived ansible process on the controller (not this short-lived module process), best effort.

    Workers are forks of ansible-playbook with the same command line, so the topmost of the consecutive
    ansible ancestors is the one whose death means the rollout died.
    """
    pid, found = os.getppid(), 0
    for _depth in range(32):
        if pid <= 1:
            break
        if _is_ansible(_cmdline(pid)):
            found = pid
        elif found:
            break
        pid = _parent(pid)
    return found or os.getppid()


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            dir=dict(type="path", required=True),
            scopes=dict(type="list", elements="str", required=True),
            owner=dict(type="str", required=True),
            run_id=dict(type="str", required=True),
            ttl=dict(type="int", default=3600),
            state=dict(type="str", choices=["acquired", "released", "refreshed"], default="acquired"),
            patch=dict(type="str"),
            takeover_stale=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    p = module.params
    now = dt.datetime.now(dt.UTC)
    empty = _lock.LockResult().to_dict()
    try:
        if p["state"] == "acquired":
            result = _lock.acquire(
                p["dir"], p["scopes"], p["owner"], p["run_id"], now, ttl=p["ttl"], patch=p["patch"],
                takeover_stale=p["takeover_stale"], host=socket.gethostname(), pid=runner_pid(),
                check_mode=module.check_mode,
            )
        elif p["state"] == "refreshed":
            result = _lock.refresh(p["dir"], p["scopes"], p["run_id"], now, ttl=p["ttl"], check_mode=module.check_mode)
        else:
            result = _lock.release(p["dir"], p["scopes"], p["run_id"], check_mode=module.check_mode)
    except _lock.LockConflictError as e:
        module.fail_json(msg=str(e), **e.result.to_dict())
    except _lock.LockCorruptError as e:
        module.fail_json(msg=str(e), **(e.result.to_dict() if e.result else empty))
    except _lock.LockInputError as e:
        module.fail_json(msg=str(e), **empty)
    except OSError as e:
        module.fail_json(msg=f"{p['dir']}: cannot use the lock folder ({e.strerror or e}); check that it exists, "
                             "is a folder and is writable by this user", **empty)
    module.exit_json(**result.to_dict())


if __name__ == "__main__":
    main()
