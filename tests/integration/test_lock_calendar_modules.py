"""deploy_lock and freeze_window run for real through `ansible localhost -m ...` with the repo's ansible.cfg.

Each call is one ad-hoc task; its result is read from the minimal callback's `host | STATUS => {json}`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SCHEDULE = str(REPO / "testbed" / "freeze-windows.yml")
ENV = {
    **os.environ,
    "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
    "ANSIBLE_NOCOLOR": "1",
    "ANSIBLE_DEPRECATION_WARNINGS": "false",
    "ANSIBLE_STDOUT_CALLBACK": "minimal",
}


def run_module(module: str, args: dict, *flags: str) -> tuple[str, dict]:
    """Run one module on localhost; (status, result) with status SUCCESS, CHANGED or FAILED!."""
    proc = subprocess.run(
        [str(BIN / "ansible"), "localhost", "-m", f"exchangeops.patching.{module}", "-a", json.dumps(args), *flags],
        capture_output=True, text=True, cwd=REPO, env=ENV, timeout=120, check=False,
    )
    out = proc.stdout
    head, sep, body = out.partition(" => ")
    assert sep, f"no result in the output (rc {proc.returncode}):\n{out}\n{proc.stderr}"
    status = head.rsplit("|", 1)[1].strip()
    result, _end = json.JSONDecoder().raw_decode(body.strip())
    assert (proc.returncode == 0) == (status != "FAILED!"), out + proc.stderr
    return status, result


def lock_args(directory: Path, **kw) -> dict:
    return {"dir": str(directory), "scopes": ["shard-0"], "owner": "alice@ops-laptop", "run_id": "20261124T0915Z-ab12",
            "patch": "matching-engine-1.4.3", **kw}


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("*.lock"))} if directory.exists() else {}


def utc(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).replace(tzinfo=None, microsecond=0).isoformat() + "Z"


# --- deploy_lock -----------------------------------------------------------------------------------------------


def test_lock_is_taken_kept_idempotent_and_refused_to_another_run(tmp_path):
    locks = tmp_path / "locks"
    status, res = run_module("deploy_lock", lock_args(locks, scopes=["shard-0", "chain-BTC"]))
    assert status == "CHANGED"
    assert res["acquired"] == ["shard-0", "chain-BTC"]
    record = json.loads((locks / "shard-0.lock").read_text())
    assert record["owner"] == "alice@ops-laptop"
    assert record["host"] == os.uname().nodename
    assert isinstance(record["pid"], int)

    status, res = run_module("deploy_lock", lock_args(locks))  # the same run again, e.g. after a controller restart
    assert status == "SUCCESS"
    assert res["already_held"] == ["shard-0"]

    before = files(locks)
    status, res = run_module("deploy_lock", lock_args(locks, owner="bob@ops-desktop", run_id="run-B", patch=None))
    assert status == "FAILED!"
    assert res["msg"].startswith(
        f"shard-0 is locked by alice@ops-laptop (run 20261124T0915Z-ab12, patch matching-engine-1.4.3, on "
        f"{record['host']} pid {record['pid']}) until {record['expires_at']}; wait for that rollout to finish, or if "
        f"that rollout is dead remove {locks / 'shard-0.lock'} after checking its runner"
    ), res["msg"]
    assert res["acquired"] == []
    assert res["held_by_others"][0]["run_id"] == "20261124T0915Z-ab12"
    assert files(locks) == before

    status, res = run_module("deploy_lock", lock_args(locks, scopes=["shard-0", "chain-BTC"], run_id="run-B",
                                                      state="released"))
    assert status == "SUCCESS"
    assert [n["scope"] for n in res["not_owned"]] == ["shard-0", "chain-BTC"]
    assert files(locks) == before

    status, res = run_module("deploy_lock", lock_args(locks, scopes=["shard-0", "chain-BTC"], state="released"))
    assert status == "CHANGED"
    assert res["released"] == ["shard-0", "chain-BTC"]
    assert files(locks) == {}


def write_stale_lock(locks: Path) -> None:
    locks.mkdir(mode=0o700)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=3)
    (locks / "shard-0.lock").write_text(json.dumps({
        "scope": "shard-0", "owner": "bob@ops-desktop", "run_id": "run-dead", "patch": "matching-engine-1.4.3",
        "acquired_at": utc(past), "expires_at": utc(past + dt.timedelta(hours=1)), "host": "ops-desktop", "pid": 99,
    }))


def test_stale_lock_is_taken_over_and_reported(tmp_path):
    locks = tmp_path / "locks"
    write_stale_lock(locks)
    expired_at = json.loads((locks / "shard-0.lock").read_text())["expires_at"]
    status, res = run_module("deploy_lock", lock_args(locks, takeover_stale=False))
    assert status == "FAILED!"
    assert "takeover_stale is false" in res["msg"]

    status, res = run_module("deploy_lock", lock_args(locks))
    assert status == "CHANGED"
    assert res["stale_taken_over"] == [{"scope": "shard-0", "previous_owner": "bob@ops-desktop",
                                        "previous_run_id": "run-dead", "previous_patch": "matching-engine-1.4.3",
                                        "previous_token": 0, "expired_at": expired_at}]  # written before tokens
    assert json.loads((locks / "shard-0.lock").read_text())["run_id"] == "20261124T0915Z-ab12"


def test_check_mode_touches_nothing(tmp_path):
    locks = tmp_path / "locks"
    status, res = run_module("deploy_lock", lock_args(locks), "--check")
    assert status == "CHANGED"
    assert res["acquired"] == ["shard-0"]
    assert not locks.exists()

    write_stale_lock(locks)
    before = files(locks)
    status, res = run_module("deploy_lock", lock_args(locks), "--check")
    assert status == "CHANGED"
    assert res["stale_taken_over"][0]["previous_run_id"] == "run-dead"
    status, res = run_module("deploy_lock", lock_args(locks, run_id="run-dead", state="released"), "--check")
    assert res["released"] == ["shard-0"]
    assert files(locks) == before
    assert sorted(p.name for p in locks.iterdir()) == ["shard-0.lock"]


def test_corrupt_lock_fails_naming_the_file_and_stays(tmp_path):
    locks = tmp_path / "locks"
    locks.mkdir()
    (locks / "shard-0.lock").write_text("{not json")
    status, res = run_module("deploy_lock", lock_args(locks))
    assert status == "FAILED!"
    assert res["msg"].startswith(f"{locks / 'shard-0.lock'}: lock file is unreadable (not valid JSON")
    assert (locks / "shard-0.lock").read_text() == "{not json"


# --- freeze_window ---------------------------------------------------------------------------------------------


def window_args(**kw) -> dict:
    return {"schedule": SCHEDULE, "start": "2026-11-24T15:30:00Z", "duration": 42 * 60, "operator": "alice@ops-laptop",
            **kw}


def test_free_slot_is_allowed():
    status, res = run_module("freeze_window", window_args(start="2026-11-24T10:00:00Z"))
    assert status == "SUCCESS"
    assert res["allowed"] is True
    assert res["overlaps"] == []
    assert res["emergency_override"] is None


def test_overlap_is_refused_with_the_next_free_start():
    status, res = run_module("freeze_window", window_args())
    assert status == "FAILED!"
    assert res["msg"] == (
        "the rollout (15:30–16:12 UTC, estimated 42 min) overlaps 'perpetual funding' 15:45–16:05 UTC; start at or "
        "after 16:05 UTC, or use an emergency override with a reason and a second approver"
    )
    assert res["allowed"] is False
    assert res["next_start"] == "2026-11-24T16:05:00Z"
    assert res["overlaps"][0]["name"] == "perpetual funding"


def test_emergency_override_is_granted_and_recorded():
    status, res = run_module("freeze_window", window_args(emergency=True, reason="KEV-listed RCE in the gateway",
                                                          approver="bob@ops-desktop"), "--check")
    assert status == "SUCCESS"
    assert res["allowed"] is True
    override = res["emergency_override"]
    assert {k: override[k] for k in ("reason", "approver", "operator")} == {
        "reason": "KEV-listed RCE in the gateway", "approver": "bob@ops-desktop", "operator": "alice@ops-laptop"}
    assert [o["at"] for o in override["overlaps"]] == ["2026-11-24T16:00:00Z"]
    assert override["granted_at"].endswith("Z")


@pytest.mark.parametrize("approver", [None, "ALICE@ops-laptop"])
def test_emergency_override_without_a_second_approver_is_refused(approver):
    args = window_args(emergency=True, reason="KEV-listed RCE")
    if approver:
        args["approver"] = approver
    status, res = run_module("freeze_window", args)
    assert status == "FAILED!"
    assert res["msg"].startswith("an emergency override needs a second approver different from the operator")
    assert res["allowed"] is False
    assert res["emergency_override"] is None


def test_bad_schedule_names_file_window_and_fix(tmp_path):
    schedule = tmp_path / "freeze.yml"
    schedule.write_text("windows:\n  - name: funding\n    recurring: daily\n    at: ['16:00']\n    before: -15m\n")
    status, res = run_module("freeze_window", window_args(schedule=str(schedule)))
    assert status == "FAILED!"
    assert res["msg"].startswith(f"{schedule}: window 'funding': before: '-15m' is negative; write a duration")
    assert res["bad_input"] is True
