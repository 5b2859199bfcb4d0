"""The FastAPI application of ``featureguard serve``: OpenAI-compatible routes over an Engine.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``,
``GET /metrics`` (Prometheus text), ``GET /healthz`` (the process answers), ``GET /readyz``
(model and SAEs loaded, preflight passed or skipped, a valid policy active, worker running),
and, only when an admin token is configured, ``POST /admin/reload`` (re-read the policy file)
and ``PUT /admin/policy`` (push policy YAML in the body) with ``Authorization: Bearer TOKEN``.

A choice that a stop or replace rule (or ``on_error: fail_closed``) ended has
``finish_reason: "content_filter"``; every choice carries a ``featureguard`` object
``{"filtered", "action", "rules"}`` (``action``/``rules`` omitted with ``hide_rule_details``)
and the response a top-level ``featureguard`` object with the request id and the policy's name,
revision and sha256.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from monitor.metrics import Metrics
from monitor.policy.reload import PolicyWatcher, ReloadEvent
from monitor.serve.engine import Delta, Done, Engine, Event, Failed, Finish, Job
from monitor.serve.protocol import (
    APIError,
    ChatRequest,
    CompletionRequest,
    Sampling,
    validation_message,
)

UNMETERED = ("/metrics", "/healthz", "/readyz")


@dataclass
class ServeSettings:
    """Server-wide limits and presentation choices."""

    model_name: str
    context_length: int | None = None  # prompt + completion tokens (None: unchecked)
    max_tokens_limit: int = 2048  # the largest max_tokens a request may ask for
    default_max_tokens: int = 256  # chat requests without max_tokens
    hide_rule_details: bool = False  # end users see only `filtered`, not rule ids or actions
    admin_token: str | None = None  # None: /admin/* are off (404)
    created: int = field(default_factory=lambda: int(time.time()))


@dataclass
class ServeState:
    """Everything the routes use; built by the CLI (or a test) and injected."""

    engine: Engine
    metrics: Metrics
    settings: ServeSettings
    watcher: PolicyWatcher | None = None
    preflight: str = "skipped"  # "passed" | "skipped" | "failed: ..."


def create_app(state: ServeState) -> FastAPI:
    """The ASGI app; ``state.engine`` must be started by the caller."""
    app = FastAPI(title="featureguard serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.fg = state
    app.add_middleware(_HTTPMetrics, metrics=state.metrics)
    _errors(app)
    _routes(app, state)
    return app


# ---- errors -------------------------------------------------------------------------------------
def _errors(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        msg = "unknown endpoint" if exc.status_code == 404 else str(exc.detail)
        err = APIError(exc.status_code, f"{msg}: {request.method} {request.url.path}")
        return JSONResponse(err.body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        err = APIError(500, f"internal error: {type(exc).__name__}", type="server_error")
        return JSONResponse(err.body(), status_code=500)


def _parse(model: type[BaseModel], raw: bytes) -> Any:
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise APIError(400, "the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        msg, param = validation_message(exc.errors())
        raise APIError(400, msg, param=param) from None


# ---- routes -------------------------------------------------------------------------------------
def _routes(app: FastAPI, state: ServeState) -> None:
    s = state.settings

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(s)]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str) -> dict[str, Any]:
        _check_model(s, name)
        return _model_card(s)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        req: ChatRequest = _parse(ChatRequest, await request.body())
        _check_model(s, req.model)
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        prompt = await run_in_threadpool(state.engine.encode_chat, messages)
        limit = _limit(s, req.limit, len(prompt), default=s.default_max_tokens)
        return await _respond(state, "chat", req, [prompt], limit)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        req: CompletionRequest = _parse(CompletionRequest, await request.body())
        _check_model(s, req.model)
        prompts = [await run_in_threadpool(state.engine.encode, p) for p in req.prompts]
        if any(not p for p in prompts):
            raise APIError(400, "prompt encodes to no tokens", param="prompt")
        limit = max(_limit(s, req.limit, len(p), default=16) for p in prompts)
        return await _respond(state, "completion", req, prompts, limit)

    @app.get("/metrics")
    async def metrics() -> Response:
        body = generate_latest(state.metrics.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        checks = _readiness(state)
        ok = checks["worker"] and not str(checks["preflight"]).startswith("failed")
        return JSONResponse({"ready": bool(ok), "checks": checks}, status_code=200 if ok else 503)

    @app.post("/admin/reload")
    async def admin_reload(request: Request) -> JSONResponse:
        watcher = _admin(state, request)
        event = await run_in_threadpool(watcher.reload_now)
        return _reload_response(event)

    @app.put("/admin/policy")
    async def admin_policy(request: Request) -> JSONResponse:
        watcher = _admin(state, request)
        raw = await request.body()
        event = await run_in_threadpool(watcher.push, raw, "admin:PUT /admin/policy")
        return _reload_response(event)


def _model_card(s: ServeSettings) -> dict[str, Any]:
    return {"id": s.model_name, "object": "model", "created": s.created, "owned_by": "featureguard"}


def _check_model(s: ServeSettings, name: str) -> None:
    if name != s.model_name:
        raise APIError(
            404,
            f"the model {name!r} does not exist; this server serves {s.model_name!r}",
            param="model",
            code="model_not_found",
        )


def _limit(s: ServeSettings, requested: int | None, prompt_len: int, *, default: int) -> int:
    """The max_tokens a request gets, or a 400 that says which limit it broke."""
    if requested is not None and requested > s.max_tokens_limit:
        raise APIError(
            400,
            f"max_tokens is {requested}; this server allows at most {s.max_tokens_limit}",
            param="max_tokens",
        )
    ctx = s.context_length
    room = None if ctx is None else ctx - prompt_len
    if room is not None and room < 1:
        raise APIError(
            400,
            f"the prompt has {prompt_len} tokens; this model's context is {ctx}",
            param="messages",
            code="context_length_exceeded",
        )
    limit = requested or (default if room is None else min(default, room))
    if room is not None and limit > room:
        raise APIError(
            400,
            f"prompt ({prompt_len} tokens) + max_tokens ({limit}) exceeds this model's context "
            f"of {ctx} tokens",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return limit


def _readiness(state: ServeState) -> dict[str, Any]:
    policy: dict[str, Any] = {}
    if state.watcher is not None:
        snap = state.watcher.snapshot
        last = state.watcher.last_error
        policy = {
            "name": snap.policy.name,
            "revision": snap.revision,
            "sha256": snap.sha256,
            "generation": snap.generation,
            "last_reload_error": last.error if last is not None else None,
        }
    hooks = getattr(state.engine.guarded, "hooks", None)
    return {
        "model": True,
        "saes": bool(hooks is not None and hooks.installed),
        "preflight": state.preflight,
        "policy": policy,
        "worker": state.engine.alive,
        "queued": state.engine.queued(),
    }


def _admin(state: ServeState, request: Request) -> PolicyWatcher:
    token = state.settings.admin_token
    if not token or state.watcher is None:
        raise APIError(404, "admin endpoints are off (set FEATUREGUARD_ADMIN_TOKEN to enable)")
    header = request.headers.get("authorization", "")
    if not header:
        raise APIError(401, "missing Authorization: Bearer token", type="authentication_error")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip(), token):
        raise APIError(403, "invalid admin token", type="permission_error")
    return state.watcher


def _reload_response(event: ReloadEvent) -> JSONResponse:
    body = {
        "ok": event.ok,
        "source": event.path,
        "sha256": event.active_sha256,
        "revision": event.active_revision,
        "generation": event.generation,
    }
    if event.ok:
        return JSONResponse(body)
    err = APIError(422, f"policy refused; the active policy is unchanged\n{event.error}")
    detail = err.body()
    detail["error"]["code"] = "invalid_policy"
    detail["error"]["diagnostics"] = [str(d) for d in event.diagnostics]
    return JSONResponse({**detail, **body}, status_code=422)


# ---- generation ---------------------------------------------------------------------------------
async def _respond(
    state: ServeState,
    kind: str,
    req: ChatRequest | CompletionRequest,
    prompts: list[list[int]],
    limit: int,
) -> Response:
    rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Event] = asyncio.Queue()

    def emit(ev: Event) -> None:
        with contextlib.suppress(RuntimeError):  # the event loop is gone (shutting down)
            loop.call_soon_threadsafe(queue.put_nowait, ev)

    context: dict[str, Any] = {"request_id": rid}
    if req.user:
        context["user"] = req.user
    job = Job(
        rows=[p for p in prompts for _ in range(req.n)],
        sampling=Sampling(req.temperature, req.top_p, req.seed),
        max_tokens=limit,
        stops=req.stops,
        context=context,
        emit=emit,
    )
    state.engine.submit(job)
    usage_prompt = sum(len(p) for p in prompts)
    endpoint = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
    render = _Render(kind, rid, state.settings, req)
    if req.stream:
        stream = _stream(state, job, queue, render, usage_prompt, endpoint)
        return StreamingResponse(
            stream,
            media_type="text/event-stream",
            headers={"X-Request-Id": rid, "Cache-Control": "no-cache"},
        )
    try:
        finishes: list[Finish] = []
        while True:
            ev = await queue.get()
            if isinstance(ev, Finish):
                finishes.append(ev)
            elif isinstance(ev, Done):
                break
            elif isinstance(ev, Failed):
                raise ev.error
    finally:
        job.cancelled.set()  # a client that went away stops its rows
    n_filtered = sum(f.finish_reason == "content_filter" for f in finishes)
    if n_filtered:
        state.metrics.record_filtered(endpoint, n_filtered)
    body = render.full(sorted(finishes, key=lambda f: f.choice), ev, usage_prompt)
    if isinstance(req, CompletionRequest) and req.echo:
        for choice in body["choices"]:
            p = req.prompts[choice["index"] // req.n]
            choice["text"] = p + choice["text"]
    return JSONResponse(body, headers={"X-Request-Id": rid})


async def _stream(
    state: ServeState,
    job: Job,
    queue: asyncio.Queue[Event],
    render: _Render,
    usage_prompt: int,
    endpoint: str,
) -> AsyncIterator[str]:
    def sse(obj: Any) -> str:
        return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"

    try:
        n = len(job.rows)
        req = render.req
        for i in range(n):
            if render.kind == "chat":
                yield sse(render.chunk(i, {"role": "assistant", "content": ""}, None))
            elif isinstance(req, CompletionRequest) and req.echo:
                yield sse(render.chunk(i, req.prompts[i // req.n], None))
        filtered = 0
        while True:
            ev = await queue.get()
            if isinstance(ev, Delta):
                piece = {"content": ev.text} if render.kind == "chat" else ev.text
                yield sse(render.chunk(ev.choice, piece, None))
            elif isinstance(ev, Finish):
                if ev.replacement is not None:
                    piece = {"content": ev.replacement} if render.kind == "chat" else ev.replacement
                    yield sse(render.chunk(ev.choice, piece, None))
                filtered += ev.finish_reason == "content_filter"
                empty: Any = {} if render.kind == "chat" else ""
                yield sse(render.chunk(ev.choice, empty, ev))
            elif isinstance(ev, Done):
                opts = (req.model_extra or {}).get("stream_options") or {}
                if isinstance(opts, dict) and opts.get("include_usage"):
                    yield sse(render.usage_chunk(ev, usage_prompt))
                if filtered:
                    state.metrics.record_filtered(endpoint, filtered)
                yield "data: [DONE]\n\n"
                return
            elif isinstance(ev, Failed):
                yield sse(ev.error.body())
                yield "data: [DONE]\n\n"
                return
    finally:
        job.cancelled.set()


@dataclass
class _Render:
    """Builds response bodies and stream chunks in the OpenAI shapes."""

    kind: str  # "chat" | "completion"
    rid: str
    settings: ServeSettings
    req: ChatRequest | CompletionRequest
    created: int = field(default_factory=lambda: int(time.time()))

    def _choice_info(self, f: Finish) -> dict[str, Any]:
        info: dict[str, Any] = {"filtered": f.finish_reason == "content_filter"}
        if not self.settings.hide_rule_details:
            info.update(action=f.action, rules=list(f.rules))
        return info

    def _top(self, done: Done | None) -> dict[str, Any]:
        top: dict[str, Any] = {"request_id": self.rid}
        if done is not None:
            top.update(policy=done.policy, policy_revision=done.revision, policy_sha256=done.sha256)
        return top

    def _head(self, chunk: bool) -> dict[str, Any]:
        obj = "chat.completion" if self.kind == "chat" else "text_completion"
        if chunk and self.kind == "chat":
            obj += ".chunk"
        return {"id": self.rid, "object": obj, "created": self.created, "model": self.req.model}

    def full(self, finishes: list[Finish], done: Done, prompt_tokens: int) -> dict[str, Any]:
        choices = []
        for f in finishes:
            c: dict[str, Any] = {"index": f.choice, "finish_reason": f.finish_reason}
            if self.kind == "chat":
                c["message"] = {"role": "assistant", "content": f.text}
            else:
                c.update(text=f.text, logprobs=None)
            c["featureguard"] = self._choice_info(f)
            choices.append(c)
        completion = sum(f.completion_tokens for f in finishes)
        return {
            **self._head(chunk=False),
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion,
                "total_tokens": prompt_tokens + completion,
            },
            "featureguard": self._top(done),
        }

    def chunk(self, index: int, piece: Any, finish: Finish | None) -> dict[str, Any]:
        c: dict[str, Any] = {"index": index, "finish_reason": None}
        if self.kind == "chat":
            c["delta"] = piece
        else:
            c.update(text=piece, logprobs=None)
        body = {**self._head(chunk=True), "choices": [c]}
        if finish is not None:
            c["finish_reason"] = finish.finish_reason
            c["featureguard"] = self._choice_info(finish)
            body["featureguard"] = self._top(None)
        return body

    def usage_chunk(self, done: Done, prompt_tokens: int) -> dict[str, Any]:
        return {
            **self._head(chunk=True),
            "choices": [],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": done.completion_tokens,
                "total_tokens": prompt_tokens + done.completion_tokens,
            },
            "featureguard": self._top(done),
        }


# ---- HTTP metrics -------------------------------------------------------------------------------
class _HTTPMetrics:
    """ASGI middleware: one ``http_requests_total`` and latency observation per request (for a
    stream, measured until its last chunk). Scrapes and probes are not counted."""

    def __init__(self, app: Callable[..., Any], metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in UNMETERED:
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), [500]

        async def send_wrapper(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.record_http(scope["path"], status[0], time.perf_counter() - start)
