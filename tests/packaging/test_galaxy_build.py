"""``ansible-galaxy collection build`` ships the collection only (galaxy.yml ``build_ignore``), even from a
checkout a developer used: no driver, testbed, generated inventory, tokens or keys, tests, fixtures, AWX
project content or tooling; and what it ships installs and documents itself offline."""

from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path

from tests.packaging.conftest import BIN, REPO, clean_env, galaxy_version, run

# Everything the tarball may hold at its top level.
ALLOWED_TOP = {"MANIFEST.json", "FILES.json", "README.md", "LICENSE", "LICENSES", "requirements.txt", "bindep.txt",
               "plugins", "roles", "playbooks", "meta", "docs", "changelogs"}
# The project around the collection, which must never ship (top-level names and deeper paths).
FORBIDDEN = ("exchpatch/", "testbed/", "bench/", "molecule/", "tests/", "scripts/", "inventories/", "awx/",
             "feeds/", "patches/", "collections/", "requirements/", "build/", "dist/", "changelogs/fragments/",
             "Makefile", "pyproject.toml", "ansible.cfg", "execution-environment.yml", "requirements.yml")
PEM_PRIVATE = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
SECRET_NAMES = re.compile(r"(^|/)(secrets\.ya?ml|admin_token|[^/]*\.(key|pem)|\.env)$")


def _members(tarball: Path) -> dict[str, bytes | None]:
    """Every member's path and content (None for folders)."""
    out: dict[str, bytes | None] = {}
    with tarfile.open(tarball) as tf:
        for m in tf.getmembers():
            f = tf.extractfile(m) if m.isfile() else None
            out[m.name.removeprefix("./")] = f.read() if f else None
    return out


def test_the_tarball_holds_the_collection_and_nothing_else(collection_tarball):
    members = _members(collection_tarball)
    top = {name.split("/", 1)[0] for name in members}
    assert top <= ALLOWED_TOP, f"not collection content: {sorted(top - ALLOWED_TOP)}"
    leaked = sorted(n for n in members if n.startswith(FORBIDDEN) or n in FORBIDDEN)
    assert not leaked, leaked
    hidden = sorted(n for n in members if any(part.startswith(".") for part in n.split("/")))
    assert not hidden, hidden
    junk = sorted(n for n in members if "__pycache__" in n or n.endswith((".pyc", ".tar.gz", ".whl"))
                  or ".egg-info" in n)
    assert not junk, junk


def test_the_tarball_holds_everything_the_collection_is_made_of(collection_tarball):
    members = _members(collection_tarball)
    patterns = ("plugins/*/*.py", "plugins/*/*.yml", "roles/*/*/*.yml", "playbooks/*.yml", "playbooks/tasks/*.yml",
                "meta/*.yml", "docs/*.md")
    tracked = [p.relative_to(REPO).as_posix() for pattern in patterns for p in REPO.glob(pattern)
               if "__pycache__" not in p.parts]
    required = {"MANIFEST.json", "FILES.json", "README.md", "LICENSE", "requirements.txt", "bindep.txt",
                "meta/runtime.yml", "meta/execution-environment.yml", "plugins/modules/node_action.py",
                "playbooks/rolling_patch.yml", "changelogs/changelog.yaml", *tracked}
    assert not sorted(required - set(members)), sorted(required - set(members))
    assert b"GNU GENERAL PUBLIC LICENSE" in members["LICENSE"] and b"Version 3" in members["LICENSE"]
    # ansible-builder reads these through meta/execution-environment.yml: they must ship
    assert b"cvss==" in members["requirements.txt"] and b"openssh" in members["bindep.txt"]
    manifest = json.loads(members["MANIFEST.json"])["collection_info"]
    assert manifest["license"] == ["GPL-3.0-or-later"] and manifest["version"] == galaxy_version()
    assert "community.general" in manifest["dependencies"]


def test_no_secret_of_a_used_checkout_ships(collection_tarball, lived_in_checkout):
    tokens = lived_in_checkout[1]  # planted in the copy the tarball was built from, as a running testbed has them
    members = _members(collection_tarball)
    for name, content in members.items():
        assert not SECRET_NAMES.search(name), f"{name} looks like a secret"
        if content is None:
            continue
        assert not PEM_PRIVATE.search(content), f"{name} holds a private key"
        for token in tokens:
            assert token.encode() not in content, f"{name} holds a testbed admin token or key"


def test_the_installed_tarball_documents_its_plugins(collections_path, home, packaging_tmp):
    env = clean_env(home, ANSIBLE_COLLECTIONS_PATH=str(collections_path))
    installed = collections_path / "ansible_collections" / "exchangeops" / "patching"
    res = run([BIN / "ansible-doc", "-t", "module", "--json", "exchangeops.patching.node_action"],
              cwd=packaging_tmp, env=env)
    doc = json.loads(res.stdout)["exchangeops.patching.node_action"]
    assert doc["doc"]["filename"].startswith(str(installed)), doc["doc"]["filename"]
    assert doc["doc"]["short_description"] and doc["return"]
    # every module of the checkout is there, and nothing else
    res = run([BIN / "ansible-doc", "-t", "module", "--list", "--json", "exchangeops.patching"],
              cwd=packaging_tmp, env=env)
    expected = {f"exchangeops.patching.{p.stem}" for p in (REPO / "plugins" / "modules").glob("*.py")
                if not p.name.startswith("_")}
    assert set(json.loads(res.stdout)) == expected
