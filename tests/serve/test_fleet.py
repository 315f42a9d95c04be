"""The chatops service against a real testbed fleet: `/patch` from Slack to nodes on a new release and back.

One fleet (1 shard of primary/standby + 1 wallet, HAProxy, supervisord) and one `exchpatch serve` under uvicorn
serve the whole module, with a stand-in for Slack's response_url (tests/serve/chat.py). Every outcome is read
from real state: the nodes' versions (their admin API), the lease files, the audit trail the runs wrote, the
service's run store (GET /v1/runs/{id}) and what the service posted to the response URL. The tests run in file
order on one fleet, each with a release version of its own; each leaves every matching node on one release.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from testbed import fleet as tb
from testbed.release import build_release
from tests.serve.chat import Post, Receiver, Service, running_service
from tests.testbed.nodes import loopback_net

pytestmark = pytest.mark.fleet

COMPONENT = "matching-engine"
SLACK_RESPONSE_URL_USES = 5  # Slack: five responses per response_url
# What every run of this module uses (the inventory's group_vars/all/chatops.yml): the approvers' keys for
# the preflight, and the shortest bakes a rollout still canaries with (the service passes no bake of its own).
BASE_VARS: dict[str, Any] = {"rolling_canary_bake": 1, "matching_node_traffic_bake": 1}
# A cancel is seen before the next node: the canary bakes long enough to be caught mid-rollout. The bakes still
# to run, the stop and the rollback of the canary take about 35 s on the 2-core machine; the service kills a
# canceled job's process group after cancel_grace, so it gets room enough for a clean stop (120 s, not 30).
MID_RUN_VARS: dict[str, Any] = {"rolling_canary_bake": 4}
CANCEL_GRACE = 120
LEASE_TTL = 10  # the restart test's lease lapses this soon after its controller died


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    with tb.running(tmp_path_factory.mktemp("serve-fleet"), shards=1, wallets=1, net=loopback_net("serve")) as f:
        yield f


@pytest.fixture(scope="module")
def service(tmp_path_factory, fleet, receiver: Receiver, keys) -> Iterator[Service]:
    """`exchpatch serve` whose driver uses the fleet's inventory, catalog and lock folder; progress every 5 s,
    so a rollout's lines arrive in a few coalesced posts (Slack allows five per response URL)."""
    folder = tmp_path_factory.mktemp("serve-fleet-service")
    _write_chatops_vars(fleet, {"exchange_allowed_signers": str(keys.allowed_signers), **BASE_VARS})
    with running_service(folder, fleet=fleet, receiver=receiver, keys=keys, slack={"progress_interval": 5},
                         driver={"cancel_grace": CANCEL_GRACE}) as svc:
        yield svc


# --------------------------------------------------------------------------- helpers


def _chatops_vars_file(fleet: tb.Fleet) -> Path:
    return Path(fleet.inventory_dir) / "group_vars" / "all" / "chatops.yml"


def _write_chatops_vars(fleet: tb.Fleet, values: dict[str, Any]) -> None:
    _chatops_vars_file(fleet).write_text("---\n# the chatops tests' inventory variables (tests/serve/test_fleet.py)\n"
                                         + yaml.safe_dump(values, sort_keys=False))


@contextlib.contextmanager
def inventory_vars(fleet: tb.Fleet, **values: Any) -> Iterator[None]:
    """Runs started inside the block see ``values`` too (a job reads the inventory when it starts)."""
    path = _chatops_vars_file(fleet)
    before = path.read_text()
    _write_chatops_vars(fleet, {**yaml.safe_load(before), **values})
    try:
        yield
    finally:
        path.write_text(before)


def build(fleet: tb.Fleet, version: str, fault: str | None = None) -> str:
    root = Path(fleet.root)
    return build_release(root / "releases", root / "keys", root / "catalog", COMPONENT, version, fault=fault).id


def versions(fleet: tb.Fleet) -> dict[str, str | None]:
    return {n.name: tb.node_status(n).get("version") for n in fleet.nodes if n.component == COMPONENT}


def wait_versions(fleet: tb.Fleet, predicate, timeout: float = 180) -> dict[str, str | None]:
    deadline = time.monotonic() + timeout
    while True:
        seen = versions(fleet)
        if predicate(seen):
            return seen
        assert time.monotonic() < deadline, f"the matching nodes never got there: {seen}"
        time.sleep(0.2)


def started_run(response) -> dict[str, Any]:
    """The run a `/patch deploy` started: its id is in the answer (`run \\`<id>\\``)."""
    assert response.status_code == 200, response.text
    body = response.json()
    assert "refused" not in body, body
    found = re.search(r"run `([^`]+)`", body["text"])
    assert found, body
    return {"id": found.group(1), "answer": body}


def hook_path(response) -> str:
    return "/" + response.response_url.split("/", 3)[3]


def posts(receiver: Receiver, response) -> list[Post]:
    return receiver.posts_to(hook_path(response))


def summary(receiver: Receiver, response, run_id: str, timeout: float = 60) -> str:
    """The final summary posted to the command's response URL: its first line names the run and its job."""
    head = f"(run `{run_id}`, job `"
    post = receiver.wait_for(lambda p: p.path == hook_path(response) and isinstance(p.json, dict)
                             and head in (p.json.get("text") or ""), timeout)
    return post.json["text"]


def audit_records(service: Service, job_id: str) -> list[dict[str, Any]]:
    lines = service.audit_file.read_text().splitlines() if service.audit_file.exists() else []
    return [r for r in (json.loads(line) for line in lines if line.strip()) if r.get("run") == job_id]


def merged_change(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The change record as the audit callback merges it: change_opened, then every change_updated."""
    change: dict[str, Any] = {}
    for r in records:
        if r.get("kind") == "change_opened":
            change.update({k: v for k, v in r.items() if v is not None})
        elif r.get("kind") == "change_updated":
            change.update({k: v for k, v in (r.get("change") or {}).items() if v is not None})
    return change


def live_leases(fleet: tb.Fleet) -> list[Any]:
    from ansible_collections.exchangeops.patching.plugins.module_utils import _lock

    lock_dir = str(Path(fleet.root) / "locks")
    now = dt.datetime.now(dt.UTC)
    records = [_lock.read_lock(lock_dir, p.name[: -len(".lock")]) for p in Path(lock_dir).glob("*.lock")]
    return [r for r in records if r is not None and not r.expired(now)]


# --------------------------------------------------------------------------- tests


def test_a_deploy_from_chat_rolls_the_release_out_and_reports_back(fleet, service, receiver):
    pid = build(fleet, "1.4.3")
    response = service.command(f"deploy {pid}", user_id="U0ALICE")
    run = started_run(response)
    assert response.json()["response_type"] == "in_channel"
    done = service.wait_run(run["id"])
    assert (done["state"], done["outcome"], done["requester"], done["source"]) == (
        "finished", "successful", "alice", "slack"), done
    assert set(versions(fleet).values()) == {"1.4.3"}

    text = summary(receiver, response, run["id"])
    assert "*successful*" in text and done["job_id"] in text, text
    assert "converged version: 1.4.3" in text and "report:" in text, text
    assert done["result"]["converged_version"] == "1.4.3" and done["result"]["report"], done["result"]
    sent = posts(receiver, response)
    assert len(sent) <= SLACK_RESPONSE_URL_USES, [p.json for p in sent]
    assert sent[-1].json["text"] == text  # the summary is the last use of the URL
    progress = "\n".join(p.json["text"] for p in sent[:-1])
    assert "== " in progress, progress  # batches (one per serial batch of a play)
    assert "canary" in progress.lower(), progress
    assert "[pass]" in progress, progress  # the health gates' verdicts with their evidence

    opened = [r for r in audit_records(service, done["job_id"]) if r.get("kind") == "change_opened"]
    assert [r["operator"] for r in opened] == ["alice"], opened


def test_a_crashing_release_from_chat_is_rolled_back_with_the_evidence(fleet, service, receiver):
    pid = build(fleet, "1.4.4", fault="crash")
    response = service.command(f"deploy {pid}", user_id="U0ALICE")
    run = started_run(response)
    done = service.wait_run(run["id"])
    assert (done["state"], done["outcome"]) == ("finished", "rolled_back"), done
    assert set(versions(fleet).values()) == {"1.4.3"}
    failed = done["result"]["failed_nodes"]
    assert len(failed) == 1 and failed[0] in versions(fleet), done["result"]

    text = summary(receiver, response, run["id"])
    assert "*rolled_back*" in text, text
    assert failed[0] in text, text  # the failed node ...
    assert "ready" in text, text  # ... and the gate's or task's message: the canary never became ready
    assert len(posts(receiver, response)) <= SLACK_RESPONSE_URL_USES


def test_an_emergency_deploy_waits_for_another_persons_approval(fleet, service, receiver):
    pid = build(fleet, "1.4.5")
    # dave is operator and approver: his own emergency still needs someone else (refused, then denied by bob)
    own = service.command(f"deploy {pid} emergency because testing the rules", user_id="U0DAVE")
    dave_run = _approval_buttons(own)
    click = service.interact("approve", dave_run, user_id="U0DAVE")
    assert click.json().get("refused") == "self_approval", click.text
    assert service.api("POST", "/v1/approvals", "bob", json={"run_id": dave_run, "decision": "deny"}).status_code \
        == 200
    assert service.wait_run(dave_run)["state"] == "denied"

    response = service.command(f"deploy {pid} emergency because KEV-listed RCE", user_id="U0ALICE")
    run_id = _approval_buttons(response)
    waiting = service.wait_run(run_id, until=lambda r: True)
    assert (waiting["state"], waiting["job_id"]) == ("awaiting_approval", None), waiting
    assert waiting["approval"]["kinds"] == ["emergency"], waiting

    refused = service.interact("approve", run_id, user_id="U0ALICE")
    assert refused.status_code == 200 and refused.json().get("refused") in ("forbidden_role", "self_approval"), \
        refused.text
    time.sleep(1)
    still = service.wait_run(run_id, until=lambda r: True)
    assert (still["state"], still["job_id"]) == ("awaiting_approval", None), still  # no job started

    approved = service.interact("approve", run_id, user_id="U0BOB")
    assert approved.status_code == 200 and "refused" not in approved.json(), approved.text
    done = service.wait_run(run_id)
    assert (done["state"], done["outcome"]) == ("finished", "successful"), done
    assert (done["approval"]["approver"], done["requester"]) == ("bob", "alice"), done["approval"]
    assert set(versions(fleet).values()) == {"1.4.5"}

    change = merged_change(audit_records(service, done["job_id"]))
    assert (change.get("operator"), change.get("approver")) == ("alice", "bob"), change
    assert change.get("approver_key_fingerprint"), change  # the approver came from a signed approval
    # who approved is shown where the request was made, and where the button was clicked
    thread = [p.json.get("text", "") for p in posts(receiver, response)]
    assert any("bob approved" in t for t in thread), thread
    assert any("approved by bob" in t for t in thread), thread  # the summary
    assert any("bob approved" in (p.json or {}).get("text", "") for p in posts(receiver, approved)), \
        posts(receiver, approved)
    assert len(thread) <= SLACK_RESPONSE_URL_USES


def _approval_buttons(response) -> str:
    """The run id an approval message's Approve button carries (it has a Deny button too)."""
    assert response.status_code == 200, response.text
    body = response.json()
    assert "refused" not in body, body
    buttons = {e["action_id"]: e["value"] for b in body.get("blocks", []) if b.get("type") == "actions"
               for e in b["elements"]}
    assert set(buttons) == {"approve", "deny"} and buttons["approve"] == buttons["deny"], body
    return buttons["approve"]


def test_cancel_from_chat_rolls_the_canary_back_and_releases_the_lease(fleet, service, receiver):
    before = versions(fleet)
    pid = build(fleet, "1.4.6")
    with inventory_vars(fleet, **MID_RUN_VARS):
        response = service.command(f"deploy {pid}", user_id="U0ALICE")
        run = started_run(response)
    wait_versions(fleet, lambda v: "1.4.6" in v.values())  # the canary is in, baking
    cancel = service.command(f"cancel {run['id']}", user_id="U0ALICE")
    assert cancel.status_code == 200 and "refused" not in cancel.json(), cancel.text
    done = service.wait_run(run["id"])
    assert (done["state"], done["outcome"]) == ("canceled", "canceled"), done
    assert versions(fleet) == before  # the canary went back
    assert not list((Path(fleet.root) / "locks").glob("*.lock"))
    # the playbook stopped by itself (a job killed after the grace leaves no change_closed); the trail's outcome is
    # the playbook's view: it rolled the canary back (docs/audit.md), the run's is the driver's (canceled)
    closed = [r.get("outcome") for r in audit_records(service, done["job_id"]) if r.get("kind") == "change_closed"]
    assert closed in (["rolled_back"], ["canceled"]), closed
    assert "*canceled*" in summary(receiver, response, run["id"])


def test_a_service_restart_mid_run_interrupts_it_and_the_next_deploy_resumes(fleet, service, receiver):
    pid = build(fleet, "1.4.7")
    with inventory_vars(fleet, preflight_lock_ttl=LEASE_TTL, **MID_RUN_VARS):
        run = started_run(service.command(f"deploy {pid}", user_id="U0ALICE"))
        job_id = service.wait_run(run["id"], until=lambda r: bool(r.get("job_id")), timeout=30)["job_id"]
        wait_versions(fleet, lambda v: "1.4.7" in v.values())  # mid-rollout: the canary is on the new release
        service.kill()  # the job's ansible-playbook goes with it (its terminal closes): the controller is gone
        service.restart()
    interrupted = service.wait_run(run["id"], until=lambda r: True)
    assert interrupted["state"] == "interrupted", interrupted

    # the audit trail's outcome of the job reaches chat (and the run) once the history is read
    deadline = time.monotonic() + 120
    while True:
        listed = service.command("history", user_id="U0ALICE")
        assert listed.status_code == 200 and "refused" not in listed.json(), listed.text
        hook = hook_path(listed)
        text = receiver.wait_for(lambda p, h=hook: p.path == h, 60).json["text"]
        line = next((ln for ln in text.splitlines() if job_id in ln), "")
        if re.search(r"\*\w+\*", line):
            break
        assert time.monotonic() < deadline, text
        time.sleep(2)
    outcome = re.search(r"\*(\w+)\*", line).group(1)
    # killed: no end of its own (interrupted), or closed as canceled by the audit callback as Python exited
    assert outcome in ("interrupted", "canceled"), line
    assert service.wait_run(run["id"], until=lambda r: r.get("outcome") is not None, timeout=30)["outcome"] == \
        outcome

    # whatever the killed run left (a lease renewed by nobody, a canary on the new release), the next deploy
    # of the same patch finishes the job: the stale lease is taken over and done nodes are skipped
    deadline = time.monotonic() + 10 * LEASE_TTL + 120
    while live_leases(fleet):
        assert time.monotonic() < deadline, live_leases(fleet)
        time.sleep(0.5)
    left = {n.name: tb.node_status(n) for n in fleet.nodes if n.component == COMPONENT}
    done_pids = {name: st["pid"] for name, st in left.items() if st.get("version") == "1.4.7"}
    assert done_pids, left
    again = started_run(service.command(f"deploy {pid}", user_id="U0ALICE"))
    done = service.wait_run(again["id"])
    assert (done["state"], done["outcome"]) == ("finished", "successful"), done
    assert set(versions(fleet).values()) == {"1.4.7"}
    assert not live_leases(fleet)
    stdout = (service.data_dir / "runs" / done["job_id"] / "artifacts" / done["job_id"] / "stdout").read_text()
    assert "stale locks taken over: shard-0" in stdout
    now = {name: tb.node_status(fleet.node(name)).get("pid") for name in done_pids}
    assert now == done_pids  # the nodes the killed run had done were not restarted again
