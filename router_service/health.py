"""Liveness and readiness probes."""
from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

bp = Blueprint("health", __name__)


@bp.get("/health/live")
def live() -> Response:
    return jsonify({"status": "live"})


@bp.get("/health/ready")
def ready() -> Response:
    """Ready only when Triton is up and every configured classifier model is loaded."""
    classifiers = current_app.extensions["router"].router.classifiers
    checks = {name: client.is_ready() for name, client in classifiers.items()}
    ok = all(checks.values())
    resp = jsonify({"status": "ready" if ok else "not_ready", "classifiers": checks})
    resp.status_code = 200 if ok else 503
    return resp
