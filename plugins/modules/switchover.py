#!/usr/bin/python
# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: switchover
short_description: Hand a matching shard's primary role to its standby in one step, and flip HAProxy at once
version_added: 0.2.0
description:
  - Switches a matching-engine shard over from its primary (O(url)) to its standby (O(standby_url)) in one
    process, so the gap between step-down and promote does not grow with the batch or the controller's load.
  - 'Checks first, changing nothing: both nodes answer and serve the same shard; the primary is primary; the
    standby is a standby, ready, on O(expect_version), and caught up (its sequence, read after the primary''s,
    within O(max_lag) of it); with O(fence_token), neither node has seen a higher token for O(fence_scopes);
    with O(haproxy_socket), both servers are in O(haproxy_backend) and the standby''s server is not in
    maintenance or drain. Any failure here fails the task and nothing was changed.'
  - Then steps the primary down (C(POST /v1/ha/step-down)), promotes the standby (C(POST /v1/ha/promote)),
    and waits until the standby reports a ready primary, at most O(timeout) seconds.
  - Then flips HAProxy's traffic through its runtime API (O(haproxy_socket)) - C(set server <backend>/<standby>
    health up) and C(set server <backend>/<primary> health down) in one connection - so the new primary takes
    traffic at once instead of at its next health check, and the old one gets none. Only the health is
    forced; the admin state is left as it is and the health checks keep running, so a node that is not primary
    stays DOWN by its checks, and a later C(state drain) / C(state ready) (M(community.general.haproxy)) composes.
  - When the flip is not possible (no O(haproxy_socket), or the socket fails) the switchover still succeeds,
    HAProxy's health checks move the traffic within about C(fall x inter), RV(traffic_flip) is C(health_check)
    and the task warns.
  - When the promote fails, or the promoted node is not a ready primary within O(timeout), the module gives the
    primary role back (steps the standby down if it became primary, promotes the old primary, waits for it,
    flips HAProxy back) and fails, reporting in RV(shard) which node serves, its role and whether it is ready.
  - Already switched over (the standby is the ready primary and the primary a standby) changes nothing; with a
    fence both nodes are still sent the (no-op) actions, so a run that lost its lease learns it from the nodes.
author:
  - exchangeops engineering (@exchangeops)
extends_documentation_fragment:
  - exchangeops.patching.admin_api
attributes:
  check_mode:
    description: Can run in check mode and report what would change without changing it.
    support: full
    details: Runs every read-only check (nodes and HAProxy) and reports C(changed=true) when it would switch over.
  diff_mode:
    description: Will return details on what has changed (or would have changed in check mode).
    support: full
    details: The HA role of both nodes before and after.
notes:
  - O(url), O(token) and the TLS options are the shard's current primary's (the host being patched);
    O(standby_url) and O(standby_token) its standby's. Both nodes are reached with the same TLS options.
  - Where it runs - the runtime API socket is a Unix socket on the load balancer host, so the module runs
    there (C(delegate_to) the C(loadbalancers) host, which on the testbed is local). The load balancer already
    reaches every node's port for its health checks; the admin API calls then come from that host, and
    O(ca_path), O(client_cert) and O(client_key) are read there. A TCP stats socket (C(tcp://host:port)) lets
    the module run on the controller instead, but HAProxy's runtime API has no authentication - expose it only
    on loopback or a management network restricted to the controller.
  - With several HAProxy instances in front of the shard, only the one at O(haproxy_socket) is flipped at once;
    the others follow at their next health check.
  - The timings are measured in this one process with a monotonic clock; RV(timings) also carries epoch
    stamps of the step-down and the flip, to compare switchovers that ran in parallel.
options:
  standby_url:
    description: Base URL of the standby's admin API (its C(exchange_admin_url)).
    type: str
    required: true
  standby_token:
    description: Bearer token of the standby's admin API (from vault). Never logged.
    type: str
    required: true
  expect_version:
    description: Version the standby must run (the patched release).
    type: str
    required: true
  max_lag:
    description:
      - Journal entries the standby may be behind the primary, read after it, and still count as caught up.
      - The primary hands the standby every entry at step-down and the standby reconciles at promote; this only
        refuses a standby that really lags.
    type: int
    default: 5
  timeout:
    description:
      - Seconds the promoted standby has to report a ready primary.
      - When giving the role back, the old primary has as long again.
    type: float
    default: 30
  fence_token:
    description:
      - The fencing token of the rollout lease this run holds (M(exchangeops.patching.deploy_lock)'s C(token)),
        sent with step-down and promote for each of O(fence_scopes), exactly as M(exchangeops.patching.node_action)
        sends it.
      - A node that has seen a higher token refuses; checked before anything changes, enforced by the nodes.
    type: int
  fence_scopes:
    description: The lease scopes of the shard, for example C([shard-0]). Required with O(fence_token).
    type: list
    elements: str
  haproxy_socket:
    description:
      - HAProxy's runtime API, C(level admin) - an absolute Unix socket path (the load balancer's
        C(exchange_haproxy_socket)), or C(tcp://host:port) for a TCP stats socket.
      - Omit it to leave the flip to HAProxy's health checks (RV(traffic_flip=health_check)).
    type: str
  haproxy_backend:
    description: The shard's backend (C(exchange_haproxy_backend)). Required with O(haproxy_socket).
    type: str
  haproxy_primary:
    description: The primary's server name in O(haproxy_backend) (its inventory name). Required with O(haproxy_socket).
    type: str
  haproxy_standby:
    description: The standby's server name in O(haproxy_backend). Required with O(haproxy_socket).
    type: str
  haproxy_timeout:
    description: Seconds one runtime API command may take.
    type: float
    default: 2
"""

EXAMPLES = r"""
- name: Switch shard 0 over to its patched standby and flip HAProxy at once
  exchangeops.patching.switchover:
    url: "{{ exchange_admin_url }}"
    token: "{{ exchange_admin_token }}"
    standby_url: "{{ hostvars[matching_node_peer].exchange_admin_url }}"
    standby_token: "{{ hostvars[matching_node_peer].exchange_admin_token }}"
    expect_version: "1.4.3"
    timeout: 30
    fence_token: "{{ rollout_lease_token }}"
    fence_scopes: ["shard-{{ exchange_shard }}"]
    haproxy_socket: "{{ hostvars[groups['loadbalancers'] | first].exchange_haproxy_socket }}"
    haproxy_backend: "{{ exchange_haproxy_backend }}"
    haproxy_primary: "{{ inventory_hostname }}"
    haproxy_standby: "{{ matching_node_peer }}"
  delegate_to: "{{ groups['loadbalancers'] | first }}"
  throttle: 4
  register: switched

- name: Show the gap
  ansible.builtin.debug:
    msg: "{{ switched.timings.step_down_to_ready_ms }} ms to a ready primary, traffic flip {{ switched.traffic_flip }}"
"""

RETURN = r"""
traffic_flip:
  description:
    - C(immediate) - HAProxy was told at once; C(health_check) - its health checks move the traffic (a warning
      says why); C(none) - nothing to flip (already switched over, or check mode).
  returned: always
  type: str
  sample: immediate
timings:
  description:
    - C(step_down_to_ready_ms) - from the step-down sent to the standby reporting a ready primary;
      C(step_down_to_flip_ms) - to HAProxy's flip done (absent without a flip); C(total_ms) - the whole module;
      C(step_down_at) and C(flipped_at) - epoch seconds of the same instants.
  returned: when a switchover ran
  type: dict
  sample: {"step_down_to_ready_ms": 41, "step_down_to_flip_ms": 43, "total_ms": 88, "step_down_at": 1795000000.12}
before:
  description: HA role, version, ready and sequence of both nodes before, keyed C(primary) and C(standby).
  returned: always
  type: dict
after:
  description: The same after the switchover (in check mode, what it would be).
  returned: success
  type: dict
haproxy:
  description: The backend's servers before and after the flip (C(health), C(admin), C(takes_traffic)).
  returned: when O(haproxy_socket) is set and answered
  type: dict
  sample: {"backend": "be_shard0", "after": {"match-0a": {"health": "DOWN", "admin": "ready", "takes_traffic": false}}}
shard:
  description:
    - On a failed switchover, the shard's state as last read - C(serving) (the node that is a ready primary, or
      null), and per node its C(ha_role), C(ready) and C(version) - and C(gave_back) (whether the old primary
      has the role again).
  returned: failure after the step-down
  type: dict
fence:
  description: With a fencing refusal, the scope, this run's token and the highest token the node has seen.
  returned: when a node refused (or would refuse) the fencing token
  type: dict
  sample: {"scope": "shard-0", "token": 41, "highest": 42}
"""

import time
from urllib.parse import urlsplit

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.exchangeops.patching.plugins.module_utils._admin_api import (
    AdminApi,
    AdminApiError,
    admin_api_argument_spec,
    fence_of,
    fence_refusal,
    fence_refused_msg,
    tls_from_params,
)
from ansible_collections.exchangeops.patching.plugins.module_utils._haproxy import (
    HaproxyError,
    RuntimeApi,
    flip_commands,
)

MATCHING = "matching-engine"
POLL_S = 0.02


class SwitchoverFailed(Exception):
    """A step failed; ``extra`` goes into fail_json."""

    def __init__(self, msg: str, **extra) -> None:
        super().__init__(msg)
        self.extra = extra


class Node:
    """One node's admin API; fenced POSTs; every failure a SwitchoverFailed naming the node."""

    def __init__(self, role: str, api: AdminApi, fence: list[dict]) -> None:
        self.role = role  # "primary" or "standby": what the node was when the module started
        self.api = api
        self.fence = fence
        self.name = api.base

    def status(self) -> dict:
        try:
            doc = self.api.get_json("/v1/status")
        except AdminApiError as e:
            raise SwitchoverFailed(f"the {self.role} {e}") from None
        if doc.get("component") != MATCHING:
            raise SwitchoverFailed(f"{self.api.base} is a {doc.get('component')!r} node, not {MATCHING}; fix "
                                   f"{'url' if self.role == 'primary' else 'standby_url'}")
        for field in ("ha_role", "ready", "version", "seq", "shard"):
            if field not in doc:
                raise SwitchoverFailed(f"{self.api.base}/v1/status has no {field}; the node does not implement the "
                                       "admin API contract")
        self.name = str(doc.get("name") or self.api.base)
        return doc

    def post(self, path: str, body: dict) -> dict:
        if self.fence:
            body = {**body, "fence": self.fence}
        try:
            answer = self.api.post_json(path, body)
        except AdminApiError as e:
            fence = fence_refusal(e.status, e.document)
            if fence is not None:
                raise SwitchoverFailed(fence_refused_msg(self.name, urlsplit(e.url).path, fence, "the shard"),
                                       fence=fence) from None
            raise SwitchoverFailed(f"{e}", node=e.document or {}) from None
        return answer.document


def summary(doc: dict | None) -> dict:
    if doc is None:
        return {"ha_role": "unknown", "ready": None, "version": None, "seq": None}
    return {"name": doc.get("name"), "ha_role": doc.get("ha_role"), "ready": bool(doc.get("ready")),
            "version": doc.get("version"), "seq": doc.get("seq"), "term": doc.get("term")}


def ms(start: float, end: float) -> int:
    return round((end - start) * 1000)


class Switchover:
    def __init__(self, module: AnsibleModule) -> None:
        self.module = module
        p = module.params
        fence = fence_of(p["fence_token"], p["fence_scopes"])
        tls = tls_from_params(p)
        try:
            self.primary = Node("primary", AdminApi(p["url"], p["token"], request_timeout=p["request_timeout"],
                                                    tls=tls), fence)
            self.standby = Node("standby", AdminApi(
                p["standby_url"], p["standby_token"], request_timeout=p["request_timeout"], tls=tls,
                token_option="standby_token (the standby's exchange_admin_token in vault)",
                url_option="standby_url (the standby's exchange_admin_url)"), fence)
        except AdminApiError as e:
            module.fail_json(msg=str(e))
        self.haproxy: RuntimeApi | None = None
        self.warnings: list[str] = []
        self.result: dict = {"changed": False, "traffic_flip": "none"}
        self.acted = False  # True once the step-down was sent: from there, failures say what changed

    # ------------------------------------------------------------------ checks (nothing changes)

    def check_fence(self, node: Node, doc: dict) -> None:
        seen = doc.get("fence") or {}
        for item in node.fence:
            highest = seen.get(item["scope"]) if isinstance(seen, dict) else None
            if isinstance(highest, int) and highest > item["token"]:
                fence = {"scope": item["scope"], "token": item["token"], "highest": highest}
                raise SwitchoverFailed(
                    f"{node.name} has seen token {highest} for {item['scope']}, higher than this run's "
                    f"{item['token']}: another run holds the lease; nothing was changed, this run must stop",
                    fence=fence)

    def check_standby(self, primary: dict, standby: dict, standby_after: dict) -> None:
        p = self.module.params
        if primary.get("shard") != standby.get("shard"):
            raise SwitchoverFailed(f"{self.primary.name} serves shard {primary.get('shard')} but "
                                   f"{self.standby.name} serves shard {standby.get('shard')}; standby_url must be "
                                   "the same shard's other node")
        problems = []
        if standby["ha_role"] != "standby":
            problems.append(f"it is {standby['ha_role']}, not standby")
        if standby["version"] != p["expect_version"]:
            problems.append(f"it runs {standby['version']}, not {p['expect_version']}")
        if not standby["ready"]:
            problems.append(f"it is not ready ({standby.get('ready_reason') or 'see its /v1/ready'})")
        lag = primary["seq"] - standby_after["seq"]
        if lag > p["max_lag"]:
            problems.append(f"it is {lag} journal entries behind the primary (seq {standby_after['seq']} of "
                            f"{primary['seq']}, max_lag {p['max_lag']})")
        if problems:
            raise SwitchoverFailed(
                f"cannot switch shard {primary.get('shard')} over to {self.standby.name}: {'; '.join(problems)}. "
                "A primary steps down only for a patched, ready, caught-up standby: patch and gate the standby "
                "first; nothing was changed")

    def check_haproxy(self) -> dict | None:
        p = self.module.params
        if not p["haproxy_socket"]:
            self.warnings.append("no haproxy_socket given: HAProxy's health checks will move the shard's traffic "
                                 "to the new primary at their next interval; set haproxy_socket to flip it at once")
            return None
        try:
            self.haproxy = RuntimeApi(p["haproxy_socket"], p["haproxy_timeout"])
            servers = self.haproxy.servers_state(p["haproxy_backend"])
        except HaproxyError as e:
            self.haproxy = None
            self.warnings.append(f"{e}; the switchover goes on and HAProxy's health checks move the traffic")
            return None
        except ValueError as e:
            raise SwitchoverFailed(f"{e}; fix haproxy_backend, haproxy_primary or haproxy_standby") from None
        missing = [s for s in (p["haproxy_primary"], p["haproxy_standby"]) if s not in servers]
        if missing:
            raise SwitchoverFailed(f"HAProxy backend {p['haproxy_backend']} has no server {', '.join(missing)} "
                                   f"(it has {', '.join(sorted(servers)) or 'none'}); fix haproxy_primary / "
                                   "haproxy_standby (the inventory names); nothing was changed")
        standby = servers[p["haproxy_standby"]]
        if standby.admin != "ready":
            raise SwitchoverFailed(
                f"HAProxy server {p['haproxy_backend']}/{p['haproxy_standby']} is in {standby.admin}: as primary it "
                f"would take no traffic; return it first (set server {p['haproxy_backend']}/{p['haproxy_standby']} "
                "state ready, or the role's 'Return the matching node to HAProxy'); nothing was changed")
        return {name: s.as_dict() for name, s in servers.items()}

    # ------------------------------------------------------------------ actions

    def wait_ready_primary(self, node: Node, timeout: float) -> tuple[dict | None, str]:
        """(status, "") once ``node`` reports a ready primary, or (last status, why) at the deadline."""
        deadline = time.monotonic() + timeout
        last, why = None, "no answer"
        while True:
            try:
                last = node.status()
                if last["ha_role"] == "primary" and last["ready"]:
                    return last, ""
                why = f"{last['ha_role']}, ready {last['ready']}"
            except SwitchoverFailed as e:
                why = str(e)
            if time.monotonic() >= deadline:
                return last, why
            time.sleep(POLL_S)

    def flip(self, serve: str, stop: str) -> bool:
        p = self.module.params
        if self.haproxy is None:
            return False
        try:
            self.haproxy.run(flip_commands(p["haproxy_backend"], serve, stop))
        except HaproxyError as e:
            self.warnings.append(f"{e}; HAProxy's health checks move the traffic instead")
            return False
        return True

    def haproxy_after(self) -> dict | None:
        if self.haproxy is None:
            return None
        try:
            found = self.haproxy.servers_state(self.module.params["haproxy_backend"])
            return {n: s.as_dict() for n, s in found.items()}
        except HaproxyError:
            return None

    def shard_state(self) -> dict:
        nodes, serving = {}, None
        for node in (self.primary, self.standby):
            try:
                doc = node.status()
            except SwitchoverFailed:
                doc = None
            nodes[node.name] = {k: v for k, v in summary(doc).items() if k in ("ha_role", "ready", "version")}
            if doc and doc["ha_role"] == "primary" and doc["ready"]:
                serving = node.name
        return {"serving": serving, "nodes": nodes}

    def give_back(self, why: str, t_down: float) -> None:
        """The promote failed: hand the role back to the old primary, then fail saying where the shard is."""
        p = self.module.params
        steps = []
        try:
            if self.standby.status()["ha_role"] == "primary":
                self.standby.post("/v1/ha/step-down", {})
                steps.append(f"stepped {self.standby.name} down")
            self.primary.post("/v1/ha/promote", {"force": False})
            steps.append(f"promoted {self.primary.name} again")
            late = self.wait_ready_primary(self.primary, p["timeout"])[1]
            if late:
                steps.append(f"{self.primary.name} is not a ready primary after {p['timeout']:g} s ({late})")
            elif self.flip(p["haproxy_primary"], p["haproxy_standby"]):
                steps.append("HAProxy flipped back")
        except SwitchoverFailed as e:
            steps.append(f"giving the role back failed: {e}")
        shard = self.shard_state()
        shard["gave_back"] = shard["serving"] == self.primary.name
        where = (f"{shard['serving']} serves as a ready primary" if shard["serving"] else
                 "NO node serves the shard as a ready primary: act now (exchpatch testbed promote / node_action "
                 "promote on the node with the longest journal)")
        self.module.fail_json(
            msg=f"switchover of shard to {self.standby.name} failed after the step-down: {why}; "
                f"{'; '.join(steps) or 'nothing undone'}; now {where}; nodes: "
                + ", ".join(f"{n} {s['ha_role']} ready={s['ready']} version={s['version']}"
                            for n, s in shard["nodes"].items()),
            shard=shard, before=self.result.get("before"), warnings=self.warnings,
            timings={"failed_after_ms": ms(t_down, time.monotonic())})

    def fenced_noops(self) -> None:
        """Already switched over: with a fence, the nodes still judge this run's token."""
        if self.primary.fence:
            self.primary.post("/v1/ha/step-down", {})
            self.standby.post("/v1/ha/promote", {"force": False})

    def run(self) -> None:
        p = self.module.params
        started = time.monotonic()
        primary = self.primary.status()
        standby = self.standby.status()
        self.result["before"] = {"primary": summary(primary), "standby": summary(standby)}
        self.check_fence(self.primary, primary)
        self.check_fence(self.standby, standby)
        if primary["ha_role"] == "standby" and standby["ha_role"] == "primary" and standby["ready"] \
                and standby["version"] == p["expect_version"]:
            if not self.module.check_mode:
                self.fenced_noops()
            self.result["after"] = self.result["before"]
            return
        if primary["ha_role"] != "primary":
            raise SwitchoverFailed(f"{self.primary.name} is {primary['ha_role']}, not primary, and "
                                   f"{self.standby.name} is {standby['ha_role']}: url must be the shard's serving "
                                   "primary; read both with node_info; nothing was changed")
        standby_after = self.standby.status()  # read after the primary: "behind" is judged on the later read
        self.check_standby(primary, standby, standby_after)
        servers = self.check_haproxy()
        if servers is not None:
            self.result["haproxy"] = {"backend": p["haproxy_backend"], "before": servers}
        self.result["changed"] = True
        self.result["after"] = {"primary": {**summary(primary), "ha_role": "standby"},
                                "standby": {**summary(standby_after), "ha_role": "primary"}}
        if self.module.check_mode:
            return

        step_down_at = time.time()
        t_down = time.monotonic()
        self.acted = True
        try:
            self.primary.post("/v1/ha/step-down", {})
        except SwitchoverFailed as e:
            try:
                still = self.primary.status()["ha_role"] == "primary"
            except SwitchoverFailed:
                still = False
            if still:
                raise SwitchoverFailed(f"step-down refused: {e}; {self.primary.name} is still primary, nothing was "
                                       "changed", **e.extra) from None
            self.give_back(f"step-down failed ({e}) and {self.primary.name} is not a primary any more", t_down)
        try:
            self.standby.post("/v1/ha/promote", {"force": False})
        except SwitchoverFailed as e:
            if "fence" in e.extra:
                self.result["fence"] = e.extra["fence"]
            self.give_back(f"promote failed: {e}", t_down)
        promoted, late = self.wait_ready_primary(self.standby, p["timeout"])
        t_ready = time.monotonic()
        if late:
            self.give_back(f"{self.standby.name} was not a ready primary within timeout {p['timeout']:g} s "
                           f"({late})", t_down)
        timings = {"step_down_to_ready_ms": ms(t_down, t_ready), "step_down_at": round(step_down_at, 3)}
        if self.flip(p["haproxy_standby"], p["haproxy_primary"]):
            t_flip = time.monotonic()
            self.result["traffic_flip"] = "immediate"
            timings["step_down_to_flip_ms"] = ms(t_down, t_flip)
            timings["flipped_at"] = round(step_down_at + (t_flip - t_down), 3)
        else:
            self.result["traffic_flip"] = "health_check"
        timings["total_ms"] = ms(started, time.monotonic())
        self.result["timings"] = timings
        after = self.haproxy_after()
        if after is not None:
            self.result["haproxy"]["after"] = after
        try:
            old = self.primary.status()
        except SwitchoverFailed:
            old = None
        self.result["after"] = {"primary": summary(old), "standby": summary(promoted)}


def main() -> None:
    spec = admin_api_argument_spec()
    spec.update(
        standby_url=dict(type="str", required=True),
        standby_token=dict(type="str", required=True, no_log=True),
        expect_version=dict(type="str", required=True),
        max_lag=dict(type="int", default=5),
        timeout=dict(type="float", default=30),
        fence_token=dict(type="int", no_log=False),  # a public counter, not a secret
        fence_scopes=dict(type="list", elements="str"),
        haproxy_socket=dict(type="str"),
        haproxy_backend=dict(type="str"),
        haproxy_primary=dict(type="str"),
        haproxy_standby=dict(type="str"),
        haproxy_timeout=dict(type="float", default=2),
    )
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True,
                           required_together=[("fence_token", "fence_scopes")],
                           required_by={"haproxy_socket": ("haproxy_backend", "haproxy_primary", "haproxy_standby")})
    p = module.params
    if p["timeout"] <= 0:
        module.fail_json(msg=f"timeout must be > 0 seconds, got {p['timeout']:g}")
    if p["max_lag"] < 0:
        module.fail_json(msg=f"max_lag must be >= 0 journal entries, got {p['max_lag']}")
    if p["haproxy_timeout"] <= 0:
        module.fail_json(msg=f"haproxy_timeout must be > 0 seconds, got {p['haproxy_timeout']:g}")
    if p["fence_token"] is not None and p["fence_token"] < 0:
        module.fail_json(msg=f"fence_token must be >= 0, got {p['fence_token']}; pass the token deploy_lock returned")
    if p["fence_scopes"] is not None and not all(p["fence_scopes"]):
        module.fail_json(msg="fence_scopes must name at least one scope (shard-N), none empty")
    if p["haproxy_socket"] == "":
        p["haproxy_socket"] = None
    switch = Switchover(module)
    try:
        switch.run()
    except SwitchoverFailed as e:
        msg = str(e)
        if not switch.acted and "nothing was changed" not in msg:
            msg += "; nothing was changed"
        module.fail_json(msg=msg, before=switch.result.get("before"), warnings=switch.warnings, **e.extra)
    for warning in switch.warnings:
        module.warn(warning)
    result = switch.result
    if module._diff:
        result["diff"] = {"before": result["before"], "after": result.get("after", result["before"])}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
