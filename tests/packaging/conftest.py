"""Fixtures for the packaging tests: the collection built with ``ansible-galaxy collection build`` and
installed offline into a private collections path, the driver built as a wheel, each from a copy of the
checkout (what git tracks, plus work not yet committed) so that nothing this checkout generated leaks in
unless a test puts it there on purpose.

Every command runs with the environment of a machine that is not this checkout: no ``ANSIBLE_*``
(``make`` exports ``ANSIBLE_CONFIG``), no ``PYTHONPATH``, ``HOME`` in a temporary folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """This process's environment without the checkout's Ansible settings and import paths."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ANSIBLE_", "EXCHPATCH_")) and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    home.mkdir(parents=True, exist_ok=True)
    return {**env, "HOME": str(home), **extra}


def run(cmd: Sequence[str | Path], cwd: Path, env: dict[str, str], timeout: float = 300,
        expect: int | None = 0) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=timeout, check=False)
    if expect is not None:
        assert res.returncode == expect, (f"{' '.join(map(str, cmd))} exited {res.returncode}, not {expect}:\n"
                                          f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


def copy_checkout(dest: Path) -> Path:
    """The checkout's files as a clean clone plus uncommitted work has them (what scripts/ansible-test.sh copies)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_symlink() or not src.is_file():  # removed since it was listed, or not a file
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel)
    return dest


def galaxy_version() -> str:
    return str(yaml.safe_load((REPO / "galaxy.yml").read_text())["version"])


@pytest.fixture(scope="session")
def packaging_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("packaging")


@pytest.fixture(scope="session")
def home(packaging_tmp: Path) -> Path:
    return packaging_tmp / "home"


@pytest.fixture(scope="session")
def lived_in_checkout(packaging_tmp: Path) -> tuple[Path, list[str]]:
    """A copy of the checkout after a developer used it: a testbed that is up (generated inventory with the
    nodes' admin tokens, the release signing key, node roots), the make setup link, caches, build output,
    an earlier tarball. Returns the folder and the secret values planted in it."""
    import secrets

    root = copy_checkout(packaging_tmp / "lived-in")
    tokens = [secrets.token_urlsafe(24) for _node in range(3)]
    inv = root / "inventories" / "testbed"
    planted = {
        inv / "hosts.yml": "---\nall:\n  children:\n    matching_nodes:\n      hosts:\n        match-0a: {}\n",
        inv / "group_vars" / "all" / "testbed.yml": "---\nexchange_testbed_dir: /tmp/testbed\n",
        inv / "group_vars" / "all" / "secrets.yml": (
            f"---\nexchange_admin_tokens:\n  match-0a: {tokens[0]}\n  wallet-0: {tokens[1]}\n"),
        root / ".testbed" / "match-0a" / "etc" / "admin_token": tokens[0] + "\n",
        root / ".testbed" / "keys" / "release.key": ("-----BEGIN PRIVATE KEY-----\n" + tokens[2]
                                                     + "\n-----END PRIVATE KEY-----\n"),
        root / ".testbed" / "testbed.json": "{}\n",
        root / ".feeds-cache" / "state.json": "{}\n",
        root / ".venv" / "pyvenv.cfg": "home = /usr/bin\n",
        root / ".pytest_cache" / "README.md": "pytest cache\n",
        root / "exchpatch.egg-info" / "PKG-INFO": "Name: exchpatch\n",
        root / "build" / "lib" / "testbed" / "__init__.py": "",
        root / "dist" / "exchpatch-0.1.0-py3-none-any.whl": "not a wheel\n",
        root / "tests" / "output" / "junit.xml": "<testsuites/>\n",
        root / "plugins" / "modules" / "__pycache__" / "node_action.cpython-311.pyc": "",
        root / ".github" / "workflows" / "ci.yml": "---\non: push\n",
        root / f"exchangeops-patching-{galaxy_version()}.tar.gz": "an earlier build\n",
    }
    for path, text in planted.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    link = root / "collections" / "ansible_collections" / "exchangeops" / "patching"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to("../../..")
    return root, tokens


@pytest.fixture(scope="session")
def collection_tarball(lived_in_checkout: tuple[Path, list[str]], packaging_tmp: Path, home: Path) -> Path:
    root = lived_in_checkout[0]
    out = packaging_tmp / "collection-build"
    run([BIN / "ansible-galaxy", "collection", "build", "--output-path", out], cwd=root, env=clean_env(home))
    (tarball,) = out.glob("exchangeops-patching-*.tar.gz")
    return tarball


@pytest.fixture(scope="session")
def collections_path(collection_tarball: Path, packaging_tmp: Path, home: Path) -> Path:
    """A private collections path with the built tarball installed offline (community.general, its
    dependency, is found in the ansible package)."""
    dest = packaging_tmp / "collections"
    run([BIN / "ansible-galaxy", "collection", "install", "--offline", "-p", dest, collection_tarball],
        cwd=packaging_tmp, env=clean_env(home))
    assert (dest / "ansible_collections" / "exchangeops" / "patching" / "MANIFEST.json").is_file()
    return dest
