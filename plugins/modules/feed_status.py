#!/usr/bin/python
# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: feed_status
short_description: Report the freshness of the local vulnerability feed cache
version_added: 0.2.0
description:
  - Reads the feed cache's C(state.json) (written by M(exchangeops.patching.feed_sync)) and returns, per feed,
    when it was last refreshed, its age, its record count and the last sync error.
  - Warns for every feed older than O(max_age_hours) and returns a refusal reason when the KEV catalog was
    never synced or is older than O(kev_max_age_hours), because a stale KEV hides active exploitation.
  - Optionally writes the same as Prometheus gauges to O(prometheus) (for node_exporter's textfile collector).
  - Runs on the controller; run it on C(localhost).
author:
  - exchangeops engineering (@exchangeops)
attributes:
  check_mode:
    description: Can run in check mode.
    support: full
    details: In check mode the status is returned but O(prometheus) is not written.
  diff_mode:
    description: Will return details on what has changed.
    support: none
options:
  cache_dir:
    description: The feed cache folder.
    type: path
    required: true
  max_age_hours:
    description: Warn for any feed older than this.
    type: float
    default: 48
  kev_max_age_hours:
    description: Refuse (RV(status.refuse)) when the KEV catalog is older than this.
    type: float
    default: 72
  now:
    description: The time to judge ages at, ISO 8601; defaults to the current time.
    type: str
  prometheus:
    description: Also write the Prometheus text format to this file (atomically).
    type: path
  fail_on_refuse:
    description: Fail the task when the KEV catalog is too old (or missing).
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Check the feed cache before planning
  exchangeops.patching.feed_status:
    cache_dir: /var/lib/exchpatch/feeds
    fail_on_refuse: true

- name: Export feed freshness for Prometheus
  exchangeops.patching.feed_status:
    cache_dir: /var/lib/exchpatch/feeds
    prometheus: /var/lib/node_exporter/textfile/exchpatch_feeds.prom
"""

RETURN = r"""
status:
  description: Feed freshness.
  returned: always
  type: dict
  contains:
    feeds:
      description:
        - Per feed (kev, epss, nvd, vulnrichment, osv, csaf) C(synced_at), C(age_s) (null when never synced),
          C(records), C(files), C(source), C(last_attempt_at), C(last_error) (C(at), C(message)) and C(stale).
      type: dict
    warnings:
      description: Sentences about stale, missing or failing feeds.
      type: list
      elements: str
    refuse:
      description: Why a plan should refuse to run (KEV too old or never synced), or null.
      type: str
    new_kev:
      description: New KEV entries at the last KEV update and those hitting running nodes.
      type: dict
files:
  description:
    - The cached feed files a plan reads (absolute paths of the files each feed's last successful sync
      wrote), for M(exchangeops.patching.patch_plan)'s O(exchangeops.patching.patch_plan#module:feeds).
  returned: always
  type: list
  elements: str
prometheus:
  description: The file the gauges were written to.
  returned: when O(prometheus) is set
  type: str
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.exchangeops.patching.plugins.module_utils import _feedsync


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            cache_dir=dict(type="path", required=True),
            max_age_hours=dict(type="float", default=48.0),
            kev_max_age_hours=dict(type="float", default=72.0),
            now=dict(type="str"),
            prometheus=dict(type="path"),
            fail_on_refuse=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    p = module.params
    now = None
    if p["now"]:
        now = _feedsync.parse_time(p["now"])
        if now is None:
            module.fail_json(msg=f"now: {p['now']!r} is not an ISO 8601 time; e.g. 2026-11-24T09:00:00Z",
                             bad_input=True)
    if p["max_age_hours"] <= 0 or p["kev_max_age_hours"] <= 0:
        module.fail_json(msg="max_age_hours and kev_max_age_hours must be positive", bad_input=True)
    status = _feedsync.freshness(os.path.abspath(p["cache_dir"]), now, p["max_age_hours"] * 3600,
                                 p["kev_max_age_hours"] * 3600)
    for warning in status["warnings"]:
        module.warn(warning)
    result = dict(changed=False, status=status, files=_feedsync.cache_files(os.path.abspath(p["cache_dir"])))
    if p["prometheus"]:
        result["prometheus"] = p["prometheus"]
        if not module.check_mode:
            try:
                _feedsync.write_text_atomic(p["prometheus"], _feedsync.prometheus(status))
            except OSError as e:
                module.fail_json(msg=f"{p['prometheus']}: cannot write the metrics ({e.strerror}); check the "
                                 "folder exists and is writable", bad_input=True)
        result["changed"] = True
    if status["refuse"] and p["fail_on_refuse"]:
        module.fail_json(msg=status["refuse"], **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
