"""Helpers for the chatops service tests: Slack's request signing, a stand-in for Slack's response_url,
the real service (``exchpatch serve`` under uvicorn) as a subprocess, and its config file.

No fixtures here (tests/serve/conftest.py has them). Nothing in this file imports the service: the
signatures are computed here as Slack documents them
(https://docs.slack.dev/authentication/verifying-requests-from-slack/), so a test never shares the
verifier it checks.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import hmac
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlencode

import httpx
import yaml

REPO = Path(__file__).resolve().parents[2]
EXCHPATCH = REPO / ".venv" / "bin" / "exchpatch"
TEAM_ID = "T0EXCHANGE"
TEAM_DOMAIN = "exchangeops"
API_APP_ID = "A0EXCHPATCH"
# identity -> (roles, Slack user id); bob signs approvals with an SSH key, every identity also has a bearer token
IDENTITIES: dict[str, tuple[list[str], str]] = {
    "alice": (["operator"], "U0ALICE"),
    "bob": (["approver"], "U0BOB"),
    "carol": (["viewer"], "U0CAROL"),
    "dave": (["operator", "approver"], "U0DAVE"),
}
USER_NAMES = {slack: name for name, (_roles, slack) in IDENTITIES.items()}
APPROVAL_NAMESPACE = "exchpatch-approval"
# Environment a service must not inherit from the test runner: the state store and audit settings are its own.
_SCRUBBED_ENV = ("EXCHPATCH_STATE_STORE", "EXCHPATCH_STATE_STORE_DSN", "EXCHPATCH_STATE_STORE_ADMIN_DSN",
                 "EXCHPATCH_AUDIT_FILE", "EXCHPATCH_AUDIT_KEY_FILE", "EXCHPATCH_DATA_DIR", "EXCHPATCH_OPERATOR",
                 "EXCHPATCH_RUN_ID", "EXCHPATCH_SLACK_SIGNING_SECRET")


def free_port() -> int:
    """A TCP port nothing listens on at 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- Slack's side


def slack_headers(body: bytes, secret: str, ts: int | None = None) -> dict[str, str]:
    """The headers Slack sends with ``body``: ``X-Slack-Signature: v0=hmac_sha256(secret, "v0:{ts}:{body}")``."""
    stamp = str(int(time.time()) if ts is None else ts)
    base = b"v0:" + stamp.encode() + b":" + body
    digest = hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": f"v0={digest}"}


def command_body(text: str, *, user_id: str = "U0ALICE", response_url: str, team_id: str = TEAM_ID,
                 command: str = "/patch", channel_id: str = "C0PATCHING") -> bytes:
    """A slash command as Slack posts it (application/x-www-form-urlencoded)."""
    fields = {
        "token": "verification-token-deprecated",
        "team_id": team_id,
        "team_domain": TEAM_DOMAIN,
        "channel_id": channel_id,
        "channel_name": "patching",
        "user_id": user_id,
        "user_name": USER_NAMES.get(user_id, user_id.lower()),
        "command": command,
        "text": text,
        "api_app_id": API_APP_ID,
        "response_url": response_url,
        "trigger_id": f"{secrets.randbelow(10**10)}.{secrets.randbelow(10**10)}.{secrets.token_hex(16)}",
    }
    return urlencode(fields).encode()


def interaction_body(action: str, run_id: str, *, user_id: str = "U0BOB", response_url: str,
                     team_id: str = TEAM_ID) -> bytes:
    """A button click (block_actions) as Slack posts it: the form field ``payload`` holding JSON."""
    payload = {
        "type": "block_actions",
        "user": {"id": user_id, "username": USER_NAMES.get(user_id, user_id.lower()), "team_id": team_id},
        "api_app_id": API_APP_ID,
        "team": {"id": team_id, "domain": TEAM_DOMAIN},
        "container": {"type": "message", "message_ts": f"{int(time.time())}.000100", "channel_id": "C0PATCHING",
                      "is_ephemeral": False},
        "trigger_id": f"{secrets.randbelow(10**10)}.{secrets.token_hex(16)}",
        "channel": {"id": "C0PATCHING", "name": "patching"},
        "response_url": response_url,
        "actions": [{"action_id": action, "block_id": f"approval-{run_id}", "value": run_id, "type": "button",
                     "action_ts": f"{time.time():.6f}"}],
    }
    return urlencode({"payload": json.dumps(payload)}).encode()


class Post(NamedTuple):
    path: str
    json: Any  # the decoded JSON body, None when the body was not JSON


class Receiver:
    """Stands in for Slack's response_url: a real HTTP server on 127.0.0.1 that records every request
    (``.requests``: method, path, headers, raw body) and every POST (``.posts``: path, JSON) and answers 200 "ok"."""

    def __init__(self) -> None:
        self.posts: list[Post] = []
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                with receiver._cond:
                    receiver.requests.append((self.command, self.path, dict(self.headers.items()), raw))
                    if self.command == "POST":
                        try:
                            doc = json.loads(raw.decode())
                        except (UnicodeDecodeError, ValueError):
                            doc = None
                        receiver.posts.append(Post(self.path, doc))
                    receiver._cond.notify_all()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            do_POST = do_GET = do_PUT = do_DELETE = _record

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"receiver-{self.port}", daemon=True)
        self._thread.start()

    @property
    def base(self) -> str:
        """The URL prefix to allow in the service's slack.response_url_prefixes."""
        return f"http://127.0.0.1:{self.port}/"

    def url(self, path: str = "/hook/1") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def posts_to(self, path: str) -> list[Post]:
        with self._cond:
            return [p for p in self.posts if p.path == path]

    def wait_for(self, predicate: Callable[[Post], bool], timeout: float = 30) -> Post:
        """The first recorded POST for which ``predicate(post)`` is true, waiting up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for post in self.posts:
                    if predicate(post):
                        return post
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = "\n".join(f"  {p.path}: {json.dumps(p.json)[:300]}" for p in self.posts[-10:])
                    raise AssertionError(f"no matching POST to {self.base} within {timeout} s; last posts:\n{seen}")
                self._cond.wait(left)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- the config file


class Keys(NamedTuple):
    private: Path  # bob's chat approval key (OpenSSH, no passphrase, 0600)
    public: str  # its public key line
    allowed_signers: Path  # one line: bob namespaces="exchpatch-approval" <pubkey>


def make_keys(folder: str | Path) -> Keys:
    """bob's approval key and an allowed_signers file naming it, under ``<folder>/keys``."""
    keydir = Path(folder) / "keys"
    keydir.mkdir(parents=True, exist_ok=True, mode=0o700)
    private = keydir / "bob"
    if not private.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bob", "-f", str(private)],
                       check=True, capture_output=True, timeout=30)
    private.chmod(0o600)
    public = (keydir / "bob.pub").read_text().strip()
    signers = keydir / "allowed_signers"
    signers.write_text(f'bob namespaces="{APPROVAL_NAMESPACE}" {public}\n')
    return Keys(private, public, signers)


def write_inventory(folder: str | Path) -> Path:
    """A tiny inventory shaped like the testbed's (one matching pair on shard 0, one wallet on BTC and ETH) whose
    admin URLs answer nothing (port 9 on loopback): a run that gets as far as a node fails, quickly."""
    folder = Path(folder)
    inv = folder / "inventory"
    inv.mkdir(parents=True, exist_ok=True)
    common = {"ansible_connection": "local", "exchange_service_manager": "supervisor",
              "exchange_admin_token": "tiny-inventory-admin-token"}
    matching = {
        name: {**common, "ansible_host": "127.0.0.1", "exchange_component": "matching-engine",
               "exchange_admin_url": "http://127.0.0.1:9", "exchange_node_root": str(folder / "nodes" / name),
               "exchange_shard": 0, "exchange_markets": ["BTC-USD", "ETH-USD"]}
        for name in ("match-0a", "match-0b")
    }
    wallets = {"wallet-1": {**common, "ansible_host": "127.0.0.1", "exchange_component": "wallet-signer",
                            "exchange_admin_url": "http://127.0.0.1:9",
                            "exchange_node_root": str(folder / "nodes" / "wallet-1"),
                            "exchange_chains": ["BTC", "ETH"]}}
    hosts = {"all": {"children": {"matching_nodes": {"hosts": matching}, "wallet_nodes": {"hosts": wallets},
                                  "loadbalancers": {"hosts": {}}}}}
    (inv / "hosts.yml").write_text("---\n" + yaml.safe_dump(hosts, sort_keys=False))
    return inv


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``extra`` merged into ``base`` (mappings recursively); a None value deletes the key."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def write_config(folder: str | Path, *, fleet: Any = None, receiver: Receiver | None = None,
                 keys: Keys | None = None, **overrides: Any) -> tuple[Path, dict[str, str], str]:
    """Write ``<folder>/serve.yml`` (and its secret files) and return (config path, {identity: bearer token},
    signing secret).

    Identities: alice (operator, U0ALICE), bob (approver, U0BOB, approval key in allowed_signers as "bob"),
    carol (viewer, U0CAROL), dave (operator and approver, U0DAVE); each has a bearer token. The store is SQLite
    in ``folder``. The driver uses ``fleet`` (a testbed Fleet: its inventory, ``<root>/catalog`` and
    ``<root>/locks``) or, without one, :func:`write_inventory`'s tiny inventory, the checkout's ``patches/``
    catalog and ``<folder>/locks``. ``overrides`` are merged into the YAML (``limits={"requests_per_minute": 3}``;
    None deletes a key: ``slack={"signing_secret_file": None, "signing_secret": "x"}``).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    keys = keys or make_keys(folder)
    secret = secrets.token_hex(16)
    secret_file = folder / "slack-signing-secret"
    secret_file.touch(mode=0o600)
    secret_file.chmod(0o600)
    secret_file.write_text(secret + "\n")
    tokens = {name: "xp-" + secrets.token_urlsafe(32) for name in IDENTITIES}
    identities: dict[str, Any] = {}
    for name, (roles, slack_user) in IDENTITIES.items():
        spec: dict[str, Any] = {"roles": roles, "slack_users": [slack_user],
                                "token_sha256": [hashlib.sha256(tokens[name].encode()).hexdigest()]}
        if name == "bob":
            spec["approval_key"] = str(keys.private)
        identities[name] = spec
    if fleet is not None:
        root = Path(fleet.root)
        inventory, catalog, lock_dir = Path(fleet.inventory_dir), root / "catalog", root / "locks"
    else:
        inventory, catalog, lock_dir = write_inventory(folder), REPO / "patches", folder / "locks"
    catalog.mkdir(parents=True, exist_ok=True)
    lock_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    doc: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 8450},
        "identities": identities,
        "slack": {
            "signing_secret_file": str(secret_file),
            "team_id": TEAM_ID,
            "response_url_prefixes": [receiver.base if receiver else "https://hooks.slack.com/"],
            "progress_interval": 1,
        },
        "limits": {"max_body_bytes": 65536, "requests_per_minute": 600},
        "store": {"backend": "sqlite", "path": str(folder / "serve.sqlite")},
        "driver": {
            "inventory": str(inventory),
            "catalog": str(catalog),
            "allowed_signers": str(keys.allowed_signers),
            "lock_dir": str(lock_dir),
            "feeds": [str(p) for p in sorted((REPO / "feeds").iterdir()) if p.is_file()],
            "approval_valid_for": "2h",
            "cancel_grace": 30,
        },
    }
    doc = _merge(doc, overrides)
    path = folder / "serve.yml"
    path.write_text("---\n" + yaml.safe_dump(doc, sort_keys=False))
    return path, tokens, secret


# --------------------------------------------------------------------------- the service


class Service:
    """``exchpatch serve --config FILE`` as a subprocess in its own process group, on a free loopback port.

    Its driver state is its own: ``EXCHPATCH_DATA_DIR=<folder>/data`` and ``EXCHPATCH_AUDIT_FILE=<folder>/audit.jsonl``
    (``env`` adds or overrides variables). stdout and stderr go to ``<folder>/service.log``; :meth:`log_tail` is
    meant for assertion messages.
    """

    def __init__(self, config: str | Path, *, secret: str, tokens: Mapping[str, str],
                 receiver: Receiver | None = None, folder: str | Path | None = None,
                 env: Mapping[str, str] | None = None, port: int | None = None, start: bool = True,
                 timeout: float = 30) -> None:
        self.config = Path(config)
        self.secret = secret
        self.tokens = dict(tokens)
        self.receiver = receiver
        self.folder = Path(folder) if folder else self.config.parent
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = self.folder / "data"
        self.audit_file = self.folder / "audit.jsonl"
        self.log_path = self.folder / "service.log"
        self.timeout = timeout
        self.env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
        self.env.update({"EXCHPATCH_DATA_DIR": str(self.data_dir), "EXCHPATCH_AUDIT_FILE": str(self.audit_file),
                         "PYTHONUNBUFFERED": "1"})
        self.env.update(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = httpx.Client(base_url=self.url, timeout=30, trust_env=False)
        self._hooks = 0
        if start:
            self.start()

    # --- life cycle

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "the service is already running"
        with open(self.log_path, "ab") as log:
            log.write(f"=== {time.strftime('%H:%M:%S')} exchpatch serve --port {self.port}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [str(EXCHPATCH), "serve", "--config", str(self.config), "--port", str(self.port)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=str(self.folder),
                env=self.env, start_new_session=True)
        deadline = time.monotonic() + self.timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"exchpatch serve exited with {self.proc.returncode} before answering "
                                     f"/healthz{self.log_tail()}")
            try:
                if self.client.get("/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"exchpatch serve did not answer /healthz within {self.timeout} s"
                                     f"{self.log_tail()}")
            time.sleep(0.1)

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM to the service's process group, then SIGKILL after ``timeout`` s; its exit status."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        else:
            # the service is gone (kill()); whatever is left of its group goes too
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL to the service process only (a crash): a run's ansible child, in its own session, lives on."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def restart(self) -> None:
        """Stop (if running) and start again on the same port with the same config and state."""
        if self.proc is not None and self.proc.poll() is None:
            self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        self.client.close()

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def settings(self) -> dict[str, Any]:
        """The config file as written (driver.lock_dir, store.path, ...)."""
        return yaml.safe_load(self.config.read_text())

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        tail = "\n".join(self.log().splitlines()[-lines:])
        return f"\n--- {self.log_path} (last {lines} lines) ---\n{tail}"

    # --- requests

    def next_hook(self) -> str:
        """A response_url of its own on the receiver (or on hooks.slack.com without one)."""
        self._hooks += 1
        path = f"/hook/{os.getpid()}-{self._hooks}"
        return self.receiver.url(path) if self.receiver else f"https://hooks.slack.com/commands/{TEAM_ID}{path}"

    def slack_post(self, route: str, body: bytes, *, ts: int | None = None, secret: str | None = None,
                   headers: Mapping[str, str] | None = None) -> httpx.Response:
        """POST a form ``body`` to ``route`` signed with the service's secret (or ``secret``), or with ``headers``."""
        sent = {"Content-Type": "application/x-www-form-urlencoded"}
        sent.update(slack_headers(body, self.secret if secret is None else secret, ts) if headers is None else headers)
        return self.client.post(route, content=body, headers=sent)

    def command(self, text: str, user_id: str = "U0ALICE", response_url: str | None = None,
                team_id: str = TEAM_ID, ts: int | None = None, body_override: bytes | None = None,
                **kw: Any) -> httpx.Response:
        """``/patch <text>`` from ``user_id``, signed; ``response.response_url`` is the hook it named."""
        hook = response_url or self.next_hook()
        body = body_override if body_override is not None else command_body(
            text, user_id=user_id, response_url=hook, team_id=team_id)
        response = self.slack_post("/slack/commands", body, ts=ts, **kw)
        response.response_url = hook  # type: ignore[attr-defined]
        return response

    def interact(self, action: str, run_id: str, user_id: str = "U0BOB", response_url: str | None = None,
                 team_id: str = TEAM_ID, ts: int | None = None, **kw: Any) -> httpx.Response:
        """A click on the approval message's ``action`` button (approve / deny) for ``run_id``, signed."""
        hook = response_url or self.next_hook()
        body = interaction_body(action, run_id, user_id=user_id, response_url=hook, team_id=team_id)
        response = self.slack_post("/slack/interactions", body, ts=ts, **kw)
        response.response_url = hook  # type: ignore[attr-defined]
        return response

    def api(self, method: str, path: str, token: str | None = None, json: Any = None,
            **kw: Any) -> httpx.Response:
        """A REST call; ``token`` is an identity's name (its bearer token is used) or a raw token."""
        headers = dict(kw.pop("headers", {}) or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {self.tokens.get(token, token)}"
        return self.client.request(method, path, json=json, headers=headers, **kw)

    def wait_run(self, run_id: str, token: str = "alice", until: Callable[[dict[str, Any]], bool] | None = None,
                 timeout: float = 300) -> dict[str, Any]:
        """GET /v1/runs/{id} until ``until(run)`` (default: the run has ended); the run."""
        def ended(run: dict[str, Any]) -> bool:
            return run.get("state") in ("denied", "finished", "interrupted", "canceled")

        until = until or ended
        deadline = time.monotonic() + timeout
        run: dict[str, Any] = {}
        while time.monotonic() < deadline:
            response = self.api("GET", f"/v1/runs/{run_id}", token)
            assert response.status_code == 200, f"{response.status_code} {response.text}{self.log_tail()}"
            doc = response.json()
            run = doc["run"] if isinstance(doc.get("run"), dict) else doc
            if until(run):
                return run
            time.sleep(0.25)
        raise AssertionError(f"run {run_id} did not get there within {timeout} s: {run}{self.log_tail()}")


@contextlib.contextmanager
def running_service(folder: Path, *, receiver: Receiver, keys: Keys, **config: Any) -> Any:
    """``write_config(folder, ...)`` and its :class:`Service` for a ``with`` block: the service stopped by its
    process group and ``folder`` removed afterwards (the module fixtures' one shape)."""
    path, tokens, secret = write_config(folder, receiver=receiver, keys=keys, **config)
    service = Service(path, secret=secret, tokens=tokens, receiver=receiver, folder=folder)
    try:
        yield service
    finally:
        service.close()
        shutil.rmtree(folder, ignore_errors=True)
