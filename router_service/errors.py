"""OpenAI-style errors: every failure the client sees is ``{"error": {...}}`` with a 4xx/5xx."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from .access import AccessError, store_unavailable
from .routing_errors import CannotServe, InvalidOverride, ModelNotFound, PolicyUnavailable, RoutingError
from .store import StoreUnavailable
from .targets.base import TargetError


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


# The decision engine's refusals, as HTTP statuses: the request's fault (4xx) or the deployment's (5xx).
_ROUTING_STATUS: dict[type[RoutingError], int] = {ModelNotFound: 404, InvalidOverride: 400, CannotServe: 400,
                                                  PolicyUnavailable: 503}


def routing_error(err: RoutingError) -> APIError:
    status = _ROUTING_STATUS[type(err)]
    return APIError(status, err.message, type="invalid_request_error" if status < 500 else "api_error",
                    param=err.param, code=err.code)


def target_error(err: TargetError) -> APIError:
    """An upstream failure as the client sees it: its own mistakes as 4xx, the rest as 5xx."""
    error_type = "invalid_request_error" if err.status < 500 and err.status != 429 else "api_error"
    headers = {"Retry-After": str(max(1, round(err.retry_after_s)))} if err.retry_after_s is not None else None
    return APIError(err.status, err.message, type=error_type, code=err.code, headers=headers)


# Werkzeug's own HTTP errors (404 route, 405 method, 413 body size) in the same shape.
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large", 415: "unsupported_media_type"}


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(APIError)
    def _api_error(err: APIError) -> Response:
        return err.response()

    @app.errorhandler(RoutingError)
    def _routing_error(err: RoutingError) -> Response:
        return routing_error(err).response()

    @app.errorhandler(AccessError)
    def _access_error(err: AccessError) -> Response:
        return APIError(err.status, err.message, type=err.type, code=err.code, headers=err.headers).response()

    @app.errorhandler(StoreUnavailable)
    def _store_error(_: StoreUnavailable) -> Response:  # the admin API and the stats, which need the store
        return _access_error(store_unavailable())

    @app.errorhandler(TargetError)
    def _target_error(err: TargetError) -> Response:
        return target_error(err).response()

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
