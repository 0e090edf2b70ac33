"""API keys, credits and rate limits in Redis: one state for every API replica, updated atomically.

Same interface and key format as `sd3pose.service.keys.KeyStore` (SQLite), so the routes cannot tell
them apart. `sd3pose:key:<id>` is a hash (name, key_hash, micro_credits — whole micro-credits, absent
when unlimited — scopes, rate_limit, created_at, revoked_at); `sd3pose:keys` orders the ids by creation,
`sd3pose:keys:active` holds the unrevoked ones. Credit changes are Lua scripts on integers (HINCRBY), so
two replicas can never both spend the last credit and sums are exact, and each carries a one-off token so
that a command replayed after a reconnect counts once.
"""

from __future__ import annotations

import hmac
import time
import uuid
from typing import Any

from sd3pose.distributed.config import PREFIX
from sd3pose.distributed.jobstore import CREDITS_FIELD, as_text, credits_key
from sd3pose.errors import InvalidRequestError
from sd3pose.service.credits import from_micro, to_micro
from sd3pose.service.keys import ApiKey, below_zero, check_credit_change, hash_key, key_id_of, new_key

ALL_KEYS = f"{PREFIX}:keys"
ACTIVE_KEYS = f"{PREFIX}:keys:active"
# The layout version of the key hashes; 2: credits as integer micro_credits.
SCHEMA_KEY = f"{PREFIX}:schema:keys"
SCHEMA_VERSION = 2
TOKEN_TTL_S = 600

# KEYS: key hash, token. ARGV: micro-credits (> 0). 1 = taken (or unlimited), 0 = short or unknown key.
_RESERVE = """
local done = redis.call('GET', KEYS[2])
if done then return tonumber(done) end
local outcome = 0
if redis.call('EXISTS', KEYS[1]) == 1 then
  local credits = redis.call('HGET', KEYS[1], 'micro_credits')
  if not credits then
    outcome = 1
  elseif tonumber(credits) >= tonumber(ARGV[1]) then
    redis.call('HINCRBY', KEYS[1], 'micro_credits', -tonumber(ARGV[1]))
    outcome = 1
  end
end
redis.call('SET', KEYS[2], outcome, 'EX', ARGV[2])
return outcome
"""

# Refunds and an operator's changes of a balance. KEYS: key hash, one-off token. ARGV: micro-credits (may
# be negative), token ttl. -> 1 applied (or applied before: a replay after a lost reply changes nothing),
# 0 refused: it would take the balance below 0 (checked here, atomically: a request may reserve meanwhile).
# Unlimited keys are left alone.
_ADD = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 1 end
local credits = redis.call('HGET', KEYS[1], 'micro_credits')
if credits and tonumber(credits) + tonumber(ARGV[1]) < 0 then return 0 end
redis.call('SET', KEYS[2], 1, 'EX', ARGV[2])
if credits then redis.call('HINCRBY', KEYS[1], 'micro_credits', ARGV[1]) end
return 1
"""

# Keys written when credits were floats (field 'credits') get whole micro-credits, once.
# KEYS: the id index, the schema marker. ARGV: key hash prefix, version.
_MIGRATE = """
if tonumber(redis.call('GET', KEYS[2]) or '0') >= tonumber(ARGV[2]) then return 0 end
local moved = 0
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local key = ARGV[1] .. id
  local credits = redis.call('HGET', key, 'credits')
  if credits then
    redis.call('HSET', key, 'micro_credits', string.format('%d', math.floor(tonumber(credits) * 1e6 + 0.5)))
    redis.call('HDEL', key, 'credits')
    moved = moved + 1
  end
end
redis.call('SET', KEYS[2], ARGV[2])
return moved
"""

# Sliding one-minute window per key, on the Redis clock (replicas' clocks may differ).
# KEYS: the key's hit log. ARGV: limit, window seconds, unique member. -> '0' or seconds to wait.
_RATE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return tostring(tonumber(first[2]) + window - now)
end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('EXPIRE', KEYS[1], math.ceil(window) + 1)
return '0'
"""


class RedisKeyStore:
    """`KeyStore` on Redis (see the module docstring)."""

    def __init__(self, client: Any) -> None:
        self.redis = client
        self._reserve = client.register_script(_RESERVE)
        self._add = client.register_script(_ADD)
        client.register_script(_MIGRATE)(keys=[ALL_KEYS, SCHEMA_KEY], args=[f"{PREFIX}:key:", SCHEMA_VERSION])

    def _key(self, key_id: str) -> str:
        return credits_key(key_id)

    def _load(self, key_id: str) -> ApiKey | None:
        raw = self.redis.hgetall(self._key(key_id)) if key_id else {}
        if not raw:
            return None
        row = {as_text(k): as_text(v) for k, v in raw.items()}
        return ApiKey(
            id=key_id,
            name=row["name"],
            credits=from_micro(int(row[CREDITS_FIELD])) if CREDITS_FIELD in row else None,
            scopes=tuple(s for s in row["scopes"].split(",") if s),
            rate_limit=int(row["rate_limit"]) if row.get("rate_limit") else None,
            created_at=float(row["created_at"]),
            revoked_at=float(row["revoked_at"]) if row.get("revoked_at") else None,
        )

    def create(
        self,
        name: str,
        *,
        credits: float | None,
        scopes: list[str] | tuple[str, ...] | None = None,
        rate_limit: int | None = None,
    ) -> tuple[ApiKey, str]:
        key_id, secret, scope_tuple, micro = new_key(name, credits=credits, scopes=scopes, rate_limit=rate_limit)
        now = time.time()
        fields: dict[str, str] = {
            "name": name.strip(),
            "key_hash": hash_key(secret),
            "scopes": ",".join(scope_tuple),
            "created_at": repr(now),
        }
        if micro is not None:
            fields[CREDITS_FIELD] = str(micro)
        if rate_limit is not None:
            fields["rate_limit"] = str(rate_limit)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self._key(key_id), mapping=fields)
        pipe.zadd(ALL_KEYS, {key_id: now})
        pipe.sadd(ACTIVE_KEYS, key_id)
        pipe.execute()
        return self._load(key_id), secret  # type: ignore[return-value]

    def get(self, key_id: str) -> ApiKey | None:
        return self._load(key_id)

    def list(self) -> list[ApiKey]:
        ids = [as_text(i) for i in self.redis.zrange(ALL_KEYS, 0, -1)]
        return [key for key in (self._load(i) for i in ids if i) if key is not None]

    def find(self, id_or_name: str) -> ApiKey:
        key = self._load(id_or_name)
        if key is not None:
            return key
        named = [k for k in self.list() if k.name == id_or_name]
        if not named:
            raise InvalidRequestError(f"no key with id or name {id_or_name!r}; see `sd3pose keys list`")
        if len(named) > 1:
            raise InvalidRequestError(
                f"several keys are named {id_or_name!r} ({', '.join(k.id for k in named)}); give the id instead"
            )
        return named[0]

    def active_count(self) -> int:
        return int(self.redis.scard(ACTIVE_KEYS))

    def verify(self, secret: str) -> ApiKey | None:
        """The active key for this secret, or None; compares hashes in constant time, also on a miss."""
        key_id = key_id_of(secret)
        stored = as_text(self.redis.hget(self._key(key_id), "key_hash")) if key_id else None
        matches = hmac.compare_digest(stored or hash_key(""), hash_key(secret.strip()))
        if stored is None or not matches:
            return None
        key = self._load(key_id)
        return key if key is not None and key.active else None

    def revoke(self, key_id: str) -> None:
        if self.redis.hsetnx(self._key(key_id), "revoked_at", repr(time.time())):
            self.redis.srem(ACTIVE_KEYS, key_id)

    def add_credits(self, key_id: str, amount: float) -> ApiKey:
        key = self._load(key_id)
        micro = check_credit_change(key, key_id, amount)
        if not self._change(key_id, micro):
            raise below_zero(key, self.balance(key_id) or 0.0, amount)  # type: ignore[arg-type]
        return self._load(key_id)  # type: ignore[return-value]

    def balance(self, key_id: str) -> float | None:
        value = self.redis.hget(self._key(key_id), CREDITS_FIELD)
        return from_micro(int(value)) if value is not None else None

    def reserve(self, key_id: str, amount: float) -> bool:
        """Take `amount` credits now (refunded if the images are not delivered); False when short."""
        micro = to_micro(amount)
        if micro <= 0:
            return True
        token = f"{PREFIX}:op:{uuid.uuid4().hex}"
        return int(self._reserve(keys=[self._key(key_id), token], args=[micro, TOKEN_TTL_S])) == 1

    def refund(self, key_id: str, amount: float) -> None:
        micro = to_micro(amount)
        if micro > 0:
            self._change(key_id, micro)

    def _change(self, key_id: str, micro: int) -> bool:
        """Add `micro` micro-credits (once, even if the call is replayed); False when it would go below 0."""
        token = f"{PREFIX}:op:{uuid.uuid4().hex}"
        return bool(int(self._add(keys=[self._key(key_id), token], args=[micro, TOKEN_TTL_S])))


class RedisRateLimiter:
    """`RateLimiter` on Redis: the per-key window is shared by every API replica."""

    WINDOW_S = 60.0

    def __init__(self, client: Any) -> None:
        self._script = client.register_script(_RATE)

    def check(self, who: str, per_minute: int) -> float:
        """Record one request; return 0 if allowed, else the seconds until one is allowed again."""
        if per_minute <= 0:
            return 0.0
        wait = self._script(keys=[f"{PREFIX}:rate:{who}"], args=[per_minute, self.WINDOW_S, uuid.uuid4().hex])
        return max(0.0, float(as_text(wait) or 0))
