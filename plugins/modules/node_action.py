#!/usr/bin/python
# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: node_action
short_description: Step down, promote, change market modes or pause withdrawals on an exchange node
version_added: 0.1.0
description:
  - Runs one operational action on a node through its admin API, reading C(/v1/status) first so
    that an action the node is already past changes nothing and reports C(changed=false).
  - C(step_down) - a matching-engine primary hands its standby every entry and becomes standby
    (C(POST /v1/ha/step-down)); a standby is left alone.
  - C(promote) - a matching-engine standby becomes primary (C(POST /v1/ha/promote)); the node refuses
    while its peer is still primary unless O(promote_despite_peer) (only for a peer that is down). A primary is
    left alone.
  - C(market_mode) - sets O(mode) on O(markets) (all the node's markets when omitted) of a
    matching-engine primary (C(POST /v1/markets/mode)); only the markets not in that mode yet are sent.
  - C(pause_withdrawals) and C(resume_withdrawals) - stop or restart taking withdrawals off a
    wallet-signer's queue (C(POST /v1/withdrawals/pause|resume)); what is queued stays queued.
  - C(wait_in_flight) - waits until the wallet-signer has no withdrawal being signed (C(in_flight)
    is 0 in C(/v1/status)), and fails after O(timeout) seconds. It changes nothing.
  - Fencing - with O(fence_token) and O(fence_scopes), every action that changes the node
    (C(step_down), C(promote), C(market_mode), C(pause_withdrawals), C(resume_withdrawals)) carries the
    rollout lease's fencing token for each scope. The node refuses a token lower than the highest it has
    seen for a scope (HTTP 409) and the task fails naming both tokens and the scope; the run must stop,
    another run holds the lease. With a fence, C(step_down), C(promote) and the withdrawal actions are sent
    even when the node is already in the wanted state (the node treats them as no-ops), so a run that
    lost its lease learns it from the node. See C(docs/admin-api.md) for the contract.
  - Unreachable nodes, refused tokens and unexpected answers fail the task with a message naming the node.
  - Runs on the controller (the admin API is HTTP); delegate it to C(localhost).
author:
  - exchangeops engineering (@exchangeops)
extends_documentation_fragment:
  - exchangeops.patching.admin_api
attributes:
  check_mode:
    description: Can run in check mode and report what would change without changing it.
    support: full
    details:
      - Reads the node's status and reports whether the action would change it, without any POST.
      - C(wait_in_flight) is read-only and waits in check mode too.
  diff_mode:
    description: Will return details on what has changed (or would have changed in check mode).
    support: full
    details: The before and after of the HA role, the market modes or the withdrawal state.
options:
  action:
    description: What to do; see the description.
    type: str
    required: true
    choices: [step_down, promote, market_mode, pause_withdrawals, resume_withdrawals, wait_in_flight]
  mode:
    description: The market mode to set; required with O(action=market_mode).
    type: str
    choices: [open, post_only, cancel_only, halted]
  markets:
    description: Markets to set O(mode) on (O(action=market_mode)); all the node's markets when omitted.
    type: list
    elements: str
  promote_despite_peer:
    description:
      - With O(action=promote), promote even though the peer still claims to be primary.
      - Only for a peer that is down or cut off; two serving primaries lose orders.
    type: bool
    default: false
  timeout:
    description:
      - Seconds O(action=wait_in_flight) waits for no withdrawal in flight.
      - Each request waits at most O(request_timeout).
    type: float
    default: 30
  fence_token:
    description:
      - The fencing token of the rollout lease this run holds (the C(token) that
        M(exchangeops.patching.deploy_lock) returned when it acquired the lease).
      - Sent with every action that changes the node, for each of O(fence_scopes).
      - Omit both fence options only for manual use outside a rollout; the node then accepts the action.
    type: int
  fence_scopes:
    description:
      - The lease scopes the node serves, as the lease names them, for example C([shard-0]) for a
        matching node or C([chain-BTC, chain-ETH]) for a wallet signer.
      - Required with O(fence_token). The node refuses a scope it does not serve (HTTP 400).
    type: list
    elements: str
"""

EXAMPLES = r"""
- name: Step the shard's primary down before patching it (TLS options from the inventory)
  exchangeops.patching.node_action:
    url: "{{ exchange_admin_url }}"
    token: "{{ exchange_admin_token }}"
    validate_certs: "{{ exchange_admin_validate_certs | default(omit) }}"
    ca_path: "{{ exchange_admin_ca_path | default(omit) }}"
    client_cert: "{{ exchange_admin_client_cert | default(omit) }}"
    client_key: "{{ exchange_admin_client_key | default(omit) }}"
    action: step_down
  delegate_to: localhost

- name: Promote the patched standby
  exchangeops.patching.node_action:
    url: "{{ hostvars[patched_standby].exchange_admin_url }}"
    token: "{{ hostvars[patched_standby].exchange_admin_token }}"
    ca_path: "{{ hostvars[patched_standby].exchange_admin_ca_path | default(omit) }}"
    action: promote
  delegate_to: localhost

- name: Put the shard's markets in cancel-only mode
  exchangeops.patching.node_action:
    url: "{{ exchange_admin_url }}"
    token: "{{ exchange_admin_token }}"
    action: market_mode
    mode: cancel_only
    markets: [BTC-USD]
  delegate_to: localhost

- name: Pause withdrawals on the wallet signer
  exchangeops.patching.node_action:
    url: "{{ exchange_admin_url }}"
    token: "{{ exchange_admin_token }}"
    action: pause_withdrawals
  delegate_to: localhost

- name: Step down under the rollout lease (the node refuses an older run's token)
  exchangeops.patching.node_action:
    url: "{{ exchange_admin_url }}"
    token: "{{ exchange_admin_token }}"
    action: step_down
    fence_token: "{{ preflight_lease_token }}"
    fence_scopes: ["shard-{{ exchange_shard }}"]
  delegate_to: localhost

- name: Wait for in-flight signing to finish
  exchangeops.patching.node_action:
    url: "{{ exchange_admin_url }}"
    token: "{{ exchange_admin_token }}"
    action: wait_in_flight
    timeout: 60
  delegate_to: localhost
"""

RETURN = r"""
action:
  description: The action run.
  returned: always
  type: str
  sample: step_down
before:
  description: The part of the node's status the action is about, before it.
  returned: success
  type: dict
  sample: {"ha_role": "primary", "seq": 1204, "term": 3}
after:
  description:
    - The same after the action; in check mode, what it would be.
  returned: success
  type: dict
  sample: {"ha_role": "standby", "seq": 1204, "term": 3}
node:
  description: The node's answer to the POST (absent when nothing was sent).
  returned: when the action was sent
  type: dict
fence:
  description:
    - With a fencing refusal (the task failed), the node's account of it - the scope, this run's token
      and the highest token the node has seen for the scope.
  returned: when the node refused the fencing token
  type: dict
  sample: {"scope": "shard-0", "token": 41, "highest": 42}
waited:
  description: Seconds O(action=wait_in_flight) waited.
  returned: action=wait_in_flight
  type: float
  sample: 0.2
"""

import time
from urllib.parse import urlsplit

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.exchangeops.patching.plugins.module_utils._admin_api import (
    AdminApi,
    AdminApiError,
    admin_api_argument_spec,
    client_from_params,
    fence_of,
    fence_refusal,
    fence_refused_msg,
)

MATCHING = "matching-engine"
WALLET = "wallet-signer"
COMPONENT_OF = {
    "step_down": MATCHING,
    "promote": MATCHING,
    "market_mode": MATCHING,
    "pause_withdrawals": WALLET,
    "resume_withdrawals": WALLET,
    "wait_in_flight": WALLET,
}
POLL_S = 0.2


class Admin:
    """The node's admin API for this module: every failure a fail_json naming the node and the fix."""

    def __init__(self, module: AnsibleModule, api: AdminApi) -> None:
        self.module = module
        self.api = api
        self.base = api.base
        self.fence = fence_of(module.params["fence_token"], module.params["fence_scopes"])

    def fail(self, e: AdminApiError) -> None:
        self.refused_fence(e.status, e.document, urlsplit(e.url).path)
        extra = {"node": e.document} if e.document is not None else {}
        self.module.fail_json(msg=str(e), **extra)

    def refused_fence(self, status: int, answer: dict | None, path: str) -> None:
        """Fail the task when the node's answer is a fencing refusal; return otherwise."""
        fence = fence_refusal(status, answer)
        if fence is not None:
            self.module.fail_json(msg=fence_refused_msg(f"node {self.base}", path, fence, "the node"),
                                  fence=fence, node=answer)

    def status(self) -> dict:
        try:
            return self.api.get_json("/v1/status")
        except AdminApiError as e:
            self.fail(e)

    def post(self, path: str, body: dict, accept: tuple[int, ...] = (200,)) -> tuple[int, dict]:
        """POST ``body`` with this run's fence; a fencing refusal fails the task."""
        if self.fence:
            body = {**body, "fence": self.fence}
        try:
            answer = self.api.post_json(path, body, accept)
        except AdminApiError as e:
            self.fail(e)
        self.refused_fence(answer.status, answer.document, path)
        return answer.status, answer.document


def require(module: AnsibleModule, node: dict, fields: tuple[str, ...], base: str) -> None:
    missing = [f for f in fields if f not in node]
    if missing:
        module.fail_json(msg=f"{base}/v1/status has no {', '.join(missing)}; "
                         "the node does not implement the admin API contract")


def ha_view(node: dict) -> dict:
    return {"ha_role": node.get("ha_role"), "seq": node.get("seq"), "term": node.get("term")}


def step_down(module: AnsibleModule, api: Admin, node: dict) -> dict:
    require(module, node, ("ha_role",), api.base)
    before = ha_view(node)
    changed = node["ha_role"] == "primary"
    if module.check_mode or not (changed or api.fence):
        return dict(changed=changed, before=before, after={**before, "ha_role": "standby"} if changed else before)
    answer = api.post("/v1/ha/step-down", {})[1]
    return dict(changed=changed, before=before, after=ha_view(answer), node=answer)


def promote(module: AnsibleModule, api: Admin, node: dict) -> dict:
    require(module, node, ("ha_role",), api.base)
    before = ha_view(node)
    changed = node["ha_role"] != "primary"
    if module.check_mode or not (changed or api.fence):
        return dict(changed=changed, before=before, after={**before, "ha_role": "primary"} if changed else before)
    # the node's own "force" field: promote although its peer still claims to be primary
    status, answer = api.post("/v1/ha/promote", {"force": module.params["promote_despite_peer"]}, accept=(200, 409))
    if status == 409:
        module.fail_json(msg=f"{api.base} refused to be promoted: {answer.get('error')} (peer "
                         f"{answer.get('peer')}, term {answer.get('peer_term')}); step the peer down first, or "
                         "set promote_despite_peer=true only if the peer is down", node=answer)
    return dict(changed=changed, before=before, after=ha_view(answer), node=answer)


def market_mode(module: AnsibleModule, api: Admin, node: dict) -> dict:
    mode = module.params["mode"]
    if not mode:
        module.fail_json(msg="action=market_mode needs mode (open, post_only, cancel_only or halted)")
    require(module, node, ("market_modes", "ha_role"), api.base)
    modes = dict(node["market_modes"])
    markets = list(dict.fromkeys(module.params["markets"] or list(modes)))
    unknown = [m for m in markets if m not in modes]
    if unknown:
        module.fail_json(msg=f"{api.base} serves no market {', '.join(unknown)}; it serves "
                         f"{', '.join(sorted(modes)) or 'none'}: fix markets")
    to_change = [m for m in markets if modes[m] != mode]
    before = {"market_modes": modes}
    if not to_change:
        return dict(changed=False, before=before, after=before)
    if node["ha_role"] != "primary":
        module.fail_json(msg=f"{api.base} is a {node['ha_role']}: market modes are set on the shard's primary "
                         f"(markets {', '.join(to_change)} are not {mode} yet); use the primary's url")
    after = {"market_modes": {**modes, **{m: mode for m in to_change}}}
    if module.check_mode:
        return dict(changed=True, before=before, after=after)
    answer = api.post("/v1/markets/mode", {"mode": mode, "markets": to_change})[1]
    return dict(changed=True, before=before, after={"market_modes": answer.get("market_modes", after)}, node=answer)


def withdrawals(module: AnsibleModule, api: Admin, node: dict, want: str) -> dict:
    require(module, node, ("withdrawals",), api.base)
    before = {"withdrawals": node["withdrawals"], "in_flight": node.get("in_flight"), "queued": node.get("queued")}
    changed = node["withdrawals"] != want
    if module.check_mode or not (changed or api.fence):
        return dict(changed=changed, before=before, after={**before, "withdrawals": want} if changed else before)
    path = "/v1/withdrawals/pause" if want == "paused" else "/v1/withdrawals/resume"
    answer = api.post(path, {})[1]
    if answer.get("withdrawals") != want:
        module.fail_json(msg=f"{api.base}{path} answered withdrawals={answer.get('withdrawals')!r}, not {want!r}",
                         node=answer)
    return dict(changed=changed, before=before, after=answer, node=answer)


def wait_in_flight(module: AnsibleModule, api: Admin, node: dict) -> dict:
    require(module, node, ("in_flight",), api.base)
    started = time.monotonic()
    deadline = started + module.params["timeout"]
    before = {"in_flight": node["in_flight"], "withdrawals": node.get("withdrawals")}
    while node["in_flight"] != 0:
        if time.monotonic() >= deadline:
            module.fail_json(msg=f"{api.base} still has {node['in_flight']} withdrawal(s) in flight after "
                             f"{module.params['timeout']:g} s; check its signer log, or raise timeout",
                             before=before)
        time.sleep(POLL_S)
        node = api.status()
        require(module, node, ("in_flight",), api.base)
    after = {"in_flight": 0, "withdrawals": node.get("withdrawals")}
    return dict(changed=False, before=before, after=after, waited=round(time.monotonic() - started, 3))


def main() -> None:
    spec = admin_api_argument_spec()
    spec.update(
        action=dict(type="str", required=True, choices=list(COMPONENT_OF)),
        mode=dict(type="str", choices=["open", "post_only", "cancel_only", "halted"]),
        markets=dict(type="list", elements="str"),
        promote_despite_peer=dict(type="bool", default=False),
        timeout=dict(type="float", default=30),
        fence_token=dict(type="int", no_log=False),  # a public counter, not a secret
        fence_scopes=dict(type="list", elements="str"),
    )
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True,
                           required_if=[("action", "market_mode", ("mode",))],
                           required_together=[("fence_token", "fence_scopes")])
    action = module.params["action"]
    if module.params["timeout"] <= 0:
        module.fail_json(msg=f"timeout must be > 0 seconds, got {module.params['timeout']:g}")
    if module.params["fence_token"] is not None and module.params["fence_token"] < 0:
        module.fail_json(msg=f"fence_token must be >= 0, got {module.params['fence_token']}; pass the token "
                         "deploy_lock returned")
    if module.params["fence_scopes"] is not None and not all(module.params["fence_scopes"]):
        module.fail_json(msg="fence_scopes must name at least one scope (shard-N or chain-NAME), none empty")
    try:
        api = Admin(module, client_from_params(module.params))
    except AdminApiError as e:
        module.fail_json(msg=str(e))
    node = api.status()
    require(module, node, ("component",), api.base)
    if node["component"] != COMPONENT_OF[action]:
        module.fail_json(msg=f"action {action} is for {COMPONENT_OF[action]} nodes, but {api.base} is a "
                         f"{node['component']} node; fix url or action")
    if action == "step_down":
        result = step_down(module, api, node)
    elif action == "promote":
        result = promote(module, api, node)
    elif action == "market_mode":
        result = market_mode(module, api, node)
    elif action == "pause_withdrawals":
        result = withdrawals(module, api, node, "paused")
    elif action == "resume_withdrawals":
        result = withdrawals(module, api, node, "running")
    else:
        result = wait_in_flight(module, api, node)
    if module._diff and action != "wait_in_flight":
        result["diff"] = {"before": result["before"], "after": result["after"]}
    module.exit_json(action=action, **result)


if __name__ == "__main__":
    main()
