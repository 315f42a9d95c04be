# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Rollout leases: one rollout at a time per shard or chain, with an owner, an expiry and a fencing token.

Two stores keep them behind one interface (:func:`open_leases`, :class:`FileLeases`, :class:`PgLeases`):
the ``file`` store described below (the default, one controller) and the ``postgresql`` store of
:mod:`._store` (a team), where expiry is judged in the database's time. docs/lease.md says what
each guarantee rests on.

A lock is one JSON file per scope, ``<dir>/<scope>.lock``, holding a :class:`LockRecord`. Files
are only ever created whole: the record is written to a temporary file, flushed to disk, then
hard-linked to its final name, which fails when the name exists (the atomic create-if-absent
of POSIX), so a reader never sees half a lock and two runs can never both create one.
Read-check-write sequences (taking over an expired lock, refreshing, releasing) are
serialised between cooperating processes by an exclusive ``flock`` on ``<dir>/.guard``.

Acquiring is all-or-nothing over the scopes: every scope is inspected first, and nothing is
written unless all of them are free, expired (and may be taken over) or already this run's.
A lock file that cannot be read is treated as held: it is never deleted or overwritten here.

Every acquisition that writes gets a fencing token from a counter that only grows (``<dir>/.fence``
under the same guard; ``exchpatch_fence_seq`` in PostgreSQL); every scope of the acquisition carries
it. Re-acquiring what the run still holds keeps the token; anything else (a new scope, a lapsed
lease, a takeover) takes the next one, so a node can refuse a lower token than it has seen.

Everything raises :class:`LockError` subclasses (or :class:`._store.StoreError` for the database)
with a message naming the scope, the lock file or store and what to do; the caller (the
deploy_lock module) turns them into ``fail_json``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import re
import tempfile
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ansible_collections.exchangeops.patching.plugins.module_utils import _store

try:
    import psycopg
except ImportError:
    HAS_PSYCOPG = False
    PSYCOPG_IMPORT_ERROR: str | None = traceback.format_exc()
else:
    HAS_PSYCOPG = True
    PSYCOPG_IMPORT_ERROR = None

SCOPE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
SUFFIX = ".lock"
GUARD = ".guard"
FENCE = ".fence"
# Short, and renewed while the run lives (the exchangeops.patching.lease callback): a dead controller's lease
# lapses within a minute.
DEFAULT_TTL = 60
_FIELDS = ("scope", "owner", "run_id", "patch", "acquired_at", "expires_at", "host", "pid")
# Written since the lease got fencing tokens; a lock file without them reads as token 0 (never current).
_OPTIONAL_INTS = ("token", "ttl")
# pg_advisory_xact_lock key serialising acquisitions in the postgresql store ("lease" as a number).
_ACQUIRE_LOCK = 0x6C65617365


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
    """One or more scopes are held by other runs (or, on check and renew, no longer by this run with this token);
    ``result`` says what was (not) done."""

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
    token: int = 0
    ttl: int = 0

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
    lost: list[dict[str, Any]] = field(default_factory=list)
    locks: list[dict[str, Any]] = field(default_factory=list)
    token: int = 0
    lease: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Every list; ``token`` and ``lease`` only when there is a lease to describe (acquired, refreshed, checked)."""
        data = asdict(self)
        if self.lease is None:
            del data["token"], data["lease"]
        return data


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
        raise LockInputError(f"ttl: must be a positive number of seconds (got {ttl!r}); e.g. {DEFAULT_TTL}, renewed "
                             "every ttl/3 while the run lives")
    return ttl


def _need_token(token: Any) -> int:
    if isinstance(token, bool) or not isinstance(token, int) or token < 0:
        raise LockInputError(f"token: must be the fencing token that state: acquired returned (got {token!r}), "
                             "e.g. {{ preflight_lease_token }}")
    return token


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
    for key in _OPTIONAL_INTS:
        if key in data and (isinstance(data[key], bool) or not isinstance(data[key], int) or data[key] < 0):
            raise LockCorruptError(path, f"{key} is {data[key]!r}, not a non-negative integer")
    if data["scope"] != scope:
        raise LockCorruptError(path, f"it records scope {data['scope']!r} but is the lock file of {scope!r}")
    for key in ("acquired_at", "expires_at"):
        try:
            parse_time(data[key])
        except ValueError:
            raise LockCorruptError(path, f"{key} {data[key]!r} is not an ISO 8601 UTC time") from None
    return LockRecord(**{k: data[k] for k in _FIELDS}, **{k: data[k] for k in _OPTIONAL_INTS if k in data})


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


class _FilePlace:
    """Messages and holder details for leases kept as lock files in a folder."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.name = f"file store {directory}"
        self.clock = "controller time"

    def details(self, scope: str) -> dict[str, Any]:
        return {"path": lock_path(self.directory, scope)}

    def held(self, record: LockRecord) -> str:
        return held_message(record, lock_path(self.directory, record.scope))

    def stale(self, record: LockRecord) -> str:
        return stale_message(record, lock_path(self.directory, record.scope))


class _PgPlace:
    """Messages and holder details for leases kept in the postgresql state store."""

    def __init__(self, store: str) -> None:
        self.store = store
        self.name = f"state store {store}"
        self.clock = "database time"

    def details(self, scope: str) -> dict[str, Any]:
        return {"store": self.store}

    def held(self, record: LockRecord) -> str:
        return (
            f"{record.scope} is leased by {_describe_holder(record)} until {record.expires_at} (database time, "
            f"{self.name}); wait for that rollout to finish: its lease is renewed only while its ansible-playbook "
            f"lives, so a dead rollout's lease lapses within its ttl of {record.ttl} s and may then be taken over"
        )

    def stale(self, record: LockRecord) -> str:
        return (
            f"{record.scope} is leased by {_describe_holder(record)} whose lease expired at {record.expires_at} "
            f"(database time, {self.name}), and takeover_stale is false; check whether that rollout left nodes "
            "half-patched, then set takeover_stale: true to take over"
        )


def _holder(record: LockRecord, details: dict[str, Any], stale: bool) -> dict[str, Any]:
    return {**record.to_dict(), **details, "expired": stale}


def _conflict_message(problems: list[str], total: int) -> str:
    text = "; and ".join(problems)
    return text if total == 1 else f"{text}. None of the {total} scopes was locked (all or none)"


def lease_summary(locks: Sequence[dict[str, Any]], store: str, directory: str | None) -> dict[str, Any] | None:
    """The ``lease`` return value: one run's scopes, token, ttl and the earliest expiry among them."""
    if not locks:
        return None
    first = locks[0]
    return {
        "store": store,
        "dir": directory,
        "scopes": [lock["scope"] for lock in locks],
        "run_id": first["run_id"],
        "owner": first["owner"],
        "patch": first["patch"],
        "token": first.get("token", 0),
        "ttl": first.get("ttl", 0),
        "expires_at": min(lock["expires_at"] for lock in locks),
    }


# --- decisions shared by both stores ---------------------------------------------------------------------------


@dataclass
class _Decision:
    write: list[tuple[str, LockRecord | None]]  # scopes to write, each with the record it replaces
    keep: int  # the token to keep when every scope is already this run's, live, with one token; else 0


def _decide(
    scopes: list[str],
    records: dict[str, LockRecord | None],
    expired: dict[str, bool],
    run_id: str,
    takeover_stale: bool,
    place: _FilePlace | _PgPlace,
    result: LockResult,
) -> _Decision:
    """What an acquisition writes; LockConflictError (nothing written) when any scope is another run's."""
    write: dict[str, LockRecord | None] = {}
    held: dict[str, LockRecord] = {}
    problems: list[str] = []
    for scope in scopes:
        current = records[scope]
        if current is None:
            write[scope] = None
        elif current.run_id == run_id and not expired[scope]:
            held[scope] = current
            result.already_held.append(scope)
        elif current.run_id == run_id or (expired[scope] and takeover_stale):
            write[scope] = current
        else:
            result.held_by_others.append(_holder(current, place.details(scope), expired[scope]))
            problems.append(place.stale(current) if expired[scope] else place.held(current))
    if problems:
        raise LockConflictError(_conflict_message(problems, len(scopes)), result)
    tokens = {record.token for record in held.values()}
    if not write and len(tokens) == 1 and min(tokens) > 0:
        return _Decision([], min(tokens))
    # One token per acquisition: scopes this run already held take the new token too.
    return _Decision([(scope, write[scope] if scope in write else held[scope]) for scope in scopes], 0)


def _report_written(result: LockResult, scope: str, previous: LockRecord | None, run_id: str,
                    expired: dict[str, bool]) -> None:
    if previous is None:
        return
    if previous.run_id == run_id:
        if expired[scope]:
            result.refreshed.append(scope)  # this run's own lease had run out and nobody took it
        return
    result.stale_taken_over.append({
        "scope": scope,
        "previous_owner": previous.owner,
        "previous_run_id": previous.run_id,
        "previous_patch": previous.patch,
        "previous_token": previous.token,
        "expired_at": previous.expires_at,
    })


def _judge(
    scopes: list[str],
    records: dict[str, LockRecord | None],
    expired: dict[str, bool],
    run_id: str,
    token: int,
    place: _FilePlace | _PgPlace,
    now_text: str,
    result: LockResult,
) -> None:
    """LockConflictError naming, per scope, why ``run_id`` does not hold it with ``token`` unexpired."""
    problems: list[str] = []
    for scope in scopes:
        current = records[scope]
        if current is None:
            result.not_locked.append(scope)
            problems.append(f"{scope} has no lease (it was released, or never taken by run {run_id})")
        elif current.run_id != run_id:
            result.held_by_others.append(_holder(current, place.details(scope), expired[scope]))
            problems.append(f"{scope} is now leased by {_describe_holder(current)} with token {current.token} "
                            f"until {current.expires_at}: the lease of run {run_id} lapsed and was taken over")
        elif current.token != token:
            result.lost.append({**current.to_dict(), "reason": "token"})
            problems.append(f"{scope} is leased by run {run_id} with token {current.token}, not {token}: the lease "
                            "was lost and taken again since, so this token is no longer current")
        elif expired[scope]:
            result.lost.append({**current.to_dict(), "reason": "expired"})
            problems.append(f"{scope}: the lease of run {run_id} (token {token}) expired at {current.expires_at} "
                            f"({place.clock} now {now_text}); it was not renewed within its ttl of {current.ttl} s "
                            "(the controller stopped or was cut off from the store, or the "
                            "exchangeops.patching.lease callback is not enabled)")
    if problems:
        raise LockConflictError(f"lease lost ({place.name}): " + "; ".join(problems)
                                + "; stop this rollout, check its nodes, then run it again", result)


# --- the file store --------------------------------------------------------------------------------------------


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


def next_token(directory: str, seen: Sequence[LockRecord | None] = ()) -> int:
    """Issue the folder's next fencing token (call it under the guard): one more than ``.fence`` held, and more
    than any token in ``seen``, so a lost counter file never makes a token go back."""
    path = os.path.join(directory, FENCE)
    try:
        with open(path, "rb") as fh:
            text = fh.read().decode("ascii", "replace").strip()
    except FileNotFoundError:
        text = "0"
    except OSError as e:
        raise LockError(f"{path}: cannot read the fencing token counter ({e.strerror or e}); fix its permissions "
                        "and retry") from None
    if not re.fullmatch(r"[0-9]{1,18}", text):
        raise LockError(f"{path}: the fencing token counter holds {text[:40]!r}, not a number; write into it a "
                        "number above every token this folder issued (at least the highest token in its .lock "
                        "files) and retry")
    token = max([int(text), *(record.token for record in seen if record is not None)]) + 1
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".fence.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(f"{token}\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)
    return token


def _acquire_inputs(scopes: Sequence[str], owner: str, run_id: str, ttl: Any,
                    patch: Any) -> tuple[list[str], str, str, int, str | None]:
    scopes = validate_scopes(scopes)
    owner = _need_text("owner", owner, "alice@ops-laptop or an AWX job id")
    run_id = _need_text("run_id", run_id, "20261124T0915Z-ab12 (unique per rollout run)")
    ttl = _need_ttl(ttl)
    if patch is not None and not isinstance(patch, str):
        raise LockInputError(f"patch: must be a string such as a catalog patch id (got {patch!r})")
    return scopes, owner, run_id, ttl, patch or None


def acquire(
    directory: str,
    scopes: Sequence[str],
    owner: str,
    run_id: str,
    now: dt.datetime,
    ttl: int = DEFAULT_TTL,
    patch: str | None = None,
    takeover_stale: bool = True,
    host: str = "",
    pid: int = 0,
    check_mode: bool = False,
) -> LockResult:
    """Lock every scope for ``run_id`` or none of them, under one fencing token (``result.token``).

    Scopes already held (unexpired) by ``run_id`` with one token are kept as they are, with that token. Otherwise
    the next token is issued and every scope is written with it: new ones, this run's own expired ones (reported
    in ``refreshed``) and expired locks of other runs when ``takeover_stale`` (reported in ``stale_taken_over``).
    Any scope held by another run (live, or expired without takeover) raises LockConflictError and nothing is
    written. In check mode nothing is written and a token that would be new is reported as 0.
    """
    scopes, owner, run_id, ttl, patch = _acquire_inputs(scopes, owner, run_id, ttl, patch)
    now = now.astimezone(dt.UTC).replace(microsecond=0)
    if not check_mode:
        ensure_dir(directory)
    with guard(directory) if not check_mode else contextlib.nullcontext():
        return _acquire_locked(directory, scopes, owner, run_id, now, ttl, patch, takeover_stale,
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
    expired = {scope: record is not None and record.expired(now) for scope, record in records.items()}
    decision = _decide(scopes, records, expired, run_id, takeover_stale, _FilePlace(directory), result)
    token = decision.keep if decision.keep or check_mode else next_token(directory, list(records.values()))
    new = LockRecord(scope="", owner=owner, run_id=run_id, patch=patch, acquired_at=format_time(now),
                     expires_at=format_time(now + dt.timedelta(seconds=ttl)), host=host, pid=pid, token=token, ttl=ttl)
    written: list[tuple[str, LockRecord | None]] = []
    records_after: dict[str, LockRecord] = {}
    for scope, previous in decision.write:
        kept_since = previous is not None and previous.run_id == run_id and not expired[scope]
        record = LockRecord(**{**new.to_dict(), "scope": scope,
                               "acquired_at": previous.acquired_at if previous and kept_since else new.acquired_at})
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
                path = lock_path(directory, scope)
                result.held_by_others.append(_holder(raced, {"path": path}, raced.expired(now)))
                raise LockConflictError(_conflict_message([held_message(raced, path)], len(scopes)), result)
        else:
            replace_lock(directory, record)
        written.append((scope, previous))
        records_after[scope] = record
        _report_written(result, scope, previous, run_id, expired)
    result.changed = bool(written)
    result.acquired = list(scopes)
    result.locks = [(records_after.get(scope) or records[scope] or new).to_dict() for scope in scopes]
    result.token = token
    return result


def _undo(directory: str, written: list[tuple[str, LockRecord | None]]) -> None:
    """Give back what this call wrote: remove new locks, put back the records of replaced ones."""
    for scope, previous in reversed(written):
        if previous is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock_path(directory, scope))
        else:
            replace_lock(directory, previous)


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
    directory: str, scopes: Sequence[str], run_id: str, now: dt.datetime, ttl: int = DEFAULT_TTL,
    check_mode: bool = False,
) -> LockResult:
    """Move ``expires_at`` of this run's locks to ``now + ttl`` (and record ``ttl``), keeping their token;
    all-or-nothing.

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
                result.held_by_others.append(_holder(current, {"path": path}, current.expired(now)))
                problems.append(f"{scope} is now locked by {_describe_holder(current)}, not by run {run_id} (its "
                                f"lock expired and was taken over); stop this rollout and check with that owner")
        if problems:
            raise LockConflictError(_conflict_message(problems, len(scopes)), result)
        for scope in scopes:
            current = records[scope]
            if current is None:  # ruled out above
                continue
            if current.expires_at == expires and current.ttl == ttl:
                result.locks.append(current.to_dict())
                continue
            record = LockRecord(**{**current.to_dict(), "expires_at": expires, "ttl": ttl})
            if not check_mode:
                replace_lock(directory, record)
            result.refreshed.append(scope)
            result.locks.append(record.to_dict())
    result.changed = bool(result.refreshed)
    result.token = result.locks[0]["token"] if result.locks else 0
    return result


def check(directory: str, scopes: Sequence[str], run_id: str, token: int, now: dt.datetime) -> LockResult:
    """Nothing, when ``run_id`` holds every scope with ``token`` and none expired at ``now``; otherwise
    LockConflictError naming, per scope, the holder or why the lease is lost. Reads only."""
    scopes = validate_scopes(scopes)
    run_id = _need_text("run_id", run_id, "the run_id the lease was acquired with")
    token = _need_token(token)
    now = now.astimezone(dt.UTC)
    result = LockResult()
    records = _inspect(directory, scopes)
    expired = {scope: record is not None and record.expired(now) for scope, record in records.items()}
    _judge(scopes, records, expired, run_id, token, _FilePlace(directory), format_time(now), result)
    result.locks = [record.to_dict() for record in records.values() if record is not None]
    result.token = token
    return result


def renew(directory: str, scopes: Sequence[str], run_id: str, token: int, now: dt.datetime) -> LockResult:
    """Move the expiry of a live lease to ``now`` plus its own ttl; LockConflictError (nothing written) when
    ``run_id`` no longer holds every scope with ``token`` unexpired: a lapsed lease is lost, never revived."""
    scopes = validate_scopes(scopes)
    run_id = _need_text("run_id", run_id, "the run_id the lease was acquired with")
    token = _need_token(token)
    now = now.astimezone(dt.UTC).replace(microsecond=0)
    result = LockResult()
    with guard(directory) if os.path.isdir(directory) else contextlib.nullcontext():
        records = _inspect(directory, scopes)
        expired = {scope: record is not None and record.expired(now) for scope, record in records.items()}
        _judge(scopes, records, expired, run_id, token, _FilePlace(directory), format_time(now), result)
        for scope in scopes:
            current = records[scope]
            if current is None:  # ruled out by _judge
                continue
            ttl = current.ttl or DEFAULT_TTL
            record = LockRecord(**{**current.to_dict(), "expires_at": format_time(now + dt.timedelta(seconds=ttl))})
            replace_lock(directory, record)
            result.refreshed.append(scope)
            result.locks.append(record.to_dict())
    result.changed = True
    result.token = token
    return result


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class FileLeases:
    """The ``file`` store: lock files in one folder of this controller, judged by this controller's clock."""

    def __init__(self, directory: str, clock: Callable[[], dt.datetime] = _utc_now) -> None:
        if not isinstance(directory, str) or not directory:
            raise LockInputError("dir: the file state store needs the lock folder; set dir (preflight_lock_dir), or "
                                 "use store: postgresql")
        self.directory = directory
        self.clock = clock
        self.store = f"file {directory}"

    def _with_lease(self, result: LockResult) -> LockResult:
        result.lease = lease_summary(result.locks, self.store, self.directory) or {}
        return result

    def acquire(self, scopes: Sequence[str], owner: str, run_id: str, ttl: int = DEFAULT_TTL,
                patch: str | None = None, takeover_stale: bool = True, host: str = "", pid: int = 0,
                check_mode: bool = False) -> LockResult:
        return self._with_lease(acquire(self.directory, scopes, owner, run_id, self.clock(), ttl=ttl, patch=patch,
                                        takeover_stale=takeover_stale, host=host, pid=pid, check_mode=check_mode))

    def refresh(self, scopes: Sequence[str], run_id: str, ttl: int = DEFAULT_TTL,
                check_mode: bool = False) -> LockResult:
        return self._with_lease(refresh(self.directory, scopes, run_id, self.clock(), ttl=ttl, check_mode=check_mode))

    def release(self, scopes: Sequence[str], run_id: str, check_mode: bool = False) -> LockResult:
        return release(self.directory, scopes, run_id, check_mode=check_mode)

    def check(self, scopes: Sequence[str], run_id: str, token: int) -> LockResult:
        return self._with_lease(check(self.directory, scopes, run_id, token, self.clock()))

    def renew(self, scopes: Sequence[str], run_id: str, token: int) -> LockResult:
        return self._with_lease(renew(self.directory, scopes, run_id, token, self.clock()))


# --- the postgresql store --------------------------------------------------------------------------------------

_COLUMNS = "scope, owner, run_id, patch, token, ttl, acquired_at, expires_at, host, pid, expires_at <= now()"
_UPSERT = f"""INSERT INTO exchpatch_lease AS lease
                (scope, owner, run_id, patch, token, ttl, acquired_at, renewed_at, expires_at, host, pid)
              VALUES (%(scope)s, %(owner)s, %(run_id)s, %(patch)s, %(token)s, %(ttl)s, now(), now(),
                      now() + %(ttl)s * interval '1 second', %(host)s, %(pid)s)
              ON CONFLICT (scope) DO UPDATE SET
                owner = EXCLUDED.owner, run_id = EXCLUDED.run_id, patch = EXCLUDED.patch, token = EXCLUDED.token,
                ttl = EXCLUDED.ttl, renewed_at = EXCLUDED.renewed_at, expires_at = EXCLUDED.expires_at,
                host = EXCLUDED.host, pid = EXCLUDED.pid,
                acquired_at = CASE WHEN lease.run_id = EXCLUDED.run_id AND lease.expires_at > now()
                                   THEN lease.acquired_at ELSE EXCLUDED.acquired_at END
              RETURNING {_COLUMNS}"""


def _pg_record(row: Sequence[Any]) -> tuple[LockRecord, bool]:
    scope, owner, run_id, patch, token, ttl, acquired_at, expires_at, host, pid, expired = row
    return LockRecord(scope=scope, owner=owner, run_id=run_id, patch=patch, acquired_at=format_time(acquired_at),
                      expires_at=format_time(expires_at), host=host, pid=int(pid), token=int(token),
                      ttl=int(ttl)), bool(expired)


class PgLeases:
    """The ``postgresql`` store: one row per scope in ``exchpatch_lease``, expiry judged by the database's
    ``now()``, tokens from ``exchpatch_fence_seq``. A fresh connection per call (it is never held across forks)."""

    def __init__(self, conf: _store.StoreSettings) -> None:
        self.conf = conf
        self.store = _store.describe(conf)
        self._place = _PgPlace(self.store)

    @contextlib.contextmanager
    def _cursor(self, what: str, transaction: bool = True) -> Iterator[Any]:
        conn = _store.connect(self.conf)  # StoreError naming the store (never the password) when unreachable
        try:
            _store.ensure_schema(conn)
            with conn.transaction() if transaction else contextlib.nullcontext(), conn.cursor() as cur:
                yield cur
        except psycopg.Error as e:
            raise _store.StoreError(f"the state store ({self.store}) failed to {what}: {_store.first_line(e)}; check "
                                    f"that the schema was migrated and {_store.WRITER_ROLE} has its grants "
                                    "(exchpatch store migrate)") from e
        finally:
            conn.close()

    @staticmethod
    def _read(cur: Any, scopes: list[str], lock: bool) -> tuple[dict[str, LockRecord | None], dict[str, bool], str]:
        cur.execute(f"SELECT {_COLUMNS} FROM exchpatch_lease WHERE scope = ANY(%s) ORDER BY scope"
                    + (" FOR UPDATE" if lock else ""), (scopes,))
        records: dict[str, LockRecord | None] = dict.fromkeys(scopes)
        expired = dict.fromkeys(scopes, False)
        for row in cur.fetchall():
            records[row[0]], expired[row[0]] = _pg_record(row)
        cur.execute("SELECT now()")
        return records, expired, format_time(cur.fetchone()[0])

    def _with_lease(self, result: LockResult) -> LockResult:
        result.lease = lease_summary(result.locks, self.store, None) or {}
        return result

    def acquire(self, scopes: Sequence[str], owner: str, run_id: str, ttl: int = DEFAULT_TTL,
                patch: str | None = None, takeover_stale: bool = True, host: str = "", pid: int = 0,
                check_mode: bool = False) -> LockResult:
        scopes, owner, run_id, ttl, patch = _acquire_inputs(scopes, owner, run_id, ttl, patch)
        result = LockResult()
        with self._cursor("take the lease") as cur:
            if not check_mode:
                # Acquisitions queue one behind the other, like the file store's guard: all or nothing, no deadlock.
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (_ACQUIRE_LOCK,))
            records, expired, _now = self._read(cur, scopes, lock=not check_mode)
            decision = _decide(scopes, records, expired, run_id, takeover_stale, self._place, result)
            token = decision.keep
            if not token and not check_mode:
                cur.execute("SELECT nextval('exchpatch_fence_seq')")
                token = int(cur.fetchone()[0])
            cur.execute("SELECT now(), now() + %s * interval '1 second'", (ttl,))
            start, end = cur.fetchone()
            new = LockRecord(scope="", owner=owner, run_id=run_id, patch=patch, acquired_at=format_time(start),
                             expires_at=format_time(end), host=host, pid=pid, token=token, ttl=ttl)
            after: dict[str, LockRecord] = {}
            for scope, previous in decision.write:
                if check_mode:
                    after[scope] = LockRecord(**{**new.to_dict(), "scope": scope})
                else:
                    cur.execute(_UPSERT, {**new.to_dict(), "scope": scope})
                    after[scope] = _pg_record(cur.fetchone())[0]
                _report_written(result, scope, previous, run_id, expired)
        result.changed = bool(decision.write)
        result.acquired = list(scopes)
        result.locks = [(after.get(scope) or records[scope] or new).to_dict() for scope in scopes]
        result.token = token
        return self._with_lease(result)

    def release(self, scopes: Sequence[str], run_id: str, check_mode: bool = False) -> LockResult:
        scopes = validate_scopes(scopes)
        run_id = _need_text("run_id", run_id, "the run_id the locks were acquired with")
        result = LockResult()
        with self._cursor("release the lease") as cur:
            records, _expired, _now = self._read(cur, scopes, lock=not check_mode)
            for scope in scopes:
                current = records[scope]
                if current is None:
                    result.not_locked.append(scope)
                elif current.run_id != run_id:
                    result.not_owned.append({**current.to_dict(), "store": self.store})
                else:
                    result.released.append(scope)
                    result.locks.append(current.to_dict())
            if result.released and not check_mode:
                cur.execute("DELETE FROM exchpatch_lease WHERE scope = ANY(%s) AND run_id = %s",
                            (result.released, run_id))
        result.changed = bool(result.released)
        return result

    def refresh(self, scopes: Sequence[str], run_id: str, ttl: int = DEFAULT_TTL,
                check_mode: bool = False) -> LockResult:
        scopes = validate_scopes(scopes)
        run_id = _need_text("run_id", run_id, "the run_id the locks were acquired with")
        ttl = _need_ttl(ttl)
        result = LockResult()
        with self._cursor("refresh the lease") as cur:
            records, expired, _now = self._read(cur, scopes, lock=not check_mode)
            problems = []
            for scope in scopes:
                current = records[scope]
                if current is None:
                    result.not_locked.append(scope)
                    problems.append(f"{scope} has no lease in {self._place.name}, so run {run_id} no longer holds "
                                    "it; stop and check the rollout, then take it again with state: acquired")
                elif current.run_id != run_id:
                    result.held_by_others.append(_holder(current, self._place.details(scope), expired[scope]))
                    problems.append(f"{scope} is now leased by {_describe_holder(current)}, not by run {run_id} "
                                    "(its lease expired and was taken over); stop this rollout and check with that "
                                    "owner")
            if problems:
                raise LockConflictError(_conflict_message(problems, len(scopes)), result)
            if check_mode:
                result.locks = [records[scope].to_dict() for scope in scopes if records[scope] is not None]
                result.refreshed = list(scopes)
            else:
                cur.execute(f"""UPDATE exchpatch_lease SET ttl = %s, renewed_at = now(),
                                       expires_at = now() + %s * interval '1 second'
                                 WHERE scope = ANY(%s) AND run_id = %s RETURNING {_COLUMNS}""",
                            (ttl, ttl, scopes, run_id))
                after = {row[0]: _pg_record(row)[0] for row in cur.fetchall()}
                result.locks = [after[scope].to_dict() for scope in scopes]
                result.refreshed = list(scopes)
        result.changed = bool(result.refreshed)
        result.token = result.locks[0]["token"] if result.locks else 0
        return self._with_lease(result)

    def check(self, scopes: Sequence[str], run_id: str, token: int) -> LockResult:
        scopes = validate_scopes(scopes)
        run_id = _need_text("run_id", run_id, "the run_id the lease was acquired with")
        token = _need_token(token)
        result = LockResult()
        with self._cursor("check the lease") as cur:
            records, expired, now_text = self._read(cur, scopes, lock=False)
        _judge(scopes, records, expired, run_id, token, self._place, now_text, result)
        result.locks = [record.to_dict() for record in records.values() if record is not None]
        result.token = token
        return self._with_lease(result)

    def renew(self, scopes: Sequence[str], run_id: str, token: int) -> LockResult:
        scopes = validate_scopes(scopes)
        run_id = _need_text("run_id", run_id, "the run_id the lease was acquired with")
        token = _need_token(token)
        result = LockResult()
        with self._cursor("renew the lease") as cur:
            records, expired, now_text = self._read(cur, scopes, lock=True)
            _judge(scopes, records, expired, run_id, token, self._place, now_text, result)
            cur.execute(f"""UPDATE exchpatch_lease
                                SET renewed_at = now(), expires_at = now() + ttl * interval '1 second'
                              WHERE scope = ANY(%s) AND run_id = %s AND token = %s AND expires_at > now()
                             RETURNING {_COLUMNS}""", (scopes, run_id, token))
            after = {row[0]: _pg_record(row)[0] for row in cur.fetchall()}
        result.locks = [after[scope].to_dict() for scope in scopes if scope in after]
        result.refreshed = [scope for scope in scopes if scope in after]
        result.changed = True
        result.token = token
        return self._with_lease(result)


def open_leases(conf: _store.StoreSettings, directory: str | None = None) -> FileLeases | PgLeases:
    """The lease store ``conf`` names: FileLeases on ``directory`` or PgLeases on the DSN."""
    if conf.is_postgresql:
        return PgLeases(conf)
    return FileLeases(directory or "")
