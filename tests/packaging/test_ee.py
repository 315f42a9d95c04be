"""The execution environment: ``ansible-builder create`` makes a complete build context from
execution-environment.yml (an image cannot be built here; the context can), and ``ansible-builder
introspect`` of the installed collection lists the Python and system packages its modules need."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tests.packaging.conftest import BIN, REPO, clean_env, galaxy_version, run

# What the modules import on the controller beyond ansible-core (plugins/module_utils).
NEEDED = {"cvss", "cryptography", "psycopg", "python-dateutil", "univers", "packageurl-python", "scipy", "numpy"}


def _pins(path: Path) -> dict[str, str]:
    """``name -> version`` of every ``name[extras]==version`` line (comments dropped), names lower-case."""
    pins = {}
    for line in path.read_text().splitlines():
        m = re.match(r"\s*([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([^\s#;]+)", line)
        if m:
            pins[m.group(1).lower()] = m.group(3)
    return pins


def test_build_context_carries_the_controller_dependencies(packaging_tmp, home):
    context = packaging_tmp / "ee-context"
    run([BIN / "ansible-builder", "create", "-f", REPO / "execution-environment.yml", "-c", context,
         "--output-filename", "Containerfile"], cwd=REPO, env=clean_env(home))
    containerfile = (context / "Containerfile").read_text()
    build = context / "_build"
    # the collection's Python packages, as pinned in requirements.txt, every one the modules import
    assert _pins(build / "requirements.txt") == _pins(REPO / "requirements.txt")
    assert set(_pins(build / "requirements.txt")) >= NEEDED
    assert re.search(r"^openssh-clients \[platform:rpm\]", (build / "bindep.txt").read_text(), re.M)
    # the galaxy requirements install inside the image: only collections from a server, none from a local path
    galaxy = yaml.safe_load((build / "requirements.yml").read_text())
    names = {c["name"] if isinstance(c, dict) else c for c in galaxy["collections"]}
    assert "community.general" in names
    assert not [c for c in galaxy["collections"] if isinstance(c, dict) and c.get("type") in ("dir", "file")]
    # ansible-core and ansible-runner as the tests run them, on a Python ansible-core 2.19 accepts
    dev = _pins(REPO / "requirements" / "dev.txt")
    refs = re.search(r'^ARG ANSIBLE_INSTALL_REFS="([^"]*)"', containerfile, re.M).group(1).split()
    assert set(refs) == {f"ansible-core=={dev['ansible-core']}", f"ansible-runner=={dev['ansible-runner']}"}
    assert re.search(r'^ARG PYCMD="/usr/bin/python3\.1[1-9]"', containerfile, re.M)
    for step in ("ansible-galaxy collection install", "introspect.py introspect --user-pip=requirements.txt "
                 "--user-bindep=bindep.txt", "/output/scripts/install-from-bindep", "check_ansible"):
        assert step in containerfile, step
    definition = yaml.safe_load((REPO / "execution-environment.yml").read_text())
    assert definition["version"] == 3
    assert all(tag.endswith(":" + galaxy_version()) for tag in definition["options"]["tags"])


def test_requirements_txt_is_what_the_tests_run_with():
    dev = _pins(REPO / "requirements" / "dev.txt")
    ours = _pins(REPO / "requirements.txt")
    assert {name: dev.get(name) for name in ours} == ours


def test_introspect_of_the_installed_collection_lists_its_dependencies(collections_path, packaging_tmp, home):
    installed = collections_path / "ansible_collections" / "exchangeops" / "patching"
    meta = yaml.safe_load((installed / "meta" / "execution-environment.yml").read_text())
    assert meta["dependencies"] == {"python": "requirements.txt", "system": "bindep.txt"}
    res = run([BIN / "ansible-builder", "introspect", collections_path], cwd=packaging_tmp, env=clean_env(home))
    data = yaml.safe_load(res.stdout.split("\n", 1)[1])  # after the "# Dependency data for ..." line
    ours = [line for line in data["python"] if line.endswith("# from collection exchangeops.patching")]
    listed = {re.match(r"[A-Za-z0-9_.-]+", line).group(0).lower() for line in ours}
    assert listed >= NEEDED, NEEDED - listed
    assert any(line.startswith("openssh-clients [platform:rpm]") and "exchangeops.patching" in line
               for line in data["system"]), data["system"]
