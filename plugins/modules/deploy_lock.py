#!/usr/bin/python
# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: deploy_lock
short_description: Hold one rollout at a time per shard or chain with a renewed lease and a fencing token
version_added: 0.1.0
description:
  - Takes, checks, refreshes or releases the rollout lease, one per scope (a shard such as C(shard-0)
    or a chain such as C(chain-BTC)), recording the scope, owner, run id, patch, fencing token, ttl,
    acquisition and expiry times, controller host name and the pid of the ansible process.
  - "Two state stores (O(store)): V(file), lock files C(<dir>/<scope>.lock) on this controller judged
    by its clock (one controller); V(postgresql), one table every controller reaches, expiry judged by
    the database's C(now()) (a team: shell, AWX and chatops runs share it)."
  - Acquiring is all-or-nothing over O(scopes). A scope held by another run until a later time fails
    the task with the holder, its run, its patch and its expiry, and nothing is taken.
  - Every acquisition that writes gets a fencing token from a counter that only grows; all its scopes
    carry it. Acquiring again with the same O(run_id) while the lease is held changes nothing and keeps
    the token; taking over an expired lease, or adding a scope, takes a new, higher token. Node actions
    carry the token so a node refuses a run whose lease was taken over.
  - An expired lease of another run is taken over when O(takeover_stale) is true and reported in
    RV(stale_taken_over), so the playbook can resume or roll back that run's nodes.
  - The ttl is short (60 seconds by default) because the lease is renewed every ttl/3 while the
    ansible-playbook process lives, by the C(exchangeops.patching.lease) callback (enable it in
    C(callbacks_enabled)); a dead controller's lease lapses within its ttl. A lapsed lease is lost;
    V(checked) then fails, and renewal never revives it.
  - Releasing removes only the leases of O(run_id); leases of other runs are reported in
    RV(not_owned) and left in place.
  - A lock file that cannot be read is treated as held by an unknown rollout; it is never deleted
    or overwritten and the task fails naming the file.
  - Runs on the controller; run it on C(localhost) or delegate it there, once per rollout
    (C(run_once)).
author:
  - exchangeops engineering (@exchangeops)
requirements:
  - psycopg 3 on the controller for O(store=postgresql).
attributes:
  check_mode:
    description: Can run in check mode and report what would happen.
    support: full
    details:
      - In check mode the leases are read and the outcome is reported (including failures), but nothing is
        created, changed or removed, and no token is issued (a token that would be new is reported as 0).
      - V(checked) with O(token=0) in check mode passes without reading the store, because a check-mode
        acquisition holds nothing.
  diff_mode:
    description: Will return details on what has changed.
    support: none
options:
  store:
    description:
      - The state store that keeps the leases. Every controller that may run a rollout of the same fleet
        must use the same store (and, for V(file), the same O(dir)).
      - Defaults to the environment variable E(EXCHPATCH_STATE_STORE), else V(file). Playbooks pass the
        inventory variable C(exchange_state_store).
    type: str
    choices: [file, postgresql]
  dsn:
    description:
      - The PostgreSQL connection string for O(store=postgresql), for example
        C(host=db.internal dbname=exchpatch user=exchpatch_writer password=...). A secret; it is never
        logged or returned, and messages name only its host, port, database and user.
      - Defaults to the environment variable E(EXCHPATCH_STATE_STORE_DSN). Playbooks pass the vaulted
        inventory variable C(exchange_state_store_dsn) (or an AWX credential).
    type: str
  dir:
    description:
      - Folder of the lock files on the controller for O(store=file); required then. Created with mode
        C(0700) when missing. Ignored by O(store=postgresql).
    type: path
  scopes:
    description:
      - What to lease, for example C(["shard-0", "chain-BTC"]). Letters, digits, C(.), C(_) and C(-),
        starting with a letter or digit.
    type: list
    elements: str
    required: true
  owner:
    description:
      - Who runs the rollout, for example C(alice@ops-laptop) or an AWX job id. Shown to anyone the
        lease refuses.
    type: str
    required: true
  run_id:
    description:
      - Unique id of this rollout run. Leases belong to a run id; the same run id re-acquires, checks,
        refreshes and releases them.
    type: str
    required: true
  ttl:
    description:
      - Seconds the lease stays valid after it is acquired, refreshed or renewed. After that another run
        may take it over. Renewed every ttl/3 by the C(exchangeops.patching.lease) callback while the run
        lives.
    type: int
    default: 60
  token:
    description:
      - For O(state=checked), the fencing token that O(state=acquired) returned (RV(token)).
    type: int
  state:
    description:
      - V(acquired) takes every scope for O(run_id) or none, and returns the fencing token.
      - V(checked) changes nothing and fails, naming the holder or why the lease is lost (expired, taken
        over, released, or taken again with another token), unless O(run_id) still holds every scope
        with O(token) unexpired in the store's time. Run it before each node.
      - V(refreshed) moves the expiry of this run's leases to now plus O(ttl), keeping the token; it fails
        when a scope is no longer held by O(run_id).
      - V(released) removes this run's leases.
    type: str
    choices: [acquired, checked, released, refreshed]
    default: acquired
  patch:
    description: The patch being rolled out (catalog id), recorded in the lease and shown to others.
    type: str
  takeover_stale:
    description:
      - Take over leases of other runs that have expired. When false, an expired lease of another run
        fails the task like a live one.
    type: bool
    default: true
notes:
  - "File store: lock files are created whole (written to a temporary file, flushed, then hard-linked to
    their name, which fails when the name exists), read-check-write steps and the token counter
    C(<dir>/.fence) are serialised by an exclusive C(flock) on C(<dir>/.guard), so two runs racing for
    one scope never both win. Expiry is judged by the controller's clock."
  - "PostgreSQL store: acquisitions are serialised by a transaction-scoped advisory lock and row locks,
    tokens come from the sequence C(exchpatch_fence_seq), and every expiry is C(now() + ttl) in the
    database's time. The schema must have been migrated by the database owner (C(exchpatch store
    migrate)). A database that cannot be reached fails the task naming the store, never the password."
  - The lease is described in docs/lease.md of the collection.
seealso:
  - plugin: exchangeops.patching.lease
    plugin_type: callback
"""

EXAMPLES = r"""
- name: Lease the shard and the chains this rollout touches
  exchangeops.patching.deploy_lock:
    store: "{{ exchange_state_store | default(omit) }}"
    dsn: "{{ exchange_state_store_dsn | default(omit) }}"
    dir: /var/lib/exchpatch/locks
    scopes: [shard-0, chain-BTC]
    owner: "{{ awx_job_id | default(lookup('ansible.builtin.env', 'USER') ~ '@' ~ ansible_facts['hostname']) }}"
    run_id: "{{ rollout_run_id }}"
    patch: matching-engine-1.4.3
  delegate_to: localhost
  run_once: true
  register: rollout_lock

- name: Stop when an abandoned rollout was taken over
  ansible.builtin.fail:
    msg: "Took over {{ rollout_lock.stale_taken_over }}; check those nodes, then resume or roll back"
  when: rollout_lock.stale_taken_over | length > 0

- name: Check that this run still holds the lease before touching the next node
  exchangeops.patching.deploy_lock:
    store: "{{ exchange_state_store | default(omit) }}"
    dsn: "{{ exchange_state_store_dsn | default(omit) }}"
    dir: /var/lib/exchpatch/locks
    scopes: [shard-0, chain-BTC]
    owner: alice@ops-laptop
    run_id: "{{ rollout_run_id }}"
    token: "{{ rollout_lock.token }}"
    state: checked
  delegate_to: localhost
  run_once: true

- name: Release the lease of this run
  exchangeops.patching.deploy_lock:
    store: "{{ exchange_state_store | default(omit) }}"
    dsn: "{{ exchange_state_store_dsn | default(omit) }}"
    dir: /var/lib/exchpatch/locks
    scopes: [shard-0, chain-BTC]
    owner: alice@ops-laptop
    run_id: "{{ rollout_run_id }}"
    state: released
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
token:
  description:
    - The fencing token of this run's lease; it only grows across acquisitions. Pass it to
      O(state=checked) and to node actions that change who serves. 0 for a new lease in check mode.
  returned: success, when O(state) is V(acquired), V(checked) or V(refreshed)
  type: int
  sample: 42
lease:
  description: This run's lease after the call.
  returned: success, when O(state) is V(acquired), V(checked) or V(refreshed)
  type: dict
  contains:
    store:
      description:
        - The store, as C(file <dir>) or C(postgresql host=... port=... dbname=... user=...) (never the password).
      type: str
    dir:
      description: The lock folder for the file store, else null.
      type: str
    scopes:
      description: The scopes of the lease.
      type: list
      elements: str
    run_id:
      description: The run holding it.
      type: str
    owner:
      description: Who runs it.
      type: str
    patch:
      description: The patch recorded, or null.
      type: str
    token:
      description: The fencing token.
      type: int
    ttl:
      description: Seconds it lives after each renewal.
      type: int
    expires_at:
      description: The earliest expiry among the scopes, ISO 8601 UTC (the database's time for V(postgresql)).
      type: str
  sample:
    store: postgresql host=db.internal port=5432 dbname=exchpatch user=exchpatch_writer
    dir: null
    scopes: [shard-0, chain-BTC]
    run_id: 20261124T0915Z-ab12
    owner: alice@ops-laptop
    patch: matching-engine-1.4.3
    token: 42
    ttl: 60
    expires_at: "2026-11-24T09:16:00Z"
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
  description: Scopes that had no lease at all on release, refresh or check.
  returned: always
  type: list
  elements: str
  sample: []
not_owned:
  description:
    - On release, leases of O(scopes) held by other runs, left in place (their records plus C(path) for the
      file store or C(store) for postgresql).
  returned: always
  type: list
  elements: dict
  sample: []
held_by_others:
  description:
    - Leases of other runs that refused an acquire, refresh or check, with their records plus C(path)
      (file store) or C(store) (postgresql) and C(expired) (true when the lease expired but
      O(takeover_stale) is false).
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
      token: 41
      ttl: 60
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
    previous_token:
      description: Fencing token of the expired lock (0 for a lock file written before tokens).
      type: int
    expired_at:
      description: When that lock expired, ISO 8601 UTC.
      type: str
  sample:
    - scope: shard-0
      previous_owner: bob@ops-desktop
      previous_run_id: 20261124T0400Z-9f00
      previous_patch: matching-engine-1.4.3
      previous_token: 40
      expired_at: "2026-11-24T05:00:00Z"
lost:
  description:
    - On a failed check or renewal, this run's leases that are lost, with their records plus C(reason),
      V(expired) (not renewed within its ttl) or V(token) (taken again since, with another token).
  returned: always
  type: list
  elements: dict
  sample: []
locks:
  description:
    - The lease records of this run for O(scopes) after the call (on release, the records removed).
      Each has C(scope), C(owner), C(run_id), C(patch), C(acquired_at), C(expires_at) (ISO 8601 UTC),
      C(host) (controller host name), C(pid) (ansible process on that host), C(token) and C(ttl).
  returned: always
  type: list
  elements: dict
  sample:
    - scope: shard-0
      owner: alice@ops-laptop
      run_id: 20261124T0915Z-ab12
      patch: matching-engine-1.4.3
      acquired_at: "2026-11-24T09:15:00Z"
      expires_at: "2026-11-24T09:16:00Z"
      host: ops-laptop
      pid: 41877
      token: 42
      ttl: 60
"""

import os
import socket

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.exchangeops.patching.plugins.module_utils import _lock, _store


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


def _leases(module: AnsibleModule) -> _lock.FileLeases | _lock.PgLeases:
    p = module.params
    try:
        conf = _store.settings(p["store"], p["dsn"])
    except _store.StoreError as e:
        module.fail_json(msg=str(e), **_lock.LockResult().to_dict())
    if conf.is_postgresql and not _lock.HAS_PSYCOPG:
        module.fail_json(msg=missing_required_lib("psycopg (psycopg 3, for store: postgresql)"),
                         exception=_lock.PSYCOPG_IMPORT_ERROR, **_lock.LockResult().to_dict())
    if not conf.is_postgresql and not p["dir"]:
        module.fail_json(msg="dir: the file state store keeps its lock files in a folder; set dir (the preflight "
                             "role passes preflight_lock_dir), or choose store: postgresql",
                         **_lock.LockResult().to_dict())
    return _lock.open_leases(conf, p["dir"])


def _run(module: AnsibleModule, leases: _lock.FileLeases | _lock.PgLeases) -> _lock.LockResult:
    p = module.params
    if p["state"] == "acquired":
        return leases.acquire(p["scopes"], p["owner"], p["run_id"], ttl=p["ttl"], patch=p["patch"],
                              takeover_stale=p["takeover_stale"], host=socket.gethostname(), pid=runner_pid(),
                              check_mode=module.check_mode)
    if p["state"] == "refreshed":
        return leases.refresh(p["scopes"], p["run_id"], ttl=p["ttl"], check_mode=module.check_mode)
    if p["state"] == "released":
        return leases.release(p["scopes"], p["run_id"], check_mode=module.check_mode)
    if p["token"] is None:
        raise _lock.LockInputError("token: state: checked needs the fencing token that state: acquired returned, "
                                   "e.g. token: \"{{ preflight_lease_token }}\"")
    if module.check_mode and p["token"] == 0:
        # A check-mode acquisition holds nothing and issues no token: there is nothing to check.
        return _lock.LockResult(lease={})
    return leases.check(p["scopes"], p["run_id"], p["token"])


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            store=dict(type="str", choices=list(_store.BACKENDS)),
            dsn=dict(type="str", no_log=True),
            dir=dict(type="path"),
            scopes=dict(type="list", elements="str", required=True),
            owner=dict(type="str", required=True),
            run_id=dict(type="str", required=True),
            ttl=dict(type="int", default=_lock.DEFAULT_TTL),
            token=dict(type="int", no_log=False),
            state=dict(type="str", choices=["acquired", "checked", "released", "refreshed"], default="acquired"),
            patch=dict(type="str"),
            takeover_stale=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    leases = _leases(module)
    empty = _lock.LockResult().to_dict()
    try:
        result = _run(module, leases)
    except _lock.LockConflictError as e:
        module.fail_json(msg=str(e), **e.result.to_dict())
    except _lock.LockCorruptError as e:
        module.fail_json(msg=str(e), **(e.result.to_dict() if e.result else empty))
    except (_lock.LockInputError, _store.StoreError) as e:
        module.fail_json(msg=str(e), **empty)
    except _lock.LockError as e:
        module.fail_json(msg=str(e), **empty)
    except OSError as e:
        module.fail_json(msg=f"{module.params['dir']}: cannot use the lock folder ({e.strerror or e}); check that it "
                             "exists, is a folder and is writable by this user", **empty)
    module.exit_json(**result.to_dict())


if __name__ == "__main__":
    main()
