"""Who is calling: the tenant that scopes history, stats and cache entries.

Local mode (no keys configured): everyone is tenant ``local`` and the server binds to
127.0.0.1 only. API keys and the admin key are added by the reliability work (see README).
"""

from __future__ import annotations

from litestar import Request

from compass.chat import Caller
from compass.services import Services

LOCAL_TENANT = "local"


class RequestCaller(Caller, kw_only=True):
    is_admin: bool = False

    @property
    def tenant_scope(self) -> str | None:
        """The tenant to filter by; ``None`` (everything) for the admin."""
        return None if self.is_admin else self.tenant


def caller_for(request: Request, services: Services) -> RequestCaller:
    """The caller of ``request``; raises 401/403 once keys are configured."""
    return RequestCaller(tenant=LOCAL_TENANT, key_id=None, is_admin=True)
