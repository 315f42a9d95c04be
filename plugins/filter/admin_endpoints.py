# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The admin API endpoints of inventory hosts, as the nodes option of fleet_info wants them."""

from __future__ import annotations

from collections.abc import Mapping

from ansible.errors import AnsibleFilterError

# inventory variable -> fleet_info nodes[] suboption
OPTIONAL = {
    "exchange_admin_validate_certs": "validate_certs",
    "exchange_admin_ca_path": "ca_path",
    "exchange_admin_client_cert": "client_cert",
    "exchange_admin_client_key": "client_key",
    "exchange_component": "component",
}


def admin_endpoints(hosts, hostvars):
    """``[{name, url, token, ...}]`` for each host name in ``hosts``, read from ``hostvars``."""
    if isinstance(hosts, (str, bytes)) or not isinstance(hosts, (list, tuple)):
        raise AnsibleFilterError(f"admin_endpoints: give a list of inventory host names, not {type(hosts).__name__}")
    if not isinstance(hostvars, Mapping) and not hasattr(hostvars, "__getitem__"):
        raise AnsibleFilterError("admin_endpoints: pass hostvars as its argument: hosts | admin_endpoints(hostvars)")
    out = []
    for host in hosts:
        if not isinstance(host, str) or host not in hostvars:
            raise AnsibleFilterError(f"admin_endpoints: {host!r} is not a host of the inventory; "
                                     "give inventory host names (groups['matching_nodes'])")
        hv = hostvars[host]
        url, token = hv.get("exchange_admin_url"), hv.get("exchange_admin_token")
        for var, value in (("exchange_admin_url", url), ("exchange_admin_token", token)):
            if not isinstance(value, str) or not value:
                raise AnsibleFilterError(f"admin_endpoints: {host} has no {var}; set it in the inventory "
                                         "(the token from vault)")
        node = {"name": str(host), "url": url, "token": token}
        for var, option in OPTIONAL.items():
            value = hv.get(var)
            if value is not None and (not isinstance(value, str) or value):
                node[option] = value
        out.append(node)
    return out


class FilterModule:
    """Inventory filters for the fleet-wide modules."""

    def filters(self):
        return {"admin_endpoints": admin_endpoints}
