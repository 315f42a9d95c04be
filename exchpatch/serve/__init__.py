"""`exchpatch serve`: the chatops service (Slack and a REST API for other bots), docs/chatops.md.

    exchpatch serve --config /etc/exchpatch/serve.yml [--host 127.0.0.1] [--port 8450]
    exchpatch serve --config FILE --openapi        # print the OpenAPI document (docs/chatops-openapi.json)
    exchpatch serve --hash-token < token-file      # the SHA-256 to put in an identity's token_sha256

Its packages are the ``serve`` extra (``pip install 'exchpatch[serve]'``), imported only here.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
GRACEFUL_REQUESTS_S = 5


def cmd_serve(args: argparse.Namespace) -> tuple[int, Any, str]:
    from exchpatch.cli import CliError

    if args.hash_token:
        from exchpatch.serve.config import hash_token

        token = sys.stdin.readline().strip()
        if len(token) < 32:
            raise CliError("give the token on standard input (32 characters or more, e.g. from "
                           "`python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`)", EXIT_BAD_INPUT)
        digest = hash_token(token)
        return EXIT_OK, {"token_sha256": digest}, digest
    if not args.config:
        raise CliError("give --config FILE (docs/chatops/serve.example.yml)", EXIT_BAD_INPUT)
    try:
        import uvicorn

        from exchpatch.serve.app import create_app
        from exchpatch.serve.config import load_config
        from exchpatch.serve.store import StoreError
    except ImportError as e:
        raise CliError(f"exchpatch serve needs its packages ({e.name} is missing): pip install 'exchpatch[serve]'",
                       EXIT_FAILED) from None
    config = load_config(args.config)
    host = args.host or config.host
    port = config.port if args.port is None else args.port
    if args.host and args.host != config.host:
        import ipaddress

        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            raise CliError(f"--host {host!r} is not an IP address", EXIT_BAD_INPUT) from None
        if not loopback:
            raise CliError(f"--host {host} is not a loopback address; set listen.host and listen.allow_public in "
                           "the config if you really mean it", EXIT_BAD_INPUT)
    try:
        app = create_app(config)
    except StoreError as e:
        raise CliError(str(e), EXIT_FAILED) from None
    if args.openapi:
        doc = app.openapi()
        return EXIT_OK, doc, json.dumps(doc, indent=2, sort_keys=True)
    # uvicorn's access log names method, path and status: no body, no header, so no secret
    # On SIGTERM open requests get a few seconds (an event stream would otherwise hold the stop for as long as
    # its run lasts); then the lifespan's shutdown asks the running rollouts to stop safely (cancel_grace).
    uvicorn.run(app, host=host, port=port, log_level="info", proxy_headers=True, forwarded_allow_ips="127.0.0.1",
                timeout_graceful_shutdown=GRACEFUL_REQUESTS_S)
    return EXIT_OK, {"stopped": True}, "exchpatch serve stopped"


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register `exchpatch serve` on the driver's subparsers."""
    p = sub.add_parser("serve", parents=[common],
                       help="the chatops service: Slack /patch and a REST API (docs/chatops.md)")
    p.add_argument("--config", metavar="FILE", help="the service's config (docs/chatops/serve.example.yml)")
    p.add_argument("--host", metavar="ADDR", help="listen address (default: the config's, 127.0.0.1)")
    p.add_argument("--port", type=int, metavar="PORT", help="listen port (default: the config's, 8450)")
    p.add_argument("--openapi", action="store_true", help="print the OpenAPI document and exit")
    p.add_argument("--hash-token", action="store_true", help="read a token on stdin, print its SHA-256 and exit")
    p.set_defaults(func=cmd_serve)
