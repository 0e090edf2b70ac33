"""API keys and their credits, stored in SQLite.

A key reads `sd3p_<id>_<secret>`; only the SHA-256 of the whole key is stored (keys are 190 random
bits, so a fast hash is enough), found by its public id and compared in constant time. Credits are
kept as whole micro-credits (`sd3pose.service.credits`) and shown as credits.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from sd3pose.errors import InvalidRequestError
from sd3pose.service.credits import MAX_MICRO, format_credits, from_micro, to_micro
from sd3pose.service.store import Database

KEY_PREFIX = "sd3p"
# What a key may do: `generate` = sync v1, `async` = the v2 job API, `pose` = the pose preview.
SCOPES: tuple[str, ...] = ("generate", "async", "pose")


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    credits: float | None  # None: unlimited
    scopes: tuple[str, ...]
    rate_limit: int | None
    created_at: float
    revoked_at: float | None

    @property
    def unlimited(self) -> bool:
        return self.credits is None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def hash_key(key: str) -> str:
    """What the stores keep of a key: its SHA-256, hex."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _row_to_key(row) -> ApiKey:
    return ApiKey(
        id=row["id"],
        name=row["name"],
        credits=from_micro(row["micro_credits"]),
        scopes=tuple(s for s in row["scopes"].split(",") if s),
        rate_limit=row["rate_limit"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
    )


def parse_scopes(scopes: list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    if not scopes:
        return SCOPES
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise InvalidRequestError(f"unknown scope {unknown[0]!r}; use any of: {', '.join(SCOPES)}")
    return tuple(dict.fromkeys(scopes))


def micro_amount(credits: float, what: str) -> int:
    """`credits` in micro-credits, or InvalidRequestError naming `what` when it is not a usable amount."""
    try:
        micro = to_micro(credits)
    except ValueError:
        # NaN especially: stored as NULL it would read back as "unlimited"
        raise InvalidRequestError(f"{what} must be a finite number of credits (got {credits})") from None
    if abs(micro) > MAX_MICRO:
        raise InvalidRequestError(f"{what} must be at most {format_credits(from_micro(MAX_MICRO))} credits")
    return micro


def new_key(
    name: str, *, credits: float | None, scopes: list[str] | tuple[str, ...] | None, rate_limit: int | None
) -> tuple[str, str, tuple[str, ...], int | None]:
    """Check a new key's settings and draw it: (public id, secret key string, scopes, micro-credits).
    Shared by the stores."""
    if not name.strip():
        raise InvalidRequestError("a key needs a non-empty --name")
    micro = None if credits is None else micro_amount(credits, "--credits")
    if micro is not None and micro < 0:
        raise InvalidRequestError(f"--credits must be a finite number, 0 or more (got {credits})")
    if rate_limit is not None and rate_limit < 0:
        raise InvalidRequestError(f"--rate-limit must be 0 (none) or more requests/minute (got {rate_limit})")
    scope_tuple = parse_scopes(scopes)
    key_id = secrets.token_hex(6)
    return key_id, f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(24)}", scope_tuple, micro


def check_credit_change(key: ApiKey | None, key_id: str, amount: float) -> int:
    """What `keys add-credits` may do, shared by the stores: a finite change to a limited key's balance
    that keeps it countable. Returns the change in micro-credits. (The stores check the floor of 0 in
    the update itself.)"""
    if key is None:
        raise InvalidRequestError(f"no key with id {key_id!r}")
    try:
        micro = to_micro(amount)
    except ValueError:
        raise InvalidRequestError(f"the amount must be a finite number of credits (got {amount})") from None
    if key.unlimited:
        raise InvalidRequestError(f"key {key.name!r} is unlimited; it has no credit balance to add to")
    if to_micro(key.credits) + micro > MAX_MICRO:  # type: ignore[arg-type]
        raise InvalidRequestError(
            f"key {key.name!r} cannot hold more than {format_credits(from_micro(MAX_MICRO))} credits "
            f"(it has {format_credits(key.credits)}; adding {amount:g} is too much)"
        )
    return micro


def below_zero(key: ApiKey, balance: float, amount: float) -> InvalidRequestError:
    return InvalidRequestError(
        f"key {key.name!r} has {format_credits(balance)} credits; removing {format_credits(-amount)} would "
        "leave it below 0"
    )


def key_id_of(secret: str) -> str:
    """The public id inside a secret key string ('' when it is not one of ours)."""
    parts = secret.strip().split("_")
    return parts[1] if len(parts) >= 3 and parts[0] == KEY_PREFIX else ""


class KeyStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(
        self,
        name: str,
        *,
        credits: float | None,
        scopes: list[str] | tuple[str, ...] | None = None,
        rate_limit: int | None = None,
    ) -> tuple[ApiKey, str]:
        """Create a key; returns it and the secret key string (shown once, never stored)."""
        key_id, secret, scope_tuple, micro = new_key(name, credits=credits, scopes=scopes, rate_limit=rate_limit)
        now = time.time()
        self.db.execute(
            "INSERT INTO api_keys (id, name, key_hash, micro_credits, scopes, rate_limit, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (key_id, name.strip(), hash_key(secret), micro, ",".join(scope_tuple), rate_limit, now),
        )
        return self.get(key_id), secret  # type: ignore[return-value]

    def get(self, key_id: str) -> ApiKey | None:
        rows = self.db.query("SELECT * FROM api_keys WHERE id = ?", (key_id,))
        return _row_to_key(rows[0]) if rows else None

    def find(self, id_or_name: str) -> ApiKey:
        """A key by id or by (unique) name, for the CLI."""
        rows = self.db.query("SELECT * FROM api_keys WHERE id = ?", (id_or_name,))
        if not rows:
            rows = self.db.query("SELECT * FROM api_keys WHERE name = ? ORDER BY created_at", (id_or_name,))
        if not rows:
            raise InvalidRequestError(f"no key with id or name {id_or_name!r}; see `sd3pose keys list`")
        if len(rows) > 1:
            ids = ", ".join(r["id"] for r in rows)
            raise InvalidRequestError(f"several keys are named {id_or_name!r} ({ids}); give the id instead")
        return _row_to_key(rows[0])

    def list(self) -> list[ApiKey]:
        return [_row_to_key(r) for r in self.db.query("SELECT * FROM api_keys ORDER BY created_at")]

    def active_count(self) -> int:
        return int(self.db.query("SELECT COUNT(*) FROM api_keys WHERE revoked_at IS NULL")[0][0])

    def verify(self, secret: str) -> ApiKey | None:
        """The active key for this secret, or None. Constant-time in the secret's content."""
        key_id = key_id_of(secret)
        rows = self.db.query("SELECT * FROM api_keys WHERE id = ?", (key_id,))
        stored = rows[0]["key_hash"] if rows else hash_key("")  # compare anyway: same work on a miss
        matches = hmac.compare_digest(stored, hash_key(secret.strip()))
        if not rows or not matches:
            return None
        key = _row_to_key(rows[0])
        return key if key.active else None

    def revoke(self, key_id: str) -> None:
        self.db.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (time.time(), key_id))

    def add_credits(self, key_id: str, amount: float) -> ApiKey:
        key = self.get(key_id)
        micro = check_credit_change(key, key_id, amount)
        # The floor is checked in the update itself: a request may reserve credits since the check.
        cursor = self.db.execute(
            "UPDATE api_keys SET micro_credits = micro_credits + ? "
            "WHERE id = ? AND micro_credits IS NOT NULL AND micro_credits + ? >= 0",
            (micro, key_id, micro),
        )
        if cursor.rowcount != 1:
            raise below_zero(key, self.balance(key_id) or 0.0, amount)  # type: ignore[arg-type]
        return self.get(key_id)  # type: ignore[return-value]

    def balance(self, key_id: str) -> float | None:
        rows = self.db.query("SELECT micro_credits FROM api_keys WHERE id = ?", (key_id,))
        return from_micro(rows[0]["micro_credits"]) if rows else None

    def reserve(self, key_id: str, amount: float) -> bool:
        """Take `amount` credits now (refunded if the images are not delivered); False when short."""
        micro = to_micro(amount)
        if micro <= 0:
            return True
        with self.db.transaction() as conn:
            cursor = conn.execute(
                "UPDATE api_keys SET micro_credits = micro_credits - ? "
                "WHERE id = ? AND (micro_credits IS NULL OR micro_credits >= ?)",
                (micro, key_id, micro),
            )
            return cursor.rowcount == 1

    def refund(self, key_id: str, amount: float) -> None:
        micro = to_micro(amount)
        if micro > 0:
            self.db.execute(
                "UPDATE api_keys SET micro_credits = micro_credits + ? WHERE id = ? AND micro_credits IS NOT NULL",
                (micro, key_id),
            )
