"""Hostile release inputs: archives that try to write outside their folder, artifacts that are not
files, catalog entries that lie about the signed release, downgrades and a second release key.

Every case goes through the real modules (release_install on a node root, release_verify on the
controller), all in one ansible-playbook run so the corpus stays cheap: each task is expected to
fail with a one-line reason naming the problem, and nothing may be written outside the release
folder (no ``PWNED`` file anywhere, the node root unchanged).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from testbed.release import BuiltRelease, build_release, ensure_signing_key, sign, stage_release
from tests.integration.test_release_modules import snapshot
from tests.testbed.nodes import loopback_net

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
COMPONENT = "matching-engine"
MANIFEST = json.dumps({"component": COMPONENT, "version": "9.9.9", "fault": None}).encode()


def entry(kind: bytes, name: str, linkname: str = "",
          data: bytes | None = None) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, 0o644
    return info, data


def evil_tarball(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> tuple[str, str]:
    """A .tar.gz holding RELEASE.json then ``members``, written member by member as given; (path, sha256)."""
    with tarfile.open(path, "w:gz") as tar:
        for info, data in [entry(tarfile.REGTYPE, "RELEASE.json", data=MANIFEST), *members]:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return str(path), hashlib.sha256(path.read_bytes()).hexdigest()


def run_tasks(tasks: list[dict[str, Any]], workdir: Path) -> list[dict[str, Any]]:
    """Run ``tasks`` on localhost in one play, each allowed to fail; return each task's result in order."""
    play = [{"name": "Hostile release inputs", "hosts": "localhost", "gather_facts": False,
             "tasks": [{**t, "ignore_errors": True} for t in tasks]}]
    book = workdir / "hostile.yml"
    book.write_text(json.dumps(play))
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
           "ANSIBLE_NOCOLOR": "1"}
    res = subprocess.run([str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(book),
                          "-e", json.dumps({"ansible_python_interpreter": sys.executable})],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    try:
        done = json.loads(res.stdout)["plays"][0]["tasks"]
    except (ValueError, KeyError, IndexError) as e:
        raise AssertionError(f"no playbook result (rc={res.returncode}): {res.stdout}\n{res.stderr}") from e
    assert len(done) == len(tasks), res.stdout
    return [t["hosts"]["localhost"] for t in done]


# --------------------------------------------------------------------------- the corpus

# (case id, members of the archive, release_install options, what the one-line reason must say)
ARCHIVES: list[tuple[str, list[tuple[tarfile.TarInfo, bytes | None]], dict[str, Any], str]] = [
    ("symlink-chain", [entry(tarfile.SYMTYPE, "s", "."), entry(tarfile.SYMTYPE, "s/esc", ".."),
                       entry(tarfile.REGTYPE, "s/esc/PWNED", data=b"owned\n")], {},
     "member 's/esc' is a symlink to '..', outside the release"),
    ("later-link-turns-outward", [entry(tarfile.SYMTYPE, "up", "a/.."), entry(tarfile.SYMTYPE, "a", "."),
                                  entry(tarfile.REGTYPE, "up/PWNED", data=b"owned\n")], {},
     "member 'up/PWNED' lands outside the release through a symlink"),
    ("absolute-name", [entry(tarfile.REGTYPE, "/tmp/PWNED", data=b"owned\n")], {},
     "member '/tmp/PWNED' has an absolute path"),
    ("dotdot-name", [entry(tarfile.REGTYPE, "../../PWNED", data=b"owned\n")], {},
     "member '../../PWNED' contains '..'"),
    ("absolute-symlink", [entry(tarfile.SYMTYPE, "etc", "/etc")], {}, "member 'etc' is a symlink to '/etc'"),
    ("hard-link-outside", [entry(tarfile.LNKTYPE, "passwd", "/etc/passwd")], {},
     "member 'passwd' is a hard link to '/etc/passwd', outside the release"),
    ("link-replaces-folder", [entry(tarfile.REGTYPE, "lib/a.py", data=b"x\n"), entry(tarfile.SYMTYPE, "lib", ".")], {},
     "member 'lib' is a link replacing an earlier member"),
    ("character-device", [entry(tarfile.CHRTYPE, "dev/mem")], {}, "member 'dev/mem' is a device, FIFO"),
    ("block-device", [entry(tarfile.BLKTYPE, "dev/sda")], {}, "member 'dev/sda' is a device, FIFO"),
    ("fifo-member", [entry(tarfile.FIFOTYPE, "pipe")], {}, "member 'pipe' is a device, FIFO"),
    ("too-many-members", [entry(tarfile.REGTYPE, f"f{i}", data=b"") for i in range(20)], {"max_members": 10},
     "holds more than 10 members"),
    ("too-large", [entry(tarfile.REGTYPE, "blob", data=b"\0" * 8192)], {"max_unpacked_size": 4096},
     "unpacks to more than 4 KiB"),
]


@pytest.fixture
def signed(tmp_path: Path) -> dict[str, Any]:
    """Real signed releases: 1.4.2 (the fleet's) and 1.4.3 (fixes one CVE), and the pinned key."""
    out, keys, catalog = tmp_path / "artifacts", tmp_path / "keys", tmp_path / "catalog"
    releases: dict[str, BuiltRelease] = {
        "1.4.2": build_release(out, keys, catalog, COMPONENT, "1.4.2"),
        "1.4.3": build_release(out, keys, catalog, COMPONENT, "1.4.3", fixes=["CVE-2026-31337"]),
    }
    return {"releases": releases, "keys": keys, "pubkey": ensure_signing_key(keys)[1].read_text()}


def verify_task(built: BuiltRelease, pubkey: str, **extra: Any) -> dict[str, Any]:
    args = {"artifact": built.artifact, "sha256": built.sha256, "signature": built.signature, "public_key": pubkey,
            **extra}
    return {"name": "release_verify", "exchangeops.patching.release_verify": args}


def facts(version: str = "1.4.2", **changes: Any) -> dict[str, Any]:
    return {"component": COMPONENT, "version": version, "fixes": [], "migration": "none", "restart": "service",
            **changes}


def test_hostile_release_inputs_are_refused_and_write_nothing(tmp_path, signed):
    root = tmp_path / "node"
    (root / "data").mkdir(parents=True)
    (root / "data" / "ledger").write_text("client money\n")
    stage_release(root / "releases" / "1.4.2", COMPONENT, "1.4.2")
    (root / "current").symlink_to("releases/1.4.2")
    before = snapshot(root)
    pub, rel = signed["pubkey"], signed["releases"]

    cases: list[tuple[str, dict[str, Any], str]] = []
    for case, members, options, reason in ARCHIVES:
        path, digest = evil_tarball(tmp_path / f"{case}.tar.gz", members)
        cases.append((case, {"name": case, "exchangeops.patching.release_install": {
            "root": str(root), "version": "9.9.9", "artifact": path, "sha256": digest, "state": "current",
            **options}}, reason))

    fifo = tmp_path / "artifact-fifo.tar.gz"
    os.mkfifo(fifo)
    good = rel["1.4.3"]
    cases += [
        ("dev-zero-artifact-verify", verify_task(good, pub, artifact="/dev/zero"),
         "/dev/zero: is a character device, not a regular file"),
        ("dev-zero-artifact-install", {"name": "dev-zero-install", "exchangeops.patching.release_install": {
            "root": str(root), "version": "1.4.3", "artifact": "/dev/zero", "sha256": good.sha256}},
         "/dev/zero: is a character device, not a regular file"),
        ("fifo-artifact", verify_task(good, pub, artifact=str(fifo)),
         f"{fifo}: is a FIFO (named pipe), not a regular file"),
        ("oversized-artifact", verify_task(good, pub, max_artifact_size=1000),
         "over the 1000 bytes limit for a release artifact"),
    ]

    # The attack: a "hotfix" entry pointing at the real signed 1.4.2, claiming two CVEs.
    old, hotfix = rel["1.4.2"], "patches/matching-engine-1.9.9-hotfix.yml: matching-engine-1.9.9-hotfix"
    cases += [
        ("catalog-attack", verify_task(old, pub, entry=hotfix,
                                       expect=facts(fixes=["CVE-2026-31337", "CVE-2026-31338"])),
         f'{hotfix}: fixes ["CVE-2026-31337", "CVE-2026-31338"] in the catalog, but the signed manifest says []'),
        ("lying-component", verify_task(old, pub, entry="x.yml: p", expect=facts(component="wallet-signer")),
         'x.yml: p: component "wallet-signer" in the catalog, but the signed manifest says "matching-engine"'),
        ("lying-version", verify_task(old, pub, entry="x.yml: p", expect=facts(version="1.9.9")),
         'x.yml: p: version "1.9.9" in the catalog, but the signed manifest says "1.4.2"'),
        ("lying-fixes", verify_task(good, pub, entry="x.yml: p",
                                    expect=facts("1.4.3", fixes=["CVE-2026-31337", "CVE-2026-99999"])),
         'x.yml: p: fixes ["CVE-2026-31337", "CVE-2026-99999"] in the catalog, but the signed manifest says '
         '["CVE-2026-31337"]'),
        ("lying-migration", verify_task(old, pub, entry="x.yml: p", expect=facts(migration="forward_compatible")),
         'x.yml: p: migration "forward_compatible" in the catalog, but the signed manifest says "none"'),
        ("lying-restart", verify_task(old, pub, entry="x.yml: p", expect=facts(restart="none")),
         'x.yml: p: restart "none" in the catalog, but the signed manifest says "service"'),
        ("downgrade-not-allowed", verify_task(old, pub, entry="x.yml: p", expect=facts(),
                                              running={"me-0a": "1.4.3", "me-0b": "1.4.2"}),
         "x.yml: p: version 1.4.2 is older than the fleet runs (me-0a runs 1.4.3): a downgrade, not a patch; "
         "go back with playbooks/rollback.yml"),
        ("downgrade-without-reason", verify_task(old, pub, entry="x.yml: p", expect=facts(),
                                                 running={"me-0a": "1.4.3"}, allow_downgrade=True),
         "is allowed but no reason is given"),
    ]

    # A release signed with the right key but built before manifests carried the facts.
    unfacted = tmp_path / "matching-engine-1.4.1.tar.gz"
    _tarball, digest = evil_tarball(unfacted, [])
    priv = signed["keys"] / "release-signing.key"
    cases.append(("manifest-without-facts", {"name": "unfacted", "exchangeops.patching.release_verify": {
        "artifact": str(unfacted), "sha256": digest, "signature": sign(priv, unfacted.read_bytes()),
        "public_key": pub, "entry": "x.yml: p", "expect": facts("9.9.9")}},
        "lacks fixes, migration, restart, so the catalog entry cannot be checked against it; rebuild the release "
        "with the release builder"))

    # One host of the fleet pins another key.
    other = ensure_signing_key(tmp_path / "other-keys")[1].read_text()
    cases.append(("second-pubkey", verify_task(good, pub, fleet_keys={"me-0a": pub, "me-0b": pub, "wallet-0": other}),
                  "exchange_release_pubkey: wallet-0 pins a different release key than the rest of the fleet"))

    results = run_tasks([task for _case, task, _reason in cases], tmp_path)
    problems = []
    for (case, _task, reason), result in zip(cases, results, strict=True):
        msg = str(result.get("msg", ""))
        if not result.get("failed") or reason not in msg or "\n" in msg or "Traceback" in msg:
            problems.append(f"{case}: failed={result.get('failed')} msg={msg!r}")
    assert not problems, "\n".join(problems)
    assert len(cases) >= 25
    assert snapshot(root) == before
    assert not list(tmp_path.parent.rglob("PWNED"))
    assert not Path("/tmp/PWNED").exists()


def test_a_truthful_entry_and_an_allowed_downgrade_pass(tmp_path, signed):
    """The same checks let the honest cases through: an agreeing entry, and a downgrade allowed with a reason."""
    pub, rel = signed["pubkey"], signed["releases"]
    results = run_tasks([
        verify_task(rel["1.4.3"], pub, entry="x.yml: p", expect=facts("1.4.3", fixes=["CVE-2026-31337"]),
                    running={"me-0a": "1.4.2"}, fleet_keys={"me-0a": pub, "wallet-0": pub + "\n"}),
        verify_task(rel["1.4.2"], pub, entry="x.yml: p", expect=facts(), running={"me-0a": "1.4.3"},
                    allow_downgrade=True, reason="1.4.3 miscomputes fees; approved by risk"),
    ], tmp_path)
    assert [r.get("failed", False) for r in results] == [False, False], results
    assert results[0]["manifest"]["fixes"] == ["CVE-2026-31337"] and results[0]["downgrade"] is False
    assert results[1]["downgrade"] is True and results[1]["downgrade_from"] == {"me-0a": "1.4.3"}


# --------------------------------------------------------------------------- through preflight, on a testbed fleet


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    from testbed import fleet as tb

    with tb.running(tmp_path_factory.mktemp("hostile-release"), shards=1, wallets=1,
                    net=loopback_net("hostile-release")) as f:
        yield f


def rolling_patch(f, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    return subprocess.run([str(BIN / "ansible-playbook"), "-i", f.inventory_dir,
                           str(REPO / "playbooks" / "rolling_patch.yml"), *extra],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=400, check=False)


def downgrade_approval(folder: Path, patch_id: str, operator: str) -> tuple[Path, Path]:
    """(allowed_signers, approval file): bob, with a fresh ed25519 key, approves ``patch_id``'s downgrade."""
    import datetime as dt

    from ansible_collections.exchangeops.patching.plugins.module_utils import _approval

    key = folder / "bob"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bob", "-f", str(key)], check=True)
    signers = folder / "allowed_signers"
    pub = " ".join((folder / "bob.pub").read_text().split()[:2])
    signers.write_text(f'bob namespaces="exchpatch-approval" {pub}\n')
    now = dt.datetime.now(dt.UTC)
    doc = _approval.make_document("downgrade", patch_id, operator, "1.4.2 miscomputes fees",
                                  now + dt.timedelta(hours=1), now).canonical()
    approval = folder / "downgrade.json"
    approval.write_text(_approval.approval_file_text(doc, _approval.sign(doc, str(key))))
    return signers, approval


@pytest.mark.fleet
def test_preflight_refuses_lying_catalog_downgrade_and_second_key_touching_nothing(fleet, tmp_path):
    import yaml

    from testbed import fleet as tb

    root = Path(fleet.root)

    def state() -> dict[str, Any]:
        return {"versions": {n.name: tb.node_status(n).get("version") for n in fleet.nodes},
                "current": {n.name: os.readlink(Path(n.root) / "current") for n in fleet.nodes},
                "locks": sorted(p.name for p in (root / "locks").glob("*.lock"))}

    before = state()
    assert set(before["versions"].values()) == {"1.4.2", "2.3.0"}

    # The attack: a "hotfix" entry for the real signed 1.4.2 the fleet runs, claiming two CVEs.
    real = yaml.safe_load((root / "catalog" / "baseline" / "matching-engine-1.4.2.yml").read_text())
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    lie = {**real, "id": "matching-engine-1.9.9-hotfix", "fixes": ["CVE-2026-31337", "CVE-2026-31338"]}
    (catalog / "matching-engine-1.9.9-hotfix.yml").write_text("---\n" + yaml.safe_dump(lie, sort_keys=False))
    res = rolling_patch(fleet, "-e", "patch_id=matching-engine-1.9.9-hotfix", "-e", f"preflight_catalog={catalog}")
    assert res.returncode != 0
    assert "matching-engine-1.9.9-hotfix: fixes [" in res.stdout, res.stdout[-3000:]
    assert "in the catalog, but the signed manifest says []" in res.stdout
    assert state() == before

    # A downgrade below the running 1.4.2: refused, unless allowed with a reason (checked in --check).
    old = build_release(root / "releases", root / "keys", root / "catalog", COMPONENT, "1.4.1").id
    res = rolling_patch(fleet, "-e", f"patch_id={old}")
    assert res.returncode != 0
    assert "version 1.4.1 is older than the fleet runs" in res.stdout and "playbooks/rollback.yml" in res.stdout, \
        res.stdout[-3000:]
    assert state() == before
    res = rolling_patch(fleet, "-e", f"patch_id={old}", "-e", "preflight_allow_downgrade=true")
    assert res.returncode != 0 and "no reason is given" in res.stdout, res.stdout[-3000:]
    allowed = ("-e", f"patch_id={old}", "-e", "preflight_allow_downgrade=true", "-e", "preflight_operator=alice",
               "-e", "preflight_reason=1.4.2 miscomputes fees")
    res = rolling_patch(fleet, *allowed)
    assert res.returncode != 0 and "needs an approval of kind downgrade" in res.stdout, res.stdout[-3000:]
    assert state() == before
    # ... and signed by someone else (docs/approvals.md): then it may go (checked in --check)
    signers, approval = downgrade_approval(tmp_path, old, "alice")
    res = rolling_patch(fleet, *allowed, "-e", f"exchange_allowed_signers={signers}",
                        "-e", f"preflight_approval_file={approval}", "--check")
    assert res.returncode == 0, res.stdout[-3000:]
    assert state() == before

    # One wallet node pins another release key: the whole run stops, naming it.
    wallet = next(n.name for n in fleet.nodes if n.component == "wallet-signer")
    host_vars = Path(fleet.inventory_dir) / "host_vars"
    host_vars.mkdir(exist_ok=True)
    other = ensure_signing_key(tmp_path / "other-keys")[1].read_text()
    (host_vars / f"{wallet}.yml").write_text("---\n" + yaml.safe_dump({"exchange_release_pubkey": other}))
    try:
        new = build_release(root / "releases", root / "keys", root / "catalog", COMPONENT, "1.4.3").id
        res = rolling_patch(fleet, "-e", f"patch_id={new}")
    finally:
        (host_vars / f"{wallet}.yml").unlink()
    assert res.returncode != 0
    assert f"exchange_release_pubkey: {wallet} pins a different release key" in res.stdout, res.stdout[-3000:]
    assert state() == before
