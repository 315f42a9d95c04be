# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The one client of a node's admin API, used by node_info, node_action and health_gate.

Every request carries the node's bearer token, so the client is deliberately narrow:

- Redirects are never followed (a 3xx is an error naming its ``Location``): the token would
  otherwise go wherever the first answer points.
- No proxy from the environment, no ``~/.netrc``, no decompression: the request goes
  straight to ``url`` and the answer is read as sent.
- TLS is verified by default; ``ca_path`` trusts a private CA, ``client_cert`` and
  ``client_key`` present a client certificate (mutual TLS).
- An answer is read under one deadline (``request_timeout`` from connecting to the last
  byte, so a server dripping bytes cannot hold a task forever) and up to ``max_body`` bytes.
- A JSON answer must be an object.

Every failure is an :class:`AdminApiError` whose ``str()`` names the method, the URL, what
happened (the status, the reason) and the fix, never the token; ``kind`` tells callers
apart the failures waiting cannot fix (``permanent``) from the ones it may.

Built on ``ansible.module_utils.urls.Request`` so that it runs wherever modules run.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import re
import socket
import ssl
import time
import urllib.error
import urllib.parse
from dataclasses import dataclass
from typing import Any

from ansible.module_utils.urls import ConnectionError as UrlsConnectionError
from ansible.module_utils.urls import Request

DEFAULT_REQUEST_TIMEOUT = 10.0
MAX_BODY = 4 * 1024 * 1024
DETAIL_CHARS = 200
USER_AGENT = "exchangeops.patching-admin-api"

# Failures that waiting does not fix: a gate stops at once instead of polling until its timeout.
PERMANENT_KINDS = frozenset({"refused", "redirect", "tls", "config"})

_UNPRINTABLE = re.compile(r"[^\x20-\x7e]+")


def admin_api_argument_spec() -> dict[str, Any]:
    """The connection options of the admin_api doc fragment, as an AnsibleModule argument spec."""
    return dict(
        url=dict(type="str", required=True),
        token=dict(type="str", required=True, no_log=True),
        request_timeout=dict(type="float", default=DEFAULT_REQUEST_TIMEOUT),
        validate_certs=dict(type="bool", default=True),
        ca_path=dict(type="path"),
        client_cert=dict(type="path"),
        client_key=dict(type="path", no_log=False),
    )


class AdminApiError(Exception):
    """A request to a node's admin API failed; ``str()`` is ``"<METHOD> <url>: <what>; <fix>"``.

    ``kind`` is one of: refused (401/403), redirect (3xx), not_found (404), server (5xx),
    http (another status), unreachable, timeout, tls, not_json, not_object, too_large,
    config (the options themselves are wrong). ``document`` is the node's JSON error
    object when it sent one.
    """

    def __init__(self, method: str, url: str, kind: str, message: str, fix: str,
                 status: int | None = None, document: dict[str, Any] | None = None) -> None:
        self.method = method
        self.url = url
        self.kind = kind
        self.message = message
        self.fix = fix
        self.status = status
        self.document = document
        super().__init__(f"{method} {url}: {message}; {fix}" if method else f"{url}: {message}; {fix}")

    @property
    def permanent(self) -> bool:
        """True when asking again cannot help (a refused token, a redirect, TLS, bad options)."""
        return self.kind in PERMANENT_KINDS

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.method, self.url, self.kind, self.message, self.fix, self.status,
                                 self.document))


@dataclass(frozen=True)
class Tls:
    """How the admin API's TLS is checked and which client certificate is shown."""

    validate_certs: bool = True
    ca_path: str | None = None
    client_cert: str | None = None
    client_key: str | None = None


@dataclass(frozen=True)
class Answer:
    """A JSON answer: the HTTP status and the object the node sent."""

    status: int
    document: dict[str, Any]


def redact_url(url: str) -> str:
    """``url`` without any ``user:password@`` part."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit((parts.scheme, "***@" + host, parts.path, parts.query, parts.fragment))


def _one_line(text: str, limit: int = DETAIL_CHARS) -> str:
    text = _UNPRINTABLE.sub(" ", text).strip()
    return text if len(text) <= limit else text[:limit] + "..."


class AdminApi:
    """One node's admin API: ``base_url`` plus paths, the bearer token, TLS and a deadline per request.

    ``token_option`` and ``url_option`` name the module options (and inventory variables) the
    error messages point at.
    """

    def __init__(self, base_url: str, token: str, *, request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
                 tls: Tls | None = None, max_body: int = MAX_BODY,
                 token_option: str = "token (the node's admin token in vault, exchange_admin_token)",
                 url_option: str = "url (exchange_admin_url)") -> None:
        self.token = token
        self.tls = tls or Tls()
        self.request_timeout = request_timeout
        self.max_body = max_body
        self.token_option = token_option
        self.url_option = url_option
        self.base = base_url.rstrip("/")
        self._check_options()
        self._request = Request(
            headers={"Authorization": f"Bearer {token}", "User-Agent": USER_AGENT},
            use_proxy=False, force=False, timeout=request_timeout, follow_redirects="none",
            validate_certs=self.tls.validate_certs, ca_path=self.tls.ca_path,
            client_cert=self.tls.client_cert, client_key=self.tls.client_key,
            unredirected_headers=["Authorization"], decompress=False, use_netrc=False,
        )

    # ------------------------------------------------------------------ options

    def _config_error(self, message: str, fix: str) -> AdminApiError:
        return AdminApiError("", redact_url(self.base) or "<empty url>", "config", message, fix)

    def _check_options(self) -> None:
        try:
            parts = urllib.parse.urlsplit(self.base)
        except ValueError as e:
            raise self._config_error(f"not a URL ({e})", f"fix {self.url_option}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise self._config_error("not an http:// or https:// URL with a host",
                                     f"fix {self.url_option}, e.g. https://10.20.1.11:8443")
        if parts.username is not None or parts.password is not None:
            self.base = redact_url(self.base)
            raise self._config_error("the URL carries credentials (user:password@)",
                                     f"remove them from {self.url_option}; the bearer token authenticates")
        if parts.query or parts.fragment:
            raise self._config_error("the base URL has a query or fragment",
                                     f"give {self.url_option} as scheme://host:port[/prefix] only")
        if not self.token:
            raise self._config_error("the admin token is empty", f"set {self.token_option}")
        if not math.isfinite(self.request_timeout) or self.request_timeout <= 0:
            raise self._config_error(f"request_timeout must be > 0 seconds, got {self.request_timeout:g}",
                                     "raise request_timeout")
        if self.tls.client_key and not self.tls.client_cert:
            raise self._config_error("client_key is set without client_cert",
                                     "set client_cert (exchange_admin_client_cert) too")
        for option, var, path in (("ca_path", "exchange_admin_ca_path", self.tls.ca_path),
                                  ("client_cert", "exchange_admin_client_cert", self.tls.client_cert),
                                  ("client_key", "exchange_admin_client_key", self.tls.client_key)):
            if path and not os.path.isfile(path):
                raise self._config_error(f"{option} {path} is not a readable file on the controller",
                                         f"fix {option} ({var} in the inventory)")
            if path and not os.access(path, os.R_OK):
                raise self._config_error(f"{option} {path} cannot be read by this user",
                                         f"fix {option}'s permissions ({var} in the inventory)")

    # ------------------------------------------------------------------ requests

    def get_json(self, path: str) -> dict[str, Any]:
        """``GET path`` answered 200 with a JSON object."""
        return self.request_json("GET", path).document

    def get_text(self, path: str) -> str:
        """``GET path`` answered 200, as text (``/metrics``)."""
        raw = self._send("GET", path, None, (200,), "text/plain, application/json")[1]
        return raw.decode("utf-8", "replace")

    def post_json(self, path: str, body: dict[str, Any], accept: tuple[int, ...] = (200,)) -> Answer:
        """``POST path`` with a JSON body; any status in ``accept`` comes back, with its JSON object."""
        return self.request_json("POST", path, body, accept)

    def request_json(self, method: str, path: str, body: dict[str, Any] | None = None,
                     accept: tuple[int, ...] = (200,)) -> Answer:
        status, raw, url = self._send(method, path, body, accept, "application/json")
        return Answer(status, self._parse_object(method, url, status, raw))

    def _send(self, method: str, path: str, body: dict[str, Any] | None, accept: tuple[int, ...],
              accept_header: str) -> tuple[int, bytes, str]:
        url = self.base + path
        headers = {"Accept": accept_header}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        deadline = time.monotonic() + self.request_timeout
        try:
            resp = self._request.open(method, url, data=data, headers=headers)
        except urllib.error.HTTPError as e:
            status = e.code
            raw = self._read_error_body(e, deadline)
            if status in accept:
                return status, raw, url
            raise self._status_error(method, url, status, e.headers, raw) from None
        except Exception as e:  # noqa: BLE001 - every transport failure becomes one clear error
            raise self._transport_error(method, url, e) from None
        try:
            status = resp.status
            raw = self._read(method, url, resp, deadline)
        finally:
            resp.close()
        if status not in accept:
            raise self._status_error(method, url, status, resp.headers, raw)
        return status, raw, url

    # ------------------------------------------------------------------ reading

    def _read(self, method: str, url: str, resp: Any, deadline: float) -> bytes:
        length = resp.headers.get("Content-Length") if resp.headers is not None else None
        if length and length.strip().isdigit() and int(length) > self.max_body:
            raise self._error(method, url, "too_large", f"answered {resp.status} with {int(length)} bytes, more "
                              f"than the {self.max_body} this client reads",
                              "the node does not implement the admin API contract; check url and the node",
                              resp.status)
        chunks: list[bytes] = []
        size = 0
        while True:
            if time.monotonic() > deadline:
                raise self._error(method, url, "timeout", f"the answer took longer than {self.request_timeout:g} s "
                                  f"(request_timeout) to arrive ({size} bytes so far)",
                                  "is the node overloaded? raise request_timeout if it is only slow", resp.status)
            try:
                chunk = resp.read1(65536)
            except Exception as e:  # noqa: BLE001
                raise self._transport_error(method, url, e) from None
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > self.max_body:
                raise self._error(method, url, "too_large", f"answered {resp.status} with more than "
                                  f"{self.max_body} bytes; stopped reading",
                                  "the node does not implement the admin API contract; check url and the node",
                                  resp.status)
            chunks.append(chunk)

    def _read_error_body(self, e: urllib.error.HTTPError, deadline: float) -> bytes:
        if e.fp is None:
            return b""
        try:
            return self._read("", e.filename or "", e, deadline)
        except AdminApiError:
            return b""  # an error answer too big or too slow: its status says enough
        finally:
            e.close()

    def _parse_object(self, method: str, url: str, status: int, raw: bytes) -> dict[str, Any]:
        fix = f"the node does not implement the admin API contract; check {self.url_option} points at its admin API"
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError) as e:
            start = _one_line(raw[:60].decode("utf-8", "replace"), 60)
            raise self._error(method, url, "not_json", f"answered {status} with something that is not JSON "
                              f"({_one_line(str(e), 80)}; it starts {start!r})", fix, status) from None
        if not isinstance(doc, dict):
            raise self._error(method, url, "not_object",
                              f"answered {status} with a JSON {type(doc).__name__}, not an object", fix, status)
        return doc

    # ------------------------------------------------------------------ errors

    def _error(self, method: str, url: str, kind: str, message: str, fix: str, status: int | None = None,
               document: dict[str, Any] | None = None) -> AdminApiError:
        # a hostile or broken node may echo the request: the token never reaches a message
        if len(self.token) >= 4:
            message = message.replace(self.token, "********")
        return AdminApiError(method, url, kind, message, fix, status, document)

    def _status_error(self, method: str, url: str, status: int, headers: Any, raw: bytes) -> AdminApiError:
        document = None
        detail = ""
        try:
            parsed = json.loads(raw.decode("utf-8")) if raw else None
        except (ValueError, RecursionError):
            parsed = None
        if isinstance(parsed, dict):
            document = parsed
            detail = _one_line(str(parsed.get("error", parsed)))
        elif raw:
            detail = _one_line(raw.decode("utf-8", "replace"))
        said = f" ({detail})" if detail else ""
        if 300 <= status < 400:
            location = headers.get("Location") if headers is not None else None
            where = f"redirecting to {_one_line(redact_url(location or ''), 300)}" if location else "a redirect"
            return self._error(method, url, "redirect", f"answered {status}, {where}; redirects are not followed, "
                               "the bearer token is never sent across one",
                               f"set {self.url_option} to the admin API's own address", status, document)
        if status in (401, 403):
            word = "refused" if status == 401 else "not allowed"
            return self._error(method, url, "refused", f"answered {status}: the admin token was {word}",
                               f"check {self.token_option}", status, document)
        if status == 404:
            return self._error(method, url, "not_found", f"answered 404: the node does not implement "
                               f"{method} {urllib.parse.urlsplit(url).path}{said}",
                               f"check {self.url_option} points at the node's admin API and the node runs a "
                               "release with the admin API contract", status, document)
        if status >= 500:
            return self._error(method, url, "server", f"answered {status}, a server error{said}",
                               "the node failed; read its log, then retry", status, document)
        return self._error(method, url, "http", f"answered {status}{said}",
                           "the node refused the request as sent; see its answer", status, document)

    def _transport_error(self, method: str, url: str, e: BaseException) -> AdminApiError:
        reason: Any = e.reason if isinstance(e, urllib.error.URLError) else e
        if isinstance(reason, ssl.SSLCertVerificationError):
            return self._error(method, url, "tls", "the server's TLS certificate is not trusted "
                               f"({_one_line(reason.verify_message or str(reason))})",
                               "set ca_path (exchange_admin_ca_path) to the CA that signed it, or fix the "
                               "certificate; validate_certs=false only on a test bench")
        if isinstance(reason, (ssl.SSLEOFError, ConnectionResetError)) and self.base.startswith("https:"):
            # TLS 1.3: a node that wants a client certificate (or distrusts ours) may just hang up
            cert = ("it may not trust the client certificate: check client_cert and client_key"
                    if self.tls.client_cert else
                    "it may require a client certificate: set client_cert and client_key")
            return self._error(method, url, "unreachable", "the node closed the TLS connection "
                               f"({_one_line(str(reason))})", f"{cert} (exchange_admin_client_cert, "
                               "exchange_admin_client_key), or the node restarted")
        if isinstance(reason, ssl.SSLError) or isinstance(e, UrlsConnectionError):
            text = _one_line(getattr(reason, "reason", None) or str(reason))
            if "CERTIFICATE_REQUIRED" in text.upper() or "certificate required" in text.lower():
                return self._error(method, url, "tls", f"the node requires a TLS client certificate ({text})",
                                   "set client_cert and client_key (exchange_admin_client_cert, "
                                   "exchange_admin_client_key)")
            if "UNKNOWN_CA" in text.upper() or "BAD_CERTIFICATE" in text.upper():
                return self._error(method, url, "tls", f"the node rejected the TLS client certificate ({text})",
                                   "use a client_cert signed by the CA the node trusts (exchange_admin_client_cert)")
            if "WRONG_VERSION_NUMBER" in text.upper() or "record layer failure" in text.lower():
                return self._error(method, url, "tls", f"TLS failed ({text}); the node may not speak TLS there",
                                   f"check the scheme of {self.url_option} (http:// or https://)")
            return self._error(method, url, "tls", f"TLS failed ({text})",
                               "check validate_certs, ca_path, client_cert and client_key "
                               "(exchange_admin_* in the inventory)")
        if isinstance(reason, (TimeoutError, socket.timeout)):
            return self._error(method, url, "timeout", f"no answer within {self.request_timeout:g} s (request_timeout)",
                               "is the node up and not overloaded? raise request_timeout if it is only slow")
        if isinstance(reason, ConnectionRefusedError):
            return self._error(method, url, "unreachable", "unreachable (connection refused)",
                               f"is the node up and {self.url_option} right?")
        if isinstance(reason, socket.gaierror):
            return self._error(method, url, "unreachable", f"unreachable (cannot resolve the host: {reason})",
                               f"fix {self.url_option}")
        if isinstance(e, (http.client.HTTPException, ConnectionError)) or isinstance(reason, ConnectionError):
            return self._error(method, url, "unreachable", f"unreachable (the connection broke off: "
                               f"{_one_line(type(reason).__name__ + ' ' + str(reason))})",
                               "is the node up? it may have restarted")
        if isinstance(reason, OSError):
            return self._error(method, url, "unreachable", f"unreachable ({_one_line(str(reason))})",
                               f"is the node up and {self.url_option} right?")
        if isinstance(e, ValueError):
            return self._error(method, url, "config", f"cannot send the request ({_one_line(str(e))})",
                               f"fix {self.url_option}")
        return self._error(method, url, "unreachable", f"failed ({type(e).__name__}: {_one_line(str(e))})",
                           f"is the node up and {self.url_option} right?")


def tls_from_params(params: dict[str, Any]) -> Tls:
    """The TLS options of a module's admin_api options."""
    return Tls(validate_certs=params["validate_certs"], ca_path=params["ca_path"],
               client_cert=params["client_cert"], client_key=params["client_key"])


def client_from_params(params: dict[str, Any]) -> AdminApi:
    """An :class:`AdminApi` from a module's admin_api options (url, token, request_timeout, TLS)."""
    return AdminApi(params["url"], params["token"], request_timeout=params["request_timeout"],
                    tls=tls_from_params(params))


STATUS_FIELDS = ("component", "version", "ready")


def status_problem(url: str, status: dict[str, Any], component: str | None) -> str | None:
    """Why a ``/v1/status`` answer from ``url`` cannot be used (missing fields, another component), or None."""
    missing = [k for k in STATUS_FIELDS if k not in status]
    if missing:
        return f"{url} answered without {', '.join(missing)}; the node does not implement the admin API contract"
    if component and status.get("component") != component:
        return (f"{url} is a {status.get('component')} node, not {component}; "
                "fix exchange_admin_url or exchange_component in the inventory")
    return None


# --------------------------------------------------------------------------- fencing (docs/lease.md)


def fence_of(token: int | None, scopes: list[str] | None) -> list[dict[str, Any]]:
    """The ``fence`` a run sends with every action that changes a node: its token for each scope."""
    return [{"scope": scope, "token": token} for scope in scopes] if scopes else []


def fence_refusal(status: int, document: Any) -> dict[str, Any] | None:
    """The node's fencing refusal (``{scope, token, highest}``) when a 409 answer is one, else None."""
    fence = document.get("fence") if status == 409 and isinstance(document, dict) else None
    return fence if isinstance(fence, dict) else None


def fence_refused_msg(node: str, path: str, fence: dict[str, Any], leave: str) -> str:
    """Why the run must stop: ``node`` refused ``path`` because another run holds the lease of ``leave``."""
    return (f"{node} refused POST {path}: run's token {fence.get('token')} is lower than {fence.get('highest')} "
            f"already seen for {fence.get('scope')}: another run holds the lease; this run must stop and leave "
            f"{leave} to the lease holder")
