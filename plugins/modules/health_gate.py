#!/usr/bin/python
# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: health_gate
short_description: Gate a patched exchange node on readiness, version, sequence, state hash, errors, latency and ledger
version_added: 0.1.0
description:
  - The health gate run after every patched node. In O(mode=gate) it polls the node's admin API
    (and its peer's) every O(interval) seconds until every check in O(checks) passes, then keeps
    checking for O(bake) seconds; it fails when the checks do not all pass within O(timeout)
    seconds, or when any check fails during the bake.
  - C(ready) - the node says it is ready for its role (C(/v1/status) C(ready)).
  - C(version) - the node runs O(expect_version).
  - C(caught_up) - the node's applied sequence is within O(bounds.max_lag) of its peer's (a standby
    within O(bounds.max_lag) of its primary either way; a primary not behind its standby by more).
    The node is read again after its peer, and "behind" is judged on that later read, so a standby
    that replicates synchronously passes while a busy primary keeps moving between the reads.
  - C(state_hash) - the node's state hash at sequence N equals its unpatched peer's at the same N,
    with N = min(node seq, peer seq). A side that is exactly at N answers from its status; the side
    ahead is asked for C(GET /v1/state/hash?seq=N), which replays its own journal with its own
    release code, so the comparison holds while orders keep flowing.
  - C(error_rate) - the client error rate (5xx share of order and withdrawal requests) since the gate
    started is at most the baseline's plus O(bounds.max_error_rate_increase).
  - C(p99) - the client p99 latency since the gate started (upper bound of the histogram bucket that
    holds the 99th percentile) is at most max(baseline p99 x O(bounds.p99_factor), baseline p99 +
    O(bounds.p99_slack_ms)).
  - C(ledger) - the wallet's ledger reconciles (C(GET /v1/ledger/reconcile) says C(balanced)).
  - Errors, timeouts, refused tokens and answers without the expected fields fail their checks;
    missing data is never read as healthy. A window without client requests passes C(error_rate)
    and C(p99) only when the baseline had no client requests either (a standby, an idle market);
    a baseline without data counts as 0 for the bound, which makes it stricter, not laxer.
  - An admin token the node refuses (401, 403), a redirect and a TLS failure fail the task at once
    instead of waiting for the timeout, since waiting does not fix them.
  - In O(mode=baseline) it takes two C(/metrics) snapshots O(sample) seconds apart and returns the
    client error rate, p99 and request count between them as RV(baseline), to pass to later gates.
  - Runs on the controller (the admin API is HTTP); delegate it to C(localhost).
author:
  - exchangeops engineering (@exchangeops)
extends_documentation_fragment:
  - exchangeops.patching.admin_api
attributes:
  check_mode:
    description: Can run in check mode and return the gate results.
    support: full
    details: Read-only; in check mode it still reads the nodes and gates exactly as in a normal run.
  diff_mode:
    description: Will return details on what has changed.
    support: none
options:
  component:
    description: What the node is; picks the default O(checks) and must match what the node reports.
    type: str
    required: true
    choices: [matching-engine, wallet-signer]
  mode:
    description:
      - V(gate) polls until every check passes (then bakes) or the timeout.
      - V(baseline) measures client error rate and p99 over O(sample) seconds and returns RV(baseline).
    type: str
    default: gate
    choices: [gate, baseline]
  checks:
    description:
      - The checks to run, in this order.
      - Default for a matching-engine node C([ready, version, caught_up, state_hash, error_rate, p99]),
        for a wallet-signer node C([ready, version, error_rate, p99, ledger]).
      - C(version) needs O(expect_version); C(caught_up) and C(state_hash) need O(peer_url);
        C(error_rate) and C(p99) need O(baseline).
    type: list
    elements: str
    choices: [ready, version, caught_up, state_hash, error_rate, p99, ledger]
  expect_version:
    description: The version the node must run (the release just installed).
    type: str
  peer_url:
    description:
      - Admin API of the node to compare with - the unpatched peer, the shard's other node.
      - It is reached with the same TLS options (O(validate_certs), O(ca_path), O(client_cert),
        O(client_key)) as O(url).
    type: str
  peer_token:
    description: Bearer token of the peer's admin API. Defaults to O(token). Never logged.
    type: str
  baseline:
    description: The RV(baseline) a O(mode=baseline) run returned before the rollout.
    type: dict
    suboptions:
      error_rate:
        description: Client error rate in the baseline window (null without requests).
        type: float
      p99_ms:
        description: Client p99 latency in ms in the baseline window (null without requests).
        type: float
      requests:
        description: Client requests in the baseline window.
        type: int
  bounds:
    description: How far the node may be from its peer and from the baseline.
    type: dict
    default: {}
    suboptions:
      max_lag:
        description: Journal entries a node may be from its peer's sequence and still be caught up.
        type: int
        default: 5
      max_error_rate_increase:
        description: How much the client error rate may exceed the baseline's (0.01 is one percentage point).
        type: float
        default: 0.01
      p99_factor:
        description:
          - The p99 may reach this multiple of the baseline p99, or the baseline p99 plus
            O(bounds.p99_slack_ms), whichever is higher.
        type: float
        default: 2.0
      p99_slack_ms:
        description:
          - The p99 may exceed the baseline p99 by this many ms, or reach O(bounds.p99_factor) times it,
            whichever is higher.
        type: float
        default: 50
  timeout:
    description:
      - Seconds for every check to pass (O(mode=gate)); the bake comes on top.
      - Each HTTP request waits at most O(request_timeout) seconds (less when O(timeout) is shorter).
    type: float
    default: 60
  interval:
    description: Seconds between two polls.
    type: float
    default: 0.5
  bake:
    description: Seconds to keep checking after every check first passed; any failure during the bake fails the task.
    type: float
    default: 0
  sample:
    description: Seconds between the two C(/metrics) snapshots of O(mode=baseline).
    type: float
    default: 5
notes:
  - The metrics window of O(mode=gate) starts at the gate's first successful C(/metrics) read, so only
    traffic served by the patched release counts. If the node restarts during the gate, its counters
    go down and the window becomes everything since the restart.
seealso:
  - module: exchangeops.patching.node_info
  - module: exchangeops.patching.node_action
"""

EXAMPLES = r"""
- name: Measure the client error rate and p99 before the rollout
  exchangeops.patching.health_gate:
    url: "{{ exchange_admin_url }}"
    token: "{{ exchange_admin_token }}"
    validate_certs: "{{ exchange_admin_validate_certs | default(omit) }}"
    ca_path: "{{ exchange_admin_ca_path | default(omit) }}"
    client_cert: "{{ exchange_admin_client_cert | default(omit) }}"
    client_key: "{{ exchange_admin_client_key | default(omit) }}"
    component: "{{ exchange_component }}"
    mode: baseline
    sample: 10
  delegate_to: localhost
  register: pre_rollout

- name: Gate the patched standby against its unpatched primary
  exchangeops.patching.health_gate:
    url: "{{ exchange_admin_url }}"
    token: "{{ exchange_admin_token }}"
    component: matching-engine
    expect_version: "{{ release_version }}"
    peer_url: "{{ hostvars[shard_peer].exchange_admin_url }}"
    peer_token: "{{ hostvars[shard_peer].exchange_admin_token }}"
    baseline: "{{ pre_rollout.baseline }}"
    bounds:
      p99_factor: 1.5
    timeout: 120
    bake: 30
  delegate_to: localhost
  register: gate

- name: Gate a patched wallet signer on readiness and its ledger only
  exchangeops.patching.health_gate:
    url: "{{ exchange_admin_url }}"
    token: "{{ exchange_admin_token }}"
    component: wallet-signer
    checks: [ready, version, ledger]
    expect_version: "{{ release_version }}"
  delegate_to: localhost
"""

RETURN = r"""
gates:
  description:
    - One result per check from the last poll, also returned when the gate fails.
  returned: mode=gate
  type: list
  elements: dict
  contains:
    name:
      description: The check.
      type: str
      sample: p99
    passed:
      description: Whether it passed.
      type: bool
    evidence:
      description: What was measured against what.
      type: str
      sample: "p99 250 ms > bound 60 ms (max of baseline 10 ms × 2 and baseline 10 ms + 50 ms; 212 client requests)"
passed:
  description: Whether every check passed (and kept passing through the bake).
  returned: mode=gate
  type: bool
checks:
  description: The checks that ran.
  returned: mode=gate
  type: list
  elements: str
polls:
  description: How many times the nodes were read.
  returned: mode=gate
  type: int
elapsed:
  description: Seconds the gate ran, bake included.
  returned: mode=gate
  type: float
baseline:
  description: Client traffic over the sample, to pass as O(baseline) to later gates.
  returned: mode=baseline
  type: dict
  contains:
    error_rate:
      description: 5xx share of client requests; null without requests.
      type: float
      sample: 0.0
    p99_ms:
      description: Upper bound of the latency bucket holding the 99th percentile, in ms; null without requests.
      type: float
      sample: 10.0
    requests:
      description: Client requests in the sample.
      type: int
      sample: 212
window:
  description:
    - Client traffic the gate judged (since its first metrics read), or the baseline sample.
    - RV(window.p99_ms) is the string C(+Inf) when the p99 is beyond the largest latency bucket.
  returned: when metrics were read
  type: dict
  contains:
    requests:
      description: Client requests.
      type: int
    errors:
      description: Client requests answered with a 5xx status.
      type: int
    error_rate:
      description: errors / requests; null without requests.
      type: float
    p99_ms:
      description: p99 in ms (bucket upper bound); null without requests.
      type: raw
    client_requests:
      description: Requests in the latency histogram.
      type: int
    restarted:
      description: The node restarted within the window (its counters went down).
      type: bool
"""

import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.exchangeops.patching.plugins.module_utils import _gates, _metrics
from ansible_collections.exchangeops.patching.plugins.module_utils._admin_api import (
    AdminApi,
    AdminApiError,
    admin_api_argument_spec,
    tls_from_params,
)


class Stop(Exception):
    """A failure waiting will not fix (a refused token, a redirect, TLS): the gate stops at once."""


class Endpoint:
    """One node's admin API; failures become evidence for the checks, except those in Stop."""

    def __init__(self, api: AdminApi) -> None:
        self.api = api
        self.base = api.base

    def _failed(self, e: AdminApiError) -> str:
        if e.permanent:
            raise Stop(str(e)) from None
        return str(e)

    def get(self, path: str) -> tuple[str | None, str | None]:
        """(body text, None) on 200, else (None, why); raises Stop when waiting cannot help."""
        try:
            return self.api.get_text(path), None
        except AdminApiError as e:
            return None, self._failed(e)

    def get_json(self, path: str) -> tuple[dict | None, str | None]:
        """(JSON object, None) on 200, else (None, why); raises Stop when waiting cannot help."""
        try:
            return self.api.get_json(path), None
        except AdminApiError as e:
            return None, self._failed(e)


class Gate:
    """The state of one gate run: endpoints, options and the metrics window start."""

    def __init__(self, module: AnsibleModule, checks: list[str], baseline: _gates.Baseline | None,
                 bounds: _gates.Bounds) -> None:
        p = module.params
        self.module = module
        self.checks = checks
        self.baseline = baseline
        self.bounds = bounds
        self.component = p["component"]
        tls = tls_from_params(p)
        request_timeout = min(p["request_timeout"], p["timeout"])
        self.node = Endpoint(AdminApi(p["url"], p["token"], request_timeout=request_timeout, tls=tls))
        self.peer = None
        if p["peer_url"]:
            peer_token = "peer_token" if p["peer_token"] else "peer_token (it defaults to token)"
            self.peer = Endpoint(AdminApi(p["peer_url"], p["peer_token"] or p["token"],
                                          request_timeout=request_timeout, tls=tls,
                                          token_option=f"{peer_token}, the peer's admin token in vault",
                                          url_option="peer_url (the peer's exchange_admin_url)"))
        self.before: _metrics.MetricsSnapshot | None = None
        self.window: _metrics.WindowStats | None = None

    def _hash_at(self, endpoint: Endpoint, status: dict, seq: int) -> tuple[str | None, str | None]:
        if status.get("seq") == seq and status.get("state_hash"):
            return str(status["state_hash"]), None
        doc, error = endpoint.get_json(f"/v1/state/hash?seq={seq}")
        if doc is None:
            return None, error
        if doc.get("seq") != seq or not doc.get("state_hash"):
            return None, f"{endpoint.base}/v1/state/hash answered {doc!r} for seq {seq}"
        return str(doc["state_hash"]), None

    def poll(self) -> list[_gates.GateResult]:
        errors: dict[str, str] = {}
        status, err = self.node.get_json("/v1/status")
        if err:
            errors["status"] = err
        if status is not None and status.get("component") != self.component:
            got = status.get("component")
            if got is None:
                self.module.fail_json(msg=f"{self.node.base}/v1/status answered without component; "
                                      "the node does not implement the admin API contract")
            self.module.fail_json(msg=f"{self.node.base} is a {got} node, not {self.component}; fix url or "
                                  "component (exchange_admin_url, exchange_component in the inventory)")
        peer_status = status_after = None
        if self.peer is not None and any(c in _gates.PEER_CHECKS for c in self.checks):
            peer_status, err = self.peer.get_json("/v1/status")
            if err:
                errors["peer_status"] = err
            elif status is not None and "caught_up" in self.checks:
                # the node again, after its peer: see _gates "caught_up" on reads under live load
                status_after = self.node.get_json("/v1/status")[0]
        hashes = None
        if "state_hash" in self.checks and self.peer is not None and status is not None and peer_status is not None:
            seq = _gates.state_hash_seq(status, peer_status)
            if seq is None:
                errors["state_hash"] = "a status without an integer seq"
            else:
                node_hash, err = self._hash_at(self.node, status, seq)
                if err:
                    errors["state_hash"] = err
                peer_hash, err = self._hash_at(self.peer, peer_status, seq)
                if err:
                    errors["peer_state_hash"] = err
                hashes = _gates.StateHashes(seq, node_hash, peer_hash)
        self.window = None
        if any(c in _gates.METRICS_CHECKS for c in self.checks):
            self.window = self._window(errors)
        reconcile = None
        if "ledger" in self.checks:
            reconcile, err = self.node.get_json("/v1/ledger/reconcile")
            if err:
                errors["reconcile"] = err
        return _gates.evaluate(self.checks, status, peer_status, reconcile, self.window, self.baseline, self.bounds,
                               expect_version=self.module.params["expect_version"], hashes=hashes, errors=errors,
                               status_after=status_after)

    def snapshot(self) -> tuple[_metrics.MetricsSnapshot | None, str | None]:
        text, err = self.node.get("/metrics")
        if text is None:
            return None, err
        try:
            return _metrics.snapshot(text), None
        except _metrics.MetricsError as e:
            return None, f"{self.node.base}/metrics: {e}"

    def _window(self, errors: dict[str, str]) -> _metrics.WindowStats | None:
        snap, err = self.snapshot()
        if snap is None:
            errors["metrics"] = err or "no metrics"
            return None
        if self.before is None:
            self.before = snap  # the window starts at the gate's first read
        return _metrics.window(self.before, snap)


def _fail_gate(module: AnsibleModule, gate: Gate, results: list[_gates.GateResult], why: str, **extra) -> None:
    names = ", ".join(r.name for r in _gates.failing(results))
    module.fail_json(
        msg=f"{gate.node.base}: health gate failed {why}: {names} did not pass. {_gates.summary(results)}. "
            "Roll the node back or fix the release; the gates list has the evidence.",
        gates=[r.as_dict() for r in results], passed=False, checks=gate.checks,
        window=gate.window.as_dict() if gate.window else None, **extra,
    )


def run_gate(module: AnsibleModule, gate: Gate) -> None:
    p = module.params
    started = time.monotonic()
    deadline = started + p["timeout"]
    bake_started = None
    polls = 0
    while True:
        polls += 1
        try:
            results = gate.poll()
        except Stop as e:
            module.fail_json(msg=str(e), gates=[], passed=False, checks=gate.checks, polls=polls)
        now = time.monotonic()
        elapsed = round(now - started, 3)
        if not _gates.failing(results):
            if bake_started is None:
                bake_started = now
            if now - bake_started >= p["bake"]:
                module.exit_json(changed=False, passed=True, gates=[r.as_dict() for r in results], checks=gate.checks,
                                 window=gate.window.as_dict() if gate.window else None, polls=polls, elapsed=elapsed)
        elif bake_started is not None:
            _fail_gate(module, gate, results,
                       f"during the {p['bake']:g} s bake ({now - bake_started:.1f} s after every check had passed)",
                       polls=polls, elapsed=elapsed)
        elif now >= deadline:
            _fail_gate(module, gate, results, f"at the {p['timeout']:g} s timeout", polls=polls, elapsed=elapsed)
        time.sleep(p["interval"])


def run_baseline(module: AnsibleModule, gate: Gate) -> None:
    p = module.params
    try:
        before, err = gate.snapshot()
        if before is None:
            module.fail_json(msg=f"cannot take a baseline: {err}; is the node up and the url right?")
        time.sleep(p["sample"])
        after, err = gate.snapshot()
        if after is None:
            module.fail_json(msg=f"cannot take a baseline: {err}; is the node up and the url right?")
    except Stop as e:
        module.fail_json(msg=f"cannot take a baseline: {e}")
    stats = _metrics.window(before, after)
    if stats.restarted:
        module.fail_json(msg=f"{gate.node.base} restarted during the {p['sample']:g} s baseline sample; "
                         "take the baseline again once it is stable", window=stats.as_dict())
    try:
        baseline = _gates.baseline_of(stats)
    except _gates.GateError as e:
        module.fail_json(msg=f"{gate.node.base}: {e}", window=stats.as_dict())
    if stats.requests == 0:
        module.warn(f"no client requests reached {gate.node.base} during the {p['sample']:g} s sample; gates "
                    "against this baseline pass error_rate and p99 only when the node gets no traffic either")
    module.exit_json(changed=False, baseline=baseline.as_dict(), window=stats.as_dict())


def main() -> None:
    spec = admin_api_argument_spec()
    spec.update(
        component=dict(type="str", required=True, choices=["matching-engine", "wallet-signer"]),
        mode=dict(type="str", default="gate", choices=["gate", "baseline"]),
        checks=dict(type="list", elements="str", choices=list(_gates.CHECKS)),
        expect_version=dict(type="str"),
        peer_url=dict(type="str"),
        peer_token=dict(type="str", no_log=True),
        baseline=dict(type="dict", options=dict(
            error_rate=dict(type="float"),
            p99_ms=dict(type="float"),
            requests=dict(type="int"),
        )),
        bounds=dict(type="dict", default={}, options=dict(
            max_lag=dict(type="int", default=5),
            max_error_rate_increase=dict(type="float", default=0.01),
            p99_factor=dict(type="float", default=2.0),
            p99_slack_ms=dict(type="float", default=50),
        )),
        timeout=dict(type="float", default=60),
        interval=dict(type="float", default=0.5),
        bake=dict(type="float", default=0),
        sample=dict(type="float", default=5),
    )
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    p = module.params
    for name in ("timeout", "interval", "sample", "request_timeout"):
        if p[name] <= 0:
            module.fail_json(msg=f"{name} must be > 0 seconds, got {p[name]:g}")
    if p["bake"] < 0:
        module.fail_json(msg=f"bake must be >= 0 seconds, got {p['bake']:g}")
    try:
        checks = _gates.validate_checks(p["checks"] or _gates.DEFAULT_CHECKS[p["component"]])
        bounds = _gates.bounds_from(p["bounds"])
        baseline = _gates.baseline_from(p["baseline"]) if p["baseline"] is not None else None
    except _gates.GateError as e:
        module.fail_json(msg=str(e))
    if p["mode"] == "gate":
        needs = []
        if "version" in checks and not p["expect_version"]:
            needs.append("check version needs expect_version (the release just installed)")
        peer_checks = [c for c in checks if c in _gates.PEER_CHECKS]
        if peer_checks and not p["peer_url"]:
            needs.append(f"check(s) {', '.join(peer_checks)} need peer_url (the shard's other, unpatched node)")
        metric_checks = [c for c in checks if c in _gates.METRICS_CHECKS]
        if metric_checks and baseline is None:
            needs.append(f"check(s) {', '.join(metric_checks)} need baseline (from health_gate mode=baseline "
                         "before the rollout)")
        if needs:
            module.fail_json(msg="; ".join(needs) + "; set them or leave those checks out of checks")
    try:
        gate = Gate(module, checks, baseline, bounds)
    except AdminApiError as e:
        module.fail_json(msg=str(e))
    if p["mode"] == "baseline":
        run_baseline(module, gate)
    else:
        run_gate(module, gate)


if __name__ == "__main__":
    main()
