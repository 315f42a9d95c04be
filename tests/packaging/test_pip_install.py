"""``pip install .`` of the driver works outside a checkout: the wheel carries ``exchpatch`` only (no generic
top-level ``testbed``), runs the installed collection's playbooks by name, sets what the checkout's
ansible.cfg sets unless the caller's configuration says otherwise, asks for an inventory, and says where
the testbed is; from the checkout, the testbed commands still work."""

from __future__ import annotations

import email
import json
import os
import re
import zipfile
from pathlib import Path

import pytest
from ansible.config.manager import ConfigManager

from exchpatch import jobs
from tests.packaging.conftest import BIN, REPO, clean_env, copy_checkout, run
from tests.packaging.test_ee import _pins


@pytest.fixture(scope="session")
def wheel(packaging_tmp: Path, home: Path) -> Path:
    source = copy_checkout(packaging_tmp / "wheel-source")  # a clean tree: no stale build/ of this checkout
    out = packaging_tmp / "wheel"
    run([BIN / "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q", "-w", out, "."], cwd=source,
        env=clean_env(home), timeout=600)
    (whl,) = out.glob("exchpatch-*.whl")
    return whl


@pytest.fixture(scope="session")
def site(wheel: Path, packaging_tmp: Path, home: Path) -> Path:
    target = packaging_tmp / "site"
    run([BIN / "pip", "install", "--no-deps", "--disable-pip-version-check", "-q", "--target", target, wheel],
        cwd=packaging_tmp, env=clean_env(home))
    return target


def _exchpatch(site: Path, cwd: Path, home: Path, *args: str, expect: int | None = 0,
               **env: str) -> dict:
    """``python -m exchpatch ... --json`` from the installed wheel (this venv's python has its dependencies)."""
    res = run([BIN / "python", "-m", "exchpatch", *args, "--json"], cwd=cwd,
              env=clean_env(home, **{"PYTHONPATH": str(site), "EXCHPATCH_DATA_DIR": str(cwd / "data"), **env}),
              expect=expect)
    return json.loads(res.stdout)


def test_the_wheel_carries_the_driver_only(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta = email.message_from_bytes(zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))))
        top_level = zf.read(next(n for n in names if n.endswith(".dist-info/top_level.txt"))).decode().split()
    assert top_level == ["exchpatch"]
    assert {n.split("/", 1)[0] for n in names} == {"exchpatch", wheel.name.split("-py3")[0] + ".dist-info"}
    assert "exchpatch/empty_inventory.yml" in names  # offline plan and the audit commands run against it
    # ansible-core, ansible-runner and the collection's controller packages, pinned as the tests run them
    requires = {re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower(): r.split(";")[0].strip()
                for r in meta.get_all("Requires-Dist") if "extra ==" not in r}
    # exchpatch[serve]: the chatops service's packages, an extra (the playbooks never need them)
    serve = {re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower(): r.split(";")[0].strip()
             for r in meta.get_all("Requires-Dist") if 'extra == "serve"' in r}
    collection = _pins(REPO / "requirements.txt")
    dev = _pins(REPO / "requirements" / "dev.txt")
    assert set(requires) == {*collection, "ansible-core", "ansible-runner"}
    assert {n.replace("_", "-") for n in serve} == {"fastapi", "prometheus-client", "slack-sdk", "uvicorn"}, serve
    dev = {n.replace("_", "-"): v for n, v in dev.items()}
    for name, spec in {**requires, **serve}.items():
        assert spec.endswith(f"=={dev[name.replace('_', '-')]}"), (spec, dev)


def test_the_installed_driver_runs_the_installed_collections_playbook(site, collections_path, packaging_tmp, home):
    cwd = packaging_tmp / "elsewhere"
    cwd.mkdir()
    trail = cwd / "audit.jsonl"
    trail.write_text("")
    doc = _exchpatch(site, cwd, home, "audit", "verify", "--audit-file", str(trail),
                     ANSIBLE_COLLECTIONS_PATH=str(collections_path))
    assert doc["data"]["ok"] is True and doc["data"]["records"] == 0, doc
    artifacts = Path(doc["job"]["artifacts"])
    command = json.loads((artifacts / "command").read_text())
    assert command["command"][-1] == "exchangeops.patching.audit" and command["cwd"] == str(cwd)
    assert command["command"][command["command"].index("-i") + 1] == str(site / "exchpatch" / "empty_inventory.yml")
    assert set(command["env"]["ANSIBLE_CALLBACKS_ENABLED"].split(",")) == {
        "exchangeops.patching.audit", "exchangeops.patching.lease"}
    assert "ANSIBLE_CONFIG" not in command["env"]
    installed = collections_path / "ansible_collections" / "exchangeops" / "patching"
    task_paths = {(json.loads(p.read_text()).get("event_data") or {}).get("task_path")
                  for p in (artifacts / "job_events").glob("*.json")} - {None}
    assert any(t.startswith(f"{installed}/playbooks/audit.yml:") for t in task_paths), task_paths
    assert all(t.startswith(f"{installed}/") for t in task_paths), task_paths  # nothing from the checkout


def test_outside_a_checkout_the_driver_asks_for_an_inventory_and_the_collection(site, collections_path,
                                                                                packaging_tmp, home):
    cwd = packaging_tmp / "no-inventory"
    cwd.mkdir()
    doc = _exchpatch(site, cwd, home, "status", expect=2, ANSIBLE_COLLECTIONS_PATH=str(collections_path))
    assert "--inventory" in doc["error"] and "ANSIBLE_INVENTORY" in doc["error"], doc
    doc = _exchpatch(site, cwd, home, "audit", "verify", "--audit-file", str(cwd / "none.jsonl"), expect=2,
                     ANSIBLE_COLLECTIONS_PATH=str(cwd / "nothing-here"))
    assert "exchangeops.patching is not installed" in doc["error"] and "ansible-galaxy collection install" in \
        doc["error"], doc
    assert not (cwd / "data" / "runs").exists() or not list((cwd / "data" / "runs").iterdir())  # nothing started


def test_the_testbed_commands_of_an_installed_driver_name_the_checkout(site, packaging_tmp, home):
    cwd = packaging_tmp / "no-testbed"
    # a package called testbed elsewhere on the path must not be taken for ours
    (cwd / "other" / "testbed").mkdir(parents=True)
    (cwd / "other" / "testbed" / "__init__.py").write_text("raise SystemExit('a stranger testbed was imported')\n")
    doc = _exchpatch(site, cwd, home, "testbed", "status", expect=2, PYTHONPATH=f"{site}:{cwd / 'other'}")
    assert "ships with the source checkout" in doc["error"] and "git clone" in doc["error"] \
        and "make demo" in doc["error"], doc


def test_from_the_checkout_the_testbed_commands_find_the_testbed(packaging_tmp, home):
    """The editable install maps exchpatch only; the CLI puts the checkout root on sys.path for the testbed."""
    cwd = packaging_tmp / "checkout-testbed"
    cwd.mkdir()
    res = run([BIN / "python", "-m", "exchpatch", "testbed", "--root", cwd / "absent", "status", "--json"], cwd=cwd,
              env=clean_env(home), expect=1)
    assert "no testbed at" in json.loads(res.stdout)["error"], res.stdout


# --------------------------------------------------------------------------- settings outside a checkout


@pytest.fixture
def outside_checkout(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, collections_path: Path) -> Path:
    """jobs as an installed wheel sees it, from a folder of the caller's with the collection installed."""
    monkeypatch.setattr(jobs, "CHECKOUT", None)
    monkeypatch.setattr(jobs, "DEFAULT_INVENTORY", None)
    for name in [n for n in os.environ if n.startswith("ANSIBLE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ANSIBLE_COLLECTIONS_PATH", str(collections_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_collection_settings_are_what_the_checkouts_ansible_cfg_sets():
    config = ConfigManager(str(REPO / "ansible.cfg"))
    for name, (_variable, value) in jobs.COLLECTION_SETTINGS.items():
        setting, origin = config.get_config_value_and_origin(name)
        assert origin == str(REPO / "ansible.cfg"), (name, origin)
        expected = ",".join(setting) if isinstance(setting, list) else str(setting)
        assert value == expected, (name, value, expected)


def test_in_a_checkout_runs_use_its_playbooks_and_ansible_cfg():
    env, where = jobs._run_settings("rolling_patch.yml", None)
    assert env == {"ANSIBLE_CONFIG": str(REPO / "ansible.cfg")}
    assert where == {"project_dir": str(REPO), "playbook": "playbooks/rolling_patch.yml",
                     "inventory": str(REPO / "inventories" / "testbed")}


def test_outside_a_checkout_the_callers_settings_win(outside_checkout, monkeypatch):
    env, where = jobs._run_settings("rolling_patch.yml", "/srv/inventory")
    assert where == {"project_dir": str(outside_checkout), "playbook": "exchangeops.patching.rolling_patch",
                     "inventory": "/srv/inventory"}
    assert env == dict(jobs.COLLECTION_SETTINGS.values())
    # the caller's environment and ansible.cfg (here: the one in the current folder) decide what they set;
    # the collection's callbacks join the caller's
    (outside_checkout / "ansible.cfg").write_text("[defaults]\nforks = 7\ninventory = /srv/hosts.yml\n")
    monkeypatch.setenv("ANSIBLE_TIMEOUT", "90")
    monkeypatch.setenv("ANSIBLE_CALLBACKS_ENABLED", "ansible.posix.profile_tasks")
    env, where = jobs._run_settings("fleet_status.yml", None)
    assert where["inventory"] is None  # ansible-playbook takes the inventory from that ansible.cfg
    assert "ANSIBLE_FORKS" not in env and "ANSIBLE_TIMEOUT" not in env
    assert env["ANSIBLE_CALLBACKS_ENABLED"] == ("ansible.posix.profile_tasks,exchangeops.patching.audit,"
                                                "exchangeops.patching.lease")
    assert env["ANSIBLE_PIPELINING"] == "True"


def test_outside_a_checkout_no_inventory_is_bad_input(outside_checkout, monkeypatch):
    with pytest.raises(jobs.BadInput, match="--inventory"):
        jobs._run_settings("fleet_status.yml", None)
    monkeypatch.setenv("ANSIBLE_INVENTORY", "/srv/hosts.yml")
    assert jobs._run_settings("fleet_status.yml", None)[1]["inventory"] is None
