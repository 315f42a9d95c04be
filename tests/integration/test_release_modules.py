"""release_verify and release_install run for real through `ansible` ad-hoc on testbed node roots.

Artifacts are real signed releases from testbed.release; node roots come from
tests/testbed/nodes.make_node (releases/<v>, current -> releases/<v>, data/, etc/), and one
test starts the node to show that it runs whatever `current` points to after a restart.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed.release import BuiltRelease, build_release, ensure_signing_key, stage_release
from tests.testbed.nodes import NodeProc, http, make_node

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
COMPONENT = "matching-engine"
MARKETS = ["BTC-USD", "ETH-USD"]


def ansible(module: str, args: dict[str, Any], *, check: bool = False, diff: bool = False) -> dict[str, Any]:
    """Run one module on localhost with the repo's ansible.cfg; return its result (with `failed`)."""
    cmd = [str(BIN / "ansible"), "localhost", "-i", "localhost,", "-c", "local",
           "-m", f"exchangeops.patching.{module}", "-a", json.dumps(args),
           "-e", json.dumps({"ansible_python_interpreter": sys.executable})]
    if check:
        cmd.append("--check")
    if diff:
        cmd.append("--diff")
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
           "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1", "ANSIBLE_NOCOLOR": "1"}
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    try:
        out = json.loads(res.stdout)
        result = out["plays"][0]["tasks"][0]["hosts"]["localhost"]
    except (ValueError, KeyError, IndexError) as e:
        raise AssertionError(f"no module result (rc={res.returncode}): {res.stdout}\n{res.stderr}") from e
    assert res.returncode == (2 if result.get("failed") else 0), res.stdout + res.stderr
    return result


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` (hidden ones too) with its link target or content hash."""
    seen: dict[str, str] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                seen[rel] = "-> " + os.readlink(path)
            elif path.is_dir():
                seen[rel] = "dir"
            else:
                seen[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return seen


@pytest.fixture
def work(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.fixture
def dirs(work: Path) -> dict[str, Path]:
    return {"out": work / "artifacts", "keys": work / "keys", "catalog": work / "catalog"}


@pytest.fixture
def pubkey(dirs: dict[str, Path]) -> str:
    return ensure_signing_key(dirs["keys"])[1].read_text()


def build(dirs: dict[str, Path], version: str, component: str = COMPONENT) -> BuiltRelease:
    return build_release(dirs["out"], dirs["keys"], dirs["catalog"], component, version)


def node(work: Path, version: str = "1.0.0", name: str = "me-rel") -> NodeProc:
    made = make_node(work / "nodes", name, COMPONENT, version, shard=0, markets=MARKETS)
    (made.root / "data" / "ledger.keep").write_text("client money lives here\n")
    return made


def run_install(args: dict[str, Any], **flags: bool) -> dict[str, Any]:
    return ansible("release_install", args, **flags)


def args_for(n: NodeProc, version: str, built: BuiltRelease | None = None, **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"root": str(n.root), "version": version, **kw}
    if built is not None:
        args.update(artifact=built.artifact, sha256=built.sha256)
    return args


def health_version(n: NodeProc) -> str:
    status, body = http("GET", n.url + "/v1/health")
    assert status == 200, body
    return body["version"]


# --------------------------------------------------------------------------- release_verify


def test_verify_good_artifact_passes(dirs, pubkey):
    built = build(dirs, "1.1.0")
    res = ansible("release_verify", {"artifact": Path(built.artifact).as_uri(), "sha256": built.sha256,
                                     "signature": built.signature, "public_key": pubkey})
    assert not res.get("failed"), res
    assert res["changed"] is False
    assert res["verified"] is True
    assert res["artifact"] == built.artifact
    assert res["sha256"] == built.sha256
    # check mode is read-only and answers the same
    res = ansible("release_verify", {"artifact": os.path.relpath(built.artifact, REPO), "base_dir": str(REPO),
                                     "sha256": built.sha256, "signature": built.signature, "public_key": pubkey},
                  check=True)
    assert res["verified"] is True and res["artifact"] == built.artifact


def test_verify_wrong_sha256_fails_and_changes_nothing(dirs, pubkey):
    built, other = build(dirs, "1.1.0"), build(dirs, "1.2.0")
    before = snapshot(dirs["out"])
    res = ansible("release_verify", {"artifact": built.artifact, "sha256": other.sha256,
                                     "signature": built.signature, "public_key": pubkey})
    assert res["failed"] is True and res["verified"] is False
    assert res["msg"] == (f"{built.artifact}: sha256 does not match the catalog (expected {other.sha256[:12]}…, "
                          f"got {built.sha256[:12]}…); rebuild the release or fix the catalog entry")
    assert snapshot(dirs["out"]) == before


def test_verify_bad_signature_fails_and_changes_nothing(dirs, pubkey, work):
    built, other = build(dirs, "1.1.0"), build(dirs, "1.2.0")
    before = snapshot(dirs["out"])
    res = ansible("release_verify", {"artifact": built.artifact, "sha256": built.sha256,
                                     "signature": other.signature, "public_key": pubkey})
    assert res["failed"] is True
    assert res["msg"] == (f"{built.artifact}: ed25519 signature does not verify against the pinned release key; "
                          "re-sign the release or check exchange_release_pubkey")
    foreign = ensure_signing_key(work / "foreign-keys")[1].read_text()
    res = ansible("release_verify", {"artifact": built.artifact, "sha256": built.sha256,
                                     "signature": built.signature, "public_key": foreign})
    assert res["failed"] is True and "signature does not verify" in res["msg"]
    assert snapshot(dirs["out"]) == before


def test_verify_returns_the_signed_manifest_and_binds_the_catalog_to_it(dirs, pubkey):
    built = build_release(dirs["out"], dirs["keys"], dirs["catalog"], COMPONENT, "1.1.0", fixes=["CVE-2026-31337"])
    facts = {"component": COMPONENT, "version": "1.1.0", "fixes": ["CVE-2026-31337"], "migration": "none",
             "restart": "service"}
    args = {"artifact": built.artifact, "sha256": built.sha256, "signature": built.signature, "public_key": pubkey,
            "entry": "catalog/x.yml: matching-engine-1.1.0"}
    res = ansible("release_verify", {**args, "expect": facts, "running": {"me-0a": "1.0.0"}})
    assert not res.get("failed"), res
    assert {k: res["manifest"][k] for k in facts} == facts
    assert (res["downgrade"], res["downgrade_from"]) == (False, {})
    res = ansible("release_verify", {**args, "expect": {**facts, "version": "1.2.0", "restart": "system"}})
    assert res["failed"] is True and res["verified"] is False and res["mismatch"] == ["version", "restart"]
    assert res["msg"].startswith('catalog/x.yml: matching-engine-1.1.0: version "1.2.0" in the catalog, but the '
                                 'signed manifest says "1.1.0"; restart "system" in the catalog, but the signed '
                                 'manifest says "service"; ')


def test_verify_refuses_remote_artifacts(pubkey):
    res = ansible("release_verify", {"artifact": "https://releases.example.com/me-1.1.0.tar.gz", "sha256": "0" * 64,
                                     "signature": "AA==", "public_key": pubkey})
    assert res["failed"] is True
    assert "only local artifacts are supported: stage it on the controller first" in res["msg"]


# --------------------------------------------------------------------------- release_install


def test_install_switch_restart_and_rollback_on_a_running_node(work, dirs, nodes):
    n = node(work)
    built = build(dirs, "1.1.0")
    nodes.append(n.start())
    n.wait_up()
    assert health_version(n) == "1.0.0"

    n.stop()
    data_before = snapshot(n.root / "data")
    res = run_install(args_for(n, "1.1.0", built, state="current"))
    assert not res.get("failed"), res
    assert res["changed"] is True and res["unpacked"] is True and res["switched"] is True
    assert (res["current"], res["previous"], res["rollback_to"]) == ("1.1.0", "1.0.0", "1.0.0")
    assert res["releases"] == ["1.0.0", "1.1.0"] and res["pruned"] == []
    assert os.readlink(n.root / "current") == "releases/1.1.0"
    assert snapshot(n.root / "data") == data_before
    assert [p for p in os.listdir(n.root / "releases") if p.startswith(".")] == []

    n.start()
    n.wait_up()
    assert health_version(n) == "1.1.0"

    # idempotent: the same task again changes nothing, even while the node runs
    again = run_install(args_for(n, "1.1.0", built, state="current"))
    assert again["changed"] is False, again
    assert (again["current"], again["previous"], again["rollback_to"]) == ("1.1.0", "1.1.0", "1.0.0")

    # rollback: switch back to the kept release, no artifact needed
    n.stop()
    data_before = snapshot(n.root / "data")
    back = run_install(args_for(n, "1.0.0", state="current"))
    assert back["changed"] is True and back["unpacked"] is False and back["switched"] is True, back
    assert (back["current"], back["previous"], back["rollback_to"]) == ("1.0.0", "1.1.0", "1.1.0")
    assert back["releases"] == ["1.0.0", "1.1.0"]
    assert os.readlink(n.root / "current") == "releases/1.0.0"
    assert snapshot(n.root / "data") == data_before
    n.start()
    n.wait_up()
    assert health_version(n) == "1.0.0"
    assert run_install(args_for(n, "1.0.0", state="current"))["changed"] is False


def test_present_unpacks_beside_current_without_switching(work, dirs):
    n = node(work)
    built = build(dirs, "1.1.0")
    res = run_install(args_for(n, "1.1.0", built))
    assert res["changed"] is True and res["unpacked"] is True and res["switched"] is False
    assert (res["current"], res["previous"]) == ("1.0.0", "1.0.0")
    assert os.readlink(n.root / "current") == "releases/1.0.0"
    assert (n.root / "releases" / "1.1.0" / "bin" / "exchnode").is_file()
    assert run_install(args_for(n, "1.1.0", built))["changed"] is False


def test_check_mode_reports_changes_and_touches_nothing(work, dirs):
    n = node(work)
    built = build(dirs, "1.1.0")
    before = snapshot(n.root)
    res = run_install(args_for(n, "1.1.0", built, state="current"), check=True, diff=True)
    assert not res.get("failed"), res
    assert res["changed"] is True and res["unpacked"] is True and res["switched"] is True
    assert (res["current"], res["previous"]) == ("1.1.0", "1.0.0")
    assert res["releases"] == ["1.0.0", "1.1.0"]
    assert res["diff"]["before"]["current"] == "releases/1.0.0"
    assert res["diff"]["after"]["current"] == "releases/1.1.0"
    assert snapshot(n.root) == before
    # a bad artifact is caught in check mode too
    res = run_install(args_for(n, "1.2.0", built, state="current"), check=True)
    assert res["failed"] is True and "says version '1.1.0', not '1.2.0'" in res["msg"]
    assert snapshot(n.root) == before


def test_diff_shows_the_current_target_and_releases(work, dirs):
    n = node(work)
    built = build(dirs, "1.1.0")
    res = run_install(args_for(n, "1.1.0", built, state="current"), diff=True)
    assert res["diff"]["before"] == {"current": "releases/1.0.0", "releases": ["1.0.0"]}
    assert res["diff"]["after"] == {"current": "releases/1.1.0", "releases": ["1.0.0", "1.1.0"]}
    unchanged = run_install(args_for(n, "1.1.0", built, state="current"), diff=True)
    assert unchanged["changed"] is False
    assert unchanged["diff"]["before"] == unchanged["diff"]["after"]


def test_wrong_sha256_on_the_node_fails_and_changes_nothing(work, dirs):
    n = node(work)
    built, other = build(dirs, "1.1.0"), build(dirs, "1.2.0")
    before = snapshot(n.root)
    res = run_install({"root": str(n.root), "version": "1.1.0", "artifact": built.artifact,
                       "sha256": other.sha256, "state": "current"})
    assert res["failed"] is True
    assert res["msg"].startswith(f"{built.artifact}: sha256 does not match the catalog (expected {other.sha256[:12]}")
    assert snapshot(n.root) == before


def test_archive_for_another_version_or_component_is_refused(work, dirs):
    n = node(work)
    built = build(dirs, "1.1.0")
    wallet = build(dirs, "1.2.0", component="wallet-signer")
    before = snapshot(n.root)
    res = run_install(args_for(n, "1.3.0", built, state="current"))
    assert res["failed"] is True
    assert res["msg"] == (f"{built.artifact}: RELEASE.json says version '1.1.0', not '1.3.0'; pass the version the "
                          "artifact was built for, or the artifact of that version")
    res = run_install(args_for(n, "1.2.0", wallet, state="current"))
    assert res["failed"] is True
    assert "says component 'wallet-signer', not 'matching-engine'" in res["msg"]
    assert snapshot(n.root) == before


def test_install_caps_are_options_and_leave_no_private_copy(work, dirs):
    n = node(work)
    built = build(dirs, "1.1.0")
    before = snapshot(n.root)
    res = run_install(args_for(n, "1.1.0", built, state="current", max_members=3))
    assert res["failed"] is True
    assert res["msg"] == (f"{built.artifact}: holds more than 3 members; a release this big is not expected: rebuild "
                          "the release, or raise max_members if it is right")
    res = run_install(args_for(n, "1.1.0", built, state="current", max_artifact_size=100))
    assert res["failed"] is True and "over the 100 bytes limit for a release artifact" in res["msg"]
    assert snapshot(n.root) == before  # the private copy went with the failure


def test_switch_to_a_release_not_on_the_node_needs_the_artifact(work):
    n = node(work)
    before = snapshot(n.root)
    res = run_install(args_for(n, "0.9.0", state="current"))
    assert res["failed"] is True
    assert res["msg"] == (f"{n.root}/releases/0.9.0: is not unpacked and no artifact was given; pass artifact and "
                          "sha256 to install it (without them only a release still on the node can be switched to)")
    assert snapshot(n.root) == before


def test_prune_keeps_current_previous_and_keep_newest(work, dirs):
    n = node(work, "1.4.0")
    for v in ("1.0.0", "1.1.0", "1.2.0", "1.3.0"):
        stage_release(n.root / "releases" / v, COMPONENT, v)
    built = build(dirs, "1.5.0")
    data_before = snapshot(n.root / "data")

    res = run_install(args_for(n, "1.5.0", built, state="current", keep=1), diff=True)
    assert res["changed"] is True
    assert (res["current"], res["previous"]) == ("1.5.0", "1.4.0")
    assert res["pruned"] == ["1.0.0", "1.1.0", "1.2.0"]
    assert res["releases"] == ["1.3.0", "1.4.0", "1.5.0"]
    assert res["diff"]["before"]["releases"] == ["1.0.0", "1.1.0", "1.2.0", "1.3.0", "1.4.0"]
    assert sorted(os.listdir(n.root / "releases")) == ["1.3.0", "1.4.0", "1.5.0"]
    assert snapshot(n.root / "data") == data_before

    again = run_install(args_for(n, "1.5.0", built, state="current", keep=1))
    assert again["changed"] is False and again["pruned"] == []

    # after a rollback the release rolled back from stays, and keep=0 leaves only the two of them
    back = run_install(args_for(n, "1.4.0", state="current", keep=0))
    assert (back["current"], back["previous"], back["pruned"]) == ("1.4.0", "1.5.0", ["1.3.0"])
    assert sorted(os.listdir(n.root / "releases")) == ["1.4.0", "1.5.0"]
    assert snapshot(n.root / "data") == data_before
