"""Slack: request verification, the ``/patch`` grammar, messages, and posting to response URLs.

Verification is slack_sdk's :class:`~slack_sdk.signature.SignatureVerifier` (v0 HMAC-SHA256 over
``v0:{timestamp}:{raw body}``) after the service's own checks that give each failure its code: a
missing signature, a timestamp more than five minutes away, and a signature already seen (the replay
cache lives in the run store, so a restart does not reopen the window). Posting is slack_sdk's
:class:`~slack_sdk.webhook.WebhookClient`, and only to the configured response-URL prefixes: a forged
``response_url`` is never called. Slack lets an app use one response URL five times in thirty minutes,
so progress is coalesced (one post per ``progress_interval``) and the last use is kept for the summary.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from slack_sdk.signature import SignatureVerifier
from slack_sdk.webhook import WebhookClient

from exchpatch.serve.runs import Refused, check_text

MAX_SKEW_S = 300  # Slack: "more than five minutes from local time" is a possible replay
REPLAY_TTL_S = 2 * MAX_SKEW_S + 60
RESPONSE_URL_USES = 5  # Slack: up to five responses per response_url within thirty minutes
MAX_TEXT = 2900  # a section block holds 3000 characters

HELP = """*exchpatch* — patch the exchange's trading systems from chat
`/patch plan` — pending patches ranked by risk
`/patch status` — versions, HA roles, drift and leases on the fleet
`/patch history` — recent runs from the audit trail
`/patch deploy <patch-id> [check] [emergency] [downgrade] [because <reason>]` — roll a catalog patch out (canary first)
`/patch rollback <component> [to <version>] [check]` — put a component back on its previous release
`/patch cancel <run-id>` — stop a run safely (the node in flight is rolled back)
An emergency, a downgrade or an irreversible migration waits for an approver (not you) to click Approve."""


def escape(text: Any) -> str:
    """Slack mrkdwn control characters (a reason must not ping @channel or make a link)."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def verify(secret: str, body: bytes, headers: Mapping[str, str], seen: Callable[[str, float], bool],
           now: float | None = None) -> None:
    """Refuse (401) a request Slack did not sign, an old one, and one whose signature was used before."""
    signature = headers.get("x-slack-signature")
    stamp = headers.get("x-slack-request-timestamp")
    if not signature or not stamp:
        raise Refused("bad_signature", "the request is not signed (X-Slack-Signature and X-Slack-Request-Timestamp "
                      "are missing); only Slack's signed requests are accepted", 401)
    try:
        sent = int(stamp)
    except ValueError:
        raise Refused("bad_signature", "X-Slack-Request-Timestamp is not a number; only Slack's signed requests "
                      "are accepted", 401) from None
    skew = (time.time() if now is None else now) - sent
    if abs(skew) > MAX_SKEW_S:
        raise Refused("stale_timestamp", f"the request was signed {abs(int(skew))} s away from this server's time "
                      f"(more than {MAX_SKEW_S} s): refused as a possible replay; check the server's clock (NTP)", 401)
    if not SignatureVerifier(secret).is_valid(body=body, timestamp=stamp, signature=signature):
        raise Refused("bad_signature", "the Slack signature does not verify; check slack.signing_secret_file "
                      "holds the app's signing secret (Basic Information > App Credentials)", 401)
    if seen(signature, REPLAY_TTL_S):
        raise Refused("replayed", "this signed request was already received once: refused as a replay", 401)


@dataclass
class Command:
    verb: str
    args: dict[str, Any] = field(default_factory=dict)


def parse(text: str) -> Command:
    """The text after ``/patch``; Refused (bad_text / bad_input) with the usage when it does not parse."""
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in text) or len(text) > 1000:
        check_text(text, "the command text")  # raises with the reason
    words = text.split()
    if not words or words[0].lower() in ("help", "-h", "--help"):
        return Command("help")
    verb, rest = words[0].lower(), words[1:]
    if verb in ("plan", "status", "history"):
        if rest:
            raise Refused("bad_input", f"/patch {verb} takes no arguments")
        return Command(verb)
    if verb == "deploy":
        if not rest:
            raise Refused("bad_input", "usage: /patch deploy <patch-id> [check] [emergency] [downgrade] "
                          "[because <reason>]")
        args: dict[str, Any] = {"patch_id": rest[0], "check": False, "emergency": False, "downgrade": False,
                                "reason": None}
        i = 1
        while i < len(rest):
            word = rest[i].lower()
            if word in ("check", "emergency", "downgrade"):
                args[word] = True
            elif word in ("because", "reason", "--reason"):
                args["reason"] = check_text(" ".join(rest[i + 1:]), "reason")
                break
            else:
                raise Refused("bad_input", f"unexpected {rest[i][:40]!r}: usage: /patch deploy <patch-id> [check] "
                              "[emergency] [downgrade] [because <reason>]")
            i += 1
        return Command("deploy", args)
    if verb == "rollback":
        usage = "usage: /patch rollback <component> [to <version>] [check]"
        if not rest:
            raise Refused("bad_input", usage)
        args = {"component": rest[0], "to": None, "check": False}
        i = 1
        while i < len(rest):
            if rest[i].lower() == "to" and i + 1 < len(rest):
                args["to"] = rest[i + 1]
                i += 2
            elif rest[i].lower() == "check":
                args["check"] = True
                i += 1
            else:
                raise Refused("bad_input", f"unexpected {rest[i][:40]!r}: {usage}")
        return Command("rollback", args)
    if verb == "cancel":
        if len(rest) != 1:
            raise Refused("bad_input", "usage: /patch cancel <run-id> (the id a deploy or rollback answered with)")
        return Command("cancel", {"run_id": rest[0]})
    raise Refused("bad_input", f"unknown command {verb[:40]!r}; /patch help lists the commands")


# --------------------------------------------------------------------------- messages


def text_message(text: str, *, in_channel: bool = False, **extra: Any) -> dict[str, Any]:
    return {"response_type": "in_channel" if in_channel else "ephemeral", "text": text[:MAX_TEXT], **extra}


def approval_message(run: dict[str, Any], what: str) -> dict[str, Any]:
    kinds = ", ".join((run.get("approval") or {}).get("kinds") or [])
    reason = (run.get("params") or {}).get("reason")
    text = (f":lock: *{escape(run['requester'])}* asks for {escape(what)} — needs an approval ({kinds})"
            + (f"\n>{escape(reason)}" if reason else "")
            + f"\nRun `{run['id']}`. An approver other than {escape(run['requester'])} decides; "
              "the approval is signed with the approver's key and verified by the preflight.")
    return {"response_type": "in_channel", "text": text, "blocks": [
        {"type": "section", "text": {"type": "mrkdwn", "text": text}},
        {"type": "actions", "block_id": f"approval-{run['id']}", "elements": [
            {"type": "button", "action_id": "approve", "style": "primary", "value": run["id"],
             "text": {"type": "plain_text", "text": "Approve"},
             "confirm": {"title": {"type": "plain_text", "text": "Approve this change?"},
                         "text": {"type": "mrkdwn", "text": f"{escape(what)} by {escape(run['requester'])}"},
                         "confirm": {"type": "plain_text", "text": "Approve"},
                         "deny": {"type": "plain_text", "text": "Cancel"}}},
            {"type": "button", "action_id": "deny", "style": "danger", "value": run["id"],
             "text": {"type": "plain_text", "text": "Deny"}},
        ]},
    ]}


_OUTCOME_MARK = {"successful": ":white_check_mark:", "check": ":white_check_mark:", "rolled_back": ":rewind:",
                 "halted": ":double_vertical_bar:", "inconclusive": ":grey_question:", "canceled": ":stop_button:",
                 "refused": ":no_entry:", "failed": ":x:"}


def summary_text(run: dict[str, Any], what: str, summary: Mapping[str, Any]) -> str:
    outcome = summary.get("outcome") or "failed"
    lines = [f"{_OUTCOME_MARK.get(outcome, ':x:')} *{escape(what)}*: *{outcome}* (run `{run['id']}`, "
             f"job `{summary.get('job_id')}`, operator {escape(run['requester'])})"]
    if summary.get("converged_version"):
        lines.append(f"converged version: {escape(summary['converged_version'])}")
    if summary.get("approver"):
        lines.append(f"approved by {escape(summary['approver'])}")
    if summary.get("message") and outcome not in ("successful", "check"):
        lines.append(f"> {escape(summary['message'])[:600]}")
    for failure in (summary.get("failures") or [])[:3]:
        evidence = failure.get("evidence") or {}
        lines.append(f"• {escape(failure.get('node'))}: {escape(evidence.get('task') or '')} — "
                     f"{escape(evidence.get('msg') or '')[:300]}")
        for gate in (evidence.get("gates") or [])[:4]:
            if isinstance(gate, dict) and not gate.get("passed", True):
                evidence_text = escape(str(gate.get("evidence", "")))[:200]
                lines.append(f"    gate {escape(gate.get('name'))} FAILED: {evidence_text}")
    if summary.get("failed_nodes") and not summary.get("failures"):
        lines.append(f"failed nodes: {escape(', '.join(summary['failed_nodes']))}")
    if summary.get("report"):
        lines.append(f"report: `{escape(summary['report'])}`")
    return "\n".join(lines)


# --------------------------------------------------------------------------- posting


class Poster:
    """Posts to response URLs under the configured prefixes only; coalesces progress per URL."""

    def __init__(self, prefixes: tuple[str, ...], interval: float,
                 on_post: Callable[[str], None] | None = None) -> None:
        self.prefixes = prefixes
        self.interval = interval
        self._on_post = on_post or (lambda outcome: None)
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="exchpatch-slack")
        self._channels: dict[str, _Channel] = {}
        self._lock = threading.Lock()

    def allowed(self, url: Any) -> bool:
        if not isinstance(url, str) or len(url) > 2048:
            return False
        parts = urlsplit(url)
        if parts.username or parts.password or not parts.hostname:
            return False
        return any(url.startswith(p) for p in self.prefixes)

    def check(self, url: Any) -> str:
        if not self.allowed(url):
            raise Refused("bad_response_url", "the response_url is not under a configured prefix "
                          "(slack.response_url_prefixes); it is never called", 400)
        return url

    def _channel(self, url: str) -> _Channel:
        with self._lock:
            if url not in self._channels:
                self._channels[url] = _Channel(self, url)
            return self._channels[url]

    def send(self, url: str, payload: dict[str, Any], *, final: bool = False) -> None:
        """Queue one post (a summary with ``final``: posted after anything queued, and nothing after it)."""
        if self.allowed(url):
            self._channel(url).send(payload, final)

    def progress(self, url: str, line: str) -> None:
        if self.allowed(url):
            self._channel(url).progress(line)

    def post_now(self, url: str, payload: dict[str, Any]) -> None:
        """Post in the calling thread (the pool's workers call this)."""
        if not self.allowed(url):  # checked again at the last moment
            return
        try:
            response = WebhookClient(url, timeout=10).send_dict(payload)
            self._on_post("ok" if response.status_code < 300 else f"http_{response.status_code}")
        except Exception:  # noqa: BLE001 - a chat post never stops a run; counted in the metrics
            self._on_post("error")

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)


class _Channel:
    """One response URL: its uses, buffered progress lines, the order of posts."""

    def __init__(self, poster: Poster, url: str) -> None:
        self.poster = poster
        self.url = url
        self.uses = 0
        self.lines: list[str] = []
        self.last = 0.0
        self.closed = False
        self.timer: threading.Timer | None = None
        self.lock = threading.Lock()
        self.queue: list[dict[str, Any]] = []
        self.busy = False

    def _enqueue(self, payload: dict[str, Any]) -> None:
        # called with self.lock held; one worker at a time per URL keeps the order
        self.queue.append(payload)
        self.uses += 1
        if not self.busy:
            self.busy = True
            self.poster._pool.submit(self._drain)  # pylint: disable=protected-access

    def _drain(self) -> None:
        while True:
            with self.lock:
                if not self.queue:
                    self.busy = False
                    return
                payload = self.queue.pop(0)
            self.poster.post_now(self.url, payload)

    def send(self, payload: dict[str, Any], final: bool) -> None:
        with self.lock:
            if self.closed:
                return
            if final:
                self.closed = True
                if self.timer:
                    self.timer.cancel()
                if self.lines and self.uses < RESPONSE_URL_USES - 1:
                    self._enqueue(self._progress_payload())
            if self.uses < RESPONSE_URL_USES - (0 if final else 1):
                self._enqueue({"response_type": "in_channel", "replace_original": False, **payload})

    def progress(self, line: str) -> None:
        with self.lock:
            if self.closed:
                return
            self.lines.append(line)
            if self.timer is None:
                wait = max(0.0, self.poster.interval - (time.time() - self.last))
                self.timer = threading.Timer(wait, self._flush)
                self.timer.daemon = True
                self.timer.start()

    def _progress_payload(self) -> dict[str, Any]:
        text = "\n".join(self.lines)
        if len(text) > MAX_TEXT - 20:
            text = "…\n" + text[-(MAX_TEXT - 20):]
        self.lines = []
        self.last = time.time()
        return {"response_type": "in_channel", "replace_original": False, "text": f"```{escape(text)}```"}

    def _flush(self) -> None:
        with self.lock:
            self.timer = None
            # keep one use for the summary: progress beyond that stays in /v1/runs/<id>/events
            if self.closed or not self.lines or self.uses >= RESPONSE_URL_USES - 2:
                return
            self._enqueue(self._progress_payload())


def interaction(body: bytes) -> dict[str, Any]:
    """The JSON ``payload`` of an interactive request (form encoded)."""
    from urllib.parse import parse_qs

    form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    try:
        payload = json.loads((form.get("payload") or [""])[0])
    except ValueError:
        raise Refused("bad_input", "the interaction has no JSON payload", 400) from None
    if not isinstance(payload, dict):
        raise Refused("bad_input", "the interaction payload is not an object", 400)
    return payload
