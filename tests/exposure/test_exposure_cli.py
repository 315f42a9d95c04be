"""`exchpatch exposure` end to end in offline facts mode: CLI -> ansible-runner -> playbooks/exposure.yml ->
the exposure module; the result saved into the feed cache. Bad input exits 2 and writes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.exposure import fleet

BIN = Path(sys.executable).parent


def exchpatch(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "exchpatch"), *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "EXCHPATCH_FEED_CACHE": str(cache)}, check=False)


def test_cli_offline_facts_json_and_cache(tmp_path):
    paths = fleet.build(tmp_path / "fleet")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "osv.json").write_text(json.dumps({"vulns": [json.loads(Path(p).read_text())
                                                          for p in fleet.OSV_REAL]}))
    vex = tmp_path / "vex.json"
    vex.write_text(json.dumps(fleet.CDX_VEX))
    out = tmp_path / "out.json"
    res = exchpatch("exposure", "--facts", str(paths["facts"]), "--catalog", str(paths["catalog"]),
                    "--vex", str(vex), "--now", "2026-11-24T00:00:00Z", "--output", str(out), "--json", cache=cache)
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads(res.stdout)
    assert doc == json.loads((cache / "exposure.json").read_text()) == json.loads(out.read_text())
    assert doc["cves"]["CVE-2024-3094"]["nodes"] == ["me-s0-a", "me-s0-b"]
    assert doc["cves"]["CVE-2024-6387"]["not_affected"][0]["justification"] == "protected_at_perimeter"
    assert doc["cves"]["CVE-2022-28346"]["needs_mitigation"]
    # openssh is VEX'd not affected, so the patch removes only the xz backdoor: derived, as it is not in fixes
    assert doc["patches"]["matching-engine-1.4.3"]["derived"] == ["CVE-2024-3094"]

    # a malformed SBOM: exit 2, the file and field named, the cached exposure untouched
    before = (cache / "exposure.json").read_bytes()
    paths["matching-engine-1.4.2"].write_text('{"bomFormat": "SPDX"}')
    res = exchpatch("exposure", "--facts", str(paths["facts"]), "--json", cache=cache)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "matching-engine-1.4.2.cdx.json: bomFormat" in json.loads(res.stdout)["error"]
    assert (cache / "exposure.json").read_bytes() == before
