"""OpenAI-compatible endpoints. Data flows one way:
request -> policy (Router.decide) -> classifier client -> target adapter -> response."""
from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request

from . import openai_format as fmt
from .chat_request import ChatRequest, parse_chat_request, parse_json_body
from .config import RouterConfig
from .costs import cost_usd
from .errors import APIError
from .policy import POLICY_MODEL, Decision, Router
from .targets import GenerationRequest, Target, TargetError, Usage

bp = Blueprint("openai_api", __name__)


@dataclass
class RouterState:
    """Everything the request handlers need, built once by the app factory."""

    config: RouterConfig
    router: Router
    targets: dict[str, Target]


def state() -> RouterState:
    return current_app.extensions["router"]


def _target_error(err: TargetError) -> APIError:
    error_type = "invalid_request_error" if err.status < 500 and err.status != 429 else "api_error"
    headers = {"Retry-After": str(int(err.retry_after_s))} if err.retry_after_s is not None else None
    return APIError(err.status, err.message, type=error_type, code=err.code, headers=headers)


@bp.before_app_request
def _start_clock() -> None:
    g.t0 = time.perf_counter()
    g.upstream_s = 0.0
    g.request_id = request.headers.get("X-Request-ID") or uuid.uuid4().hex


@bp.after_app_request
def _request_id_header(resp: Response) -> Response:
    resp.headers["x-request-id"] = g.get("request_id", "")
    return resp


def _routing_headers(decision: Decision, upstream_s: float) -> dict[str, str]:
    headers = {
        "x-router-target": decision.target,
        "x-router-policy": decision.policy or "manual",
        "x-router-overhead-ms": f"{(time.perf_counter() - g.t0 - upstream_s) * 1000:.3f}",
    }
    if decision.score is not None:
        headers["x-router-score"] = f"{decision.score:.6f}"
    if decision.degraded:
        headers["x-router-degraded"] = "true"
    return headers


def _generation(chat: ChatRequest) -> GenerationRequest:
    return GenerationRequest(messages=chat.messages, max_tokens=chat.max_tokens, temperature=chat.temperature,
                             top_p=chat.top_p, stop=chat.stop, seed=chat.seed, passthrough=chat.passthrough)


@bp.post("/v1/chat/completions")
def chat_completions() -> Response:
    chat = parse_chat_request(parse_json_body(request.get_data(cache=False)))
    st = state()
    decision = st.router.decide(chat.model, chat.messages, chat.router)
    target = st.targets[decision.target]
    generation = _generation(chat)
    if chat.stream:
        return _stream_chat(chat, decision, target, generation)

    t_up = time.perf_counter()
    try:
        completion = target.complete(generation)
    except TargetError as err:
        raise _target_error(err) from None
    upstream_s = time.perf_counter() - t_up
    body = fmt.chat_completion(fmt.new_id("chatcmpl"), decision.target, completion)
    resp = jsonify(body)
    resp.headers.update(_routing_headers(decision, upstream_s))
    resp.headers["x-router-cost-usd"] = f"{cost_usd(st.config.target(decision.target), completion.usage):.8f}"
    return resp


def _stream_chat(chat: ChatRequest, decision: Decision, target: Target, generation: GenerationRequest) -> Response:
    t_up = time.perf_counter()
    chunks = target.stream(generation)
    try:
        # Pull the first chunk before answering, so an upstream that is down gets a real HTTP error.
        first = next(chunks, None)
    except TargetError as err:
        raise _target_error(err) from None
    headers = _routing_headers(decision, time.perf_counter() - t_up)
    completion_id, created = fmt.new_id("chatcmpl"), int(time.time())

    def events() -> Iterator[str]:
        yield fmt.sse(fmt.chat_chunk(completion_id, created, decision.target, {"role": "assistant", "content": ""}))
        usage = Usage()
        finish_reason = None
        try:
            for chunk in itertools.chain(() if first is None else (first,), chunks):
                if chunk.usage is not None:
                    usage = chunk.usage
                finish_reason = chunk.finish_reason or finish_reason
                if chunk.text or chunk.delta_extra or chunk.finish_reason:
                    delta: dict[str, Any] = {**({"content": chunk.text} if chunk.text else {}), **chunk.delta_extra}
                    yield fmt.sse(fmt.chat_chunk(completion_id, created, decision.target, delta,
                                                 chunk.finish_reason))
            if finish_reason is None:
                yield fmt.sse(fmt.chat_chunk(completion_id, created, decision.target, {}, "stop"))
            if chat.include_usage:
                yield fmt.sse(fmt.chat_chunk(completion_id, created, decision.target, None, usage=usage))
        except TargetError as err:
            # Headers are gone already: the error travels in the stream, which then ends.
            yield fmt.sse(_target_error(err).body())
        yield fmt.SSE_DONE

    resp = Response(events(), mimetype="text/event-stream")
    resp.headers.update(headers)
    resp.headers["Cache-Control"] = "no-cache"
    resp.headers["X-Accel-Buffering"] = "no"
    return resp


@bp.get("/v1/models")
def list_models() -> Response:
    config = state().config
    created = 0
    data: list[dict[str, Any]] = [{"id": POLICY_MODEL, "object": "model", "created": created, "owned_by": "router",
                                   "router": {"kind": "policy", "policy": config.default_policy}}]
    for policy in config.policies:
        data.append({"id": f"{POLICY_MODEL}:{policy.name}", "object": "model", "created": created,
                     "owned_by": "router", "router": {"kind": "policy", "policy": policy.name,
                                                      "weak": policy.weak, "strong": policy.strong,
                                                      "threshold": policy.threshold}})
    for target in config.targets:
        data.append({"id": target.name, "object": "model", "created": created, "owned_by": target.kind,
                     "router": {"kind": "target", "target_kind": target.kind, "model": target.model,
                                "context_window": target.context_window}})
    return jsonify({"object": "list", "data": data})
