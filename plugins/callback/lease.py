# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
name: lease
type: notification
short_description: Renew the rollout lease while the ansible-playbook process lives
version_added: 0.1.0
description:
  - Keeps the rollout lease of M(exchangeops.patching.deploy_lock) alive for as long as the run lives,
    through long bakes, pauses and gate waits, so that its ttl can be short (60 seconds by default).
  - When a C(deploy_lock) task with C(state=acquired) succeeds outside check mode, a thread of the
    ansible-playbook process renews that lease (same store, scopes, run id and fencing token) every
    ttl/3. It opens a fresh database connection for each renewal and holds none across Ansible's
    worker forks; for the file store it keeps forks out while it holds the lock folder's guard.
  - The thread stops when C(state=released) releases the lease's scopes, at the end of the playbook,
    and when the process dies (SIGKILL included); the lease then lapses within its ttl, and another
    run may take it over.
  - A renewal never revives a lapsed lease. When a renewal finds the lease lost (expired, taken over,
    released, or taken again with another token) the thread stops and shows a warning; the run's next
    C(state=checked) fails. A store that cannot be reached is retried at the next interval with a
    warning.
  - The PostgreSQL DSN is taken from the task's own C(dsn) argument (else E(EXCHPATCH_STATE_STORE_DSN)),
    kept in memory only and never shown; messages name the store by host, port, database and user.
  - C(deploy_lock) tasks run in a loop are not followed; take the lease with one task.
requirements:
  - Enable the callback next to the audit callback, for example
    C(callbacks_enabled = exchangeops.patching.audit, exchangeops.patching.lease) in the C([defaults])
    section of C(ansible.cfg). ansible-runner and AWX honour it through E(ANSIBLE_CONFIG) or the
    project's C(ansible.cfg).
"""

import contextlib
import os
import threading
from typing import Any

from ansible.plugins.callback import CallbackBase
from ansible.utils.display import Display
from ansible_collections.exchangeops.patching.plugins.module_utils import _lock, _store

display = Display()

DEPLOY_LOCK = "exchangeops.patching.deploy_lock"
# Never renew more often than this, whatever the ttl.
MIN_INTERVAL = 0.5


def _is_deploy_lock(result: Any) -> bool:
    names = {getattr(result.task, "resolved_action", None), result.task_fields.get("action"),
             getattr(result.task, "action", None)}
    return DEPLOY_LOCK in names or "deploy_lock" in names


class ForkGuard:
    """A lock that Ansible's worker forks wait for.

    The file store's guard is an ``flock`` on an open file; a worker forked while a renewal holds it would keep
    the flock for as long as that worker lives. Forking waits until the renewal is done instead.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        os.register_at_fork(before=self._lock.acquire, after_in_parent=self._lock.release,
                            after_in_child=self._lock.release)

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


class Renewer:
    """One thread renewing one lease every ttl/3 until stopped, or until the lease is found lost."""

    def __init__(self, leases: _lock.FileLeases | _lock.PgLeases, scopes: list[str], run_id: str, token: int,
                 ttl: int, fork_guard: ForkGuard | None) -> None:
        self.leases = leases
        self.scopes = scopes
        self.run_id = run_id
        self.token = token
        self.ttl = ttl
        self.interval = max(ttl / 3, MIN_INTERVAL)
        self._fork_guard = fork_guard if isinstance(leases, _lock.FileLeases) else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"exchpatch-lease-{run_id}", daemon=True)

    @property
    def name(self) -> str:
        return f"the rollout lease of run {self.run_id} ({', '.join(self.scopes)}, token {self.token}, " \
               f"{self.leases.store})"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.leases.conf.connect_timeout + 5
                              if isinstance(self.leases, _lock.PgLeases) else 5)

    def _loop(self) -> None:
        display.vvv(f"exchangeops.patching.lease: renewing {self.name} every {self.interval:g} s")
        while not self._stop.wait(self.interval):
            try:
                with self._fork_guard or contextlib.nullcontext():
                    result = self.leases.renew(self.scopes, self.run_id, self.token)
            except _lock.LockConflictError as e:
                display.warning(f"{self.name} is lost and is no longer renewed: {e}")
                return
            except (_lock.LockError, _store.StoreError, OSError) as e:
                display.warning(f"could not renew {self.name} ({e}); retrying in {self.interval:g} s, and the lease "
                                f"is lost if it is not renewed within its ttl of {self.ttl} s")
                continue
            except Exception as e:  # pylint: disable=broad-except  # noqa: BLE001 - the thread must outlive surprises
                # anything else (a lock file read mid-replace, a driver bug) must not end the renewals silently:
                # a dead thread would let a live run's lease lapse
                display.warning(f"unexpected error renewing {self.name} ({e.__class__.__name__}: {e}); retrying in "
                                f"{self.interval:g} s")
                continue
            display.vvv(f"exchangeops.patching.lease: renewed {self.name} until {result.lease['expires_at']}"
                        if result.lease else f"exchangeops.patching.lease: renewed {self.name}")


class CallbackModule(CallbackBase):
    """Starts and stops the lease renewal threads of this ansible-playbook process."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "exchangeops.patching.lease"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._renewers: dict[tuple[str, str, tuple[str, ...]], Renewer] = {}
        self._fork_guard: ForkGuard | None = None

    def _leases(self, args: dict[str, Any]) -> _lock.FileLeases | _lock.PgLeases:
        conf = _store.settings(args.get("store"), args.get("dsn"))
        directory = args.get("dir")
        return _lock.open_leases(conf, os.path.expanduser(str(directory)) if directory else None)

    def _start(self, leases: _lock.FileLeases | _lock.PgLeases, lease: dict[str, Any]) -> None:
        scopes, run_id = [str(scope) for scope in lease["scopes"]], str(lease["run_id"])
        self._drop(leases.store, run_id, scopes)  # those scopes now carry this lease's token
        if isinstance(leases, _lock.FileLeases) and self._fork_guard is None:
            self._fork_guard = ForkGuard()
        renewer = Renewer(leases, scopes, run_id, int(lease["token"]), int(lease["ttl"]), self._fork_guard)
        self._renewers[(leases.store, run_id, tuple(scopes))] = renewer
        renewer.start()

    def _drop(self, store: str, run_id: str, scopes: list[str]) -> None:
        """Stop renewing ``scopes`` of ``run_id``; the run's other scopes keep being renewed."""
        for key in [key for key in self._renewers if key[:2] == (store, run_id)]:
            renewer = self._renewers[key]
            rest = [scope for scope in renewer.scopes if scope not in scopes]
            if rest == renewer.scopes:
                continue
            renewer.stop()
            del self._renewers[key]
            if rest:
                self._start(renewer.leases, {"scopes": rest, "run_id": run_id, "token": renewer.token,
                                             "ttl": renewer.ttl})

    def v2_runner_on_ok(self, result: Any) -> None:
        if not _is_deploy_lock(result):
            return
        args = dict(result.task_fields.get("args") or {})
        res = result._result  # pylint: disable=protected-access  # the callback API's result dict
        if args.get("_ansible_check_mode") or res.get("_ansible_check_mode"):
            return
        state = args.get("state") or "acquired"
        try:
            leases = self._leases(args)
        except (_lock.LockError, _store.StoreError) as e:
            display.warning(f"exchangeops.patching.lease: cannot follow this deploy_lock task's lease ({e}); it will "
                            "not be renewed and lapses within its ttl")
            return
        lease = res.get("lease") or {}
        if state in ("acquired", "refreshed") and lease.get("token") and lease.get("scopes"):
            self._start(leases, lease)
        elif state == "released":
            self._drop(leases.store, str(args.get("run_id")), [str(scope) for scope in res.get("released") or []])

    def v2_playbook_on_stats(self, stats: Any) -> None:
        for renewer in self._renewers.values():
            renewer.stop()
        self._renewers.clear()
