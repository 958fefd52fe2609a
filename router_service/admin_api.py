"""The admin API for client keys (``/admin/keys``), guarded by the master key: create (the secret
is answered once), list, read (with the current period's spend), update and revoke."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from .access import AccessError, Gate
from .api_keys import ApiKey, KeyLimits, KeyStore
from .api_models import parse_json

bp = Blueprint("admin", __name__, url_prefix="/admin")


def _gate() -> Gate:
    gate: Gate = current_app.extensions["router"].gate
    if not gate.enabled:
        raise AccessError(404, "The admin API is off: set auth.master_key (ROUTER_MASTER_KEY) to turn keys on.",
                          code="admin_disabled")
    if not gate.is_master(request.headers.get("Authorization")):
        raise AccessError(401, "The admin API needs the master key: 'Authorization: Bearer <master key>'.",
                          code="invalid_api_key")
    return gate


def _keys() -> KeyStore:
    keys = _gate().keys
    assert keys is not None  # a master key requires a store (config validation)
    return keys


def _limits_body() -> KeyLimits:
    return parse_json(KeyLimits, request.get_data(cache=False))


def _view(key: ApiKey) -> dict[str, Any]:
    gate: Gate = current_app.extensions["router"].gate
    spend = gate.limiter.spend(key) if gate.limiter is not None else 0.0
    return {"object": "api_key", **key.model_dump(), "spend_usd": round(spend, 10)}


def _not_found(key_id: str) -> AccessError:
    return AccessError(404, f"No API key with id '{key_id}'.", code="key_not_found")


@bp.post("/keys")
def create_key() -> Response:
    keys = _keys()
    key, secret = keys.create(_limits_body())
    resp = jsonify({**_view(key), "key": secret})  # the only time the secret is shown
    resp.status_code = 201
    return resp


@bp.get("/keys")
def list_keys() -> Response:
    return jsonify({"object": "list", "data": [_view(k) for k in _keys().all()]})


@bp.get("/keys/<key_id>")
def get_key(key_id: str) -> Response:
    key = _keys().by_id(key_id)
    if key is None:
        raise _not_found(key_id)
    return jsonify(_view(key))


@bp.patch("/keys/<key_id>")
def update_key(key_id: str) -> Response:
    keys = _keys()
    changes = _limits_body()
    key = keys.update(key_id, changes)
    if key is None:
        raise _not_found(key_id)
    return jsonify(_view(key))


@bp.delete("/keys/<key_id>")
def revoke_key(key_id: str) -> Response:
    if not _keys().revoke(key_id):
        raise _not_found(key_id)
    return jsonify({"object": "api_key", "id": key_id, "revoked": True})
