#!/usr/bin/python
# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: patch_plan
short_description: Rank catalog patches by real risk from advisory feeds and fleet facts
version_added: 0.1.0
description:
  - Reads advisory feeds (OSV, CSAF 2.0, NVD CVE API 2.0, CVE JSON 5.1 with CISA vulnrichment SSVC,
    CISA KEV, FIRST EPSS CSV; the format is detected from the content), the patch catalog and
    fleet facts, and returns a ranked plan.
  - Each patch gets an SSVC Deployer class (Defer, Scheduled, Out-of-cycle, Immediate), a
    CISA BOD 26-04 due date, a score, its target nodes and a per-factor explanation naming the
    source and date of every input.
  - A patch whose targets all run a fixed version already is listed under RV(plan.not_needed),
    not ranked.
  - Bad input (malformed or unknown feed, bad CVSS vector, incomplete catalog entry, unknown
    component, unparsable date) fails with one message naming the file, the record and the
    fix, and C(bad_input=true); no plan is written.
  - Hostile input is refused the same way. Feeds, catalog entries and the facts file must be
    regular files (a FIFO, a device such as C(/dev/zero) or a directory is refused unread) no
    larger than their cap (feeds O(max_feed_size), also once gunzipped; a catalog entry 1 MiB;
    the facts file 64 MiB). JSON is strict (duplicate keys, C(NaN)/C(Infinity), numbers of more
    than 64 digits and nesting deeper than 64 levels are refused); catalog YAML refuses duplicate
    keys and aliases. CVE IDs, patch ids and versions must be ASCII.
  - Runs on the controller; run it on C(localhost) or delegate it there.
author:
  - exchangeops engineering (@exchangeops)
attributes:
  check_mode:
    description: Can run in check mode and return the plan.
    support: full
    details: In check mode the plan is computed and returned but O(dest) is not written.
  diff_mode:
    description: Will return details on what has changed.
    support: none
options:
  feeds:
    description:
      - Paths of advisory feed files. Their format is detected from their content.
    type: list
    elements: path
    required: true
  catalog:
    description:
      - Folder of patch catalog entries (C(*.yml), one patch per file).
    type: path
    required: true
  facts:
    description:
      - Fleet facts, one record per node with C(name), C(component), C(version) and optionally
        C(criticality) (low, medium, high, very_high; default very_high for matching-engine and
        wallet-signer) and C(exposure) (small, controlled, open; default controlled).
      - Mutually exclusive with O(facts_file).
    type: list
    elements: dict
  facts_file:
    description:
      - 'JSON file C({"nodes": [...]}) with the same node records as O(facts), for offline planning.'
    type: path
  now:
    description:
      - The planning time, ISO 8601 (for example C(2026-11-24) or C(2026-11-24T09:00:00Z)).
        Defaults to the current time. Due dates and overdue flags are computed against it.
    type: str
  dest:
    description:
      - Write the plan to this JSON file (atomically). Nothing is written when planning fails.
    type: path
  exposure:
    description:
      - An exposure document written by M(exchangeops.patching.exposure) (C(exchpatch exposure); the feed
        cache's C(exposure.json)). With it, CVEs a patch removes without listing them are ranked with the patch
        (C(derived)), claimed fixes its SBOM contradicts are marked C(flagged), and CVEs no catalog patch
        fixes are ranked under RV(plan.needs_mitigation) with the same SSVC class and due date.
    type: path
  feed_freshness:
    description:
      - The RV(exchangeops.patching.feed_status#module:status) of the feed cache the O(feeds) come from.
        Its C(cache_dir), C(warnings) and per-feed C(synced_at) and C(age_s) are copied into
        RV(plan.feed_freshness), so whoever reads the plan sees how old its inputs were.
    type: dict
  max_feed_size:
    description:
      - The largest feed file read, in bytes or with a unit (C(256M), C(1G)); a gzip-compressed
        feed is also refused once it decompresses past this size.
      - The default fits the largest public feeds (an NVD 2.0 yearly file is about 150 MiB).
    type: str
    default: 256M
requirements:
  - cvss (Python library, on the controller)
"""

EXAMPLES = r"""
- name: Plan from live fleet facts
  exchangeops.patching.patch_plan:
    feeds:
      - feeds/nvd.json
      - feeds/kev.json
      - feeds/epss.csv
    catalog: patches
    facts: "{{ fleet_nodes }}"
    dest: /var/lib/exchpatch/plan.json
  delegate_to: localhost
  register: plan

- name: Plan offline from a facts file at a fixed time
  exchangeops.patching.patch_plan:
    feeds: "{{ lookup('ansible.builtin.fileglob', 'feeds/*', wantlist=True) }}"
    catalog: patches
    facts_file: fleet-facts.json
    now: "2026-11-24T00:00:00Z"
"""

RETURN = r"""
plan:
  description: The ranked plan.
  returned: success
  type: dict
  contains:
    generated_at:
      description: The planning time (O(now)), ISO 8601 UTC.
      type: str
      sample: "2026-11-24T00:00:00Z"
    patches:
      description:
        - Patches that some node needs, most urgent first. Each has C(id), C(component),
          C(version), C(rank), C(class) (immediate, out_of_cycle, scheduled, defer), C(due)
          (ISO date or null for fix-on-upgrade), C(overdue), C(score) (0-100; the class sets
          the band), C(window), C(targets), C(markets), C(cves) (per CVE C(id), C(kev), C(epss),
          C(cvss), C(exploitation), C(automatable), C(technical_impact), C(ssvc_deployer),
          C(ssvc_cisa), C(due), C(overdue), C(bod_26_04), C(derived) - removed by the patch per O(exposure)
          but not in its catalog C(fixes) - and C(flagged) - claimed but contradicted by the SBOM) and
          C(explanation) (C(factor), C(value), C(source), C(effect)).
      type: list
      elements: dict
    not_needed:
      description: Patches no node needs, with the reason.
      type: list
      elements: dict
    feed_freshness:
      description:
        - With O(feed_freshness), the feed cache the plan read, its warnings (stale, missing or failing
          feeds) and per feed C(synced_at) and C(age_s).
      type: dict
    needs_mitigation:
      description:
        - With O(exposure), CVEs exposed on nodes that no catalog patch fixes, most urgent first; each has
          C(rank), C(cve), C(class), C(due), C(overdue), C(score), C(window), C(nodes), C(packages),
          C(flagged_by) (patches that claim it although their SBOM still matches), C(cves) and
          C(explanation), like a patch. Empty without O(exposure).
      type: list
      elements: dict
bad_input:
  description: True when the module failed because of its input rather than a fault.
  returned: failure
  type: bool
  sample: true
dest:
  description: The file the plan was written to.
  returned: when O(dest) is set
  type: str
"""

import json
import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.exchangeops.patching.plugins.module_utils import _catalog, _feeds, _priority, _safe_io


def _facts(module: AnsibleModule) -> list:
    if module.params["facts_file"]:
        return _priority.load_facts_file(module.params["facts_file"])
    return _priority.nodes_from_facts(module.params["facts"] or [], "facts")


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            feeds=dict(type="list", elements="path", required=True),
            catalog=dict(type="path", required=True),
            facts=dict(type="list", elements="dict"),
            facts_file=dict(type="path"),
            now=dict(type="str"),
            dest=dict(type="path"),
            max_feed_size=dict(type="str", default="256M"),
            exposure=dict(type="path"),
            feed_freshness=dict(type="dict"),
        ),
        mutually_exclusive=[("facts", "facts_file")],
        required_one_of=[("facts", "facts_file")],
        supports_check_mode=True,
    )
    if not _feeds.HAS_CVSS:
        module.fail_json(msg=missing_required_lib("cvss"), exception=_feeds.CVSS_IMPORT_ERROR)
    if not module.params["feeds"]:
        module.fail_json(msg="feeds: give at least one advisory feed file", bad_input=True)
    max_feed_size = _safe_io.size_option(module, "max_feed_size")
    try:
        now = _priority.parse_now(module.params["now"])
        nodes = _facts(module)
        patches = _catalog.load_catalog(module.params["catalog"])
        intel = _feeds.load_intel(module.params["feeds"], max_feed_size)
        exposure = _priority.load_exposure(module.params["exposure"]) if module.params["exposure"] else None
        plan = _priority.build_plan(intel, patches, nodes, now, exposure)
        fresh = module.params["feed_freshness"]
        if fresh:
            feeds = fresh.get("feeds") if isinstance(fresh.get("feeds"), dict) else {}
            plan["feed_freshness"] = {
                "cache_dir": fresh.get("cache_dir"), "warnings": list(fresh.get("warnings") or []),
                "feeds": {n: {"synced_at": f.get("synced_at"), "age_s": f.get("age_s")}
                          for n, f in feeds.items() if isinstance(f, dict)}}
    except (_feeds.FeedError, _catalog.CatalogError, _priority.PlanError) as e:
        module.fail_json(msg=str(e), bad_input=True)
    except Exception as e:  # noqa: BLE001  # pylint: disable=broad-except
        module.fail_json(msg=f"planning failed: {e}", exception=traceback.format_exc())
    result = dict(changed=False, plan=plan)
    dest = module.params["dest"]
    if dest:
        _safe_io.write_dest(module, result, dest, json.dumps(plan, indent=2, sort_keys=False) + "\n", "plan",
                            ".plan-")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
