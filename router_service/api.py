"""OpenAI-compatible endpoints: the HTTP layer. Data flows one way:
request (api_models) -> decision (policy.Router, which calls the classifier) -> dispatch
(Dispatcher: fallbacks, breakers) -> target adapter -> accounting -> response (openai_format).
This module knows HTTP and nothing about how a target is chosen or what tokens cost."""
from __future__ import annotations

import dataclasses
import itertools
import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request, stream_with_context

from . import openai_format as fmt
from .access import AccessError, Gate, Grant
from .accounting import Accounting, Receipt, blended_cost_ratio
from .api_models import ChatCompletionRequest, CompletionRequest, FeedbackRequest, parse_body, parse_json
from .config import RouterConfig
from .decision_log import DecisionLog, DecisionRow, FeedbackRow
from .dispatch import Dispatcher, Served
from .errors import APIError, bad_request, target_error
from .generation import GenerationRequest, Usage
from .policy import POLICY_MODEL, Decision, Router
from .metrics import RouterMetrics
from .request_log import RequestLog
from .shadow import Shadows
from .trials import Trials
from .store import Store
from .strategies import RoutingStrategy
from .targets import TargetError

bp = Blueprint("openai_api", __name__)


@dataclass
class RouterState:
    """Everything the request handlers need, built once by the app factory."""

    config: RouterConfig
    router: Router
    dispatcher: Dispatcher
    accounting: Accounting
    request_log: RequestLog
    metrics: RouterMetrics
    gate: Gate
    store: Store | None = None
    decision_log: DecisionLog | None = None
    shadows: Shadows | None = None
    trials: Trials | None = None


def state() -> RouterState:
    return current_app.extensions["router"]


# A client's X-Request-ID is kept when it is a plain token (it travels on to the upstream and
# into the logs); anything else is replaced by an id of our own.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


GENERATION_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})
UNLOGGED_PREFIXES = ("/health/", "/metrics", "/ui")  # probes, scrapes and page assets would drown the traffic
CLIENT_GONE = 499  # nginx's status for a client that left before the answer ended


@dataclass
class Exchange:
    """One request as its log line and metrics see it, filled in as it goes. Kept outside
    Flask's context so that a stream can be recorded after its client has gone."""

    request_id: str
    method: str
    path: str
    t0: float
    decision: Decision | None = None
    served: Served | None = None
    receipt: Receipt | None = None
    upstream_s: float | None = None
    ttft_s: float | None = None
    generation: GenerationRequest | None = None
    answer: str | None = None
    grant: Grant | None = None
    refused: str | None = None  # the AccessError code that refused it
    status: int | None = None  # the outcome; a stream sets its own when it ends (None: the client left)
    total_s: float | None = None  # the time until the answer (or the stream) ended
    settled: bool = False
    recorded: bool = False


@bp.before_app_request
def _start_clock() -> None:
    given = request.headers.get("X-Request-ID", "")
    g.exchange = Exchange(given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex, request.method,
                          request.path, time.perf_counter())
    if request.path in GENERATION_PATHS:
        state().metrics.in_flight.inc()


@bp.after_app_request
def _finish_request(resp: Response) -> Response:
    """Answer the request id; settle the key's spend now, and log and count the request once the
    server has sent the whole answer (WSGI close), so that the client does not wait for that."""
    ex: Exchange = g.exchange
    resp.headers["x-request-id"] = ex.request_id
    if ex.grant is not None:
        resp.headers.update(ex.grant.headers)
    if ex.path.startswith(UNLOGGED_PREFIXES):
        return resp
    st = state()
    if not (resp.mimetype == "text/event-stream" and resp.status_code == 200):  # a stream settles as it ends
        ex.status, ex.total_s = resp.status_code, time.perf_counter() - ex.t0
        _settle(st, ex)  # before the answer: the client's next request sees what this one spent
    resp.call_on_close(lambda: _record(st, ex))
    return resp


def _settle(st: RouterState, ex: Exchange) -> None:
    """The key's real tokens and cost replace its reservation, once."""
    if ex.settled or ex.grant is None:
        return
    ex.settled = True
    usage = ex.receipt.usage if ex.receipt is not None else None
    st.gate.settle(ex.grant, 0 if usage is None else usage.prompt_tokens + usage.completion_tokens,
                   0.0 if ex.receipt is None else ex.receipt.cost_usd)


def _record(st: RouterState, ex: Exchange) -> None:
    """The request's log line and metrics, once, after it ended."""
    if ex.recorded:
        return
    ex.recorded = True
    status = CLIENT_GONE if ex.status is None else ex.status
    total_s = ex.total_s if ex.total_s is not None else time.perf_counter() - ex.t0
    _settle(st, ex)
    if ex.path in GENERATION_PATHS:
        _count(st.metrics, ex, status, total_s)
        if st.decision_log is not None and ex.decision is not None:
            st.decision_log.record(_decision_row(st.decision_log, ex, status, total_s))
        decision, req = ex.decision, ex.generation
        if (st.shadows is not None and status == 200 and decision is not None and decision.policy is not None
                and ex.served is not None and ex.answer is not None and req is not None):
            st.shadows.consider(req, decision, ex.served.target, ex.answer,
                                st.router.strategies[decision.policy].settings)
        if st.trials is not None and decision is not None and decision.trial_version is not None and req is not None:
            st.trials.consider(req, decision, st.router.strategies[decision.policy or ""].settings)
    if st.request_log.enabled:
        _log_request(st.request_log, ex, status, total_s)


def _decision_row(log: DecisionLog, ex: Exchange, status: int, total_s: float) -> DecisionRow:
    decision, receipt, req = ex.decision, ex.receipt, ex.generation
    assert decision is not None
    keep = req is not None and log.keeps_text(decision.policy, decision.private is not None)
    return DecisionRow(
        request_id=ex.request_id, time=time.time(), key_id=_key_id(ex.grant),
        model=None if req is None else req.model, policy=decision.policy, target=ex.served.target if ex.served
        else decision.target, reason=decision.reason, score=decision.score, confidence=decision.confidence,
        strong_share=decision.strong_share, model_version=decision.model_version, status=status,
        prompt_tokens=None if receipt is None else receipt.usage.prompt_tokens,
        completion_tokens=None if receipt is None else receipt.usage.completion_tokens,
        cost_usd=None if receipt is None else receipt.cost_usd, latency_ms=round(total_s * 1000, 3),
        prompt=json.dumps([{"role": m.role, "content": m.content} for m in req.messages]) if keep and req else None,
        answer=ex.answer if keep else None)


def _key_id(grant: Grant | None) -> str | None:
    return None if grant is None or grant.key is None else grant.key.id


def _count(m: RouterMetrics, ex: Exchange, status: int, total_s: float) -> None:
    decision, served, receipt = ex.decision, ex.served, ex.receipt
    m.in_flight.dec()
    policy = "none" if decision is None else decision.policy_label
    target = served.target if served is not None else ("none" if decision is None else decision.target)
    status_class = f"{status // 100}xx"
    reason = "none" if decision is None else decision.reason
    m.requests.labels(policy, target, reason, status_class).inc()
    if ex.refused is not None:
        m.refusals.labels(ex.refused).inc()
    m.duration.labels(policy, status_class).observe(total_s)
    if ex.upstream_s is not None:
        m.upstream.labels(target).observe(ex.upstream_s)
        m.overhead.labels(policy).observe(max(0.0, total_s - ex.upstream_s))
        m.after_upstream_call()
    if ex.ttft_s is not None:
        m.ttft.labels(target).observe(ex.ttft_s)
    if decision is not None:
        if decision.policy is not None:
            m.decisions.labels(policy, str(decision.target == decision.baseline_target).lower()).inc()
        if decision.classifier_ms is not None:
            m.classifier.labels(policy).observe(decision.classifier_ms / 1000)
        if decision.degraded:
            m.degraded.labels(policy).inc()
        if decision.low_confidence:
            m.low_confidence.labels(policy).inc()
        if decision.confidence is not None:
            m.confidence.labels(policy).observe(decision.confidence)
        if decision.model_version is not None:
            m.set_model_version(decision.model_version)
            if decision.policy is not None:
                m.version_decisions.labels(policy, decision.model_version,
                                           str(decision.target == decision.baseline_target).lower()).inc()
    if served is not None and served.fell_back:
        m.fallbacks.labels(served.attempts[0], served.target).inc()
    if receipt is not None:
        m.tokens.labels(target, "prompt").inc(receipt.usage.prompt_tokens)
        m.tokens.labels(target, "completion").inc(receipt.usage.completion_tokens)
        m.cost.labels(policy, target).inc(receipt.cost_usd)
        if receipt.baseline_cost_usd is not None:
            m.baseline.labels(policy).inc(receipt.baseline_cost_usd)


def _log_request(log: RequestLog, ex: Exchange, status: int, total_s: float) -> None:
    decision, served, receipt, req = ex.decision, ex.served, ex.receipt, ex.generation
    log.emit({
        "request_id": ex.request_id, "method": ex.method, "path": ex.path, "status": status,
        "model": None if req is None else req.model, "stream": None if req is None else req.stream,
        "policy": None if decision is None else decision.policy_label,
        "target": served.target if served is not None else (None if decision is None else decision.target),
        "reason": None if decision is None else decision.reason,
        "score": None if decision is None else decision.score,
        "confidence": None if decision is None else decision.confidence,
        "strong_share": None if decision is None else decision.strong_share,
        "model_version": None if decision is None else decision.model_version,
        "fallback_from": None if served is None or not served.fell_back else list(served.attempts[:-1]),
        "duration_ms": round(total_s * 1000, 3),
        "upstream_ms": None if ex.upstream_s is None else round(ex.upstream_s * 1000, 3),
        "ttft_ms": None if ex.ttft_s is None else round(ex.ttft_s * 1000, 3),
        "overhead_ms": None if ex.upstream_s is None else round((total_s - ex.upstream_s) * 1000, 3),
        "prompt_tokens": None if receipt is None else receipt.usage.prompt_tokens,
        "completion_tokens": None if receipt is None else receipt.usage.completion_tokens,
        "cost_usd": None if receipt is None else round(receipt.cost_usd, 10),
        # Dropped by the log unless the operator opted in (server.log_prompts).
        "prompt": None if req is None or not log.log_prompts else [m.content for m in req.messages],
        "answer": ex.answer if log.log_prompts else None,
    })


def _routing_headers(decision: Decision, served: Served, overhead_s: float) -> dict[str, str]:
    headers = {
        "x-router-target": served.target,
        "x-router-policy": decision.policy_label,
        "x-router-reason": decision.reason,
        "x-router-overhead-ms": f"{overhead_s * 1000:.3f}",
    }
    if decision.score is not None:
        headers["x-router-score"] = f"{decision.score:.6f}"
    if decision.confidence is not None:
        headers["x-router-confidence"] = f"{decision.confidence:.4f}"
    if decision.model_version is not None:
        headers["x-router-model-version"] = decision.model_version
    if decision.degraded:
        headers["x-router-degraded"] = "true"
    if served.fell_back:
        headers["x-router-fallback-from"] = ",".join(served.attempts[:-1])
    return headers


def _admit(st: RouterState, ex: Exchange, req: GenerationRequest) -> Grant:
    """The client's key first, then what it may use, its budget and limits (access.py)."""
    try:
        key = st.gate.identify(request.headers.get("Authorization"))
        policy = st.router.policy_for(req)
        grant = ex.grant = st.gate.admit(key, req, None if policy is None else policy.name)
    except AccessError as err:
        ex.refused = err.code
        raise
    return grant


def _serve(req: GenerationRequest) -> Response:
    st, ex = state(), g.exchange
    req = ex.generation = dataclasses.replace(req, request_id=ex.request_id)
    grant = _admit(st, ex, req)
    decision = ex.decision = st.router.decide(req, downgrade=grant.downgrade)
    if req.stream:
        return _serve_stream(st, ex, req, decision)
    t_up = time.perf_counter()
    try:
        completion, served = st.dispatcher.complete(decision.candidates, req)
    except TargetError:
        st.accounting.failed(decision.target)
        raise
    finally:
        ex.upstream_s = time.perf_counter() - t_up
    receipt = st.accounting.settle(decision, served.target, completion.usage, completion.text,
                                   fell_back=served.fell_back)
    ex.served, ex.receipt, ex.answer = served, receipt, completion.text
    resp = jsonify(fmt.render(req.kind, fmt.new_id(req.kind), served.target, completion, receipt.usage))
    resp.headers.update(_routing_headers(decision, served, time.perf_counter() - ex.t0 - ex.upstream_s))
    resp.headers["x-router-cost-usd"] = f"{receipt.cost_usd:.8f}"
    return resp


def _serve_stream(st: RouterState, ex: Exchange, req: GenerationRequest, decision: Decision) -> Response:
    overhead_s = time.perf_counter() - ex.t0
    t_up = time.perf_counter()
    try:
        # The first chunk is pulled before answering: a target that is down gets a real HTTP
        # error (or a fallback), not a 200 with an error inside.
        first, chunks, served = st.dispatcher.stream(decision.candidates, req)
    except TargetError:
        ex.upstream_s = time.perf_counter() - t_up
        st.accounting.failed(decision.target)
        raise
    ex.served = served
    if first is not None:
        ex.ttft_s = time.perf_counter() - ex.t0
    chunk = fmt.chunker(req.kind, fmt.new_id(req.kind), int(time.time()), served.target)

    def events() -> Iterator[str]:
        usage, finish_reason, texts, status = Usage(), None, [], CLIENT_GONE
        if req.is_chat:
            yield chunk({"role": "assistant", "content": ""})
        try:
            for part in itertools.chain(() if first is None else (first,), chunks):
                usage = part.usage or usage
                finish_reason = part.finish_reason or finish_reason
                texts.append(part.text)
                if part.text or part.delta_extra or part.finish_reason or part.choice_extra:
                    yield chunk({**({"content": part.text} if part.text else {}), **part.delta_extra},
                                part.finish_reason, choice_extra=part.choice_extra)
            if finish_reason is None:
                yield chunk({}, "stop")
            ex.receipt = st.accounting.settle(decision, served.target, usage, "".join(texts),
                                              fell_back=served.fell_back)
            status = 200
            if req.include_usage:
                yield chunk(None, usage=ex.receipt.usage)
        except TargetError as err:
            # The headers are gone already: the error travels in the stream, which then ends.
            st.accounting.failed(served.target)
            status = err.status
            yield fmt.sse(target_error(err).body())
        finally:
            # The status is the stream's outcome: an error inside a 200 stream logs its own status,
            # a client that left early (GeneratorExit) logs 499. A left stream frees its upstream now.
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
            ex.upstream_s, ex.answer = time.perf_counter() - t_up, "".join(texts)
            ex.status, ex.total_s = status, time.perf_counter() - ex.t0
            _settle(st, ex)
        yield fmt.SSE_DONE

    # Recorded when the server closes the response (_finish_request): after the stream's end, or
    # as a client gone (499) when it left before the stream started (the generator never runs).
    resp = Response(stream_with_context(events()), mimetype="text/event-stream")
    resp.headers.update(_routing_headers(decision, served, overhead_s))
    resp.headers["Cache-Control"] = "no-cache"
    resp.headers["X-Accel-Buffering"] = "no"
    return resp


@bp.post("/v1/chat/completions")
def chat_completions() -> Response:
    return _serve(parse_body(ChatCompletionRequest, request.get_data(cache=False)))


@bp.post("/v1/completions")
def completions() -> Response:
    return _serve(parse_body(CompletionRequest, request.get_data(cache=False)))


@bp.post("/v1/router/route")
def route() -> Response:
    """The decision for a chat-completions body, without forwarding it: what chat completions
    would do with the same body (the same validation and errors; nothing is generated or billed)."""
    st, ex = state(), g.exchange
    req = ex.generation = parse_body(ChatCompletionRequest, request.get_data(cache=False))
    key = st.gate.identify(request.headers.get("Authorization"))  # a key that may use the model; no limit counted
    policy = st.router.policy_for(req)
    st.gate.permit(key, req.model, None if policy is None else policy.name)
    decision = ex.decision = st.router.decide(req)
    return jsonify(decision_json(req, decision))


@bp.post("/v1/router/feedback")
def feedback() -> tuple[Response, int]:
    """How good an answer was, joined to the request's decision-log row: a rating, thumbs, or
    per-target grades. Only the key that made the request (or the master key) may rate it."""
    st = state()
    key = st.gate.identify(request.headers.get("Authorization"))
    body = parse_json(FeedbackRequest, request.get_data(cache=False))
    if st.decision_log is None:
        raise APIError(404, "The decision log is off: set decision_log.path to collect decisions and feedback.",
                       code="decision_log_disabled")
    unknown = sorted(set(body.grades or {}) - {t.name for t in st.config.targets})
    if unknown:
        raise bad_request(f"Unknown target(s) in grades: {', '.join(unknown)}.", param="grades", code="invalid_value")
    found, owner = st.decision_log.owner(body.request_id)
    key_id = None if key is None else key.id
    if not found or (key_id is not None and owner != key_id):
        raise APIError(404, f"No logged request '{body.request_id}' (made with this key).", param="request_id",
                       code="request_not_found")
    row = FeedbackRow(request_id=body.request_id, time=time.time(), key_id=key_id, rating=body.score,
                      grades=None if body.grades is None else json.dumps(body.grades, sort_keys=True),
                      comment=body.comment)
    if not st.decision_log.add(row):
        raise APIError(503, "The decision log is behind; send the feedback again shortly.", type="server_error",
                       code="decision_log_busy", headers={"Retry-After": "1"})
    return jsonify({"object": "router.feedback", "request_id": body.request_id, "rating": body.score,
                    "grades": body.grades, "status": "accepted"}), 202


def decision_json(req: GenerationRequest, d: Decision) -> dict[str, Any]:
    return {
        "object": "router.decision", "model": req.model, "policy": d.policy, "target": d.target,
        "fallbacks": list(d.candidates[1:]), "reason": d.reason, "score": d.score, "confidence": d.confidence,
        "threshold": d.threshold, "strong_share": d.strong_share, "score_strong_share": d.score_share,
        "degraded": d.degraded, "classifier_model_version": d.model_version, "classifier_ms": d.classifier_ms,
        "constraints": {"private_data": d.private, "fields_needing_support": list(req.needs),
                        "prompt_tokens": d.prompt_tokens, "escalated": d.reason.endswith(":escalated")},
    }


def _policy_entry(st: RouterState, name: str, model_id: str) -> dict[str, Any]:
    strategy = st.router.strategies[name]
    info: dict[str, Any] = {"kind": "policy", "policy": name, "policy_kind": strategy.settings.KIND,
                            "classifier": strategy.settings.classifier, "targets": strategy.targets,
                            **strategy.describe()}
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "router", "router": info}


@bp.get("/v1/models")
def list_models() -> Response:
    st = state()
    st.gate.identify(request.headers.get("Authorization"))
    config = st.config
    data = [_policy_entry(st, config.default_policy, POLICY_MODEL)]
    data += [_policy_entry(st, p.name, f"{POLICY_MODEL}:{p.name}") for p in config.policies]
    for target in config.targets:
        data.append({"id": target.name, "object": "model", "created": 0, "owned_by": target.kind,
                     "router": {"kind": "target", "target_kind": target.kind, "model": target.model,
                                "context_window": target.context_window, "self_hosted": target.is_self_hosted,
                                "usd_per_1m_input_tokens": target.usd_per_1m_input_tokens,
                                "usd_per_1m_output_tokens": target.usd_per_1m_output_tokens}})
    return jsonify({"object": "list", "data": data})


@bp.get("/metrics")
def metrics() -> Response:
    return Response(state().metrics.render(), mimetype="text/plain; version=0.0.4")


@bp.get("/v1/router/stats")
def router_stats() -> Response:
    st = state()
    st.gate.identify(request.headers.get("Authorization"))
    releases = st.router.releases.describe()
    serving = {name: str(r["serving"]) or None for name, r in releases.items()}
    calibration = {name: client.calibration(serving[name]) for name, client in st.router.classifiers.items()}
    quality = {name: client.quality(serving[name]) for name, client in st.router.classifiers.items()}
    breakers = {name: vars(b.snapshot()) for name, b in st.dispatcher.breakers.items()}
    return jsonify({**st.accounting.stats.snapshot(), "circuit_breakers": breakers, "calibration": calibration,
                    "calibration_quality": quality, "releases": releases,
                    "policies": {name: _policy_stats(st, s) for name, s in st.router.strategies.items()}})


def _policy_stats(st: RouterState, strategy: RoutingStrategy[Any]) -> dict[str, Any]:
    """A policy's settings; for a quality target also the strong share it implies on the served
    version's curve, and what that costs against always strong."""
    info: dict[str, Any] = {"kind": strategy.settings.KIND, **strategy.describe()}
    quality = strategy.quality_target
    if quality is not None:
        classifier = strategy.settings.classifier
        share = st.router.quality_shares.implied(classifier, quality,
                                                 st.router.releases.current(classifier).serving or None)
        ratio = None if share is None else blended_cost_ratio(
            st.config.target(strategy.targets[0]), st.config.target(strategy.strongest), share)
        info["implied_strong_share"] = None if share is None else round(share, 4)
        info["implied_cost_vs_always_strong"] = None if ratio is None else round(ratio, 4)
    return info
