"""Liveness and readiness probes."""
from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

bp = Blueprint("health", __name__)


@bp.get("/health/live")
def live() -> Response:
    return jsonify({"status": "live"})


@bp.get("/health/ready")
def ready() -> Response:
    """Ready only when Triton is up, every configured classifier model is loaded, and the store
    answers when keys depend on it (auth on, failing closed)."""
    st = current_app.extensions["router"]
    checks = {name: client.is_ready() for name, client in st.router.classifiers.items()}
    body: dict[str, object] = {"classifiers": checks}
    ok = all(checks.values())
    if st.store is not None:
        body["store"] = store_ok = st.store.ping()
        needs_store = st.gate.enabled and st.config.auth.on_store_error == "closed"
        ok = ok and (store_ok or not needs_store)
    resp = jsonify({"status": "ready" if ok else "not_ready", **body})
    resp.status_code = 200 if ok else 503
    return resp
