"""The exchpatch driver against a real testbed: no mocked ansible-runner.

The CLI runs as a subprocess (JSON documents, exit codes); the Python API runs in-process
where a test needs to act mid-run (cancel). Each test uses its own driver data dir and
audit file, and the module shares one fleet.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testbed import fleet as tb
from testbed.release import build_release
from tests.testbed.nodes import loopback_net

pytestmark = pytest.mark.fleet

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    with tb.running(tmp_path_factory.mktemp("driver"), shards=1, wallets=1, net=loopback_net("driver")) as f:
        yield f


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    """One driver data dir and audit file for the module: the last test searches every run's files."""
    tmp = tmp_path_factory.mktemp("driver-state")
    env = {"EXCHPATCH_DATA_DIR": str(tmp / "data"), "EXCHPATCH_AUDIT_FILE": str(tmp / "audit.jsonl"),
           "EXCHPATCH_OPERATOR": "alice"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        yield tmp
    shutil.rmtree(tmp, ignore_errors=True)


def cli(*args: str, timeout: float = 400) -> tuple[int, dict]:
    res = subprocess.run([str(BIN / "exchpatch"), *args, "--json"], capture_output=True, text=True,
                         timeout=timeout, check=False, env=os.environ.copy())
    try:
        doc = json.loads(res.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"stdout is not one JSON document (rc {res.returncode}):\n{res.stdout[-2000:]}\n"
                    f"{res.stderr[-2000:]}")
    return res.returncode, doc


def build(f: tb.Fleet, component: str, version: str, fault: str | None = None, **kw) -> str:
    root = Path(f.root)
    return build_release(root / "releases", root / "keys", root / "catalog", component, version, fault=fault,
                         **kw).id


def versions(f: tb.Fleet, component: str) -> dict[str, str | None]:
    return {n.name: tb.node_status(n).get("version") for n in f.nodes if n.component == component}


JOB_KEYS = {"id", "kind", "playbook", "status", "rc", "started", "finished", "cancel_requested", "artifacts"}


def test_status_json_schema_and_an_unanswering_node(fleet, state):
    rc, doc = cli("status", "--inventory", fleet.inventory_dir)
    assert rc == 0, doc
    assert set(doc) >= {"job", "exit_code", "message", "nodes", "components", "shards", "locks", "drift",
                        "unreachable"}
    assert set(doc["job"]) == JOB_KEYS and doc["job"]["status"] == "successful"
    assert {n["name"] for n in doc["nodes"]} == {n.name for n in fleet.nodes}
    assert doc["drift"] is False and doc["unreachable"] == [] and doc["locks"] == []
    assert all(s["healthy"] and s["primary"] for s in doc["shards"].values()), doc["shards"]
    assert set(doc["components"]) == {"matching-engine", "wallet-signer"}
    node = next(n for n in fleet.nodes if n.component == "wallet-signer")
    tb.supervisorctl(node, "stop", node.program)
    try:
        rc, doc = cli("status", "--inventory", fleet.inventory_dir)
        assert rc == 1, doc
        assert doc["unreachable"] == [node.name] and node.name in doc["message"]
    finally:
        tb.supervisorctl(node, "start", node.program)
        tb.wait_ready(fleet, 60)


@pytest.mark.parametrize(("args", "needle"), [
    (["deploy", "no-such-patch-9.9"], "no-such-patch-9.9"),
    (["deploy", "x;rm -rf /"], "patch id"),
    (["deploy", "matching-engine-1.0", "--reason", "{{ lookup('pipe', 'id') }}"], "--reason contains the template"),
    (["deploy", "matching-engine-1.0", "--emergency"], "--reason"),
    (["deploy", "matching-engine-1.0", "--approval", "/nonexistent/approval.json"], "approval file"),
    (["deploy", "matching-engine-1.0", "--serial", "0"], "serial"),
    (["rollback", "--component", "matching-engine", "--to", "../../etc"], "version"),
    (["status", "--inventory", "/nonexistent/inventory"], "/nonexistent/inventory"),
])
def test_bad_input_exits_2_naming_the_thing_and_touches_nothing(fleet, state, args, needle):
    if not any((Path(fleet.root) / "catalog").glob("*.yml")):
        build(fleet, "matching-engine", "1.3.9")  # a catalog with an entry: the unknown id is the problem
    before = versions(fleet, "matching-engine")
    inv = [] if "--inventory" in args else ["--inventory", fleet.inventory_dir]
    rc, doc = cli(*args, *inv)
    assert rc == 2, doc
    text = doc.get("error") or doc.get("message") or ""
    assert needle in text, doc
    assert versions(fleet, "matching-engine") == before


def test_deploy_check_then_good_then_faulty_json_and_exit_codes(fleet, state):
    before = versions(fleet, "matching-engine")
    good = build(fleet, "matching-engine", "1.4.3", fixes=["CVE-2026-31337"])
    rc, doc = cli("deploy", good, "--inventory", fleet.inventory_dir, "--check")
    assert rc == 0 and doc["outcome"] == "check", doc
    assert versions(fleet, "matching-engine") == before

    rc, doc = cli("deploy", good, "--inventory", fleet.inventory_dir, "--canary-bake", "1")
    assert rc == 0, doc["message"]
    assert doc["outcome"] == "successful" and doc["patch_id"] == good and doc["failed_nodes"] == []
    assert set(doc["job"]) == JOB_KEYS and doc["job"]["status"] == "successful"
    changed = {s["host"] for s in doc["steps"] if s["status"] == "changed"}
    assert changed == {n.name for n in fleet.nodes if n.component == "matching-engine"}
    assert set(versions(fleet, "matching-engine").values()) == {"1.4.3"}

    bad = build(fleet, "matching-engine", "1.4.4", fault="crash")
    rc, doc = cli("deploy", bad, "--inventory", fleet.inventory_dir, "--canary-bake", "1")
    assert rc == 1, doc
    assert doc["outcome"] == "rolled_back", doc
    assert len(doc["failed_nodes"]) == 1 and "ready" in doc["message"], doc
    assert set(versions(fleet, "matching-engine").values()) == {"1.4.3"}

    rc, doc = cli("status", "--inventory", fleet.inventory_dir)
    assert rc == 0 and doc["locks"] == [] and doc["drift"] is False, doc


def test_history_metrics_report_and_audit_verify_from_the_trail(fleet, state):
    """Runs after the deploys above: one check, one good, one rolled back (the module shares the trail)."""
    rc, doc = cli("history")
    assert rc == 0, doc
    runs = [r for r in doc["data"]["runs"] if r["playbook"] == "rolling_patch.yml"]
    # the unknown patch id of the bad-input test was refused in preflight: not a deployment
    assert [r["outcome"] for r in runs if r["patch_id"] == "no-such-patch-9.9"] == ["refused"], runs
    deploys = [r for r in runs if r["outcome"] != "refused"]
    assert [r["outcome"] for r in deploys] == ["check", "successful", "rolled_back"], deploys
    assert {r["operator"] for r in deploys} == {"alice"}
    rc, doc = cli("metrics")
    assert rc == 0, doc
    m = doc["data"]["metrics"]
    assert (m["deployments"], m["failed_deployments"], m["change_failure_rate"]) == (2, 1, 0.5), m
    fixed = {c["cve"]: c for c in m["mttr"]["per_cve"]}
    assert fixed["CVE-2026-31337"]["status"] == "fixed" and fixed["CVE-2026-31337"]["mttr_s"] > 0, fixed
    assert m["time_to_restore"] and m["time_to_restore"][0]["time_to_restore_s"] is not None, m
    prom = state / "exchpatch.prom"
    rc, doc = cli("metrics", "--prometheus", str(prom))
    assert rc == 0 and "exchpatch_change_failure_rate 0.5" in prom.read_text(), doc

    rolled_back = deploys[-1]["run"]
    rc, doc = cli("report", rolled_back)
    assert rc == 0, doc
    html = Path(doc["data"]["path"]).read_text()
    assert "<svg" in html and "rolled back" in html.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)  # self-contained: fetches nothing

    rc, doc = cli("audit", "verify")
    assert rc == 0 and doc["data"]["ok"] is True, doc
    trail = state / "audit.jsonl"
    original = trail.read_bytes()
    lines = original.decode().split("\n")
    at = next(i for i, line in enumerate(lines) if '"kind":"change_opened"' in line and '"alice"' in line)
    try:
        edited = json.loads(lines[at])
        edited["operator"] = "mallory"  # a clean re-serialisation: only the content changed
        trail.write_text("\n".join([*lines[:at], json.dumps(edited, sort_keys=True, separators=(",", ":")),
                                    *lines[at + 1:]]))
        rc, doc = cli("audit", "verify")
        assert rc == 1 and doc["data"]["ok"] is False, doc
        assert any(p["line"] == at + 1 and "edited" in p["what"] for p in doc["data"]["problems"]), doc["data"]
        trail.write_text("\n".join([*lines[:at], *lines[at + 1:]]))  # the record removed instead
        rc, doc = cli("audit", "verify")
        assert rc == 1 and any("removed" in p["what"] for p in doc["data"]["problems"]), doc["data"]
    finally:
        trail.write_bytes(original)


def test_cancel_mid_rollout_rolls_back_and_releases_the_lock(fleet, state):
    from exchpatch import api

    before = versions(fleet, "matching-engine")
    pid = build(fleet, "matching-engine", "1.5.0")
    statuses = []
    job = api.deploy(pid, inventory=fleet.inventory_dir, canary_bake=3,
                     status_handler=lambda j, s: statuses.append(str(s)))
    deadline = time.time() + 300
    while not any(e.event == "playbook_on_play_start" and e.play == "Put the canary in front of clients and bake it"
                  for e in job.events):
        assert not job.done, [e.msg for e in job.events if e.failed]
        assert time.time() < deadline
        time.sleep(0.2)
    job.cancel()
    result = job.wait(400)
    assert job.status == "canceled" and statuses[-1] == "canceled", statuses
    assert statuses[0] == "running"
    assert result.outcome == "canceled" and result.exit_code == 1
    assert "canceled by the operator" in (result.message or ""), result.message
    # the playbook's own rules ran: the canary went back, every node converged, the lock is gone
    assert versions(fleet, "matching-engine") == before
    assert not any((Path(fleet.root) / "locks").glob("*.lock"))
    for shard in range(fleet.shards):
        roles = sorted(tb.node_status(n).get("ha_role") for n in fleet.nodes if n.shard == shard)
        assert roles == ["primary", "standby"]


def _vaulted_inventory(f: tb.Fleet, dest: Path, password: str) -> tuple[Path, Path]:
    inv = dest / "inventory"
    shutil.copytree(f.inventory_dir, inv)
    pwfile = dest / "vault-pass"
    pwfile.write_text(password + "\n")
    pwfile.chmod(0o600)
    secrets = inv / "group_vars" / "all" / "secrets.yml"
    res = subprocess.run([str(BIN / "ansible-vault"), "encrypt", "--vault-password-file", str(pwfile), str(secrets)],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    assert "exchange_admin_token" not in secrets.read_text()
    return inv, pwfile


def test_secrets_never_reach_artifacts_events_or_the_audit_file(fleet, state, tmp_path):
    """Runs last: the data dir then holds every run of this module, failed and canceled ones included."""
    password = "vault-Pa55word-that-must-not-leak"
    inv, pwfile = _vaulted_inventory(fleet, tmp_path, password)
    without = subprocess.run([str(BIN / "exchpatch"), "status", "--inventory", str(inv), "--json"],
                             capture_output=True, text=True, check=False)
    assert without.returncode != 0  # the vaulted inventory cannot be read without the password
    rc, doc = cli("status", "--inventory", str(inv), "--vault-password-file", str(pwfile))
    assert rc == 0 and not doc["unreachable"], doc  # the tokens were decrypted and used
    tokens = [n.token() for n in fleet.nodes]
    haystacks = [state / "data"] + ([state / "audit.jsonl"] if (state / "audit.jsonl").exists() else [])
    files = [p for h in haystacks for p in ([h] if h.is_file() else h.rglob("*")) if p.is_file()]
    assert any("job_events" in str(p) for p in files)
    for p in files:
        text = p.read_text(errors="replace")
        assert password not in text, p
        for t in tokens:
            assert t not in text, f"admin token found in {p}"
