"""Client API keys: what each key may do, stored in the shared store under the SHA-256 of the
secret (the secret itself is shown once, at creation, and never stored or logged)."""
from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from typing import Literal

from pydantic import Field

from .config_base import StrictModel
from .store import Store

SECRET_PREFIX = "sk-router-"


class KeyLimits(StrictModel):
    """What an admin sets on a key; all optional. An update gives only the fields it changes."""

    name: str = Field("", max_length=200)
    # Model names the key may ask for: targets by name, "router", "router:<policy>". None: any.
    models: list[str] | None = None
    # Policies the key may be routed by (also through "router"). None: any.
    policies: list[str] | None = None
    rpm: int | None = Field(None, gt=0, description="Requests per minute.")
    tpm: int | None = Field(None, gt=0, description="Tokens per minute (prompt estimate + max_tokens, settled "
                                                       "to the real usage).")
    budget_usd: float | None = Field(None, ge=0)
    budget_period: Literal["day", "month"] = "month"
    # Past this share of its budget the key's policy requests go to the policy's cheapest target.
    downgrade_at: float | None = Field(None, gt=0, le=1)
    metadata: dict[str, str] = Field(default_factory=dict)


class ApiKey(KeyLimits):
    id: str
    created: int
    hint: str  # the secret's first characters, to tell keys apart in listings

    def may_use_model(self, model: str) -> bool:
        return self.models is None or model in self.models

    def may_use_policy(self, policy: str) -> bool:
        return self.policies is None or policy in self.policies


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


class KeyStore:
    """Keys in the store: ``key:<sha256>`` holds the key's JSON, ``keyid:<id>`` its digest,
    ``keys`` the set of ids. Looked up on every request: a revoked key fails at once everywhere."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def create(self, limits: KeyLimits) -> tuple[ApiKey, str]:
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(**limits.model_dump(), id="key_" + uuid.uuid4().hex[:16], created=int(time.time()),
                     hint=secret[: len(SECRET_PREFIX) + 4])
        h = digest(secret)

        def write(c):  # noqa: ANN001, ANN202
            with c.pipeline() as p:  # MULTI/EXEC: all three or none
                p.set(self.store.key("key", h), key.model_dump_json())
                p.set(self.store.key("keyid", key.id), h)
                p.sadd(self.store.key("keys"), key.id)
                p.execute()

        self.store.run("create_key", write)
        return key, secret

    def by_secret(self, secret: str) -> ApiKey | None:
        raw = self.store.run("get_key", lambda c: c.get(self.store.key("key", digest(secret))))
        return None if raw is None else ApiKey.model_validate_json(raw)

    def by_id(self, key_id: str) -> ApiKey | None:
        def read(c):  # noqa: ANN001, ANN202
            h = c.get(self.store.key("keyid", key_id))
            return None if h is None else c.get(self.store.key("key", h))

        raw = self.store.run("get_key", read)
        return None if raw is None else ApiKey.model_validate_json(raw)

    def all(self) -> list[ApiKey]:
        def read(c):  # noqa: ANN001, ANN202
            ids = sorted(c.smembers(self.store.key("keys")))
            hashes = c.mget([self.store.key("keyid", i) for i in ids]) if ids else []
            found = [h for h in hashes if h]
            return c.mget([self.store.key("key", h) for h in found]) if found else []

        return [ApiKey.model_validate_json(raw) for raw in self.store.run("list_keys", read) if raw]

    def update(self, key_id: str, changes: KeyLimits) -> ApiKey | None:
        """Replace the fields ``changes`` sets (``model_fields_set``); None for an unknown id."""
        def write(c):  # noqa: ANN001, ANN202
            h = c.get(self.store.key("keyid", key_id))
            raw = None if h is None else c.get(self.store.key("key", h))
            if raw is None:
                return None
            changed = ApiKey.model_validate({**ApiKey.model_validate_json(raw).model_dump(),
                                             **changes.model_dump(include=changes.model_fields_set)})
            c.set(self.store.key("key", h), changed.model_dump_json(), xx=True)
            return changed

        return self.store.run("update_key", write)

    def revoke(self, key_id: str) -> bool:
        def delete(c):  # noqa: ANN001, ANN202
            h = c.get(self.store.key("keyid", key_id))
            if h is None:
                return False
            with c.pipeline() as p:
                p.delete(self.store.key("key", h), self.store.key("keyid", key_id))
                p.srem(self.store.key("keys"), key_id)
                p.execute()
            return True

        return self.store.run("revoke_key", delete)
