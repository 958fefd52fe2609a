"""Per-key rate limits and spend, counted in the shared store so that every router process sees
the same counts. Requests and tokens per minute use fixed one-minute windows, checked and taken
in one Lua script (atomic: concurrent processes never admit more than the limit). Tokens are
reserved as an estimate at admission and settled to the real usage when the answer ends. Spend
is a float per key and budget period, added atomically."""
from __future__ import annotations

import time
from dataclasses import dataclass

from .api_keys import ApiKey
from .store import Store

WINDOW_S = 60
SPEND_TTL_S = 40 * 86400  # a month's counter outlives the month

# KEYS: requests counter, tokens counter, spend. ARGV: rpm, tpm (0: none), tokens to reserve, ttl,
# budget in USD (negative: none). Returns {admitted, the limit that refused ("" when admitted),
# requests, tokens, spend}.
_ADMIT = """
local r = tonumber(redis.call('GET', KEYS[1]) or '0')
local t = tonumber(redis.call('GET', KEYS[2]) or '0')
local spend = redis.call('GET', KEYS[3]) or '0'
local rpm, tpm, est, budget = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[5])
if budget >= 0 and tonumber(spend) >= budget then return {0, 'budget', r, t, spend} end
if rpm > 0 and r + 1 > rpm then return {0, 'requests', r, t, spend} end
if tpm > 0 and t + est > tpm then return {0, 'tokens', r, t, spend} end
r = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[4])
t = redis.call('INCRBY', KEYS[2], est)
redis.call('EXPIRE', KEYS[2], ARGV[4])
return {1, '', r, t, spend}
"""


@dataclass(frozen=True)
class Admission:
    admitted: bool
    refused_by: str  # "budget" | "requests" | "tokens" | "" when admitted
    window: int  # the minute the counters belong to
    reset_s: float  # seconds until that window ends
    requests: int  # counted in the window, this one included when admitted
    tokens: int
    reserved_tokens: int
    spend_usd: float  # in the key's current budget period


def budget_period(period: str, now: float) -> str:
    return time.strftime("%Y-%m-%d" if period == "day" else "%Y-%m", time.gmtime(now))


class Limiter:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._admit = store.client.register_script(_ADMIT)

    def _keys(self, key: ApiKey, window: int, now: float) -> list[str]:
        return [self.store.key("rl", key.id, str(window), "requests"), self.store.key("rl", key.id, str(window), "tokens"),
                self.store.key("spend", key.id, budget_period(key.budget_period, now))]

    def admit(self, key: ApiKey, tokens: int, now: float | None = None) -> Admission:
        """Count this request and reserve ``tokens`` if the key's limits allow it."""
        now = time.time() if now is None else now
        window = int(now // WINDOW_S)
        keys = self._keys(key, window, now)
        ok, refused_by, requests, used, spend = self.store.run(
            "admit", lambda c: self._admit(keys=keys, client=c, args=[
                key.rpm or 0, key.tpm or 0, tokens, WINDOW_S * 2, -1 if key.budget_usd is None else key.budget_usd]))
        return Admission(bool(ok), refused_by, window, WINDOW_S - now % WINDOW_S, int(requests), int(used),
                         tokens if ok else 0, float(spend))

    def settle(self, key: ApiKey, admission: Admission, tokens: int, cost_usd: float, now: float | None = None) -> None:
        """Replace the reserved tokens with those used, and add the cost to the key's spend."""
        now = time.time() if now is None else now
        req_key, tok_key, spend_key = self._keys(key, admission.window, now)

        def write(c):  # noqa: ANN001, ANN202
            with c.pipeline(transaction=False) as p:
                if tokens != admission.reserved_tokens:
                    p.incrby(tok_key, tokens - admission.reserved_tokens)
                    p.expire(tok_key, WINDOW_S * 2)
                if cost_usd > 0:
                    p.incrbyfloat(spend_key, cost_usd)
                    p.expire(spend_key, SPEND_TTL_S)
                p.execute()

        self.store.run("settle", write)

    def spend(self, key: ApiKey, now: float | None = None) -> float:
        now = time.time() if now is None else now
        raw = self.store.run("spend", lambda c: c.get(self.store.key("spend", key.id,
                                                                     budget_period(key.budget_period, now))))
        return float(raw or 0.0)
