"""Schemathesis hooks for tests/test_fuzz.py (loaded through SCHEMATHESIS_HOOKS).

- Every error the router answers is an OpenAI-style body (a check).
- Generated bodies mostly name a model that exists, and their completions stay short: the
  answers come from real LLMs on 2 CPU cores, and the fuzz is about what the router accepts and
  refuses, not about long generations (a map)."""
from __future__ import annotations

import json
from typing import Any

import schemathesis

SHORT = 2
# Most generated model names exist nowhere (a 404 before any routing); these reach the router's
# core: the default policy, a named one, and a target by name.
MODELS = ("router", "router:default", "smollm2-135m")


@schemathesis.check
def openai_style_error(ctx: Any, response: Any, case: Any) -> bool | None:
    if response.status_code < 400:
        return None
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(f"{response.status_code} without a JSON body: {response.content[:200]!r}") from None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or not {"message", "type", "param", "code"} <= set(error):
        raise AssertionError(f"{response.status_code} body is not an OpenAI error: {body!r:.300}")
    if not isinstance(error["message"], str) or not error["message"]:
        raise AssertionError("an error without a message")
    return True


@schemathesis.hook
def map_body(context: Any, body: Any) -> Any:
    if isinstance(body, dict):
        for field in ("max_tokens", "max_completion_tokens"):
            if isinstance(body.get(field), int) and body[field] > SHORT:
                body[field] = SHORT
        if isinstance(body.get("n"), int) and body["n"] > 1:
            body["n"] = 1
        if isinstance(body.get("model"), str) and len(body["model"]) % 4:  # three in four: a real model,
            body["model"] = MODELS[len(body["model"]) % 4 - 1]
            if "max_tokens" not in body and "max_completion_tokens" not in body:
                body["max_tokens"] = SHORT  # else the target's default budget: 256 tokens, seconds each
            messages = body.get("messages")
            for message in messages if isinstance(messages, list) else []:  # and user turns with text (the schema lets
                if isinstance(message, dict) and message.get("role") == "user" and not message.get("content"):
                    message["content"] = "Say hi."  # content be null, as assistant turns may)
    return body
