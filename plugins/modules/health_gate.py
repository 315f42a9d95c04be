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
    (and its peer's) every O(interval) seconds until every check other than the traffic checks
    (C(error_rate), C(p99)) passes, failing at O(timeout); then keeps checking for O(bake) seconds
    (any failure during the bake fails the task); then judges the traffic checks once, on the whole
    metrics window, waiting up to O(evidence_timeout) more seconds for the minimum sample.
  - The result is RV(outcome) - V(passed), V(failed) or V(inconclusive). The task fails only when
    the outcome is V(failed). When a traffic check had too little evidence (fewer than
    O(min_requests) client requests in the node's window or in the reference's) the outcome is
    V(inconclusive) - the task does not fail, returns RV(passed=false) and a warning, and the
    playbook decides what that means.
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
  - The traffic checks compare the node's window with a reference - the window of O(control_url), an
    unpatched node serving the same kind of client traffic, snapshotted at the same polls; without a
    control, the pre-rollout O(baseline) (the evidence then says so, C(no control)). A check fails
    only when the difference is beyond its bound AND statistically significant at O(alpha).
  - C(error_rate) - fails when the client error rate (5xx share of order and withdrawal requests) is
    above the reference's plus O(bounds.max_error_rate_increase) and a one-sided Fisher exact test
    says it is higher at O(alpha).
  - C(p99) - fails when the client p99 latency (interpolated inside the histogram bucket, as
    Prometheus' C(histogram_quantile)) is above max(reference p99 x O(bounds.p99_factor), reference
    p99 + O(bounds.p99_slack_ms)) and a one-sided Mann-Whitney U test on the latency histograms or a
    one-sided Fisher exact test of the share of requests above that bound says it is slower, each at
    O(alpha)/2. Against a baseline without RV(baseline.buckets) it is judged on the bound alone.
  - C(ledger) - the wallet's ledger reconciles (C(GET /v1/ledger/reconcile) says C(balanced)).
  - Errors, timeouts, refused tokens and answers without the expected fields fail their checks;
    missing data is never read as healthy. No client requests in both the node's window and the
    reference (a standby, an idle market) passes C(error_rate) and C(p99); fewer than O(min_requests)
    on either side makes them inconclusive; a control whose metrics cannot be read makes them
    inconclusive too.
  - An admin token the node, its peer or the control refuses (401, 403), a redirect and a TLS failure
    fail the task at once instead of waiting for the timeout, since waiting does not fix them.
  - In O(mode=baseline) it takes two C(/metrics) snapshots O(sample) seconds apart and returns the
    client error rate, p99, request and error counts and latency bucket counts between them as
    RV(baseline), to pass to later gates.
  - The traffic checks need scipy on the controller.
  - Runs on the controller (the admin API is HTTP); delegate it to C(localhost).
author:
  - exchangeops engineering (@exchangeops)
requirements:
  - scipy (on the controller, for the C(error_rate) and C(p99) checks in O(mode=gate))
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
        C(error_rate) and C(p99) need O(control_url) or O(baseline).
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
  control_url:
    description:
      - Admin API of the control - an unpatched node serving the same kind of client traffic during the
        gate (another shard's primary, another chain's signer). The traffic checks compare the node's
        window with the control's over the same polls; without it they compare with O(baseline).
      - It is reached with the same TLS options (O(validate_certs), O(ca_path), O(client_cert),
        O(client_key)) as O(url).
    type: str
  control_token:
    description: Bearer token of the control's admin API. Defaults to O(token). Never logged.
    type: str
  baseline:
    description:
      - The RV(baseline) a O(mode=baseline) run returned before the rollout; the traffic checks' reference
        when there is no O(control_url).
      - A baseline without O(baseline.buckets) (taken by an older release of this module) is accepted;
        C(p99) is then judged on the bound alone, with the minimum sample.
    type: dict
    suboptions:
      error_rate:
        description: Client error rate in the baseline window (null without requests).
        type: float
      p99_ms:
        description: Client p99 latency in ms in the baseline window, interpolated (null without requests).
        type: float
      requests:
        description: Client requests in the baseline window.
        type: int
      errors:
        description:
          - Client requests answered 5xx in the baseline window.
          - Defaults to O(baseline.error_rate) x O(baseline.requests).
        type: int
      buckets:
        description:
          - Client requests per latency bucket in the baseline window, keyed by the bucket's upper bound in
            seconds as the exposition writes it (C(0.025), C(+Inf)); counts per bucket, not cumulative.
        type: dict
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
  min_requests:
    description:
      - The minimum client requests in the node's window and in the reference's for a traffic verdict;
        with fewer on either side the traffic checks are inconclusive.
      - Must be >= 1.
    type: int
    default: 50
  alpha:
    description:
      - The false-positive rate of each traffic check - how often a healthy node is failed by chance.
      - C(p99) splits it between its two tests (O(alpha)/2 each). The traffic checks are judged once, at the
        end, so repeated polls do not inflate it.
      - Must be within (0, 0.5].
    type: float
    default: 0.01
  evidence_timeout:
    description:
      - After the bake, how many seconds the gate keeps watching (and checking) for the minimum sample before it
        calls the traffic checks inconclusive.
      - In O(mode=baseline), how many seconds past O(sample) the baseline keeps sampling a node that had
        some client requests, but fewer than O(min_requests), so that gates against it can judge.
    type: float
    default: 60
  timeout:
    description:
      - Seconds for every check other than the traffic checks to pass (O(mode=gate)); the bake and
        O(evidence_timeout) come on top.
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
    description:
      - Seconds between the two C(/metrics) snapshots of O(mode=baseline); longer (up to O(evidence_timeout)
        more) when the node had client requests, but fewer than O(min_requests).
    type: float
    default: 5
notes:
  - The metrics window of O(mode=gate) starts at the gate's first poll where every C(/metrics) read
    (node and control) succeeded, so only traffic served by the patched release counts, and ends at
    the latest such poll. If the node restarts during the gate, its counters go down and the window
    becomes everything since the restart.
  - The traffic checks are judged once. A check whose test ran keeps its verdict; only checks still
    short of the minimum sample are looked at again while the gate waits for evidence, so the
    false-positive rate stays at most O(alpha) per check. See docs/gates.md for the measured rates.
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

- name: Gate a promoted primary against an unpatched primary of another shard over the same window
  exchangeops.patching.health_gate:
    url: "{{ exchange_admin_url }}"
    token: "{{ exchange_admin_token }}"
    component: matching-engine
    checks: [ready, version, error_rate, p99]
    expect_version: "{{ release_version }}"
    control_url: "{{ hostvars[control_node].exchange_admin_url }}"
    control_token: "{{ hostvars[control_node].exchange_admin_token }}"
    baseline: "{{ pre_rollout.baseline }}"
    min_requests: 50
    alpha: 0.01
    bake: 30
    evidence_timeout: 60
  delegate_to: localhost
  register: gate

- name: Stop the rollout when the gate could not judge the traffic
  ansible.builtin.fail:
    msg: "{{ gate.msg }}"
  when: gate.outcome == 'inconclusive'

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
outcome:
  description:
    - V(failed) when any check failed (the task fails), else V(inconclusive) when a traffic check had too
      little evidence (the task does not fail), else V(passed).
  returned: mode=gate
  type: str
  sample: passed
gates:
  description:
    - One result per check, also returned when the gate fails or is inconclusive.
  returned: mode=gate
  type: list
  elements: dict
  contains:
    name:
      description: The check.
      type: str
      sample: p99
    outcome:
      description: V(passed), V(failed) or V(inconclusive).
      type: str
      sample: failed
    passed:
      description: Whether it passed (false when inconclusive).
      type: bool
    evidence:
      description: What was measured against what.
      type: str
      sample: "p99 212 ms vs control match-1a 24 ms (bound 124 ms, max of 24 ms × 2 and + 100 ms): slower beyond
        the bound and significantly; Mann–Whitney p=3e-12 < alpha/2 0.005, tail above the bound 40/412 vs 0/398
        Fisher p=1e-12 < 0.005; 412 vs 398 client requests"
    p_values:
      description: The traffic tests' p-values (C(mann_whitney), C(tail_fisher) for p99, C(fisher) for error_rate).
      type: dict
      returned: for a traffic check judged by a test
    numbers:
      description: The numbers behind a traffic verdict (rates, p99s, bound, request counts, alpha, min_requests).
      type: dict
      returned: for a traffic check
passed:
  description: Whether every check passed (and kept passing through the bake); false when inconclusive.
  returned: mode=gate
  type: bool
inconclusive:
  description: The checks that were inconclusive.
  returned: mode=gate
  type: list
  elements: str
msg:
  description: The evidence of the inconclusive checks.
  returned: when outcome is inconclusive
  type: str
reference:
  description: What the traffic checks compared the node with.
  returned: mode=gate
  type: dict
  contains:
    kind:
      description: V(control) or V(baseline).
      type: str
    url:
      description: The control's admin URL (null for the baseline).
      type: str
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
  description: Seconds the gate ran, bake and evidence wait included.
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
      description: Interpolated p99 latency in ms (see RV(window.p99_ms)); null without requests.
      type: float
      sample: 9.8
    requests:
      description: Client requests in the sample.
      type: int
      sample: 212
    errors:
      description: Client requests answered 5xx in the sample.
      type: int
      sample: 0
    buckets:
      description: Client requests per latency bucket (upper bound in seconds, as the exposition writes it, to count).
      type: dict
      sample: {"0.001": 0, "0.0025": 3, "0.005": 150, "0.01": 57, "0.025": 2, "+Inf": 0}
window:
  description:
    - Client traffic the gate judged (the node's window), or the baseline sample.
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
      description:
        - p99 in ms, interpolated linearly inside its histogram bucket as Prometheus' C(histogram_quantile) does
          (the lowest bucket starts at 0); null without requests.
        - When the p99 falls in the C(+Inf) bucket it is the largest finite bucket bound and RV(window.p99_beyond)
          is true.
      type: float
    p99_beyond:
      description: The p99 is beyond the largest finite latency bucket.
      type: bool
    client_requests:
      description: Requests in the latency histogram.
      type: int
    restarted:
      description: The node restarted within the window (its counters went down).
      type: bool
    buckets:
      description: Requests per latency bucket (upper bound in seconds to count).
      type: dict
control_window:
  description: The control's client traffic over the same polls as RV(window); same fields.
  returned: mode=gate with control_url, when its metrics were read
  type: dict
"""

import time

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.exchangeops.patching.plugins.module_utils import _gates, _judge, _metrics
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

    def snapshot(self) -> tuple[_metrics.MetricsSnapshot | None, str | None]:
        text, err = self.get("/metrics")
        if text is None:
            return None, err
        try:
            return _metrics.snapshot(text), None
        except _metrics.MetricsError as e:
            return None, f"{self.base}/metrics: {e}"


class Gate:
    """The state of one gate run: endpoints, options and the metrics windows (node and control)."""

    def __init__(self, module: AnsibleModule, checks: list[str], baseline: _gates.Baseline | None,
                 bounds: _gates.Bounds, settings: _judge.Settings) -> None:
        p = module.params
        self.module = module
        self.checks = checks
        self.baseline = baseline
        self.bounds = bounds
        self.settings = settings
        self.component = p["component"]
        self.traffic_checks = [c for c in checks if c in _gates.METRICS_CHECKS]
        tls = tls_from_params(p)
        request_timeout = min(p["request_timeout"], p["timeout"])
        self.node = Endpoint(AdminApi(p["url"], p["token"], request_timeout=request_timeout, tls=tls))
        self.peer = self.control = None
        if p["peer_url"]:
            peer_token = "peer_token" if p["peer_token"] else "peer_token (it defaults to token)"
            self.peer = Endpoint(AdminApi(p["peer_url"], p["peer_token"] or p["token"],
                                          request_timeout=request_timeout, tls=tls,
                                          token_option=f"{peer_token}, the peer's admin token in vault",
                                          url_option="peer_url (the peer's exchange_admin_url)"))
        if p["control_url"]:
            control_token = "control_token" if p["control_token"] else "control_token (it defaults to token)"
            self.control = Endpoint(AdminApi(p["control_url"], p["control_token"] or p["token"],
                                             request_timeout=request_timeout, tls=tls,
                                             token_option=f"{control_token}, the control's admin token in vault",
                                             url_option="control_url (the control's exchange_admin_url)"))
        self.control_name: str | None = None
        # (node, control) snapshots of the first and the latest poll where every read succeeded
        self.first: tuple[_metrics.MetricsSnapshot, _metrics.MetricsSnapshot | None] | None = None
        self.last: tuple[_metrics.MetricsSnapshot, _metrics.MetricsSnapshot | None] | None = None
        self.metrics_errors: dict[str, str] = {}
        self.reads = 0  # polls where every /metrics read succeeded: a window needs two
        self.window: _metrics.WindowStats | None = None
        self.control_window: _metrics.WindowStats | None = None
        self.judged: dict[str, _gates.GateResult] = {}  # traffic verdicts, final once a test ran

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
        """Read the nodes once: the non-traffic checks' results; the metrics windows move on."""
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
        if self.traffic_checks:
            self.read_metrics()
        reconcile = None
        if "ledger" in self.checks:
            reconcile, err = self.node.get_json("/v1/ledger/reconcile")
            if err:
                errors["reconcile"] = err
        other = [c for c in self.checks if c not in _gates.METRICS_CHECKS]
        return _gates.evaluate(other, status, peer_status, reconcile, None, None, self.bounds,
                               expect_version=self.module.params["expect_version"], hashes=hashes, errors=errors,
                               status_after=status_after)

    def read_metrics(self) -> None:
        """Snapshot the node's and the control's /metrics at this poll; the windows span the same polls."""
        self.metrics_errors = {}
        node_snap, err = self.node.snapshot()
        if node_snap is None:
            self.metrics_errors["metrics"] = err or "no metrics"
        control_snap = None
        if self.control is not None:
            if self.control_name is None:
                doc = self.control.get_json("/v1/status")[0]
                if doc is not None and doc.get("name"):
                    self.control_name = str(doc["name"])
            control_snap, err = self.control.snapshot()
            if control_snap is None:
                self.metrics_errors["control_metrics"] = err or "no metrics"
        if self.metrics_errors:
            return
        pair = (node_snap, control_snap)
        self.reads += 1
        if self.first is None:
            self.first = pair  # the windows start at the first poll where every read succeeded
        self.last = pair
        self.window = _metrics.window(self.first[0], node_snap)
        if control_snap is not None:
            self.control_window = _metrics.window(self.first[1], control_snap)

    def reference(self) -> _judge.Reference | None:
        if self.control is not None:
            why = self.metrics_errors.get("control_metrics", "")
            window = self.control_window if not why else None
            name = self.control_name or self.control.base
            return _judge.control_reference(name, self.control.base, window, why)
        if self.baseline is not None:
            return _gates.baseline_reference(self.baseline)
        return None

    def judge_traffic(self) -> list[_gates.GateResult]:
        """The traffic checks on the window so far; a verdict from a test is final (one look per check)."""
        pending = [c for c in self.traffic_checks if c not in self.judged]
        if self.reads < 2 and not self.metrics_errors:
            # one read is a window of no time: "no traffic in either" must not pass on it
            results = [_gates.GateResult(c, False, "the metrics window has not begun (one /metrics read so far)",
                                         _judge.INCONCLUSIVE) for c in pending]
        else:
            window = None if "metrics" in self.metrics_errors else self.window
            if window is None and "metrics" not in self.metrics_errors:
                window = _metrics.window(None, _metrics.MetricsSnapshot(0.0, 0.0, [], 0.0))  # nothing read yet
            results = _gates.evaluate(pending, None, None, None, window, self.reference(), self.bounds,
                                      settings=self.settings, errors=self.metrics_errors)
        for r in results:
            if r.p_values is not None and r.verdict != _judge.INCONCLUSIVE:
                self.judged[r.name] = r
        fresh = {r.name: r for r in results}
        return [self.judged.get(c) or fresh[c] for c in self.traffic_checks]

    def waiting_for_evidence(self, traffic: list[_gates.GateResult]) -> bool:
        """Whether more watching could settle the traffic checks (too few requests, unread metrics)."""
        return bool(_gates.inconclusive(traffic)) or "metrics" in self.metrics_errors

    def ordered(self, results: list[_gates.GateResult]) -> list[_gates.GateResult]:
        by_name = {r.name: r for r in results}
        return [by_name[c] for c in self.checks if c in by_name]

    def facts(self) -> dict:
        ref = self.reference()
        return {
            "checks": self.checks,
            "window": self.window.as_dict() if self.window else None,
            "control_window": self.control_window.as_dict() if self.control_window else None,
            "reference": ref.as_dict() if ref is not None else None,
        }


def _finish(module: AnsibleModule, gate: Gate, results: list[_gates.GateResult], why: str, **extra) -> None:
    results = gate.ordered(results)
    outcome = _gates.outcome(results)
    common = dict(gates=[r.as_dict() for r in results], passed=outcome == _judge.PASSED, outcome=outcome,
                  inconclusive=[r.name for r in _gates.inconclusive(results)], **gate.facts(), **extra)
    if outcome == _judge.FAILED:
        names = ", ".join(r.name for r in _gates.failing(results))
        module.fail_json(
            msg=f"{gate.node.base}: health gate failed {why}: {names} did not pass. {_gates.summary(results)}. "
                "Roll the node back or fix the release; the gates list has the evidence.", **common)
    if outcome == _judge.INCONCLUSIVE:
        names = ", ".join(r.name for r in _gates.inconclusive(results))
        msg = (f"{gate.node.base}: health gate inconclusive: {names} could not be judged. "
               f"{_gates.summary(results, _judge.INCONCLUSIVE)}. Every other check passed; the playbook decides "
               "what an inconclusive gate means (outcome).")
        module.warn(msg)
        module.exit_json(changed=False, msg=msg, **common)
    module.exit_json(changed=False, **common)


def run_gate(module: AnsibleModule, gate: Gate) -> None:
    """Poll until the non-traffic checks pass, bake, then judge the traffic checks once on the whole window."""
    p = module.params
    started = time.monotonic()
    deadline = started + p["timeout"]
    bake_started = evidence_deadline = None
    polls = 0
    while True:
        polls += 1
        try:
            results = gate.poll()
        except Stop as e:
            module.fail_json(msg=str(e), gates=[], passed=False, outcome=_judge.FAILED, inconclusive=[],
                             checks=gate.checks, polls=polls)
        now = time.monotonic()
        extra = dict(polls=polls, elapsed=round(now - started, 3))
        if _gates.failing(results):
            if bake_started is not None:
                phase = ("while waiting for the minimum sample" if evidence_deadline is not None else
                         f"during the {p['bake']:g} s bake")
                _finish(module, gate, results + gate.judge_traffic(),
                        f"{phase} ({now - bake_started:.1f} s after every check had passed)", **extra)
            if now >= deadline:
                _finish(module, gate, results + gate.judge_traffic(), f"at the {p['timeout']:g} s timeout", **extra)
        else:
            if bake_started is None:
                bake_started = now
            if now - bake_started >= p["bake"]:
                if evidence_deadline is None:
                    evidence_deadline = now + p["evidence_timeout"]
                traffic = gate.judge_traffic()
                if not gate.waiting_for_evidence(traffic) or now >= evidence_deadline:
                    why = "at the end of the bake"
                    if gate.waiting_for_evidence(traffic) and p["evidence_timeout"] > 0:
                        why = f"after waiting {p['evidence_timeout']:g} s (evidence_timeout) for the minimum sample"
                    _finish(module, gate, results + traffic, why, **extra)
        time.sleep(p["interval"])


def run_baseline(module: AnsibleModule, gate: Gate) -> None:
    p = module.params
    try:
        before, err = gate.node.snapshot()
        if before is None:
            module.fail_json(msg=f"cannot take a baseline: {err}; is the node up and the url right?")
        time.sleep(p["sample"])
        after, err = gate.node.snapshot()
        if after is None:
            module.fail_json(msg=f"cannot take a baseline: {err}; is the node up and the url right?")
        # a node with some traffic but fewer than min_requests: sample on, up to evidence_timeout more
        # seconds, so gates against this baseline (the last batch, without a control) can judge
        deadline = time.monotonic() + p["evidence_timeout"]
        while time.monotonic() < deadline:
            stats = _metrics.window(before, after)
            if stats.restarted or stats.requests == 0 or stats.requests >= p["min_requests"]:
                break
            time.sleep(min(p["interval"], max(deadline - time.monotonic(), 0.0)))
            later, err = gate.node.snapshot()
            if later is None:
                break
            after = later
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
    elif stats.requests < p["min_requests"]:
        module.warn(f"only {stats.requests} client requests reached {gate.node.base} during the "
                    f"{p['sample']:g} s sample, fewer than min_requests {p['min_requests']}: gates against this "
                    "baseline will be inconclusive; sample longer")
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
        control_url=dict(type="str"),
        control_token=dict(type="str", no_log=True),
        baseline=dict(type="dict", options=dict(
            error_rate=dict(type="float"),
            p99_ms=dict(type="float"),
            requests=dict(type="int"),
            errors=dict(type="int"),
            buckets=dict(type="dict"),
        )),
        bounds=dict(type="dict", default={}, options=dict(
            max_lag=dict(type="int", default=5),
            max_error_rate_increase=dict(type="float", default=0.01),
            p99_factor=dict(type="float", default=2.0),
            p99_slack_ms=dict(type="float", default=50),
        )),
        min_requests=dict(type="int", default=50),
        alpha=dict(type="float", default=0.01),
        timeout=dict(type="float", default=60),
        interval=dict(type="float", default=0.5),
        bake=dict(type="float", default=0),
        evidence_timeout=dict(type="float", default=60),
        sample=dict(type="float", default=5),
    )
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    p = module.params
    for name in ("timeout", "interval", "sample", "request_timeout"):
        if p[name] <= 0:
            module.fail_json(msg=f"{name} must be > 0 seconds, got {p[name]:g}")
    for name in ("bake", "evidence_timeout"):
        if p[name] < 0:
            module.fail_json(msg=f"{name} must be >= 0 seconds, got {p[name]:g}")
    try:
        checks = _gates.validate_checks(p["checks"] or _gates.DEFAULT_CHECKS[p["component"]])
        bounds = _gates.bounds_from(p["bounds"])
        baseline = _gates.baseline_from(p["baseline"]) if p["baseline"] is not None else None
        settings = _judge.settings_from(p["alpha"], p["min_requests"],
                                        baseline.requests if baseline is not None else None)
    except (_gates.GateError, _judge.JudgeError) as e:
        module.fail_json(msg=str(e))
    if p["mode"] == "gate":
        needs = []
        if "version" in checks and not p["expect_version"]:
            needs.append("check version needs expect_version (the release just installed)")
        peer_checks = [c for c in checks if c in _gates.PEER_CHECKS]
        if peer_checks and not p["peer_url"]:
            needs.append(f"check(s) {', '.join(peer_checks)} need peer_url (the shard's other, unpatched node)")
        metric_checks = [c for c in checks if c in _gates.METRICS_CHECKS]
        if metric_checks and baseline is None and not p["control_url"]:
            needs.append(f"check(s) {', '.join(metric_checks)} need control_url (an unpatched node serving the "
                         "same traffic) or baseline (from health_gate mode=baseline before the rollout)")
        if needs:
            module.fail_json(msg="; ".join(needs) + "; set them or leave those checks out of checks")
        if metric_checks and not _judge.HAS_SCIPY:
            module.fail_json(msg=missing_required_lib("scipy", reason=f"for the {', '.join(metric_checks)} checks"),
                             exception=_judge.SCIPY_IMPORT_ERROR)
    try:
        gate = Gate(module, checks, baseline, bounds, settings)
    except AdminApiError as e:
        module.fail_json(msg=str(e))
    if p["mode"] == "baseline":
        run_baseline(module, gate)
    else:
        run_gate(module, gate)


if __name__ == "__main__":
    main()
