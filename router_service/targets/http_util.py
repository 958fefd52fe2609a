"""HTTP plumbing shared by the adapters: error mapping and server-sent-event parsing."""
from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from http.client import HTTPException
from typing import Any

import urllib3
from urllib3.exceptions import HTTPError, MaxRetryError, NewConnectionError, TimeoutError as UrllibTimeout

from .base import TargetError
from .http_client import HTTPAnswer, iter_lines

# An error body is read up to this much: enough for any provider's message.
ERROR_BODY_BYTES = 65536


def _retry_after(resp: HTTPAnswer) -> float | None:
    value = resp.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except (ValueError, TypeError):  # TypeError: the header twice (geventhttpclient lists the values)
        return None


def _error_message(resp: HTTPAnswer) -> str:
    # A streamed answer's body is still unread: read at most the bound (resp.data would read it
    # all). An answer read in full has nothing left to read, and its body is in resp.data.
    raw = resp.read(ERROR_BODY_BYTES) or resp.data
    try:
        body = json.loads(raw)
    except ValueError:
        return raw[:500].decode("utf-8", "replace")
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("message", error))
    return str(error if error is not None else body)[:500]


# What a provider's error text may echo of a credential: bearer tokens and sk-style keys.
_CREDENTIAL = re.compile(r"(?i)(bearer\s+)\S+|\b(sk|pk|rk|key)[-_][A-Za-z0-9_\-*.]{6,}")


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """The text with the given secrets, and anything shaped like a credential, blanked out."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return _CREDENTIAL.sub(lambda m: (m.group(1) or "") + "[redacted]", text)


def check_response(resp: HTTPAnswer, target: str, secrets: tuple[str, ...] = ()) -> None:
    """Turn an upstream HTTP error into a TargetError with the status the client should see; the
    upstream's words travel on with ``secrets`` (the router's key for it) and lookalikes redacted."""
    if resp.status < 400:
        return
    message = f"target '{target}' answered {resp.status}: {redact(_error_message(resp), secrets)}"
    if resp.status == 429:
        raise TargetError(message, 429, code="rate_limited", retry_after_s=_retry_after(resp))
    if resp.status >= 500:
        raise TargetError(message, 502, code="upstream_error")
    if resp.status in (401, 403):
        # The provider refused the router's own credentials: the operator's fault, not the client's.
        # Another target may serve the request, and the breaker should stop calling this one.
        raise TargetError(f"target '{target}' refused the router's credentials ({resp.status})", 502,
                          code="upstream_auth_failed")
    # 4xx: the upstream rejected what the client asked for; retrying elsewhere will not help.
    raise TargetError(message, 400, code="upstream_rejected", retryable=False)


@contextmanager
def upstream_call(target: str) -> Iterator[None]:
    """Map connection-level failures to 503/504 TargetErrors."""
    try:
        yield
    except MaxRetryError as exc:  # what a failure to connect is wrapped in (retries are off)
        # NewConnectionError (refused, no route) subclasses ConnectTimeoutError for old callers' sake
        if isinstance(exc.reason, UrllibTimeout) and not isinstance(exc.reason, NewConnectionError):
            raise TargetError(f"target '{target}' timed out", 504, code="upstream_timeout") from exc
        raise TargetError(f"target '{target}' is unreachable: {exc.reason.__class__.__name__}", 503,
                          code="upstream_unavailable") from exc
    except (UrllibTimeout, TimeoutError) as exc:  # TimeoutError: geventhttpclient's (a socket's)
        raise TargetError(f"target '{target}' timed out", 504, code="upstream_timeout") from exc
    except (HTTPError, HTTPException, OSError) as exc:  # reset, refused, cut mid-answer, TLS; HTTPException:
        # what geventhttpclient's parser raises for a connection closed or garbled mid-answer
        raise TargetError(f"target '{target}' is unreachable: {exc.__class__.__name__}", 503,
                          code="upstream_unavailable") from exc


def iter_sse_json(resp: urllib3.BaseHTTPResponse, target: str) -> Iterator[dict[str, Any]]:
    """Yield the JSON payload of each ``data:`` event until ``[DONE]`` or the end of the stream."""
    for line in iter_lines(resp):
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            return
        try:
            event = json.loads(data)
        except json.JSONDecodeError as exc:
            raise TargetError(f"target '{target}' sent an invalid stream event", 502) from exc
        if isinstance(event, dict) and "error" in event:
            error = event["error"]
            message = error.get("message", error) if isinstance(error, dict) else error
            raise TargetError(f"target '{target}' stream error: {message}", 502)
        yield event
