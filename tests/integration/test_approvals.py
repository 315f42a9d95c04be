"""Signed approvals end to end: `exchpatch approve` with real ssh-keygen keys, the approval_verify module
against files and a real PostgreSQL state store, and the rolling_patch preflight on a real testbed fleet
(every refusal happens before any node or lock is touched; a good approval is recorded in the audit trail
with the approver's identity and key fingerprint)."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from ansible_collections.exchangeops.patching.plugins.module_utils import _approval

from testbed import fleet as tb
from testbed.release import build_release
from tests.testbed.nodes import loopback_net

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PATCH = "matching-engine-1.4.3"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXCHPATCH_STATE_STORE") and k != "EXCHPATCH_RUN_ID"}
    return {**env, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1", **extra}


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("approvers")
    for name in ("alice", "bob", "mallory"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(root / name)], check=True)
    pub = {n: " ".join((root / f"{n}.pub").read_text().split()[:2]) for n in ("alice", "bob")}
    (root / "allowed_signers").write_text(f'alice namespaces="exchpatch-approval" {pub["alice"]}\n'
                                          f'bob namespaces="exchpatch-approval" {pub["bob"]}\n')
    fingerprints = {n: subprocess.run(["ssh-keygen", "-lf", str(root / f"{n}.pub")], capture_output=True, text=True,
                                      check=True).stdout.split()[1] for n in ("alice", "bob", "mallory")}
    return root, fingerprints


def approve(keys, signer: str, out: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    """`exchpatch approve` as ``signer``: an emergency approval of PATCH for alice for 2 h, unless ``args`` differ."""
    root, _fp = keys
    options = {"--kind": "emergency", "--patch": PATCH, "--operator": "alice", "--reason": "KEV-listed RCE",
               "--valid-for": "2h"}
    rest = list(args)
    while rest and rest[0] in (*options, "--not-after"):
        name, value, rest = rest[0], rest[1], rest[2:]
        options.pop("--valid-for" if name == "--not-after" else "", None)
        options[name] = value
    argv = [x for pair in options.items() for x in pair]
    return subprocess.run([str(BIN / "exchpatch"), "approve", "--json", *argv, *rest, "--key", str(root / signer),
                           "--output", str(out)], capture_output=True, text=True, env=env or clean_env(),
                          cwd=REPO, timeout=60, check=False)


def approved(keys, signer: str, out: Path, *args: str) -> Path:
    res = approve(keys, signer, out, *args)
    assert res.returncode == 0, res.stderr
    return out


def expired(keys, signer: str, out: Path, patch: str = PATCH) -> Path:
    """An approval whose not_after has passed (the CLI refuses to make one)."""
    root, _fp = keys
    issued = dt.datetime.now(dt.UTC) - dt.timedelta(hours=3)
    doc = _approval.make_document("emergency", patch, "alice", "KEV-listed RCE", issued + dt.timedelta(hours=1),
                                  issued).canonical()
    out.write_text(_approval.approval_file_text(doc, _approval.sign(doc, str(root / signer))))
    return out


def verify_module(keys, *flags: str, env: dict | None = None, **args) -> tuple[int, dict]:
    root, _fp = keys
    params = {"kind": ["emergency"], "patch_id": PATCH, "operator": "alice",
              "allowed_signers": str(root / "allowed_signers"), **args}
    proc = subprocess.run([str(BIN / "ansible"), "localhost", "-m", "exchangeops.patching.approval_verify", "-a",
                           json.dumps(params), *flags], capture_output=True, text=True, cwd=REPO,
                          env=env or clean_env(), timeout=120, check=False)
    _head, sep, body = proc.stdout.partition(" => ")
    assert sep, proc.stdout + proc.stderr
    return proc.returncode, json.JSONDecoder().raw_decode(body.strip())[0]


# --------------------------------------------------------------------------- exchpatch approve + the module


def test_approve_makes_a_file_the_module_accepts_naming_the_approver_and_key(keys, tmp_path):
    res = approve(keys, "bob", tmp_path / "a.json", "--allowed-signers", str(keys[0] / "allowed_signers"))
    assert res.returncode == 0, res.stderr
    made = json.loads(res.stdout)
    assert (made["approver"], made["approver_key_fingerprint"], made["kind"]) == ("bob", keys[1]["bob"], "emergency")
    rc, result = verify_module(keys, approval_files=[str(tmp_path / "a.json")])
    assert rc == 0, result
    assert result["changed"] is False
    assert {k: result["approval"][k] for k in ("approver", "approver_key_fingerprint", "kind", "id")} == {
        "approver": "bob", "approver_key_fingerprint": keys[1]["bob"], "kind": "emergency", "id": made["id"]}


@pytest.mark.parametrize(("args", "message"), [
    (["--operator", "bob"], "is the operator"),                      # checked against allowed_signers at once
    (["--not-after", "2020-01-01T00:00:00Z"], "not_after"),
    (["--valid-for", "30d"], "at most 7d"),
    (["--kind", "rollback"], "invalid choice"),
])
def test_approve_refuses_a_bad_approval_before_handing_it_over(keys, tmp_path, args, message):
    res = approve(keys, "bob", tmp_path / "a.json", *args, "--allowed-signers", str(keys[0] / "allowed_signers"))
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert not (tmp_path / "a.json").exists()


@pytest.mark.parametrize(("case", "field"), [
    ("self", "approver"), ("expired", "not_after"), ("kind", "kind"), ("patch", "patch_id"),
    ("operator", "operator"), ("unknown", "signer"), ("none", "approval"),
])
def test_the_module_refuses_with_one_line_naming_the_field(keys, tmp_path, case, field):
    out = tmp_path / "a.json"
    files = {
        "self": lambda: approved(keys, "alice", out),
        "expired": lambda: expired(keys, "bob", out),
        "kind": lambda: approved(keys, "bob", out, "--kind", "downgrade"),
        "patch": lambda: approved(keys, "bob", out, "--patch", "matching-engine-9.9.9"),
        "operator": lambda: approved(keys, "bob", out, "--operator", "carol"),
        "unknown": lambda: approved(keys, "mallory", out),
        "none": lambda: None,
    }[case]()
    rc, result = verify_module(keys, "--check", approval_files=[str(files)] if files else [])
    assert rc != 0
    assert result["refusal"]["field"] == field, result
    assert "\n" not in result["msg"] and "; " in result["msg"], result["msg"]


# --------------------------------------------------------------------------- the PostgreSQL state store


def store_env(pg_db, **extra: str) -> dict[str, str]:
    return clean_env(EXCHPATCH_STATE_STORE="postgresql", EXCHPATCH_STATE_STORE_DSN=pg_db.writer_dsn, **extra)


def test_a_published_approval_is_found_by_kind_patch_and_operator_and_verified_on_use(keys, tmp_path, pg_db):
    env = store_env(pg_db)
    res = approve(keys, "bob", tmp_path / "a.json", "--store", "--allowed-signers", str(keys[0] / "allowed_signers"),
                  env=env)
    assert res.returncode == 0, res.stderr
    made = json.loads(res.stdout)
    assert made["stored"] is True
    with psycopg.connect(pg_db.admin_dsn) as conn:
        row = conn.execute("SELECT kind, patch_id, operator, approver, fingerprint FROM exchpatch_approval "
                           "WHERE id = %s", (made["id"],)).fetchone()
    assert row == ("emergency", PATCH, "alice", "bob", keys[1]["bob"])
    # another controller: no file, the store
    rc, result = verify_module(keys, env=env)
    assert rc == 0, result
    assert result["approval"]["approver"] == "bob" and result["approval"]["source"].startswith("stored approval")
    # for another operator nothing is published
    rc, result = verify_module(keys, env=env, operator="carol")
    assert rc != 0 and result["refusal"]["field"] == "approval" and "state store" in result["msg"]
    # a stored row edited after signing (say, the operator changed by someone with table rights) fails on use
    with psycopg.connect(pg_db.admin_dsn) as conn:
        conn.execute("UPDATE exchpatch_approval SET document = replace(document, 'KEV-listed RCE', 'anything goes')")
    rc, result = verify_module(keys, env=env)
    assert rc != 0 and result["refusal"]["field"] == "signature", result


def test_a_self_signed_or_expired_stored_approval_is_refused(keys, tmp_path, pg_db):
    env = store_env(pg_db)
    res = approve(keys, "alice", tmp_path / "self.json", "--store", env=env)
    assert res.returncode == 0, res.stderr
    rc, result = verify_module(keys, env=env)
    assert rc != 0 and result["refusal"]["field"] == "approver", result
    late = _approval.read_approval_file(str(expired(keys, "bob", tmp_path / "late.json")))
    with psycopg.connect(pg_db.writer_dsn, autocommit=True) as conn:
        assert _approval.publish(conn, late, "bob", keys[1]["bob"]) is True
        assert _approval.publish(conn, late, "bob", keys[1]["bob"]) is False  # same id: once
    rc, result = verify_module(keys, env=env, approval_files=[str(tmp_path / "late.json")])
    assert rc != 0 and result["refusal"]["field"] == "not_after", result


def test_approve_store_without_the_postgresql_store_is_bad_input_and_the_file_is_kept(keys, tmp_path):
    res = approve(keys, "bob", tmp_path / "a.json", "--store")
    assert res.returncode == 2 and "EXCHPATCH_STATE_STORE=postgresql" in res.stderr
    assert (tmp_path / "a.json").is_file()


# --------------------------------------------------------------------------- the preflight on a real fleet


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    with tb.running(tmp_path_factory.mktemp("approvals"), shards=1, wallets=1, net=loopback_net("approvals")) as f:
        yield f


def build(f: tb.Fleet, version: str, **kw) -> str:
    root = Path(f.root)
    return build_release(root / "releases", root / "keys", root / "catalog", "matching-engine", version, **kw).id


def rollout(f: tb.Fleet, keys, audit: Path, pid: str, *extra: str, check: bool = False):
    env = clean_env(EXCHPATCH_AUDIT_FILE=str(audit))
    argv = [str(BIN / "ansible-playbook"), "-i", f.inventory_dir, str(REPO / "playbooks" / "rolling_patch.yml"),
            "-e", f"patch_id={pid}", "-e", "preflight_operator=alice", "-e", "preflight_emergency=true",
            "-e", "preflight_reason=KEV-listed RCE", "-e", f"exchange_allowed_signers={keys[0] / 'allowed_signers'}",
            *extra, *(["--check"] if check else [])]
    return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=400, check=False)


@pytest.fixture(scope="module")
def refused_patch(fleet) -> str:
    return build(fleet, "1.7.0")


def versions(f: tb.Fleet) -> dict[str, str | None]:
    return {n.name: tb.node_status(n).get("version") for n in f.nodes}


def records(audit: Path) -> list[dict]:
    return [json.loads(line) for line in audit.read_text().splitlines() if line.strip()] if audit.exists() else []


@pytest.mark.fleet
@pytest.mark.parametrize(("case", "message"), [
    ("self", "approver 'alice' is the operator 'alice'"),
    ("expired", "expired at"),
    ("mismatch", "patch_id is 'matching-engine-9.9.9'"),
    ("unknown", "is not in"),
    ("free_text", "preflight_approver"),
])
def test_a_refused_approval_stops_the_rollout_before_any_node_or_lock(
        fleet, refused_patch, keys, tmp_path, case, message):
    pid = refused_patch
    out = tmp_path / "a.json"
    extra = {
        "self": lambda: ["-e", f"preflight_approval_file={approved(keys, 'alice', out, '--patch', pid)}"],
        "expired": lambda: ["-e", f"preflight_approval_file={expired(keys, 'bob', out, pid)}"],
        "mismatch": lambda: ["-e", "preflight_approval_file="
                             f"{approved(keys, 'bob', out, '--patch', 'matching-engine-9.9.9')}"],
        "unknown": lambda: ["-e", f"preflight_approval_file={approved(keys, 'mallory', out, '--patch', pid)}"],
        "free_text": lambda: ["-e", "preflight_approver=bob"],
    }[case]()
    before = versions(fleet)
    audit = tmp_path / "audit.jsonl"
    res = rollout(fleet, keys, audit, pid, *extra)
    assert res.returncode != 0
    assert message in res.stdout, res.stdout[-3000:]
    assert versions(fleet) == before
    assert not list((Path(fleet.root) / "locks").glob("*.lock"))
    closed = [r for r in records(audit) if r.get("kind") == "change_closed"]
    assert closed and closed[-1].get("outcome") == "refused", records(audit)[-3:]


@pytest.mark.fleet
def test_good_approvals_let_the_run_go_and_the_audit_trail_names_the_approver_and_key(fleet, keys, tmp_path):
    pid = build(fleet, "1.7.1", migration="irreversible")
    emergency = approved(keys, "bob", tmp_path / "emergency.json", "--patch", pid)
    irreversible = approved(keys, "bob", tmp_path / "irreversible.json", "--patch", pid, "--kind", "irreversible")
    audit = tmp_path / "audit.jsonl"
    # a freeze window now: the override is granted to the approver the signature proved
    schedule = tmp_path / "windows.yml"
    now = time.strftime("%H:%M", time.gmtime())
    schedule.write_text(f'---\nwindows:\n  - name: funding now\n    recurring: daily\n    at: ["{now}"]\n'
                        "    before: 30m\n    after: 30m\n")
    before = versions(fleet)
    files = {"preflight_approval_file": [str(emergency), str(irreversible)]}
    res = rollout(fleet, keys, audit, pid, "-e", json.dumps(files),
                  "-e", "preflight_accept_irreversible=true", "-e", f"preflight_schedule={schedule}", check=True)
    assert res.returncode == 0, res.stdout[-3000:]
    assert versions(fleet) == before
    updates = [r.get("change", {}) for r in records(audit) if r.get("kind") == "change_updated"]
    change = {k: v for u in updates for k, v in u.items() if v is not None}  # merged as the callback merges
    assert change["approver"] == "bob"
    assert change["approver_key_fingerprint"] == keys[1]["bob"]
    assert change["approval_kind"] == "emergency, irreversible"
    assert change["emergency_override"]["approver"] == "bob"
