"""The internal request and answer types that flow between the API, the decision engine, the
dispatcher and the target adapters. Nothing here knows HTTP, Flask or the config: every other
module may import it, it imports none of them (layering runs one way).

Chat and legacy text completions are one type: a text completion is a request of kind ``text``
whose single user message holds the prompt, so routing reads ``messages`` either way and only
the target adapters and the response renderer ask which kind it is.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

Kind = Literal["chat", "text"]

# Pass-through fields that label a request without changing its answer: every target may take
# them (local LLMs ignore them).
ADVISORY_FIELDS = frozenset({"user", "metadata", "store", "service_tier", "prompt_cache_key", "safety_identifier"})
# Tool calling and structured output: targets with `supports_tools` (default: OpenAI-compatible ones).
TOOL_FIELDS = frozenset({"tools", "tool_choice", "parallel_tool_calls", "functions", "function_call",
                         "response_format"})


@dataclass(frozen=True)
class Message:
    role: str
    content: str  # the text parts joined: what the classifier reads and local LLMs answer
    raw: dict[str, Any]  # the client's message as sent, for pass-through (OpenAI-compatible) targets


@dataclass(frozen=True)
class RouterOverrides:
    """The request's ``router`` extension."""

    policy: str | None = None
    threshold: float | None = None
    strong_share: float | None = None

    @property
    def cut(self) -> bool:
        """Does the request set its own operating point (threshold or strong share)?"""
        return self.threshold is not None or self.strong_share is not None


@dataclass(frozen=True, kw_only=True)
class GenerationRequest:
    """One validated request, chat or text, as the router and every target adapter see it."""

    model: str
    kind: Kind
    messages: tuple[Message, ...]
    max_tokens: int | None = None
    # The name the client used for the budget: OpenAI's reasoning models refuse `max_tokens`, so
    # OpenAI-compatible targets get the same name back.
    max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False
    router: RouterOverrides = RouterOverrides()
    # OpenAI fields the router does not act on (tools, logprobs, penalties, ...), forwarded as sent
    # to targets that accept them; the decision engine keeps the request off targets that do not.
    passthrough: dict[str, Any] = field(default_factory=dict)
    request_id: str | None = None  # the client's X-Request-ID (or the router's): forwarded upstream

    @property
    def is_chat(self) -> bool:
        return self.kind == "chat"

    @cached_property
    def needs(self) -> tuple[str, ...]:
        """Pass-through fields that change the answer (set to anything but their neutral value):
        only targets that accept each of them may serve the request."""
        return tuple(sorted(k for k, v in self.passthrough.items()
                            if k not in ADVISORY_FIELDS and v not in (None, False, 0, [], {})))

    @property
    def prompt(self) -> str:
        """A text request's prompt (its one message)."""
        return self.messages[-1].content


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str
    usage: Usage
    # Extra assistant-message fields from pass-through targets (e.g. tool_calls, logprobs).
    message_extra: dict[str, Any] = field(default_factory=dict)
    choice_extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Chunk:
    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    delta_extra: dict[str, Any] = field(default_factory=dict)
    choice_extra: dict[str, Any] = field(default_factory=dict)
