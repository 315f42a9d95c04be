"""The AWX run contract, through real ansible-runner runs of the collection's playbooks (no fleet):
the operator and the run id come from AWX's own variables (values, never templates), every playbook
publishes its outcome with set_stats under ``exchpatch``, and what a survey sends is checked before
anything runs (issue 11)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import ansible_runner
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
EMPTY = REPO / "exchpatch" / "empty_inventory.yml"
FEEDS = [str(REPO / "tests" / "fixtures" / "feeds" / name) for name in ("nvd.json", "kev.json")]
FACTS = {"nodes": [{"name": "match-0a", "component": "matching-engine", "version": "1.4.2"}]}
# what the job inherits from the caller is the test's business: no driver run id, no operator
CLEARED = ("EXCHPATCH_RUN_ID", "EXCHPATCH_OPERATOR", "JOB_ID")


def run(tmp_path: Path, playbook: str, extravars: dict[str, Any], env: dict[str, str] | None = None,
        inventory: Path = EMPTY) -> tuple[str, dict[str, Any], list[dict[str, Any]], str]:
    """Run playbooks/<playbook> as AWX's runner does; (status, set_stats exchpatch, audit records, stdout)."""
    audit = tmp_path / "audit.jsonl"
    pdd = tmp_path / "runner"
    pdd.mkdir(exist_ok=True)
    envvars = {"ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "EXCHPATCH_AUDIT_FILE": str(audit),
               "ANSIBLE_NOCOLOR": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               **(env or {})}
    saved = {k: os.environ.pop(k) for k in CLEARED if k in os.environ}
    try:
        r = ansible_runner.run(private_data_dir=str(pdd), project_dir=str(REPO), playbook=f"playbooks/{playbook}",
                               inventory=str(inventory), extravars=extravars, envvars=envvars, quiet=True)
    finally:
        os.environ.update(saved)
    stats = {}
    for ev in r.events:
        if ev.get("event") == "playbook_on_stats":
            stats = (ev.get("event_data") or {}).get("artifact_data", {}).get("exchpatch", {})
    records = [json.loads(line) for line in audit.read_text().splitlines()] if audit.exists() else []
    out = r.stdout.read()
    shutil.rmtree(pdd, ignore_errors=True)
    return r.status, stats, records, out


def plan_vars(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    facts = tmp_path / "facts.json"
    facts.write_text(json.dumps(FACTS))
    return {"plan_feeds": FEEDS, "plan_catalog": str(REPO / "patches"), "plan_facts_file": str(facts),
            "plan_now": "2026-11-24T00:00:00Z", "plan_dest": str(tmp_path / "plan.json"), **extra}


def opened(records: list[dict[str, Any]]) -> dict[str, Any]:
    return next(r for r in records if r["kind"] == "change_opened")


def test_awx_variables_name_the_operator_and_the_run_in_stats_and_audit_trail(tmp_path):
    # the extra var the docs used to recommend: a template, which the trail once recorded literally
    status, stats, records, out = run(tmp_path, "plan.yml", plan_vars(
        tmp_path, awx_user_name="alice", awx_job_id=4242, awx_workflow_job_id=77,
        preflight_operator="{{ awx_user_name }}"))
    assert status == "successful", out[-3000:]
    assert stats["outcome"] == "succeeded" and stats["check"] is False, stats
    assert (stats["operator"], stats["run_id"], stats["awx_job_id"], stats["awx_workflow_job_id"]) == (
        "alice", "awx-job-4242", "4242", "77"), stats
    assert stats["result"]["patches"] and stats["result"]["dest"] == str(tmp_path / "plan.json"), stats
    change = opened(records)
    assert change["operator"] == "alice", change
    assert change["awx"] == {"user": "alice", "job_id": "4242", "workflow_job_id": "77"}, change
    assert {r["run"] for r in records} == {"awx-job-4242"}
    # the extra vars are recorded as given; no name in the record is the unrendered template
    assert "{{" not in json.dumps({k: v for k, v in change.items() if k != "extra_vars"})
    closed = [r for r in records if r["kind"] == "change_closed"]
    assert closed and closed[-1]["outcome"] == "successful"


def test_tower_aliases_and_the_job_environment_work_too(tmp_path):
    status, stats, records, out = run(tmp_path, "plan.yml", plan_vars(tmp_path, tower_user_name="bob"),
                                      env={"JOB_ID": "99"})
    assert status == "successful", out[-3000:]
    assert (stats["operator"], stats["run_id"]) == ("bob", "awx-job-99"), stats
    assert opened(records)["operator"] == "bob" and {r["run"] for r in records} == {"awx-job-99"}


def test_outside_awx_the_driver_run_id_and_operator_are_used(tmp_path):
    env = {"EXCHPATCH_RUN_ID": "20261201T000000-abcdef12", "EXCHPATCH_OPERATOR": "carol"}
    status, stats, records, out = run(tmp_path, "plan.yml", plan_vars(tmp_path), env=env)
    assert status == "successful", out[-3000:]
    assert (stats["operator"], stats["run_id"], stats["awx_job_id"]) == ("carol", "20261201T000000-abcdef12", None)
    assert opened(records)["operator"] == "carol" and opened(records).get("awx") is None, opened(records)


@pytest.mark.parametrize(("extra", "message"), [
    ({"awx_user_name": "alice", "preflight_operator": "mallory"}, "under AWX the operator is the AWX user"),
    ({"awx_user_name": "alice; rm -rf /"}, "is not a plain value"),
    ({"rolling_serial": "0,abc"}, "batch sizes"),
    ({"rolling_on_failure": "ignore"}, "rolling_on_failure"),
    ({"preflight_emergency": "maybe"}, "preflight_emergency"),
])
def test_what_a_survey_sends_is_checked_first_and_the_refusal_published(tmp_path, extra, message):
    status, stats, records, out = run(tmp_path, "rolling_patch.yml", {"patch_id": "matching-engine-1.4.3", **extra})
    assert status == "failed"
    assert stats["outcome"] == "refused", (stats, out[-3000:])
    assert message in stats["message"], stats["message"]
    # nothing ran past the check: the catalog was never read
    assert not any(r.get("task") == "Read the patch from the catalog" for r in records if r["kind"] == "event")
    closed = [r for r in records if r["kind"] == "change_closed"]
    assert closed and closed[-1]["outcome"] == "refused", closed
    assert {r["run"] for r in records} == {stats["run_id"]}


def test_a_survey_serial_as_text_is_read_as_batches(tmp_path):
    # "1, 2,50%" is what an AWX text question sends: accepted, the run goes on to the catalog
    status, stats, _records, out = run(tmp_path, "rolling_patch.yml",
                                       {"patch_id": "no-such-patch-9.9", "rolling_serial": "1, 2,50%",
                                        "preflight_catalog": str(REPO / "patches")})
    assert status == "failed" and stats["outcome"] == "refused", out[-3000:]
    assert "batch sizes" not in stats["message"] and "no-such-patch-9.9" in stats["message"], stats["message"]


def test_read_only_playbooks_publish_their_result(tmp_path):
    audit = tmp_path / "audit.jsonl"
    run(tmp_path, "plan.yml", plan_vars(tmp_path))  # something to verify
    status, stats, _records, out = run(tmp_path, "audit.yml", {"audit_action": "verify", "audit_file": str(audit)})
    assert status == "successful", out[-3000:]
    assert stats["outcome"] == "succeeded" and stats["result"]["ok"] is True, stats
    status, stats, _records, out = run(tmp_path, "fleet_status.yml", {})
    assert status == "successful", out[-2000:]
    assert stats["result"]["fleet_status"] == {"nodes": [], "locks": []}, stats


def test_the_example_inventory_holds_no_secret_and_reads_the_credential_tokens(tmp_path):
    inv = REPO / "inventories" / "example"
    assert not [p for p in inv.rglob("*") if p.is_file() and "$ANSIBLE_VAULT" in p.read_text()]
    tokens = {"me-fra1-s0-a": "tok-s0a-123456", "ws-fra1-hot-2": "tok-hot2-654321"}
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    # as the credential injects it: the YAML text of the mapping
    show = json.dumps({"msg": "{{ exchange_admin_token }} {{ exchange_market_calendar }}"})
    res = subprocess.run(
        [str(Path(sys.executable).parent / "ansible"), "-i", str(inv), "me-fra1-s0-a:ws-fra1-hot-2", "-o",
         "--playbook-dir", str(REPO / "playbooks"),
         "-m", "ansible.builtin.debug", "-a", show,
         "-e", json.dumps({"exchange_admin_tokens": yaml.safe_dump(tokens)})],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=120, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    # a file of the project, found from the playbooks' folder (AWX: /runner/project/playbooks)
    calendar = f"{REPO / 'playbooks'}/../calendars/market-calendar.yml"
    assert Path(calendar).resolve().is_file()
    for host, token in tokens.items():
        line = next(ln for ln in res.stdout.splitlines() if ln.startswith(host))
        assert f'"msg": "{token} {calendar}"' in line, line
