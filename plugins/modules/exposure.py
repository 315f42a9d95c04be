#!/usr/bin/python
# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: exposure
short_description: Which node is exposed to which CVE now, from each running release's SBOM
version_added: 0.2.0
description:
  - Matches every node's running-release SBOM (CycloneDX 1.4 to 1.6 JSON, components with package URLs) against
    OSV records (C(affected[]) ecosystem, package name, ECOSYSTEM and SEMVER ranges, C(versions) lists) with the
    C(univers) version-range library, and against NVD CPE configurations for CVEs no OSV record describes.
  - VEX statements (OpenVEX, CycloneDX VEX) saying a product is not affected take it out of a CVE's exposure; they
    are listed under C(not_affected) with their justification.
  - With O(catalog), says per CVE which catalog patch removes it (the patch's SBOM, from the entry's
    C(sbom) C({url, sha256}) or O(patch_sboms), no longer matches) and checks each entry's C(fixes) against the
    SBOM difference from the running release to the patch - a claimed fix whose component the patch does not
    change is flagged; a CVE the patch removes but does not list is added as derived.
  - A CVE with exposed nodes that no patch removes is marked C(needs_mitigation).
  - Only reads, except O(dest). Bad input fails with one message naming the file, the field and the fix, and
    C(bad_input=true); nothing is written then.
  - Runs on the controller.
author:
  - exchangeops engineering (@exchangeops)
attributes:
  check_mode:
    description: Computes and returns the exposure; O(dest) is not written.
    support: full
  diff_mode:
    description: Will return details on what has changed.
    support: none
options:
  nodes:
    description:
      - Node records C(name), C(component), C(version) and C(sbom) (the SBOM document, as
        M(exchangeops.patching.fleet_info) returns it with C(sbom=true), or a file path).
      - Mutually exclusive with O(facts_file).
    type: list
    elements: dict
  facts_file:
    description:
      - 'Offline mode: a JSON file C({"nodes": [{"name", "component", "version", "sbom": "<path>"}],
        "patch_sboms": {"<patch id>": "<path>"}}); paths are relative to the file.'
    type: path
  osv:
    description:
      - 'OSV files: C({"vulns": [...]}) as the feed cache''s C(osv.json), a list of records, or one record.'
    type: list
    elements: path
    required: true
  nvd:
    description:
      - An NVD CVE API 2.0 document whose CPE configurations are the fallback for CVEs no OSV record describes.
    type: path
  vex:
    description:
      - OpenVEX or CycloneDX VEX documents.
    type: list
    elements: path
    default: []
  catalog:
    description:
      - Patch catalog folder; enables C(fixed_by), the C(fixes) check and derived fixes.
    type: path
  patch_sboms:
    description:
      - SBOM file per patch id, overriding the catalog entry's C(sbom).
    type: dict
    default: {}
  generated_at:
    description:
      - The time written into the result (ISO 8601); default now.
    type: str
  dest:
    description:
      - Write the exposure document to this JSON file (atomically).
    type: path
  max_file_size:
    description:
      - The largest OSV, NVD, SBOM or VEX file read, in bytes or with a unit (C(256M), C(1G)).
    type: str
    default: 256M
requirements:
  - univers (Python library, on the controller)
  - packageurl-python (Python library, on the controller)
"""

EXAMPLES = r"""
- name: Exposure from live node SBOMs
  exchangeops.patching.exposure:
    nodes: "{{ fleet.nodes }}"
    osv: [/var/lib/exchpatch/feeds/osv.json]
    nvd: /var/lib/exchpatch/feeds/nvd.json
    vex: [vex/openvex.json]
    catalog: patches
    dest: /var/lib/exchpatch/feeds/exposure.json
  delegate_to: localhost

- name: Exposure offline from a facts file listing SBOM paths
  exchangeops.patching.exposure:
    facts_file: fleet-sboms.json
    osv: [feeds/osv.json]
  register: exposure
"""

RETURN = r"""
exposure:
  description: The exposure document (schema 1).
  returned: success
  type: dict
  contains:
    schema:
      description: Always 1.
      type: int
    generated_at:
      description: O(generated_at), ISO 8601 UTC.
      type: str
    cves:
      description:
        - Per CVE C(nodes) (exposed now), C(packages) (purls matched), C(records) (OSV ids or NVD),
          C(sources) (osv, nvd-cpe), C(fixed_by) (patches whose SBOM no longer matches), C(claimed_by)
          (patches that list it but carry no SBOM to show it), C(flagged_by) (patches that list it although
          their SBOM still matches), C(unfixed_nodes),
          C(needs_mitigation) and C(not_affected) (C(node), C(package), C(justification), C(status),
          C(statement)).
      type: dict
    nodes:
      description: Per node C(component), C(version), C(release), C(sbom_sha256) and C(cves).
      type: dict
    patches:
      description:
        - Per catalog patch C(claimed), C(verified), C(flagged) (C(cve), C(from), C(reason)), C(unverified),
          C(derived), C(removes) and C(from) (running releases compared, with the SBOM diff).
      type: dict
    warnings:
      description: Versions or ranges that could not be evaluated (never silently dropped).
      type: list
      elements: str
bad_input:
  description: True when the module failed because of its input.
  returned: failure
  type: bool
dest:
  description: The file written.
  returned: when O(dest) is set
  type: str
"""

import datetime
import json
import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.exchangeops.patching.plugins.module_utils import _catalog, _exposure, _safe_io, _sbom
from ansible_collections.exchangeops.patching.plugins.module_utils._errors import InputError


def _run(module: AnsibleModule, size: int) -> dict:
    p = module.params
    if p["facts_file"]:
        nodes, overrides = _exposure.load_facts(p["facts_file"])
    else:
        nodes, overrides = _exposure.nodes_from_records(p["nodes"] or [], "nodes", None, size), {}
    overrides.update(p["patch_sboms"] or {})
    osv = _exposure.load_osv(p["osv"], size)
    nvd = _exposure.load_nvd(p["nvd"], size) if p["nvd"] else None
    vex = [st for path in p["vex"] for st in _sbom.load_vex(path, size)]
    patches = []
    if p["catalog"]:
        catalog = _catalog.load_catalog(p["catalog"])
        patches = _exposure.patch_sboms(catalog, nodes, overrides, _catalog.version_key, None, size)
    at = p["generated_at"] or datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat()
    return _exposure.compute(nodes, _exposure.Matcher(osv, nvd), vex, patches, at.replace("+00:00", "Z"))


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            nodes=dict(type="list", elements="dict"),
            facts_file=dict(type="path"),
            osv=dict(type="list", elements="path", required=True),
            nvd=dict(type="path"),
            vex=dict(type="list", elements="path", default=[]),
            catalog=dict(type="path"),
            patch_sboms=dict(type="dict", default={}),
            generated_at=dict(type="str"),
            dest=dict(type="path"),
            max_file_size=dict(type="str", default="256M"),
        ),
        mutually_exclusive=[("nodes", "facts_file")],
        required_one_of=[("nodes", "facts_file")],
        supports_check_mode=True,
    )
    if not _exposure.HAS_UNIVERS:
        module.fail_json(msg=missing_required_lib("univers"), exception=_exposure.UNIVERS_IMPORT_ERROR)
    if not _sbom.HAS_PACKAGEURL:
        module.fail_json(msg=missing_required_lib("packageurl-python"), exception=_sbom.PACKAGEURL_IMPORT_ERROR)
    size = _safe_io.size_option(module, "max_file_size", "256M")
    try:
        doc = _run(module, size)
    except InputError as e:
        module.fail_json(msg=str(e), bad_input=True)
    except Exception as e:  # noqa: BLE001  # pylint: disable=broad-except
        module.fail_json(msg=f"exposure failed: {e}", exception=traceback.format_exc())
    result = dict(changed=False, exposure=doc)
    dest = module.params["dest"]
    if dest:
        _safe_io.write_dest(module, result, dest, json.dumps(doc, indent=2) + "\n", "exposure", ".exposure-")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
