"""OpenAI response objects and server-sent-event framing."""
from __future__ import annotations

import json
import time
import uuid
from typing import Any

from .targets import Completion, Usage


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage_dict(usage: Usage) -> dict[str, int]:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens}


def chat_completion(completion_id: str, model: str, completion: Completion) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": completion.text, **completion.message_extra}
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": completion.finish_reason}],
        "usage": usage_dict(completion.usage),
    }


def chat_chunk(completion_id: str, created: int, model: str, delta: dict[str, Any] | None,
               finish_reason: str | None = None, usage: Usage | None = None) -> dict[str, Any]:
    chunk: dict[str, Any] = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                             "model": model, "choices": []}
    if delta is not None:
        chunk["choices"] = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
    if usage is not None:
        chunk["usage"] = usage_dict(usage)
    return chunk


def text_completion(completion_id: str, model: str, completion: Completion) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": completion.text, "logprobs": None, "finish_reason": completion.finish_reason}],
        "usage": usage_dict(completion.usage),
    }


def text_chunk(completion_id: str, created: int, model: str, delta: dict[str, Any] | None,
               finish_reason: str | None = None, usage: Usage | None = None) -> dict[str, Any]:
    """Legacy completions stream the same object as the answer, with the text so far as a delta."""
    chunk: dict[str, Any] = {"id": completion_id, "object": "text_completion", "created": created, "model": model,
                             "choices": []}
    if delta is not None:
        chunk["choices"] = [{"index": 0, "text": delta.get("content", ""), "logprobs": None,
                             "finish_reason": finish_reason}]
    if usage is not None:
        chunk["usage"] = usage_dict(usage)
    return chunk


def sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


SSE_DONE = "data: [DONE]\n\n"
