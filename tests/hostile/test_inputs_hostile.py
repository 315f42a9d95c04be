# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Hostile feeds, catalog entries and facts files, through the real modules (and a few through the driver).

Each case must end as one clear line naming the file, with ``bad_input: true`` (the driver's exit 2):
never a hang (FIFO, /dev/zero), a MemoryError (gzip bomb, oversized file), a traceback (deep
nesting, 5,000-digit numbers) or a silent misreading (duplicate keys, non-ASCII digits in ids).
Nothing is written: the plan's ``dest`` is never created.

The modules run as Ansible runs them, as a separate Python process with an arguments file.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULES = "ansible_collections.exchangeops.patching.plugins.modules"
GOOD_FEED = REPO / "feeds" / "kev.json"
FACTS = {"nodes": [
    {"name": "match-0a", "component": "matching-engine", "version": "1.4.2"},
    {"name": "wallet-1", "component": "wallet-signer", "version": "2.3.0"},
]}
ARABIC_CVE = "CVE-2026-\u0663\u0661\u0663\u0663\u0667"  # CVE-2026-٣١٣٣٧: "31337" in Arabic-Indic digits
ARABIC_VERSION = "1.\u0664.3"  # 1.٤.3
NESTED = "[" * 100_000 + "]" * 100_000
HUGE = "9" * 5000
GARBAGE = bytes(range(256)) * 8

PATCH = (REPO / "patches" / "matching-engine-1.4.3.yml").read_text(encoding="utf-8")
ALIAS_BOMB = "\n".join(
    ['lol0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"lol{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
) + "\nid: *a9\n"


def kev(cve: str = "CVE-2026-31337", extra: str = "") -> str:
    return ('{"catalogVersion": "2026.11.21", "vulnerabilities": [{"cveID": "' + cve + '", "dateAdded": "2026-11-18"'
            + extra + "}]}")


def nvd(score: str = "9.8", cve: str = "CVE-2026-31337") -> str:
    return ('{"format": "NVD_CVE", "vulnerabilities": [{"cve": {"id": "' + cve + '", "metrics": {"cvssMetricV31": '
            '[{"type": "Primary", "cvssData": {"version": "3.1", "baseScore": ' + score + ', "vectorString": '
            '"CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}}]}}}]}')


def osv(aliases: str = '["CVE-2026-31337"]') -> str:
    return '{"id": "GHSA-aaaa-bbbb-cccc", "modified": "2026-11-20T00:00:00Z", "aliases": ' + aliases + "}"


def csaf(score: str = "9.8") -> str:
    return ('{"document": {"category": "csaf_security_advisory", "tracking": {"id": "EX-2026-1"}}, '
            '"vulnerabilities": [{"cve": "CVE-2026-31337", "scores": [{"cvss_v3": {"baseScore": ' + score
            + ', "vectorString": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}}]}]}')


def cve5(cve: str = "CVE-2026-31337", timestamp: str = '"2026-11-20T00:00:00Z"') -> str:
    return ('{"dataType": "CVE_RECORD", "dataVersion": "5.1", "cveMetadata": {"cveId": "' + cve + '", '
            '"state": "PUBLISHED"}, "containers": {"adp": [{"metrics": [{"other": {"type": "ssvc", "content": '
            '{"timestamp": ' + timestamp + ', "options": [{"Exploitation": "active"}]}}}]}]}}')


EPSS = "#model_version:v2025.03.14,score_date:2026-11-23T00:00:00+0000\ncve,epss,percentile\n"


# --------------------------------------------------------------------------- how an input is made hostile


def write(text: str | bytes) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
    return make


def symlink_to(target: str) -> Callable[[Path], None]:
    return lambda path: path.symlink_to(target)


def fifo(path: Path) -> None:
    os.mkfifo(path)  # nobody ever writes: a blocking open() would hang the module


def directory(path: Path) -> None:
    path.mkdir()


def gzip_bomb(path: Path) -> None:
    # 8 MiB of JSON whitespace in about 8 KiB: refused at the 1M max_feed_size given with this case
    path.write_bytes(gzip.compress(b'{"vulnerabilities": [' + b" " * (8 * 1024 * 1024) + b"]}", compresslevel=9))


# (input kind, file name, how to make it, expected words in the message, extra module args)
FEED_CASES = {
    "feed-dev-zero": ("kev.json", symlink_to("/dev/zero"), "is a character device, not a regular file", {}),
    "feed-fifo": ("osv.json", fifo, "is a FIFO (named pipe), not a regular file", {}),
    "feed-directory": ("nvd.json", directory, "is a directory, not a regular file", {}),
    "feed-oversized": ("nvd.json", write(nvd() + " " * 4096), "larger than the limit of 2 KiB",
                       {"max_feed_size": "2K"}),
    "feed-gzip-bomb": ("kev.json.gz", gzip_bomb, "decompressed feed is larger than the limit of 1 MiB",
                       {"max_feed_size": "1M"}),
    "osv-nested-json": ("osv.json", write(NESTED), "JSON nested deeper than 64 levels", {}),
    "nvd-5000-digit-score": ("nvd.json", write(nvd(score=HUGE)), "a number with 5000 digits", {}),
    "csaf-nan-score": ("csaf.json", write(csaf(score="NaN")), "NaN is not a JSON number", {}),
    "kev-duplicate-key": ("kev.json", write(kev(extra=', "cveID": "CVE-2026-00001"')),
                          "duplicate key 'cveID' in one JSON object", {}),
    "kev-non-ascii-cve": ("kev.json", write(kev(ARABIC_CVE)), "non-ASCII character (U+0663 ARABIC-INDIC DIGIT THREE)",
                          {}),
    "osv-non-ascii-alias": ("osv.json", write(osv(json.dumps([ARABIC_CVE]))), "non-ASCII character (U+0663", {}),
    "nvd-non-ascii-cve": ("nvd.json", write(nvd(cve=ARABIC_CVE)), "non-ASCII character (U+0663", {}),
    "vulnrichment-non-ascii-cve": ("cve5.json", write(cve5(ARABIC_CVE)), "non-ASCII character (U+0663", {}),
    "vulnrichment-5000-digit-timestamp": ("cve5.json", write(cve5(timestamp=HUGE)), "a number with 5000 digits", {}),
    "epss-non-ascii-cve": ("epss.csv", write(EPSS + ARABIC_CVE + ",0.5,0.9\n"), "non-ASCII character (U+0663", {}),
    "epss-non-ascii-score": ("epss.csv", write(EPSS + "CVE-2026-31337,\u0660.\u0665,0.9\n"),
                             "epss '٠.٥' is not a number", {}),
    "epss-nul-bytes": ("epss.csv", write(EPSS.encode() + b"CVE-2026-31337,0.5\0,0.9\n"), "binary data (NUL", {}),
    "feed-binary-garbage": ("feed.json", write(GARBAGE), "binary data (NUL byte at offset 0)", {}),
    "nvd-lone-surrogate": ("nvd.json", write(nvd(cve="CVE-2026-31337\\ud800")), "lone UTF-16 surrogate", {}),
}

CATALOG_CASES = {
    "catalog-fifo-entry": ("evil.yml", fifo, "is a FIFO (named pipe), not a regular file"),
    "catalog-dev-zero-entry": ("evil.yml", symlink_to("/dev/zero"), "is a character device, not a regular file"),
    "catalog-oversized-entry": ("evil.yml", write(PATCH.replace("id: matching", "id: other") + "#" * (1024 * 1024)),
                                "catalog entry is larger than the limit of 1 MiB"),
    "catalog-duplicate-key": ("evil.yml", write(PATCH.replace("id: matching-engine-1.4.3\n",
                                                              "id: evil-1.4.3\nversion: \"1.4.2\"\n", 1)),
                              "duplicate key 'version'"),
    "catalog-alias-bomb": ("evil.yml", write(ALIAS_BOMB), "YAML alias *a0 (anchors and aliases are not allowed)"),
    "catalog-non-mapping": ("evil.yml", write("- id: evil\n- id: evil2\n"), "must be a YAML mapping, not list"),
    "catalog-non-ascii-id": ("evil.yml", write(PATCH.replace("id: matching-engine-1.4.3",
                                                             f"id: matching-engine-{ARABIC_VERSION}")),
                             "non-ASCII character (U+0664 ARABIC-INDIC DIGIT FOUR)"),
    "catalog-non-ascii-version": ("evil.yml", write(PATCH.replace("id: matching-engine-1.4.3", "id: evil")
                                                    .replace('version: "1.4.3"', f'version: "{ARABIC_VERSION}"')),
                                  "non-ASCII character (U+0664"),
    "catalog-non-ascii-fix": ("evil.yml", write(PATCH.replace("id: matching-engine-1.4.3", "id: evil")
                                                .replace("- CVE-2026-31337", f"- {ARABIC_CVE}")),
                              "non-ASCII character (U+0663"),
    "catalog-5000-digit-count": ("evil.yml", write(PATCH.replace("id: matching-engine-1.4.3", "id: evil")
                                                   .replace("files: 2", f"files: {HUGE}")),
                                 "a value YAML cannot convert"),
    "catalog-binary-garbage": ("evil.yml", write(GARBAGE), "binary data (NUL byte at offset 0)"),
}

FACTS_CASES = {
    "facts-dev-zero": (symlink_to("/dev/zero"), "is a character device, not a regular file"),
    "facts-fifo": (fifo, "is a FIFO (named pipe), not a regular file"),
    "facts-nested-json": (write('{"nodes": ' + NESTED + "}"), "JSON nested deeper than 64 levels"),
    "facts-duplicate-key": (write('{"nodes": [{"name": "match-0a", "component": "matching-engine", '
                                  '"version": "1.4.2", "version": "1.4.3"}]}'), "duplicate key 'version'"),
    "facts-non-ascii-version": (write(json.dumps({"nodes": [{"name": "match-0a", "component": "matching-engine",
                                                             "version": "1.4.\u0662"}]})),
                                "non-ASCII character (U+0662 ARABIC-INDIC DIGIT TWO)"),
    "facts-5000-digit-number": (write('{"nodes": [], "count": ' + HUGE + "}"), "a number with 5000 digits"),
    "facts-non-mapping": (write("42"), "fleet facts are a JSON int"),
    "facts-binary-garbage": (write(GARBAGE), "binary data (NUL byte at offset 0)"),
}


# --------------------------------------------------------------------------- running the modules


def run_module(name: str, args: dict, tmp_path: Path) -> dict:
    """Run a module as Ansible does (its own process, arguments in a file) and return its JSON answer."""
    args_file = tmp_path / f"{name}-args.json"
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    env = {**os.environ, "PYTHONPATH": str(REPO / "collections")}
    try:
        res = subprocess.run([sys.executable, "-m", f"{MODULES}.{name}", str(args_file)], capture_output=True,
                             text=True, timeout=120, env=env, cwd=tmp_path, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{name} hung on {args}")
    assert "Traceback" not in res.stdout + res.stderr, res.stdout + res.stderr
    return json.loads(res.stdout)


def assert_refused(result: dict, path: Path, needle: str) -> None:
    msg = result.get("msg", "")
    assert result.get("failed") is True, result
    assert result.get("bad_input") is True, result
    assert "exception" not in result, result
    assert "\n" not in msg, msg
    assert msg.startswith(f"{path}:"), msg
    assert needle in msg, msg


@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    folder = tmp_path / "catalog"
    shutil.copytree(REPO / "patches", folder)
    return folder


@pytest.fixture
def facts_file(tmp_path: Path) -> Path:
    path = tmp_path / "facts.json"
    path.write_text(json.dumps(FACTS))
    return path


@pytest.mark.parametrize("case", sorted(FEED_CASES))
def test_hostile_feed_is_refused_by_patch_plan(case, tmp_path, catalog, facts_file):
    name, make, needle, extra = FEED_CASES[case]
    feed = tmp_path / name
    make(feed)
    dest = tmp_path / "plan.json"
    result = run_module("patch_plan", {"feeds": [str(GOOD_FEED), str(feed)], "catalog": str(catalog),
                                       "facts_file": str(facts_file), "dest": str(dest), **extra}, tmp_path)
    assert_refused(result, feed, needle)
    assert not dest.exists()


@pytest.mark.parametrize("case", sorted(CATALOG_CASES))
@pytest.mark.parametrize("module", ["patch_plan", "patch_info"])
def test_hostile_catalog_entry_is_refused(case, module, tmp_path, catalog, facts_file):
    name, make, needle = CATALOG_CASES[case]
    entry = catalog / name
    make(entry)
    dest = tmp_path / "plan.json"
    if module == "patch_plan":
        args = {"feeds": [str(GOOD_FEED)], "catalog": str(catalog), "facts_file": str(facts_file),
                "dest": str(dest)}
    else:
        args = {"catalog": str(catalog), "id": "matching-engine-1.4.3"}
    assert_refused(run_module(module, args, tmp_path), entry, needle)
    assert not dest.exists()


@pytest.mark.parametrize("case", sorted(FACTS_CASES))
def test_hostile_facts_file_is_refused_by_patch_plan(case, tmp_path, catalog):
    make, needle = FACTS_CASES[case]
    facts = tmp_path / "facts.json"
    make(facts)
    dest = tmp_path / "plan.json"
    result = run_module("patch_plan", {"feeds": [str(GOOD_FEED)], "catalog": str(catalog),
                                       "facts_file": str(facts), "dest": str(dest)}, tmp_path)
    assert_refused(result, facts, needle)
    assert not dest.exists()


def test_bad_max_feed_size_is_bad_input(tmp_path, catalog, facts_file):
    result = run_module("patch_plan", {"feeds": [str(GOOD_FEED)], "catalog": str(catalog),
                                       "facts_file": str(facts_file), "max_feed_size": "lots"}, tmp_path)
    assert result.get("failed") is True and result.get("bad_input") is True, result
    assert result["msg"].startswith("max_feed_size: 'lots' is not a size")


def test_the_same_inputs_unspoiled_make_a_plan(tmp_path, catalog, facts_file):
    """The harness itself is sound: without the hostile part, the module plans and writes dest."""
    dest = tmp_path / "plan.json"
    result = run_module("patch_plan", {"feeds": [str(GOOD_FEED)], "catalog": str(catalog),
                                       "facts_file": str(facts_file), "dest": str(dest),
                                       "now": "2026-11-24"}, tmp_path)
    assert result.get("failed") is not True, result
    assert dest.exists()
    info = run_module("patch_info", {"catalog": str(catalog), "id": "matching-engine-1.4.3"}, tmp_path)
    assert info["patch"]["version"] == "1.4.3"


# --------------------------------------------------------------------------- through the driver: exit 2


def exchpatch(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(home), "EXCHPATCH_DATA_DIR": str(home / "data")}
    return subprocess.run([str(Path(sys.executable).parent / "exchpatch"), *args], capture_output=True, text=True,
                          timeout=300, env=env, check=False)


@pytest.mark.parametrize("case", ["osv-nested-json", "kev-non-ascii-cve", "catalog-duplicate-key",
                                  "facts-non-ascii-version"])
def test_driver_plan_exits_2_naming_the_file(case, tmp_path, catalog, facts_file):
    feed, facts = GOOD_FEED, facts_file
    if case in FEED_CASES:
        name, make, needle, _extra = FEED_CASES[case]
        bad = feed = tmp_path / name
    elif case in CATALOG_CASES:
        name, make, needle = CATALOG_CASES[case]
        bad = catalog / name
    else:
        make, needle = FACTS_CASES[case]
        bad = facts = tmp_path / "hostile-facts.json"
    make(bad)
    res = exchpatch("plan", "--feed", str(feed), "--catalog", str(catalog), "--facts", str(facts),
                    "--now", "2026-11-24", "--json", home=tmp_path)
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stdout + res.stderr
    error = json.loads(res.stdout)["error"]
    assert needle in error and bad.name in error, error
