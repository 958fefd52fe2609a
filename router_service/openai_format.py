"""OpenAI response objects and server-sent-event framing, for both kinds of request: chat
(``chat.completion`` / ``chat.completion.chunk``) and legacy text (``text_completion``)."""
from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from .generation import Completion, Kind, Usage

_ID_PREFIX: dict[Kind, str] = {"chat": "chatcmpl", "text": "cmpl"}


def new_id(kind: Kind) -> str:
    return f"{_ID_PREFIX[kind]}-{uuid.uuid4().hex[:24]}"


def usage_dict(usage: Usage) -> dict[str, int]:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens}


def render(kind: Kind, completion_id: str, model: str, completion: Completion, usage: Usage) -> dict[str, Any]:
    """A whole answer."""
    choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": completion.finish_reason,
                              **completion.choice_extra}
    if kind == "chat":
        choice["message"] = {"role": "assistant", "content": completion.text, **completion.message_extra}
    else:
        choice["text"] = completion.text
    return {"id": completion_id, "object": "chat.completion" if kind == "chat" else "text_completion",
            "created": int(time.time()), "model": model, "choices": [choice], "usage": usage_dict(usage)}


Chunker = Callable[..., str]


def chunker(kind: Kind, completion_id: str, created: int, model: str) -> Chunker:
    """A function that frames one streamed chunk as an SSE event: ``chunk(delta, finish_reason,
    usage=..., choice_extra=...)``; ``delta`` None sends no choice (the final usage chunk). Legacy
    completions stream the answer's own object with the text so far as a delta."""
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

    def chunk(delta: dict[str, Any] | None, finish_reason: str | None = None, usage: Usage | None = None,
              choice_extra: dict[str, Any] | None = None) -> str:
        payload: dict[str, Any] = {"id": completion_id, "object": obj, "created": created, "model": model,
                                   "choices": []}
        if delta is not None:
            choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish_reason,
                                      **(choice_extra or {})}
            if kind == "chat":
                choice["delta"] = delta
            else:
                choice["text"] = delta.get("content", "")
            payload["choices"] = [choice]
        if usage is not None:
            payload["usage"] = usage_dict(usage)
        return sse(payload)

    return chunk


def sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


SSE_DONE = "data: [DONE]\n\n"
