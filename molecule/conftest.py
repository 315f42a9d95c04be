# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""testinfra helpers shared by the scenarios' tests/ (pytest loads this conftest for every one).

Node state is read through the testinfra host of the node itself (its files, its supervisord,
its sockets, curl from the node), so the same checks work over the local connection and over
SSH. The admin token is read on the node and handed to curl on stdin: it never appears on a
command line or in a log. The seed record was written by molecule/shared/create.yml.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shlex
from pathlib import Path
from typing import Any

import pytest
import testinfra


def fleet_root() -> Path:
    return Path(os.environ["EXCHPATCH_TESTBED_DIR"])


@pytest.fixture(scope="session")
def seed() -> dict[str, Any]:
    """What create recorded: the seeding load report and every node's seq, role and journal."""
    return json.loads((fleet_root() / "molecule-seed.json").read_text())


@pytest.fixture()
def fleet_host(request: pytest.FixtureRequest) -> Any:
    """Another inventory host of the fleet by name (the load balancer, a node's peer), reached the
    way the inventory says (local or SSH)."""
    inventory = request.config.option.ansible_inventory

    def get(name: str) -> Any:
        return testinfra.get_host(f"ansible://{name}", ansible_inventory=inventory)

    return get


@pytest.fixture()
def controller() -> Any:
    """The controller (where locks live and ansible runs)."""
    return testinfra.get_host("local://")


def node_vars(host: Any) -> dict[str, Any]:
    return host.ansible.get_variables()


def current_release(host: Any) -> str:
    """The version `current` points at; fails unless it is a link into the node's releases/."""
    root = node_vars(host)["exchange_node_root"]
    link = host.file(f"{root}/current")
    assert link.is_symlink, f"{root}/current is not a symlink"
    target = link.linked_to
    assert str(Path(target).parent) == f"{root}/releases", f"{root}/current points outside releases/: {target}"
    manifest = json.loads(host.file(f"{target}/RELEASE.json").content_string)
    assert manifest["version"] == Path(target).name, manifest
    return Path(target).name


def releases_on_disk(host: Any) -> set[str]:
    root = node_vars(host)["exchange_node_root"]
    return {name for name in host.file(f"{root}/releases").listdir() if not name.startswith(".")}


def program(host: Any) -> Any:
    """The node's supervisord program (testinfra Supervisor) through the node's own supervisorctl."""
    hv = node_vars(host)
    return host.supervisor(hv["exchange_service_name"], supervisorctl_path=hv["exchange_supervisorctl"],
                           supervisorctl_conf=hv["exchange_supervisor_config"])


def assert_serving(host: Any) -> dict[str, Any]:
    """The program runs under supervisord, from the current release, and listens on the node's
    loopback address; returns its /v1/health answer."""
    hv = node_vars(host)
    prog = program(host)
    assert prog.is_running, f"{hv['exchange_service_name']} is {prog.status}"
    cmdline = host.file(f"/proc/{prog.pid}/cmdline").content_string.replace("\0", " ")
    assert f"{hv['exchange_node_root']}/current/bin/exchnode" in cmdline, cmdline
    address, port = hv["exchange_admin_url"].removeprefix("http://").split(":")
    assert host.socket(f"tcp://{address}:{port}").is_listening, f"nothing listens on {address}:{port}"
    return get_json(host, "/v1/health", token=False)


def get_json(host: Any, path: str, token: bool = True) -> dict[str, Any]:
    """GET a route of the node's admin API from the node itself (curl), as JSON."""
    hv = node_vars(host)
    url = shlex.quote(hv["exchange_admin_url"] + path)
    if token:
        tokfile = shlex.quote(f"{hv['exchange_node_root']}/etc/admin_token")
        cmd = f"printf 'Authorization: Bearer %s\\n' \"$(cat {tokfile})\" | curl -fsS --max-time 5 -H @- {url}"
    else:
        cmd = f"curl -fsS --max-time 5 {url}"
    return json.loads(host.check_output(cmd))


def assert_data_intact(host: Any, seed: dict[str, Any]) -> None:
    """The journal lives in data/, outside every release, and still starts with exactly what it
    held before converge (append-only: it may have grown, never shrunk or changed)."""
    hv = node_vars(host)
    name = hv["inventory_hostname"]
    before = seed["nodes"][name]["journal"]
    journal = host.file(before["path"])
    assert journal.is_file, f"{before['path']} is gone"
    real = host.check_output(f"readlink -f {shlex.quote(before['path'])}")
    assert real.startswith(f"{hv['exchange_node_root']}/data/"), f"{name}: journal resolves to {real}"
    assert journal.size >= before["size"], f"{name}: journal shrank from {before['size']} to {journal.size} bytes"
    prefix = host.check_output(f"head -c {int(before['size'])} {shlex.quote(before['path'])} | sha256sum")
    assert prefix.split()[0] == before["sha256"], f"{name}: the journal's first {before['size']} bytes changed"
    status = get_json(host, "/v1/status")
    assert status["seq"] >= seed["nodes"][name]["seq"], f"{name}: seq went back from {seed['nodes'][name]['seq']}"


def haproxy_servers(lb: Any) -> dict[str, dict[str, str]]:
    """{backend/server: stats row} from the HAProxy stats page, read on the load balancer host."""
    hv = node_vars(lb)
    address = hv["ansible_host"]
    out = lb.check_output(f"curl -fsS --max-time 5 'http://{address}:8404/stats;csv'")
    rows = csv.DictReader(io.StringIO(out.lstrip("# ")))
    return {f"{r['pxname']}/{r['svname']}": r for r in rows if r["svname"] not in ("FRONTEND", "BACKEND")}
