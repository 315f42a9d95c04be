"""The admin-API client against real local HTTP and HTTPS servers (no mocks).

Servers and the private PKI come from tests/hostile/admin_api_servers.py.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from ansible_collections.exchangeops.patching.plugins.module_utils._admin_api import (
    AdminApi,
    AdminApiError,
    Tls,
    admin_api_argument_spec,
    client_from_params,
    redact_url,
)

from tests.hostile.admin_api_servers import (
    STATUS,
    Pki,
    answer,
    drip,
    endless,
    hang,
    make_pki,
    redirect_to,
    serving,
)

TOKEN = "unit-admin-token-0123456789"


def api(url: str, **kw) -> AdminApi:
    return AdminApi(url, TOKEN, **kw)


def failure(client: AdminApi, path: str = "/v1/status", method: str = "GET") -> AdminApiError:
    with pytest.raises(AdminApiError) as caught:
        if method == "GET":
            client.get_json(path)
        else:
            client.post_json(path, {"x": 1})
    assert TOKEN not in str(caught.value)
    assert "\n" not in str(caught.value)
    return caught.value


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


# --------------------------------------------------------------------------- plain HTTP


def test_status_is_read_with_the_bearer_token_and_nothing_else() -> None:
    with serving(answer(200, STATUS)) as server:
        assert api(server.url + "/").get_json("/v1/status") == STATUS
    [seen] = server.seen
    assert seen.path == "/v1/status" and seen.headers["Authorization"] == f"Bearer {TOKEN}"
    assert seen.headers.get("Accept-Encoding", "identity") == "identity" and "Cookie" not in seen.headers


def test_post_sends_json_and_returns_accepted_statuses() -> None:
    with serving(answer(409, {"error": "peer is still primary", "peer": "me-b"})) as server:
        answer_ = api(server.url).post_json("/v1/ha/promote", {"force": False}, accept=(200, 409))
        assert (answer_.status, answer_.document["peer"]) == (409, "me-b")
        e = failure(api(server.url), "/v1/ha/promote", method="POST")
    assert e.kind == "http" and e.status == 409 and e.document == {"error": "peer is still primary", "peer": "me-b"}
    assert "answered 409 (peer is still primary)" in str(e)
    assert server.seen[0].body == b'{"force": false}'
    assert server.seen[0].headers["Content-Type"] == "application/json"


def test_metrics_come_back_as_text() -> None:
    with serving(answer(200, "exchange_requests_total 3\n", "text/plain")) as server:
        assert api(server.url).get_text("/metrics") == "exchange_requests_total 3\n"


def test_a_redirect_is_not_followed_and_the_token_never_reaches_its_target() -> None:
    with serving(answer(200, STATUS)) as target:
        for status in (301, 302, 303, 307, 308):
            with serving(redirect_to(target.url + "/v1/status", status)) as first:
                e = failure(api(first.url))
                posted = failure(api(first.url), "/v1/ha/step-down", method="POST")
                assert first.seen[0].headers["Authorization"] == f"Bearer {TOKEN}"
            assert e.kind == "redirect" and e.permanent and e.status == status
            assert f"redirecting to {target.url}/v1/status" in str(e)
            assert "the bearer token is never sent across one" in str(e)
            assert posted.kind == "redirect"
    assert all("Authorization" not in s.headers for s in target.seen)
    assert target.seen == []


def test_a_redirect_location_with_credentials_is_redacted() -> None:
    with serving(redirect_to("http://admin:hunter2@10.0.0.1/steal")) as server:
        e = failure(api(server.url))
    assert "hunter2" not in str(e) and "http://***@10.0.0.1/steal" in str(e)


@pytest.mark.parametrize(("status", "kind", "words"), [
    (401, "refused", "answered 401: the admin token was refused; check token"),
    (403, "refused", "answered 403: the admin token was not allowed; check token"),
    (404, "not_found", "answered 404: the node does not implement GET /v1/status"),
    (500, "server", "answered 500, a server error (boom); the node failed; read its log"),
    (503, "server", "answered 503, a server error (boom)"),
    (418, "http", "answered 418 (boom)"),
])
def test_error_statuses_name_the_status_and_the_fix(status: int, kind: str, words: str) -> None:
    with serving(answer(status, {"error": "boom"})) as server:
        e = failure(api(server.url))
    assert e.kind == kind and e.status == status and words in str(e), str(e)
    assert str(e).startswith(f"GET {server.url}/v1/status: ")
    assert e.permanent is (kind == "refused")


@pytest.mark.parametrize(("body", "kind", "words"), [
    (b"<html>login</html>", "not_json", "answered 200 with something that is not JSON"),
    (b"\xff\xfe\x00garbage", "not_json", "not JSON"),
    (b"[1, 2, 3]", "not_object", "answered 200 with a JSON list, not an object"),
    (b'"a string"', "not_object", "a JSON str, not an object"),
    (b"null", "not_object", "a JSON NoneType, not an object"),
    (b"[" * 100_000 + b"]" * 100_000, "not_json", "not JSON"),
    (b'{"seq": ' + b"9" * 5000 + b"}", "not_json", "not JSON"),
])
def test_answers_that_are_not_a_json_object_are_refused(body: bytes, kind: str, words: str) -> None:
    with serving(answer(200, body)) as server:
        e = failure(api(server.url))
    assert e.kind == kind and words in str(e), str(e)
    assert "the node does not implement the admin API contract" in str(e)


def test_an_echoed_token_never_reaches_the_message() -> None:
    with serving(answer(500, {"error": f"bad header Bearer {TOKEN}"})) as server:
        e = failure(api(server.url))
    assert "Bearer ********" in str(e)


def test_oversized_answers_are_capped_with_or_without_a_content_length() -> None:
    with serving(answer(200, {"pad": "x" * 5000})) as server:
        e = failure(api(server.url, max_body=1000))
    assert e.kind == "too_large" and "more than the 1000 this client reads" in str(e)
    with serving(endless) as server:
        e = failure(api(server.url, max_body=200_000))
    assert e.kind == "too_large" and "more than 200000 bytes; stopped reading" in str(e)


def test_a_hung_server_and_a_dripping_server_end_in_a_timeout() -> None:
    with serving(hang) as server:
        e = failure(api(server.url, request_timeout=0.5))
    assert e.kind == "timeout" and "no answer within 0.5 s (request_timeout)" in str(e)
    with serving(drip) as server:
        e = failure(api(server.url, request_timeout=0.5))
    assert e.kind == "timeout" and "took longer than 0.5 s (request_timeout)" in str(e)


def test_a_closed_port_is_unreachable() -> None:
    with serving(answer(200, STATUS)) as server:
        url = server.url
    e = failure(api(url))
    assert e.kind == "unreachable" and "unreachable (connection refused); is the node up" in str(e)


@pytest.mark.parametrize(("url", "words"), [
    ("ftp://127.0.0.1/", "not an http:// or https:// URL with a host"),
    ("file:///etc/passwd", "not an http:// or https:// URL with a host"),
    ("http://admin:pw@127.0.0.1:1", "carries credentials"),
    ("http://127.0.0.1:1/?x=1", "has a query or fragment"),
    ("", "not an http:// or https:// URL"),
])
def test_bad_urls_are_refused_before_any_request(url: str, words: str) -> None:
    with pytest.raises(AdminApiError) as caught:
        api(url)
    assert caught.value.kind == "config" and words in str(caught.value), str(caught.value)
    assert "url (exchange_admin_url)" in str(caught.value)
    assert "pw@" not in str(caught.value)


def test_bad_tls_files_and_options_are_refused_before_any_request(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(AdminApiError, match=r"ca_path .*nope.pem is not a readable file.*exchange_admin_ca_path"):
        api("https://127.0.0.1:1", tls=Tls(ca_path=str(missing)))
    with pytest.raises(AdminApiError, match=r"client_key is set without client_cert"):
        api("https://127.0.0.1:1", tls=Tls(client_key=str(missing)))
    with pytest.raises(AdminApiError, match=r"request_timeout must be > 0"):
        api("https://127.0.0.1:1", request_timeout=0)
    with pytest.raises(AdminApiError, match=r"the admin token is empty"):
        AdminApi("https://127.0.0.1:1", "")


def test_the_error_pickles_and_the_url_redaction() -> None:
    e = AdminApiError("GET", "http://x/v1/status", "server", "answered 500", "read its log", 500, {"error": "x"})
    again = pickle.loads(pickle.dumps(e))
    assert str(again) == str(e) == "GET http://x/v1/status: answered 500; read its log"
    assert again.document == {"error": "x"}
    assert redact_url("https://u:p@h:1/a?b") == "https://***@h:1/a?b"
    assert redact_url("https://h:1/a") == "https://h:1/a"


def test_argument_spec_and_client_from_params() -> None:
    spec = admin_api_argument_spec()
    assert spec["token"]["no_log"] is True and spec["validate_certs"]["default"] is True
    assert set(spec) == {"url", "token", "request_timeout", "validate_certs", "ca_path", "client_cert", "client_key"}
    params = {k: v.get("default") for k, v in spec.items()} | {"url": "https://127.0.0.1:1/", "token": TOKEN}
    client = client_from_params(params)
    assert client.base == "https://127.0.0.1:1" and client.tls == Tls() and client.request_timeout == 10


# --------------------------------------------------------------------------- TLS with a private CA


def test_mutual_tls_with_the_private_ca_and_a_client_certificate(pki: Pki) -> None:
    with serving(answer(200, STATUS), tls=pki.server_context()) as server:
        tls = Tls(ca_path=str(pki.ca), client_cert=str(pki.client_cert), client_key=str(pki.client_key))
        assert api(server.url, tls=tls).get_json("/v1/status") == STATUS
        combined = Tls(ca_path=str(pki.ca), client_cert=str(pki.client_combined))
        assert api(server.url, tls=combined).get_json("/v1/status") == STATUS
    assert [s.headers["Authorization"] for s in server.seen] == [f"Bearer {TOKEN}"] * 2


def test_without_the_client_certificate_the_node_refuses_the_handshake(pki: Pki) -> None:
    with serving(answer(200, STATUS), tls=pki.server_context()) as server:
        e = failure(api(server.url, tls=Tls(ca_path=str(pki.ca)), request_timeout=5))
    # TLS 1.3: the node's alert may arrive, or the connection just closes; both name the fix
    assert e.kind in ("tls", "unreachable")
    assert "client certificate" in str(e) and "client_cert" in str(e), str(e)
    assert server.seen == []  # no request, so no token, went out


def test_an_untrusted_server_certificate_names_validate_certs_and_ca_path(pki: Pki) -> None:
    tls = Tls(ca_path=str(pki.other_ca), client_cert=str(pki.client_cert), client_key=str(pki.client_key))
    with serving(answer(200, STATUS), tls=pki.server_context()) as server:
        e = failure(api(server.url, tls=tls))
        default_store = failure(api(server.url))
    for err in (e, default_store):
        assert err.kind == "tls" and "TLS certificate is not trusted" in str(err), str(err)
        assert "ca_path (exchange_admin_ca_path)" in str(err) and "validate_certs" in str(err)
    assert server.seen == []


def test_validate_certs_false_skips_the_server_check(pki: Pki) -> None:
    with serving(answer(200, STATUS), tls=pki.server_context(require_client_cert=False)) as server:
        assert api(server.url, tls=Tls(validate_certs=False)).get_json("/v1/status") == STATUS


def test_plain_http_to_a_tls_port_says_so(pki: Pki) -> None:
    with serving(answer(200, STATUS), tls=pki.server_context(require_client_cert=False)) as server:
        e = failure(api(server.url.replace("https://", "http://"), request_timeout=2))
    assert e.kind in ("unreachable", "timeout"), str(e)
