"""Real local HTTP(S) servers and a private PKI for the admin-API client tests.

A :class:`Server` is ``http.server`` on 127.0.0.1 (port chosen by the kernel) in a thread,
answering every request with a behaviour function and recording what it received, so that
a test can check, say, that a server reached through a redirect never saw the token.
:func:`make_pki` writes a private CA, a server certificate for 127.0.0.1, a client
certificate and an unrelated CA with ``cryptography`` into a folder.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Behaviour = Callable[["Handler"], None]


@dataclass
class Seen:
    """One request a server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.owner.seen.append(Seen(self.command, self.path, dict(self.headers.items()), body))
        # the client hangs up, as it should, on an endless or oversized answer
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self.server.owner.behaviour(self)

    do_GET = do_POST = _handle

    def send(self, status: int, body: bytes | str | dict | list, content_type: str = "application/json",
             headers: dict[str, str] | None = None) -> None:
        if isinstance(body, dict | list):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        pass


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    owner: Server

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a refused TLS handshake is what some tests want; no noise on stderr


@dataclass
class Server:
    behaviour: Behaviour
    tls: ssl.SSLContext | None = None
    seen: list[Seen] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)  # set at stop: hung handlers return

    def start(self) -> Server:
        self.httpd = _HTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.owner = self
        if self.tls is not None:
            # the handshake happens in the handler's thread, not in the accepting loop
            self.httpd.socket = self.tls.wrap_socket(self.httpd.socket, server_side=True,
                                                     do_handshake_on_connect=False)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        return self

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"{'https' if self.tls else 'http'}://{host}:{port}"

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@contextmanager
def serving(behaviour: Behaviour, tls: ssl.SSLContext | None = None) -> Iterator[Server]:
    server = Server(behaviour, tls).start()
    try:
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------- behaviours


def answer(status: int, body: bytes | str | dict | list, content_type: str = "application/json",
           headers: dict[str, str] | None = None) -> Behaviour:
    return lambda h: h.send(status, body, content_type, headers)


def redirect_to(location: str, status: int = 302) -> Behaviour:
    return answer(status, b"", "text/plain", {"Location": location})


def hang(h: Handler) -> None:
    """Accept the request, never answer (until the test stops the server)."""
    h.server.owner.release.wait(60)


def drip(h: Handler) -> None:
    """Answer 200 and then one byte at a time, forever (until the test stops the server)."""
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    h.end_headers()
    h.wfile.write(b'{"pad": "')
    h.wfile.flush()
    while not h.server.owner.release.wait(0.05):
        h.wfile.write(b"x")
        h.wfile.flush()


def endless(h: Handler) -> None:
    """Answer 200 without a Content-Length and stream data until the client hangs up."""
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    h.send_header("Connection", "close")
    h.end_headers()
    h.wfile.write(b'{"pad": "')
    chunk = b"x" * 65536
    while not h.server.owner.release.is_set():
        h.wfile.write(chunk)


STATUS = {"name": "me-1", "component": "matching-engine", "version": "1.0.0", "ready": True, "ha_role": "primary",
          "seq": 1, "state_hash": "ab" * 32}


# --------------------------------------------------------------------------- a private PKI


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_combined: Path  # certificate and key in one file
    other_ca: Path  # a CA that signed nothing here

    def server_context(self, require_client_cert: bool = True) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.server_cert, self.server_key)
        if require_client_cert:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(self.ca)
        return ctx


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, issuer_key: ec.EllipticCurvePrivateKey,
          ca: bool, usage: x509.ObjectIdentifier | None = None) -> bytes:
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
            decipher_only=False), critical=True)
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                                        critical=False)
    if usage is ExtendedKeyUsageOID.SERVER_AUTH:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, other_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _n in range(4))
    files = {
        "ca.pem": _cert("exchange admin CA", ca_key, "exchange admin CA", ca_key, ca=True),
        "other-ca.pem": _cert("some other CA", other_key, "some other CA", other_key, ca=True),
        "server.pem": _cert("127.0.0.1", server_key, "exchange admin CA", ca_key, ca=False,
                            usage=ExtendedKeyUsageOID.SERVER_AUTH),
        "server.key": _pem_key(server_key),
        "client.pem": _cert("patching controller", client_key, "exchange admin CA", ca_key, ca=False,
                            usage=ExtendedKeyUsageOID.CLIENT_AUTH),
        "client.key": _pem_key(client_key),
    }
    files["client-combined.pem"] = files["client.pem"] + files["client.key"]
    for name, data in files.items():
        (folder / name).write_bytes(data)
        (folder / name).chmod(0o600)
    return Pki(ca=folder / "ca.pem", server_cert=folder / "server.pem", server_key=folder / "server.key",
               client_cert=folder / "client.pem", client_key=folder / "client.key",
               client_combined=folder / "client-combined.pem", other_ca=folder / "other-ca.pem")
