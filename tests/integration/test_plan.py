"""`exchpatch plan` end to end: CLI -> ansible-runner -> playbooks/plan.yml -> patch_plan module.

Offline planning uses a facts file; live planning reads every node's /v1/status on a
real testbed through the node_info module.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
FEEDS = sorted(str(p) for p in (REPO / "feeds").iterdir() if p.is_file())
CATALOG = str(REPO / "patches")
REAL_OSV = REPO / "tests" / "fixtures" / "osv-real"
NOW = "2026-11-24T00:00:00Z"
FACTS = {"nodes": [
    {"name": "match-0a", "component": "matching-engine", "version": "1.4.2", "criticality": "very_high",
     "exposure": "controlled"},
    {"name": "match-0b", "component": "matching-engine", "version": "1.4.2"},
    {"name": "wallet-1", "component": "wallet-signer", "version": "2.3.0", "exposure": "small"},
]}


def exchpatch(*args: str, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "exchpatch"), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, check=False)


def feed_args(feeds: list[str]) -> list[str]:
    return [a for f in feeds for a in ("--feed", f)]


@pytest.fixture
def facts(tmp_path: Path) -> Path:
    path = tmp_path / "facts.json"
    path.write_text(json.dumps(FACTS))
    return path


def test_offline_plan_json_schema_and_order(facts):
    res = exchpatch("plan", *feed_args(FEEDS), "--catalog", CATALOG, "--facts", str(facts), "--now", NOW, "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    plan = json.loads(res.stdout)  # nothing but one JSON document on stdout
    assert plan["generated_at"] == NOW
    assert plan["patches"], plan
    for p in plan["patches"]:
        assert {"id", "component", "version", "class", "due", "score", "targets", "cves", "explanation"} <= set(p)
        assert p["class"] in ("immediate", "out_of_cycle", "scheduled", "defer")
        for c in p["cves"]:
            assert {"id", "kev", "epss", "cvss", "exploitation", "automatable", "technical_impact",
                    "ssvc_deployer", "ssvc_cisa", "due"} <= set(c)
        for e in p["explanation"]:
            assert set(e) == {"factor", "value", "source", "effect"}
    ranks = {"immediate": 0, "out_of_cycle": 1, "scheduled": 2, "defer": 3}
    classes = [ranks[p["class"]] for p in plan["patches"]]
    assert classes == sorted(classes)
    # the KEV-listed, network-reachable order-book flaw in the sample feeds leads the plan
    top = plan["patches"][0]
    assert top["component"] == "matching-engine"
    assert "CVE-2026-31337" in [c["id"] for c in top["cves"]]
    assert top["targets"] == ["match-0a", "match-0b"]


def test_offline_plan_text_is_a_table(facts):
    res = exchpatch("plan", *feed_args(FEEDS), "--catalog", CATALOG, "--facts", str(facts), "--now", NOW)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[2].split()[:3] == ["RANK", "PATCH", "COMPONENT"]
    assert "CVE-2026-31337" in res.stdout


def test_patch_already_applied_everywhere_is_not_needed(tmp_path):
    facts = tmp_path / "facts.json"
    facts.write_text(json.dumps({"nodes": [
        {"name": "match-0a", "component": "matching-engine", "version": "9.9.9"},
        {"name": "wallet-1", "component": "wallet-signer", "version": "2.3.0"},
    ]}))
    res = exchpatch("plan", *feed_args(FEEDS), "--catalog", CATALOG, "--facts", str(facts), "--now", NOW, "--json")
    plan = json.loads(res.stdout)
    assert all(p["component"] != "matching-engine" for p in plan["patches"])
    assert {n["component"] for n in plan["not_needed"]} >= {"matching-engine"}


def _bad_catalog(tmp_path: Path, drop: str | None = None, **override) -> str:
    folder = tmp_path / "catalog"
    shutil.copytree(CATALOG, folder)
    entry = sorted(folder.glob("*.yml"))[0]
    lines = entry.read_text().splitlines()
    if drop:
        lines = [ln for ln in lines if not ln.startswith(f"{drop}:")]
    for key, value in override.items():
        lines = [f"{key}: {value}" if ln.startswith(f"{key}:") else ln for ln in lines]
    entry.write_text("\n".join(lines) + "\n")
    return str(folder)


BAD_INPUTS = {
    "feed is not JSON or CSV": (lambda t: (["--feed", _write(t, "junk.json", "{not json")], CATALOG), "junk.json"),
    "unknown feed format": (lambda t: (["--feed", _write(t, "odd.json", '{"hello": "world"}')], CATALOG), "odd.json"),
    "bad CVSS vector": (lambda t: (["--feed", _write(t, "nvd.json", json.dumps(_nvd_bad_vector()))], CATALOG),
                        "CVSS:3.1/AV:X"),
    "catalog entry missing a field": (lambda t: (feed_args(FEEDS), _bad_catalog(t, drop="released_at")), "released_at"),
    "catalog entry unknown component": (lambda t: (feed_args(FEEDS), _bad_catalog(t, component="order-gateway")),
                                        "order-gateway"),
    "missing feed file": (lambda t: (["--feed", str(t / "absent.json")], CATALOG), "absent.json"),
}


def _write(tmp: Path, name: str, text: str) -> str:
    path = tmp / name
    path.write_text(text)
    return str(path)


def _nvd_bad_vector() -> dict:
    return {"resultsPerPage": 1, "startIndex": 0, "totalResults": 1, "format": "NVD_CVE", "version": "2.0",
            "timestamp": "2026-11-20T00:00:00.000", "vulnerabilities": [{"cve": {
                "id": "CVE-2026-55555", "published": "2026-11-01T00:00:00.000",
                "lastModified": "2026-11-02T00:00:00.000",
                "vulnStatus": "Analyzed", "descriptions": [{"lang": "en", "value": "sample"}],
                "metrics": {"cvssMetricV31": [{"source": "nvd@nist.gov", "type": "Primary", "cvssData": {
                    "version": "3.1", "vectorString": "CVSS:3.1/AV:X/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H",
                    "baseScore": 9.8, "baseSeverity": "CRITICAL"}}]}}}]}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_naming_the_thing_and_writes_no_plan(case, tmp_path, facts):
    make, needle = BAD_INPUTS[case]
    feeds, catalog = make(tmp_path)
    res = exchpatch("plan", *feeds, "--catalog", catalog, "--facts", str(facts), "--now", NOW, "--json")
    assert res.returncode == 2, (case, res.returncode, res.stdout, res.stderr)
    doc = json.loads(res.stdout)
    assert set(doc) == {"error"}, doc
    assert needle in doc["error"], doc["error"]


def test_bad_now_and_bad_facts_exit_2(tmp_path, facts):
    res = exchpatch("plan", *feed_args(FEEDS), "--catalog", CATALOG, "--facts", str(facts), "--now", "yesterday")
    assert res.returncode == 2 and "yesterday" in res.stderr
    bad = tmp_path / "bad-facts.json"
    bad.write_text(json.dumps({"nodes": [{"name": "x", "component": "order-gateway", "version": "1.0.0"}]}))
    res = exchpatch("plan", *feed_args(FEEDS), "--catalog", CATALOG, "--facts", str(bad), "--now", NOW)
    assert res.returncode == 2 and "unknown component 'order-gateway'" in res.stderr


@pytest.mark.fleet
def test_live_plan_reads_every_node(tmp_path):
    from testbed import fleet as tb
    from tests.testbed.nodes import loopback_net

    root = tmp_path / "tb"
    f = tb.up(root, shards=1, wallets=1, net=loopback_net("plan"))
    try:
        res = exchpatch("plan", *feed_args(FEEDS), "--catalog", CATALOG, "--inventory", f.inventory_dir,
                        "--now", NOW, "--json")
        assert res.returncode == 0, res.stdout + res.stderr
        plan = json.loads(res.stdout)
        me = [p for p in plan["patches"] if p["component"] == "matching-engine"]
        assert me and set(me[0]["targets"]) == {"match-0a", "match-0b"}
        tokens = [n.token() for n in f.nodes]
        assert not any(t in res.stdout + res.stderr for t in tokens)

        # Exposure, live: every node's running-release SBOM (GET /v1/sbom through fleet_info) against a real
        # OSV record. The testbed's baseline ships OpenSSH 1:9.6p1-3ubuntu13 (regreSSHion); the 1.4.3 release
        # built here upgrades it without listing the CVE, so the fixes check derives it; no wallet patch exists.
        from testbed.release import build_release

        catalog = tmp_path / "catalog"
        build_release(root / "releases", root / "keys", catalog, "matching-engine", "1.4.3", fixes=["CVE-2026-31337"])
        cache = tmp_path / "cache"
        exposure = exchpatch("exposure", "--inventory", f.inventory_dir,
                             "--osv", str(REAL_OSV / "UBUNTU-CVE-2024-6387.json"),
                             "--osv", str(REAL_OSV / "DEBIAN-CVE-2024-3094.json"), "--catalog", str(catalog),
                             "--cache", str(cache), "--now", NOW, "--json")
        assert exposure.returncode == 0, exposure.stdout + exposure.stderr
        assert not any(t in exposure.stdout + exposure.stderr for t in tokens)
        doc = json.loads(exposure.stdout)
        regresshion = doc["cves"]["CVE-2024-6387"]
        assert sorted(regresshion["nodes"]) == ["match-0a", "match-0b", "wallet-1"]
        assert regresshion["fixed_by"] == ["matching-engine-1.4.3"]
        assert "CVE-2024-3094" not in doc["cves"]  # noble's xz-utils 5.6.1+really5.4.5 is not the backdoor
        assert json.loads((cache / "exposure.json").read_text()) == doc
        res = exchpatch("plan", *feed_args(FEEDS), "--catalog", str(catalog), "--inventory", f.inventory_dir,
                        "--exposure", str(cache / "exposure.json"), "--now", NOW, "--json")
        assert res.returncode == 0, res.stdout + res.stderr
        plan = json.loads(res.stdout)
        assert [m["nodes"] for m in plan["needs_mitigation"] if m["cve"] == "CVE-2024-6387"] == [["wallet-1"]]

        # feeds sync with the fleet's inventory asks OSV about every package the nodes run (their SBOMs, read
        # live; one query per distinct release), distro packages by ecosystem and version (osv.dev#2842)
        from tests.feeds.server import FeedServer

        osv = FeedServer()
        try:
            osv.data.osv = {"UBUNTU-CVE-2024-6387": json.loads((REAL_OSV / "UBUNTU-CVE-2024-6387.json").read_text())}
            osv.data.osv_by_purl = {"Ubuntu/openssh@1:9.6p1-3ubuntu13": ["UBUNTU-CVE-2024-6387"]}
            synced = exchpatch("feeds", "sync", "--cache", str(tmp_path / "feeds"), "--only", "osv", "--url",
                               f"osv={osv.url}", "--inventory", f.inventory_dir, "--json")
            assert synced.returncode == 0, synced.stdout + synced.stderr
            queries = [q for r in osv.requests("/v1/querybatch") for q in json.loads(r.body)["queries"]]
        finally:
            osv.stop()
        assert {"package": {"name": "openssh", "ecosystem": "Ubuntu"}, "version": "1:9.6p1-3ubuntu13"} in queries
        assert len(queries) == len({json.dumps(q, sort_keys=True) for q in queries})  # each package once
        assert [v["id"] for v in json.loads((tmp_path / "feeds" / "osv.json").read_text())["vulns"]] == [
            "UBUNTU-CVE-2024-6387"]
        assert not any(t in synced.stdout + synced.stderr for t in tokens)

        # a node that cannot be read fails the plan and the exposure: missing data is never taken as
        # "up to date" or "exposed to nothing"; the exposure saved before is kept
        tb.supervisorctl(f.node("wallet-1"), "stop", "wallet-signer")
        res = exchpatch("plan", *feed_args(FEEDS), "--catalog", CATALOG, "--inventory", f.inventory_dir,
                        "--now", NOW)
        assert res.returncode == 1
        assert "wallet-1" in res.stderr
        exposure = exchpatch("exposure", "--inventory", f.inventory_dir, "--osv",
                             str(REAL_OSV / "UBUNTU-CVE-2024-6387.json"), "--cache", str(cache))
        assert exposure.returncode == 1 and "wallet-1" in exposure.stderr, exposure.stdout + exposure.stderr
        assert json.loads((cache / "exposure.json").read_text()) == doc
    finally:
        tb.down(root)
        shutil.rmtree(root, ignore_errors=True)


def test_plan_playbook_check_mode_writes_nothing(tmp_path, facts):
    """What AWX and ansible-playbook users run: the playbook itself, in check mode and not."""
    dest = tmp_path / "plan.json"
    extra = json.dumps({"plan_feeds": FEEDS, "plan_catalog": CATALOG, "plan_facts_file": str(facts),
                        "plan_now": NOW, "plan_dest": str(dest)})
    cmd = [str(BIN / "ansible-playbook"), "-i", str(REPO / "exchpatch" / "empty_inventory.yml"),
           str(REPO / "playbooks" / "plan.yml"), "-e", extra]
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")}
    checked = subprocess.run([*cmd, "--check"], capture_output=True, text=True, env=env, cwd=REPO, check=False)
    assert checked.returncode == 0, checked.stdout[-2000:]
    assert not dest.exists()
    ran = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, check=False)
    assert ran.returncode == 0, ran.stdout[-2000:]
    assert json.loads(dest.read_text())["generated_at"] == NOW


def test_patch_info_returns_a_validated_entry_or_names_the_known_ids():
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")}
    cmd = [str(BIN / "ansible"), "localhost", "-m", "exchangeops.patching.patch_info"]
    ok = subprocess.run([*cmd, "-a", f"catalog={CATALOG} id=matching-engine-1.4.3"], capture_output=True,
                        text=True, env=env, cwd=REPO, check=False)
    assert ok.returncode == 0, ok.stdout
    assert '"version": "1.4.3"' in ok.stdout and '"component": "matching-engine"' in ok.stdout
    bad = subprocess.run([*cmd, "-a", f"catalog={CATALOG} id=matching-engine-9.9.9"], capture_output=True,
                         text=True, env=env, cwd=REPO, check=False)
    assert bad.returncode != 0
    assert "not in the catalog" in bad.stdout and "matching-engine-1.4.3" in bad.stdout
