# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Pure parts of the feed sync: NVD windows and dates, the vulnrichment layout, SBOM purls, the rate limiter.

The network parts are tested against a local feed server in tests/feeds/."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from ansible_collections.exchangeops.patching.plugins.module_utils import _feedsync


def test_nvd_windows_are_consecutive_and_at_most_120_days():
    start = datetime(2025, 1, 1, tzinfo=UTC)
    end = start + timedelta(days=365)
    windows = _feedsync.nvd_windows(start, end)
    assert windows[0][0] == start and windows[-1][1] == end
    assert all(b - a <= timedelta(days=120) for a, b in windows)
    assert all(windows[i][1] == windows[i + 1][0] for i in range(len(windows) - 1))
    assert len(windows) == 4
    assert _feedsync.nvd_windows(end, end) == [(end, end)]


def test_nvd_time_is_the_extended_iso_form_nvd_accepts():
    assert _feedsync.nvd_time(datetime(2026, 11, 24, 9, 5, 7, 123456, tzinfo=UTC)) == "2026-11-24T09:05:07.123+00:00"


@pytest.mark.parametrize(("cve", "path"), [
    ("CVE-2024-6387", "2024/6xxx/CVE-2024-6387.json"),
    ("CVE-2024-3094", "2024/3xxx/CVE-2024-3094.json"),
    ("CVE-2024-38063", "2024/38xxx/CVE-2024-38063.json"),
    ("CVE-2021-0001", "2021/0xxx/CVE-2021-0001.json"),
])
def test_vulnrichment_path_follows_the_cisagov_repository_layout(cve, path):
    assert _feedsync.vulnrichment_path(cve) == path


def test_sbom_purls_reads_nested_components_and_the_metadata_component(tmp_path):
    doc = {"bomFormat": "CycloneDX", "specVersion": "1.6", "metadata": {"component": {
        "name": "wallet-signer", "purl": "pkg:generic/exchangeops/wallet-signer@2.3.1"}},
        "components": [{"name": "openssl", "purl": "pkg:deb/debian/openssl@3.0.15-1~deb12u1?distro=debian-12"},
                       {"name": "noversion", "purl": "pkg:deb/debian/zlib"},
                       {"name": "outer", "components": [{"name": "inner", "purl": "pkg:pypi/cryptography@42.0.5"}]}]}
    path = tmp_path / "sbom.cdx.json"
    path.write_text(json.dumps(doc))
    assert sorted(_feedsync.sbom_purls(str(path))) == [
        "pkg:deb/debian/openssl@3.0.15-1~deb12u1?distro=debian-12", "pkg:generic/exchangeops/wallet-signer@2.3.1",
        "pkg:pypi/cryptography@42.0.5"]
    path.write_text(json.dumps({"spdxVersion": "SPDX-2.3"}))
    with pytest.raises(_feedsync.FeedSyncInput, match="not a CycloneDX JSON SBOM"):
        _feedsync.sbom_purls(str(path))


def test_rate_limiter_never_lets_limit_plus_one_requests_into_a_window():
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    limiter = _feedsync.RateLimiter(5, 30.0, lambda: now[0], sleep)
    starts = []
    for _request in range(12):
        limiter.acquire()
        starts.append(now[0])
        now[0] += 0.1  # the request takes 0.1 s
        limiter.release()
    assert all(starts[i + 5] - (starts[i] + 0.1) >= 30.0 - 1e-9 for i in range(len(starts) - 5))
    assert len(slept) == 2


def test_freshness_of_an_empty_cache_refuses_and_lists_no_files(tmp_path):
    fresh = _feedsync.freshness(str(tmp_path), datetime(2026, 11, 24, tzinfo=UTC))
    assert fresh["refuse"] and set(fresh["feeds"]) == set(_feedsync.FEEDS)
    assert _feedsync.cache_files(str(tmp_path)) == []


def test_osv_queries_distro_packages_by_ecosystem_and_everything_else_by_purl():
    """OSV answers nothing for a pkg:deb/ubuntu purl with a version (google/osv.dev#2842): ask by ecosystem."""
    ubuntu = "pkg:deb/ubuntu/openssh@1:9.6p1-3ubuntu13?arch=source&distro=ubuntu-24.04"
    assert _feedsync.osv_query(ubuntu) == {"package": {"name": "openssh", "ecosystem": "Ubuntu"},
                                           "version": "1:9.6p1-3ubuntu13"}
    assert _feedsync.osv_query("pkg:deb/debian/xz-utils@5.6.0-0.2?distro=debian-13")["package"]["ecosystem"] == "Debian"
    for purl in ("pkg:pypi/django@4.0.3", "pkg:generic/exchangeops/matching-engine@1.4.3",
                 "pkg:deb/ubuntu/openssh", "not a purl"):
        assert _feedsync.osv_query(purl) == {"package": {"purl": purl}}
