"""`make demo` tells its story in any state: run it twice in a row, the second time on the fleet,
catalog (with a crashing release in it) and audit trail the first one left behind.

A small fleet (1 shard, 1 wallet, short bakes) keeps it cheap; the script is the real one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from testbed import fleet as tb
from tests.testbed.nodes import loopback_net

pytestmark = pytest.mark.fleet

REPO = Path(__file__).resolve().parents[2]


def test_the_demo_runs_twice_in_a_row(tmp_path):
    root = tmp_path / "testbed"
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "EXCHPATCH_TESTBED_DIR": str(root), "EXCHPATCH_TESTBED_NET": str(loopback_net("demo")),
           "EXCHPATCH_DATA_DIR": str(tmp_path / "data"), "HOME": str(home), "EXCHPATCH_DEMO_SHARDS": "1",
           "EXCHPATCH_DEMO_WALLETS": "1", "EXCHPATCH_DEMO_BAKE": "2"}
    env.pop("EXCHPATCH_AUDIT_FILE", None)
    try:
        for attempt in (1, 2):
            res = subprocess.run(["bash", "scripts/demo.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                                 timeout=900, check=False)
            assert res.returncode == 0, f"demo run {attempt} failed:\n{res.stdout[-4000:]}\n{res.stderr[-3000:]}"
            assert "audit trail intact" in res.stdout
            assert "lost 0" in res.stdout
            # threat intelligence: the feed cache synced from the mirror, regreSSHion found on the nodes' SBOMs,
            # and the plan read from the cache (fresh: no warning, no refusal)
            assert "CVE-2024-6387" in res.stdout and "derived CVE-2024-6387" in res.stdout
            assert "feeds from " in res.stdout and "WARNING: kev" not in res.stdout
        # the second run started from a fresh fleet and kept the first one's folder aside
        assert (tmp_path / "testbed.previous" / "audit.jsonl").is_file()
        assert "previous testbed" in res.stdout
    finally:
        if (root / "testbed.json").exists():
            tb.down(root)
        for leftover in (root, tmp_path / "testbed.previous"):
            shutil.rmtree(leftover, ignore_errors=True)
