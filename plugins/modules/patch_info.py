#!/usr/bin/python
# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: patch_info
short_description: Read and validate one patch catalog entry
version_added: 0.1.0
description:
  - Loads the patch catalog, validates every entry (so a broken catalog is caught before a
    rollout, not half-way), and returns the entry with the given id.
  - An unknown id fails with the ids the catalog does have.
  - A bad catalog fails with one message naming the file, the field and the fix, and
    C(bad_input=true). Entries must be regular files of at most 1 MiB (a FIFO or C(/dev/zero)
    named C(*.yml) is refused unread), in strict YAML (no duplicate keys, no aliases), with
    ASCII ids, versions and CVE IDs.
  - With O(component) and O(version) instead of O(id), returns the entry that installed that
    version, or C(patch=null) when the catalog has none (a release built outside the catalog).
author:
  - exchangeops engineering (@exchangeops)
attributes:
  check_mode:
    description: Can run in check mode and return the entry.
    support: full
  diff_mode:
    description: Will return details on what has changed.
    support: none
options:
  catalog:
    description: Folder of patch catalog entries (C(*.yml), one patch per file).
    type: path
    required: true
  id:
    description: The patch id, for example C(matching-engine-1.4.3).
    type: str
  component:
    description: Look the entry up by component and O(version) instead of by id.
    type: str
    choices: [matching-engine, wallet-signer]
  version:
    description: With O(component), the version whose entry to return.
    type: str
"""

EXAMPLES = r"""
- name: Read the patch to roll out
  exchangeops.patching.patch_info:
    catalog: patches
    id: matching-engine-1.4.3
  register: rollout_patch
"""

RETURN = r"""
patch:
  description: The validated catalog entry (null when looked up by version and not found).
  returned: success
  type: dict
  contains:
    id:
      description: Patch id.
      type: str
    component:
      description: matching-engine or wallet-signer.
      type: str
    version:
      description: Version the patch installs.
      type: str
    artifact:
      description: C(url), C(sha256) and C(signature) of the release artifact.
      type: dict
    fixes:
      description: CVE IDs the patch fixes.
      type: list
      elements: str
    restart:
      description: none, service or system.
      type: str
    migration:
      description: none, forward_compatible or irreversible.
      type: str
    change_size:
      description: C(files) and C(lines) changed.
      type: dict
    released_at:
      description: Release time, ISO 8601 UTC.
      type: str
    source:
      description: The catalog file the entry came from.
      type: str
    sbom:
      description:
        - C(url) and C(sha256) of the release's CycloneDX SBOM; null when the entry names none.
      type: dict
bad_input:
  description: True when the catalog or the id is wrong.
  returned: failure
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.exchangeops.patching.plugins.module_utils import _catalog


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            catalog=dict(type="path", required=True),
            id=dict(type="str"),
            component=dict(type="str", choices=["matching-engine", "wallet-signer"]),
            version=dict(type="str"),
        ),
        required_one_of=[("id", "component")],
        mutually_exclusive=[("id", "component")],
        required_together=[("component", "version")],
        supports_check_mode=True,
    )
    try:
        patches = _catalog.load_catalog(module.params["catalog"])
    except _catalog.CatalogError as e:
        module.fail_json(msg=str(e), bad_input=True)
    wanted = module.params["id"]
    if wanted is None:
        found = [p for p in patches
                 if p.component == module.params["component"] and p.version == module.params["version"]]
        if not found:
            module.exit_json(changed=False, patch=None)
    else:
        found = [p for p in patches if p.id == wanted]
    if not found:
        known = ", ".join(p.id for p in patches) or "none"
        module.fail_json(msg=f"patch {wanted!r} is not in the catalog {module.params['catalog']} (it has: {known}); "
                             "check the id or build the release with `exchpatch testbed release`", bad_input=True)
    p = found[0]
    module.exit_json(changed=False, patch={
        "id": p.id, "component": p.component, "version": p.version,
        "artifact": {"url": p.artifact_url, "sha256": p.sha256, "signature": p.signature},
        "fixes": list(p.fixes), "restart": p.restart, "migration": p.migration,
        "change_size": {"files": p.change_files, "lines": p.change_lines},
        "released_at": p.released_at, "source": p.source,
        "sbom": None if p.sbom_url is None else {"url": p.sbom_url, "sha256": p.sbom_sha256},
    })


if __name__ == "__main__":
    main()
