# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import os
import pickle
import stat
from pathlib import Path

import pytest
from ansible_collections.exchangeops.patching.plugins.module_utils import _lock
from ansible_collections.exchangeops.patching.plugins.module_utils._lock import (
    LockConflictError,
    LockCorruptError,
    LockInputError,
    LockRecord,
    acquire,
    create_lock,
    read_lock,
    refresh,
    release,
)

NOW = dt.datetime(2026, 11, 24, 9, 15, tzinfo=dt.UTC)
LATER = NOW + dt.timedelta(hours=2)  # after the one-hour ttl these tests take


def take(directory, scopes, run_id="run-A", owner="alice@ops-laptop", now=NOW, **kw):
    kw.setdefault("patch", "matching-engine-1.4.3")
    kw.setdefault("ttl", 3600)  # these tests reason in hours; the 60 s default and tokens: test_lock_lease.py
    return acquire(str(directory), scopes, owner, run_id, now, host="ops-laptop", pid=4242, **kw)


def snapshot(directory: Path) -> dict[str, bytes]:
    if not directory.exists():
        return {}
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.name != _lock.GUARD}


def lock_json(directory: Path, scope: str) -> dict:
    return json.loads((directory / f"{scope}.lock").read_text())


# --- acquire ---------------------------------------------------------------------------------------------------


def test_acquire_creates_one_record_per_scope_in_a_private_folder(tmp_path):
    locks = tmp_path / "locks"
    res = take(locks, ["shard-0", "chain-BTC"], ttl=900)
    assert res.changed
    assert res.acquired == ["shard-0", "chain-BTC"]
    assert stat.S_IMODE(locks.stat().st_mode) == 0o700
    record = lock_json(locks, "shard-0")
    assert record == {"scope": "shard-0", "owner": "alice@ops-laptop", "run_id": "run-A",
                      "patch": "matching-engine-1.4.3", "acquired_at": "2026-11-24T09:15:00Z",
                      "expires_at": "2026-11-24T09:30:00Z", "host": "ops-laptop", "pid": 4242, "token": 1,
                      "ttl": 900}
    assert stat.S_IMODE((locks / "shard-0.lock").stat().st_mode) == 0o600
    assert res.locks == [record, {**record, "scope": "chain-BTC"}]
    assert sorted(p.name for p in locks.iterdir()) == [".fence", ".guard", "chain-BTC.lock", "shard-0.lock"]


def test_same_run_reacquiring_is_idempotent(tmp_path):
    take(tmp_path, ["shard-0"])
    before = snapshot(tmp_path)
    res = take(tmp_path, ["shard-0"], now=NOW + dt.timedelta(minutes=10))
    assert not res.changed
    assert res.acquired == ["shard-0"]
    assert res.already_held == ["shard-0"]
    assert res.locks[0]["acquired_at"] == "2026-11-24T09:15:00Z"
    assert snapshot(tmp_path) == before


def test_same_run_adds_a_scope_and_keeps_the_one_it_held(tmp_path):
    take(tmp_path, ["shard-0"])
    res = take(tmp_path, ["shard-0", "shard-1"], now=NOW + dt.timedelta(minutes=10))
    assert res.changed
    assert res.already_held == ["shard-0"]
    assert [rec["acquired_at"] for rec in res.locks] == ["2026-11-24T09:15:00Z", "2026-11-24T09:25:00Z"]


def test_same_run_renews_its_own_expired_lock(tmp_path):
    take(tmp_path, ["shard-0"])
    res = take(tmp_path, ["shard-0"], now=LATER)
    assert res.changed
    assert res.refreshed == ["shard-0"]
    assert res.stale_taken_over == []
    assert lock_json(tmp_path, "shard-0")["expires_at"] == "2026-11-24T12:15:00Z"


def test_held_lock_refuses_another_run_with_an_actionable_message(tmp_path):
    take(tmp_path, ["shard-0"], run_id="20261124T0915Z-ab12")
    before = snapshot(tmp_path)
    with pytest.raises(LockConflictError) as info:
        take(tmp_path, ["shard-0"], run_id="run-B", owner="bob@ops-desktop", now=NOW + dt.timedelta(minutes=5))
    path = tmp_path / "shard-0.lock"
    assert str(info.value) == (
        "shard-0 is locked by alice@ops-laptop (run 20261124T0915Z-ab12, patch matching-engine-1.4.3, on ops-laptop "
        "pid 4242) until 2026-11-24T10:15:00Z; wait for that rollout to finish, or if that rollout is dead remove "
        f"{path} after checking its runner (AWX job or ansible process pid 4242 on ops-laptop)"
    )
    result = info.value.result
    assert result.acquired == []
    assert result.held_by_others[0]["owner"] == "alice@ops-laptop"
    assert result.held_by_others[0]["path"] == str(path)
    assert result.held_by_others[0]["expired"] is False
    assert snapshot(tmp_path) == before


def test_acquire_is_all_or_nothing(tmp_path):
    take(tmp_path, ["chain-BTC"], run_id="run-A", patch=None)
    with pytest.raises(LockConflictError) as info:
        take(tmp_path, ["shard-0", "chain-BTC", "chain-ETH"], run_id="run-B", owner="bob")
    assert str(info.value).startswith("chain-BTC is locked by alice@ops-laptop (run run-A, no patch recorded")
    assert not (tmp_path / "shard-0.lock").exists()
    assert not (tmp_path / "chain-ETH.lock").exists()
    assert lock_json(tmp_path, "chain-BTC")["run_id"] == "run-A"


def test_every_conflict_is_named(tmp_path):
    take(tmp_path, ["shard-0"], run_id="run-A")
    take(tmp_path, ["shard-1"], run_id="run-C", owner="carol")
    with pytest.raises(LockConflictError) as info:
        take(tmp_path, ["shard-0", "shard-1", "shard-2"], run_id="run-B", owner="bob")
    msg = str(info.value)
    assert msg.startswith("shard-0 is locked by alice@ops-laptop")
    assert "; and shard-1 is locked by carol (run run-C" in msg
    assert msg.endswith("). None of the 3 scopes was locked (all or none)")
    assert [h["scope"] for h in info.value.result.held_by_others] == ["shard-0", "shard-1"]


def test_stale_lock_of_another_run_is_taken_over_and_reported(tmp_path):
    take(tmp_path, ["shard-0"], run_id="run-dead", owner="bob@ops-desktop")
    take(tmp_path, ["shard-1"], run_id="run-dead", owner="bob@ops-desktop", now=LATER)  # still valid at LATER
    with pytest.raises(LockConflictError):
        take(tmp_path, ["shard-0", "shard-1"], now=LATER)
    assert lock_json(tmp_path, "shard-0")["run_id"] == "run-dead"  # nothing taken over when refused
    res = take(tmp_path, ["shard-0", "shard-2"], now=LATER)
    assert res.changed
    assert res.stale_taken_over == [{"scope": "shard-0", "previous_owner": "bob@ops-desktop",
                                     "previous_run_id": "run-dead", "previous_patch": "matching-engine-1.4.3",
                                     "previous_token": 1, "expired_at": "2026-11-24T10:15:00Z"}]
    assert lock_json(tmp_path, "shard-0")["run_id"] == "run-A"
    assert lock_json(tmp_path, "shard-0")["expires_at"] == "2026-11-24T12:15:00Z"


def test_stale_lock_without_takeover_is_refused(tmp_path):
    take(tmp_path, ["shard-0"], run_id="run-dead", owner="bob")
    with pytest.raises(LockConflictError, match=r"whose lock expired at 2026-11-24T10:15:00Z, and takeover_stale is "
                                                r"false; check that rollout's runner") as info:
        take(tmp_path, ["shard-0"], now=LATER, takeover_stale=False)
    assert info.value.result.held_by_others[0]["expired"] is True
    assert lock_json(tmp_path, "shard-0")["run_id"] == "run-dead"


def test_lock_is_expired_exactly_at_expires_at(tmp_path):
    take(tmp_path, ["shard-0"], run_id="run-old", ttl=60)
    with pytest.raises(LockConflictError):
        take(tmp_path, ["shard-0"], now=NOW + dt.timedelta(seconds=59))
    assert take(tmp_path, ["shard-0"], now=NOW + dt.timedelta(seconds=60)).stale_taken_over


def test_leftover_temp_files_from_a_crash_are_ignored(tmp_path):
    (tmp_path / ".shard-0.abc123.tmp").write_text('{"half": ')
    res = take(tmp_path, ["shard-0"])
    assert res.acquired == ["shard-0"]


def test_create_lock_never_overwrites(tmp_path):
    record = LockRecord("shard-0", "alice", "run-A", None, "2026-11-24T09:15:00Z", "2026-11-24T10:15:00Z", "h", 1)
    assert create_lock(str(tmp_path), record)
    other = LockRecord(**{**record.to_dict(), "run_id": "run-B"})
    assert not create_lock(str(tmp_path), other)
    assert read_lock(str(tmp_path), "shard-0") == record
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-0.lock"]


def test_a_create_lost_to_a_process_ignoring_the_guard_undoes_the_whole_acquire(tmp_path, monkeypatch):
    take(tmp_path, ["shard-0"], run_id="run-dead", owner="bob")
    stale = (tmp_path / "shard-0.lock").read_bytes()
    real_create = _lock.create_lock

    def intruder_first(directory, record):
        if record.scope == "chain-BTC":  # another writer links its lock between our inspection and our create
            real_create(directory, LockRecord(**{**record.to_dict(), "owner": "carol", "run_id": "run-C"}))
        return real_create(directory, record)

    monkeypatch.setattr(_lock, "create_lock", intruder_first)
    with pytest.raises(LockConflictError, match=r"^chain-BTC is locked by carol \(run run-C") as info:
        take(tmp_path, ["shard-1", "shard-0", "chain-BTC"], now=LATER)
    assert info.value.result.stale_taken_over == []
    assert not (tmp_path / "shard-1.lock").exists()  # created by this call, removed again
    assert read_lock(str(tmp_path), "shard-0") == LockRecord(**json.loads(stale))  # the taken-over record is back


# --- check mode ------------------------------------------------------------------------------------------------


def test_check_mode_touches_nothing(tmp_path):
    locks = tmp_path / "locks"
    res = take(locks, ["shard-0"], check_mode=True)
    assert res.changed
    assert res.acquired == ["shard-0"]
    assert not locks.exists()

    take(locks, ["shard-0"], run_id="run-dead", owner="bob")
    before = snapshot(locks)
    res = take(locks, ["shard-0"], now=LATER, check_mode=True)
    assert res.stale_taken_over[0]["previous_run_id"] == "run-dead"
    with pytest.raises(LockConflictError):
        take(locks, ["shard-0"], check_mode=True)  # still live: the check reports the refusal
    res = release(str(locks), ["shard-0"], "run-dead", check_mode=True)
    assert res.released == ["shard-0"]
    res = refresh(str(locks), ["shard-0"], "run-dead", LATER, check_mode=True)
    assert res.refreshed == ["shard-0"]
    assert snapshot(locks) == before


# --- release and refresh ---------------------------------------------------------------------------------------


def test_release_removes_only_this_runs_locks(tmp_path):
    take(tmp_path, ["shard-0", "chain-BTC"])
    take(tmp_path, ["shard-1"], run_id="run-B", owner="bob")
    res = release(str(tmp_path), ["shard-0", "shard-1", "shard-9"], "run-A")
    assert res.changed
    assert res.released == ["shard-0"]
    assert res.not_locked == ["shard-9"]
    assert [(n["scope"], n["owner"], n["run_id"]) for n in res.not_owned] == [("shard-1", "bob", "run-B")]
    assert res.not_owned[0]["path"] == str(tmp_path / "shard-1.lock")
    assert not (tmp_path / "shard-0.lock").exists()
    assert (tmp_path / "shard-1.lock").exists()
    assert (tmp_path / "chain-BTC.lock").exists()
    again = release(str(tmp_path), ["shard-0"], "run-A")
    assert not again.changed
    assert again.not_locked == ["shard-0"]


def test_release_of_a_missing_folder_changes_nothing(tmp_path):
    res = release(str(tmp_path / "nope"), ["shard-0"], "run-A")
    assert not res.changed
    assert res.not_locked == ["shard-0"]
    assert not (tmp_path / "nope").exists()


def test_refresh_extends_this_runs_locks(tmp_path):
    take(tmp_path, ["shard-0", "chain-BTC"])
    res = refresh(str(tmp_path), ["shard-0", "chain-BTC"], "run-A", NOW + dt.timedelta(minutes=30), ttl=3600)
    assert res.changed
    assert res.refreshed == ["shard-0", "chain-BTC"]
    assert lock_json(tmp_path, "chain-BTC")["expires_at"] == "2026-11-24T10:45:00Z"
    assert lock_json(tmp_path, "chain-BTC")["acquired_at"] == "2026-11-24T09:15:00Z"
    same = refresh(str(tmp_path), ["shard-0"], "run-A", NOW + dt.timedelta(minutes=30), ttl=3600)
    assert not same.changed


def test_refresh_fails_when_the_lock_is_gone_or_taken_over(tmp_path):
    take(tmp_path, ["shard-0"])
    take(tmp_path, ["shard-0"], run_id="run-B", owner="bob", now=LATER)  # took over the expired lock
    before = snapshot(tmp_path)
    with pytest.raises(LockConflictError, match=r"shard-0 is now locked by bob \(run run-B.*not by run run-A"):
        refresh(str(tmp_path), ["shard-0"], "run-A", LATER)
    with pytest.raises(LockConflictError, match=r"^shard-5 is not locked \(no .*shard-5.lock\).*None of the 2 scopes"):
        refresh(str(tmp_path), ["shard-0", "shard-5"], "run-B", LATER)
    assert snapshot(tmp_path) == before  # all-or-nothing: shard-0 of run-B was not extended either


# --- unreadable locks ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("content", "problem"), [
    (b"", "empty file"),
    (b'{"scope": "shard-0", "owner": ', "not valid JSON"),
    (b"[1, 2]", "expected a JSON object, found list"),
    (b'{"scope": "shard-0"}', "missing owner, run_id, patch, acquired_at, expires_at, host, pid"),
    (json.dumps({"scope": "shard-9", "owner": "a", "run_id": "r", "patch": None, "acquired_at": "2026-11-24T09:00:00Z",
                 "expires_at": "2026-11-24T10:00:00Z", "host": "h", "pid": 1}).encode(),
     "it records scope 'shard-9' but is the lock file of 'shard-0'"),
    (json.dumps({"scope": "shard-0", "owner": "a", "run_id": "r", "patch": None, "acquired_at": "2026-11-24T09:00:00Z",
                 "expires_at": "soon", "host": "h", "pid": 1}).encode(), "expires_at 'soon' is not an ISO 8601"),
    (json.dumps({"scope": "shard-0", "owner": "a", "run_id": "r", "patch": None, "acquired_at": "2026-11-24T09:00:00Z",
                 "expires_at": "2026-11-24T10:00:00Z", "host": "h", "pid": "1"}).encode(),
     "pid is '1', not an integer"),
    (b"\xff\xfe\x00", "not valid JSON"),
])
def test_corrupt_lock_is_held_and_never_deleted(tmp_path, content, problem):
    path = tmp_path / "shard-0.lock"
    path.write_bytes(content)
    with pytest.raises(LockCorruptError) as info:
        take(tmp_path, ["shard-1", "shard-0"], now=LATER)
    msg = str(info.value)
    assert msg.startswith(f"{path}: lock file is unreadable (")
    assert problem in msg
    assert f"once none is running remove {path} and retry" in msg
    assert path.read_bytes() == content
    assert not (tmp_path / "shard-1.lock").exists()  # all-or-nothing
    with pytest.raises(LockCorruptError):
        refresh(str(tmp_path), ["shard-0"], "run-A", NOW)
    assert path.read_bytes() == content


def test_release_frees_its_own_locks_and_reports_the_corrupt_one(tmp_path):
    take(tmp_path, ["shard-1"])
    (tmp_path / "shard-0.lock").write_text("garbage")
    with pytest.raises(LockCorruptError) as info:
        release(str(tmp_path), ["shard-0", "shard-1"], "run-A")
    assert info.value.result.released == ["shard-1"]
    assert not (tmp_path / "shard-1.lock").exists()
    assert (tmp_path / "shard-0.lock").read_text() == "garbage"


def test_two_corrupt_locks_are_both_named(tmp_path):
    (tmp_path / "shard-0.lock").write_text("x")
    (tmp_path / "shard-1.lock").write_text("")
    with pytest.raises(LockCorruptError) as info:
        take(tmp_path, ["shard-0", "shard-1"])
    assert str(tmp_path / "shard-0.lock") in str(info.value)
    assert str(tmp_path / "shard-1.lock") in str(info.value)


def test_lock_errors_pickle():
    err = LockCorruptError("/l/shard-0.lock", "empty file")
    assert str(pickle.loads(pickle.dumps(err))) == str(err)


# --- bad input -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["", "../etc/passwd", "shard 0", ".guard", "-x", "a/b", "shärd", None])
def test_bad_scope_names_are_refused(tmp_path, scope):
    with pytest.raises(LockInputError, match=r"scopes: .* is not a valid scope name; use letters, digits"):
        take(tmp_path, [scope])
    assert not (tmp_path / "etc").exists()


def test_bad_options_are_refused(tmp_path):
    with pytest.raises(LockInputError, match=r"scopes: give at least one scope"):
        take(tmp_path, [])
    with pytest.raises(LockInputError, match=r"ttl: must be a positive number of seconds \(got 0\)"):
        take(tmp_path, ["shard-0"], ttl=0)
    with pytest.raises(LockInputError, match=r"owner: must be a non-empty string"):
        take(tmp_path, ["shard-0"], owner=" ")
    with pytest.raises(LockInputError, match=r"run_id: must be a non-empty string"):
        take(tmp_path, ["shard-0"], run_id="")
    (tmp_path / "file").write_text("")
    with pytest.raises(LockInputError, match=r"dir: cannot create the lock folder .*/file/locks"):
        take(tmp_path / "file" / "locks", ["shard-0"])


def test_duplicate_scopes_are_locked_once(tmp_path):
    res = take(tmp_path, ["shard-0", "shard-0"])
    assert res.acquired == ["shard-0"]


# --- races between processes -----------------------------------------------------------------------------------

CTX = multiprocessing.get_context("fork")


def _race(directory: str, scopes: list[str], run_id: str, now: dt.datetime, barrier, results) -> None:
    barrier.wait()
    try:
        acquire(directory, scopes, f"owner-{run_id}", run_id, now, host="h", pid=os.getpid())
    except LockConflictError:
        results.put((run_id, "lost"))
    except Exception as e:  # noqa: BLE001  # reported to the parent, which fails the test
        results.put((run_id, f"error: {e!r}"))
    else:
        results.put((run_id, "won"))


def run_race(directory: Path, scope_lists: list[list[str]], now: dt.datetime = NOW) -> dict[str, str]:
    barrier = CTX.Barrier(len(scope_lists))
    results = CTX.Queue()
    procs = [CTX.Process(target=_race, args=(str(directory), scopes, f"run-{i}", now, barrier, results))
             for i, scopes in enumerate(scope_lists)]
    for proc in procs:
        proc.start()
    outcome = dict(results.get(timeout=60) for _proc in procs)
    for proc in procs:
        proc.join(timeout=60)
    return outcome


@pytest.mark.parametrize("attempt", range(3))
def test_processes_racing_for_a_scope_exactly_one_wins(tmp_path, attempt):
    outcome = run_race(tmp_path / "locks", [["shard-0"]] * 8)
    winners = [run for run, res in outcome.items() if res == "won"]
    assert len(winners) == 1, outcome
    assert sorted(outcome.values()) == ["lost"] * 7 + ["won"]
    assert lock_json(tmp_path / "locks", "shard-0")["run_id"] == winners[0]


def test_processes_racing_to_take_over_a_stale_lock_exactly_one_wins(tmp_path):
    take(tmp_path, ["shard-0"], run_id="run-dead")
    outcome = run_race(tmp_path, [["shard-0"]] * 8, now=LATER)
    winners = [run for run, res in outcome.items() if res == "won"]
    assert len(winners) == 1, outcome
    assert lock_json(tmp_path, "shard-0")["run_id"] == winners[0]


def test_processes_racing_for_overlapping_scope_sets_never_split_them(tmp_path):
    outcome = run_race(tmp_path, [["shard-0", "chain-BTC"], ["chain-BTC", "shard-0"], ["chain-BTC"], ["shard-0"]])
    assert all(res in ("won", "lost") for res in outcome.values()), outcome
    owners = {lock_json(tmp_path, s)["run_id"] for s in ("shard-0", "chain-BTC")}
    won = {run for run, res in outcome.items() if res == "won"}
    # whoever won holds whole scope sets: either one run holds both, or the two single-scope runs hold one each
    assert owners == won
    assert won in ({"run-0"}, {"run-1"}, {"run-2", "run-3"}), outcome
