"""Every refusal of `exchpatch serve` (docs/chatops.md), against one real service under uvicorn whose inventory
reaches no node: each answers with its status and code, a message that names the thing and the fix, and
leaves no run in the store and no job folder in the driver's data folder."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.serve.chat import Receiver, Service, command_body, running_service, slack_headers, write_config

ME = "matching-engine-1.4.3"  # in the checkout's patches/ catalog
WALLET = "wallet-signer-2.3.1"


@pytest.fixture(scope="module")
def svc(service_no_fleet: Service) -> Iterator[Service]:
    """The module's service; every response it gives is kept (``svc.seen``) for the secrets test at the end."""
    seen: list[bytes] = []

    def keep(response: httpx.Response) -> None:
        response.read()
        seen.append(b"\n".join(f"{k}: {v}".encode() for k, v in response.headers.items()) + b"\n" + response.content)

    service_no_fleet.client.event_hooks["response"].append(keep)
    service_no_fleet.seen = seen  # type: ignore[attr-defined]
    yield service_no_fleet
    service_no_fleet.client.event_hooks["response"].remove(keep)


# --------------------------------------------------------------------------- helpers


def store_run_ids(svc: Service) -> set[str]:
    path = svc.settings["store"]["path"]
    if not Path(path).exists():
        return set()
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return {row[0] for row in conn.execute("SELECT id FROM exchpatch_serve_run")}
    except sqlite3.OperationalError:  # no table yet
        return set()
    finally:
        conn.close()


def job_folders(svc: Service) -> set[str]:
    runs = svc.data_dir / "runs"
    return {p.name for p in runs.iterdir()} if runs.is_dir() else set()


def api_run_ids(svc: Service) -> set[str]:
    response = svc.api("GET", "/v1/runs", "carol")
    assert response.status_code == 200, f"{response.status_code} {response.text}{svc.log_tail()}"
    return {run["id"] for run in response.json()["runs"]}


@contextmanager
def nothing_started(svc: Service) -> Iterator[None]:
    """The block creates no run (store, GET /v1/runs) and starts no driver job (EXCHPATCH_DATA_DIR/runs)."""
    before = (store_run_ids(svc), api_run_ids(svc), job_folders(svc))
    yield
    after = (store_run_ids(svc), api_run_ids(svc), job_folders(svc))
    for what, old, new in zip(("store run", "GET /v1/runs run", "job folder"), before, after):
        assert new == old, f"a refused request left a new {what}: {sorted(new - old)}{svc.log_tail()}"


def refusal(response: httpx.Response, status: int, code: str, *needles: str, svc: Service) -> str:
    """Assert the response is the refusal ``code`` with HTTP ``status`` and a message naming each needle."""
    try:
        doc = response.json()
    except ValueError:
        doc = {}
    assert response.status_code == status and doc.get("refused") == code, (
        f"expected {status} refused={code}, got {response.status_code} {response.text[:800]}{svc.log_tail(15)}")
    message = doc.get("error") or doc.get("text") or ""
    assert "\n" not in message.strip(), f"not one line: {message!r}"
    for needle in needles:
        assert needle.lower() in message.lower(), f"{code}: {needle!r} is not named in {message!r}"
    return message


def chat_refusal(response: httpx.Response, code: str, *needles: str, svc: Service) -> str:
    """A refusal the Slack user can fix: 200, an ephemeral message, ``refused``."""
    message = refusal(response, 200, code, *needles, svc=svc)
    assert response.json().get("response_type") == "ephemeral", response.text
    return message


def emergency_run(svc: Service, requester: str = "dave") -> dict[str, Any]:
    """A run awaiting approval (an emergency wallet deploy asked through the API); cancel it when done."""
    response = svc.api("POST", "/v1/deployments", requester,
                       json={"patch_id": WALLET, "emergency": True, "reason": "CVE-2026-0001 exploited in the wild"})
    assert response.status_code == 202, f"{response.status_code} {response.text}{svc.log_tail()}"
    run = response.json()
    run = run.get("run", run)
    assert run["state"] == "awaiting_approval" and run["requester"] == requester, run
    return run


def cancel(svc: Service, run_id: str) -> None:
    response = svc.api("POST", f"/v1/runs/{run_id}/cancel", "dave")
    assert response.status_code in (200, 202, 409), f"{response.status_code} {response.text}"


@pytest.fixture
def awaiting(svc: Service) -> Iterator[dict[str, Any]]:
    run = emergency_run(svc)
    yield run
    cancel(svc, run["id"])


# --------------------------------------------------------------------------- Slack request verification


def test_unsigned_and_badly_signed_commands_are_refused_401(svc):
    body = command_body(f"deploy {ME} check", response_url=svc.next_hook())
    with nothing_started(svc):
        wrong = svc.slack_post("/slack/commands", body, secret="0" * 32)
        refusal(wrong, 401, "bad_signature", "signature", "signing_secret", svc=svc)
        missing = svc.slack_post("/slack/commands", body, headers={})
        refusal(missing, 401, "bad_signature", "X-Slack-Signature", svc=svc)
        # the body changed after signing (a text swapped in transit)
        headers = slack_headers(body, svc.secret)
        tampered = svc.slack_post("/slack/commands", body.replace(b"check", b"chec0"), headers=headers)
        refusal(tampered, 401, "bad_signature", "signature", svc=svc)
        # an interaction too
        clicked = svc.slack_post("/slack/interactions", b"payload=%7B%7D", secret="0" * 32)
        refusal(clicked, 401, "bad_signature", "signature", svc=svc)


def test_a_stale_timestamp_is_refused_even_correctly_signed(svc):
    stale = int(time.time()) - 6 * 60
    with nothing_started(svc):
        response = svc.command(f"deploy {ME} check", ts=stale)
        refusal(response, 401, "stale_timestamp", "300", "clock", svc=svc)
        future = svc.command(f"deploy {ME} check", ts=int(time.time()) + 6 * 60)
        refusal(future, 401, "stale_timestamp", "clock", svc=svc)
    # the same command inside the window is answered: the timestamp, not the text, was refused
    fresh = svc.command(f"deploy {ME} check because x", ts=int(time.time()) - 4 * 60 - 30, user_id="U0CAROL")
    chat_refusal(fresh, "forbidden_role", svc=svc)


def test_a_replayed_signature_is_refused(svc):
    body = command_body("help", response_url=svc.next_hook())
    headers = slack_headers(body, svc.secret)
    first = svc.slack_post("/slack/commands", body, headers=headers)
    assert first.status_code == 200 and "/patch deploy" in first.json().get("text", ""), first.text
    with nothing_started(svc):
        again = svc.slack_post("/slack/commands", body, headers=headers)
        refusal(again, 401, "replayed", "replay", svc=svc)
        # eight copies of one signed deploy at once: at most one gets past the replay cache
        body = command_body(f"deploy {ME} check because replay race", response_url=svc.next_hook(), user_id="U0CAROL")
        headers = slack_headers(body, svc.secret)
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: svc.slack_post("/slack/commands", body, headers=headers), range(8)))
        codes = sorted((a.json() or {}).get("refused") for a in answers)
        assert codes == ["forbidden_role"] + ["replayed"] * 7, [a.text for a in answers]


def test_an_unknown_slack_user_and_a_foreign_workspace_are_refused(svc):
    with nothing_started(svc):
        stranger = svc.command(f"deploy {ME} check", user_id="U0MALLORY")
        chat_refusal(stranger, "unknown_user", "U0MALLORY", "slack_users", svc=svc)
        foreign = svc.command(f"deploy {ME} check", team_id="T0OTHERCO")
        chat_refusal(foreign, "foreign_team", "slack.team_id", svc=svc)
        # a known user id from another workspace is still another workspace
        foreign_click = svc.interact("approve", "20260101T000000-00000000", user_id="U0BOB", team_id="T0OTHERCO")
        chat_refusal(foreign_click, "foreign_team", "slack.team_id", svc=svc)


# --------------------------------------------------------------------------- REST authentication and roles


def test_a_missing_or_unknown_bearer_token_is_refused_401(svc):
    deploy = {"patch_id": ME, "check": True}
    with nothing_started(svc):
        missing = svc.api("POST", "/v1/deployments", json=deploy)
        refusal(missing, 401, "unknown_token", "Authorization: Bearer", svc=svc)
        unknown = svc.api("POST", "/v1/deployments", "xp-" + "A" * 43, json=deploy)
        refusal(unknown, 401, "unknown_token", "token_sha256", svc=svc)
        # alice's token with one more character is no token, and is not echoed back
        near = svc.tokens["alice"] + "x"
        close = svc.api("POST", "/v1/deployments", near, json=deploy)
        refusal(close, 401, "unknown_token", svc=svc)
        assert svc.tokens["alice"] not in close.text
        basic = svc.api("POST", "/v1/deployments", json=deploy,
                        headers={"Authorization": f"Basic {svc.tokens['alice']}"})
        refusal(basic, 401, "unknown_token", "Bearer", svc=svc)
        for path in ("/v1/runs", "/v1/status", "/v1/plan", "/v1/history"):
            refusal(svc.api("GET", path), 401, "unknown_token", svc=svc)


def test_a_viewer_may_not_deploy_roll_back_or_cancel(svc, awaiting):
    with nothing_started(svc):
        deploy = svc.api("POST", "/v1/deployments", "carol", json={"patch_id": ME, "check": True})
        refusal(deploy, 403, "forbidden_role", "carol", "operator", svc=svc)
        rollback = svc.api("POST", "/v1/rollbacks", "carol", json={"component": "matching-engine", "check": True})
        refusal(rollback, 403, "forbidden_role", "carol", "operator", svc=svc)
        chat = svc.command(f"deploy {ME} check", user_id="U0CAROL")
        chat_refusal(chat, "forbidden_role", "carol", "operator", svc=svc)
        chat = svc.command("rollback matching-engine check", user_id="U0CAROL")
        chat_refusal(chat, "forbidden_role", "carol", "operator", svc=svc)
        # an approver alone is no operator either
        bob = svc.command(f"deploy {ME} check", user_id="U0BOB")
        chat_refusal(bob, "forbidden_role", "bob", "operator", svc=svc)
        stop = svc.api("POST", f"/v1/runs/{awaiting['id']}/cancel", "carol")
        refusal(stop, 403, "forbidden_role", "carol", "operator", svc=svc)
        chat = svc.command(f"cancel {awaiting['id']}", user_id="U0CAROL")
        chat_refusal(chat, "forbidden_role", "carol", svc=svc)
    assert svc.wait_run(awaiting["id"], "carol", until=lambda r: True)["state"] == "awaiting_approval"


def test_an_operator_may_not_approve(svc, awaiting):
    run_id = awaiting["id"]
    with nothing_started(svc):
        rest = svc.api("POST", "/v1/approvals", "alice", json={"run_id": run_id, "decision": "approve"})
        refusal(rest, 403, "forbidden_role", "alice", "approver", svc=svc)
        click = svc.interact("approve", run_id, user_id="U0ALICE")
        chat_refusal(click, "forbidden_role", "alice", "approver", svc=svc)
        deny = svc.interact("deny", run_id, user_id="U0ALICE")
        chat_refusal(deny, "forbidden_role", "alice", "approver", svc=svc)
        viewer = svc.api("POST", "/v1/approvals", "carol", json={"run_id": run_id, "decision": "deny"})
        refusal(viewer, 403, "forbidden_role", "carol", "approver", svc=svc)
    run = svc.wait_run(run_id, "carol", until=lambda r: True)
    assert run["state"] == "awaiting_approval" and not (run["approval"] or {}).get("approver"), run


def test_self_approval_is_refused(svc, awaiting):
    run_id = awaiting["id"]  # dave asked for it; dave is also an approver
    with nothing_started(svc):
        rest = svc.api("POST", "/v1/approvals", "dave", json={"run_id": run_id, "decision": "approve"})
        refusal(rest, 403, "self_approval", "dave", "another approver", svc=svc)
        click = svc.interact("approve", run_id, user_id="U0DAVE")
        chat_refusal(click, "self_approval", "dave", "another approver", svc=svc)
    run = svc.wait_run(run_id, "carol", until=lambda r: True)
    assert run["state"] == "awaiting_approval" and not (run["approval"] or {}).get("approver"), run
    assert not (svc.data_dir / "approvals").is_dir() or not list((svc.data_dir / "approvals").glob(f"{run_id}*")), \
        "a refused self-approval wrote an approval file"


# --------------------------------------------------------------------------- what is asked for


def test_an_unknown_patch_id_is_refused_naming_the_closest(svc):
    with nothing_started(svc):
        rest = svc.api("POST", "/v1/deployments", "alice", json={"patch_id": "matching-engine-1.4.4", "check": True})
        refusal(rest, 422, "unknown_patch", "matching-engine-1.4.4", "matching-engine-1.4.3", svc=svc)
        chat = svc.command("deploy matching-engine-1.4.4 check")
        chat_refusal(chat, "unknown_patch", "matching-engine-1.4.4", "matching-engine-1.4.3", svc=svc)
        wallet = svc.api("POST", "/v1/deployments", "alice", json={"patch_id": "walet-signer-2.3.1", "check": True})
        refusal(wallet, 422, "unknown_patch", "walet-signer-2.3.1", WALLET, svc=svc)


def test_an_unknown_component_is_refused_naming_the_closest(svc):
    with nothing_started(svc):
        rest = svc.api("POST", "/v1/rollbacks", "alice", json={"component": "matching-engin", "check": True})
        refusal(rest, 422, "unknown_component", "matching-engin", "matching-engine", svc=svc)
        chat = svc.command("rollback wallet-signr check")
        chat_refusal(chat, "unknown_component", "wallet-signr", "wallet-signer", svc=svc)


@pytest.mark.parametrize("reason, named", [
    ("CVE fix {{ lookup('pipe', 'id') }}", "template"),
    ("CVE fix {% for x in y %}", "template"),
    ("CVE fix \x1b[31m now", "control character"),
    ("CVE fix\nsecond line", "control character"),
], ids=["jinja-expression", "jinja-statement", "escape", "newline"])
def test_a_reason_that_is_no_plain_text_is_refused(svc, reason, named):
    with nothing_started(svc):
        rest = svc.api("POST", "/v1/deployments", "alice", json={"patch_id": ME, "check": True, "reason": reason})
        refusal(rest, 400, "bad_text", "reason", named, svc=svc)
        emergency = svc.api("POST", "/v1/deployments", "alice",
                            json={"patch_id": WALLET, "emergency": True, "reason": reason})
        refusal(emergency, 400, "bad_text", named, svc=svc)
        chat = svc.command(f"deploy {ME} check because {reason}")
        chat_refusal(chat, "bad_text", named, svc=svc)


def test_an_oversized_body_is_refused_413(svc):
    limit = svc.settings["limits"]["max_body_bytes"]
    hook = svc.next_hook()
    body = command_body(f"deploy {ME} check because " + "a" * limit, response_url=hook)
    with nothing_started(svc):
        chat = svc.slack_post("/slack/commands", body)
        refusal(chat, 413, "too_large", str(limit), "max_body_bytes", svc=svc)
        payload = json.dumps({"patch_id": ME, "check": True, "reason": "a" * limit}).encode()
        rest = svc.api("POST", "/v1/deployments", "alice", content=payload,
                       headers={"Content-Type": "application/json"})
        refusal(rest, 413, "too_large", str(limit), svc=svc)

        # without a Content-Length (chunked): the service counts
        def chunks() -> Iterator[bytes]:
            for i in range(0, len(payload), 8192):
                yield payload[i:i + 8192]

        streamed = svc.api("POST", "/v1/deployments", "alice", content=chunks(),
                           headers={"Content-Type": "application/json"})
        refusal(streamed, 413, "too_large", svc=svc)


def test_a_deploy_on_a_held_scope_is_refused_naming_the_holder(svc):
    lock_dir = Path(svc.settings["driver"]["lock_dir"])
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    since = (now - dt.timedelta(minutes=3)).isoformat().replace("+00:00", "Z")
    until = (now + dt.timedelta(minutes=10)).isoformat().replace("+00:00", "Z")
    # a lock file as plugins/module_utils/_lock.py writes one (its LockRecord)
    record = {"scope": "shard-0", "owner": "erin", "run_id": "20261130T101500-0badcafe",
              "patch": "matching-engine-1.4.2", "acquired_at": since, "expires_at": until,
              "host": "ops-7", "pid": 4242, "token": 7, "ttl": 600}
    lock = lock_dir / "shard-0.lock"
    lock.write_text(json.dumps(record, indent=2) + "\n")
    try:
        with nothing_started(svc):
            rest = svc.api("POST", "/v1/deployments", "alice", json={"patch_id": ME})
            refusal(rest, 409, "scope_held", "shard-0", "erin", record["run_id"], since, svc=svc)
            chat = svc.command(f"deploy {ME}")
            chat_refusal(chat, "scope_held", "erin", since, svc=svc)
            rollback = svc.api("POST", "/v1/rollbacks", "alice", json={"component": "matching-engine"})
            refusal(rollback, 409, "scope_held", "erin", svc=svc)
    finally:
        lock.unlink()


def test_a_forged_response_url_is_never_called(svc, receiver):
    with Receiver() as forged:
        target = forged.url("/commands/T0EXCHANGE/1/forged")
        with nothing_started(svc):
            chat = svc.command(f"deploy {ME} check", response_url=target)
            assert chat.status_code == 200, chat.text
            assert chat.json().get("refused"), f"a command naming {target} was accepted: {chat.text}"
            read = svc.command("status", user_id="U0CAROL", response_url=target)
            assert read.json().get("refused"), f"a status to {target} was accepted: {read.text}"

        # button clicks naming the forged URL: a refused one, and a decision
        run = emergency_run(svc)
        try:
            svc.interact("approve", run["id"], user_id="U0ALICE", response_url=target)
            svc.interact("deny", run["id"], user_id="U0BOB", response_url=target)
        finally:
            cancel(svc, run["id"])
        # the same decision naming an allowed URL is posted there: the forged one would have been called
        control = emergency_run(svc)
        try:
            svc.interact("deny", control["id"], user_id="U0BOB", response_url=receiver.url(f"/hook/c-{control['id']}"))
            receiver.wait_for(lambda p: p.path == f"/hook/c-{control['id']}", timeout=20)
        finally:
            cancel(svc, control["id"])
        time.sleep(1)  # posts to the forged URL, had there been any, were queued before the control's
        assert forged.requests == [], f"the service called a forged response_url: {forged.requests}{svc.log_tail()}"


# --------------------------------------------------------------------------- rate limit (a service of its own)


@pytest.fixture(scope="module")
def slow_service(tmp_path_factory, receiver, keys):
    folder = tmp_path_factory.mktemp("serve-rate")
    with running_service(folder, receiver=receiver, keys=keys, limits={"requests_per_minute": 3}) as service:
        yield service


def test_more_requests_than_the_limit_are_refused_429_per_identity(slow_service):
    svc = slow_service
    for _attempt in range(3):
        ok = svc.api("GET", "/v1/runs", "alice")
        assert ok.status_code == 200, ok.text
    with nothing_started_by(svc, "carol"):
        rest = svc.api("POST", "/v1/deployments", "alice", json={"patch_id": ME, "check": True})
        refusal(rest, 429, "rate_limited", "alice", "requests_per_minute", svc=svc)
        retry = rest.headers.get("Retry-After", "")
        assert retry.isdigit() and 1 <= int(retry) <= 60, f"Retry-After is {retry!r}"
        # alice in Slack is the same identity
        chat = svc.command(f"deploy {ME} check")
        refusal(chat, 429, "rate_limited", "alice", svc=svc)
        assert chat.headers.get("Retry-After", "").isdigit(), chat.headers
    # bob (the snapshot used carol's budget) has his own
    assert svc.api("GET", "/v1/runs", "bob").status_code == 200


@contextmanager
def nothing_started_by(svc: Service, reader: str) -> Iterator[None]:
    def runs() -> set[str]:
        response = svc.api("GET", "/v1/runs", reader)
        assert response.status_code == 200, response.text
        return {r["id"] for r in response.json()["runs"]}

    before = (store_run_ids(svc), runs(), job_folders(svc))
    yield
    assert (store_run_ids(svc), runs(), job_folders(svc)) == before, "a rate-limited request started something"


# --------------------------------------------------------------------------- secrets (runs last: sees every response)


def test_no_secret_reaches_the_log_the_store_or_a_response(svc, receiver):
    secrets = {"the Slack signing secret": svc.secret,
               **{f"{name}'s bearer token": token for name, token in svc.tokens.items()}}
    # whatever ran before, every identity uses its token now, and a refusal and a Slack command go through
    for name in svc.tokens:
        assert svc.api("GET", "/v1/runs", name).status_code == 200
    refusal(svc.api("POST", "/v1/deployments", "alice", json={"patch_id": "matching-engine-9"}), 422,
            "unknown_patch", svc=svc)
    refusal(svc.api("GET", "/v1/runs", svc.tokens["carol"][:-1]), 401, "unknown_token", svc=svc)
    assert svc.command("help").status_code == 200
    log = svc.log()
    assert "/v1/deployments" in log and "/slack/commands" in log, f"the access log is missing{svc.log_tail()}"
    places: dict[str, bytes] = {"the service log": log.encode()}
    folder = Path(svc.settings["store"]["path"]).parent
    for path in folder.glob(Path(svc.settings["store"]["path"]).name + "*"):
        places[str(path)] = path.read_bytes()
    for path in svc.data_dir.rglob("*") if svc.data_dir.is_dir() else []:
        if path.is_file():
            places[str(path)] = path.read_bytes()
    if svc.audit_file.exists():
        places[str(svc.audit_file)] = svc.audit_file.read_bytes()
    for i, response in enumerate(svc.seen):
        places[f"response #{i}"] = response
    for i, post in enumerate(receiver.requests):
        places[f"post to {post[1]} #{i}"] = post[3]
    assert len(svc.seen) >= 7, "the responses of this module were not recorded"
    for what, value in secrets.items():
        for place, data in places.items():
            assert value.encode() not in data, f"{what} appears in {place}"


def test_a_signing_secret_from_the_environment_reaches_no_run(tmp_path, receiver, keys):
    """The secret in the service's environment (slack.signing_secret_env) stays out of the runs it starts: the
    playbook's environment, ansible-runner's artifacts, the audit trail, the store and the chat posts."""
    folder = tmp_path / "env-secret"
    try:
        config, tokens, secret = write_config(folder, receiver=receiver, keys=keys, slack={
            "signing_secret_file": None, "signing_secret_env": "EXCHPATCH_SLACK_SIGNING_SECRET"})
        (folder / "slack-signing-secret").unlink()
        with Service(config, secret=secret, tokens=tokens, receiver=receiver, folder=folder,
                     env={"EXCHPATCH_SLACK_SIGNING_SECRET": secret}) as svc:
            asked = svc.command(f"deploy {ME} check")
            assert asked.status_code == 200 and ":rocket:" in asked.json()["text"], asked.text
            run_id = svc.api("GET", "/v1/runs", "carol").json()["runs"][0]["id"]
            run = svc.wait_run(run_id, "carol", timeout=120)
            assert run["job_id"] and run["outcome"] in ("refused", "failed"), run  # its nodes answer nothing
            receiver.wait_for(lambda p: p.path == urlsplit(asked.response_url).path and f"`{run_id}`" in
                              (p.json or {}).get("text", "") and "*" + run["outcome"] + "*" in p.json["text"])
            assert (svc.data_dir / "runs" / run["job_id"]).is_dir(), "the run's job folder is not where it was expected"
        found = [str(p) for p in folder.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
        found += [f"post to {r[1]}" for r in receiver.requests if secret.encode() in r[3]]
        assert not found, f"the signing secret is in {found}"
        for name, token in tokens.items():
            leaked = [str(p) for p in folder.rglob("*") if p.is_file() and token.encode() in p.read_bytes()]
            assert not leaked, f"{name}'s token is in {leaked}"
    finally:
        shutil.rmtree(folder, ignore_errors=True)
