"""`exchpatch serve`'s configuration file (docs/chatops.md): identities, roles, secrets, limits, the store.

Every secret is read from a file or the environment, never from the file itself: a config checked into a
team's repository must not carry the Slack signing secret or a bearer token. API tokens are kept as
SHA-256 hashes (tokens are random, 32 bytes or more, so a hash is enough; a hash that leaks is no token).
Every refusal names the key and the fix (:class:`ConfigError`).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

ROLES = ("viewer", "operator", "approver")
# What each role may do; operator and approver may also read (a viewer's rights).
PERMISSIONS = {
    "viewer": {"plan", "status", "history", "runs"},
    "operator": {"plan", "status", "history", "runs", "deploy", "rollback", "cancel"},
    "approver": {"plan", "status", "history", "runs", "approve"},
}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$")
_SLACK_ID_RE = re.compile(r"^[UWBT][A-Z0-9]{2,31}$")
_HASH_RE = re.compile(r"^[0-9a-f]{64}$")
_DURATION_RE = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
TOP_KEYS = {"listen", "identities", "slack", "limits", "store", "driver"}


class ConfigError(ValueError):
    """The config is refused; ``str()`` names the key and the fix."""


@dataclass(frozen=True)
class Identity:
    name: str
    roles: frozenset[str]
    slack_users: tuple[str, ...] = ()
    token_sha256: tuple[str, ...] = ()
    approval_key: str | None = None

    def may(self, action: str) -> bool:
        return any(action in PERMISSIONS[r] for r in self.roles)


@dataclass(frozen=True)
class Config:
    path: str
    host: str
    port: int
    identities: dict[str, Identity]
    signing_secret: str | None
    team_id: str | None
    response_url_prefixes: tuple[str, ...]
    progress_interval: float
    max_body_bytes: int
    requests_per_minute: int
    store_backend: str
    store_path: str | None
    inventory: str | None
    catalog: str | None
    allowed_signers: str | None
    lock_dir: str | None
    feed_cache: str | None
    feeds: tuple[str, ...]
    approval_valid_for: str
    cancel_grace: float
    by_slack_user: dict[str, Identity] = field(default_factory=dict)
    by_token_hash: dict[str, Identity] = field(default_factory=dict)

    def identity_for_token(self, token: str) -> Identity | None:
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()
        return self.by_token_hash.get(digest)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _need(cond: bool, key: str, problem: str, fix: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {problem}; {fix}")


def _mapping(value: Any, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    _need(isinstance(value, dict), key, f"expected a mapping, found {type(value).__name__}",
          "see docs/chatops/serve.example.yml")
    return value


def _unknown(section: dict[str, Any], allowed: set[str], key: str) -> None:
    extra = sorted(set(section) - allowed)
    _need(not extra, key, f"unknown key(s) {', '.join(map(str, extra))}", f"use only {', '.join(sorted(allowed))}")


def _path(base: Path, value: Any, key: str, *, must_exist: str | None = None) -> str | None:
    if value in (None, ""):
        return None
    _need(isinstance(value, str), key, f"{value!r} is not a path", "give a file or folder path")
    path = (base / Path(value).expanduser()).resolve()
    if must_exist == "file":
        _need(path.is_file(), key, f"{path}: no such file", "check the path")
    elif must_exist == "dir":
        _need(path.is_dir(), key, f"{path}: no such folder", "check the path")
    return str(path)


def _list(value: Any, key: str) -> list[Any]:
    if value is None:
        return []
    _need(isinstance(value, list), key, f"expected a list, found {type(value).__name__}", "give a YAML list")
    return value


def _secret_file(path: str, key: str) -> str:
    mode = os.stat(path).st_mode
    _need(not mode & (stat.S_IRWXG | stat.S_IRWXO), key, f"{path} is readable by others (mode "
          f"{stat.S_IMODE(mode):o})", f"chmod 600 {path}")
    text = Path(path).read_text(encoding="utf-8").strip()
    _need(bool(text), key, f"{path} is empty", "put the secret in it")
    return text


def _identities(raw: Any, base: Path) -> dict[str, Identity]:
    section = _mapping(raw, "identities")
    _need(bool(section), "identities", "no identity is configured", "add at least one (name, roles, slack_users "
          "or token_sha256)")
    out: dict[str, Identity] = {}
    seen_slack: dict[str, str] = {}
    seen_hash: dict[str, str] = {}
    for name, spec in section.items():
        key = f"identities.{name}"
        _need(isinstance(name, str) and bool(_NAME_RE.match(name)), key, "not a user name",
              "use letters, digits and . _ @ + - (the name the audit trail records)")
        spec = _mapping(spec, key)
        _unknown(spec, {"roles", "slack_users", "token_sha256", "approval_key"}, key)
        roles = _list(spec.get("roles"), f"{key}.roles")
        _need(bool(roles), f"{key}.roles", "no role", f"give one or more of {', '.join(ROLES)}")
        for role in roles:
            _need(role in ROLES, f"{key}.roles", f"unknown role {role!r}", f"use {', '.join(ROLES)}")
        slack = [str(u) for u in _list(spec.get("slack_users"), f"{key}.slack_users")]
        for user in slack:
            _need(bool(_SLACK_ID_RE.match(user)), f"{key}.slack_users", f"{user!r} is not a Slack user id",
                  "give the member id (profile > Copy member ID), e.g. U024BE7LH")
            _need(user not in seen_slack, f"{key}.slack_users", f"{user} is also {seen_slack.get(user)}'s",
                  "map each Slack user to one identity")
            seen_slack[user] = name
        hashes = [str(h).lower() for h in _list(spec.get("token_sha256"), f"{key}.token_sha256")]
        for digest in hashes:
            _need(bool(_HASH_RE.match(digest)), f"{key}.token_sha256", "not a SHA-256 hex digest (64 hex digits)",
                  "store the token's hash, never the token: exchpatch serve --hash-token < token-file")
            _need(digest not in seen_hash, f"{key}.token_sha256", f"the same token is also {seen_hash.get(digest)}'s",
                  "give each identity its own token")
            seen_hash[digest] = name
        approval_key = _path(base, spec.get("approval_key"), f"{key}.approval_key", must_exist="file")
        if approval_key:
            _need("approver" in roles, f"{key}.approval_key", "only an approver signs approvals",
                  "add the approver role or remove the key")
            _secret_file(approval_key, f"{key}.approval_key")
        out[name] = Identity(name, frozenset(roles), tuple(slack), tuple(hashes), approval_key)
    return out


def _duration_s(value: str, key: str) -> float:
    match = _DURATION_RE.match(str(value))
    _need(bool(match), key, f"{value!r} is not a duration", "give e.g. 30m, 2h or 1d")
    amount, unit = int(match.group(1)), match.group(2)  # type: ignore[union-attr]
    return amount * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


def _positive(value: Any, key: str, default: float, *, integer: bool = False) -> Any:
    if value is None:
        return default
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
    _need(ok and (not integer or isinstance(value, int)), key, f"{value!r} is not a positive "
          f"{'integer' if integer else 'number'}", f"e.g. {default}")
    return value


def load_config(path: str | Path, environ: dict[str, str] | None = None) -> Config:
    """Read and check the service's config file; ConfigError names the key and the fix."""
    env = os.environ if environ is None else environ
    file = Path(path).expanduser()
    _need(file.is_file(), str(path), "no such config file", "give --config FILE (docs/chatops/serve.example.yml)")
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{file}: not valid YAML ({str(e).splitlines()[0]}); fix the syntax") from None
    raw = _mapping(raw, str(file))
    _unknown(raw, TOP_KEYS, str(file))
    base = file.resolve().parent

    listen = _mapping(raw.get("listen"), "listen")
    _unknown(listen, {"host", "port", "allow_public"}, "listen")
    host = str(listen.get("host", "127.0.0.1"))
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"listen.host: {host!r} is not an IP address; give one, e.g. 127.0.0.1") from None
    _need(address.is_loopback or listen.get("allow_public") is True, "listen.host",
          f"{host} is not a loopback address", "listen on 127.0.0.1 behind a TLS reverse proxy (docs/chatops.md), or "
          "set listen.allow_public: true if you really mean it")
    port = listen.get("port", 8450)
    _need(isinstance(port, int) and not isinstance(port, bool) and 0 <= port < 65536, "listen.port",
          f"{port!r} is not a port", "give e.g. 8450")

    identities = _identities(raw.get("identities"), base)

    slack = _mapping(raw.get("slack"), "slack")
    _unknown(slack, {"signing_secret", "signing_secret_file", "signing_secret_env", "team_id",
                     "response_url_prefixes", "progress_interval"}, "slack")
    _need("signing_secret" not in slack, "slack.signing_secret", "a secret written into the config file",
          "put it in a 0600 file (signing_secret_file) or the environment (signing_secret_env)")
    secret = None
    if slack:
        secret_file = _path(base, slack.get("signing_secret_file"), "slack.signing_secret_file", must_exist="file")
        secret_env = slack.get("signing_secret_env")
        _need(bool(secret_file) != bool(secret_env), "slack", "give exactly one of signing_secret_file and "
              "signing_secret_env", "e.g. signing_secret_file: /etc/exchpatch/slack-signing-secret")
        if secret_file:
            secret = _secret_file(secret_file, "slack.signing_secret_file")
        else:
            secret = env.get(str(secret_env), "").strip()
            _need(bool(secret), "slack.signing_secret_env", f"the environment variable {secret_env} is not set",
                  "set it in the service's environment (systemd LoadCredential or EnvironmentFile)")
    team = slack.get("team_id")
    _need(team is None or bool(_SLACK_ID_RE.match(str(team))), "slack.team_id", f"{team!r} is not a Slack team id",
          "give the workspace id, e.g. T024BE7LD")
    prefixes = [str(p) for p in _list(slack.get("response_url_prefixes", ["https://hooks.slack.com/"]),
                                      "slack.response_url_prefixes")]
    for prefix in prefixes:
        parts = urlsplit(prefix)
        _need(parts.scheme in ("https", "http") and bool(parts.hostname) and prefix.endswith("/"),
              "slack.response_url_prefixes", f"{prefix!r} is not a URL prefix ending in /",
              "give e.g. https://hooks.slack.com/")
        loopback = _is_ip(parts.hostname) and ipaddress.ip_address(parts.hostname or "").is_loopback
        _need(parts.scheme == "https" or loopback, "slack.response_url_prefixes", f"{prefix} is plain http",
              "use https (plain http only to a loopback address, for tests)")

    limits = _mapping(raw.get("limits"), "limits")
    _unknown(limits, {"max_body_bytes", "requests_per_minute"}, "limits")

    store = _mapping(raw.get("store"), "store")
    _unknown(store, {"backend", "path"}, "store")
    backend = store.get("backend", "sqlite")
    _need(backend in ("sqlite", "postgresql"), "store.backend", f"{backend!r} is not a store",
          "use sqlite (one service) or postgresql (the control plane's EXCHPATCH_STATE_STORE_DSN)")
    store_path = None
    if backend == "sqlite":
        store_path = _path(base, store.get("path", "serve.sqlite"), "store.path")
        _need(Path(store_path).parent.is_dir(), "store.path", f"folder {Path(store_path).parent} does not exist",
              "create it or choose another path")
    else:
        _need(bool(env.get("EXCHPATCH_STATE_STORE_DSN")), "store.backend", "postgresql needs the control plane's "
              "DSN", "set EXCHPATCH_STATE_STORE_DSN in the service's environment (docs/control-plane.md)")

    driver = _mapping(raw.get("driver"), "driver")
    _unknown(driver, {"inventory", "catalog", "allowed_signers", "lock_dir", "feed_cache", "feeds",
                      "approval_valid_for", "cancel_grace"}, "driver")
    inventory = _path(base, driver.get("inventory"), "driver.inventory")
    _need(inventory is None or Path(inventory).exists(), "driver.inventory", f"{inventory}: no such file or folder",
          "check the path")
    valid_for = str(driver.get("approval_valid_for", "2h"))
    seconds = _duration_s(valid_for, "driver.approval_valid_for")
    _need(0 < seconds <= 7 * 86400, "driver.approval_valid_for", f"{valid_for} is more than 7 days",
          "an approval is for one change: give at most 7d")

    config = Config(
        path=str(file.resolve()), host=host, port=port, identities=identities, signing_secret=secret,
        team_id=str(team) if team else None, response_url_prefixes=tuple(prefixes),
        progress_interval=float(_positive(slack.get("progress_interval"), "slack.progress_interval", 20)),
        max_body_bytes=_positive(limits.get("max_body_bytes"), "limits.max_body_bytes", 65536, integer=True),
        requests_per_minute=_positive(limits.get("requests_per_minute"), "limits.requests_per_minute", 60,
                                      integer=True),
        store_backend=backend, store_path=store_path, inventory=inventory,
        catalog=_path(base, driver.get("catalog"), "driver.catalog", must_exist="dir"),
        allowed_signers=_path(base, driver.get("allowed_signers"), "driver.allowed_signers", must_exist="file"),
        lock_dir=_path(base, driver.get("lock_dir"), "driver.lock_dir"),
        feed_cache=_path(base, driver.get("feed_cache"), "driver.feed_cache", must_exist="dir"),
        feeds=tuple(_path(base, f, "driver.feeds", must_exist="file") or ""
                    for f in _list(driver.get("feeds"), "driver.feeds")),
        approval_valid_for=valid_for,
        cancel_grace=float(_positive(driver.get("cancel_grace"), "driver.cancel_grace", 300)),
    )
    if any(i.approval_key for i in identities.values()):
        _need(config.allowed_signers is not None, "driver.allowed_signers", "approvers have chat signing keys but "
              "no allowed_signers file is configured", "give the team's allowed_signers file (docs/approvals.md)")
    by_slack = {u: i for i in identities.values() for u in i.slack_users}
    by_hash = {h: i for i in identities.values() for h in i.token_sha256}
    _need(secret is not None or not by_slack, "slack", "identities have slack_users but no slack section",
          "add slack.signing_secret_file (or _env)")
    config.by_slack_user.update(by_slack)
    config.by_token_hash.update(by_hash)
    return config


def _is_ip(host: str | None) -> bool:
    try:
        ipaddress.ip_address(host or "")
    except ValueError:
        return False
    return True
