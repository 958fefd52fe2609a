"""Who may send a request, and how much: the client's API key, the models and policies it may
use, its rate limits and its budget. Runs before the routing decision; settles the key's tokens
and spend when the request ends. Off (everything admitted) unless auth.master_key is set."""
from __future__ import annotations

import hmac
import math
from dataclasses import dataclass, field

from .api_keys import ApiKey, KeyStore
from .config import AuthConfig
from .generation import GenerationRequest
from .limits import Admission, Limiter
from .store import StoreUnavailable

# Completion tokens reserved against a tokens-per-minute limit when a request gives no
# max_tokens (the targets' default budget); settled to the real count when the answer ends.
DEFAULT_COMPLETION_RESERVE = 256


def store_unavailable() -> AccessError:
    """The answer whenever the store cannot be reached and nothing may go on without it."""
    return AccessError(503, "The router's store is unavailable (API keys, limits and spend live there); retry "
                       "later.", code="store_unavailable", type="api_error", headers={"Retry-After": "1"})


class AccessError(Exception):
    """A refusal, as OpenAI words it (errors.py maps it to the response)."""

    def __init__(self, status: int, message: str, *, code: str, type: str = "invalid_request_error",  # noqa: A002
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.type, self.headers = status, message, code, type, headers or {}


@dataclass
class Grant:
    """What a request was admitted as: its key (None: auth off, the master key, or the store
    unreachable with auth.on_store_error: open) and what its limits said."""

    key: ApiKey | None = None
    admission: Admission | None = None
    downgrade: bool = False
    headers: dict[str, str] = field(default_factory=dict)


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def estimate_tokens(req: GenerationRequest) -> int:
    """Prompt tokens (about 4 characters each) plus the completion budget."""
    chars = sum(len(m.content) for m in req.messages)
    return chars // 4 + 1 + (req.max_tokens or DEFAULT_COMPLETION_RESERVE)


def rate_headers(key: ApiKey, a: Admission) -> dict[str, str]:
    """OpenAI's rate-limit headers for the limits the key has."""
    reset = f"{math.ceil(a.reset_s)}s"
    headers: dict[str, str] = {}
    if key.rpm is not None:
        headers |= {"x-ratelimit-limit-requests": str(key.rpm),
                    "x-ratelimit-remaining-requests": str(max(0, key.rpm - a.requests)),
                    "x-ratelimit-reset-requests": reset}
    if key.tpm is not None:
        headers |= {"x-ratelimit-limit-tokens": str(key.tpm),
                    "x-ratelimit-remaining-tokens": str(max(0, key.tpm - a.tokens)),
                    "x-ratelimit-reset-tokens": reset}
    return headers


class Gate:
    def __init__(self, auth: AuthConfig, keys: KeyStore | None, limiter: Limiter | None) -> None:
        self._master = auth.master_key.get_secret_value()
        self._fail_open = auth.on_store_error == "open"
        self.keys = keys
        self.limiter = limiter

    @property
    def enabled(self) -> bool:
        return bool(self._master)

    def is_master(self, authorization: str | None) -> bool:
        token = _bearer(authorization)
        return bool(self._master) and token is not None and hmac.compare_digest(token.encode(), self._master.encode())

    def identify(self, authorization: str | None) -> ApiKey | None:
        """The client's key (None: auth off, the master key, or the store down with
        on_store_error: open); raises AccessError."""
        if not self.enabled or self.is_master(authorization):
            return None
        token = _bearer(authorization)
        if token is None:
            raise AccessError(401, "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
                              code="missing_api_key")
        assert self.keys is not None
        try:
            key = self.keys.by_secret(token)
        except StoreUnavailable:
            if self._fail_open:
                return None
            raise store_unavailable() from None
        if key is None:
            raise AccessError(401, "Incorrect API key provided (unknown or revoked).", code="invalid_api_key")
        return key

    @staticmethod
    def permit(key: ApiKey | None, model: str, policy: str | None) -> None:
        """Raise 403 unless the key may use ``model`` (and the policy it selects)."""
        allowed = key is None or (key.may_use_model(model) and (policy is None or key.may_use_policy(policy)))
        if not allowed:
            what = f"model '{model}'" + (f" (policy '{policy}')" if policy is not None else "")
            raise AccessError(403, f"This API key may not use the {what}.", code="model_not_allowed")

    def admit(self, key: ApiKey | None, req: GenerationRequest, policy: str | None) -> Grant:
        """Check the key's permissions, budget and limits; count the request against them."""
        if key is None:
            return Grant()
        self.permit(key, req.model, policy)
        assert self.limiter is not None
        try:
            admission = self.limiter.admit(key, estimate_tokens(req))
        except StoreUnavailable:
            if self._fail_open:
                return Grant()
            raise store_unavailable() from None
        headers = rate_headers(key, admission)
        if not admission.admitted:
            if admission.refused_by == "budget":
                period = {"day": "daily", "month": "monthly"}[key.budget_period]
                raise AccessError(429, f"This API key has spent its {period} budget of {key.budget_usd} USD.", code="insufficient_quota", type="insufficient_quota",
                                  headers=headers)
            retry = str(max(1, math.ceil(admission.reset_s)))
            raise AccessError(429, f"Rate limit reached for {admission.refused_by} per minute on this API key. "
                              f"Retry after {retry}s.", code="rate_limit_exceeded", type="requests",
                              headers={**headers, "Retry-After": retry})
        budget = key.budget_usd
        downgrade = (budget is not None and key.downgrade_at is not None
                     and admission.spend_usd >= key.downgrade_at * budget)
        return Grant(key, admission, downgrade, headers)

    def settle(self, grant: Grant, tokens: int, cost_usd: float) -> None:
        """The request ended: its real tokens and cost replace the reservation (best effort)."""
        if grant.key is None or grant.admission is None or self.limiter is None:
            return
        try:
            self.limiter.settle(grant.key, grant.admission, tokens, cost_usd)
        except StoreUnavailable:
            pass  # counted in metrics by the store; the answer has been served already
