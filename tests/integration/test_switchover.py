"""exchangeops.patching.switchover on a real testbed fleet, run by ansible-playbook as the role runs it.

One fleet (3 shards x primary/standby + 1 wallet, HAProxy, supervisord) serves the whole
module. Tests switch shards back and forth; each leaves every shard with one ready primary
that HAProxy routes to, and nothing drained.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from testbed import fleet as tb
from tests.integration.test_rolling_patch import assert_nothing_lost, under_load
from tests.testbed.nodes import loopback_net

pytestmark = pytest.mark.fleet

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
VERSION = "1.4.2"  # the testbed's baseline matching release: every node runs it

SWITCH_PLAY = [{
    "name": "Switch a shard over with the module",
    "hosts": "{{ target }}",
    "gather_facts": False,
    "tasks": [
        {"name": "Switch over", "register": "switched", "ignore_errors": True,
         "delegate_to": "{{ groups['loadbalancers'] | first }}",
         "exchangeops.patching.switchover": {
             "url": "{{ exchange_admin_url }}",
             "token": "{{ exchange_admin_token }}",
             "standby_url": "{{ hostvars[peer].exchange_admin_url }}",
             "standby_token": "{{ hostvars[peer].exchange_admin_token }}",
             "expect_version": "{{ version }}",
             "fence_token": "{{ fence_token | default(omit) }}",
             "fence_scopes": "{{ ['shard-' ~ exchange_shard] if fence_token is defined else omit }}",
             "haproxy_socket": "{{ hostvars[groups['loadbalancers'] | first].exchange_haproxy_socket }}",
             "haproxy_backend": "{{ exchange_haproxy_backend }}",
             "haproxy_primary": "{{ inventory_hostname }}",
             "haproxy_standby": "{{ peer }}"}},
        {"name": "Keep the result", "delegate_to": "localhost", "check_mode": False,
         "ansible.builtin.copy": {"content": "{{ switched | to_json }}", "dest": "{{ out }}", "mode": "0600"}},
    ],
}]

# The role's own switchover task (tasks/switchover.yml) for every primary of one batch.
ROLE_PLAY = [{
    "name": "Switch several shards over in one batch through the role",
    "hosts": "{{ primaries }}",
    "gather_facts": False,
    "tasks": [
        {"name": "Find the other node of the shard", "ansible.builtin.set_fact": {
            "matching_node_peer": "{{ groups['matching_nodes'] | map('extract', hostvars)"
                                  " | selectattr('exchange_shard', 'equalto', exchange_shard)"
                                  " | rejectattr('inventory_hostname', 'equalto', inventory_hostname)"
                                  " | map(attribute='inventory_hostname') | first }}"}},
        {"name": "Switch over and gate", "block": [
            {"name": "Run the role's switchover", "ansible.builtin.include_role": {
                "name": "exchangeops.patching.matching_node", "tasks_from": "switchover.yml"}},
        ], "rescue": [
            {"name": "Note the failure", "ansible.builtin.set_fact": {
                "failed_task": "{{ ansible_failed_task.name }}: {{ ansible_failed_result.msg | default('') }}"}},
        ], "always": [
            {"name": "Keep the result", "delegate_to": "localhost", "ansible.builtin.copy": {
                "content": "{{ {'switchover': matching_node_switchover | default({}),"
                           " 'failed_task': failed_task | default('')} | to_json }}",
                "dest": "{{ out }}/{{ inventory_hostname }}.json", "mode": "0600"}},
        ]},
    ],
}]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    with tb.running(tmp_path_factory.mktemp("switchover"), shards=3, wallets=1,
                    net=loopback_net("switchover")) as f:
        yield f


@pytest.fixture(scope="module")
def plays(tmp_path_factory):
    folder = tmp_path_factory.mktemp("switchover-plays")
    (folder / "switch.yml").write_text(yaml.safe_dump(SWITCH_PLAY, sort_keys=False))
    (folder / "role.yml").write_text(yaml.safe_dump(ROLE_PLAY, sort_keys=False))
    return folder


def roles(f: tb.Fleet, shard: int) -> dict[str, str]:
    return {n.name: tb.node_status(n)["ha_role"] for n in f.nodes if n.shard == shard}


def primary_of(f: tb.Fleet, shard: int) -> tuple[str, str]:
    """(primary, standby) of ``shard``, read from the nodes."""
    now = roles(f, shard)
    primary = next(n for n, r in now.items() if r == "primary")
    return primary, next(n for n in now if n != primary)


def servers(f: tb.Fleet, backend: str) -> dict[str, tuple[int, int]]:
    """{server: (srv_op_state, srv_admin_state)} from the runtime API's ``show servers state``."""
    lines = tb.haproxy_command(f, f"show servers state {backend}").splitlines()
    header = next(ln for ln in lines if ln.startswith("#"))[2:].split()
    rows = [dict(zip(header, ln.split())) for ln in lines if ln.strip() and not ln.startswith("#")][1:]
    return {r["srv_name"]: (int(r["srv_op_state"]), int(r["srv_admin_state"])) for r in rows if "srv_name" in r}


def switch(f: tb.Fleet, plays: Path, tmp_path: Path, shard: int, *extra: str, version: str = VERSION,
           pair: tuple[str, str] | None = None, **evars) -> dict:
    primary, standby = pair or primary_of(f, shard)
    out = tmp_path / f"switch-{shard}-{primary}.json"
    args = {"target": primary, "peer": standby, "version": version, "out": str(out), **evars}
    res = subprocess.run([str(BIN / "ansible-playbook"), "-i", f.inventory_dir, str(plays / "switch.yml"),
                          "-e", json.dumps(args), *extra], capture_output=True, text=True, env=ENV, cwd=REPO,
                         timeout=180, check=False)
    assert res.returncode == 0 and out.exists(), res.stdout[-3000:] + res.stderr[-2000:]
    result = json.loads(out.read_text())
    out.unlink()
    return {**result, "from": primary, "to": standby}


def assert_unchanged(f: tb.Fleet, shard: int, primary: str, before: dict[str, tuple[int, int]]) -> None:
    assert tb.node_status(f.node(primary))["ha_role"] == "primary"
    backend = f"be_shard{shard}"
    assert {n: s[1] for n, s in servers(f, backend).items()} == {n: s[1] for n, s in before.items()}
    assert servers(f, backend)[primary][0] == 2  # still UP and serving


def test_switchover_under_load_loses_nothing_and_flips_haproxy_at_once(fleet, plays, tmp_path):
    old, new = primary_of(fleet, 0)
    result, report = under_load(fleet, lambda: switch(fleet, plays, tmp_path, 0), rate=80)
    now = servers(fleet, "be_shard0")  # read as soon as the module returned
    assert result["changed"] is True and not result.get("failed"), result
    assert result["traffic_flip"] == "immediate", result
    assert now[new][0] == 2 and now[old][0] == 0, now  # the new primary UP, the old one DOWN
    assert result["haproxy"]["after"][new]["takes_traffic"] is True, result["haproxy"]
    assert result["haproxy"]["after"][old]["takes_traffic"] is False, result["haproxy"]
    assert roles(fleet, 0) == {old: "standby", new: "primary"}
    assert_nothing_lost(report)
    markets = fleet.node(new).markets
    gap = {m: report["max_unavailable_ms"].get(m) for m in markets}
    print(f"\nswitchover {old} -> {new} under {report['rate']} ops/s: timings {result['timings']}; "
          f"market gap (load report, max_unavailable_ms) {gap}; lost {report['lost']}")

    # the role then drains the old primary and returns it (community.general.haproxy): it comes back
    # as a standby the health checks keep DOWN, and nothing is left in drain or maintenance
    for state in ("drain", "enabled"):
        res = subprocess.run([str(BIN / "ansible"), "haproxy", "-i", fleet.inventory_dir, "-m",
                              "community.general.haproxy", "-a", json.dumps({
                                  "state": state, "host": old, "backend": "be_shard0",
                                  "socket": fleet.haproxy_socket, "fail_on_not_found": True})],
                             capture_output=True, text=True, env=ENV, cwd=REPO, timeout=60, check=False)
        assert res.returncode == 0, res.stdout + res.stderr
    tb.wait_ready(fleet, 30)
    after = servers(fleet, "be_shard0")
    assert after[old] == (0, 0) and after[new] == (2, 0), after

    again = switch(fleet, plays, tmp_path, 0, version=VERSION)  # and back: the other way round works too
    assert again["changed"] is True and again["traffic_flip"] == "immediate", again


def test_an_already_switched_shard_changes_nothing(fleet, plays, tmp_path):
    primary, standby = primary_of(fleet, 1)
    out = tmp_path / "noop.json"
    args = {"target": standby, "peer": primary, "version": VERSION, "out": str(out)}  # already done
    res = subprocess.run([str(BIN / "ansible-playbook"), "-i", fleet.inventory_dir, str(plays / "switch.yml"),
                          "-e", json.dumps(args)], capture_output=True, text=True, env=ENV, cwd=REPO,
                         timeout=180, check=False)
    assert res.returncode == 0, res.stdout[-3000:]
    result = json.loads(out.read_text())
    assert result["changed"] is False and result["traffic_flip"] == "none", result
    assert primary_of(fleet, 1)[0] == primary


@pytest.mark.parametrize("case", ["wrong_version", "standby_down", "standby_drained"])
def test_a_standby_that_cannot_take_over_is_refused_with_nothing_changed(fleet, plays, tmp_path, case):
    primary, standby = primary_of(fleet, 1)
    before = servers(fleet, "be_shard1")
    version, expect = VERSION, ""
    if case == "wrong_version":
        version, expect = "9.9.9", f"it runs {VERSION}, not 9.9.9"
    elif case == "standby_down":
        assert tb.supervisorctl(fleet.node(standby), "stop", fleet.node(standby).program).returncode == 0
        expect = "the standby GET"
    else:
        tb.haproxy_command(fleet, f"set server be_shard1/{standby} state drain")
        before = servers(fleet, "be_shard1")
        expect = f"be_shard1/{standby} is in drain"
    try:
        result = switch(fleet, plays, tmp_path, 1, version=version, pair=(primary, standby))
        assert result.get("failed") is True, result
        assert expect in result["msg"] and "nothing was changed" in result["msg"], result["msg"]
        assert_unchanged(fleet, 1, primary, before)
    finally:
        if case == "standby_down":
            tb.supervisorctl(fleet.node(standby), "start", fleet.node(standby).program)
        if case == "standby_drained":
            tb.haproxy_command(fleet, f"set server be_shard1/{standby} state ready")
        tb.wait_ready(fleet, 60)


@pytest.mark.parametrize("bumped", ["standby", "primary"])
def test_a_stale_fencing_token_is_refused_with_nothing_changed(fleet, plays, tmp_path, bumped):
    primary, standby = primary_of(fleet, 2)
    before = servers(fleet, "be_shard2")
    seen = max(tb.node_status(fleet.node(n)).get("fence", {}).get("shard-2", 0) for n in (primary, standby))
    newer, stale = seen + 10, seen + 5
    # a newer run's token reaches one node through a no-op the node still records (promote on a
    # primary, step-down on a standby)
    node = fleet.node(primary if bumped == "primary" else standby)
    body = {"fence": {"scope": "shard-2", "token": newer}}
    path = "/v1/ha/promote" if bumped == "primary" else "/v1/ha/step-down"
    tb.http_json("POST", node.url + path, node.token(), body)
    assert tb.node_status(node)["fence"]["shard-2"] == newer

    result = switch(fleet, plays, tmp_path, 2, fence_token=stale)
    assert result.get("failed") is True, result
    assert result["fence"] == {"scope": "shard-2", "token": stale, "highest": newer}, result
    assert f"has seen token {newer} for shard-2, higher than this run's {stale}" in result["msg"], result["msg"]
    assert_unchanged(fleet, 2, primary, before)

    ok = switch(fleet, plays, tmp_path, 2, fence_token=newer)  # the lease holder's token passes
    assert ok["changed"] is True and not ok.get("failed"), ok
    assert primary_of(fleet, 2)[0] == standby


def test_check_mode_changes_nothing(fleet, plays, tmp_path):
    primary = primary_of(fleet, 0)[0]
    before = servers(fleet, "be_shard0")
    result = switch(fleet, plays, tmp_path, 0, "--check")
    assert result["changed"] is True and result["traffic_flip"] == "none", result
    assert result["after"]["standby"]["ha_role"] == "primary"
    assert "timings" not in result
    assert_unchanged(fleet, 0, primary, before)
    assert servers(fleet, "be_shard0") == before


def overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant."""
    events = sorted([(s, 1) for s, _e in intervals] + [(e, -1) for _s, e in intervals], key=lambda x: (x[0], x[1]))
    most = now = 0
    for _t, d in events:
        now += d
        most = max(most, now)
    return most


@pytest.mark.parametrize("limit", [1, 2])
def test_the_throttle_limits_concurrent_switchovers_in_one_batch(fleet, plays, tmp_path, limit):
    primaries = [primary_of(fleet, s)[0] for s in range(fleet.shards)]
    extra = {"primaries": primaries, "out": str(tmp_path), "matching_node_version": VERSION,
             "matching_node_max_switchovers": limit, "matching_node_traffic_bake": 0,
             "matching_node_baseline": {"error_rate": 0.0, "p99_ms": None, "requests": 0}}
    res = subprocess.run([str(BIN / "ansible-playbook"), "-i", fleet.inventory_dir, str(plays / "role.yml"),
                          "-e", json.dumps(extra)], capture_output=True, text=True, env=ENV, cwd=REPO,
                         timeout=300, check=False)
    assert res.returncode == 0, res.stdout[-3000:]
    results = {p: json.loads((tmp_path / f"{p}.json").read_text()) for p in primaries}
    for p, r in results.items():
        sw = r["switchover"]
        assert sw.get("changed") is True and sw.get("traffic_flip") == "immediate", (p, r)
    # each switchover's own stamps, from step-down sent to HAProxy flipped: at most `limit` open at once
    spans = [(r["switchover"]["timings"]["step_down_at"], r["switchover"]["timings"]["flipped_at"])
             for r in results.values()]
    assert overlap(spans) <= limit, spans
    print(f"\nthrottle {limit}: {len(spans)} shards, most in flight at once {overlap(spans)}; gates: "
          + ", ".join(f"{p}: {r['failed_task'] or 'passed'}" for p, r in results.items()))
    for s in range(fleet.shards):
        assert primary_of(fleet, s)[0] not in primaries  # every shard switched
