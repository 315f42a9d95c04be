"""Start single testbed nodes as real processes, straight from a staged release.

Used by the node-level tests; the fleet-level tests go through ``testbed.fleet``
(supervisord + HAProxy) instead.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http.client import HTTPException
from pathlib import Path
from typing import Any

from testbed.release import stage_release

# Each user of a loopback /16 gets its own block of second octets (see loopback_net).
NET_BLOCKS: dict[str, range] = {
    "nodes": range(1, 11),
    "fleet": range(11, 21),
    "fleet-cli": range(21, 31),
    "demo": range(31, 41),
    "plan": range(41, 51),
    "approvals": range(51, 61),
    "audit-trail": range(78, 88),
    "switchover": range(88, 98),
    "fencing": range(98, 108),
    "driver": range(108, 118),
    "hostile-release": range(118, 128),
    "gates-at-scale": range(128, 138),
    "rolling-patch": range(138, 148),
    "serve": range(240, 250),
}
# Second octets no block may use, and who holds them.
NETS_KEPT_CLEAR: dict[str, range] = {
    "molecule scenarios (MOLECULE_TESTBED_NET default)": range(61, 62),
    "the bench (bench/rollout.py, default 62/63)": range(62, 64),
    "capture() in tests/unit/plugins/module_utils/test__report.py": range(67, 68),
    "the demo testbed (testbed.fleet.DEFAULT_NET)": range(77, 78),
    "test_gates_at_scale.py and test_rolling_patch.py, by pid until they use loopback_net": range(150, 240),
}
_WORKER = re.compile(r"gw(\d+)")
_HOSTS = itertools.count(1)


def loopback_net(purpose: str) -> int:
    """The second octet of the loopback /16 (127.<octet>.0.0/16) this test process uses for ``purpose``.

    Under pytest-xdist the worker's number (PYTEST_XDIST_WORKER=gw0, gw1, ...) picks the octet,
    so workers gw0 to gw9 never share a network; without xdist the process id does, as before
    (two separate pytest runs can still meet, one time in ten). Blocks never overlap, so two
    users in one process never collide either:

    ===============  =========  =================================================
    purpose          octets     user
    ===============  =========  =================================================
    nodes            1-10       tests/testbed/nodes.py (single nodes, next_address)
    fleet            11-20      tests/testbed/test_fleet.py, the module fleet
    fleet-cli        21-30      tests/testbed/test_fleet.py, exchpatch testbed up/down
    demo             31-40      tests/integration/test_demo.py
    plan             41-50      tests/integration/test_plan.py
    approvals        51-60      tests/integration/test_approvals.py
    audit-trail      78-87      tests/integration/test_audit_trail.py
    switchover       88-97      tests/integration/test_switchover.py
    fencing          98-107     tests/integration/test_fencing.py
    driver           108-117    tests/integration/test_driver.py
    hostile-release  118-127    tests/hostile/test_release_hostile.py
    gates-at-scale   128-137    reserved for tests/integration/test_gates_at_scale.py
    rolling-patch    138-147    reserved for tests/integration/test_rolling_patch.py
    serve            240-249    tests/serve/test_fleet.py (the chatops service on a fleet)
    ===============  =========  =================================================

    Never used: 61 (molecule), 62 and 63 (the bench), 67 (the report fixtures' capture),
    77 (the demo testbed), 150-239 (still picked by pid in test_gates_at_scale.py and
    test_rolling_patch.py). Free for a new user: 64-66, 68-76, 148-149, 250-254.
    """
    try:
        block = NET_BLOCKS[purpose]
    except KeyError:
        raise ValueError(f"no loopback block for {purpose!r}; add one to NET_BLOCKS "
                         f"(taken: {', '.join(NET_BLOCKS)})") from None
    worker = _WORKER.fullmatch(os.environ.get("PYTEST_XDIST_WORKER", ""))
    index = int(worker.group(1)) if worker else os.getpid()
    return block[index % len(block)]


def next_address() -> str:
    """A fresh address for one node, on this process's node network (loopback_net("nodes"))."""
    n = next(_HOSTS)
    return f"127.{loopback_net('nodes')}.{200 + n // 250}.{n % 250 + 1}"


def http(method: str, url: str, body: Any = None, token: str | None = None,
         timeout: float = 5.0) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            status = resp.status
            ctype = resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        raw, status, ctype = e.read(), e.code, e.headers.get("Content-Type", "")
    except HTTPException as e:
        # A node killed or restarted mid-answer cuts the body short (IncompleteRead); to a
        # caller that is the same transport failure as a refused connection.
        raise ConnectionError(f"{method} {url}: {e!r}") from e
    if "json" in ctype:
        return status, json.loads(raw)
    return status, raw.decode()


@dataclass
class NodeProc:
    root: Path
    config: dict[str, Any]
    token: str
    proc: subprocess.Popen | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.root / "log" / "node.log"

    @property
    def url(self) -> str:
        return f"http://{self.config['address']}:{self.config['port']}"

    def start(self) -> NodeProc:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [sys.executable, "-I", str(self.root / "current" / "bin" / "exchnode"),
             "--config", str(self.root / "etc" / "node.json")],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.root,
        )
        out.close()
        return self

    def _signal(self, sig: int) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)

    def stop(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def install(self, version: str, fault: str | None = None,
                fault_params: dict[str, float] | None = None) -> None:
        """Stage a release and switch ``current`` to it (the node must be restarted)."""
        stage_release(self.root / "releases" / version, self.config["component"], version, fault, fault_params)
        tmp = self.root / ".current.tmp"
        if tmp.is_symlink():
            tmp.unlink()
        tmp.symlink_to(Path("releases") / version)
        os.replace(tmp, self.root / "current")

    def admin(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return http(method, self.url + path, body, token=self.token)

    def client(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return http(method, self.url + path, body)

    def wait_up(self, timeout: float = 15.0) -> None:
        """Wait until the node answers /v1/health (not necessarily ready)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"{self.config['name']} exited: {self.log.read_text()[-2000:]}")
            try:
                if http("GET", self.url + "/v1/health", timeout=1)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"{self.config['name']} did not come up: {self.log.read_text()[-2000:]}")

    def wait_ready(self, timeout: float = 15.0, role: str | None = None) -> None:
        deadline = time.monotonic() + timeout
        path = "/v1/ready" + (f"?role={role}" if role else "")
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = http("GET", self.url + path, timeout=1)
                if last[0] == 200:
                    return
            except OSError as e:
                last = e
            time.sleep(0.05)
        raise AssertionError(f"{self.config['name']} not ready: {last}")


def make_node(base: Path, name: str, component: str, version: str = "1.0.0",
              fault: str | None = None, fault_params: dict[str, float] | None = None,
              replication_token: str | None = None, **extra: Any) -> NodeProc:
    """Lay out a node root (releases/, current, data/, etc/, log/) and its config."""
    root = base / name
    for d in ("releases", "data", "etc", "log"):
        (root / d).mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)
    (root / "etc" / "admin_token").write_text(token)
    config: dict[str, Any] = {
        "name": name,
        "component": component,
        "address": extra.pop("address", None) or next_address(),
        "port": 8080,
        "token_file": str(root / "etc" / "admin_token"),
        "data_dir": str(root / "data"),
        "fsync": True,
    }
    if replication_token:
        (root / "etc" / "replication_token").write_text(replication_token)
        config["replication_token_file"] = str(root / "etc" / "replication_token")
    config.update(extra)
    (root / "etc" / "node.json").write_text(json.dumps(config, indent=2))
    node = NodeProc(root, config, token)
    node.install(version, fault, fault_params)
    return node


def wait_for(cond: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    """Poll ``cond()`` until it returns something truthy, and return that.

    An OSError from ``cond`` (ConnectionError included: a node restarting, or cut off
    mid-answer) counts as "not yet". Fails naming ``what`` after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = cond()
        except OSError:
            result = None
        if result:
            return result
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def status(node: NodeProc) -> dict[str, Any]:
    """The node's /v1/status (admin); fails the test on any answer but 200."""
    code, body = node.admin("GET", "/v1/status")
    assert code == 200, body
    return body
