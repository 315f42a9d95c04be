# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""HAProxy's runtime API (the stats socket at ``level admin``), as the switchover needs it.

One command line per connection (HAProxy closes a non-interactive connection after answering);
several commands joined by ``;`` run one after the other in that one connection, so a flip of
two servers lands between two health checks. A command that worked answers nothing; any text
is HAProxy's error and becomes a :class:`HaproxyError`.

Pure and stdlib-only: it runs wherever the module runs (the load balancer host).
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass

TCP_PREFIX = "tcp://"
RECV_SIZE = 65536
MAX_ANSWER = 4 * 1024 * 1024

# srv_op_state of `show servers state` (management guide, format version 1)
OP_STATES = {0: "DOWN", 1: "STARTING", 2: "UP", 3: "STOPPING"}
# srv_admin_state bits that keep a server out of load balancing whatever its health
ADMIN_MAINT = 0x01 | 0x02 | 0x04 | 0x20
ADMIN_DRAIN = 0x08 | 0x10

_NAME = re.compile(r"^[A-Za-z0-9_.:-]+$")


class HaproxyError(Exception):
    """The runtime API could not be reached or refused a command; ``str()`` names the socket and the fix."""


@dataclass(frozen=True)
class ServerState:
    """One server of a backend, from ``show servers state``."""

    name: str
    op_state: int
    admin_state: int

    @property
    def health(self) -> str:
        return OP_STATES.get(self.op_state, str(self.op_state))

    @property
    def admin(self) -> str:
        if self.admin_state & ADMIN_MAINT:
            return "maint"
        if self.admin_state & ADMIN_DRAIN:
            return "drain"
        return "ready"

    @property
    def takes_traffic(self) -> bool:
        return self.admin == "ready" and self.op_state in (1, 2)

    def as_dict(self) -> dict[str, object]:
        return {"health": self.health, "admin": self.admin, "takes_traffic": self.takes_traffic}


def check_name(kind: str, name: str) -> str:
    """``name`` when it is a plain HAProxy backend or server name; ValueError otherwise (no CLI injection)."""
    if not name or not _NAME.match(name):
        raise ValueError(f"{kind} {name!r} is not a plain HAProxy name (letters, digits, _ . : -)")
    return name


def parse_servers_state(text: str) -> dict[str, ServerState]:
    """``{server: ServerState}`` from the answer of ``show servers state <backend>`` (format version 1)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    header: list[str] | None = None
    servers: dict[str, ServerState] = {}
    for line in lines:
        if line.startswith("#"):
            header = line.lstrip("# ").split()
            continue
        if header is None:
            continue  # the format version line
        row = dict(zip(header, line.split()))
        try:
            servers[row["srv_name"]] = ServerState(row["srv_name"], int(row["srv_op_state"]),
                                                   int(row["srv_admin_state"]))
        except (KeyError, ValueError):
            continue
    if header is None or not {"srv_name", "srv_op_state", "srv_admin_state"} <= set(header):
        raise HaproxyError(f"show servers state answered without the expected header: {text[:120]!r}")
    return servers


class RuntimeApi:
    """HAProxy's runtime API at ``address``: a Unix socket path, or ``tcp://host:port``."""

    def __init__(self, address: str, timeout: float = 2.0) -> None:
        self.address = address
        self.timeout = timeout
        if address.startswith(TCP_PREFIX):
            host, sep, port = address[len(TCP_PREFIX):].rpartition(":")
            if not sep or not host or not port.isdigit():
                raise HaproxyError(f"haproxy_socket {address!r} is not tcp://host:port; fix haproxy_socket")
            self._target: str | tuple[str, int] = (host.strip("[]"), int(port))
        elif address.startswith("/"):
            self._target = address
        else:
            raise HaproxyError(f"haproxy_socket {address!r} is neither an absolute Unix socket path nor "
                               "tcp://host:port; fix haproxy_socket (exchange_haproxy_socket of the load balancer)")

    def command(self, line: str) -> str:
        """Send one command line and return HAProxy's whole answer."""
        family = socket.AF_UNIX if isinstance(self._target, str) else socket.AF_INET6 \
            if ":" in self._target[0] else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.settimeout(self.timeout)
                s.connect(self._target)
                s.sendall(line.encode() + b"\n")
                chunks: list[bytes] = []
                size = 0
                while True:
                    chunk = s.recv(RECV_SIZE)
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > MAX_ANSWER:
                        raise HaproxyError(f"HAProxy runtime API {self.address} answered more than {MAX_ANSWER} "
                                           "bytes; is haproxy_socket HAProxy's stats socket?")
                    chunks.append(chunk)
        except OSError as e:
            raise HaproxyError(f"HAProxy runtime API {self.address} unreachable ({type(e).__name__}: {e}); "
                               "check haproxy_socket and that the module runs where the socket is "
                               "(the load balancer host)") from None
        return b"".join(chunks).decode("utf-8", "replace")

    def servers_state(self, backend: str) -> dict[str, ServerState]:
        answer = self.command(f"show servers state {check_name('backend', backend)}")
        if "Can't find backend" in answer or "Unknown" in answer:
            raise HaproxyError(f"HAProxy has no backend {backend!r} ({answer.strip()[:120]}); "
                               "fix haproxy_backend (exchange_haproxy_backend)")
        return parse_servers_state(answer)

    def run(self, commands: list[str]) -> None:
        """Run ``commands`` in one connection; HAProxyError with its answer when any of them said anything."""
        answer = self.command("; ".join(commands)).strip()
        if answer:
            raise HaproxyError(f"HAProxy runtime API {self.address} refused {'; '.join(commands)!r}: "
                               f"{answer[:300]}; the socket needs 'level admin' and the names must match the "
                               "backend's servers")


def flip_commands(backend: str, serve: str, stop: str) -> list[str]:
    """Commands that send ``backend``'s traffic to ``serve`` now and none to ``stop``.

    ``health`` is forced, not the admin state: the health checks keep running and keep
    judging both servers (``?role=primary``), so a server that is not primary any more
    falls back DOWN by itself, and drain/ready from community.general.haproxy still compose.
    """
    backend = check_name("backend", backend)
    return [f"set server {backend}/{check_name('server', serve)} health up",
            f"set server {backend}/{check_name('server', stop)} health down"]
