"""The whole testbed as users run it: supervisord per node, HAProxy, inventory, CLI, chaos.

Each fleet gets its own folder and its own loopback /16, so these tests never touch a
testbed a developer has running (the default one lives on 127.77.0.0/16).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from testbed import fleet as tb
from testbed.loadgen import LoadTarget, run_load
from tests.testbed.nodes import loopback_net

pytestmark = pytest.mark.fleet

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]


def _cli(root: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EXCHPATCH_TESTBED_DIR": str(root)}
    return subprocess.run([str(BIN / "exchpatch"), *args], capture_output=True, text=True, env=env,
                          timeout=timeout, check=False)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    root = tmp_path_factory.mktemp("fleet")
    f = tb.up(root, shards=2, wallets=2, net=loopback_net("fleet"))
    try:
        yield f
    finally:
        report = tb.down(root)
        shutil.rmtree(root, ignore_errors=True)
        assert not report["processes_left"], report


def _target(f: tb.Fleet) -> LoadTarget:
    return LoadTarget(frontend_url=f.frontend_url, markets=f.markets(), chains=f.chains(),
                      wallet_admin=[(n.url, n.token()) for n in f.nodes if n.component == "wallet-signer"])


def _primary_of(f: tb.Fleet, shard: int) -> tuple[tb.NodeSpec, tb.NodeSpec]:
    nodes = [n for n in f.nodes if n.component == "matching-engine" and n.shard == shard]
    roles = {n.name: tb.node_status(n).get("ha_role") for n in nodes}
    primary = next(n for n in nodes if roles[n.name] == "primary")
    standby = next(n for n in nodes if roles[n.name] == "standby")
    return primary, standby


def test_status_json_lists_every_node(fleet):
    res = _cli(Path(fleet.root), "testbed", "status", "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["haproxy"]["ready"] is True
    names = {n["name"] for n in doc["nodes"]}
    assert names == {"match-0a", "match-0b", "match-1a", "match-1b", "wallet-1", "wallet-2"}
    for n in doc["nodes"]:
        assert n["ready"] is True and n["version"] in ("1.4.2", "2.3.0")
        assert n["address"].startswith(f"127.{fleet.net}.")
        if n["component"] == "matching-engine":
            assert {"shard", "role"} <= set(n)
        else:
            assert n["role"] == "active" and len(n["chains"]) == 2
    for shard in (0, 1):
        roles = sorted(n["role"] for n in doc["nodes"] if n.get("shard") == shard)
        assert roles == ["primary", "standby"]


def test_node_roots_follow_the_layout(fleet):
    for node in fleet.nodes:
        root = Path(node.root)
        assert (root / "current").is_symlink()
        assert (root / "current").resolve().parent == (root / "releases").resolve()
        for d in ("data", "etc", "log"):
            assert (root / d).is_dir()
        assert stat.S_IMODE((root / "etc" / "admin_token").stat().st_mode) == 0o600
        # data is never inside a release
        assert not any((root / "current").resolve().rglob("journal*"))


def test_inventory_is_usable_by_ansible_and_keeps_tokens_out_of_plain_files(fleet, tmp_path):
    inv = Path(fleet.inventory_dir)
    listed = subprocess.run([str(BIN / "ansible-inventory"), "-i", str(inv), "--list"],
                            capture_output=True, text=True, check=True, cwd=REPO)
    data = json.loads(listed.stdout)
    assert set(data["matching_nodes"]["hosts"]) == {"match-0a", "match-0b", "match-1a", "match-1b"}
    assert set(data["wallet_nodes"]["hosts"]) == {"wallet-1", "wallet-2"}
    assert data["loadbalancers"]["hosts"] == ["haproxy"]
    hv = data["_meta"]["hostvars"]["match-0a"]
    assert hv["exchange_component"] == "matching-engine" and hv["exchange_shard"] == 0
    assert hv["exchange_service_manager"] == "supervisor"
    assert hv["exchange_node_root"] == str(Path(fleet.root) / "nodes" / "match-0a")
    assert data["_meta"]["hostvars"]["wallet-1"]["exchange_chains"] == ["BTC", "ETH"]

    secrets_file = inv / "group_vars" / "all" / "secrets.yml"
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    tokens = [n.token() for n in fleet.nodes]
    plain = (inv / "hosts.yml").read_text() + (inv / "group_vars" / "all" / "testbed.yml").read_text()
    assert not any(t in plain for t in tokens)

    # ansible-playbook uses the inventory as it is: every node's admin API answers with its token.
    playbook = tmp_path / "probe.yml"
    playbook.write_text(yaml.safe_dump([{
        "name": "Probe testbed nodes", "hosts": "matching_nodes:wallet_nodes", "gather_facts": False,
        "tasks": [{
            "name": "Read node status", "no_log": True,
            "ansible.builtin.uri": {"url": "{{ exchange_admin_url }}/v1/status",
                                    "headers": {"Authorization": "Bearer {{ exchange_admin_token }}"}},
            "register": "st",
        }, {
            "name": "Check the component", "ansible.builtin.assert": {
                "that": ["st.json.component == exchange_component", "st.json.name == inventory_hostname"]},
        }],
    }]))
    run = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inv), str(playbook)],
                         capture_output=True, text=True, cwd=REPO, check=False)
    assert run.returncode == 0, run.stdout[-3000:]
    assert "ok=2" in run.stdout
    assert not any(t in run.stdout + run.stderr for t in tokens)


def test_orders_and_withdrawals_flow_through_haproxy(fleet):
    code, ack = tb.http_json("POST", fleet.frontend_url + "/markets/BTC-USD/orders",
                             body={"client_order_id": "fleet-t1", "side": "buy", "price": 9000, "qty": 1})
    assert code == 200 and ack["client_order_id"] == "fleet-t1"
    code, again = tb.http_json("POST", fleet.frontend_url + "/markets/BTC-USD/orders",
                               body={"client_order_id": "fleet-t1", "side": "buy", "price": 9000, "qty": 1})
    assert code == 200 and again["order_id"] == ack["order_id"]
    code, w = tb.http_json("POST", fleet.frontend_url + "/chains/SOL/withdrawals",
                           body={"client_withdrawal_id": "fleet-w1", "address": "sol-addr", "amount": 5})
    assert code == 200 and w["chain"] == "SOL"
    code = tb.http_json("POST", fleet.frontend_url + "/markets/NOPE-USD/orders",
                        body={"client_order_id": "x", "side": "buy", "price": 1, "qty": 1})[0]
    assert code == 404


def test_kill_primary_under_load_loses_nothing(fleet):
    """The issue's acceptance run, shortened: SIGKILL a matching primary mid-load, promote its standby."""
    primary, standby = _primary_of(fleet, 0)
    result: dict = {}

    def load() -> None:
        result["report"] = run_load(_target(fleet), rate=150, duration=14, settle_timeout=30).as_json()

    t = threading.Thread(target=load)
    t.start()
    time.sleep(4)
    assert _cli(Path(fleet.root), "testbed", "kill", primary.name).returncode == 0
    promoted = _cli(Path(fleet.root), "testbed", "promote", standby.name, "--json")
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    t.join(timeout=90)
    report = result["report"]
    assert report["acked"] > 1000
    assert report["lost"] == 0
    assert report["duplicated"] == 0
    assert report["double_withdrawals"] == 0
    assert report["ledger_balanced"] is True
    # the shard failed over: the old standby is primary now, the old primary rejoined as standby
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        a, b = tb.node_status(standby), tb.node_status(primary)
        if a.get("ha_role") == "primary" and b.get("ha_role") == "standby" and b.get("seq") == a.get("seq"):
            break
        time.sleep(0.5)
    assert a.get("ha_role") == "primary"
    assert b.get("ha_role") == "standby" and b.get("state_hash") == a.get("state_hash")
    tb.wait_ready(fleet, 30)


def test_crash_release_is_given_up_by_supervisord(fleet, tmp_path):
    """A crashing release really crashes under supervisord: the program ends FATAL, not RUNNING."""
    node = fleet.node("wallet-2")
    root = Path(node.root)
    from testbed.release import stage_release

    stage_release(root / "releases" / "2.3.9", "wallet-signer", "2.3.9", fault="crash",
                  fault_params={"crash_after_s": 0.5})
    old = os.readlink(root / "current")
    try:
        os.replace(_symlink(root, "releases/2.3.9"), root / "current")
        tb.supervisorctl(node, "restart", node.program, timeout=30)
        deadline = time.monotonic() + 40
        state = ""
        while time.monotonic() < deadline:
            state = tb.supervisorctl(node, "status", node.program).stdout
            if "FATAL" in state:
                break
            time.sleep(0.5)
        assert "FATAL" in state, state
    finally:
        os.replace(_symlink(root, old), root / "current")
        tb.supervisorctl(node, "start", node.program, timeout=30)
        tb.wait_ready(fleet, 30)


def _symlink(root: Path, target: str) -> Path:
    tmp = root / ".current.test"
    if tmp.is_symlink():
        tmp.unlink()
    tmp.symlink_to(target)
    return tmp


def test_cli_bad_input_exit_codes(fleet):
    res = _cli(Path(fleet.root), "testbed", "kill", "no-such-node", "--json")
    assert res.returncode == 2
    assert "unknown node 'no-such-node'" in json.loads(res.stdout)["error"]
    res = _cli(Path(fleet.root), "testbed", "promote", "wallet-1")
    assert res.returncode == 2 and "only matching-engine standbys" in res.stderr
    res = _cli(Path(fleet.root), "testbed", "up", "--shards", "3")
    assert res.returncode == 1 and "already up" in res.stderr


def test_up_then_down_leaves_nothing_behind(tmp_path):
    root = tmp_path / "small"
    net = loopback_net("fleet-cli")
    env = {**os.environ, "EXCHPATCH_TESTBED_DIR": str(root), "EXCHPATCH_TESTBED_NET": str(net)}
    res = subprocess.run([str(BIN / "exchpatch"), "testbed", "up", "--shards", "1", "--wallets", "1", "--json"],
                         capture_output=True, text=True, env=env, timeout=120, check=False)
    try:
        assert res.returncode == 0, res.stderr
        doc = json.loads(res.stdout)
        assert len(doc["nodes"]) == 3 and all(n["ready"] for n in doc["nodes"])
        assert tb.listening_ports(net)
        f = tb.load(root)
        pids = [tb._read_pid(Path(n.root) / "run" / "supervisord.pid") for n in f.nodes]
        pids += [tb.node_status(n)["pid"] for n in f.nodes]
    finally:
        down = subprocess.run([str(BIN / "exchpatch"), "testbed", "down", "--json"], capture_output=True,
                              text=True, env=env, timeout=120, check=False)
    assert down.returncode == 0, down.stdout + down.stderr
    report = json.loads(down.stdout)
    assert report["processes_left"] == [] and report["ports_left"] == []
    assert tb.listening_ports(net) == []
    assert not any(tb._pid_alive(p) for p in pids if p)
