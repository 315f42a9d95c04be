"""The lease part of _lock on the file store: fencing tokens, check and renew (no PostgreSQL needed here;
tests/integration/test_lease.py runs both stores for real)."""

from __future__ import annotations

import datetime as dt

import pytest
from ansible_collections.exchangeops.patching.plugins.module_utils import _lock, _store
from ansible_collections.exchangeops.patching.plugins.module_utils._lock import LockConflictError, LockError

NOW = dt.datetime(2026, 11, 24, 9, 15, tzinfo=dt.UTC)


def take(directory, scopes, run_id="run-A", now=NOW, **kw):
    return _lock.acquire(str(directory), scopes, "alice@ops-laptop", run_id, now, host="ops-laptop", pid=4242, **kw)


def test_default_ttl_is_short_and_recorded(tmp_path):
    res = take(tmp_path, ["shard-0"])
    assert res.locks[0]["ttl"] == _lock.DEFAULT_TTL == 60
    assert res.locks[0]["expires_at"] == "2026-11-24T09:16:00Z"


def test_tokens_only_grow_and_a_held_lease_keeps_its_token(tmp_path):
    assert take(tmp_path, ["shard-0"]).token == 1
    assert take(tmp_path, ["shard-0"]).token == 1  # held: kept
    assert take(tmp_path, ["shard-0", "shard-1"]).token == 2  # a new scope: one new token for all
    assert {take(tmp_path, ["shard-0", "shard-1"]).token} == {2}
    later = NOW + dt.timedelta(minutes=5)
    res = take(tmp_path, ["shard-0"], run_id="run-B", now=later)  # takeover of a lapsed lease
    assert res.token == 3 and res.stale_taken_over[0]["previous_token"] == 2


def test_a_lost_counter_never_makes_a_token_go_back(tmp_path):
    take(tmp_path, ["shard-0"])
    take(tmp_path, ["shard-0", "shard-1"])
    (tmp_path / _lock.FENCE).unlink()
    res = take(tmp_path, ["shard-0"], run_id="run-B", now=NOW + dt.timedelta(minutes=5))
    assert res.token == 3


def test_a_garbled_counter_is_refused_with_the_fix(tmp_path):
    (tmp_path / _lock.FENCE).write_text("seven\n")
    with pytest.raises(LockError, match=r"fencing token counter holds 'seven', not a number; write into it"):
        take(tmp_path, ["shard-0"])


def test_check_passes_only_for_this_run_and_token_unexpired(tmp_path):
    token = take(tmp_path, ["shard-0", "chain-BTC"]).token
    assert _lock.check(str(tmp_path), ["shard-0", "chain-BTC"], "run-A", token, NOW).token == token
    with pytest.raises(LockConflictError, match=r"with token 1, not 7: the lease was lost"):
        _lock.check(str(tmp_path), ["shard-0"], "run-A", 7, NOW)
    expired = r"expired at 2026-11-24T09:16:00Z \(controller time now 2026-11-24T09:16:00Z\)"
    with pytest.raises(LockConflictError, match=expired) as info:
        _lock.check(str(tmp_path), ["shard-0"], "run-A", token, NOW + dt.timedelta(seconds=60))
    assert info.value.result.lost[0]["reason"] == "expired"
    with pytest.raises(LockConflictError, match=r"shard-9 has no lease"):
        _lock.check(str(tmp_path), ["shard-9"], "run-A", token, NOW)


def test_renew_moves_the_expiry_but_never_revives_a_lapsed_lease(tmp_path):
    token = take(tmp_path, ["shard-0"]).token
    res = _lock.renew(str(tmp_path), ["shard-0"], "run-A", token, NOW + dt.timedelta(seconds=50))
    assert res.locks[0]["expires_at"] == "2026-11-24T09:16:50Z"
    with pytest.raises(LockConflictError, match="expired at 2026-11-24T09:16:50Z"):
        _lock.renew(str(tmp_path), ["shard-0"], "run-A", token, NOW + dt.timedelta(seconds=200))
    assert _lock.read_lock(str(tmp_path), "shard-0").expires_at == "2026-11-24T09:16:50Z"


def test_file_leases_summarise_the_lease(tmp_path):
    leases = _lock.open_leases(_store.settings("file"), str(tmp_path))
    res = leases.acquire(["shard-0", "chain-BTC"], "alice", "run-A", patch="p-1", host="ops-laptop", pid=1)
    assert res.to_dict()["lease"] == {"store": f"file {tmp_path}", "dir": str(tmp_path),
                                      "scopes": ["shard-0", "chain-BTC"], "run_id": "run-A", "owner": "alice",
                                      "patch": "p-1", "token": 1, "ttl": 60,
                                      "expires_at": res.locks[0]["expires_at"]}
    assert "lease" not in leases.release(["shard-0", "chain-BTC"], "run-A").to_dict()


def test_lock_files_from_before_tokens_still_read(tmp_path):
    take(tmp_path, ["shard-0"])
    path = tmp_path / "shard-0.lock"
    path.write_text(path.read_text().replace('"token": 1,', "").replace('"ttl": 60', '"pid2": 0'))
    record = _lock.read_lock(str(tmp_path), "shard-0")
    assert (record.token, record.ttl) == (0, 0)
