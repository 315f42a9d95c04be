"""admin_endpoints: inventory hosts to fleet_info's nodes option; bad inventories are named."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.exchangeops.patching.plugins.filter.admin_endpoints import FilterModule

F = FilterModule().filters()["admin_endpoints"]

HOSTVARS = {
    "me-0a": {"exchange_admin_url": "https://10.0.0.1:8443", "exchange_admin_token": "tok-a",
              "exchange_component": "matching-engine", "exchange_admin_validate_certs": False,
              "exchange_admin_ca_path": "/etc/ca.pem", "exchange_shard": 0},
    "w-1": {"exchange_admin_url": "http://10.0.0.9:8080", "exchange_admin_token": "tok-w",
            "exchange_component": "wallet-signer", "exchange_admin_client_cert": ""},
    "no-token": {"exchange_admin_url": "http://10.0.0.5:8080"},
    "no-url": {"exchange_admin_token": "t"},
}


def test_hosts_become_endpoints_in_order_with_only_the_tls_options_they_set():
    assert F(["w-1", "me-0a"], HOSTVARS) == [
        {"name": "w-1", "url": "http://10.0.0.9:8080", "token": "tok-w", "component": "wallet-signer"},
        {"name": "me-0a", "url": "https://10.0.0.1:8443", "token": "tok-a", "validate_certs": False,
         "ca_path": "/etc/ca.pem", "component": "matching-engine"},
    ]
    assert F([], HOSTVARS) == []


@pytest.mark.parametrize(("hosts", "words"), [
    (["ghost"], "'ghost' is not a host of the inventory"),
    (["no-token"], "no-token has no exchange_admin_token"),
    (["no-url"], "no-url has no exchange_admin_url"),
    ("me-0a", "give a list of inventory host names, not str"),
    ([["me-0a"]], "is not a host of the inventory"),
])
def test_a_bad_host_list_is_named(hosts, words):
    with pytest.raises(AnsibleFilterError) as e:
        F(hosts, HOSTVARS)
    assert words in str(e.value)
    assert "tok-" not in str(e.value)
