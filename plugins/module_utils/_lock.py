# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Rollout locks: one rollout at a time per shard or chain, with an owner and an expiry.

A lock is one JSON file per scope, ``<dir>/<scope>.lock``, holding a :class:`LockRecord`. Files
are only ever created whole: the record is written to a temporary file, flushed to disk, then
hard-linked to its final name, which fails when the name exists (the atomic create-if-absent
of POSIX), so a reader never sees half a lock and two runs can never both create one.
Read-check-write sequences (taking over an expired lock, refreshing, releasing) are
serialised between cooperating processes by an exclusive ``flock`` on ``<dir>/.guard``.

Acquiring is all-or-nothing over the scopes: every scope is inspected first, and nothing is
written unless all of them are free, expired (and may be taken over) or already this run's.
A lock file that cannot be read is treated as held: it is never deleted or overwritten here.

Everything raises :class:`LockError` subclasses with a message naming the scope, the lock
file and what to do; the caller (the deploy_lock module) turns them into ``fail_json``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

SCOPE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
SUFFIX = ".lock"
GUARD = ".guard"
_FIELDS = ("scope", "owner", "run_id", "patch", "acquired_at", "expires_at", "host", "pid")


class LockError(Exception):
    """Base of every lock problem; ``str()`` is a sentence a person can act on."""


class LockInputError(LockError, ValueError):
    """Bad options: an invalid scope name, an empty owner or run id, a non-positive ttl."""


class LockCorruptError(LockError):
    """A lock file exists but cannot be read as a lock record; it is treated as held.

    ``result`` is set by :func:`release`, which still releases this run's readable locks.
    """

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        self.result: LockResult | None = None
        super().__init__(
            f"{path}: lock file is unreadable ({problem}); it is treated as held by an unknown rollout and was "
            f"left in place; find the rollout that wrote it (AWX job, or the ansible process on the controller), "
            f"and once none is running remove {path} and retry"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.path, self.problem))


class LockConflictError(LockError):
    """One or more scopes are held by other runs; ``result`` says what was (not) done."""

    def __init__(self, message: str, result: LockResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class LockRecord:
    """The content of one ``<scope>.lock`` file."""

    scope: str
    owner: str
    run_id: str
    patch: str | None
    acquired_at: str
    expires_at: str
    host: str
    pid: int

    def expired(self, now: dt.datetime) -> bool:
        return parse_time(self.expires_at) <= now

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LockResult:
    """What one acquire, release or refresh did (or, in check mode, would do)."""

    changed: bool = False
    acquired: list[str] = field(default_factory=list)
    already_held: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    refreshed: list[str] = field(default_factory=list)
    not_locked: list[str] = field(default_factory=list)
    not_owned: list[dict[str, Any]] = field(default_factory=list)
    held_by_others: list[dict[str, Any]] = field(default_factory=list)
    stale_taken_over: list[dict[str, Any]] = field(default_factory=list)
    locks: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- time ------------------------------------------------------------------------------------------------------


def format_time(moment: dt.datetime) -> str:
    """``2026-11-24T10:15:00Z``: UTC, whole seconds."""
    return moment.astimezone(dt.UTC).replace(tzinfo=None, microsecond=0).isoformat() + "Z"


def parse_time(text: str) -> dt.datetime:
    """Inverse of :func:`format_time`; also accepts offsets. ValueError when it is not ISO 8601 with a zone."""
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not a string")
    moment = dt.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone")
    return moment.astimezone(dt.UTC)


# --- validation ------------------------------------------------------------------------------------------------


def validate_scopes(scopes: Sequence[str]) -> list[str]:
    """The scopes in their given order without duplicates; LockInputError on an empty list or a bad name."""
    if not scopes:
        raise LockInputError('scopes: give at least one scope to lock, e.g. ["shard-0"] or ["chain-BTC"]')
    seen: list[str] = []
    for scope in scopes:
        if not isinstance(scope, str) or not SCOPE_RE.match(scope):
            raise LockInputError(
                f"scopes: {scope!r} is not a valid scope name; use letters, digits, '.', '_' and '-' only, "
                "starting with a letter or digit (e.g. shard-0, chain-BTC)"
            )
        if scope not in seen:
            seen.append(scope)
    return seen


def _need_text(name: str, value: Any, example: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise LockInputError(f"{name}: must be a non-empty string (got {value!r}); e.g. {example}")
    return value.strip()


def _need_ttl(ttl: Any) -> int:
    if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0:
        raise LockInputError(f"ttl: must be a positive number of seconds (got {ttl!r}); e.g. 3600 for one hour")
    return ttl


def lock_path(directory: str, scope: str) -> str:
    return os.path.join(directory, scope + SUFFIX)


# --- files -----------------------------------------------------------------------------------------------------


def record_from_dict(path: str, scope: str, data: Any) -> LockRecord:
    """Validate a decoded lock file; LockCorruptError naming what is wrong."""
    if not isinstance(data, dict):
        raise LockCorruptError(path, f"expected a JSON object, found {type(data).__name__}")
    missing = [k for k in _FIELDS if k not in data]
    if missing:
        raise LockCorruptError(path, "missing " + ", ".join(missing))
    for key in ("scope", "owner", "run_id", "acquired_at", "expires_at", "host"):
        if not isinstance(data[key], str) or not data[key]:
            raise LockCorruptError(path, f"{key} is {data[key]!r}, not a non-empty string")
    if data["patch"] is not None and not isinstance(data["patch"], str):
        raise LockCorruptError(path, f"patch is {data['patch']!r}, not a string or null")
    if isinstance(data["pid"], bool) or not isinstance(data["pid"], int):
        raise LockCorruptError(path, f"pid is {data['pid']!r}, not an integer")
    if data["scope"] != scope:
        raise LockCorruptError(path, f"it records scope {data['scope']!r} but is the lock file of {scope!r}")
    for key in ("acquired_at", "expires_at"):
        try:
            parse_time(data[key])
        except ValueError:
            raise LockCorruptError(path, f"{key} {data[key]!r} is not an ISO 8601 UTC time") from None
    return LockRecord(**{k: data[k] for k in _FIELDS})


def read_lock(directory: str, scope: str) -> LockRecord | None:
    """The record of ``scope``, None when it is not locked; LockCorruptError when the file is unreadable."""
    path = lock_path(directory, scope)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise LockCorruptError(path, f"cannot read it: {e.strerror or e}") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        problem = "empty file" if not raw.strip() else f"not valid JSON: {e}"
        raise LockCorruptError(path, problem) from None
    return record_from_dict(path, scope, data)


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_temp(directory: str, record: LockRecord) -> str:
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{record.scope}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(record.to_dict(), fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def create_lock(directory: str, record: LockRecord) -> bool:
    """Create ``<scope>.lock`` whole and atomically; False (nothing written) when it already exists."""
    tmp = _write_temp(directory, record)
    try:
        os.link(tmp, lock_path(directory, record.scope))
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)
    _fsync_dir(directory)
    return True


def replace_lock(directory: str, record: LockRecord) -> None:
    """Overwrite ``<scope>.lock`` atomically (only under the guard, after checking what it held)."""
    tmp = _write_temp(directory, record)
    try:
        os.replace(tmp, lock_path(directory, record.scope))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def ensure_dir(directory: str) -> None:
    """Create the lock folder (mode 0700) when missing; LockInputError when it cannot be used."""
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError as e:
        raise LockInputError(
            f"dir: cannot create the lock folder {directory} ({e.strerror or e}); create it or choose a writable path"
        ) from None
    if not os.path.isdir(directory):
        raise LockInputError(f"dir: {directory} exists but is not a folder; point dir at a folder for lock files")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise LockInputError(f"dir: the lock folder {directory} is not writable by this user; fix its permissions")


@contextlib.contextmanager
def guard(directory: str) -> Iterator[None]:
    """Hold the folder's exclusive flock: check-then-write sequences of cooperating processes never interleave."""
    fd = os.open(os.path.join(directory, GUARD), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the flock


# --- messages --------------------------------------------------------------------------------------------------


def _describe_holder(record: LockRecord) -> str:
    patch = f"patch {record.patch}" if record.patch else "no patch recorded"
    return f"{record.owner} (run {record.run_id}, {patch}, on {record.host} pid {record.pid})"


def held_message(record: LockRecord, path: str) -> str:
    return (
        f"{record.scope} is locked by {_describe_holder(record)} until {record.expires_at}; wait for that rollout "
        f"to finish, or if that rollout is dead remove {path} after checking its runner (AWX job or ansible "
        f"process pid {record.pid} on {record.host})"
    )


def stale_message(record: LockRecord, path: str) -> str:
    return (
        f"{record.scope} is locked by {_describe_holder(record)} whose lock expired at {record.expires_at}, and "
        f"takeover_stale is false; check that rollout's runner and whether it left nodes half-patched, then set "
        f"takeover_stale: true (or remove {path}) to take over"
    )


def _holder(record: LockRecord, path: str, stale: bool) -> dict[str, Any]:
    return {**record.to_dict(), "path": path, "expired": stale}


# --- operations ------------------------------------------------------------------------------------------------


def _inspect(directory: str, scopes: list[str]) -> dict[str, LockRecord | None]:
    """Every scope's record; one LockCorruptError naming every unreadable file (they are all left alone)."""
    records: dict[str, LockRecord | None] = {}
    corrupt: list[LockCorruptError] = []
    if not os.path.isdir(directory):
        return dict.fromkeys(scopes)
    for scope in scopes:
        try:
            records[scope] = read_lock(directory, scope)
        except LockCorruptError as e:
            corrupt.append(e)
    if len(corrupt) == 1:
        raise corrupt[0]
    if corrupt:
        raise LockCorruptError(
            ", ".join(e.path for e in corrupt[:-1]) + " and " + corrupt[-1].path,
            "; ".join(f"{os.path.basename(e.path)}: {e.problem}" for e in corrupt),
        )
    return records


def acquire(
    directory: str,
    scopes: Sequence[str],
    owner: str,
    run_id: str,
    now: dt.datetime,
    ttl: int = 3600,
    patch: str | None = None,
    takeover_stale: bool = True,
    host: str = "",
    pid: int = 0,
    check_mode: bool = False,
) -> LockResult:
    """Lock every scope for ``run_id`` or none of them.

    Scopes already held by ``run_id`` are kept as they are (renewed only when they expired). Expired locks of other
    runs are taken over when ``takeover_stale`` and reported in ``stale_taken_over``. Any scope held by another run
    (live, or expired without takeover) raises LockConflictError after releasing whatever this call had taken.
    """
    scopes = validate_scopes(scopes)
    owner = _need_text("owner", owner, "alice@ops-laptop or an AWX job id")
    run_id = _need_text("run_id", run_id, "20261124T0915Z-ab12 (unique per rollout run)")
    ttl = _need_ttl(ttl)
    if patch is not None and not isinstance(patch, str):
        raise LockInputError(f"patch: must be a string such as a catalog patch id (got {patch!r})")
    now = now.astimezone(dt.UTC).replace(microsecond=0)
    if not check_mode:
        ensure_dir(directory)
    with guard(directory) if not check_mode else contextlib.nullcontext():
        return _acquire_locked(directory, scopes, owner, run_id, now, ttl, patch or None, takeover_stale,
                               host, pid, check_mode)


def _acquire_locked(
    directory: str,
    scopes: list[str],
    owner: str,
    run_id: str,
    now: dt.datetime,
    ttl: int,
    patch: str | None,
    takeover_stale: bool,
    host: str,
    pid: int,
    check_mode: bool,
) -> LockResult:
    result = LockResult()
    records = _inspect(directory, scopes)
    new = LockRecord(scope="", owner=owner, run_id=run_id, patch=patch, acquired_at=format_time(now),
                     expires_at=format_time(now + dt.timedelta(seconds=ttl)), host=host, pid=pid)
    plan: list[tuple[str, LockRecord | None]] = []  # (scope, record it replaces) for scopes to write
    problems: list[str] = []
    for scope in scopes:
        current = records[scope]
        path = lock_path(directory, scope)
        if current is None:
            plan.append((scope, None))
        elif current.run_id == run_id:
            if current.expired(now):
                plan.append((scope, current))  # our own lock ran out; nobody took it, so renew it
            else:
                result.already_held.append(scope)
        elif current.expired(now) and takeover_stale:
            plan.append((scope, current))
        else:
            stale = current.expired(now)
            result.held_by_others.append(_holder(current, path, stale))
            problems.append(stale_message(current, path) if stale else held_message(current, path))
    if problems:
        raise LockConflictError(_conflict_message(problems, len(scopes)), result)

    written: list[tuple[str, LockRecord | None]] = []
    for scope, previous in plan:
        record = LockRecord(**{**new.to_dict(), "scope": scope})
        if check_mode:
            pass
        elif previous is None:
            if not create_lock(directory, record):
                # Only a process ignoring the guard (or a guard that does not work on this file system) gets here.
                _undo(directory, written)
                result.refreshed.clear()
                result.stale_taken_over.clear()
                raced = read_lock(directory, scope)
                if raced is None:
                    raise LockConflictError(f"{scope}: the lock appeared and vanished while it was being taken; "
                                            "retry", result)
                result.held_by_others.append(_holder(raced, lock_path(directory, scope), raced.expired(now)))
                raise LockConflictError(_conflict_message([held_message(raced, lock_path(directory, scope))],
                                                          len(scopes)), result)
        else:
            replace_lock(directory, record)
        written.append((scope, previous))
        if previous is not None and previous.run_id == run_id:
            result.refreshed.append(scope)
        elif previous is not None:
            result.stale_taken_over.append({
                "scope": scope,
                "previous_owner": previous.owner,
                "previous_run_id": previous.run_id,
                "previous_patch": previous.patch,
                "expired_at": previous.expires_at,
            })
    result.changed = bool(written)
    result.acquired = list(scopes)
    result.locks = []
    for scope in scopes:
        record = records[scope]
        if any(scope == s for s, _prev in written) or record is None:
            result.locks.append({**new.to_dict(), "scope": scope})
        else:
            result.locks.append(record.to_dict())
    return result


def _undo(directory: str, written: list[tuple[str, LockRecord | None]]) -> None:
    """Give back what this call wrote: remove new locks, put back the records of taken-over ones."""
    for scope, previous in reversed(written):
        if previous is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock_path(directory, scope))
        else:
            replace_lock(directory, previous)


def _conflict_message(problems: list[str], total: int) -> str:
    text = "; and ".join(problems)
    return text if total == 1 else f"{text}. None of the {total} scopes was locked (all or none)"


def release(directory: str, scopes: Sequence[str], run_id: str, check_mode: bool = False) -> LockResult:
    """Remove the locks of ``scopes`` that ``run_id`` holds; never anyone else's (those go to ``not_owned``).

    Unreadable lock files are left in place and raise LockCorruptError after this run's own locks were released;
    the exception's ``result`` attribute carries what was released.
    """
    scopes = validate_scopes(scopes)
    run_id = _need_text("run_id", run_id, "the run_id the locks were acquired with")
    result = LockResult()
    if not os.path.isdir(directory):
        result.not_locked = list(scopes)
        return result
    corrupt: list[LockCorruptError] = []
    with guard(directory) if not check_mode else contextlib.nullcontext():
        for scope in scopes:
            path = lock_path(directory, scope)
            try:
                current = read_lock(directory, scope)
            except LockCorruptError as e:
                corrupt.append(e)
                continue
            if current is None:
                result.not_locked.append(scope)
            elif current.run_id != run_id:
                result.not_owned.append({**current.to_dict(), "path": path})
            else:
                if not check_mode:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                result.released.append(scope)
                result.locks.append(current.to_dict())
        if result.released and not check_mode:
            _fsync_dir(directory)
    result.changed = bool(result.released)
    if corrupt:
        err = corrupt[0] if len(corrupt) == 1 else LockCorruptError(
            ", ".join(e.path for e in corrupt), "; ".join(e.problem for e in corrupt))
        err.result = result
        raise err
    return result


def refresh(
    directory: str, scopes: Sequence[str], run_id: str, now: dt.datetime, ttl: int = 3600, check_mode: bool = False
) -> LockResult:
    """Move ``expires_at`` of this run's locks to ``now + ttl``; all-or-nothing.

    Raises LockConflictError when a scope is no longer held by ``run_id`` (missing, or taken over by another run
    after it expired): the rollout must stop or re-acquire, not carry on unprotected.
    """
    scopes = validate_scopes(scopes)
    run_id = _need_text("run_id", run_id, "the run_id the locks were acquired with")
    ttl = _need_ttl(ttl)
    now = now.astimezone(dt.UTC).replace(microsecond=0)
    expires = format_time(now + dt.timedelta(seconds=ttl))
    result = LockResult()
    with guard(directory) if not check_mode and os.path.isdir(directory) else contextlib.nullcontext():
        records = _inspect(directory, scopes)
        problems = []
        for scope in scopes:
            current = records[scope]
            path = lock_path(directory, scope)
            if current is None:
                result.not_locked.append(scope)
                problems.append(f"{scope} is not locked (no {path}), so run {run_id} no longer holds it; stop and "
                                f"check the rollout, then lock it again with state: acquired")
            elif current.run_id != run_id:
                result.held_by_others.append(_holder(current, path, current.expired(now)))
                problems.append(f"{scope} is now locked by {_describe_holder(current)}, not by run {run_id} (its "
                                f"lock expired and was taken over); stop this rollout and check with that owner")
        if problems:
            raise LockConflictError(_conflict_message(problems, len(scopes)), result)
        for scope in scopes:
            current = records[scope]
            if current is None:  # ruled out above
                continue
            if current.expires_at == expires:
                result.locks.append(current.to_dict())
                continue
            record = LockRecord(**{**current.to_dict(), "expires_at": expires})
            if not check_mode:
                replace_lock(directory, record)
            result.refreshed.append(scope)
            result.locks.append(record.to_dict())
    result.changed = bool(result.refreshed)
    return result
