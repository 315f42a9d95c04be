#!/usr/bin/python
# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: node_info
short_description: Read an exchange node's live status from its admin API
version_added: 0.1.0
description:
  - Calls C(GET /v1/status) on a matching-engine or wallet-signer node's admin API with its
    bearer token and returns the node's component, version, HA role, shard or chains, last
    applied sequence, state hash, ready flag and the rest of its status document.
  - HA roles are only ever taken from here, never from the inventory.
  - Errors, timeouts and answers without the expected fields fail the task; missing data is
    never reported as healthy.
  - Runs on the controller (the admin API is HTTP); delegate it to C(localhost).
author:
  - exchangeops engineering (@exchangeops)
extends_documentation_fragment:
  - exchangeops.patching.admin_api
attributes:
  check_mode:
    description: Can run in check mode and return the node status.
    support: full
    details: Read-only; it runs the same in check mode.
  diff_mode:
    description: Will return details on what has changed.
    support: none
options:
  expect_component:
    description: Fail unless the node reports this component (catches a wrong address in the inventory).
    type: str
    choices: [matching-engine, wallet-signer]
"""

EXAMPLES = r"""
- name: Read node status from the admin API
  exchangeops.patching.node_info:
    url: "{{ exchange_admin_url }}"
    token: "{{ exchange_admin_token }}"
    validate_certs: "{{ exchange_admin_validate_certs | default(omit) }}"
    ca_path: "{{ exchange_admin_ca_path | default(omit) }}"
    client_cert: "{{ exchange_admin_client_cert | default(omit) }}"
    client_key: "{{ exchange_admin_client_key | default(omit) }}"
    expect_component: "{{ exchange_component }}"
  delegate_to: localhost
  register: node

- name: Show the HA role
  ansible.builtin.debug:
    msg: "{{ inventory_hostname }} is {{ node.node.ha_role }} at seq {{ node.node.seq }}"
"""

RETURN = r"""
node:
  description: The node's status document (see docs/testbed.md, "Node HTTP API").
  returned: success
  type: dict
  contains:
    name:
      description: Node name.
      type: str
    component:
      description: matching-engine or wallet-signer.
      type: str
    version:
      description: Version of the release the node runs.
      type: str
      sample: 1.4.2
    ha_role:
      description: primary or standby (matching), active (wallet).
      type: str
    ready:
      description: Whether the node is ready for its role.
      type: bool
    seq:
      description: Last applied journal sequence.
      type: int
    state_hash:
      description: SHA-256 of the node's state at RV(node.seq).
      type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.exchangeops.patching.plugins.module_utils._admin_api import (
    AdminApiError,
    admin_api_argument_spec,
    client_from_params,
    status_problem,
)


def main() -> None:
    spec = admin_api_argument_spec()
    spec.update(
        expect_component=dict(type="str", choices=["matching-engine", "wallet-signer"]),
    )
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    try:
        api = client_from_params(module.params)
        node = api.get_json("/v1/status")
    except AdminApiError as e:
        module.fail_json(msg=str(e))
    problem = status_problem(api.base + "/v1/status", node, module.params["expect_component"])
    if problem:
        module.fail_json(msg=problem)
    module.exit_json(changed=False, node=node)


if __name__ == "__main__":
    main()
