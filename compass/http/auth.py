"""Who is calling: API keys map to tenants; the admin key guards admin endpoints.

Local mode (no admin key and no client keys): every caller is the admin of tenant ``local``,
and ``compass serve`` binds to loopback only unless told otherwise. Once any key exists, every
request needs ``Authorization: Bearer <key>`` (or ``x-api-key: <key>``, as the Anthropic SDK
sends it): a client key acts for its tenant (its history,
stats and cache entries only), the admin key for everything.
"""

from __future__ import annotations

import hmac
import math

from litestar import Request

from compass.errors import AuthenticationFailed, RateLimited
from compass.pipeline.exchange import Caller
from compass.services import Services
from compass.storage.keys import active_key_hashes, admin_key, hash_key
from compass.storage.rate_limits import RateLimiter, build_limiter

LOCAL_TENANT = "local"
ADMIN_TENANT = "admin"


class RequestCaller(Caller, kw_only=True):
    is_admin: bool = False

    @property
    def tenant_scope(self) -> str | None:
        """The tenant to filter by; ``None`` (everything) for the admin."""
        return None if self.is_admin else self.tenant


class KeyRing:
    """The active keys in memory (reloaded on every change) and the per-key rate limiters.

    In fleet mode a change made through another replica or ``compass keys`` reaches this table
    through the follower's ``keys`` events (compass/pipeline/fleet.py).
    """

    def __init__(self, services: Services) -> None:
        self.services = services
        self.admin_key = admin_key(services.settings)
        self.keys: dict[str, tuple[str, str, float | None]] = {}
        storage = services.settings.storage
        # One budget per key: this process's buckets, or the fleet's in PostgreSQL with storage.url.
        self.limiter: RateLimiter = build_limiter(storage.url, storage.connect_timeout_s)

    async def reload(self) -> None:
        rows = self.services.rows  # the DuckDB file, or the fleet store (every replica's keys)
        assert rows is not None
        self.keys = await rows.run(active_key_hashes)

    @property
    def local_mode(self) -> bool:
        return not self.admin_key and not self.keys

    def identify(self, token: str | None) -> RequestCaller:
        if self.local_mode:
            return RequestCaller(tenant=LOCAL_TENANT, key_id=None, is_admin=True)
        if not token:
            raise AuthenticationFailed(
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>' "
                "or 'x-api-key: <key>' (create one with `compass keys create --tenant NAME`)."
            )
        if self.admin_key and hmac.compare_digest(token.encode(), self.admin_key.encode()):
            return RequestCaller(tenant=ADMIN_TENANT, key_id="admin", is_admin=True)
        entry = self.keys.get(hash_key(token))
        if entry is None:
            raise AuthenticationFailed("Incorrect API key provided.")
        key_id, tenant, _ = entry
        return RequestCaller(tenant=tenant, key_id=key_id, is_admin=False)

    async def check_rate(self, caller: RequestCaller) -> None:
        default = self.services.settings.limits.requests_per_minute
        bucket_key = caller.key_id or caller.tenant
        per_key = None
        for key_id, _, rpm in self.keys.values():
            if key_id == caller.key_id:
                per_key = rpm
                break
        limit = per_key if per_key is not None else default
        if limit is None or caller.key_id == "admin":
            return
        wait = await self.limiter.take(bucket_key, limit)
        if wait > 0:
            retry_after = str(max(1, math.ceil(wait)))
            raise RateLimited(
                f"Rate limit reached for {caller.key_id or caller.tenant}: {limit:g} requests per minute. "
                f"Try again in {retry_after}s.",
                headers={"retry-after": retry_after},
            )


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header and header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return request.headers.get("x-api-key") or None


def keyring(services: Services) -> KeyRing:
    ring = services.extras.get("keyring")
    if ring is None:
        ring = services.extras["keyring"] = KeyRing(services)
    return ring


def caller_for(request: Request, services: Services) -> RequestCaller:
    """The caller of ``request``; raises 401 for a missing or wrong key."""
    return keyring(services).identify(bearer_token(request))


async def rated_caller(request: Request, services: Services) -> RequestCaller:
    """``caller_for``, then 429 when the caller is over ``limits.requests_per_minute``."""
    ring = keyring(services)
    caller = ring.identify(bearer_token(request))
    await ring.check_rate(caller)
    return caller
