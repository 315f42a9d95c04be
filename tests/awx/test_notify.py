"""The workflow's failure step, awx/notify.yml, run for real against a local webhook: it posts the failed
rollout's run contract (which AWX hands it as the extra variable ``exchpatch``), never shows the webhook
URL, and fails with the outcome so that the workflow fails too; a rollout that published nothing (killed,
canceled) is reported as such, not with the plan's outcome that AWX passes on instead."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.awx.conftest import AWX, ansible_playbook

ROLLED_BACK = {
    "outcome": "rolled_back", "playbook": "Roll the patch out", "run_id": "awx-job-4242", "operator": "alice.ops",
    "awx_job_id": "4242", "awx_workflow_job_id": "4240", "failed_nodes": ["me-fra1-s0-b"],
    "failures": [{"node": "me-fra1-s0-b", "evidence": {"task": "Judge the canary's traffic", "gates": [],
                                                       "msg": "p99 41 ms against 12 ms on the control"}}],
    "converged_version": "1.4.2", "report": "exchpatch report awx-job-4242",
    "message": "the canary failed its traffic gate; every patched node is back on 1.4.2.", "check": False,
    "result": {},
}
# What reaches the step when the rollout died before its set_stats: the plan's contract, passed on by AWX.
PLAN = {"outcome": "succeeded", "playbook": "Rank pending patches by risk", "run_id": "awx-job-4241",
        "failed_nodes": [], "failures": [], "message": "2 pending patch(es) ranked", "result": {"patches": []}}


class Webhook(BaseHTTPRequestHandler):
    posts: list[dict[str, Any]]
    status = 200

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.posts.append({"path": self.path, "type": self.headers["Content-Type"], "body": json.loads(body)})
        self.send_response(self.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def webhook(request):
    status = getattr(request, "param", 200)
    handler = type("Hook", (Webhook,), {"posts": [], "status": status})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/services/T0/B0/secret-hook-7c1d", handler.posts
    finally:
        server.shutdown()
        server.server_close()


def notify(config, tmp_path, extra: dict[str, Any], url: str = ""):
    (tmp_path / "extra.json").write_text(json.dumps(extra))
    env = {"EXCHPATCH_NOTIFY_WEBHOOK_URL": url} if url else {}
    # -v shows every task's result, as a job launched with a higher verbosity would
    return ansible_playbook([AWX / "notify.yml", "-v", "-e", f"@{tmp_path / 'extra.json'}"], config, cwd=tmp_path,
                            **env)


def test_a_rolled_back_rollout_is_posted_and_fails_the_workflow(bare_config, tmp_path, webhook):
    url, posts = webhook
    res = notify(bare_config, tmp_path, {"exchpatch": ROLLED_BACK, "awx_workflow_job_id": 4240}, url)
    out = res.stdout + res.stderr
    assert res.returncode == 2, out[-3000:]
    [post] = posts
    assert post["path"] == "/services/T0/B0/secret-hook-7c1d" and post["type"] == "application/json"
    text = post["body"]["text"]
    assert text.startswith("Rollout rolled_back (run awx-job-4242) in AWX workflow job 4240:"), text
    for part in ("every patched node is back on 1.4.2.", "Failed nodes: me-fra1-s0-b.",
                 "me-fra1-s0-b (Judge the canary's traffic: p99 41 ms against 12 ms on the control)",
                 "Fleet on 1.4.2."):
        assert part in text, text
    assert post["body"]["exchpatch"] == ROLLED_BACK
    # the step fails with the same sentence, so the workflow ends failed and says why
    assert f'"msg": {json.dumps(text)}' in res.stdout
    assert "secret-hook" not in out, "the webhook URL is a secret"


def test_a_rollout_that_published_nothing_is_not_reported_as_the_plan(bare_config, tmp_path, webhook):
    url, posts = webhook
    res = notify(bare_config, tmp_path, {"exchpatch": PLAN, "awx_workflow_job_id": 4240}, url)
    assert res.returncode == 2
    [post] = posts
    assert post["body"]["text"].startswith("Rollout failed without an outcome in AWX workflow job 4240: it published "
                                           "none (canceled, killed or crashed before its end)")
    assert "ranked" not in post["body"]["text"] and post["body"]["exchpatch"] == {}


def test_without_a_webhook_the_report_is_the_job_output(bare_config, tmp_path):
    res = notify(bare_config, tmp_path, {"exchpatch": {**ROLLED_BACK, "outcome": "halted"}})
    assert res.returncode == 2
    assert "Post the report to the team's webhook] *" in res.stdout and "skipping: [localhost]" in res.stdout
    assert '"msg": "Rollout halted (run awx-job-4242)' in res.stdout


@pytest.mark.parametrize("webhook", [500], indirect=True)
def test_a_webhook_that_fails_is_named_without_its_url(bare_config, tmp_path, webhook):
    url, posts = webhook
    res = notify(bare_config, tmp_path, {"exchpatch": ROLLED_BACK}, url)
    assert res.returncode == 2 and len(posts) == 1
    assert "the webhook answered 500; the report is in this job's output only" in res.stdout
    assert '"msg": "Rollout rolled_back (run awx-job-4242) in AWX workflow job ?:' in res.stdout
    assert "secret-hook" not in res.stdout + res.stderr
