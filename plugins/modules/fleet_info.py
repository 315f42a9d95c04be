#!/usr/bin/python
# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: fleet_info
short_description: Read the live status of many exchange nodes at once
version_added: 0.2.0
description:
  - Calls C(GET /v1/status) on the admin API of every node in O(nodes), several at a time, in
    one task. It answers what a loop of M(exchangeops.patching.node_info) over the same hosts
    would, in the time of the slowest node instead of the sum of all of them (one module run
    instead of one per host), so a read of the whole fleet before or after a batch does not grow
    with the fleet.
  - Build O(nodes) from the inventory with the P(exchangeops.patching.admin_endpoints#filter)
    filter.
  - A node that does not answer, answers without the admin API's fields, or is not the expected
    component is reported in RV(results) and RV(errors) with the reason; the task itself fails
    only with O(fail_on_error). Missing data is never reported as healthy.
  - HA roles are only ever taken from the nodes, never from the inventory.
  - Runs on the controller (the admin API is HTTP); delegate it to C(localhost).
author:
  - exchangeops engineering (@exchangeops)
attributes:
  check_mode:
    description: Can run in check mode and return the nodes' status.
    support: full
    details: Read-only; it runs the same in check mode.
  diff_mode:
    description: Will return details on what has changed.
    support: none
options:
  nodes:
    description:
      - The nodes to read, in the order RV(results) lists them.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: Inventory name of the node; RV(results[].item) and the key of RV(nodes).
        type: str
        required: true
      url:
        description: Base URL of the node's admin API (the host's C(exchange_admin_url)); no credentials in it.
        type: str
        required: true
      token:
        description: Bearer token of the node's admin API (from vault). Never logged.
        type: str
        required: true
      validate_certs:
        description: Verify the node's TLS certificate (C(https://) URLs); the host's C(exchange_admin_validate_certs).
        type: bool
        default: true
      ca_path:
        description: PEM file of the CA(s) that sign the node's certificate; the host's C(exchange_admin_ca_path).
        type: path
      client_cert:
        description: PEM file of the client certificate for mutual TLS; the host's C(exchange_admin_client_cert).
        type: path
      client_key:
        description: PEM file of the key of O(nodes[].client_cert); the host's C(exchange_admin_client_key).
        type: path
      component:
        description:
          - The component the inventory says the node runs (the host's C(exchange_component)); a node
            that reports another one is an error (a wrong address in the inventory).
        type: str
        choices: [matching-engine, wallet-signer]
  component:
    description:
      - Every node must report this component (say, the patch's); it overrides O(nodes[].component).
    type: str
    choices: [matching-engine, wallet-signer]
  request_timeout:
    description: Seconds one request may take, from connecting to the last byte of the answer.
    type: float
    default: 10
  concurrency:
    description: How many nodes are read at the same time.
    type: int
    default: 16
  fail_on_error:
    description: Fail the task when any node could not be read (the others are still returned).
    type: bool
    default: false
  sbom:
    description:
      - Also read each node's running-release SBOM (C(GET /v1/sbom), CycloneDX JSON) into
        RV(results[].sbom) and RV(sboms), for exposure. A node whose SBOM cannot be read, or is not a
        CycloneDX document, is an error like a node that does not answer (a node without an SBOM is
        never taken as exposed to nothing).
    type: bool
    default: false
notes:
  - Redirects are never followed and proxies from the environment are not used, as for
    M(exchangeops.patching.node_info); every answer is read up to 4 MiB.
seealso:
  - module: exchangeops.patching.node_info
  - plugin: exchangeops.patching.admin_endpoints
    plugin_type: filter
"""

EXAMPLES = r"""
- name: Read every matching node in one task
  exchangeops.patching.fleet_info:
    nodes: "{{ groups['matching_nodes'] | exchangeops.patching.admin_endpoints(hostvars) }}"
  delegate_to: localhost
  register: fleet

- name: Name the primaries
  ansible.builtin.debug:
    msg: "{{ fleet.results | selectattr('node', 'defined') | selectattr('node.ha_role', 'equalto', 'primary')
             | map(attribute='item') | list }}"

- name: Read every node's running-release SBOM, for exposure
  exchangeops.patching.fleet_info:
    nodes: "{{ (groups['matching_nodes'] + groups['wallet_nodes']) | exchangeops.patching.admin_endpoints(hostvars) }}"
    sbom: true
    fail_on_error: true
  delegate_to: localhost
  register: fleet_sboms

- name: Name the nodes that did not answer
  ansible.builtin.debug:
    msg: "{{ fleet.errors }}"
"""

RETURN = r"""
results:
  description:
    - One entry per node of O(nodes), in its order, shaped like the C(results) of a loop of
      M(exchangeops.patching.node_info), so templates written for that loop read it unchanged.
  returned: always
  type: list
  elements: dict
  contains:
    item:
      description: The node's O(nodes[].name).
      type: str
    node:
      description: The node's status document; absent when the node could not be read.
      type: dict
    msg:
      description: Why the node could not be read; absent when it was.
      type: str
    sbom:
      description: The node's running-release CycloneDX SBOM; only with O(sbom).
      type: dict
nodes:
  description: The status document of every node that answered, by name.
  returned: always
  type: dict
errors:
  description: Why each node that could not be read was not, by name.
  returned: always
  type: dict
sboms:
  description: The running-release CycloneDX SBOM of every node read, by name.
  returned: when O(sbom) is true
  type: dict
"""

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.exchangeops.patching.plugins.module_utils._admin_api import (
    DEFAULT_REQUEST_TIMEOUT,
    AdminApiError,
    admin_api_argument_spec,
    client_from_params,
    status_problem,
)

# one node: the admin_api options (request_timeout is the task's) plus its name and inventory component
NODE_SPEC = {k: v for k, v in admin_api_argument_spec().items() if k != "request_timeout"}
NODE_SPEC.update(
    name=dict(type="str", required=True),
    component=dict(type="str", choices=["matching-engine", "wallet-signer"]),
)


def sbom_problem(url: str, doc: dict[str, Any]) -> str | None:
    """Why an answer of ``GET /v1/sbom`` is not a CycloneDX SBOM, or None."""
    if doc.get("bomFormat") != "CycloneDX":
        return (f"{url}: answer is not a CycloneDX SBOM (bomFormat {doc.get('bomFormat')!r}); "
                "the node's release must ship its CycloneDX JSON SBOM")
    if not isinstance(doc.get("components", []), list):
        return f"{url}: SBOM components is not a list; rebuild the release's SBOM"
    return None


def read_node(spec: dict[str, Any], request_timeout: float, component: str | None,
              sbom: bool = False) -> dict[str, Any]:
    """One entry of ``results``: ``{item, node}`` (and ``sbom``) or ``{item, msg}``."""
    name = spec["name"]
    try:
        api = client_from_params({**spec, "request_timeout": request_timeout})
        node = api.get_json("/v1/status")
    except AdminApiError as e:
        return {"item": name, "msg": str(e)}
    problem = status_problem(api.base + "/v1/status", node, component or spec["component"])
    if problem:
        return {"item": name, "msg": problem}
    if not sbom:
        return {"item": name, "node": node}
    try:
        doc = api.get_json("/v1/sbom")
    except AdminApiError as e:
        return {"item": name, "msg": f"no SBOM: {e}"}
    problem = sbom_problem(api.base + "/v1/sbom", doc)
    return {"item": name, "msg": problem} if problem else {"item": name, "node": node, "sbom": doc}


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            nodes=dict(type="list", elements="dict", required=True, options=NODE_SPEC),
            component=dict(type="str", choices=["matching-engine", "wallet-signer"]),
            request_timeout=dict(type="float", default=DEFAULT_REQUEST_TIMEOUT),
            concurrency=dict(type="int", default=16),
            fail_on_error=dict(type="bool", default=False),
            sbom=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    p = module.params
    names = [n["name"] for n in p["nodes"]]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        module.fail_json(msg=f"nodes names {', '.join(dupes)} more than once; give each node once")
    if p["concurrency"] < 1:
        module.fail_json(msg=f"concurrency={p['concurrency']}: give 1 or more")
    if p["request_timeout"] <= 0:
        module.fail_json(msg=f"request_timeout={p['request_timeout']}: give a positive number of seconds")
    results: list[dict[str, Any]] = []
    if p["nodes"]:
        with ThreadPoolExecutor(max_workers=min(p["concurrency"], len(p["nodes"]))) as pool:
            results = list(pool.map(lambda spec: read_node(spec, p["request_timeout"], p["component"], p["sbom"]),
                                    p["nodes"]))
    nodes = {r["item"]: r["node"] for r in results if "node" in r}
    errors = {r["item"]: r["msg"] for r in results if "msg" in r}
    extra = {"sboms": {r["item"]: r["sbom"] for r in results if "sbom" in r}} if p["sbom"] else {}
    if errors and p["fail_on_error"]:
        module.fail_json(msg=f"{len(errors)} of {len(results)} node(s) could not be read: "
                         + "; ".join(f"{k}: {v}" for k, v in errors.items()),
                         results=results, nodes=nodes, errors=errors, **extra)
    module.exit_json(changed=False, results=results, nodes=nodes, errors=errors, **extra)


if __name__ == "__main__":
    main()
