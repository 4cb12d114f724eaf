"""The app factory: ``create_app(settings, services) -> Litestar``.

Services arrive through ``dependencies=`` and start and stop in ``lifespan=``; nothing is
global and nothing parses arguments at import time. Errors are mapped once, here, to OpenAI
error bodies: a client mistake is a 4xx with ``{"error": {...}}``, never a 500; on the Anthropic
Messages paths (``/v1/messages...``) the same errors take Anthropic's ``{"type": "error", ...}``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
from litestar import Litestar, Request, Response
from litestar.di import Provide
from litestar.exceptions import HTTPException, SerializationException, ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin

from compass import __version__
from compass.config import Settings
from compass.errors import CompassError, error_body
from compass.services import Services, build_services
from compass.wire.anthropic import ANTHROPIC_PATH_PREFIX, from_openai_error

log = logging.getLogger("compass")

MISSING_FIELD = re.compile(r"missing required field `([^`]+)`")

HTTP_ERROR_TYPES = {
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "insufficient_permissions"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
    415: ("invalid_request_error", "unsupported_media_type"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}


def _json_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(
        content=msgspec.json.encode(body), status_code=status, media_type="application/json", headers=headers
    )


def _error_response(
    request: Request, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> Response:
    """Every error leaves here: OpenAI's shape, or Anthropic's on the Messages API's paths."""
    if request.scope.get("path", "").startswith(ANTHROPIC_PATH_PREFIX):
        status, body = from_openai_error(status, body)
    return _json_response(status, body, headers)


def compass_error_handler(request: Request, exc: CompassError) -> Response:
    return _error_response(request, exc.status_code, exc.body(), exc.headers)


def validation_error_handler(request: Request, exc: ValidationException) -> Response:
    """msgspec's messages name the field (``at `$.messages[0].role```); keep that, OpenAI-style."""
    problems = exc.extra if isinstance(exc.extra, list) else []
    param = None
    parts = []
    for problem in problems:
        if isinstance(problem, dict):
            key = problem.get("key")
            message = str(problem.get("message", ""))
            param = param or (str(key) if key and key not in ("body", "data") else None)
            parts.append(message)
    if not parts:
        parts.append(str(exc.detail))
    message = "; ".join(parts)
    missing = MISSING_FIELD.search(message)
    if missing:
        param = f"{param}.{missing.group(1)}" if param else missing.group(1)
    if "JSON" in message or "malformed" in message.lower() or "decode" in message.lower():
        message = f"We could not parse the JSON body of your request: {message}"
    return _error_response(
        request, 400, error_body(message, "invalid_request_error", param, "invalid_request")
    )


def http_error_handler(request: Request, exc: HTTPException) -> Response:
    status = exc.status_code
    if status >= 500:
        log.error("HTTP %s: %s", status, exc.detail)
    error_type, code = HTTP_ERROR_TYPES.get(
        status, ("invalid_request_error" if status < 500 else "api_error", None)
    )
    message = str(exc.detail)
    # Litestar turns a body msgspec cannot decode into a 400 whose cause is a SerializationException
    # (since 2.25 also for non-UTF-8 bytes, which no longer reach undecodable_body_handler).
    if status == 400 and ("JSON" in message or isinstance(exc.__cause__, SerializationException)):
        message, code = f"We could not parse the JSON body of your request: {message}", "invalid_json"
    return _error_response(request, status, error_body(message, error_type, None, code), exc.headers)


def undecodable_body_handler(request: Request, exc: Exception) -> Response:
    """msgspec raises these past Litestar's JSON error mapping: a body nested too deeply, or not UTF-8."""
    reason = "it is nested too deeply" if isinstance(exc, RecursionError) else "it is not valid UTF-8"
    message = f"We could not parse the JSON body of your request: {reason}."
    return _error_response(request, 400, error_body(message, "invalid_request_error", None, "invalid_json"))


def internal_error_handler(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    body = error_body("The gateway had an internal error; it is logged.", "api_error")
    return _error_response(request, 500, body)


def create_app(settings: Settings, services: Services | None = None) -> Litestar:
    """A gateway for ``settings``; ``services`` may be passed in (tests pass a mock upstream)."""
    from compass.http.messages import MESSAGES_HANDLERS
    from compass.http.routes import ROUTE_HANDLERS

    services = services or build_services(settings)

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncGenerator[None, None]:
        from compass.http.auth import keyring
        from compass.pipeline.fleet import on_keys_changed

        await services.start()
        ring = keyring(services)
        on_keys_changed(services, ring.reload)  # fleet mode: before the load, so no change slips by
        await ring.reload()
        if not ring.local_mode and not ring.admin_key:
            log.warning("client keys exist but no admin key is set: /admin and SQL access are closed")
        try:
            yield
        finally:
            await services.stop()
            ring.limiter.close()

    def provide_services() -> Services:
        return services

    def admit(request: Request) -> Response | None:
        """A request that would be served (and leave a row) is refused with a 503 when its row
        could not be kept: the fleet store's outage spool is full (compass/storage/spool.py)."""
        path = request.scope.get("path", "")
        if request.method != "POST" or not path.startswith("/v1/") or path.endswith("/count_tokens"):
            return None
        try:
            if services.history is not None:
                services.history.admit()
        except CompassError as exc:
            return _error_response(request, exc.status_code, exc.body(), exc.headers)
        return None

    return Litestar(
        route_handlers=[*ROUTE_HANDLERS, *MESSAGES_HANDLERS],
        dependencies={"services": Provide(provide_services, use_cache=True, sync_to_thread=False)},
        lifespan=[lifespan],
        before_request=admit,
        exception_handlers={
            CompassError: compass_error_handler,
            ValidationException: validation_error_handler,
            HTTPException: http_error_handler,
            RecursionError: undecodable_body_handler,
            UnicodeDecodeError: undecodable_body_handler,
            Exception: internal_error_handler,
        },
        openapi_config=OpenAPIConfig(
            title="LLM Compass",
            version=__version__,
            description="OpenAI-compatible gateway that routes each request to a just-right model.",
            path="/docs",
            render_plugins=[SwaggerRenderPlugin()],
        ),
        request_max_body_size=settings_max_body(settings),
        debug=False,
    )


def settings_max_body(settings: Settings) -> int:
    return settings.limits.max_body_bytes
