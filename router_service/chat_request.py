"""Parse and validate an OpenAI chat-completions request body into a typed object.

Everything a client can get wrong is caught here, before any routing work, and reported as
an OpenAI-style error: 400 for a missing or malformed field, 422 for a well-typed document
whose values cannot be used.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .errors import bad_request, invalid_value

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
# Passed through untouched to targets that understand them (OpenAI-compatible APIs).
PASSTHROUGH_FIELDS = ("response_format", "tools", "tool_choice", "parallel_tool_calls", "logit_bias",
                      "presence_penalty", "frequency_penalty", "user")


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    raw: dict[str, Any]  # the client's message as sent, for pass-through targets


@dataclass(frozen=True)
class RouterOverrides:
    policy: str | None = None
    threshold: float | None = None
    strong_share: float | None = None


@dataclass(frozen=True, kw_only=True)
class GenerationParams:
    """What chat and legacy completions requests share."""

    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False
    router: RouterOverrides = RouterOverrides()
    passthrough: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class ChatRequest(GenerationParams):
    messages: tuple[Message, ...]


def parse_json_body(data: bytes) -> dict[str, Any]:
    if not data:
        raise bad_request("The request body is empty; expected a JSON object.", code="invalid_json")
    try:
        body = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad_request(f"The request body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.", code="invalid_json")
    return body


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(body: dict[str, Any], name: str, low: float, high: float, param: str | None = None) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    param = param or name
    if not _is_number(value):
        raise invalid_value(f"'{param}' must be a number.", param=param, code="invalid_type")
    if not low <= value <= high:
        raise bad_request(f"'{param}' must be between {low} and {high}, got {value}.", param=param,
                          code="invalid_value")
    return float(value)


def _integer(body: dict[str, Any], name: str, minimum: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise invalid_value(f"'{name}' must be an integer.", param=name, code="invalid_type")
    if value < minimum:
        raise bad_request(f"'{name}' must be at least {minimum}, got {value}.", param=name, code="invalid_value")
    return value


def _content_text(content: Any, param: str) -> str:
    """Content is a string or an array of parts; only text parts can be routed or served locally."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise invalid_value(f"'{param}[{j}]' must be an object with a 'type'.", param=f"{param}[{j}]",
                                    code="invalid_type")
            if part["type"] != "text":
                raise bad_request(f"Content part type '{part['type']}' is not supported; only 'text'.",
                                  param=f"{param}[{j}].type", code="unsupported_content")
            if not isinstance(part.get("text"), str):
                raise invalid_value(f"'{param}[{j}].text' must be a string.", param=f"{param}[{j}].text",
                                    code="invalid_type")
            texts.append(part["text"])
        return "\n".join(texts)
    raise invalid_value(f"'{param}' must be a string or an array of content parts.", param=param,
                        code="invalid_type")


def parse_messages(value: Any) -> tuple[Message, ...]:
    if value is None:
        raise bad_request("'messages' is required.", param="messages", code="missing_required_parameter")
    if not isinstance(value, list):
        raise invalid_value("'messages' must be an array of message objects.", param="messages", code="invalid_type")
    if not value:
        raise bad_request("'messages' must contain at least one message.", param="messages", code="invalid_value")
    messages = []
    for i, raw in enumerate(value):
        param = f"messages[{i}]"
        if not isinstance(raw, dict):
            raise invalid_value(f"'{param}' must be an object.", param=param, code="invalid_type")
        role = raw.get("role")
        if not isinstance(role, str):
            raise bad_request(f"'{param}.role' is required and must be a string.", param=f"{param}.role",
                              code="missing_required_parameter" if role is None else "invalid_type")
        if role not in ROLES:
            raise bad_request(f"'{param}.role' must be one of {sorted(ROLES)}, got '{role}'.",
                              param=f"{param}.role", code="invalid_value")
        if "content" not in raw and not (role == "assistant" and raw.get("tool_calls")):
            raise bad_request(f"'{param}.content' is required.", param=f"{param}.content",
                              code="missing_required_parameter")
        messages.append(Message(role=role, content=_content_text(raw.get("content"), f"{param}.content"), raw=raw))
    return tuple(messages)


def parse_router_overrides(value: Any) -> RouterOverrides:
    if value is None:
        return RouterOverrides()
    if not isinstance(value, dict):
        raise invalid_value("'router' must be an object.", param="router", code="invalid_type")
    unknown = set(value) - {"policy", "threshold", "strong_share"}
    if unknown:
        raise bad_request(f"Unknown 'router' fields: {sorted(unknown)}.", param="router", code="invalid_value")
    policy = value.get("policy")
    if policy is not None and not isinstance(policy, str):
        raise invalid_value("'router.policy' must be a string.", param="router.policy", code="invalid_type")
    threshold = _number(value, "threshold", 0.0, 1.0, "router.threshold")
    strong_share = _number(value, "strong_share", 0.0, 1.0, "router.strong_share")
    if threshold is not None and strong_share is not None:
        raise bad_request("Give 'router.threshold' or 'router.strong_share', not both.", param="router",
                          code="invalid_value")
    return RouterOverrides(policy=policy, threshold=threshold, strong_share=strong_share)


def parse_stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        if len(value) > 4:
            raise bad_request("'stop' may hold at most 4 sequences.", param="stop", code="invalid_value")
        return tuple(value)
    raise invalid_value("'stop' must be a string or an array of strings.", param="stop", code="invalid_type")


@dataclass(frozen=True, kw_only=True)
class CompletionRequest(GenerationParams):
    """A legacy /v1/completions request (single prompt)."""

    prompt: str


def _common(body: dict[str, Any]) -> dict[str, Any]:
    """The fields chat and legacy completions share."""
    model = body.get("model")
    if model is None:
        raise bad_request("'model' is required.", param="model", code="missing_required_parameter")
    if not isinstance(model, str) or not model:
        raise invalid_value("'model' must be a non-empty string.", param="model", code="invalid_type")
    max_tokens = _integer(body, "max_completion_tokens", 1)
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens", 1)
    n = _integer(body, "n", 1)
    if n not in (None, 1):
        raise bad_request("Only n=1 is supported.", param="n", code="unsupported_value")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise invalid_value("'stream' must be a boolean.", param="stream", code="invalid_type")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise invalid_value("'stream_options' must be an object.", param="stream_options", code="invalid_type")
    include_usage = stream_options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise invalid_value("'stream_options.include_usage' must be a boolean.",
                            param="stream_options.include_usage", code="invalid_type")
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise invalid_value("'seed' must be an integer.", param="seed", code="invalid_type")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise invalid_value("'user' must be a string.", param="user", code="invalid_type")
    for name in ("tools", "response_format"):
        value = body.get(name)
        if value is not None and not isinstance(value, list if name == "tools" else dict):
            raise invalid_value(f"'{name}' must be {'an array' if name == 'tools' else 'an object'}.", param=name,
                                code="invalid_type")
    return dict(
        model=model,
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 0.0, 2.0),
        top_p=_number(body, "top_p", 0.0, 1.0),
        stop=parse_stop(body.get("stop")),
        seed=seed,
        stream=stream,
        include_usage=include_usage,
        router=parse_router_overrides(body.get("router")),
        passthrough={k: body[k] for k in PASSTHROUGH_FIELDS if body.get(k) is not None},
    )


def parse_chat_request(body: dict[str, Any]) -> ChatRequest:
    common = _common(body)
    return ChatRequest(messages=parse_messages(body.get("messages")), **common)


LEGACY_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


def parse_completion_request(body: dict[str, Any]) -> CompletionRequest:
    common = _common(body)
    prompt = body.get("prompt")
    if prompt is None:
        raise bad_request("'prompt' is required.", param="prompt", code="missing_required_parameter")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, list):
        raise bad_request("Only a single prompt (a string) is supported.", param="prompt", code="unsupported_value")
    if not isinstance(prompt, str):
        raise invalid_value("'prompt' must be a string.", param="prompt", code="invalid_type")
    for name in ("echo", "suffix", "logprobs", "best_of"):
        if body.get(name) not in (None, False, 1 if name == "best_of" else None):
            raise bad_request(f"'{name}' is not supported by the router.", param=name, code="unsupported_parameter")
    if common["passthrough"].get("tools") or common["passthrough"].get("response_format"):
        raise bad_request("'tools' and 'response_format' belong to chat completions.", param="tools",
                          code="unsupported_parameter")
    if common["max_tokens"] is None:
        common["max_tokens"] = LEGACY_DEFAULT_MAX_TOKENS
    return CompletionRequest(prompt=prompt, **common)


__all__ = ["ChatRequest", "CompletionRequest", "Message", "RouterOverrides", "parse_chat_request",
           "parse_completion_request", "parse_json_body"]
