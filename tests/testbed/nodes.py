"""Start single testbed nodes as real processes, straight from a staged release.

Used by the node-level tests; the fleet-level tests go through ``testbed.fleet``
(supervisord + HAProxy) instead.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.client import HTTPException
from pathlib import Path
from typing import Any

from testbed.release import stage_release

# A private loopback /16 per test process so parallel runs and a live demo testbed never collide.
_NET = 100 + os.getpid() % 100
_HOSTS = itertools.count(1)


def next_address() -> str:
    n = next(_HOSTS)
    return f"127.{_NET}.{200 + n // 250}.{n % 250 + 1}"


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
