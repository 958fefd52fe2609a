"""OpenAI-compatible endpoints. Data flows one way:
request -> policy (Router.decide) -> classifier client -> target adapter (Dispatcher) -> response."""
from __future__ import annotations

import dataclasses
import itertools
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request

from . import openai_format as fmt
from .chat_request import (ChatRequest, CompletionRequest, Message, parse_chat_request, parse_completion_request,
                           parse_json_body)
from .config import RouterConfig
from .costs import cost_usd
from .dispatch import Dispatcher, Served
from .errors import APIError
from .policy import POLICY_MODEL, Decision, Router, RoutingRequest
from .stats import Stats
from .targets import Completion, GenerationRequest, TargetError, Usage

bp = Blueprint("openai_api", __name__)


@dataclass
class RouterState:
    """Everything the request handlers need, built once by the app factory."""

    config: RouterConfig
    router: Router
    dispatcher: Dispatcher
    stats: Stats


def state() -> RouterState:
    return current_app.extensions["router"]


def _target_error(err: TargetError) -> APIError:
    error_type = "invalid_request_error" if err.status < 500 and err.status != 429 else "api_error"
    headers = {"Retry-After": str(max(1, round(err.retry_after_s)))} if err.retry_after_s is not None else None
    return APIError(err.status, err.message, type=error_type, code=err.code, headers=headers)


@bp.before_app_request
def _start_clock() -> None:
    g.t0 = time.perf_counter()
    g.request_id = request.headers.get("X-Request-ID") or uuid.uuid4().hex


@bp.after_app_request
def _request_id_header(resp: Response) -> Response:
    resp.headers["x-request-id"] = g.get("request_id", "")
    return resp


def _routing_headers(decision: Decision, served: Served, overhead_s: float) -> dict[str, str]:
    headers = {
        "x-router-target": served.target,
        "x-router-policy": decision.policy or "manual",
        "x-router-reason": decision.reason,
        "x-router-overhead-ms": f"{overhead_s * 1000:.3f}",
    }
    if decision.score is not None:
        headers["x-router-score"] = f"{decision.score:.6f}"
    if decision.degraded:
        headers["x-router-degraded"] = "true"
    if served.fell_back:
        headers["x-router-fallback-from"] = ",".join(served.attempts[:-1])
    return headers


def _account(st: RouterState, decision: Decision, served: Served, usage: Usage) -> float:
    """Record the answer in the running totals; returns its cost."""
    cost = cost_usd(st.config.target(served.target), usage)
    baseline = None
    if decision.policy is not None:
        strongest = st.config.policy(decision.policy).targets[-1]
        baseline = cost_usd(st.config.target(strongest), usage)
    st.stats.record(served.target, decision.policy, usage, cost, baseline, fallback=served.fell_back,
                    degraded=decision.degraded)
    return cost


def _route(req: ChatRequest | CompletionRequest) -> tuple[Decision, GenerationRequest]:
    is_chat = isinstance(req, ChatRequest)
    messages = req.messages if is_chat else (Message("user", req.prompt, {}),)
    decision = state().router.decide(RoutingRequest(
        model=req.model, messages=messages, overrides=req.router, max_tokens=req.max_tokens, is_chat=is_chat,
        needs_tools=bool(req.passthrough.get("tools") or req.passthrough.get("response_format"))))
    generation = GenerationRequest(messages=req.messages if is_chat else None, prompt=None if is_chat else req.prompt,
                                   max_tokens=req.max_tokens, temperature=req.temperature, top_p=req.top_p,
                                   stop=req.stop, seed=req.seed, passthrough=req.passthrough)
    return decision, generation


def _serve(req: ChatRequest | CompletionRequest, render: Callable[[str, str, Completion], dict[str, Any]],
           chunker: Callable[..., dict[str, Any]], prefix: str) -> Response:
    st = state()
    decision, generation = _route(req)
    if req.stream:
        return _serve_stream(req, decision, generation, chunker, prefix)
    t_up = time.perf_counter()
    try:
        completion, served = st.dispatcher.complete(decision.candidates, generation)
    except TargetError as err:
        st.stats.record_error(decision.target)
        raise _target_error(err) from None
    upstream_s = time.perf_counter() - t_up
    usage = st.router.fill_usage(decision, served.target, completion.usage, completion.text)
    if usage is not completion.usage:
        completion = dataclasses.replace(completion, usage=usage)
    cost = _account(st, decision, served, usage)
    resp = jsonify(render(fmt.new_id(prefix), served.target, completion))
    resp.headers.update(_routing_headers(decision, served, time.perf_counter() - g.t0 - upstream_s))
    resp.headers["x-router-cost-usd"] = f"{cost:.8f}"
    return resp


def _serve_stream(req: ChatRequest | CompletionRequest, decision: Decision, generation: GenerationRequest,
                  chunker: Callable[..., dict[str, Any]], prefix: str) -> Response:
    st = state()
    overhead_s = time.perf_counter() - g.t0
    try:
        # The first chunk is pulled before answering: a target that is down gets a real HTTP
        # error (or a fallback), not a 200 with an error inside.
        first, chunks, served = st.dispatcher.stream(decision.candidates, generation)
    except TargetError as err:
        st.stats.record_error(decision.target)
        raise _target_error(err) from None
    completion_id, created = fmt.new_id(prefix), int(time.time())

    def chunk(*args: Any, **kwargs: Any) -> str:
        return fmt.sse(chunker(completion_id, created, served.target, *args, **kwargs))

    def events() -> Iterator[str]:
        usage, finish_reason, texts = Usage(), None, []
        if isinstance(req, ChatRequest):
            yield chunk({"role": "assistant", "content": ""})
        try:
            for part in itertools.chain(() if first is None else (first,), chunks):
                usage = part.usage or usage
                finish_reason = part.finish_reason or finish_reason
                texts.append(part.text)
                if part.text or part.delta_extra or part.finish_reason:
                    yield chunk({**({"content": part.text} if part.text else {}), **part.delta_extra},
                                part.finish_reason)
            if finish_reason is None:
                yield chunk({}, "stop")
            usage = st.router.fill_usage(decision, served.target, usage, "".join(texts))
            if req.include_usage:
                yield chunk(None, usage=usage)
            _account(st, decision, served, usage)
        except TargetError as err:
            # The headers are gone already: the error travels in the stream, which then ends.
            st.stats.record_error(served.target)
            yield fmt.sse(_target_error(err).body())
        yield fmt.SSE_DONE

    resp = Response(events(), mimetype="text/event-stream")
    resp.headers.update(_routing_headers(decision, served, overhead_s))
    resp.headers["Cache-Control"] = "no-cache"
    resp.headers["X-Accel-Buffering"] = "no"
    return resp


@bp.post("/v1/chat/completions")
def chat_completions() -> Response:
    req = parse_chat_request(parse_json_body(request.get_data(cache=False)))
    return _serve(req, fmt.chat_completion, fmt.chat_chunk, "chatcmpl")


@bp.post("/v1/completions")
def completions() -> Response:
    req = parse_completion_request(parse_json_body(request.get_data(cache=False)))
    return _serve(req, fmt.text_completion, fmt.text_chunk, "cmpl")


def _policy_entry(config: RouterConfig, name: str, model_id: str) -> dict[str, Any]:
    policy = config.policy(name)
    info: dict[str, Any] = {"kind": "policy", "policy": policy.name, "policy_kind": policy.kind,
                            "targets": policy.targets}
    if policy.kind == "threshold":
        info.update(weak=policy.weak, strong=policy.strong, threshold=policy.threshold,
                    strong_share=policy.strong_share)
    else:
        info["tiers"] = [t.model_dump() for t in policy.tiers]
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "router", "router": info}


@bp.get("/v1/models")
def list_models() -> Response:
    config = state().config
    data = [_policy_entry(config, config.default_policy, POLICY_MODEL)]
    data += [_policy_entry(config, p.name, f"{POLICY_MODEL}:{p.name}") for p in config.policies]
    for target in config.targets:
        data.append({"id": target.name, "object": "model", "created": 0, "owned_by": target.kind,
                     "router": {"kind": "target", "target_kind": target.kind, "model": target.model,
                                "context_window": target.context_window, "self_hosted": target.is_self_hosted,
                                "usd_per_1m_input_tokens": target.usd_per_1m_input_tokens,
                                "usd_per_1m_output_tokens": target.usd_per_1m_output_tokens}})
    return jsonify({"object": "list", "data": data})


@bp.get("/v1/router/stats")
def router_stats() -> Response:
    st = state()
    calibration = {name: client.calibration() for name, client in st.router.classifiers.items()}
    breakers = {name: vars(b.snapshot()) for name, b in st.dispatcher.breakers.items()}
    return jsonify({**st.stats.snapshot(), "circuit_breakers": breakers, "calibration": calibration,
                    "policies": {p.name: {"threshold": p.threshold, "strong_share": p.strong_share}
                                 for p in st.config.policies}})
