"""The audit callback and playbooks/audit.yml on real ansible-playbook runs against a real testbed.

One fleet serves the module: a plan (feed dates), a good rollout fixing CVE-2026-31337, a
crashing release caught at the canary and rolled back; then verify, history, metrics, the
absence of every admin token, and tamper detection through playbooks/audit.yml.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from testbed import fleet as tb
from testbed.release import build_release
from tests.testbed.nodes import loopback_net

REDACTED = "<redacted>"

pytestmark = pytest.mark.fleet

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
NET = loopback_net("audit-trail")
CVE = "CVE-2026-31337"  # KEV dateAdded 2026-11-18 in feeds/kev.json
FEEDS = sorted(str(p) for p in (REPO / "feeds").iterdir() if p.is_file())
VAULT_PASSWORD = "vault-pass-7f3e91c2"
VAULTED_VALUE = "vaulted-api-key-5a8d"


def env_for(audit: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "EXCHPATCH_RUN_ID"}
    return {**env, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
            "EXCHPATCH_AUDIT_FILE": str(audit), **extra}


def playbook(audit: Path, inventory: str, path: Path, *extra: str, timeout: float = 400,
             env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "ansible-playbook"), "-i", inventory, str(path), *extra], capture_output=True,
                          text=True, env=env or env_for(audit), cwd=REPO, timeout=timeout, check=False)


def audit(audit_file: Path, action: str, *extra: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    """Run playbooks/audit.yml with a JSON stdout callback; return the process and the module result."""
    env = env_for(audit_file, ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json")
    res = playbook(audit_file, str(REPO / "exchpatch" / "empty_inventory.yml"), REPO / "playbooks" / "audit.yml",
                   "-e", f"audit_action={action}", *extra, env=env, timeout=120)
    doc = json.loads(res.stdout)
    tasks = [t for p in doc["plays"] for t in p["tasks"] if t["task"]["name"] == "Read the audit trail"]
    return res, tasks[0]["hosts"]["localhost"]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    # one shard: a primary/standby pair is all a trail needs
    with tb.running(tmp_path_factory.mktemp("fleet"), shards=1, wallets=1, net=NET) as f:
        yield f


@pytest.fixture(scope="module")
def trail(fleet, tmp_path_factory):
    """An audit trail holding: plan, good rollout, crashing rollout."""
    root = tmp_path_factory.mktemp("audit")
    audit_file = root / "state" / "audit.jsonl"
    inv = fleet.inventory_dir
    plan = playbook(audit_file, inv, REPO / "playbooks" / "plan.yml",
                    "-e", json.dumps({"plan_feeds": FEEDS, "plan_catalog": str(REPO / "patches")}))
    assert plan.returncode == 0, plan.stdout[-3000:]
    froot = Path(fleet.root)
    good = build_release(froot / "releases", froot / "keys", froot / "catalog", "matching-engine", "1.4.3",
                         fixes=[CVE]).id
    bad = build_release(froot / "releases", froot / "keys", froot / "catalog", "matching-engine", "1.4.4",
                        fault="crash").id
    ok = playbook(audit_file, inv, REPO / "playbooks" / "rolling_patch.yml", "-e", f"patch_id={good}",
                  "-e", "rolling_canary_bake=1", "-e", "preflight_operator=alice")
    assert ok.returncode == 0, ok.stdout[-3000:]
    crash = playbook(audit_file, inv, REPO / "playbooks" / "rolling_patch.yml", "-e", f"patch_id={bad}",
                     "-e", "rolling_canary_bake=1", "-e", "matching_node_gate_timeout=10")
    assert crash.returncode != 0 and "Rolled back" in crash.stdout, crash.stdout[-3000:]
    try:
        yield {"fleet": fleet, "file": audit_file, "root": root, "good": good, "bad": bad}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_trail_verifies_and_history_has_the_outcomes(trail):
    res, result = audit(trail["file"], "verify")
    assert res.returncode == 0 and result["ok"] is True and result["problems"] == []
    assert result["records"] > 100
    res, result = audit(trail["file"], "history")
    assert res.returncode == 0
    rows = [(r["playbook"], r["patch_id"], r["outcome"]) for r in result["runs"]]
    assert rows == [("plan.yml", None, "successful"),
                    ("rolling_patch.yml", trail["good"], "successful"),
                    ("rolling_patch.yml", trail["bad"], "rolled_back")]
    good = result["runs"][1]
    assert (good["operator"], good["version"], good["cves"], good["emergency"]) == ("alice", "1.4.3", [CVE], False)
    assert good["duration_s"] > 0


def test_metrics_cfr_mttr_and_time_to_restore(trail):
    res, result = audit(trail["file"], "metrics", "-e", "audit_prometheus=true",
                        "-e", f"audit_dest={trail['root'] / 'exchpatch.prom'}")
    assert res.returncode == 0
    m = result["metrics"]
    assert (m["deployments"], m["failed_deployments"], m["rollbacks"]) == (2, 1, 1)
    assert m["change_failure_rate"] == 0.5
    history = audit(trail["file"], "history")[1]["runs"]
    fixed = {r["cve"]: r for r in m["mttr"]["per_cve"]}[CVE]
    # first seen: KEV dateAdded from the plan run; fixed: the good run's change_closed
    assert fixed["first_seen"] == "2026-11-18T00:00:00.000000Z" and "plan run" in fixed["first_seen_source"]
    assert fixed["fixed_by_run"] == history[1]["run"] and fixed["fixed_at"] == history[1]["finished"]
    closed = dt.datetime.fromisoformat(history[1]["finished"].replace("Z", "+00:00"))
    assert fixed["mttr_s"] == round((closed - dt.datetime(2026, 11, 18, tzinfo=dt.UTC)).total_seconds(), 3)
    restore = m["time_to_restore"]
    assert [r["run"] for r in restore] == [history[2]["run"]]
    assert restore[0]["restored_by_run"] == history[2]["run"]  # its own rollback converged the fleet
    assert 0 < restore[0]["time_to_restore_s"] < history[2]["duration_s"]
    prom = (trail["root"] / "exchpatch.prom").read_text()
    assert prom == result["prometheus"]
    assert "exchpatch_change_failure_rate 0.5\n" in prom
    assert f'exchpatch_cve_time_to_remediate_seconds{{cve="{CVE}",patch_id="{trail["good"]}"}}' in prom


def test_no_admin_token_reaches_the_audit_file(trail):
    secrets = yaml.safe_load((Path(trail["fleet"].inventory_dir) / "group_vars" / "all" / "secrets.yml").read_text())
    tokens = list(secrets["exchange_admin_tokens"].values())
    assert len(tokens) == len(trail["fleet"].nodes)
    text = trail["file"].read_text()
    assert "<redacted>" in text
    for token in tokens:
        assert token not in text


def test_report_of_the_rolled_back_run(trail):
    history = audit(trail["file"], "history")[1]["runs"]
    dest = trail["root"] / "crash.html"
    res, result = audit(trail["file"], "report", "-e", f"audit_run={history[2]['run']}", "-e", f"audit_dest={dest}")
    assert res.returncode == 0 and result["path"] == str(dest)
    html = dest.read_text()
    assert html.lstrip().lower().startswith("<!doctype html") and trail["bad"] in html


def wait_for_task(audit_file: Path, task: str, runs: set[str], timeout: float = 90) -> None:
    """Until every run has started ``task`` (read from the trail itself)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        started = set()
        if audit_file.exists():
            for line in audit_file.read_text().splitlines():
                rec = json.loads(line)
                if rec.get("event") == "playbook_on_task_start" and rec.get("task") == task:
                    started.add(rec["run"])
        if started >= runs:
            return
        time.sleep(0.5)
    raise AssertionError(f"runs {runs} did not all reach task {task!r} within {timeout} s")


SLOW = """
- name: Touch every node's token and wait
  hosts: matching_nodes
  gather_facts: false
  tasks:
    - name: Print a message that carries the node's admin token
      ansible.builtin.debug:
        msg: "calling {{ exchange_admin_url }} with {{ exchange_admin_token }} and {{ vault_api_key }}"

    - name: Wait
      ansible.builtin.wait_for:
        timeout: 15
      delegate_to: localhost
"""


def test_killed_and_concurrent_runs_keep_the_trail_valid_and_secrets_out(fleet, tmp_path):
    audit_file = tmp_path / "audit.jsonl"
    book = tmp_path / "slow.yml"
    book.write_text(SLOW)
    (tmp_path / "pass").write_text(VAULT_PASSWORD)
    vaulted = subprocess.run([str(BIN / "ansible-vault"), "encrypt_string", "--vault-password-file",
                              str(tmp_path / "pass"), VAULTED_VALUE, "--name", "vault_api_key"],
                             capture_output=True, text=True, check=True, env=env_for(audit_file)).stdout
    (tmp_path / "vaulted.yml").write_text(vaulted)
    inv = fleet.inventory_dir
    cmd = [str(BIN / "ansible-playbook"), "-i", inv, str(book), "--vault-password-file", str(tmp_path / "pass"),
           "-e", f"@{tmp_path / 'vaulted.yml'}"]
    procs = {name: subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO,
                                    env=env_for(audit_file, EXCHPATCH_RUN_ID=name), start_new_session=True)
             for name in ("finishes", "killed", "interrupted")}
    try:
        wait_for_task(audit_file, "Wait", set(procs))
        os.killpg(procs["killed"].pid, signal.SIGKILL)
        os.kill(procs["interrupted"].pid, signal.SIGINT)
        assert procs["finishes"].wait(120) == 0
        procs["interrupted"].wait(60)
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    res, result = audit(audit_file, "verify")
    assert res.returncode == 0 and result["problems"] == [], result
    outcomes = {r["run"]: r["outcome"] for r in audit(audit_file, "history")[1]["runs"]}
    assert outcomes == {"finishes": "successful", "killed": "interrupted", "interrupted": "canceled"}
    text = audit_file.read_text()
    secrets = yaml.safe_load((Path(inv) / "group_vars" / "all" / "secrets.yml").read_text())
    for secret in [*secrets["exchange_admin_tokens"].values(), VAULT_PASSWORD, VAULTED_VALUE]:
        assert secret not in text
    assert "with <redacted> and <redacted>" in text  # the message itself was kept, its secrets cut out


def test_tampering_fails_audit_playbook_naming_the_line(trail, tmp_path):
    copy = tmp_path / "audit.jsonl"
    lines = trail["file"].read_text().splitlines(keepends=True)
    edited = json.loads(lines[9])
    edited["ts"] = "2000-01-01T00:00:00.000000Z"
    lines[9] = json.dumps(edited, sort_keys=True, separators=(",", ":")) + "\n"
    del lines[20]
    copy.write_text("".join(lines))
    res, result = audit(copy, "verify")
    assert res.returncode != 0
    assert result["failed"] is True and result["ok"] is False
    where = [(p["line"], p["what"].split(":")[0]) for p in result["problems"]]
    assert (10, "edited") in where
    assert any(line == 21 and what in ("chain broken", "seq jumps from 20 to 22") for line, what in where)
    assert "line 10 (seq 10): edited" in result["msg"]
    # a missing trail is an error only for verify
    res, result = audit(tmp_path / "none.jsonl", "verify")
    assert res.returncode != 0 and "no audit trail at" in result["msg"]
    res, result = audit(tmp_path / "none.jsonl", "history")
    assert res.returncode == 0 and result["runs"] == []


# --- redaction on a real run, no fleet ------------------------------------------------------

SECRETS_BOOK = """
- name: Echo every kind of secret the redaction must catch
  hosts: vault_box
  gather_facts: false
  tasks:
    - name: Print the secrets, raw and URL-encoded
      ansible.builtin.debug:
        msg: >-
          token {{ api_token }} ({{ api_token | urlencode }}) feed {{ feed_url }}
          password {{ feed_url | urlsplit('password') }} dsn {{ ledger_dsn }} conn {{ ledger_conn }}
          cred {{ db_credential }} passphrase {{ ssh_passphrase }} ({{ ssh_passphrase | urlencode }})

    - name: Fail with the secrets in the error message
      block:
        - name: Connect to the ledger
          ansible.builtin.fail:
            msg: "cannot connect to {{ ledger_dsn }} as ledger with {{ db_credential }}; token={{ api_token }}"
      rescue:
        - name: Note the failure
          ansible.builtin.debug:
            msg: "recovered from {{ ansible_failed_result.msg }}"
"""

# A 5-character token, a URL with credentials (percent-encoded @), a DSN under a dsn key, a DSN
# under an ordinary key, a credential and a passphrase as host vars.
TOKEN = "Zq7!x"
FEED_URL = "https://bot:S3cr%40t-feed@feeds.example/kev.json"
LEDGER_DSN = "postgresql://ledger:Dsn-pw-91@db.internal:5432/ledger"
LEDGER_CONN = "postgresql://app:pgpw7@db.internal/ledger"
CREDENTIAL = "cred-4711"
PASSPHRASE = "open sesame/42"
LEAKS = (TOKEN, "S3cr@t-feed", "S3cr%40t-feed", "Dsn-pw-91", "pgpw7", CREDENTIAL, PASSPHRASE)


def test_a_real_run_writes_no_secret_and_the_redacted_trail_verifies(tmp_path):
    """ansible-playbook with the audit callback on localhost (no fleet): none of the secrets,
    raw or URL-encoded, reaches the audit file, and the chain verifies."""
    from urllib.parse import quote, quote_plus

    from ansible_collections.exchangeops.patching.plugins.module_utils._audit import verify

    audit_file = tmp_path / "audit.jsonl"
    (tmp_path / "book.yml").write_text(SECRETS_BOOK)
    (tmp_path / "inventory.yml").write_text(yaml.safe_dump({"all": {"hosts": {"vault_box": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
        "db_credential": CREDENTIAL, "ssh_passphrase": PASSPHRASE}}}}))
    (tmp_path / "extra.json").write_text(json.dumps({"api_token": TOKEN, "feed_url": FEED_URL,
                                                     "ledger_dsn": LEDGER_DSN, "ledger_conn": LEDGER_CONN}))
    res = playbook(audit_file, str(tmp_path / "inventory.yml"), tmp_path / "book.yml",
                   "-e", f"@{tmp_path / 'extra.json'}", timeout=120)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert TOKEN in res.stdout and "Dsn-pw-91" in res.stdout  # the secrets did go through the run

    text = audit_file.read_text()
    for secret in LEAKS:
        for form in dict.fromkeys((secret, quote(secret, safe=""), quote(secret), quote_plus(secret))):
            assert form not in text, f"{form!r} reached the audit trail"
    records = [json.loads(line) for line in text.splitlines()]
    msgs = [r["res"]["msg"] for r in records if r.get("task") == "Print the secrets, raw and URL-encoded"
            and r.get("event") == "runner_on_ok"]
    # the message is kept, only its secrets are cut; user names in URLs stay
    assert msgs and msgs[0].startswith(f"token {REDACTED} ({REDACTED}) feed https://bot:{REDACTED}@feeds.example/")
    # a DSN under a dsn key is a secret as a whole; under an ordinary key only its password is
    assert f"dsn {REDACTED} conn postgresql://app:{REDACTED}@db.internal/ledger" in msgs[0]
    opened = next(r for r in records if r["kind"] == "change_opened")
    assert opened["extra_vars"]["api_token"] == REDACTED and opened["extra_vars"]["ledger_dsn"] == REDACTED
    failed = [r for r in records if r.get("event") == "runner_on_failed"]
    assert failed and failed[0]["res"]["msg"] == (f"cannot connect to {REDACTED} as ledger with {REDACTED}; "
                                                  f"token={REDACTED}")
    assert verify(str(audit_file)) == (len(records), [])
    # the trail, read back through audit.yml: it verifies, and neither history nor report leaks
    res, result = audit(audit_file, "verify")
    assert res.returncode == 0 and result["ok"] is True
    res, result = audit(audit_file, "report", "-e", f"audit_dest={tmp_path / 'report.html'}")
    assert res.returncode == 0
    html = (tmp_path / "report.html").read_text()
    for secret in LEAKS:
        assert secret not in html and quote(secret) not in html
