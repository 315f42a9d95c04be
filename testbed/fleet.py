"""Bring the testbed fleet up and down: node roots, supervisord per node, HAProxy, inventory.

Everything runs on this machine: each node is a supervisord-managed process on its own
loopback address (127.N.1.x matching, 127.N.2.x wallet) with its own root folder;
HAProxy listens on 127.N.0.1. ``testbed.json`` in the testbed folder records what runs
(no secrets); tokens live in 0600 files under each node's ``etc/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from testbed.release import build_release, ensure_signing_key

REPO = Path(__file__).resolve().parent.parent
DEFAULT_ROOT = REPO / ".testbed"
DEFAULT_INVENTORY = REPO / "inventories" / "testbed"
DEFAULT_NET = 77
NODE_PORT = 8080
FRONTEND_PORT = 8000
STATS_PORT = 8404
BASELINE = {"matching-engine": "1.4.2", "wallet-signer": "2.3.0"}
PROGRAM = {"matching-engine": "matching-engine", "wallet-signer": "wallet-signer"}
MARKET_POOL = ["BTC-USD", "ETH-USD", "SOL-USD", "XRP-USD", "BTC-PERP", "ETH-PERP", "SOL-PERP", "DOGE-USD",
               "ADA-USD", "AVAX-USD", "LINK-USD", "DOT-USD", "LTC-USD", "BCH-USD", "TRX-USD", "ATOM-USD"]
CHAIN_POOL = ["BTC", "ETH", "SOL", "TRX", "XRP", "LTC", "DOGE", "ADA", "AVAX", "DOT"]
MAX_SHARDS, MAX_WALLETS = 100, 50


class TestbedError(RuntimeError):
    """An operation on the testbed could not be done; the message says why and what to do."""

    __test__ = False  # not a pytest test class


class TestbedInputError(TestbedError):
    """The request itself is wrong (unknown node, size out of range): exit code 2."""

    __test__ = False


@dataclass
class NodeSpec:
    name: str
    component: str
    address: str
    root: str
    port: int = NODE_PORT
    shard: int | None = None
    markets: list[str] = field(default_factory=list)
    peer: str | None = None
    initial_role: str | None = None
    chains: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"

    @property
    def program(self) -> str:
        return PROGRAM[self.component]

    @property
    def supervisor_conf(self) -> Path:
        return Path(self.root) / "etc" / "supervisord.conf"

    @property
    def backend(self) -> str:
        return f"be_shard{self.shard}" if self.component == "matching-engine" else "be_wallet"

    def token(self) -> str:
        return (Path(self.root) / "etc" / "admin_token").read_text().strip()


@dataclass
class Fleet:
    root: str
    net: int
    shards: int
    wallets: int
    inventory_dir: str
    python: str
    nodes: list[NodeSpec]

    @property
    def haproxy_address(self) -> str:
        return f"127.{self.net}.0.1"

    @property
    def frontend_url(self) -> str:
        return f"http://{self.haproxy_address}:{FRONTEND_PORT}"

    @property
    def haproxy_dir(self) -> Path:
        return Path(self.root) / "haproxy"

    @property
    def haproxy_socket(self) -> str:
        return socket_path(self.haproxy_dir / "admin.sock")

    def node(self, name: str) -> NodeSpec:
        for n in self.nodes:
            if n.name == name:
                return n
        names = ", ".join(n.name for n in self.nodes)
        raise TestbedInputError(f"unknown node {name!r}; the testbed has: {names}")

    def markets(self) -> list[str]:
        return [m for n in self.nodes if n.component == "matching-engine" and n.initial_role == "primary"
                for m in n.markets]

    def chains(self) -> list[str]:
        return [c for n in self.nodes if n.component == "wallet-signer" for c in n.chains]

    def save(self) -> None:
        data = asdict(self)
        path = Path(self.root) / "testbed.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, path)


def socket_path(preferred: Path) -> str:
    """``preferred``, or a short stand-in under /tmp when it is longer than a unix socket
    path may be (108 bytes; deep test folders exceed it)."""
    if len(str(preferred)) <= 100:
        return str(preferred)
    digest = hashlib.sha256(str(preferred).encode()).hexdigest()[:16]
    return f"/tmp/exchpatch-{digest}.sock"


def testbed_root(root: str | Path | None = None) -> Path:
    return Path(root or os.environ.get("EXCHPATCH_TESTBED_DIR") or DEFAULT_ROOT).resolve()


def load(root: str | Path | None = None) -> Fleet:
    path = testbed_root(root) / "testbed.json"
    if not path.exists():
        raise TestbedError(f"no testbed at {path.parent}; start one with: exchpatch testbed up")
    raw = json.loads(path.read_text())
    raw["nodes"] = [NodeSpec(**n) for n in raw["nodes"]]
    return Fleet(**raw)


# --------------------------------------------------------------------------- plan


def plan_fleet(root: Path, shards: int, wallets: int, net: int, inventory_dir: Path) -> Fleet:
    if not 1 <= shards <= MAX_SHARDS:
        raise TestbedInputError(f"--shards {shards}: use 1 to {MAX_SHARDS}")
    if not 1 <= wallets <= MAX_WALLETS:
        raise TestbedInputError(f"--wallets {wallets}: use 1 to {MAX_WALLETS}")
    if not 2 <= net <= 254:
        raise TestbedInputError(f"network 127.{net}.0.0/16 is not usable; pick a second octet from 2 to 254")
    nodes: list[NodeSpec] = []
    market_names = MARKET_POOL + [f"MKT{i}-USD" for i in range(len(MARKET_POOL), 2 * shards)]
    host = 0
    for s in range(shards):
        markets = market_names[2 * s:2 * s + 2]
        pair = [f"match-{s}a", f"match-{s}b"]
        for i, name in enumerate(pair):
            host += 1
            nodes.append(NodeSpec(
                name=name, component="matching-engine",
                address=f"127.{net}.{1 + host // 250}.{host % 250}",
                root=str(root / "nodes" / name), shard=s, markets=markets,
                peer=pair[1 - i], initial_role="primary" if i == 0 else "standby",
            ))
    chain_names = CHAIN_POOL + [f"CH{i}" for i in range(len(CHAIN_POOL), 2 * wallets)]
    for w in range(wallets):
        nodes.append(NodeSpec(
            name=f"wallet-{w + 1}", component="wallet-signer",
            address=f"127.{net}.{100 + (w + 1) // 250}.{(w + 1) % 250}",
            root=str(root / "nodes" / f"wallet-{w + 1}"), chains=chain_names[2 * w:2 * w + 2],
        ))
    return Fleet(str(root), net, shards, wallets, str(inventory_dir), sys.executable, nodes)


# --------------------------------------------------------------------------- helpers


def _write_secret(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    os.chmod(path, 0o600)


def _port_in_use(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError:
            return True
    return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return True
        time.sleep(0.05)
    return not _pid_alive(pid)


def http_json(method: str, url: str, token: str | None = None, body: Any = None,
              timeout: float = 2.0) -> tuple[int, Any]:
    """A small JSON client; raises OSError when the node cannot be reached."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw, status = resp.read(), resp.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None)
    if not found:
        raise TestbedError("haproxy is not installed; run `make setup` (it installs it with apt-get)")
    return found


def supervisor_binary(name: str) -> str:
    path = Path(sys.executable).parent / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        raise TestbedError(f"{name} is not installed; run `make setup` (it installs supervisor into .venv)")
    return found


def supervisorctl(node: NodeSpec, *args: str, timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([supervisor_binary("supervisorctl"), "-c", str(node.supervisor_conf), *args],
                          capture_output=True, text=True, timeout=timeout, check=False)


def haproxy_command(fleet: Fleet, command: str) -> str:
    """Send one command to HAProxy's runtime API socket and return its answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2.0)
        s.connect(fleet.haproxy_socket)
        s.sendall(command.encode() + b"\n")
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks).decode()


def haproxy_servers(fleet: Fleet) -> dict[str, dict[str, str]]:
    """{backend/server: {status, ...}} from ``show stat``."""
    out = haproxy_command(fleet, "show stat")
    lines = [ln for ln in out.splitlines() if ln.strip()]
    if not lines or not lines[0].startswith("# "):
        return {}
    header = lines[0][2:].split(",")
    result = {}
    for ln in lines[1:]:
        row = dict(zip(header, ln.split(",")))
        if row.get("svname") in ("FRONTEND", "BACKEND"):
            continue
        result[f"{row['pxname']}/{row['svname']}"] = row
    return result


# --------------------------------------------------------------------------- config writers


def _node_config(fleet: Fleet, node: NodeSpec) -> dict[str, Any]:
    root = Path(node.root)
    cfg: dict[str, Any] = {
        "name": node.name,
        "component": node.component,
        "address": node.address,
        "port": node.port,
        "token_file": str(root / "etc" / "admin_token"),
        "data_dir": str(root / "data"),
        "fsync": True,
    }
    if node.component == "matching-engine":
        peer = fleet.node(node.peer or "")
        cfg.update({
            "replication_token_file": str(root / "etc" / "replication_token"),
            "shard": node.shard,
            "markets": node.markets,
            "peer": {"name": peer.name, "url": peer.url},
            "initial_role": node.initial_role,
        })
    else:
        cfg.update({
            "chains": node.chains,
            "chain_dir": str(Path(fleet.root) / "chains"),
            "initial_deposits": {c: 10_000_000 for c in node.chains},
            "signing_ms": 10,
        })
    return cfg


def _supervisord_conf(fleet: Fleet, node: NodeSpec) -> str:
    root = Path(node.root)
    sock = socket_path(root / "run" / "supervisor.sock")
    return f"""; supervisord for testbed node {node.name} (written by exchpatch testbed up)
[unix_http_server]
file={sock}
chmod=0700

[supervisord]
identifier={node.name}
logfile={root}/log/supervisord.log
logfile_maxbytes=5MB
logfile_backups=2
pidfile={root}/run/supervisord.pid
childlogdir={root}/log
directory={root}

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{sock}

[program:{node.program}]
command={fleet.python} -I {root}/current/bin/exchnode --config {root}/etc/node.json
directory={root}
autostart=true
autorestart=true
startsecs=2
startretries=3
stopsignal=TERM
stopwaitsecs=15
stopasgroup=true
killasgroup=true
redirect_stderr=true
stdout_logfile={root}/log/node.log
stdout_logfile_maxbytes=5MB
stdout_logfile_backups=2
"""


def _haproxy_cfg(fleet: Fleet) -> str:
    hdir = fleet.haproxy_dir
    addr = fleet.haproxy_address
    lines = [
        "# HAProxy for the testbed (written by exchpatch testbed up)",
        "global",
        "    daemon",
        f"    pidfile {hdir}/haproxy.pid",
        f"    stats socket {fleet.haproxy_socket} mode 600 level admin",
        "    stats timeout 10s",
        "",
        "defaults",
        "    mode http",
        "    timeout connect 1s",
        "    timeout client 30s",
        "    timeout server 5s",
        "    timeout http-keep-alive 30s",
        "    option http-keep-alive",
        "    option redispatch",
        "",
        "frontend fe_exchange",
        f"    bind {addr}:{FRONTEND_PORT}",
    ]
    for node in fleet.nodes:
        if node.component == "matching-engine" and node.initial_role == "primary":
            for m in node.markets:
                lines.append(f"    use_backend be_shard{node.shard} if {{ path_beg /markets/{m}/ }}")
    lines += [
        "    use_backend be_wallet if { path_beg /chains/ }",
        "    http-request return status 404 content-type application/json "
        "string '{\"error\":\"unknown route; use /markets/<market>/... or /chains/<chain>/...\"}' "
        "if !{ path_beg /markets/ } !{ path_beg /chains/ }",
        "    default_backend be_unknown_market",
        "",
        "backend be_unknown_market",
        "    http-request return status 404 content-type application/json string '{\"error\":\"unknown market\"}'",
        "",
    ]
    for s in range(fleet.shards):
        lines += [
            f"backend be_shard{s}",
            "    # traffic goes only to the shard's primary: its readiness answers 200 only there",
            "    option httpchk GET /v1/ready?role=primary",
            "    http-check expect status 200",
            "    default-server inter 250ms fastinter 100ms downinter 250ms fall 2 rise 1"
            " on-marked-down shutdown-sessions",
        ]
        for node in fleet.nodes:
            if node.component == "matching-engine" and node.shard == s:
                lines.append(f"    server {node.name} {node.address}:{node.port} check")
        lines.append("")
    lines += [
        "backend be_wallet",
        "    # each chain is signed by one wallet node; while it is down the chain answers 503 (clients retry)",
        "    option httpchk GET /v1/ready",
        "    http-check expect status 200",
        "    default-server inter 250ms fastinter 100ms downinter 250ms fall 2 rise 1",
    ]
    for node in fleet.nodes:
        if node.component == "wallet-signer":
            for c in node.chains:
                lines.append(
                    f"    http-request return status 503 content-type application/json "
                    f"string '{{\"error\":\"chain {c} unavailable\"}}' "
                    f"if {{ path_beg /chains/{c}/ }} !{{ srv_is_up(be_wallet/{node.name}) }}"
                )
                lines.append(f"    use-server {node.name} if {{ path_beg /chains/{c}/ }}")
    for node in fleet.nodes:
        if node.component == "wallet-signer":
            lines.append(f"    server {node.name} {node.address}:{node.port} check")
    lines += [
        "",
        "frontend fe_stats",
        f"    bind {addr}:{STATS_PORT}",
        "    stats enable",
        "    stats uri /stats",
        "    stats refresh 2s",
        "",
    ]
    return "\n".join(lines)


def write_inventory(fleet: Fleet, pubkey_pem: str, freeze_windows: str | Path | None = None) -> None:
    """Write an inventory ``ansible-playbook`` can use as it is; tokens go to a 0600 file."""
    inv = Path(fleet.inventory_dir)
    (inv / "group_vars" / "all").mkdir(parents=True, exist_ok=True)
    groups: dict[str, dict[str, Any]] = {"matching_nodes": {"hosts": {}}, "wallet_nodes": {"hosts": {}},
                                         "loadbalancers": {"hosts": {}}}
    for node in fleet.nodes:
        hv: dict[str, Any] = {
            "ansible_host": node.address,
            "exchange_component": node.component,
            "exchange_admin_url": node.url,
            "exchange_node_root": node.root,
            "exchange_service_manager": "supervisor",
            "exchange_service_name": node.program,
            "exchange_supervisor_config": str(node.supervisor_conf),
            "exchange_haproxy_backend": node.backend,
        }
        if node.component == "matching-engine":
            hv["exchange_shard"] = node.shard
            hv["exchange_markets"] = node.markets
            groups["matching_nodes"]["hosts"][node.name] = hv
        else:
            hv["exchange_chains"] = node.chains
            groups["wallet_nodes"]["hosts"][node.name] = hv
    groups["loadbalancers"]["hosts"]["haproxy"] = {
        "ansible_host": fleet.haproxy_address,
        "exchange_haproxy_socket": fleet.haproxy_socket,
        "exchange_frontend_url": fleet.frontend_url,
    }
    hosts = {"all": {"children": groups}}
    header = "---\n# Written by `exchpatch testbed up`; regenerated on every up. Do not edit.\n"
    (inv / "hosts.yml").write_text(header + yaml.safe_dump(hosts, sort_keys=False))
    testbed_vars = {
        "ansible_connection": "local",
        "ansible_python_interpreter": fleet.python,
        "exchange_testbed_dir": fleet.root,
        "exchange_supervisorctl": supervisor_binary("supervisorctl"),
        "exchange_release_pubkey": pubkey_pem,
        "exchange_frontend_url": fleet.frontend_url,
    }
    # the market calendar is an inventory variable (the preflight has no default outside the testbed)
    calendar = Path(freeze_windows) if freeze_windows is not None else Path(__file__).parent / "freeze-windows.yml"
    testbed_vars["exchange_market_calendar"] = str(calendar.resolve())
    (inv / "group_vars" / "all" / "testbed.yml").write_text(header + yaml.safe_dump(testbed_vars, sort_keys=False))
    tokens = {n.name: n.token() for n in fleet.nodes}
    secret_vars = {
        "exchange_admin_tokens": tokens,
        "exchange_admin_token": "{{ exchange_admin_tokens[inventory_hostname] | default(omit) }}",
    }
    _write_secret(
        inv / "group_vars" / "all" / "secrets.yml",
        "---\n# Admin API bearer tokens of the testbed nodes. Mode 0600; never print or commit.\n"
        + yaml.safe_dump(secret_vars, sort_keys=False).rstrip(),
    )


# --------------------------------------------------------------------------- up / down


def _is_running(fleet: Fleet) -> bool:
    for node in fleet.nodes:
        pid = _read_pid(Path(node.root) / "run" / "supervisord.pid")
        if pid and _pid_alive(pid):
            return True
    pid = _read_pid(fleet.haproxy_dir / "haproxy.pid")
    return bool(pid and _pid_alive(pid))


def up(root: str | Path | None = None, shards: int = 2, wallets: int = 2, net: int | None = None,
       inventory_dir: str | Path | None = None, timeout: float = 60.0,
       freeze_windows: str | Path | None = None) -> Fleet:
    """Create (or reuse) the testbed folder, start every node and HAProxy, wait until ready.

    ``freeze_windows`` puts another market calendar in the inventory (``exchange_market_calendar``):
    tests and benches use an empty one, so they do not depend on the time of day.
    """
    root = testbed_root(root)
    if (root / "testbed.json").exists():
        existing = load(root)
        if _is_running(existing):
            if (existing.shards, existing.wallets) != (shards, wallets):
                raise TestbedError(
                    f"a testbed with {existing.shards} shards and {existing.wallets} wallets is already up at "
                    f"{root}; run `exchpatch testbed down` first to change its size")
            wait_ready(existing, timeout)
            return existing
    if net is None:
        net = int(os.environ.get("EXCHPATCH_TESTBED_NET", DEFAULT_NET))
    if inventory_dir is None:
        env_inv = os.environ.get("EXCHPATCH_TESTBED_INVENTORY")
        inventory_dir = Path(env_inv) if env_inv else (
            DEFAULT_INVENTORY if root == DEFAULT_ROOT.resolve() else root / "inventory")
    fleet = plan_fleet(root, shards, wallets, net, Path(inventory_dir).resolve())
    haproxy = haproxy_binary()
    supervisord = supervisor_binary("supervisord")
    busy = [f"{n.address}:{n.port}" for n in fleet.nodes if _port_in_use(n.address, n.port)]
    busy += [f"{fleet.haproxy_address}:{p}" for p in (FRONTEND_PORT, STATS_PORT)
             if _port_in_use(fleet.haproxy_address, p)]
    if busy:
        raise TestbedError(
            f"addresses already in use: {', '.join(busy[:5])}; another testbed runs on 127.{net}.0.0/16 — "
            f"stop it, or pick another network with EXCHPATCH_TESTBED_NET")

    root.mkdir(parents=True, exist_ok=True)
    pub = ensure_signing_key(root / "keys")[1]
    artifacts = {}
    for component, version in BASELINE.items():
        artifact = root / "releases" / f"{component}-{version}.tar.gz"
        if not artifact.exists():
            build_release(root / "releases", root / "keys", root / "catalog" / "baseline", component, version)
        artifacts[component] = artifact
    (root / "chains").mkdir(exist_ok=True)
    fleet.save()

    replication_tokens = {s: secrets.token_urlsafe(24) for s in range(shards)}
    for node in fleet.nodes:
        nroot = Path(node.root)
        for d in ("releases", "data", "etc", "log", "run"):
            (nroot / d).mkdir(parents=True, exist_ok=True)
        if not (nroot / "etc" / "admin_token").exists():
            _write_secret(nroot / "etc" / "admin_token", secrets.token_urlsafe(24))
        if node.component == "matching-engine" and not (nroot / "etc" / "replication_token").exists():
            _write_secret(nroot / "etc" / "replication_token", replication_tokens[node.shard or 0])
        if not (nroot / "current").is_symlink():
            version = BASELINE[node.component]
            dest = nroot / "releases" / version
            dest.mkdir(parents=True, exist_ok=True)
            with tarfile.open(artifacts[node.component]) as tar:
                tar.extractall(dest, filter="data")
            (nroot / "current").symlink_to(Path("releases") / version)
        (nroot / "etc" / "node.json").write_text(json.dumps(_node_config(fleet, node), indent=2) + "\n")
        node.supervisor_conf.write_text(_supervisord_conf(fleet, node))
    # A shard's two nodes must share one replication token, even when one root was kept from before.
    for node in fleet.nodes:
        if node.component == "matching-engine" and node.initial_role == "standby":
            peer = fleet.node(node.peer or "")
            shared = (Path(peer.root) / "etc" / "replication_token").read_text().strip()
            _write_secret(Path(node.root) / "etc" / "replication_token", shared)

    hdir = fleet.haproxy_dir
    hdir.mkdir(exist_ok=True)
    cfg = hdir / "haproxy.cfg"
    cfg.write_text(_haproxy_cfg(fleet))
    check = subprocess.run([haproxy, "-c", "-q", "-f", str(cfg)], capture_output=True, text=True, check=False)
    if check.returncode != 0:
        raise TestbedError(f"{cfg}: HAProxy rejects the generated config: {check.stderr.strip()}")

    try:
        for node in fleet.nodes:
            res = subprocess.run([supervisord, "-c", str(node.supervisor_conf)], capture_output=True, text=True,
                                 check=False, timeout=30)
            if res.returncode != 0:
                raise TestbedError(f"supervisord for {node.name} did not start: {res.stderr.strip() or res.stdout}")
        res = subprocess.run([haproxy, "-f", str(cfg)], capture_output=True, text=True, check=False, timeout=30)
        if res.returncode != 0:
            raise TestbedError(f"haproxy did not start: {res.stderr.strip()}")
        write_inventory(fleet, pub.read_text(), freeze_windows)
        wait_ready(fleet, timeout)
    except BaseException:
        down(root)
        raise
    return fleet


def wait_ready(fleet: Fleet, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        last = status(fleet)
        if all(n["ready"] for n in last["nodes"]) and last["haproxy"]["ready"]:
            return
        time.sleep(0.2)
    waiting = [n["name"] for n in last.get("nodes", []) if not n["ready"]]
    raise TestbedError(
        f"testbed not ready after {timeout:.0f}s (not ready: {', '.join(waiting) or 'haproxy'}); "
        f"see the node logs under {fleet.root}/nodes/<name>/log/")


def _node_pid(node: NodeSpec) -> int | None:
    res = supervisorctl(node, "pid", node.program, timeout=5)
    try:
        pid = int(res.stdout.strip())
    except ValueError:
        return None
    return pid or None


def empty_calendar(folder: str | Path) -> Path:
    """Write a market calendar without freeze windows into ``folder`` (for ``up(freeze_windows=...)``)."""
    path = Path(folder) / "no-freeze-windows.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("---\nwindows: []\n")
    return path


@contextlib.contextmanager
def running(root: str | Path, shards: int = 2, wallets: int = 2, net: int | None = None) -> Iterator[Fleet]:
    """A fleet for the length of a ``with`` block (tests, benches): stopped by its own root, folder removed.

    Its market calendar is empty (no freeze window), so a test's rollout never depends on the time of day;
    a test of the calendar passes its own schedule.
    """
    try:
        yield up(root, shards=shards, wallets=wallets, net=net, freeze_windows=empty_calendar(root))
    finally:
        down(root)
        shutil.rmtree(root, ignore_errors=True)


def down(root: str | Path | None = None, timeout: float = 20.0) -> dict[str, Any]:
    """Stop every supervisord (and with it every node) and HAProxy; report what is left."""
    fleet = load(root)
    node_pids: list[int] = []
    sup_pids: list[int] = []
    for node in fleet.nodes:
        pid = _read_pid(Path(node.root) / "run" / "supervisord.pid")
        if pid and _pid_alive(pid):
            npid = _node_pid(node)
            if npid:
                node_pids.append(npid)
            sup_pids.append(pid)
            os.kill(pid, signal.SIGTERM)
    hpid = _read_pid(fleet.haproxy_dir / "haproxy.pid")
    if hpid and _pid_alive(hpid):
        os.kill(hpid, signal.SIGTERM)
        sup_pids.append(hpid)
    for pid in sup_pids:
        if not _wait_gone(pid, timeout):
            os.killpg(pid, signal.SIGKILL)
            _wait_gone(pid, 5)
    for pid in node_pids:  # supervisord stops its program; make sure, by the program's own group
        if _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            _wait_gone(pid, 5)
    left_pids = [p for p in sup_pids + node_pids if _pid_alive(p)]
    if not left_pids:  # short stand-in sockets live outside the testbed folder: remove them too
        socks = [socket_path(Path(n.root) / "run" / "supervisor.sock") for n in fleet.nodes] + [fleet.haproxy_socket]
        for sock in socks:
            if sock.startswith("/tmp/exchpatch-"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(sock)
    return {"stopped": len(sup_pids), "processes_left": left_pids, "ports_left": listening_ports(fleet.net)}


def listening_ports(net: int) -> list[str]:
    """Listening TCP sockets on 127.<net>.0.0/16, read from /proc/net/tcp."""
    found = []
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return []
    for ln in lines:
        parts = ln.split()
        if len(parts) < 4 or parts[3] != "0A":  # 0A = LISTEN
            continue
        hexaddr, hexport = parts[1].split(":")
        octets = [int(hexaddr[i:i + 2], 16) for i in (6, 4, 2, 0)]
        if octets[0] == 127 and octets[1] == net:
            found.append(f"{'.'.join(map(str, octets))}:{int(hexport, 16)}")
    return sorted(found)


# --------------------------------------------------------------------------- status and chaos


def node_status(node: NodeSpec) -> dict[str, Any]:
    try:
        code, body = http_json("GET", node.url + "/v1/status", token=node.token(), timeout=2)
    except OSError as e:
        return {"error": f"unreachable: {e}"}
    if code != 200 or not isinstance(body, dict):
        return {"error": f"/v1/status answered {code}"}
    return body


def status(fleet: Fleet) -> dict[str, Any]:
    nodes = []
    for node in fleet.nodes:
        st = node_status(node)
        rec: dict[str, Any] = {
            "name": node.name,
            "component": node.component,
            "version": st.get("version"),
            "role": st.get("ha_role"),
        }
        if node.component == "matching-engine":
            rec["shard"] = node.shard
        else:
            rec["chains"] = node.chains
        rec["address"] = node.address
        rec["ready"] = bool(st.get("ready"))
        if "error" in st:
            rec["error"] = st["error"]
        nodes.append(rec)
    try:
        servers = haproxy_servers(fleet)
        backends: dict[str, bool] = {}
        for key, row in servers.items():
            backend = key.split("/")[0]
            backends[backend] = backends.get(backend, False) or row.get("status") == "UP"
        wallet_up = all(servers.get(f"be_wallet/{n.name}", {}).get("status") == "UP"
                        for n in fleet.nodes if n.component == "wallet-signer")
        ha = {"ready": bool(backends) and all(backends.values()) and wallet_up, "backends": backends,
              "frontend": fleet.frontend_url}
    except OSError as e:
        ha = {"ready": False, "error": f"runtime API unreachable: {e}", "frontend": fleet.frontend_url}
    return {"nodes": nodes, "haproxy": ha}


def kill(fleet: Fleet, name: str) -> dict[str, Any]:
    """SIGKILL the node's service process (supervisord will restart it, as systemd would)."""
    node = fleet.node(name)
    pid = _node_pid(node)
    if not pid:
        raise TestbedError(f"{name}: its service is not running (supervisorctl status shows no pid)")
    os.killpg(pid, signal.SIGKILL)
    return {"node": name, "killed_pid": pid}


def promote(fleet: Fleet, name: str) -> dict[str, Any]:
    """Promote a standby through its admin API (the chaos helper forces it: the old primary
    may still be restarting, and is fenced by the higher term)."""
    node = fleet.node(name)
    if node.component != "matching-engine":
        raise TestbedInputError(f"{name} is a {node.component} node; only matching-engine standbys can be promoted")
    try:
        code, body = http_json("POST", node.url + "/v1/ha/promote", token=node.token(), body={"force": True},
                               timeout=10)
    except OSError as e:
        raise TestbedError(f"{name}: admin API unreachable ({e}); see `exchpatch testbed status`") from e
    if code != 200:
        raise TestbedError(f"{name}: promote refused ({code}): {body.get('error') if isinstance(body, dict) else body}")
    return {"node": name, **body}
