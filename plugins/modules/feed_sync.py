#!/usr/bin/python
# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: feed_sync
short_description: Keep the local vulnerability feed cache current (KEV, EPSS, NVD, vulnrichment, OSV, CSAF)
version_added: 0.2.0
description:
  - Refreshes the feed cache the plan reads from the public sources; CISA KEV, the FIRST EPSS daily
    gzip CSV, the NVD CVE API 2.0, CISA vulnrichment CVE 5 records, OSV (query batches for the purls
    of the given CycloneDX SBOMs, then the full records) and CSAF 2.0 providers discovered through
    their C(provider-metadata.json).
  - NVD is synced incrementally by last-modified windows of at most 120 days from the previous sync,
    paginated (at most 2000 a page, C(totalResults) checked on every page), within NVD's rate limit
    (5 requests per rolling 30 seconds, 50 with an API key); 403, 429 and 503 answers are retried with
    backoff, honouring C(Retry-After). KEV, EPSS and vulnrichment records use conditional requests
    (ETag, Last-Modified).
  - Nothing is half-written. Each feed is fully fetched, parsed and validated before it atomically replaces
    the cached copy; a feed that fails (HTTP error, truncated or invalid answer, totals changing during
    pagination, timeout, a CSAF document whose published hash does not match) keeps its previous copy, is
    named with the reason in RV(sync.errors) and C(state.json), and the task fails after the other feeds
    synced (unless O(fail_on_error=false)).
  - New KEV entries since the previous sync whose CVE hits a running node (from the cache's
    C(exposure.json)) are returned in RV(sync.new_kev) and posted to O(webhook_url) when set.
  - Runs on the controller; run it on C(localhost). See docs/feeds.md for the cache and mirror layouts.
author:
  - exchangeops engineering (@exchangeops)
attributes:
  check_mode:
    description: Can run in check mode.
    support: full
    details: In check mode nothing is fetched or written; RV(sync.feeds) says what each feed would request
      (for NVD, the date windows).
  diff_mode:
    description: Will return details on what has changed.
    support: none
options:
  cache_dir:
    description:
      - The feed cache folder (created when missing). The driver and the playbook default it to
        C($EXCHPATCH_FEED_CACHE), else C(<checkout>/.feeds-cache).
    type: path
    required: true
  only:
    description: Sync only these feeds (default all of them, in the order listed).
    type: list
    elements: str
    choices: [kev, epss, nvd, vulnrichment, osv, csaf]
  urls:
    description:
      - Override a source URL, keyed by feed (C(kev), C(epss), C(nvd), C(vulnrichment) base, C(osv) base);
        for example an internal proxy of NVD. The defaults are the public services.
    type: dict
    default: {}
  csaf_providers:
    description: URLs of CSAF 2.0 C(provider-metadata.json) files. Only TLP:WHITE/CLEAR ROLIE feeds are read.
    type: list
    elements: str
    default: []
  sbom:
    description: CycloneDX JSON SBOM files of the fleet's releases; OSV is queried for their purls.
    type: list
    elements: path
    default: []
  mirror:
    description:
      - Read every feed from this folder instead of the network (air-gapped venues). Layout in docs/feeds.md.
    type: path
  nvd_api_key:
    description: NVD API key (from vault), sent as the C(apiKey) header; raises the rate limit to 50 per 30 s.
    type: str
  nvd_api_key_file:
    description: File holding the NVD API key (first line). Mutually exclusive with O(nvd_api_key).
    type: path
  nvd_since:
    description:
      - For the first NVD sync only, start the windows at this ISO 8601 time instead of downloading the whole
        NVD (about 300,000 records).
    type: str
  vulnrichment_cves:
    description: CVEs whose vulnrichment records are wanted besides the KEV and the fleet's exposure.
    type: list
    elements: str
    default: []
  proxy:
    description:
      - HTTP(S) proxy URL for every request. Unset, the environment's C(https_proxy)/C(http_proxy) apply;
        an empty string goes direct.
    type: str
  webhook_url:
    description:
      - URL (a secret, from vault) that receives a JSON POST listing new KEV entries hitting running nodes
        (C(event), C(text), C(entries)). Never logged.
    type: str
  webhook_url_file:
    description: File holding the webhook URL (first line). Mutually exclusive with O(webhook_url).
    type: path
  timeout:
    description: Seconds one request may take.
    type: float
    default: 60
  max_retries:
    description: Retries of a request answered 403, 429 or 503.
    type: int
    default: 4
  rate_window:
    description: NVD's rolling rate-limit window in seconds (5 requests, 50 with a key, per window).
    type: float
    default: 30
  now:
    description: The sync time, ISO 8601 (tests); defaults to the current time.
    type: str
  fail_on_error:
    description: Fail the task when any feed (or the webhook) failed. The result is returned either way.
    type: bool
    default: true
"""

EXAMPLES = r"""
- name: Sync every feed into the cache
  exchangeops.patching.feed_sync:
    cache_dir: /var/lib/exchpatch/feeds
    sbom: "{{ lookup('ansible.builtin.fileglob', '/var/lib/exchpatch/sboms/*.cdx.json', wantlist=True) }}"
    csaf_providers:
      - https://www.wolfssl.com/.well-known/csaf/provider-metadata.json
    nvd_api_key: "{{ exchange_nvd_api_key | default(omit) }}"
    webhook_url: "{{ exchange_feeds_webhook_url | default(omit) }}"
  register: feeds

- name: Sync KEV and EPSS only, from a mirror folder
  exchangeops.patching.feed_sync:
    cache_dir: /var/lib/exchpatch/feeds
    mirror: /mnt/transfer/feeds
    only: [kev, epss]
"""

RETURN = r"""
sync:
  description: The sync result.
  returned: always (also on failure), unless the input was refused
  type: dict
  contains:
    ok:
      description: False when any feed or the webhook failed.
      type: bool
    feeds:
      description:
        - Per feed C(status) (updated, not_modified, skipped, failed, would_sync), C(records), C(error),
          C(requests) and feed-specific counts (NVD C(pages), C(windows), C(changed)).
      type: dict
    failed:
      description: Names of the feeds (and C(webhook)) that failed.
      type: list
      elements: str
    errors:
      description: One sentence per failure, naming the feed and why.
      type: list
      elements: str
    new_kev:
      description:
        - C(new) (CVE IDs added to KEV since the previous sync), C(affecting_nodes) (C(cve), C(nodes),
          C(date_added), C(due_date), C(name)), C(exposure_read) and C(baseline) (true on the first KEV sync,
          which reports nothing as new).
      type: dict
    webhook:
      description: C(sent), C(status), C(error) of the webhook POST, or null when none was due.
      type: dict
bad_input:
  description: True when the module failed because of its input rather than a fault.
  returned: failure
  type: bool
"""

import os
import traceback

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.exchangeops.patching.plugins.module_utils import _feedsync


def _secret_file(module: AnsibleModule, name: str) -> str | None:
    path = module.params[f"{name}_file"]
    if path is None:
        return module.params[name]
    try:
        with open(path, encoding="utf-8") as fh:
            value = fh.readline().strip()
    except OSError as e:
        module.fail_json(msg=f"{name}_file {path}: cannot read it ({e.strerror}); check the path", bad_input=True)
    if not value:
        module.fail_json(msg=f"{name}_file {path}: the file is empty; put the value on its first line",
                         bad_input=True)
    module.no_log_values.add(value)
    return value


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            cache_dir=dict(type="path", required=True),
            only=dict(type="list", elements="str", choices=list(_feedsync.FEEDS)),
            urls=dict(type="dict", default={}),
            csaf_providers=dict(type="list", elements="str", default=[]),
            sbom=dict(type="list", elements="path", default=[]),
            mirror=dict(type="path"),
            nvd_api_key=dict(type="str", no_log=True),
            nvd_api_key_file=dict(type="path"),
            nvd_since=dict(type="str"),
            vulnrichment_cves=dict(type="list", elements="str", default=[]),
            proxy=dict(type="str"),
            webhook_url=dict(type="str", no_log=True),
            webhook_url_file=dict(type="path"),
            timeout=dict(type="float", default=60.0),
            max_retries=dict(type="int", default=4),
            rate_window=dict(type="float", default=_feedsync.NVD_RATE_WINDOW_S),
            now=dict(type="str"),
            fail_on_error=dict(type="bool", default=True),
        ),
        mutually_exclusive=[("nvd_api_key", "nvd_api_key_file"), ("webhook_url", "webhook_url_file")],
        supports_check_mode=True,
    )
    p = module.params
    api_key = _secret_file(module, "nvd_api_key")
    webhook = _secret_file(module, "webhook_url")
    now = None
    if p["now"]:
        fixed = _feedsync.parse_time(p["now"])
        if fixed is None:
            module.fail_json(msg=f"now: {p['now']!r} is not an ISO 8601 time; e.g. 2026-11-24T09:00:00Z",
                             bad_input=True)
        now = fixed
    opts = _feedsync.SyncOptions(
        cache_dir=os.path.abspath(p["cache_dir"]), only=tuple(p["only"] or _feedsync.FEEDS),
        urls={str(k): str(v) for k, v in p["urls"].items()}, csaf_providers=list(p["csaf_providers"]),
        sboms=list(p["sbom"]), mirror=p["mirror"], nvd_api_key=api_key, nvd_since=p["nvd_since"],
        vulnrichment_cves=list(p["vulnrichment_cves"]), proxy=p["proxy"], webhook_url=webhook,
        timeout=p["timeout"], max_retries=p["max_retries"], rate_window=p["rate_window"], check=module.check_mode,
    )
    if now is not None:
        opts.now = lambda: now
    try:
        result = _feedsync.sync(opts)
    except _feedsync.FeedSyncInput as e:
        module.fail_json(msg=str(e), bad_input=True)
    except OSError as e:
        module.fail_json(msg=f"{p['cache_dir']}: cannot write the feed cache ({e.strerror or e}); check the folder "
                         "and its permissions", exception=traceback.format_exc())
    if not result["ok"] and p["fail_on_error"]:
        module.fail_json(msg="feed sync failed: " + "; ".join(result["errors"]), changed=result["changed"],
                         sync=result)
    module.exit_json(changed=result["changed"], sync=result)


if __name__ == "__main__":
    main()
