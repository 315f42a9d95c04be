"""`exchpatch serve`'s own surface, against one real service under uvicorn (no fleet): health, Prometheus metrics,
the OpenAPI document checked in as docs/chatops-openapi.json, the runs API, and the config errors that stop the
service before it listens."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.serve.chat import EXCHPATCH, REPO, command_body, slack_headers, write_config

METRICS = {
    "exchpatch_serve_requests": "counter",
    "exchpatch_serve_refusals": "counter",
    "exchpatch_serve_runs": "counter",
    "exchpatch_serve_runs_in_flight": "gauge",
    "exchpatch_serve_ack_seconds": "histogram",
}
RUN_FIELDS = {"id", "kind", "requester", "source", "params", "state", "outcome", "message", "job_id", "approval",
              "created_at", "started_at", "finished_at", "result"}


def test_the_tests_sign_as_slack_documents():
    """Slack's worked example (docs.slack.dev, verifying requests from Slack): our signer gives its signature."""
    body = (b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&"
            b"channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&"
            b"response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskX"
            b"aIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c")
    assert slack_headers(body, "8f742231b10e8888abcd99yyyzzz85a5", 1531420618) == {
        "X-Slack-Request-Timestamp": "1531420618",
        "X-Slack-Signature": "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"}


def test_healthz_answers_without_auth(service_no_fleet):
    response = service_no_fleet.client.get("/healthz")
    assert response.status_code == 200, response.text
    assert response.json()["ok"] is True


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_are_prometheus_text_and_count_a_refusal(service_no_fleet):
    svc = service_no_fleet
    first = svc.client.get("/metrics")
    assert first.status_code == 200 and first.headers["content-type"].startswith("text/plain"), first.headers
    families = {f.name: f.type for f in text_string_to_metric_families(first.text)}
    for name, kind in METRICS.items():
        assert families.get(name) == kind, f"{name} ({kind}) is not exported: {families}"
    before = samples(first.text)

    body = command_body("deploy matching-engine-1.4.3 check", response_url=svc.next_hook())
    refused = svc.slack_post("/slack/commands", body, headers=slack_headers(body, "not-the-secret"))
    assert refused.status_code == 401, refused.text
    after = samples(svc.client.get("/metrics").text)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("exchpatch_serve_refusals_total", reason="bad_signature") == 1
    assert delta("exchpatch_serve_requests_total", route="/slack/commands", status="401") == 1
    assert delta("exchpatch_serve_ack_seconds_count") == 1
    assert after[("exchpatch_serve_runs_in_flight", ())] == 0


def test_openapi_is_the_checked_in_document(service_no_fleet):
    checked_in = json.loads((REPO / "docs" / "chatops-openapi.json").read_text())
    served = service_no_fleet.client.get("/openapi.json")
    assert served.status_code == 200
    assert served.json() == checked_in, "docs/chatops-openapi.json is stale: regenerate it with exchpatch serve " \
        "--config FILE --openapi > docs/chatops-openapi.json"
    for path in ("/v1/deployments", "/v1/rollbacks", "/v1/runs", "/v1/runs/{run_id}", "/v1/runs/{run_id}/events",
                 "/v1/runs/{run_id}/cancel", "/v1/approvals", "/v1/plan", "/v1/status", "/v1/history", "/healthz"):
        assert path in checked_in["paths"], f"{path} is not documented"
    printed = subprocess.run([str(EXCHPATCH), "serve", "--config", str(service_no_fleet.config), "--openapi"],
                             capture_output=True, text=True, timeout=60, check=False, env=service_no_fleet.env)
    assert printed.returncode == 0, printed.stderr
    assert json.loads(printed.stdout) == checked_in


def test_an_unknown_run_is_404_naming_it_and_where_runs_are_listed(service_no_fleet):
    svc = service_no_fleet
    unknown = "20260101T000000-0000dead"
    chat = svc.command(f"cancel {unknown}")
    assert chat.status_code == 200 and chat.json()["refused"] == "not_found" and unknown in chat.json()["text"], \
        chat.text
    wrong = []
    for method, path, who, body in (("GET", f"/v1/runs/{unknown}", "carol", None),
                                    ("GET", f"/v1/runs/{unknown}/events", "carol", None),
                                    ("POST", f"/v1/runs/{unknown}/cancel", "alice", None),
                                    ("POST", "/v1/approvals", "bob", {"run_id": unknown, "decision": "deny"})):
        response = svc.api(method, path, who, json=body)
        assert response.status_code == 404 and response.json()["refused"] == "not_found", response.text
        error = response.json()["error"]
        # the REST caller's fix: GET /v1/runs lists them (/patch status shows the fleet, not the service's runs)
        if unknown not in error or "/v1/runs" not in error:
            wrong.append(f"{method} {path}: {error!r}")
    assert not wrong, "404 messages that do not name the run or GET /v1/runs:\n" + "\n".join(wrong)


def test_runs_are_listed_shown_and_streamed(service_no_fleet):
    svc = service_no_fleet
    assert svc.api("GET", "/v1/runs", "carol").json() == {"runs": []}
    # a run asked for in Slack: it waits for an approver, is listed, shown and streamed without its response_url
    asked = svc.command("deploy wallet-signer-2.3.1 emergency because CVE-2026-0001 is exploited", user_id="U0DAVE")
    assert asked.status_code == 200 and "blocks" in asked.json(), asked.text
    runs = svc.api("GET", "/v1/runs", "carol").json()["runs"]
    assert len(runs) == 1 and set(runs[0]) >= RUN_FIELDS, runs
    run = runs[0]
    assert (run["kind"], run["requester"], run["source"], run["state"]) == ("deploy", "dave", "slack",
                                                                            "awaiting_approval"), run
    assert run["approval"]["kinds"] == ["emergency"] and run["approval"]["approver"] is None, run
    assert svc.api("GET", f"/v1/runs/{run['id']}", "carol").json() == run
    canceled = svc.api("POST", f"/v1/runs/{run['id']}/cancel", "alice")
    assert canceled.status_code == 202 and canceled.json()["state"] == "canceled", canceled.text
    with svc.client.stream("GET", f"/v1/runs/{run['id']}/events", timeout=20,
                           headers={"Authorization": f"Bearer {svc.tokens['carol']}"}) as stream:
        assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
        text = stream.read().decode()  # the run has ended: the stream ends after its stored events
    kinds = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("event:")]
    assert kinds[0] == "requested" and "approval_requested" in kinds and kinds[-1] == "canceled", text
    for body in (svc.api("GET", "/v1/runs", "carol").text, svc.api("GET", f"/v1/runs/{run['id']}", "carol").text,
                 text):
        assert asked.response_url not in body, "a run shows its Slack response_url (a bearer credential of Slack's)"


# --------------------------------------------------------------------------- config errors: exit 2 before listening


@pytest.fixture(scope="module")
def config_folder(tmp_path_factory, keys):
    folder = tmp_path_factory.mktemp("serve-bad-config")
    yield folder, keys
    shutil.rmtree(folder, ignore_errors=True)


def bad_config(folder: Path, keys, **overrides) -> Path:
    path = write_config(folder, keys=keys, **overrides)[0]
    return path


@pytest.mark.parametrize(("case", "needles"), [
    ("missing-secret-file", ["slack.signing_secret_file", "no such file", "check the path"]),
    ("no-secret", ["slack", "signing_secret_file", "signing_secret_env"]),
    ("inline-secret", ["slack.signing_secret", "signing_secret_file", "signing_secret_env"]),
    ("readable-secret-file", ["slack.signing_secret_file", "chmod 600"]),
    ("unknown-role", ["identities.carol.roles", "'admin'", "viewer, operator, approver"]),
    ("public-listen-address", ["listen.host", "0.0.0.0", "loopback", "allow_public"]),
    ("public---host", ["--host", "0.0.0.0", "loopback", "allow_public"]),
])
def test_a_bad_config_exits_2_naming_the_key_and_the_fix(config_folder, case, needles):
    base, keys = config_folder
    folder = base / case
    extra: list[str] = []
    if case == "missing-secret-file":
        path = bad_config(folder, keys, slack={"signing_secret_file": str(folder / "no-such-secret")})
    elif case == "no-secret":
        path = bad_config(folder, keys, slack={"signing_secret_file": None})
    elif case == "inline-secret":
        path = bad_config(folder, keys, slack={"signing_secret_file": None, "signing_secret": "8f742231b10e8888"})
    elif case == "readable-secret-file":
        path = bad_config(folder, keys)
        (folder / "slack-signing-secret").chmod(0o644)
    elif case == "unknown-role":
        path = bad_config(folder, keys, identities={"carol": {"roles": ["admin"]}})
    elif case == "public-listen-address":
        path = bad_config(folder, keys, listen={"host": "0.0.0.0"})
    else:
        path = bad_config(folder, keys)
        extra = ["--host", "0.0.0.0"]
    result = subprocess.run([str(EXCHPATCH), "serve", "--config", str(path), "--port", "0", *extra],
                            capture_output=True, text=True, timeout=20, check=False, cwd=folder)
    said = result.stdout + result.stderr
    assert result.returncode == 2, f"{case}: exit {result.returncode}\n{said[-2000:]}"
    assert "Traceback" not in said and "Uvicorn running" not in said, said[-2000:]
    for needle in needles:
        assert needle in said, f"{case}: {needle!r} is not named in {said!r}"
