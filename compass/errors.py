"""Every error the gateway raises on purpose, mapped once to an OpenAI-style error body.

    CompassError                      (500 api_error; never raised directly)
    ├── ConfigError                   (start-up only: bad compass.yaml or environment value)
    ├── InvalidRequest                (400 invalid_request_error)
    │   ├── UnsupportedParameter      (400, param names the field)
    │   └── RequestTooLarge           (413)
    ├── AuthenticationFailed          (401 authentication_error, invalid_api_key)
    ├── PermissionDenied              (403 permission_error)
    ├── NotFound                      (404 invalid_request_error)
    │   ├── ModelNotFound             (404, code model_not_found)
    │   └── RequestNotFound           (404, unknown chat completion id)
    ├── RateLimited                   (429 rate_limit_error, Retry-After header)
    ├── Overloaded                    (503 overloaded: a local model's backlog is full, or it is not loaded)
    ├── StoreUnavailable              (503 store_unavailable: the fleet store cannot be reached now)
    │   └── SpoolFull                 (503 spool_full: the outage spool is full; new requests wait)
    └── UpstreamError                 (502 upstream_error: the provider failed)
        └── UpstreamTimeout           (504 timeout: the provider did not answer in time)

The body is always ``{"error": {"message", "type", "param", "code"}}`` as OpenAI's API returns it,
so the ``openai`` SDK raises its matching exception class on the client side.
"""

from __future__ import annotations

from typing import Any


class CompassError(Exception):
    status_code: int = 500
    error_type: str = "api_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.error_type, self.param, self.code)


def error_body(message: str, error_type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


class ConfigError(CompassError):
    """Raised at start-up; the message names the key and what is wrong with it."""


class InvalidRequest(CompassError):
    status_code = 400
    error_type = "invalid_request_error"


class UnsupportedParameter(InvalidRequest):
    code = "unsupported_parameter"


class RequestTooLarge(InvalidRequest):
    status_code = 413
    code = "request_too_large"


class AuthenticationFailed(CompassError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(CompassError):
    status_code = 403
    error_type = "permission_error"
    code = "insufficient_permissions"


class NotFound(CompassError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class RequestNotFound(NotFound):
    code = "request_not_found"


class RateLimited(CompassError):
    status_code = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"


class Overloaded(CompassError):
    status_code = 503
    error_type = "api_error"
    code = "overloaded"


class StoreUnavailable(CompassError):
    """The fleet store (PostgreSQL) is unreachable; what can wait is spooled, this cannot."""

    status_code = 503
    error_type = "api_error"
    code = "store_unavailable"

    def __init__(self, message: str, **kwargs: Any) -> None:
        kwargs.setdefault("headers", {"Retry-After": "1"})
        super().__init__(message, **kwargs)


class SpoolFull(StoreUnavailable):
    code = "spool_full"


class UpstreamError(CompassError):
    status_code = 502
    error_type = "upstream_error"
    code = "upstream_error"


class UpstreamTimeout(UpstreamError):
    status_code = 504
    error_type = "timeout"
    code = "upstream_timeout"
