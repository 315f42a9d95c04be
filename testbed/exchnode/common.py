"""Runtime shared by every testbed node: HTTP server, auth, metrics, journal, faults.

This package is what a testbed *release* contains: the release builder copies it into
the tarball, and a node runs it from ``<node root>/current``. It is stdlib-only on
purpose, so any Python 3.11 can run a release, exactly like a real venue's binaries do
not depend on the controller's virtualenv.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

LOG = logging.getLogger("exchnode")

FAULTS = ("crash", "never-ready", "slow-start", "latency", "state-divergence", "ledger-mismatch")
COMPONENT_FAULTS = {
    "matching-engine": ("crash", "never-ready", "slow-start", "latency", "state-divergence"),
    "wallet-signer": ("crash", "never-ready", "slow-start", "latency", "ledger-mismatch"),
}
# Defaults for fault behaviour; a release may override them in RELEASE.json "fault_params".
FAULT_DEFAULTS = {"crash_after_s": 1.0, "delay_s": 90.0, "latency_ms": 150.0}
# Fine enough between 50 ms and 1 s that a latency gate can tell a regression from noise.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Release:
    """What RELEASE.json at the root of a release folder says about it."""

    component: str
    version: str
    fault: str | None = None
    fault_params: dict[str, float] = field(default_factory=dict)
    sbom: bytes | None = None  # the release's CycloneDX SBOM (sbom.cdx.json), as shipped

    def param(self, name: str) -> float:
        return float(self.fault_params.get(name, FAULT_DEFAULTS[name]))


def load_release(release_dir: str) -> Release:
    with open(os.path.join(release_dir, "RELEASE.json"), encoding="utf-8") as fh:
        raw = json.load(fh)
    try:
        with open(os.path.join(release_dir, "sbom.cdx.json"), "rb") as fh:
            sbom: bytes | None = fh.read()
    except FileNotFoundError:
        sbom = None  # a release built before releases carried SBOMs
    return Release(
        component=raw["component"],
        version=raw["version"],
        fault=raw.get("fault"),
        fault_params=dict(raw.get("fault_params") or {}),
        sbom=sbom,
    )


def load_config(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def read_secret(path: str) -> str:
    with open(path, encoding="utf-8") as fh:
        return fh.read().strip()


def canonical_hash(obj: Any) -> str:
    """SHA-256 over the canonical JSON form of ``obj`` (sorted keys, no spaces)."""
    data = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- journal


class Journal:
    """Append-only JSON-lines file; a record is durable once ``append`` returns.

    A torn last line (the process died mid-write, so the record was never acknowledged)
    is cut off on open; everything before it is kept.
    """

    def __init__(self, path: str, fsync: bool = True) -> None:
        self.path = path
        self.fsync = fsync
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self._lock = threading.Lock()
        self._records = self._load()
        self._fh = open(path, "ab")  # noqa: SIM115 - held open for the node's lifetime

    def _load(self) -> list[dict[str, Any]]:
        if not os.path.exists(self.path):
            return []
        records: list[dict[str, Any]] = []
        good_bytes = 0
        with open(self.path, "rb") as fh:
            for line in fh:
                if not line.endswith(b"\n"):
                    break
                try:
                    records.append(json.loads(line))
                except ValueError:
                    break
                good_bytes += len(line)
        if good_bytes != os.path.getsize(self.path):
            LOG.warning("journal %s: cutting a torn tail at byte %d", self.path, good_bytes)
            with open(self.path, "r+b") as fh:
                fh.truncate(good_bytes)
        return records

    @property
    def records(self) -> list[dict[str, Any]]:
        return self._records

    def append(self, records: list[dict[str, Any]]) -> None:
        data = b"".join(json.dumps(r, sort_keys=True).encode() + b"\n" for r in records)
        with self._lock:
            self._fh.write(data)
            self._fh.flush()
            if self.fsync:
                os.fdatasync(self._fh.fileno())
            self._records.extend(records)

    def replace(self, records: list[dict[str, Any]]) -> str | None:
        """Atomically replace the whole journal; the old file is kept beside it.

        Returns the path of the kept copy (None when there was nothing to keep).
        """
        with self._lock:
            self._fh.close()
            kept = None
            if os.path.exists(self.path) and os.path.getsize(self.path):
                kept = f"{self.path}.replaced-{int(time.time() * 1000)}"
                os.replace(self.path, kept)
            tmp = self.path + ".tmp"
            with open(tmp, "wb") as fh:
                for r in records:
                    fh.write(json.dumps(r, sort_keys=True).encode() + b"\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
            self._records = list(records)
            self._fh = open(self.path, "ab")  # noqa: SIM115
            return kept

    def close(self) -> None:
        with self._lock:
            self._fh.close()


def write_json_durably(path: str, obj: Any) -> None:
    """Replace ``path`` with ``obj`` as JSON so that a crash leaves the old or the new file, whole."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


# --------------------------------------------------------------------------- HA history

HA_HISTORY_FILE = "ha-history.jsonl"  # in the node's data_dir: kept across restarts and releases
HA_STARTED, HA_STOPPING, HA_READY, HA_NOT_READY = "started", "stopping", "ready", "not_ready"


def read_ha_history(path: str, since: float | None = None) -> list[dict[str, Any]]:
    """The records of an HA history file, oldest first; unreadable lines (a torn write) are skipped."""
    out: list[dict[str, Any]] = []
    try:
        with open(path, "rb") as fh:
            for line in fh:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(rec, dict) or not isinstance(rec.get("t"), (int, float)):
                    continue
                if since is None or rec["t"] >= since:
                    out.append(rec)
    except FileNotFoundError:
        return []
    return out


class HaHistory:
    """The node's own record of its HA role and readiness: one JSON line per transition, appended.

    Each line is ``{"t", "event", "role", "ready", "reason", "version", "pid"}`` and states the
    node's role and readiness *after* the event: ``started`` (a process began; not ready),
    ``primary`` / ``standby`` / ``active`` (it took that role), ``ready`` / ``not_ready``
    (its readiness for its role changed), ``stopping`` (SIGTERM; nothing follows from this
    process). A process that dies without ``stopping`` (SIGKILL, crash) leaves no line: the next
    ``started`` shows it. The file is never truncated, so it spans restarts and releases; lines
    are flushed, not fsynced, and a failed write is logged, never raised: the history is
    evidence for tests and benches, not state the node depends on.
    """

    def __init__(self, path: str, node: Node) -> None:
        self.path = path
        self.node = node
        self._lock = threading.Lock()
        self._fh: Any = None
        self._closed = threading.Event()
        self._role: str | None = None
        self._ready: bool | None = None
        self._failing = False

    def _write(self, event: str, role: str | None, ready: bool, reason: str) -> bool:
        rec = {"t": time.time(), "event": event, "role": role, "ready": ready, "reason": reason,
               "version": self.node.release.version, "pid": os.getpid()}
        try:
            if self._fh is None:
                os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
                self._fh = open(self.path, "ab")  # noqa: SIM115 - held open for the node's lifetime
                if self._fh.tell() > 0:
                    with open(self.path, "rb") as tail:
                        tail.seek(-1, os.SEEK_END)
                        if tail.read(1) != b"\n":
                            self._fh.write(b"\n")  # a process killed mid-line: keep our first line whole
            self._fh.write(json.dumps(rec, sort_keys=True).encode() + b"\n")
            self._fh.flush()
        except OSError as e:
            if not self._failing:
                LOG.warning("HA history %s: cannot write (%s); the node keeps serving without it", self.path, e)
            self._failing = True
            if self._fh is not None:
                with suppress(OSError):
                    self._fh.close()
            self._fh = None  # reopened at the next transition
            return False
        self._failing = False
        return True

    def started(self) -> None:
        with self._lock:
            self._write(HA_STARTED, None, False, "process started")

    def observe(self) -> None:
        """Record the node's role and readiness if either changed since the last line."""
        try:
            with self._lock:
                if self._closed.is_set():
                    return
                role = self.node.ha_role()
                ready, reason = self.node.readiness(None)
                if role != self._role:
                    event = str(role)
                elif ready != self._ready:
                    event = HA_READY if ready else HA_NOT_READY
                else:
                    return
                if self._write(event, role, ready, reason):
                    self._role, self._ready = role, ready  # else: written once the file works again
        except Exception:  # the history must never take the node down
            LOG.exception("HA history: observing the node failed")

    def watch(self) -> None:
        """Re-read readiness every ``node.ha_sample_s`` in a daemon thread, until ``stopping``."""

        def loop() -> None:
            while not self._closed.wait(self.node.ha_sample_s):
                self.observe()

        threading.Thread(target=loop, name="ha-history", daemon=True).start()

    def stopping(self) -> None:
        """Record the SIGTERM; later observations are dropped, so this is the process's last line."""
        with self._lock:
            if self._closed.is_set():
                return
            self._closed.set()
            self._write(HA_STOPPING, self._role, False, "SIGTERM: stopping")

    def close(self) -> None:
        with self._lock:
            self._closed.set()
            if self._fh is not None:
                with suppress(OSError):
                    self._fh.close()
                self._fh = None


# --------------------------------------------------------------------------- fencing


def _token(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


class Fence:
    """The highest rollout-lease fencing token this node has seen, per scope it serves.

    An admin mutation may carry ``"fence": {"scope": "shard-0", "token": 42}`` (or a list of
    such objects, one per scope, for a wallet serving several chains). A token lower than the
    highest already seen for its scope is refused with 409 and the mutation is not made; an
    equal or higher one is recorded durably (``<data_dir>/fence.json``, replaced atomically like
    the role file) *before* the mutation, and the mutation runs under the same lock, so an older
    run cannot slip an action in between a newer run's check and its action. A mutation
    without ``fence`` is accepted: an operator acting by hand is outside the lease.
    """

    def __init__(self, data_dir: str, scopes: list[str], name: str) -> None:
        self.path = os.path.join(data_dir, "fence.json")
        self.scopes = list(scopes)
        self.name = name
        self._lock = threading.Lock()
        self._highest: dict[str, int] = {}

    def load(self) -> None:
        if not os.path.exists(self.path):
            return
        with open(self.path, encoding="utf-8") as fh:
            raw = json.load(fh)
        if not isinstance(raw, dict) or not all(isinstance(k, str) and _token(v) is not None for k, v in raw.items()):
            raise SystemExit(f"{self.path}: expected an object of scope -> non-negative integer token; "
                             "restore it from a backup (deleting it lets any older rollout act on this node)")
        self._highest = dict(raw)

    def highest(self) -> dict[str, int]:
        with self._lock:
            return dict(self._highest)

    def claims(self, body: dict[str, Any]) -> list[tuple[str, int]]:
        """The (scope, token) pairs of a request body's ``fence`` field; 400 when it is malformed."""
        raw = body.get("fence")
        if raw is None:
            return []
        items = raw if isinstance(raw, list) else [raw]
        usage = 'fence must be {"scope": "<scope>", "token": <int >= 0>} or a list of those'
        if not items:
            raise HttpError(400, usage)
        out: list[tuple[str, int]] = []
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("scope"), str):
                raise HttpError(400, usage)
            if _token(item.get("token")) is None:
                raise HttpError(400, usage)
            if item["scope"] not in self.scopes:
                raise HttpError(400, f"fence scope {item['scope']!r} is not served by {self.name}; it serves "
                                f"{', '.join(self.scopes)}", scopes=self.scopes)
            out.append((item["scope"], item["token"]))
        return out

    @contextmanager
    def admit(self, body: dict[str, Any]) -> Iterator[None]:
        """Check and record the request's fencing tokens, then hold the fence while the mutation runs."""
        claims = self.claims(body)
        with self._lock:
            for scope, token in claims:
                seen = self._highest.get(scope, -1)
                if token < seen:
                    raise HttpError(
                        409,
                        f"fencing token {token} for {scope} is lower than {seen}, already seen by {self.name}: "
                        "another run holds the lease",
                        fence={"scope": scope, "token": token, "highest": seen},
                    )
            raised = {s: t for s, t in claims if t > self._highest.get(s, -1)}
            if raised:
                highest = {**self._highest, **raised}
                write_json_durably(self.path, highest)
                self._highest = highest
                LOG.info("fencing token raised: %s", ", ".join(f"{s}={t}" for s, t in sorted(raised.items())))
            yield


# --------------------------------------------------------------------------- metrics


class Metrics:
    """Prometheus counters and a latency histogram, rendered by hand (stdlib only)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, str], int] = {}
        self._errors: dict[tuple[str, str], int] = {}
        self._buckets: dict[str, list[int]] = {}
        self._sum: dict[str, float] = {}
        self._count: dict[str, int] = {}

    def observe(self, kind: str, route: str, method: str, status: int, seconds: float) -> None:
        with self._lock:
            key = (route, method, str(status))
            self._requests[key] = self._requests.get(key, 0) + 1
            if status >= 500:
                self._errors[(route, method)] = self._errors.get((route, method), 0) + 1
            buckets = self._buckets.setdefault(kind, [0] * len(LATENCY_BUCKETS))
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    buckets[i] += 1
            self._sum[kind] = self._sum.get(kind, 0.0) + seconds
            self._count[kind] = self._count.get(kind, 0) + 1

    def render(self, extra: list[str]) -> str:
        out = [
            "# HELP exchange_requests_total HTTP requests served, by route, method and status.",
            "# TYPE exchange_requests_total counter",
        ]
        with self._lock:
            for (route, method, status), n in sorted(self._requests.items()):
                out.append(
                    f'exchange_requests_total{{route="{route}",method="{method}",code="{status}"}} {n}'
                )
            out += [
                "# HELP exchange_request_errors_total HTTP requests answered with a 5xx status.",
                "# TYPE exchange_request_errors_total counter",
            ]
            for (route, method), n in sorted(self._errors.items()):
                out.append(f'exchange_request_errors_total{{route="{route}",method="{method}"}} {n}')
            out += [
                "# HELP exchange_request_duration_seconds Request latency; kind=client is order/withdrawal traffic.",
                "# TYPE exchange_request_duration_seconds histogram",
            ]
            for kind in sorted(self._buckets):
                for bound, n in zip(LATENCY_BUCKETS, self._buckets[kind]):
                    out.append(f'exchange_request_duration_seconds_bucket{{kind="{kind}",le="{bound}"}} {n}')
                out.append(
                    f'exchange_request_duration_seconds_bucket{{kind="{kind}",le="+Inf"}} {self._count[kind]}'
                )
                out.append(f'exchange_request_duration_seconds_sum{{kind="{kind}"}} {self._sum[kind]:.6f}')
                out.append(f'exchange_request_duration_seconds_count{{kind="{kind}"}} {self._count[kind]}')
        return "\n".join(out + extra) + "\n"


# --------------------------------------------------------------------------- HTTP


class HttpError(Exception):
    """Raised by a handler to answer with ``status`` and a JSON error body."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": message, **extra}


@dataclass
class Request:
    method: str
    path: str
    params: dict[str, str]
    query: dict[str, str]
    headers: Any
    body: bytes

    def json(self) -> dict[str, Any]:
        if not self.body:
            return {}
        try:
            data = json.loads(self.body)
        except ValueError as e:
            raise HttpError(400, f"request body is not valid JSON: {e}") from e
        if not isinstance(data, dict):
            raise HttpError(400, "request body must be a JSON object")
        return data


Handler = Callable[[Request], Any]

# auth: "none" (health, readiness, client traffic), "admin" (bearer admin token),
# "replication" (bearer replication token shared by the two nodes of a shard).
# kind: "client" routes get the latency fault and the client latency histogram.


@dataclass
class Route:
    method: str
    pattern: re.Pattern[str]
    template: str
    handler: Handler
    auth: str
    kind: str


class Router:
    def __init__(self) -> None:
        self.routes: list[Route] = []

    def add(self, method: str, template: str, handler: Handler, auth: str = "admin", kind: str = "admin") -> None:
        """Register ``handler``; ``template`` uses ``{name}`` for one path segment."""
        regex = "^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template) + "$"
        self.routes.append(Route(method, re.compile(regex), template, handler, auth, kind))

    def match(self, method: str, path: str) -> tuple[Route | None, dict[str, str], bool]:
        path_known = False
        for route in self.routes:
            m = route.pattern.match(path)
            if m:
                path_known = True
                if route.method == method:
                    return route, m.groupdict(), True
        return None, {}, path_known


class Node:
    """Base class of a node component. Subclasses add routes and state.

    The base class owns the release, the config, auth, metrics and the faults that
    every component shares (crash, never-ready, slow-start, latency).
    """

    component = ""
    # How often the HA history re-reads readiness, for changes no code path announces (a primary
    # gone quiet, a slow start); role changes are recorded as they happen.
    ha_sample_s = 0.1

    def __init__(self, config: dict[str, Any], release: Release) -> None:
        self.config = config
        self.release = release
        self.name = config["name"]
        self.started_at = time.time()
        self.metrics = Metrics()
        self.router = Router()
        self.admin_token = read_secret(config["token_file"])
        rep = config.get("replication_token_file")
        self.replication_token = read_secret(rep) if rep else None
        self.router.add("GET", "/v1/health", self._health, auth="none", kind="probe")
        self.router.add("GET", "/v1/ready", self._ready, auth="none", kind="probe")
        self.router.add("GET", "/v1/status", lambda req: self.status(), auth="admin")
        self.router.add("GET", "/metrics", self._metrics, auth="admin")
        self.router.add("GET", "/v1/ha/history", self._ha_history, auth="admin")
        self.router.add("GET", "/v1/sbom", self._sbom, auth="admin")
        self.history = HaHistory(os.path.join(config["data_dir"], HA_HISTORY_FILE), self)

    # -- subclass interface
    def start(self) -> None:
        """Recover state from disk and start background work; called before serving."""

    def close(self) -> None:
        """Stop background work and close files; called on SIGTERM."""

    def status(self) -> dict[str, Any]:
        raise NotImplementedError

    def component_readiness(self, role: str | None) -> tuple[bool, str]:
        raise NotImplementedError

    def extra_metrics(self) -> list[str]:
        return []

    def ha_role(self) -> str | None:
        """The role the HA history records: primary/standby for a matching node, active for a wallet."""
        return None

    # -- shared behaviour
    def base_status(self) -> dict[str, Any]:
        ready, reason = self.readiness(None)
        return {
            "name": self.name,
            "component": self.component,
            "version": self.release.version,
            "fault": self.release.fault,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "ready": ready,
            "ready_reason": reason,
            "sbom_sha256": None if self.release.sbom is None else hashlib.sha256(self.release.sbom).hexdigest(),
        }

    def readiness(self, role: str | None) -> tuple[bool, str]:
        fault = self.release.fault
        if fault == "never-ready":
            return False, "release fault: never-ready"
        if fault == "slow-start" and time.time() < self.started_at + self.release.param("delay_s"):
            return False, "starting"
        return self.component_readiness(role)

    def _health(self, req: Request) -> dict[str, Any]:
        return {"status": "ok", "name": self.name, "version": self.release.version}

    def _ready(self, req: Request) -> tuple[int, dict[str, Any]]:
        ready, reason = self.readiness(req.query.get("role"))
        return (200 if ready else 503), {"ready": ready, "reason": reason}

    def _sbom(self, req: Request) -> dict[str, Any]:
        """The running release's CycloneDX SBOM, as the release shipped it."""
        if self.release.sbom is None:
            raise HttpError(404, f"release {self.release.version} carries no SBOM (built before releases had one)")
        try:
            doc = json.loads(self.release.sbom)
        except ValueError as e:
            raise HttpError(500, f"release {self.release.version}: sbom.cdx.json is not JSON: {e}") from e
        if not isinstance(doc, dict):
            raise HttpError(500, f"release {self.release.version}: sbom.cdx.json is not a JSON object")
        return doc

    def _ha_history(self, req: Request) -> dict[str, Any]:
        raw = req.query.get("since")
        try:
            since = None if raw is None else float(raw)
        except ValueError as e:
            raise HttpError(400, f"since must be a Unix time in seconds, got {raw!r}") from e
        try:
            events = read_ha_history(self.history.path, since)
        except OSError as e:
            raise HttpError(500, f"cannot read the HA history {self.history.path}: {e}") from e
        return {"name": self.name, "file": self.history.path, "events": events}

    def _metrics(self, req: Request) -> tuple[int, str]:
        lines = [
            "# HELP exchange_node_info Release the node runs.",
            "# TYPE exchange_node_info gauge",
            f'exchange_node_info{{component="{self.component}",version="{self.release.version}"}} 1',
        ]
        return 200, self.metrics.render(lines + self.extra_metrics())

    def authorized(self, route: Route, headers: Any) -> bool:
        if route.auth == "none":
            return True
        header = headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return False
        given = header[len("Bearer "):].strip().encode()
        tokens = [self.admin_token]
        if route.auth == "replication" and self.replication_token:
            tokens = [self.replication_token]
        return any(hmac.compare_digest(given, t.encode()) for t in tokens)


def _make_handler(node: Node) -> type[BaseHTTPRequestHandler]:
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in separate writes; without TCP_NODELAY a kept-alive
        # connection stalls ~40 ms per response on Nagle + delayed ACK.
        disable_nagle_algorithm = True
        server_version = f"exchnode/{node.release.version}"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
            pass  # request counts live in /metrics; the log stays for events that matter

        def _send(self, status: int, payload: Any) -> None:
            if isinstance(payload, str):
                data, ctype = payload.encode(), "text/plain; version=0.0.4"
            else:
                data, ctype = json.dumps(payload).encode(), "application/json"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _dispatch(self) -> None:
            t0 = time.perf_counter()
            split = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            route, params, known = node.router.match(self.command, split.path)
            kind, template = "admin", "unmatched"
            try:
                if route is None:
                    raise HttpError(405 if known else 404, f"no route for {self.command} {split.path}")
                kind, template = route.kind, route.template
                if not node.authorized(route, self.headers):
                    raise HttpError(401, "missing or invalid bearer token")
                if kind == "client" and node.release.fault == "latency":
                    time.sleep(node.release.param("latency_ms") / 1000.0)
                query = {k: v[-1] for k, v in parse_qs(split.query).items()}
                result = route.handler(Request(self.command, split.path, params, query, self.headers, body))
                status, payload = result if isinstance(result, tuple) else (200, result)
            except HttpError as e:
                status, payload = e.status, e.body
            except Exception as e:
                LOG.exception("%s %s failed", self.command, split.path)
                status, payload = 500, {"error": f"internal error: {type(e).__name__}"}
            try:
                self._send(status, payload)
            finally:
                node.metrics.observe(kind, template, self.command, status, time.perf_counter() - t0)

        do_GET = do_POST = do_PUT = do_DELETE = _dispatch

    return H


class NodeServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


# --------------------------------------------------------------------------- peers


class PeerClient:
    """A kept-alive JSON HTTP client for one peer; reconnects after any error."""

    def __init__(self, url: str, token: str | None, timeout: float = 2.0) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.token = token
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Return (status, parsed JSON body); raise OSError when the peer cannot be reached."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        with self._lock:
            for attempt in (1, 2):
                try:
                    if self._conn is None:
                        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
                        conn.connect()
                        # http.client writes headers and body separately: avoid the Nagle stall.
                        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        self._conn = conn
                    self._conn.request(method, path, body=data, headers=headers)
                    resp = self._conn.getresponse()
                    raw = resp.read()
                    return resp.status, (json.loads(raw) if raw else None)
                except (OSError, http.client.HTTPException, ValueError) as e:
                    if self._conn is not None:
                        self._conn.close()
                    self._conn = None
                    # A kept-alive connection the peer closed fails once; retry on a fresh one.
                    if attempt == 2 or isinstance(e, (TimeoutError, ConnectionRefusedError)):
                        raise OSError(f"peer {self.host}:{self.port}: {e}") from e
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


# --------------------------------------------------------------------------- main


def _node_class(component: str) -> type[Node]:
    if component == "matching-engine":
        from exchnode.matching import MatchingNode

        return MatchingNode
    if component == "wallet-signer":
        from exchnode.wallet import WalletNode

        return WalletNode
    raise SystemExit(f"unknown component {component!r} in node config; expected matching-engine or wallet-signer")


def main(release_dir: str, argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if len(argv) != 2 or argv[0] != "--config":
        print("usage: exchnode --config NODE_JSON", file=sys.stderr)
        return 2
    config = load_config(argv[1])
    release = load_release(release_dir)
    if release.component != config["component"]:
        LOG.error(
            "release %s is a %s release but this node is a %s node; install the right component",
            release.version, release.component, config["component"],
        )
        return 78  # EX_CONFIG: supervisord gives up instead of looping
    node = _node_class(config["component"])(config, release)
    LOG.info("starting %s %s %s (fault=%s)", node.name, node.component, release.version, release.fault)
    node.history.started()
    node.start()
    server = NodeServer((config["address"], int(config["port"])), _make_handler(node))
    node.history.observe()
    node.history.watch()
    stopping = threading.Event()

    def shut_down() -> None:
        node.history.stopping()  # first: from here on this node no longer counts as ready
        server.shutdown()

    def stop(signum: int, frame: Any) -> None:
        stopping.set()
        threading.Thread(target=shut_down, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if release.fault == "crash":
        def crash() -> None:
            time.sleep(release.param("crash_after_s"))
            LOG.error("release fault: crash; exiting")
            os._exit(70)

        threading.Thread(target=crash, daemon=True).start()
    LOG.info("serving on %s:%s", config["address"], config["port"])
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        node.close()
        node.history.close()
        LOG.info("stopped")
    return 0
