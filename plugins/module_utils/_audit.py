# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The audit trail's record format, its chain, and the two backends that keep it.

One record is one JSON object (keys sorted, compact separators, UTF-8; :func:`canonical`). Every
record carries ``seq`` (1, 2, 3, ... over the whole trail), ``prev`` (the ``hash`` of the record
before it, ``"0" * 64`` for the first), ``mac`` (how ``hash`` was computed) and ``hash``:

* ``mac: "hmac-sha256"``: HMAC-SHA256, with the audit key, of the canonical JSON of the record
  without ``hash``. The key is never stored beside the trail (it comes from the vault or an AWX
  credential as ``exchange_audit_key``, or from a 0400 key file), so someone who can write the
  trail but has no key cannot recompute a chain that verifies.
* ``mac: "sha256"`` (and every record of format ``v: 1``, which has no ``mac``): plain sha256. A
  trail of such records is *unkeyed*: its chain finds accidents and careless edits, not someone
  who recomputes every hash.

An edited, removed, inserted or reordered record breaks the chain where it happened. With a key,
a plain record after a keyed one, or a trail with no keyed record at all, is a problem as well
(a chain recomputed without the key). Plain records before the first keyed one are the trail as
it was before a key was configured; the first keyed record's ``prev`` seals them.

Backends (one interface, :class:`Trail`; :func:`open_trail` picks one from the state store
setting):

* :class:`FileTrail`: JSON Lines; writers serialise on an exclusive ``flock`` and fsync every
  append, so concurrent runs interleave whole records and a killed run leaves whole records.
* ``PgTrail`` (``_audit_pg``): the ``exchpatch_audit`` table of the PostgreSQL state store,
  append-only by trigger and grants, one chain for every controller; its head row keeps the
  last link so records removed from the end are found.

The format is the contract in docs/audit.md. Pure stdlib; raises :class:`AuditError` with a
message naming the trail and the fix, which modules turn into ``fail_json``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import hmac
import json
import os
import re
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

VERSION = 2
GENESIS = "0" * 64
KINDS = ("change_opened", "event", "change_updated", "change_closed")
MAC_HMAC = "hmac-sha256"
MAC_PLAIN = "sha256"
MACS = (MAC_HMAC, MAC_PLAIN)
# Keys every record must carry (v2 adds mac), and the extra keys of each kind.
BASE_KEYS = ("v", "seq", "ts", "run", "kind", "prev", "hash")
KIND_KEYS = {
    "change_opened": ("playbook", "operator", "check_mode"),
    "change_updated": ("change",),
    "event": ("event",),
    "change_closed": ("outcome", "started", "finished"),
}
ENV_KEY_FILE = "EXCHPATCH_AUDIT_KEY_FILE"
MIN_KEY_LEN = 16
# verification outcomes
VERIFIED, UNKEYED, BROKEN = "verified", "unkeyed", "broken"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class AuditError(Exception):
    """A problem with the audit trail itself (unreadable, unwritable, bad key); the message names the fix."""


class TrailUnavailable(AuditError):
    """The trail's store cannot be reached right now (database down); records can be retried later."""


# --- time, paths, canonical form ------------------------------------------------------------

def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso(ts: dt.datetime) -> str:
    """UTC ISO-8601 with microseconds and Z: ``2026-11-24T13:50:00.123456Z``."""
    return ts.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_ts(text: str) -> dt.datetime:
    """An ISO date or timestamp (``Z`` or offset; a bare date is midnight UTC) as an aware datetime."""
    value = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def default_path(environ: Mapping[str, str] | None = None) -> str:
    """``$EXCHPATCH_AUDIT_FILE``, else ``$XDG_STATE_HOME/exchpatch/audit.jsonl``
    (``~/.local/state/exchpatch/audit.jsonl`` when XDG_STATE_HOME is unset)."""
    env = os.environ if environ is None else environ
    if env.get("EXCHPATCH_AUDIT_FILE"):
        return os.path.expanduser(env["EXCHPATCH_AUDIT_FILE"])
    state = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "exchpatch", "audit.jsonl")


def canonical(record: Mapping[str, Any]) -> str:
    """The one serialisation that is hashed and written: sorted keys, compact, UTF-8."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def record_hash(record: Mapping[str, Any]) -> str:
    """sha256 hex of the canonical JSON of ``record`` without its ``hash`` key (a plain link)."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(canonical(body).encode("utf-8")).hexdigest()


# --- the key ---------------------------------------------------------------------------------

def load_key(key: str | bytes | None = None, key_file: str | None = None,
             environ: Mapping[str, str] | None = None) -> bytes | None:
    """The audit key: ``key`` (the vaulted ``exchange_audit_key``) when given, else the content of
    ``key_file`` or ``$EXCHPATCH_AUDIT_KEY_FILE`` (a regular file no group or other may read), else
    None (an unkeyed trail). The key is never part of an error message."""
    env = os.environ if environ is None else environ
    if key is not None and key != "":
        raw = key.encode("utf-8") if isinstance(key, str) else bytes(key)
        raw = raw.strip()
        if len(raw) < MIN_KEY_LEN:
            raise AuditError(f"the audit key (exchange_audit_key) is shorter than {MIN_KEY_LEN} characters; "
                             "generate one with: openssl rand -hex 32")
        return raw
    path = key_file or env.get(ENV_KEY_FILE) or None
    if not path:
        return None
    path = os.path.expanduser(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise AuditError(f"{path}: cannot read the audit key file ({e.strerror}); point {ENV_KEY_FILE} or "
                         "[exchpatch_audit] key_file at a readable file (mode 0400)") from e
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise AuditError(f"{path}: the audit key file is not a regular file; give a file of mode 0400")
        if info.st_mode & 0o077:
            raise AuditError(f"{path}: the audit key file is readable or writable by group or others "
                             f"(mode {stat.S_IMODE(info.st_mode):04o}); chmod 400 {path}")
        with os.fdopen(os.dup(fd), "rb") as fh:
            raw = fh.read(4096).strip()
    finally:
        os.close(fd)
    if len(raw) < MIN_KEY_LEN:
        raise AuditError(f"{path}: the audit key is shorter than {MIN_KEY_LEN} characters; "
                         f"write a new one with: openssl rand -hex 32 > {path}")
    return raw


def record_mac(record: Mapping[str, Any]) -> str:
    """How ``record`` says it was linked: its ``mac``, or plain sha256 for format v1."""
    mac = record.get("mac")
    if mac is None and record.get("v") == 1:
        return MAC_PLAIN
    return mac if isinstance(mac, str) else ""


def link(record: Mapping[str, Any], key: bytes | None = None) -> str:
    """The ``hash`` of ``record`` (without its ``hash`` key) by its ``mac``: HMAC-SHA256 with
    ``key``, or plain sha256."""
    body = canonical({k: v for k, v in record.items() if k != "hash"}).encode("utf-8")
    if record_mac(record) == MAC_HMAC:
        if not key:
            raise AuditError("an hmac-sha256 record cannot be linked without the audit key")
        return hmac.new(key, body, hashlib.sha256).hexdigest()
    return hashlib.sha256(body).hexdigest()


def chain(records: Iterable[Mapping[str, Any]], seq: int, prev: str, key: bytes | None,
          now: dt.datetime | None = None) -> list[dict[str, Any]]:
    """``records`` (each with at least ``run`` and ``kind``) made into links after ``seq``/``prev``:
    ``v``, ``seq``, ``prev``, ``mac``, ``hash`` (and ``ts`` when missing) are filled in here."""
    out: list[dict[str, Any]] = []
    for rec in records:
        full = dict(rec)
        full.pop("hash", None)
        full["v"] = VERSION
        full.setdefault("ts", iso(now or utc_now()))
        seq += 1
        full["seq"] = seq
        full["prev"] = prev
        full["mac"] = MAC_HMAC if key else MAC_PLAIN
        full["hash"] = link(full, key)
        prev = full["hash"]
        out.append(full)
    return out


# --- event values ----------------------------------------------------------------------------

def trim(value: Any, limit: int = 2000) -> Any:
    """A value small enough for an event record: strings over ``limit`` characters are cut, and
    lists or dicts whose JSON is over ``limit * 4`` are summarised."""
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit] + f"... <{len(value) - limit} more characters>"
    if isinstance(value, Mapping | list | tuple):
        try:
            size = len(json.dumps(value, default=str))
        except (TypeError, ValueError):
            return "<unserialisable>"
        if size > limit * 4:
            kind = "items" if isinstance(value, list | tuple) else "keys"
            return f"<{len(value)} {kind}, {size} characters, trimmed>"
        if isinstance(value, Mapping):
            return {k: trim(v, limit) for k, v in value.items()}
        return [trim(v, limit) for v in value]
    return value


# --- verifying (any backend) -----------------------------------------------------------------

@dataclass
class Problem:
    """One break in the chain: the 1-based line (position in the trail), the record's seq (if
    readable) and what is wrong."""

    line: int
    seq: int | None
    what: str

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        where = f"line {self.line}" + (f" (seq {self.seq})" if self.seq is not None else "")
        return f"{where}: {self.what}"


@dataclass
class Verification:
    """What verify found: records read, problems, how many records were checked with the key
    (``keyed``), how many are plain sha256 (``unkeyed``), and whether a key was configured."""

    records: int = 0
    problems: list[Problem] = field(default_factory=list)
    keyed: int = 0
    unkeyed: int = 0
    unchecked: int = 0
    key_configured: bool = False

    @property
    def status(self) -> str:
        """``broken`` (a problem), ``verified`` (every link checked, keyed records checked with the
        key), or ``unkeyed`` (the chain is consistent, but no key vouches for it)."""
        if self.problems:
            return BROKEN
        if self.key_configured and self.keyed and not self.unchecked:
            return VERIFIED
        return UNKEYED

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        if self.problems:
            return f"{len(self.problems)} problem(s), first at {self.problems[0]}"
        if self.status == VERIFIED:
            text = f"{self.records} records, HMAC chain verified with the audit key"
            if self.unkeyed:
                text += (f" ({self.unkeyed} plain sha256 record(s) from before the key was configured, sealed by the "
                         "first keyed record)")
            return text
        if self.unchecked:
            return (f"UNKEYED CHECK: {self.records} records, links consistent, but {self.unchecked} keyed record(s) "
                    "were not checked because no audit key is configured (exchange_audit_key or "
                    f"{ENV_KEY_FILE}); this is not a verification of a keyed trail")
        return (f"UNKEYED TRAIL: {self.records} records linked with plain sha256, links consistent; anyone who can "
                "write the trail could have recomputed it. Configure an audit key (exchange_audit_key or "
                f"{ENV_KEY_FILE}) so new records are keyed")

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "status": self.status, "records": self.records, "keyed": self.keyed,
                "unkeyed": self.unkeyed, "unchecked": self.unchecked, "key_configured": self.key_configured,
                "problems": [p.as_json() for p in self.problems], "summary": self.summary()}


def check(entries: Iterable[tuple[int, str, bool]], key: bytes | None = None) -> Verification:
    """Verify ``entries`` (position, record text, ended with a newline), in trail order: each
    record's link (HMAC with ``key``, or sha256), its ``prev`` and ``seq`` continuity, and with a
    key that no plain record follows a keyed one and that some record is keyed. After a break the
    chain is re-anchored on the record found, so one tampered spot is reported where it is."""
    v = Verification(key_configured=bool(key))
    problems = v.problems
    prev_hash, prev_seq, prev_line = GENESIS, 0, 0
    first_line = None
    for number, text, ended in entries:
        if not text.strip():
            problems.append(Problem(number, None, "empty line: the trail was edited"))
            continue
        try:
            rec = json.loads(text)
        except ValueError:
            what = ("truncated record: the last line is cut short and has no newline" if not ended
                    else "not a JSON record: the line was edited or corrupted")
            problems.append(Problem(number, None, what))
            continue
        if not isinstance(rec, dict):
            problems.append(Problem(number, None, "not a JSON object: the line was edited"))
            continue
        v.records += 1
        first_line = first_line or number
        seq = rec.get("seq") if isinstance(rec.get("seq"), int) and not isinstance(rec.get("seq"), bool) else None
        mac = record_mac(rec)
        needed = (*BASE_KEYS, *(("mac",) if rec.get("v") != 1 else ()), *KIND_KEYS.get(rec.get("kind"), ()))
        missing = [k for k in needed if k not in rec]
        if rec.get("kind") not in KINDS:
            problems.append(Problem(number, seq, f"unknown kind {rec.get('kind')!r}"))
        elif missing:
            problems.append(Problem(number, seq, "missing " + ", ".join(missing)))
        stored = rec.get("hash")
        if not isinstance(stored, str) or not _HEX64.match(stored):
            problems.append(Problem(number, seq, "no valid hash"))
        elif mac not in MACS:
            problems.append(Problem(number, seq, f"unknown mac {rec.get('mac')!r}"))
        elif mac == MAC_HMAC:
            if key is None:
                v.unchecked += 1
            elif not hmac.compare_digest(link(rec, key), stored):
                v.keyed += 1
                problems.append(Problem(number, seq, "edited: the HMAC does not match the record's content "
                                                     "(changed, or recomputed without the audit key)"))
            else:
                v.keyed += 1
        else:
            v.unkeyed += 1
            if link(rec) != stored:
                problems.append(Problem(number, seq, "edited: the hash does not match the record's content"))
            elif key is not None and (v.keyed or v.unchecked):
                problems.append(Problem(number, seq, "linked with plain sha256 after keyed records: written or "
                                                     "recomputed without the audit key"))
        if rec.get("prev") != prev_hash:
            before = f"line {prev_line} (seq {prev_seq})" if prev_line else "the start of the trail"
            problems.append(Problem(number, seq, f"chain broken: prev does not match the hash of {before}; "
                                                 "a record was removed, inserted or reordered here"))
        if seq is None:
            problems.append(Problem(number, None, "no integer seq"))
        elif seq != prev_seq + 1:
            if seq > prev_seq + 1:
                what = f"seq jumps from {prev_seq} to {seq}: {seq - prev_seq - 1} record(s) removed"
            else:
                what = f"seq {seq} after {prev_seq}: a record was inserted, duplicated or reordered"
            problems.append(Problem(number, seq, what))
        if not ended:
            problems.append(Problem(number, seq, "the last line has no newline: the trail was cut or edited"))
        prev_hash = stored if isinstance(stored, str) else ""
        prev_seq = seq if seq is not None else prev_seq + 1
        prev_line = number
    if key is not None and v.records and not v.keyed and not v.unchecked:
        problems.append(Problem(first_line or 1, 1, "no record is keyed although an audit key is configured: the "
                                                    "trail was recomputed without the key (or the key was configured "
                                                    "just now and no run has written since)"))
    problems.sort(key=lambda p: p.line)
    return v


def first_problem(v: Verification) -> str:
    """The broken record for a refusal: ``line 42 (seq 42): edited: ...``."""
    return str(v.problems[0]) if v.problems else "no problem"


# --- the interface ---------------------------------------------------------------------------

class Trail:
    """One audit trail, whatever keeps it. ``where`` names it in messages (never a password)."""

    where = "audit trail"

    def append(self, records: Iterable[Mapping[str, Any]], now: dt.datetime | None = None) -> list[dict[str, Any]]:
        """Chain ``records`` after the last one and store them all or none; return them as written."""
        raise NotImplementedError

    def entries(self) -> Iterator[tuple[int, str, bool]]:
        """(position, record text, whole) in trail order. FileNotFoundError when there is no trail."""
        raise NotImplementedError

    def verify(self) -> Verification:
        return check(self.entries(), self.key)

    def records(self) -> list[dict[str, Any]]:
        """Every parseable record in trail order (unreadable ones are for verify to report)."""
        out = []
        try:
            for _number, text, _ended in self.entries():
                try:
                    rec = json.loads(text)
                except ValueError:
                    continue
                if isinstance(rec, dict) and rec.get("kind") in KINDS:
                    out.append(rec)
        except FileNotFoundError:
            return []
        return out

    def export(self, dest: str) -> int:
        """Write the trail as JSON Lines to ``dest`` (atomically, 0600); the number of records.
        The export verifies with the same verify (and key) as the trail it came from."""
        lines = [text + "\n" for _number, text, _ended in self.entries()]
        write_text_atomic(dest, "".join(lines), mode=0o600)
        return len(lines)

    def close(self) -> None:
        """Release what the backend holds (a database connection)."""

    key: bytes | None = None


# --- the file backend -------------------------------------------------------------------------

def _tail_record(fh) -> tuple[dict[str, Any] | None, bool]:
    """The last parseable record of an open file, and whether the file ends mid-line."""
    fh.seek(0, os.SEEK_END)
    end = fh.tell()
    if end == 0:
        return None, False
    fh.seek(end - 1)
    partial = fh.read(1) != b"\n"
    chunk, pos, buf = 65536, end, b""
    while pos > 0:
        step = min(chunk, pos)
        pos -= step
        fh.seek(pos)
        buf = fh.read(step) + buf
        lines = buf.split(b"\n")
        # lines[0] may be incomplete unless we reached the start of the file
        candidates = lines if pos == 0 else lines[1:]
        if partial and candidates:
            candidates = candidates[:-1]
        for raw in reversed(candidates):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except ValueError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("seq"), int) and isinstance(rec.get("hash"), str):
                return rec, partial
    return None, partial


def _open_for_append(path: str) -> int:
    folder = os.path.dirname(os.path.abspath(path))
    try:
        if not os.path.isdir(folder):
            os.makedirs(folder, mode=0o700, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    except OSError as e:
        raise AuditError(f"{path}: cannot open the audit trail for writing ({e.strerror}); "
                         "make its folder writable or point EXCHPATCH_AUDIT_FILE elsewhere") from e


def append(path: str, records: Iterable[Mapping[str, Any]], now: dt.datetime | None = None,
           key: bytes | None = None) -> list[dict[str, Any]]:
    """Chain and append ``records`` to the file under an exclusive flock, fsync, and return them as
    written (see :func:`chain`). A file ending mid-line (a tampered or torn tail) gets a newline
    first, so the torn line stays visible to verify and the chain continues from the last whole
    record."""
    fd = _open_for_append(path)
    with os.fdopen(fd, "r+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            last, partial = _tail_record(fh)
            out = chain(records, last["seq"] if last else 0, last["hash"] if last else GENESIS, key, now)
            lines = (["\n"] if partial else []) + [canonical(r) + "\n" for r in out]
            if out or partial:
                os.write(fh.fileno(), "".join(lines).encode("utf-8"))
                os.fsync(fh.fileno())
            return out
        except OSError as e:
            raise AuditError(f"{path}: cannot append to the audit trail ({e.strerror}); "
                             "check the disk and the file's permissions") from e
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def iter_lines(path: str) -> Iterator[tuple[int, str, bool]]:
    """(line number, text without newline, ended with a newline) for each line of the file."""
    try:
        with open(path, encoding="utf-8", errors="replace", newline="\n") as fh:
            for number, line in enumerate(fh, 1):
                yield number, line.rstrip("\n"), line.endswith("\n")
    except FileNotFoundError:
        raise
    except OSError as e:
        raise AuditError(f"{path}: cannot read the audit trail ({e.strerror}); check its permissions") from e


def read_records(path: str) -> list[dict[str, Any]]:
    """Every parseable record of the file, in file order. A missing file is an empty trail."""
    return FileTrail(path).records()


def verify(path: str, key: bytes | None = None) -> tuple[int, list[Problem]]:
    """The number of records and the problems of the file trail (see :func:`check`). Raises
    FileNotFoundError when there is no file."""
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    v = check(iter_lines(path), key)
    return v.records, list(v.problems)


class FileTrail(Trail):
    """The JSON Lines file trail."""

    def __init__(self, path: str, key: bytes | None = None) -> None:
        self.path = path
        self.where = path
        self.key = key

    def append(self, records: Iterable[Mapping[str, Any]], now: dt.datetime | None = None) -> list[dict[str, Any]]:
        return append(self.path, records, now, self.key)

    def entries(self) -> Iterator[tuple[int, str, bool]]:
        if not os.path.exists(self.path):
            raise FileNotFoundError(self.path)
        return iter_lines(self.path)


def open_trail(path: str | None = None, backend: str | None = None, dsn: str | None = None,
               key: bytes | None = None, environ: Mapping[str, str] | None = None, connect_timeout: int = 10,
               file_path: str | None = None) -> Trail:
    """The trail to use: the file ``path`` when given; else the state store's (``backend``/``dsn``,
    else ``EXCHPATCH_STATE_STORE``/``_DSN``): the PostgreSQL table, or the file ``file_path``
    (default :func:`default_path`)."""
    if path:
        return FileTrail(os.path.expanduser(path), key)
    # pylint: disable-next=import-outside-toplevel
    from ansible_collections.exchangeops.patching.plugins.module_utils import _store
    try:
        conf = _store.settings(backend, dsn, environ, connect_timeout)
    except _store.StoreError as e:
        raise AuditError(str(e)) from e
    if conf.is_postgresql:
        # pylint: disable-next=import-outside-toplevel
        from ansible_collections.exchangeops.patching.plugins.module_utils._audit_pg import PgTrail
        return PgTrail(conf, key)
    return FileTrail(os.path.expanduser(file_path or default_path(environ)), key)


def write_text_atomic(path: str, text: str, mode: int = 0o644) -> None:
    """Write a whole file or nothing (temporary file in the same folder, fsync, rename), so a
    textfile collector never reads half a file."""
    folder = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
