"""`exchpatch feeds` end to end: CLI -> ansible-runner -> playbooks/feeds_sync.yml -> feed_sync module.

Slow (each sync starts ansible-playbook): two runs here; the engine's cases are in test_sync.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from ansible_collections.exchangeops.patching.plugins.module_utils import _feedsync

from tests.feeds.conftest import NOW, nvd_records, options, snapshot
from tests.feeds.server import kev_doc

BIN = Path(sys.executable).parent
KEY = "nvd-api-key-5a1b2c3d-SECRET"
HOOK_TOKEN = "hooktoken-9f8e7d-SECRET"


def exchpatch(*args: str, data_dir: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "no_proxy")}
    env["EXCHPATCH_DATA_DIR"] = str(data_dir)
    return subprocess.run([str(BIN / "exchpatch"), *args], capture_output=True, text=True, timeout=timeout,
                          env=env, check=False)


def url_args(server) -> list[str]:
    return [a for name, url in server.urls().items() if name in ("kev", "epss", "nvd")
            for a in ("--url", f"{name}={url}")]


def test_sync_through_ansible_runner_reports_new_kev_hits_with_exit_3_and_keeps_secrets(server, cache, tmp_path):
    server.data.nvd_api_key = KEY
    server.data.nvd = nvd_records(3, NOW - timedelta(days=2), timedelta(hours=1))
    assert _feedsync.sync(options(server, cache, only=("kev",)))["ok"]  # the baseline KEV
    (cache / "exposure.json").write_text(json.dumps({"schema": 1, "cves": {
        "CVE-2024-3094": {"nodes": ["me-s0-a"], "packages": [], "fixed_by": [], "not_affected": []}}}))
    server.data.kev = kev_doc(["CVE-2024-6387", "CVE-2024-3094"], "2026.11.24")
    key_file, hook_file = tmp_path / "nvd.key", tmp_path / "hook.url"
    key_file.write_text(KEY + "\n")
    hook_file.write_text(f"{server.url}/hook/{HOOK_TOKEN}\n")
    data = tmp_path / "data"
    res = exchpatch("feeds", "sync", "--cache", str(cache), "--only", "kev", "epss", "nvd", *url_args(server),
                    "--nvd-since", (NOW - timedelta(days=3)).isoformat(), "--nvd-api-key-file", str(key_file),
                    "--webhook-url-file", str(hook_file), "--json", data_dir=data)
    assert res.returncode == 3, res.stdout + res.stderr
    doc = json.loads(res.stdout)  # one JSON document, nothing else
    assert doc["exit_code"] == 3 and doc["sync"]["ok"]
    assert [h["cve"] for h in doc["sync"]["new_kev"]["affecting_nodes"]] == ["CVE-2024-3094"]
    assert doc["sync"]["feeds"]["nvd"]["records"] == 3 and doc["sync"]["webhook"]["sent"]
    assert all(r.headers.get("apikey") == KEY for r in server.requests("/rest/json/cves/2.0"))
    assert len(server.requests("/hook/" + HOOK_TOKEN)) == 1
    # the secrets are nowhere: output, the run's artifacts and events, the cache
    for secret in (KEY, HOOK_TOKEN):
        assert secret not in res.stdout + res.stderr
        leaks = [p for base in (data, cache) for p in base.rglob("*") if p.is_file()
                 and secret.encode() in p.read_bytes()]
        assert not leaks, leaks
    status = exchpatch("feeds", "status", "--cache", str(cache), "--json", "--prometheus", str(tmp_path / "f.prom"),
                       data_dir=data)
    assert status.returncode == 0, status.stdout + status.stderr
    assert json.loads(status.stdout)["feeds"]["nvd"]["records"] == 3
    assert "exchpatch_feed_new_kev_affecting_nodes 1" in (tmp_path / "f.prom").read_text()


def test_a_failed_feed_exits_1_naming_it_and_bad_input_exits_2(server, cache, tmp_path):
    assert _feedsync.sync(options(server, cache, only=("kev", "epss")))["ok"]
    before = snapshot(cache)
    server.fail("/kev.json", "500")
    data = tmp_path / "data"
    res = exchpatch("feeds", "sync", "--cache", str(cache), "--only", "kev", "epss", *url_args(server), "--json",
                    data_dir=data)
    assert res.returncode == 1, res.stdout + res.stderr
    doc = json.loads(res.stdout)
    assert doc["sync"]["failed"] == ["kev"] and doc["message"].startswith("kev: HTTP 500")
    assert doc["sync"]["feeds"]["epss"]["status"] == "not_modified"
    after = snapshot(cache)
    assert after["kev.json"] == before["kev.json"] and after["epss.csv"] == before["epss.csv"]
    status = exchpatch("feeds", "status", "--cache", str(cache), data_dir=data)
    assert status.returncode == 1 and "kev: HTTP 500" in status.stdout
    runs = len(list((data / "runs").iterdir()))
    bad = exchpatch("feeds", "sync", "--cache", str(cache), "--sbom", str(tmp_path / "missing.cdx.json"), "--json",
                    data_dir=data)
    assert bad.returncode == 2 and "SBOM" in json.loads(bad.stdout)["error"]
    assert len(list((data / "runs").iterdir())) == runs  # refused before any playbook ran


def test_plan_reads_the_feed_cache_warns_about_stale_feeds_and_refuses_a_stale_kev(server, cache, tmp_path):
    """`plan --feed-cache`: every cached feed and the cached exposure; a KEV older than its limit refuses."""
    repo = Path(__file__).resolve().parents[2]
    assert _feedsync.sync(options(server, cache, only=("kev", "epss", "nvd")))["ok"]
    (cache / "exposure.json").write_text(json.dumps({"schema": 1, "generated_at": "2026-11-24T12:00:00Z", "cves": {
        "CVE-2024-6387": {"nodes": ["wallet-1"], "packages": ["pkg:deb/ubuntu/openssh@1:9.6p1-3ubuntu13"],
                          "fixed_by": [], "not_affected": [], "unfixed_nodes": ["wallet-1"],
                          "needs_mitigation": True}}, "patches": {}}))
    facts = tmp_path / "facts.json"
    facts.write_text(json.dumps({"nodes": [{"name": "wallet-1", "component": "wallet-signer", "version": "2.3.0"}]}))
    data = tmp_path / "data"
    base = ["plan", "--feed-cache", str(cache), "--catalog", str(repo / "patches"), "--facts", str(facts)]

    fresh = exchpatch(*base, "--now", "2026-11-24T13:00:00Z", "--json", data_dir=data)
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    plan = json.loads(fresh.stdout)
    assert plan["feed_freshness"]["cache_dir"] == str(cache.resolve())
    assert plan["feed_freshness"]["feeds"]["kev"]["age_s"] == 3600
    assert [m["cve"] for m in plan["needs_mitigation"]] == ["CVE-2024-6387"]  # the cache's exposure.json

    # four days on: the KEV catalog (limit 72 h) is too old to plan on; nothing is planned
    stale = exchpatch(*base, "--now", "2026-11-28T12:00:00Z", "--output", str(tmp_path / "plan.json"), data_dir=data)
    assert stale.returncode == 1, stale.stdout + stale.stderr
    assert "kev" in stale.stderr.lower() and "exchpatch feeds sync" in stale.stderr
    assert not (tmp_path / "plan.json").exists()
    # accepted for this plan: it runs, and says how old its feeds are
    allowed = exchpatch(*base, "--now", "2026-11-28T12:00:00Z", "--allow-stale-kev", "--max-kev-age-hours", "24",
                        data_dir=data)
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert "WARNING: kev is" in allowed.stdout
    # bad input, refused before any playbook runs
    runs = len(list((data / "runs").iterdir()))
    for args, words in ((["--feed-cache", str(tmp_path / "empty")], "no state.json"),
                        (["--feed-cache", str(cache), "--max-kev-age-hours", "0"], "--max-kev-age-hours 0.0"),
                        (["--allow-stale-kev", "--feed", str(repo / "feeds" / "kev.json")], "give --feed-cache")):
        bad = exchpatch("plan", *args, "--catalog", str(repo / "patches"), "--facts", str(facts), data_dir=data)
        assert bad.returncode == 2 and words in bad.stderr, bad.stderr
    assert len(list((data / "runs").iterdir())) == runs
