"""Any OpenAI-compatible API (OpenAI, vLLM, llama.cpp server, ...)."""
from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from ..config import TargetConfig
from .base import Chunk, Completion, GenerationRequest, TargetError, Usage
from .http_client import HttpClient, close_response
from .http_util import check_response, iter_sse_json, upstream_call


class OpenAITarget:
    kind = "openai"

    def __init__(self, config: TargetConfig, base_url: str, http: HttpClient) -> None:
        self.name = config.name
        self.config = config
        self._upstream = http.upstream(base_url, config.connect_timeout_s, config.read_timeout_s)

    def _secrets(self) -> tuple[str, ...]:
        key = os.environ.get(self.config.api_key_env) if self.config.api_key_env else None
        return (key,) if key else ()

    def _headers(self, request: GenerationRequest) -> dict[str, str]:
        headers = {}
        if request.request_id:
            headers["X-Request-ID"] = request.request_id  # the provider's logs can be joined with ours
        if self.config.api_key_env:
            key = os.environ.get(self.config.api_key_env)
            if not key:
                raise TargetError(f"target '{self.name}': environment variable {self.config.api_key_env} "
                                  "(its API key) is not set", 503, code="upstream_misconfigured")
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _payload(self, request: GenerationRequest, stream: bool) -> tuple[str, dict[str, Any]]:
        payload: dict[str, Any] = {"model": self.config.model, **request.passthrough}
        if request.is_chat:
            path = "/chat/completions"
            payload["messages"] = [m.raw for m in request.messages]
        else:
            path = "/completions"
            payload["prompt"] = request.prompt
        if request.max_tokens is not None:
            payload[request.max_tokens_param] = request.max_tokens
        for key in ("temperature", "top_p", "seed"):
            value = getattr(request, key)
            if value is not None:
                payload[key] = value
        if request.stop:
            payload["stop"] = list(request.stop)
        if stream:
            payload["stream"] = True
            payload["stream_options"] = {"include_usage": True}
        return path, payload

    @staticmethod
    def _usage(body: dict[str, Any]) -> Usage | None:
        usage = body.get("usage")
        if not isinstance(usage, dict):
            return None
        return Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))

    def complete(self, request: GenerationRequest) -> Completion:
        path, payload = self._payload(request, stream=False)
        with upstream_call(self.name):
            resp = self._upstream.post(path, payload, self._headers(request))
        check_response(resp, self.name, self._secrets())
        try:
            body = resp.json()
            choice = body["choices"][0]
            text, extra = _content(choice, request.is_chat, "message")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise TargetError(f"target '{self.name}' sent a malformed completion", 502) from exc
        return Completion(text=text, finish_reason=choice.get("finish_reason") or "stop",
                          usage=self._usage(body) or Usage(), message_extra=extra,
                          choice_extra=_choice_extra(choice))

    def stream(self, request: GenerationRequest) -> Iterator[Chunk]:
        path, payload = self._payload(request, stream=True)
        with upstream_call(self.name):
            resp = self._upstream.post_stream(path, payload, self._headers(request))
        try:
            check_response(resp, self.name, self._secrets())
            with upstream_call(self.name):
                for event in iter_sse_json(resp, self.name):
                    usage = self._usage(event)
                    for choice in event.get("choices") or []:
                        text, extra = _content(choice, request.is_chat, "delta")
                        yield Chunk(text=text, finish_reason=choice.get("finish_reason"), delta_extra=extra,
                                    choice_extra=_choice_extra(choice))
                    if usage is not None:
                        yield Chunk(usage=usage)
        finally:
            close_response(resp)


def _content(choice: dict[str, Any], is_chat: bool, key: str) -> tuple[str, dict[str, Any]]:
    """A choice's text and, for chat, the other fields of its ``message`` / ``delta`` (tool_calls, ...)."""
    if not is_chat:
        return choice.get("text") or "", {}
    part = choice.get(key) or {}
    return part.get("content") or "", {k: v for k, v in part.items() if k not in ("role", "content") and v is not None}


def _choice_extra(choice: dict[str, Any]) -> dict[str, Any]:
    """What a choice carries besides the text (e.g. logprobs, when the request asked for them)."""
    return {k: v for k, v in choice.items()
            if k not in ("index", "message", "delta", "text", "finish_reason") and v is not None}
