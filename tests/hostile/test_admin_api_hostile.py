"""Hostile or broken admin APIs against the real modules (node_info, node_action, health_gate).

Each case runs a module as Ansible runs it (its file, an args file, the collection on the
Python path) against a real local server that misbehaves, and expects one JSON result:
failed, a one-line message naming the URL and the fix, no traceback, no token anywhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.hostile.admin_api_servers import (
    STATUS,
    Handler,
    Pki,
    answer,
    hang,
    make_pki,
    redirect_to,
    serving,
)

REPO = Path(__file__).resolve().parents[2]
TOKEN = "hostile-admin-token-9f8e7d6c"


def run_module(tmp_path: Path, module: str, **args: Any) -> dict[str, Any]:
    """Run plugins/modules/<module>.py with ``args``; its one JSON result, checked for leaks and tracebacks."""
    args_file = tmp_path / f"{module}-args.json"
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {"token": TOKEN, **args}}))
    env = {**os.environ, "PYTHONPATH": str(REPO / "collections")}
    proc = subprocess.run([sys.executable, str(REPO / "plugins" / "modules" / f"{module}.py"), str(args_file)],
                          capture_output=True, text=True, timeout=60, env=env, check=False)
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output, output
    assert TOKEN not in output, "the admin token appeared in the module's output"
    result = json.loads(proc.stdout)
    if result.get("failed"):
        assert proc.returncode == 1 and "\n" not in result["msg"], result["msg"]
    return result


def failed(result: dict[str, Any], *words: str) -> str:
    assert result.get("failed") is True, result
    for w in words:
        assert w in result["msg"], result["msg"]
    return result["msg"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_redirect_to_a_collector_never_carries_the_token(tmp_path: Path) -> None:
    with serving(answer(200, STATUS)) as collector, serving(redirect_to(collector.url + "/collect")) as node:
        info = run_module(tmp_path, "node_info", url=node.url)
        action = run_module(tmp_path, "node_action", url=node.url, action="step_down")
        gate = run_module(tmp_path, "health_gate", url=node.url, component="matching-engine",
                          checks=["ready"], timeout=30)
    for r in (info, action, gate):
        failed(r, f"answered 302, redirecting to {collector.url}/collect", "the bearer token is never sent across one")
    assert gate["polls"] == 1  # waiting does not fix a redirect: the gate stops at once
    assert collector.seen == []


def test_refused_token_stops_a_gate_at_once(tmp_path: Path) -> None:
    with serving(answer(401, {"error": "missing or invalid bearer token"})) as node:
        gate = run_module(tmp_path, "health_gate", url=node.url, component="matching-engine", checks=["ready"],
                          timeout=60)
    failed(gate, "answered 401: the admin token was refused; check token")
    assert gate["polls"] == 1 and gate["passed"] is False


def test_a_node_without_the_endpoint(tmp_path: Path) -> None:
    with serving(answer(404, "<h1>Not Found</h1>", "text/html")) as node:
        failed(run_module(tmp_path, "node_info", url=node.url),
               "answered 404: the node does not implement GET /v1/status (<h1>Not Found</h1>)")


def test_a_server_error(tmp_path: Path) -> None:
    with serving(answer(500, {"error": "database is locked"})) as node:
        failed(run_module(tmp_path, "node_action", url=node.url, action="pause_withdrawals"),
               "answered 500, a server error (database is locked); the node failed; read its log")


@pytest.mark.parametrize(("body", "words"), [
    (b"<html><body>Welcome to nginx!</body></html>", "answered 200 with something that is not JSON"),
    (b"[1, 2, 3]", "answered 200 with a JSON list, not an object"),
    (b"null", "answered 200 with a JSON NoneType, not an object"),
    (b"[" * 50_000 + b"]" * 50_000, "not JSON"),
    (b'{"seq": ' + b"7" * 5000 + b"}", "not JSON"),
])
def test_answers_that_are_not_a_json_object(tmp_path: Path, body: bytes, words: str) -> None:
    with serving(answer(200, body)) as node:
        failed(run_module(tmp_path, "node_info", url=node.url), words,
               "the node does not implement the admin API contract")
        gate = run_module(tmp_path, "health_gate", url=node.url, component="matching-engine", checks=["ready"],
                          timeout=1, interval=0.2)
    failed(gate, "ready did not pass")
    assert words in gate["gates"][0]["evidence"]


def test_a_huge_answer_is_not_read_whole(tmp_path: Path) -> None:
    with serving(answer(200, b'{"pad": "' + b"x" * (5 * 1024 * 1024) + b'"}')) as node:
        failed(run_module(tmp_path, "node_info", url=node.url), "bytes, more than the 4194304 this client reads")


def test_a_hung_node_ends_in_a_timeout(tmp_path: Path) -> None:
    with serving(hang) as node:
        failed(run_module(tmp_path, "node_info", url=node.url, request_timeout=1),
               "no answer within 1 s (request_timeout)", "raise request_timeout")


def test_credentials_in_the_url_are_refused_and_not_echoed(tmp_path: Path) -> None:
    msg = failed(run_module(tmp_path, "node_info", url="http://ops:s3cr3t-pass@127.0.0.1:1"),
                 "the URL carries credentials", "remove them from url (exchange_admin_url)")
    assert "s3cr3t-pass" not in msg


def test_mutual_tls_through_the_module(tmp_path: Path, pki: Pki) -> None:
    tls = {"ca_path": str(pki.ca), "client_cert": str(pki.client_cert), "client_key": str(pki.client_key)}
    with serving(answer(200, STATUS), tls=pki.server_context()) as node:
        ok = run_module(tmp_path, "node_info", url=node.url, expect_component="matching-engine", **tls)
        no_client_cert = run_module(tmp_path, "node_info", url=node.url, ca_path=str(pki.ca))
        wrong_ca = run_module(tmp_path, "node_info", url=node.url, **{**tls, "ca_path": str(pki.other_ca)})
    assert not ok.get("failed") and ok["node"] == STATUS
    failed(no_client_cert, "client certificate", "client_cert")
    failed(wrong_ca, "TLS certificate is not trusted", "ca_path (exchange_admin_ca_path)", "validate_certs")
    assert len(node.seen) == 1  # only the request with the client certificate got through


def test_a_missing_ca_file_is_named(tmp_path: Path) -> None:
    failed(run_module(tmp_path, "node_info", url="https://127.0.0.1:1", ca_path=str(tmp_path / "ca.pem")),
           "ca_path", "is not a readable file on the controller", "exchange_admin_ca_path")


def test_promote_despite_peer_is_sent_as_the_nodes_force(tmp_path: Path) -> None:
    def standby_then_promote(h: Handler) -> None:
        if h.command == "GET":
            h.send(200, {**STATUS, "ha_role": "standby"})
        else:
            h.send(200, {"ha_role": "primary", "seq": 1, "term": 2})

    with serving(standby_then_promote) as node:
        result = run_module(tmp_path, "node_action", url=node.url, action="promote", promote_despite_peer=True)
    assert not result.get("failed") and result["after"]["ha_role"] == "primary", result
    assert json.loads(node.seen[1].body) == {"force": True}
    with serving(answer(200, STATUS)) as node:
        old = run_module(tmp_path, "node_action", url=node.url, action="promote", force=True)
    failed(old, "force")  # the old name is gone, not silently ignored


def test_a_refused_promotion_names_the_option_that_overrides_it(tmp_path: Path) -> None:
    def peer_still_primary(h: Handler) -> None:
        if h.command == "GET":
            h.send(200, {**STATUS, "ha_role": "standby"})
        else:
            h.send(409, {"error": "peer is still primary; step it down first", "peer": "me-b", "peer_term": 3})

    with serving(peer_still_primary) as node:
        result = run_module(tmp_path, "node_action", url=node.url, action="promote")
    failed(result, "refused to be promoted: peer is still primary", "(peer me-b, term 3)",
           "set promote_despite_peer=true only if the peer is down")
    assert result["node"]["peer"] == "me-b" and json.loads(node.seen[1].body) == {"force": False}


# --------------------------------------------------------------------------- fleet_info: many nodes in one task


def run_fleet_info(tmp_path: Path, **args: Any) -> tuple[dict[str, Any], str]:
    """Run plugins/modules/fleet_info.py; its JSON result and everything it printed (for leak checks)."""
    args_file = tmp_path / "fleet_info-args.json"
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    env = {**os.environ, "PYTHONPATH": str(REPO / "collections")}
    proc = subprocess.run([sys.executable, str(REPO / "plugins" / "modules" / "fleet_info.py"), str(args_file)],
                          capture_output=True, text=True, timeout=60, env=env, check=False)
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output, output
    return json.loads(proc.stdout), output


def test_fleet_info_reads_every_node_and_names_each_one_it_could_not(tmp_path: Path) -> None:
    wallet = {**STATUS, "name": "w-1", "component": "wallet-signer", "ha_role": "active"}
    with serving(answer(200, STATUS)) as good, serving(answer(500, {"error": "disk full"})) as broken, \
            serving(hang) as hung, serving(answer(200, wallet)) as wrong, \
            serving(answer(200, {"name": "x", "version": "1"})) as partial:
        nodes = [{"name": "me-good", "url": good.url, "token": TOKEN, "component": "matching-engine"},
                 {"name": "me-broken", "url": broken.url, "token": TOKEN},
                 {"name": "me-hung", "url": hung.url, "token": TOKEN},
                 {"name": "me-wrong", "url": wrong.url, "token": TOKEN, "component": "matching-engine"},
                 {"name": "me-partial", "url": partial.url, "token": TOKEN}]
        result, output = run_fleet_info(tmp_path, nodes=nodes, request_timeout=1)
        strict, strict_output = run_fleet_info(tmp_path, nodes=nodes, request_timeout=1, fail_on_error=True)
    assert TOKEN not in output and TOKEN not in strict_output
    assert not result.get("failed"), result
    # in the order given, shaped like a loop of node_info: item + node, or item + msg
    assert [r["item"] for r in result["results"]] == [n["name"] for n in nodes]
    assert result["nodes"] == {"me-good": STATUS}
    assert set(result["errors"]) == {"me-broken", "me-hung", "me-wrong", "me-partial"}
    assert "answered 500" in result["errors"]["me-broken"] and "disk full" in result["errors"]["me-broken"]
    assert "1 s" in result["errors"]["me-hung"] or "timed out" in result["errors"]["me-hung"]
    assert "is a wallet-signer node, not matching-engine" in result["errors"]["me-wrong"]
    assert "answered without component, ready" in result["errors"]["me-partial"]
    assert all("node" not in r for r in result["results"] if r["item"] != "me-good")
    # fail_on_error: the task fails, naming how many and which, and still returns what it read
    assert strict["failed"] is True and strict["msg"].startswith("4 of 5 node(s) could not be read: me-broken: ")
    assert "\n" not in strict["msg"] and strict["nodes"] == {"me-good": STATUS}
    assert good.seen[0].headers["Authorization"] == f"Bearer {TOKEN}"


def test_fleet_info_component_option_overrides_the_nodes_and_every_node_is_read_once(tmp_path: Path) -> None:
    with serving(answer(200, STATUS)) as a, serving(answer(200, {**STATUS, "name": "me-2"})) as b:
        nodes = [{"name": "me-1", "url": a.url, "token": TOKEN, "component": "matching-engine"},
                 {"name": "me-2", "url": b.url, "token": TOKEN, "component": "matching-engine"}]
        result, output = run_fleet_info(tmp_path, nodes=nodes, component="wallet-signer", concurrency=1)
    assert set(result["errors"]) == {"me-1", "me-2"}, result
    assert (len(a.seen), len(b.seen)) == (1, 1)
    assert TOKEN not in output


def _by_path(routes: dict[str, Any]) -> Any:
    """A node that answers each path from ``routes`` (a behaviour), 404 elsewhere."""
    def behaviour(h: Handler) -> None:
        routes.get(h.path.split("?")[0], answer(404, {"error": "not found"}))(h)
    return behaviour


def test_fleet_info_sbom_reads_each_nodes_sbom_and_a_node_without_one_is_an_error(tmp_path: Path) -> None:
    from testbed.sbom import release_sbom

    sbom = release_sbom("matching-engine", "1.4.2")
    good = _by_path({"/v1/status": answer(200, STATUS), "/v1/sbom": answer(200, sbom)})
    none = _by_path({"/v1/status": answer(200, STATUS)})
    spdx = _by_path({"/v1/status": answer(200, STATUS), "/v1/sbom": answer(200, {"spdxVersion": "SPDX-2.3"})})
    with serving(good) as a, serving(none) as b, serving(spdx) as c:
        nodes = [{"name": "me-1", "url": a.url, "token": TOKEN}, {"name": "me-2", "url": b.url, "token": TOKEN},
                 {"name": "me-3", "url": c.url, "token": TOKEN}]
        result, output = run_fleet_info(tmp_path, nodes=nodes, sbom=True)
        plain = run_fleet_info(tmp_path, nodes=nodes[:1])[0]
    assert TOKEN not in output
    assert result["sboms"] == {"me-1": sbom} and result["results"][0]["sbom"] == sbom
    # a node whose SBOM cannot be read is never taken as exposed to nothing: it is an error, named
    assert set(result["errors"]) == {"me-2", "me-3"}, result
    assert result["errors"]["me-2"].startswith("no SBOM: ") and "404" in result["errors"]["me-2"]
    assert "not a CycloneDX SBOM" in result["errors"]["me-3"]
    assert [s.path for s in a.seen] == ["/v1/status", "/v1/sbom", "/v1/status"]  # without sbom: status only
    assert "sboms" not in plain and "sbom" not in plain["results"][0]


@pytest.mark.parametrize(("args", "words"), [
    ({"nodes": [{"name": "a", "url": "http://127.0.0.1:1", "token": TOKEN}] * 2}, "nodes names a more than once"),
    ({"nodes": [], "concurrency": 0}, "concurrency=0: give 1 or more"),
    ({"nodes": [{"name": "a", "url": "http://127.0.0.1:1"}]}, "token"),
])
def test_fleet_info_refuses_bad_options_with_one_line(tmp_path: Path, args: dict[str, Any], words: str) -> None:
    result, output = run_fleet_info(tmp_path, **args)
    assert result.get("failed") is True and words in result["msg"] and "\n" not in result["msg"], result
    assert TOKEN not in output


def test_fleet_info_mutual_tls_per_node(tmp_path: Path, pki: Pki) -> None:
    tls = {"ca_path": str(pki.ca), "client_cert": str(pki.client_cert), "client_key": str(pki.client_key)}
    with serving(answer(200, STATUS), tls=pki.server_context()) as node:
        result, output = run_fleet_info(tmp_path, nodes=[
            {"name": "with-cert", "url": node.url, "token": TOKEN, **tls},
            {"name": "without", "url": node.url, "token": TOKEN, "ca_path": str(pki.ca)}])
    assert result["nodes"] == {"with-cert": STATUS}
    assert "client_cert" in result["errors"]["without"]
    assert len(node.seen) == 1 and TOKEN not in output
