"""OpenAI-style errors: every failure the client sees is ``{"error": {...}}`` with a 4xx/5xx."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException


@dataclass
class APIError(Exception):
    """An error that maps one-to-one onto an OpenAI error response."""

    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None
    headers: dict[str, str] | None = None

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> Response:
        resp = jsonify(self.body())
        resp.status_code = self.status
        for key, value in (self.headers or {}).items():
            resp.headers[key] = value
        return resp


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def invalid_value(message: str, param: str | None = None, code: str = "invalid_value") -> APIError:
    """Well-formed JSON whose values cannot be processed (wrong type or range)."""
    return APIError(422, message, param=param, code=code)


def upstream_error(message: str, status: int = 502, code: str = "upstream_error") -> APIError:
    return APIError(status, message, type="api_error", code=code)


# Werkzeug's own HTTP errors (404 route, 405 method, 413 body size) in the same shape.
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large", 415: "unsupported_media_type"}


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(APIError)
    def _api_error(err: APIError) -> Response:
        return err.response()

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException) -> Response:
        status = err.code or 500
        error_type = "invalid_request_error" if status < 500 else "api_error"
        message = err.description or err.name
        if status == 413:
            message = f"Request body exceeds the limit of {app.config['MAX_CONTENT_LENGTH']} bytes."
        return APIError(status, message, type=error_type, code=_HTTP_CODES.get(status)).response()

    @app.errorhandler(Exception)
    def _unexpected(err: Exception) -> Response:  # a bug on our side, never the client's
        app.logger.exception("unhandled error")
        return APIError(500, "Internal error in the router.", type="api_error", code="internal_error").response()
