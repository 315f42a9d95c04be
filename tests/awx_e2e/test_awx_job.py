"""What AWX does with this project, end to end, against a testbed fleet (issue 11).

AWX itself cannot run here (no container engine), so this test does what its project update and its
job runner do, with the real tools: a clean clone of the project; `ansible-galaxy collection install
-r <file> --collections-path <cache>` for collections/requirements.yml and requirements.yml, from the
project's root, as AWX's project_update.yml runs it (offline: Galaxy is not reachable, community.general
comes from the `ansible` package as from an execution environment); then the job: ansible-runner with
the project, an inventory without secrets, AWX's extra vars (awx_* and tower_*) and job environment
(JOB_ID, ANSIBLE_COLLECTIONS_PATHS), and the "exchange control" credential injected exactly as its
credential type's injectors say (awx/credential_type_exchange_control.yml, rendered with a sandboxed
Jinja2 as AWX renders them), with the PostgreSQL state store (a real server) holding the lease and the
audit trail. AWX's Cancel is ansible-runner's cancel callback, which kills the job's process group.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import ansible_runner
import psycopg
import pytest
import yaml
from jinja2.sandbox import ImmutableSandboxedEnvironment

from testbed import fleet as tb
from tests.integration.test_rolling_patch import build, versions
from tests.packaging.conftest import copy_checkout

pytestmark = pytest.mark.fleet

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CREDENTIAL_TYPE = REPO / "awx" / "credential_type_exchange_control.yml"
USER = "alice.ops"
TTL = 10


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


def clean_clone(dest: Path) -> Path:
    """The project as AWX's sync checks it out: the checkout's files as a clean clone plus uncommitted work has
    them (none in CI), without anything ignored (.venv, the make-setup link)."""
    copy_checkout(dest)
    assert not (dest / "collections" / "ansible_collections").exists()
    return dest


def project_update(project: Path, cache: Path) -> None:
    """AWX's project update (awx/playbooks/project_update.yml): from the project's root, `ansible-galaxy
    collection install -r collections/requirements.yml`, then `ansible-galaxy install -r requirements.yml`,
    with the project's collection cache as the collections path (AWX sets ANSIBLE_COLLECTIONS_PATHS, which
    ansible-core 2.19 no longer reads; ANSIBLE_COLLECTIONS_PATH is its name now, so both are set)."""
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATHS": str(cache), "ANSIBLE_COLLECTIONS_PATH": str(cache),
           "ANSIBLE_LOCAL_TEMP": str(cache.parent / "tmp"), "ANSIBLE_FORCE_COLOR": "false"}
    env.pop("ANSIBLE_CONFIG", None)
    # offline: Galaxy is not reachable here; community.general is already there, as in an execution environment
    # (`ansible-galaxy install`, roles and collections together, has no --offline; it has nothing to fetch)
    for cmd in (["collection", "install", "-r", "collections/requirements.yml", "--offline"],
                ["install", "-r", "requirements.yml"]):
        res = subprocess.run([str(BIN / "ansible-galaxy"), *cmd], cwd=project, env=env,
                             capture_output=True, text=True, timeout=300, check=False)
        assert res.returncode == 0, res.stdout + res.stderr


def render_credential(ctype: dict[str, Any], inputs: dict[str, str], private: Path) -> tuple[dict, dict]:
    """The credential's injectors rendered as AWX renders them: files written (0600) into the job's private
    folder and named as tower.filename.<id>; env and extra vars rendered from the inputs."""
    jinja = ImmutableSandboxedEnvironment()
    injectors = ctype["injectors"]
    filenames: dict[str, str] = {}
    for key, template in (injectors.get("file") or {}).items():
        name = key.split(".", 1)[1] if key.startswith("template.") else "template"
        path = private / f"cred_{name}"
        path.write_text(jinja.from_string(template).render(**inputs))
        path.chmod(0o600)
        filenames[name] = str(path)
    context = {**inputs, "tower": {"filename": filenames if len(filenames) > 1 or "template" not in filenames
                                   else filenames["template"]}}
    env = {k: jinja.from_string(v).render(**context) for k, v in (injectors.get("env") or {}).items()}
    extra = {k: jinja.from_string(v).render(**context) for k, v in (injectors.get("extra_vars") or {}).items()}
    return env, extra


def awx_inventory(fleet: tb.Fleet, dest: Path) -> Path:
    """The fleet as an AWX inventory: hosts and plain variables only; the admin token expression is the
    example inventory's (tokens come from the credential); no release key, no secret."""
    inv = Path(fleet.inventory_dir)
    dest.mkdir(parents=True)
    shutil.copy(inv / "hosts.yml", dest / "hosts.yml")
    plain = yaml.safe_load((inv / "group_vars" / "all" / "testbed.yml").read_text())
    plain.pop("exchange_release_pubkey")
    example = yaml.safe_load((REPO / "inventories" / "example" / "group_vars" / "all" / "main.yml").read_text())
    plain["exchange_admin_token"] = example["exchange_admin_token"]
    (dest / "group_vars" / "all").mkdir(parents=True)
    (dest / "group_vars" / "all" / "vars.yml").write_text("---\n" + yaml.safe_dump(plain))
    return dest


class Awx:
    """One AWX-like controller: the synced project, its collection cache, the credential, and jobs."""

    def __init__(self, root: Path, fleet: tb.Fleet, dsn: str) -> None:
        self.root, self.fleet, self.next_id = root, fleet, 1001
        self.project = clean_clone(root / "project")
        self.cache = root / "cache" / "requirements_collections"
        self.cache.mkdir(parents=True)
        self.inventory = awx_inventory(fleet, root / "inventory")
        pubkey = yaml.safe_load((Path(fleet.inventory_dir) / "group_vars" / "all" / "testbed.yml").read_text())
        self.tokens = {n.name: n.token() for n in fleet.nodes}
        self.audit_key = secrets.token_hex(32)
        self.dsn = dsn
        self.inputs = {"admin_tokens": yaml.safe_dump(self.tokens), "release_pubkey": pubkey["exchange_release_pubkey"],
                       "state_store_dsn": dsn, "audit_key": self.audit_key}
        self.ctype = yaml.safe_load(CREDENTIAL_TYPE.read_text())

    def job(self, playbook: str, survey: dict[str, Any], cancel_when: str | None = None,
            ) -> tuple[ansible_runner.Runner, dict[str, Any], str]:
        """Launch a job template: AWX's extra vars + survey answers, job environment and credential."""
        job_id, self.next_id = self.next_id, self.next_id + 1
        private = self.root / f"job_{job_id}"
        private.mkdir()
        shutil.copytree(self.project, private / "project", symlinks=True)
        cred_env, cred_extra = render_credential(self.ctype, self.inputs, private)
        extravars = {"awx_job_id": job_id, "tower_job_id": job_id, "awx_user_name": USER, "tower_user_name": USER,
                     "awx_user_id": 7, "awx_job_template_name": playbook, "awx_workflow_job_id": 500,
                     "awx_project_revision": _git("rev-parse", "HEAD", cwd=REPO).strip(),
                     "preflight_lock_ttl": TTL, **cred_extra, **survey}
        envvars = {"JOB_ID": str(job_id), "INVENTORY_ID": "3", "PROJECT_REVISION": extravars["awx_project_revision"],
                   # AWX's build_env: the project's collection cache first, then ansible.cfg's, then the defaults
                   "ANSIBLE_COLLECTIONS_PATHS": f"{self.cache}:./collections:~/.ansible/collections",
                   "ANSIBLE_COLLECTIONS_PATH": f"{self.cache}:./collections:~/.ansible/collections",
                   "ANSIBLE_FORCE_COLOR": "false", "ANSIBLE_NOCOLOR": "1",
                   "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **cred_env}
        seen: list[dict[str, Any]] = []
        state = {"cancel": False}

        def on_event(ev: dict[str, Any]) -> bool:
            seen.append(ev)
            if cancel_when and cancel_when in str((ev.get("event_data") or {}).get("task", "")) \
                    and ev.get("event") == "runner_on_start":
                state["cancel"] = True
            return True

        cleared = ("EXCHPATCH_RUN_ID", "EXCHPATCH_OPERATOR", "ANSIBLE_CONFIG", "EXCHPATCH_AUDIT_FILE")
        saved = {k: os.environ.pop(k) for k in cleared if k in os.environ}
        try:
            runner = ansible_runner.run(
                private_data_dir=str(private), project_dir=str(private / "project"), playbook=playbook,
                inventory=str(self.inventory), extravars=extravars, envvars=envvars, ident=str(job_id),
                quiet=True, event_handler=on_event, cancel_callback=lambda: state["cancel"], timeout=900,
                suppress_env_files=True)  # as AWX runs its jobs (AWX_RUNNER_OMIT_ENV_FILES)
        finally:
            os.environ.update(saved)
        stats = {}
        for ev in seen:
            if ev.get("event") == "playbook_on_stats":
                stats = (ev.get("event_data") or {}).get("artifact_data", {}).get("exchpatch", {})
        return runner, stats, runner.stdout.read()

    def audit_history(self) -> list[dict[str, Any]]:
        runner, stats, out = self.job("playbooks/audit.yml", {"audit_action": "history"})
        assert runner.status == "successful", out[-3000:]
        return stats["result"]["runs"]


def lease_expiry(dsn: str) -> list[dt.datetime]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [r[0] for r in conn.execute("SELECT expires_at FROM exchpatch_lease").fetchall()]


def primaries_ready(fleet: tb.Fleet) -> bool:
    per_shard: dict[int, list[str]] = {}
    for n in fleet.nodes:
        st = tb.node_status(n)
        if n.component == "matching-engine" and st.get("ha_role") == "primary" and st.get("ready"):
            per_shard.setdefault(n.shard, []).append(n.name)
    return sorted(per_shard) == list(range(fleet.shards)) and all(len(v) == 1 for v in per_shard.values())


@pytest.fixture(scope="module")
def awx(tmp_path_factory, pg_server):
    root = tmp_path_factory.mktemp("awx")
    db = pg_server.database("t_awx_e2e")
    with tb.running(root / "fleet", shards=2, wallets=2, net=60 + (os.getpid() + 40) % 90) as f:
        yield Awx(root, f, db.writer_dsn)


def test_the_project_resolves_only_after_the_project_update(awx):
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(awx.cache), "ANSIBLE_NOCOLOR": "1"}
    env.pop("ANSIBLE_CONFIG", None)

    def syntax(playbook: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "ansible-playbook"), "-i", "inventories/example", playbook, "--syntax-check"],
                              cwd=awx.project, env=env, capture_output=True, text=True, timeout=120, check=False)

    before = syntax("playbooks/rolling_patch.yml")
    assert before.returncode != 0 and "exchangeops.patching" in before.stdout + before.stderr
    project_update(awx.project, awx.cache)
    installed = awx.cache / "ansible_collections" / "exchangeops" / "patching"
    assert (installed / "MANIFEST.json").is_file() and not (installed / "testbed").exists()
    for playbook in sorted((awx.project / "playbooks").glob("*.yml")):
        res = syntax(f"playbooks/{playbook.name}")
        assert res.returncode == 0, (playbook.name, res.stdout[-2000:], res.stderr[-2000:])


def test_an_awx_cancel_mid_batch_then_a_rollout_and_a_faulty_release_as_awx_jobs(awx):
    # needs the project update of the test above (module order); run it here if that test was deselected
    if not (awx.cache / "ansible_collections" / "exchangeops" / "patching").is_dir():
        project_update(awx.project, awx.cache)
    fleet = awx.fleet
    good = build(fleet, "matching-engine", "1.6.0")
    survey = {"patch_id": good, "rolling_serial": "1,2,50%", "rolling_canary_bake": 2, "rolling_bake": 0,
              "rolling_on_failure": "rollback", "preflight_emergency": "false"}

    # 1. AWX's Cancel in the middle of a batch: ansible-runner kills the job's process group (SIGKILL)
    runner, stats, out = awx.job("playbooks/rolling_patch.yml", survey,
                                 cancel_when="Check the matching node's health gates")
    killed_at = dt.datetime.now(dt.UTC)
    assert runner.status == "canceled", (runner.status, out[-3000:])
    assert stats == {}  # killed: nothing ran after the kill, so nothing was published
    expiries = lease_expiry(awx.dsn)
    assert expiries, "the killed job's lease should be left behind"
    # renewed while the job lived, never after: it lapses within one TTL of the kill
    assert max(expiries) <= killed_at + dt.timedelta(seconds=TTL + 1), (expiries, killed_at)
    deadline = time.monotonic() + 10 * TTL
    while max(lease_expiry(awx.dsn)) >= dt.datetime.now(dt.UTC):
        assert time.monotonic() < deadline, "the killed job's lease was still renewed"
        time.sleep(0.5)

    # 2. the next job resumes: takes the lapsed lease over, skips what is done, finishes
    runner, stats, out = awx.job("playbooks/rolling_patch.yml", survey)
    assert runner.status == "successful", out[-4000:]
    assert "stale locks taken over: shard-" in out
    assert stats["outcome"] == "succeeded" and stats["converged_version"] == "1.6.0", stats
    assert (stats["operator"], stats["run_id"], stats["awx_job_id"], stats["awx_workflow_job_id"]) == (
        USER, "awx-job-1002", "1002", "500"), stats
    assert stats["failed_nodes"] == [] and stats["report"].endswith("audit_run=awx-job-1002")
    assert set(versions(fleet, "matching-engine").values()) == {"1.6.0"} and primaries_ready(fleet)

    # 3. a faulty release, the same way: caught, rolled back, and the stats say so with the evidence
    bad = build(fleet, "matching-engine", "1.6.1", fault="never-ready")
    runner, stats, out = awx.job("playbooks/rolling_patch.yml", {**survey, "patch_id": bad})
    assert runner.status == "failed", out[-3000:]
    assert stats["outcome"] == "rolled_back", stats
    assert stats["failed_nodes"] and {f["node"] for f in stats["failures"]} == set(stats["failed_nodes"])
    assert all(f["evidence"]["msg"] for f in stats["failures"]), stats["failures"]
    assert stats["converged_version"] == "1.6.0" and stats["run_id"] == "awx-job-1003"
    assert set(versions(fleet, "matching-engine").values()) == {"1.6.0"} and primaries_ready(fleet)

    # the audit trail (the state store's) names the AWX user and the jobs; the killed job is interrupted
    history = {r["run"]: r for r in awx.audit_history()}
    assert history["awx-job-1001"]["outcome"] == "interrupted", history.get("awx-job-1001")
    assert (history["awx-job-1002"]["outcome"], history["awx-job-1002"]["operator"]) == ("successful", USER)
    assert (history["awx-job-1003"]["outcome"], history["awx-job-1003"]["operator"]) == ("rolled_back", USER)

    # no secret of the credential in what AWX keeps and shows: job events, stdout, the stats artifacts
    password = psycopg.conninfo.conninfo_to_dict(awx.dsn)["password"]
    needles = [*awx.tokens.values(), awx.audit_key, password]
    kept = [p for p in awx.root.glob("job_*/artifacts/*/*") if p.name in ("stdout", "rc", "status", "fact_cache")]
    kept += list(awx.root.glob("job_*/artifacts/*/job_events/*.json"))
    assert len(kept) > 100, kept[:5]
    for path in kept:
        if path.is_file():
            text = path.read_text(errors="replace")
            assert not [n for n in needles if n in text], path
    with psycopg.connect(awx.dsn, autocommit=True) as conn:
        rows = json.dumps([r[0] for r in conn.execute("SELECT record FROM exchpatch_audit").fetchall()], default=str)
    assert not [n for n in needles if n in rows]
