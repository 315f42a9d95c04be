"""The chatops service's ASGI app (FastAPI): Slack's slash command and interactions, the REST API for
other bots, server-sent events, health and Prometheus metrics. docs/chatops.md is its manual and
docs/chatops-openapi.json its OpenAPI document."""


import asyncio
import collections
import contextlib
import json
import math
import threading
import time
from contextlib import asynccontextmanager
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.sse import EventSourceResponse, ServerSentEvent
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from exchpatch.serve import slack
from exchpatch.serve.config import Config, Identity
from exchpatch.serve.runs import Refused, RunManager, describe, public
from exchpatch.serve.store import LIVE_STATES, RunStore

VERSION = "1"


# --------------------------------------------------------------------------- request models


class Deployment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    patch_id: str = Field(max_length=128, examples=["matching-engine-1.4.3"])
    check: bool = False
    emergency: bool = Field(False, description="override a freeze window; needs a reason and an approval")
    downgrade: bool = Field(False, description="an older release than a node runs; needs a reason and an approval")
    reason: str | None = Field(None, max_length=500)


class Rollback(BaseModel):
    model_config = ConfigDict(extra="forbid")
    component: str = Field(max_length=64, examples=["matching-engine"])
    to: str | None = Field(None, max_length=64, description="a version kept on the nodes (default: the previous)")
    check: bool = False


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid")
    run_id: str = Field(max_length=64)
    decision: str = Field(pattern="^(approve|deny)$")
    reason: str | None = Field(None, max_length=500)


# --------------------------------------------------------------------------- limits


class BodyLimit:
    """Refuse a body over ``limit`` bytes (413) before any route reads it, by Content-Length or by counting."""

    def __init__(self, app: ASGIApp, limit: int, on_refusal: Any) -> None:
        self.app = app
        self.limit = limit
        self.on_refusal = on_refusal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.limit:
                await self._refuse(scope, receive, send)
                return
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.on_refusal("too_large")
        response = JSONResponse({"error": f"the request body is larger than {self.limit} bytes "
                                 "(limits.max_body_bytes); send less", "refused": "too_large"}, status_code=413)
        await response(scope, receive, send)


class RateLimit:
    """``per_minute`` requests per identity in any sixty seconds; Refused(429) with the seconds to wait."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._seen: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)
        self._lock = threading.Lock()

    def check(self, who: str) -> None:
        now = time.monotonic()
        with self._lock:
            window = self._seen[who]
            while window and now - window[0] >= 60:
                window.popleft()
            if len(window) >= self.per_minute:
                wait = max(1, math.ceil(60 - (now - window[0])))
                raise RateLimited(who, self.per_minute, wait)
            window.append(now)


class RateLimited(Refused):
    def __init__(self, who: str, per_minute: int, retry_after: int) -> None:
        super().__init__("rate_limited", f"{who} sent more than {per_minute} requests in a minute "
                         f"(limits.requests_per_minute); try again in {retry_after} s", 429)
        self.retry_after = retry_after


# --------------------------------------------------------------------------- the app


class Metrics:
    def __init__(self, manager_in_flight: Any) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("exchpatch_serve_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=self.registry)
        self.refusals = Counter("exchpatch_serve_refusals", "requests refused before any job started, by reason",
                                ["reason"], registry=self.registry)
        self.runs = Counter("exchpatch_serve_runs", "runs ended, by kind and outcome", ["kind", "outcome"],
                            registry=self.registry)
        self.posts = Counter("exchpatch_serve_slack_posts", "posts to Slack response URLs, by result", ["result"],
                             registry=self.registry)
        self.in_flight = Gauge("exchpatch_serve_runs_in_flight", "deploys and rollbacks running now",
                               registry=self.registry)
        self.in_flight.set_function(manager_in_flight)
        self.ack = Histogram("exchpatch_serve_ack_seconds", "time to answer a Slack request",
                             buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 3, 5), registry=self.registry)


def create_app(config: Config) -> FastAPI:
    """The service for ``config``; the store opens now, runs left in flight are marked interrupted."""
    store = RunStore(config.store_backend, path=config.store_path)
    holder: dict[str, Any] = {}
    metrics = Metrics(lambda: holder["manager"].in_flight() if "manager" in holder else 0)
    poster = slack.Poster(config.response_url_prefixes, config.progress_interval,
                          on_post=lambda result: metrics.posts.labels(result).inc())

    def notify(run: dict[str, Any], kind: str, data: dict[str, Any]) -> None:
        url = (run.get("notify") or {}).get("response_url")
        if not url:
            return
        what = describe(run)
        if kind == "progress":
            poster.progress(url, data.get("text", ""))
        elif kind == "approved":
            poster.send(url, {"text": f":white_check_mark: {slack.escape(data['by'])} approved {slack.escape(what)} "
                              f"at {(run.get('approval') or {}).get('decided_at')}; starting run `{run['id']}`"})
        elif kind == "denied":
            poster.send(url, {"text": f":no_entry: {slack.escape(data['by'])} denied {slack.escape(what)}; nothing "
                              "ran"}, final=True)
        elif kind == "finished":
            poster.send(url, {"text": slack.summary_text(run, what, data or run.get("result") or {})}, final=True)

    manager = RunManager(config, store, notify, on_outcome=lambda kind, outcome: metrics.runs.labels(
        kind, outcome).inc())
    holder["manager"] = manager
    limiter = RateLimit(config.requests_per_minute)
    bearer = HTTPBearer(auto_error=False, description="a token whose SHA-256 is in the service's config")

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        interrupted = manager.recover()
        if interrupted:
            threading.Thread(target=_reconcile, daemon=True, name="exchpatch-serve-reconcile").start()
        yield
        await asyncio.to_thread(manager.shutdown, config.cancel_grace)
        poster.close()
        store.close()

    def _reconcile() -> None:
        with contextlib.suppress(Refused):
            manager.read("history")

    app = FastAPI(title="exchpatch serve", version=VERSION, lifespan=lifespan,
                  description="The chatops service of exchangeops.patching (docs/chatops.md): every run goes through "
                  "the driver and the collection's playbooks (preflight, lease, gates, rollback, audit trail).")
    app.state.config = config
    app.state.manager = manager
    app.state.metrics = metrics

    def refused(e: Refused) -> JSONResponse:
        metrics.refusals.labels(e.code).inc()
        headers = {"Retry-After": str(e.retry_after)} if isinstance(e, RateLimited) else None
        return JSONResponse({"error": str(e), "refused": e.code}, status_code=e.status, headers=headers)

    @app.exception_handler(Refused)
    async def _refused(_request: Request, e: Refused) -> JSONResponse:
        return refused(e)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, e: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if e.status_code == 404 else "bad_input"
        return refused(Refused(code, f"{e.detail}: see GET /openapi.json for the routes", e.status_code))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, e: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in err.get('loc', [])[1:]) or 'body'}: {err.get('msg')}"
                             for err in e.errors()[:5])
        return refused(Refused("bad_input", f"the request body is not valid ({problems}); see docs/chatops.md", 400))

    @app.middleware("http")
    async def count(request: Request, call_next: Any) -> Any:
        response = await call_next(request)
        route = request.scope.get("route")
        metrics.requests.labels(getattr(route, "path", "unmatched"), str(response.status_code)).inc()
        return response

    def caller(action: str) -> Any:
        def dependency(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Identity:
            if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
                raise Refused("unknown_token", "no bearer token: send Authorization: Bearer <token> (docs/chatops.md"
                              " § tokens)", 401)
            who = config.identity_for_token(credentials.credentials)
            if who is None:
                raise Refused("unknown_token", "the bearer token is not known to this service; check it, or have "
                              "its SHA-256 added to the identity's token_sha256", 401)
            limiter.check(who.name)
            if not who.may(action):
                raise Refused("forbidden_role", f"{who.name} ({', '.join(sorted(who.roles))}) may not {action}; "
                              f"that needs the {_role_for(action)} role", 403)
            return who

        return Depends(dependency)

    # ------------------------------------------------------------------ REST

    @app.get("/healthz", tags=["service"])
    def healthz() -> dict[str, Any]:
        return {"ok": True, "runs_in_flight": manager.in_flight()}

    @app.get("/metrics", tags=["service"], response_class=PlainTextResponse)
    def prometheus() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(metrics.registry).decode(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/plan", tags=["read"])
    def get_plan(who: Annotated[Identity, caller("plan")]) -> dict[str, Any]:
        return manager.read("plan")

    @app.get("/v1/status", tags=["read"])
    def get_status(who: Annotated[Identity, caller("status")]) -> dict[str, Any]:
        return manager.read("status")

    @app.get("/v1/history", tags=["read"])
    def get_history(who: Annotated[Identity, caller("history")]) -> dict[str, Any]:
        return manager.read("history")

    @app.post("/v1/deployments", status_code=202, tags=["runs"])
    def post_deployment(body: Deployment, who: Annotated[Identity, caller("deploy")]) -> dict[str, Any]:
        return public(manager.submit_deploy(who, "api", patch_id=body.patch_id, check=body.check,
                                            emergency=body.emergency, downgrade=body.downgrade, reason=body.reason))

    @app.post("/v1/rollbacks", status_code=202, tags=["runs"])
    def post_rollback(body: Rollback, who: Annotated[Identity, caller("rollback")]) -> dict[str, Any]:
        return public(manager.submit_rollback(who, "api", component=body.component, to=body.to, check=body.check))

    @app.get("/v1/runs", tags=["runs"])
    def get_runs(who: Annotated[Identity, caller("runs")], limit: int = 50) -> dict[str, Any]:
        return {"runs": [public(r) for r in store.list_runs(limit=max(1, min(limit, 500)))]}

    def _run(run_id: str) -> dict[str, Any]:
        run = store.get_run(run_id)
        if run is None:
            raise Refused("not_found", f"run {run_id[:80]!r} does not exist; GET /v1/runs lists runs", 404)
        return run

    @app.get("/v1/runs/{run_id}", tags=["runs"])
    def get_run(run_id: str, who: Annotated[Identity, caller("runs")]) -> dict[str, Any]:
        return public(_run(run_id))

    def existing(run_id: str, who: Annotated[Identity, caller("runs")]) -> str:
        _run(run_id)
        return run_id

    @app.get("/v1/runs/{run_id}/events", tags=["runs"], response_class=EventSourceResponse)
    async def run_events(request: Request, run_id: Annotated[str, Depends(existing)]) -> Any:
        """The run's events as server-sent events: those stored so far (after Last-Event-ID), then live ones
        until the run ended."""
        after = int(request.headers.get("last-event-id", "0") or 0) if (
            request.headers.get("last-event-id", "0") or "0").isdigit() else 0
        while True:
            events = await asyncio.to_thread(store.events, run_id, after)
            for event in events:
                after = event["seq"]
                yield ServerSentEvent(data=json.dumps(event), event=event["kind"], id=str(event["seq"]))
            if not events:
                run = await asyncio.to_thread(store.get_run, run_id)
                ended = run is None or run["state"] not in LIVE_STATES
                if ended and not await asyncio.to_thread(store.events, run_id, after):
                    return
                if await request.is_disconnected():
                    return
                await asyncio.sleep(0.5)

    @app.post("/v1/runs/{run_id}/cancel", status_code=202, tags=["runs"])
    def cancel_run(run_id: str, who: Annotated[Identity, caller("cancel")]) -> dict[str, Any]:
        return public(manager.cancel(who, run_id))

    @app.post("/v1/approvals", tags=["runs"])
    def post_approval(body: Decision, who: Annotated[Identity, caller("approve")]) -> dict[str, Any]:
        return public(manager.decide(who, body.run_id, body.decision, body.reason))

    # ------------------------------------------------------------------ Slack

    def slack_identity(form: dict[str, Any]) -> Identity:
        if config.team_id and form.get("team_id") != config.team_id:
            raise Refused("foreign_team", f"this service answers one Slack workspace (slack.team_id); the request "
                          f"came from {str(form.get('team_id'))[:32]!r}", 403)
        who = config.by_slack_user.get(str(form.get("user_id") or ""))
        if who is None:
            raise Refused("unknown_user", f"Slack user {str(form.get('user_id'))[:32]} is not known to exchpatch; "
                          "ask the service's owner to add your member id to an identity (slack_users)", 403)
        limiter.check(who.name)
        return who

    async def verified_body(request: Request) -> bytes:
        if config.signing_secret is None:
            raise Refused("not_configured", "Slack is not configured on this service (no slack section)", 404)
        body = await request.body()
        slack.verify(config.signing_secret, body, {k.lower(): v for k, v in request.headers.items()},
                     store.seen_signature)
        return body

    def chat_refusal(e: Refused) -> JSONResponse:
        if e.status in (401, 413, 429):
            return refused(e)
        metrics.refusals.labels(e.code).inc()
        return JSONResponse({**slack.text_message(f":no_entry: {slack.escape(e)}"), "refused": e.code})

    @app.post("/slack/commands", tags=["slack"], include_in_schema=False)
    async def slack_command(request: Request) -> JSONResponse:
        started = time.monotonic()
        try:
            body = await verified_body(request)
            form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()}
            answer = await asyncio.to_thread(_command, form)
        except Refused as e:
            answer = chat_refusal(e)
        metrics.ack.observe(time.monotonic() - started)
        return answer

    def _command(form: dict[str, Any]) -> JSONResponse:
        try:
            who = slack_identity(form)
            command = slack.parse(form.get("text", ""))
            url = form.get("response_url")
            if command.verb == "help":
                return JSONResponse(slack.text_message(slack.HELP))
            url = poster.check(url)
            if not who.may(command.verb if command.verb in ("plan", "status", "history", "deploy", "rollback",
                                                            "cancel") else "runs"):
                raise Refused("forbidden_role", f"{who.name} ({', '.join(sorted(who.roles))}) may not "
                              f"{command.verb}; that needs the {_role_for(command.verb)} role", 403)
            if command.verb in ("plan", "status", "history"):
                threading.Thread(target=_read_to_chat, args=(command.verb, url), daemon=True).start()
                return JSONResponse(slack.text_message(f":hourglass_flowing_sand: reading the {command.verb}…"))
            if command.verb == "cancel":
                run = manager.cancel(who, command.args["run_id"])
                return JSONResponse(slack.text_message(f":stop_button: {who.name} asked to cancel run `{run['id']}` "
                                                       f"({slack.escape(describe(run))}): it stops before its next "
                                                       "node and rolls back the node in flight", in_channel=True))
            notify = {"response_url": url, "channel_id": form.get("channel_id"), "user_id": form.get("user_id")}
            if command.verb == "deploy":
                run = manager.submit_deploy(who, "slack", notify=notify, **command.args)
            else:
                run = manager.submit_rollback(who, "slack", notify=notify, **command.args)
            if run["state"] == "awaiting_approval":
                return JSONResponse(slack.approval_message(run, describe(run)))
            if run["state"] != "running":
                return JSONResponse(slack.text_message(slack.summary_text(run, describe(run), run.get("result") or {
                    "outcome": run.get("outcome"), "message": run.get("message")}), in_channel=True))
            return JSONResponse(slack.text_message(
                f":rocket: {slack.escape(who.name)} started {slack.escape(describe(run))}: run `{run['id']}`; "
                "progress and the summary follow here", in_channel=True))
        except Refused as e:
            return chat_refusal(e)

    def _read_to_chat(what: str, url: str) -> None:
        try:
            text = _format_read(what, manager.read(what))
        except Refused as e:
            text = f":x: {what} failed: {e}"
        poster.send(url, {"response_type": "ephemeral", "text": text}, final=True)

    @app.post("/slack/interactions", tags=["slack"], include_in_schema=False)
    async def slack_interaction(request: Request) -> JSONResponse:
        try:
            body = await verified_body(request)
            payload = slack.interaction(body)
            return await asyncio.to_thread(_interaction, payload)
        except Refused as e:
            return chat_refusal(e)

    def _interaction(payload: dict[str, Any]) -> JSONResponse:
        url = payload.get("response_url")
        try:
            user = payload.get("user") or {}
            team = (payload.get("team") or {}).get("id") or user.get("team_id")
            who = slack_identity({"team_id": team, "user_id": user.get("id")})
            actions = payload.get("actions") or []
            if payload.get("type") != "block_actions" or not actions or not isinstance(actions[0], dict):
                raise Refused("bad_input", "only the Approve and Deny buttons are interactive", 400)
            action = actions[0]
            if action.get("action_id") not in ("approve", "deny"):
                raise Refused("bad_input", f"unknown action {str(action.get('action_id'))[:40]!r}", 400)
            run = manager.decide(who, str(action.get("value") or ""), action["action_id"])
            text = (f":white_check_mark: {slack.escape(who.name)} approved {slack.escape(describe(run))} at "
                    f"{(run.get('approval') or {}).get('decided_at')}; run `{run['id']}` started"
                    if action["action_id"] == "approve" else
                    f":no_entry: {slack.escape(who.name)} denied {slack.escape(describe(run))}; nothing ran")
            if poster.allowed(url):
                poster.send(url, {"replace_original": True, "text": text})
            return JSONResponse({"text": text, "run": public(run)})
        except Refused as e:
            if e.status not in (401, 413, 429) and poster.allowed(url):
                poster.send(url, {"response_type": "ephemeral", "replace_original": False,
                                  "text": f":no_entry: {e}"})
            return chat_refusal(e)

    app.add_middleware(BodyLimit, limit=config.max_body_bytes, on_refusal=lambda code: metrics.refusals.labels(
        code).inc())
    return app


def _role_for(action: str) -> str:
    return "approver" if action == "approve" else "operator" if action in ("deploy", "rollback", "cancel") \
        else "viewer"


def _format_read(what: str, data: dict[str, Any]) -> str:
    if what == "status":
        lines = [f"*fleet status* ({len(data.get('nodes') or [])} nodes)"]
        for name, comp in (data.get("components") or {}).items():
            versions = comp.get("versions") if isinstance(comp, dict) else comp
            lines.append(f"• {slack.escape(name)}: {slack.escape(json.dumps(versions))}")
        for lock in data.get("locks") or []:
            lines.append(f"• lease {slack.escape(lock.get('scope'))}: {slack.escape(lock.get('owner'))} "
                         f"(run {slack.escape(lock.get('run_id'))})")
        if data.get("drift"):
            lines.append(f"drift: {slack.escape(json.dumps(data['drift']))[:500]}")
        if data.get("unreachable"):
            lines.append(f":warning: no answer from {slack.escape(', '.join(data['unreachable']))}")
        return "\n".join(lines)
    if what == "history":
        runs = (data.get("runs") or [])[-10:]
        if not runs:
            return "no runs recorded yet"
        return "*recent runs* (audit trail)\n" + "\n".join(
            f"• `{slack.escape(r.get('run'))}` {slack.escape(r.get('playbook'))} "
            f"{slack.escape(r.get('patch_id') or '')}"
            f" by {slack.escape(r.get('operator'))}: *{slack.escape(r.get('outcome'))}*"
            + (f", approved by {slack.escape(r['approver'])}" if r.get("approver") else "") for r in reversed(runs))
    plan = data.get("plan")
    if not plan:
        return f":x: plan failed: {slack.escape(data.get('message') or 'no plan')}"
    from exchpatch.cli import _plan_text  # the CLI's table, the one shell operators read

    text = _plan_text(plan)
    return f"```{slack.escape(text if len(text) < 2800 else text[:2790] + '…')}```"
