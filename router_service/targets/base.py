"""What every target adapter takes and returns."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..chat_request import Message


@dataclass(frozen=True)
class GenerationRequest:
    """A chat (``messages``) or legacy text (``prompt``) generation, already validated."""

    messages: tuple[Message, ...] | None = None
    prompt: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    passthrough: dict[str, Any] = field(default_factory=dict)


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
    # Extra assistant-message fields from pass-through targets (e.g. tool_calls).
    message_extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Chunk:
    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    delta_extra: dict[str, Any] = field(default_factory=dict)


class TargetError(Exception):
    """The upstream failed. ``status`` is what the router answers; ``retryable`` drives fallbacks."""

    def __init__(self, message: str, status: int = 502, *, code: str = "upstream_error", retryable: bool = True,
                 retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.retryable = retryable
        self.retry_after_s = retry_after_s


class Target(Protocol):
    name: str
    kind: str

    def complete(self, request: GenerationRequest) -> Completion: ...

    def stream(self, request: GenerationRequest) -> Iterator[Chunk]: ...
