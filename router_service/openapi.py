"""The public API as an OpenAPI 3.1 document, generated from the request models
(api_models.py), served at ``GET /openapi.json``."""
from __future__ import annotations

from functools import lru_cache
from typing import Any

from flask import Blueprint, Response, jsonify
from pydantic.json_schema import models_json_schema

from . import __version__
from .api_keys import KeyLimits
from .api_models import ChatCompletionRequest, CompletionRequest, FeedbackRequest

bp = Blueprint("openapi", __name__)

_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type", "param", "code"],
    "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                   "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}}
_OBJECT = {"type": "object"}


def _answer(description: str, schema: dict[str, Any], stream: bool = False) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {"schema": schema}}
    if stream:
        content["text/event-stream"] = {"schema": {"type": "string"}}
    return {"description": description, "content": content}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): _answer("an OpenAI-style error", {"$ref": "#/components/schemas/Error"}) for s in statuses}


def _generation(summary: str, model: str) -> dict[str, Any]:
    return {"post": {
        "summary": summary,
        "requestBody": {"required": True,
                        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}}}},
        "responses": {"200": _answer("the answer, or an SSE stream with `stream: true`", _OBJECT, stream=True),
                      **_errors(400, 401, 403, 404, 413, 429, 502, 503, 504)}}}


def _route() -> dict[str, Any]:
    body = _generation("The routing decision for a chat-completions body, without forwarding it",
                       "ChatCompletionRequest")
    body["post"]["responses"]["200"] = _answer("the decision (docs/api.md)", _OBJECT)
    return body


def _feedback() -> dict[str, Any]:
    return {"post": {
        "summary": "Feedback on an answer (a rating, thumbs or per-target grades), joined to its decision-log row",
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/FeedbackRequest"}}}},
        "responses": {"202": _answer("accepted", _OBJECT), **_errors(400, 401, 404, 503)}}}


def _get(summary: str, *errors: int) -> dict[str, Any]:
    return {"get": {"summary": summary, "responses": {"200": _answer("OK", _OBJECT), **_errors(*errors)}}}


def _admin(summary: str, method: str, status: int = 200, body: bool = False) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "security": [{"masterKey": []}],
                          "responses": {str(status): _answer("the key(s), without secrets but at creation",
                                                             _OBJECT), **_errors(400, 401, 404, 503)}}
    if body:
        op["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/KeyLimits"}}}}
    return {method: op}


_KEY_ID = [{"name": "key_id", "in": "path", "required": True, "schema": {"type": "string"}}]


@lru_cache(maxsize=1)
def openapi_document() -> dict[str, Any]:
    _, defs = models_json_schema([(ChatCompletionRequest, "validation"), (CompletionRequest, "validation"),
                                  (FeedbackRequest, "validation"), (KeyLimits, "validation")],
                                 ref_template="#/components/schemas/{model}")
    schemas = {**defs["$defs"], "Error": _ERROR}
    return {
        "openapi": "3.1.0",
        "info": {"title": "LLM router", "version": __version__,
                 "description": "OpenAI-compatible API of the Triton-backed LLM router (docs/api.md)."},
        "paths": {
            "/v1/chat/completions": _generation("Chat completion, routed", "ChatCompletionRequest"),
            "/v1/completions": _generation("Legacy text completion, routed", "CompletionRequest"),
            "/v1/router/route": _route(),
            "/v1/router/feedback": _feedback(),
            "/v1/models": _get("Policies and targets"),
            "/v1/router/stats": _get("Running usage, cost, savings, breakers and calibration"),
            "/health/live": _get("Liveness"),
            "/health/ready": _get("Readiness: Triton and every classifier model", 503),
            "/openapi.json": _get("This document"),
            "/metrics": _get("Prometheus metrics (text format)"),
            "/ui": {"get": {"summary": "The playground page (its assets are under /ui/static/)", "responses": {
                "200": {"description": "the page", "content": {"text/html": {"schema": {"type": "string"}}}}}}},
            "/admin/keys": {**_admin("Create a client API key (the secret is answered once)", "post", 201, True),
                            **_admin("List the client API keys", "get")},
            "/admin/keys/{key_id}": {"parameters": _KEY_ID, **_admin("A key, with its current spend", "get"),
                                     **_admin("Change a key's limits (only the fields given)", "patch", body=True),
                                     **_admin("Revoke a key", "delete")},
        },
        # With auth on (auth.master_key), client endpoints need a key; /admin needs the master key.
        "security": [{}, {"apiKey": []}],
        "components": {"schemas": schemas, "securitySchemes": {
            "apiKey": {"type": "http", "scheme": "bearer", "description": "a client key from /admin/keys"},
            "masterKey": {"type": "http", "scheme": "bearer", "description": "the master key"}}},
    }


@bp.get("/openapi.json")
def openapi_json() -> Response:
    return jsonify(openapi_document())
