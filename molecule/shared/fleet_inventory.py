#!/usr/bin/env python
# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Ansible inventory script: the inventory of the scenario's testbed fleet.

Molecule links this script into the scenario's inventory (provisioner.inventory.links.hosts).
The fleet does not exist yet when molecule prepares the create step, and a link must point at
something that exists, so the link points here and this script reads whatever the fleet wrote:
``$EXCHPATCH_TESTBED_DIR/inventory/`` (hosts.yml, group_vars/<group>/*.yml and host_vars/<host>.yml,
the layout ``exchpatch testbed up`` writes; host_vars are where the ssh scenario puts the SSH
connection of each node). Before create and after destroy it answers an empty inventory.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml


def _load_vars(path: Path) -> dict[str, Any]:
    """Variables of a group_vars/host_vars entry: one YAML file, or a folder of them."""
    files = sorted(p for p in path.iterdir() if p.suffix in (".yml", ".yaml")) if path.is_dir() else [path]
    merged: dict[str, Any] = {}
    for f in files:
        merged.update(yaml.safe_load(f.read_text()) or {})
    return merged


def _find_vars(folder: Path, name: str) -> dict[str, Any]:
    for candidate in (folder / name, folder / f"{name}.yml", folder / f"{name}.yaml"):
        if candidate.exists():
            return _load_vars(candidate)
    return {}


def _walk(name: str, group: dict[str, Any], out: dict[str, Any], hostvars: dict[str, Any]) -> None:
    entry = out.setdefault(name, {"hosts": [], "vars": {}, "children": []})
    for host, hv in (group.get("hosts") or {}).items():
        entry["hosts"].append(host)
        hostvars.setdefault(host, {}).update(hv or {})
    entry["vars"].update(group.get("vars") or {})
    for child, sub in (group.get("children") or {}).items():
        entry["children"].append(child)
        _walk(child, sub or {}, out, hostvars)


def fleet_inventory(inventory_dir: Path) -> dict[str, Any]:
    """The fleet inventory in the JSON shape of an Ansible inventory script (``--list``)."""
    hosts_file = inventory_dir / "hosts.yml"
    if not hosts_file.exists():
        return {"_meta": {"hostvars": {}}}
    data = yaml.safe_load(hosts_file.read_text()) or {}
    out: dict[str, Any] = {}
    hostvars: dict[str, Any] = {}
    for name, group in data.items():
        _walk(name, group or {}, out, hostvars)
    for name, entry in out.items():
        entry["vars"].update(_find_vars(inventory_dir / "group_vars", name))
    for host, hv in hostvars.items():
        hv.update(_find_vars(inventory_dir / "host_vars", host))
    out["_meta"] = {"hostvars": hostvars}
    return out


def main(argv: list[str]) -> int:
    root = os.environ.get("EXCHPATCH_TESTBED_DIR", "")
    inventory = fleet_inventory(Path(root) / "inventory") if root else {"_meta": {"hostvars": {}}}
    if len(argv) > 2 and argv[1] == "--host":
        print(json.dumps(inventory["_meta"]["hostvars"].get(argv[2], {})))
    else:
        print(json.dumps(inventory))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
