"""LLMs hosted on Triton, called through Triton's generate extension.

Tensor contract (model_repository/<llm>/config.pbtxt): inputs ``messages`` (JSON chat
messages; the model applies its chat template) or ``text_input`` (raw prompt), ``max_tokens``,
``temperature``, ``top_p``, ``stop`` (JSON list), ``seed``, ``stream``; outputs ``text_output``,
``finish_reason``, ``prompt_tokens``, ``completion_tokens``.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from ..config import TargetConfig
from .base import Chunk, Completion, GenerationRequest, TargetError, Usage
from .http_client import HttpClient, close_response
from .http_util import check_response, iter_sse_json, upstream_call


class TritonLLMTarget:
    kind = "triton"

    def __init__(self, config: TargetConfig, base_url: str, http: HttpClient) -> None:
        self.name = config.name
        self.config = config
        self._upstream = http.upstream(base_url, config.connect_timeout_s, config.read_timeout_s)
        self._generate_path = f"/v2/models/{config.model}/generate"

    def _payload(self, request: GenerationRequest, stream: bool) -> dict[str, Any]:
        # The decision engine keeps such requests away; a direct caller of the adapter gets the same answer.
        refused = [p for p in request.needs if not self.config.accepts(p)]
        if refused:
            raise TargetError(f"target '{self.name}' (a local Triton LLM) does not support {refused}", 400,
                              code="unsupported_parameter", retryable=False)
        payload: dict[str, Any] = {
            # Always sent: the budget the router assumed in its context-window check is the one used.
            "max_tokens": request.max_tokens or self.config.default_max_tokens,
            "stream": stream,
        }
        if request.is_chat:
            payload["messages"] = json.dumps([{"role": m.role, "content": m.content} for m in request.messages])
        else:
            payload["text_input"] = request.prompt
        if request.temperature is not None:
            payload["temperature"] = request.temperature
        if request.top_p is not None:
            payload["top_p"] = request.top_p
        if request.stop:
            payload["stop"] = json.dumps(list(request.stop))
        if request.seed is not None:
            payload["seed"] = request.seed
        if request.request_id:
            payload["id"] = request.request_id  # Triton's request id: its logs and traces name it
        return payload

    @staticmethod
    def _usage(event: dict[str, Any]) -> Usage:
        return Usage(int(event.get("prompt_tokens") or 0), int(event.get("completion_tokens") or 0))

    def complete(self, request: GenerationRequest) -> Completion:
        payload = self._payload(request, stream=False)
        with upstream_call(self.name):
            resp = self._upstream.post(self._generate_path, payload, {})
        check_response(resp, self.name)
        try:
            event = resp.json()
        except ValueError as exc:
            raise TargetError(f"target '{self.name}' sent a malformed completion", 502) from exc
        return Completion(text=str(event.get("text_output", "")), finish_reason=event.get("finish_reason") or "stop",
                          usage=self._usage(event))

    def stream(self, request: GenerationRequest) -> Iterator[Chunk]:
        payload = self._payload(request, stream=True)
        with upstream_call(self.name):
            resp = self._upstream.post_stream(self._generate_path + "_stream", payload, {})
        try:
            check_response(resp, self.name)
            with upstream_call(self.name):
                for event in iter_sse_json(resp, self.name):
                    finish = event.get("finish_reason") or None
                    yield Chunk(text=str(event.get("text_output", "")), finish_reason=finish,
                                usage=self._usage(event) if finish else None)
        finally:
            close_response(resp)
