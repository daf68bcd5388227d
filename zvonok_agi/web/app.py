"""The admin web application: the JSON API under /api (a session cookie or the operator's
bearer token: `auth`) and the numbers page.

Every error, the framework's own (404, 405, 413) included, is a JSON body
`{"error": {"code", "message"}}` with a stable code. The store busy past its timeout (other
writers held its lock) or away is 503 `store_busy` or `store_unavailable` with Retry-After:
nothing was changed, the client tries again. An unexpected error is logged and answered 500
`internal_error` (the tests hold that no input gets there).
"""

from __future__ import annotations

from pathlib import Path

import structlog
from aiohttp import web

from .. import regions
from ..access.users import TooManyAttempts, Users
from ..numbers import databases
from ..numbers.databases import StoreBusy, StoreUnavailable
from ..numbers.rules import Refused
from ..numbers.service import NumbersService
from .api import Api
from .auth import Access

log = structlog.get_logger(__name__)

PAGE = Path(__file__).parent / "page"

STATUS = {
    "bad_input": 400,
    "bad_scenario": 400,
    "bad_number": 400,
    "bad_json": 400,
    "unauthorized": 401,
    "bad_credentials": 401,
    "not_verified": 403,
    "not_owner": 403,
    "forbidden": 403,
    "bad_csrf": 403,
    "bad_origin": 403,
    "wrong_password": 403,
    "unknown_account": 404,
    "unknown_user": 404,
    "unknown_number": 404,
    "unknown_campaign": 404,
    "unknown_request": 404,
    "not_found": 404,
    "method_not_allowed": 405,
    "body_too_large": 413,
    "too_many_attempts": 429,
    "no_redis": 503,
    "store_busy": 503,
    "store_unavailable": 503,
}  # any other refusal of a rule: 409
HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
# Seconds a client waits before trying again: a busy store frees up as its writers finish; one
# away comes back after a restart or a failover.
RETRY_BUSY = 1
RETRY_UNAVAILABLE = 5

PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def make_app(
    service: NumbersService, users: Users, access: Access, max_body: int = 64 * 1024,
    region: str = "RU",
) -> web.Application:
    app = web.Application(
        middlewares=[_errors, _cap(max_body), access.middleware],
        client_max_size=max_body,  # for bodies sent without a length
    )
    Api(service, users, access, region).add_routes(app)
    app.router.add_get("/", _page)
    app.router.add_static("/static/", PAGE, append_version=False)
    app.on_response_prepare.append(_headers)
    return app


def error_response(
    status: int, code: str, message: str, choices: tuple[str, ...] = ()
) -> web.Response:
    error: dict = {"code": code, "message": message}
    if choices:  # the regions a name may mean, and their names to show
        error["choices"] = list(choices)
        error["choice_names"] = [regions.display_names(c) for c in choices]
    return web.json_response({"error": error}, status=status)


@web.middleware
async def _errors(request: web.Request, handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Refused as exc:
        response = error_response(STATUS.get(exc.code, 409), exc.code, exc.message, exc.choices)
        if response.status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        if isinstance(exc, TooManyAttempts):
            response.headers["Retry-After"] = str(exc.retry_after)
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = HTTP_CODES.get(exc.status, f"http_{exc.status}")
        response = error_response(exc.status, code, exc.text or exc.reason)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except StoreUnavailable as exc:
        return _store_error(request, exc)
    except Exception:
        log.exception("admin API error", method=request.method, path=request.path)
        return error_response(500, "internal_error", "unexpected error; see the server log")


def _store_error(request: web.Request, exc: StoreUnavailable) -> web.Response:
    if isinstance(exc, StoreBusy):
        code, retry = "store_busy", RETRY_BUSY
        waited = databases.BUSY_TIMEOUT_MS / 1000
        message = f"the store is busy: other changes held it for {waited:g} s"
    else:
        code, retry = "store_unavailable", RETRY_UNAVAILABLE
        message = "the store is not reachable"
    log.warning(code, method=request.method, path=request.path, error=str(exc))
    response = error_response(STATUS[code], code, f"{message}; nothing was changed, try again")
    response.headers["Retry-After"] = str(retry)
    return response


def _cap(max_body: int):
    @web.middleware
    async def cap(request: web.Request, handler) -> web.StreamResponse:
        if (request.content_length or 0) > max_body:  # refused before a byte is read
            raise Refused("body_too_large", f"the body is larger than {max_body} bytes")
        return await handler(request)

    return cap


async def _page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(PAGE / "index.html")


async def _headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(PAGE_HEADERS)
    if request.path.startswith("/api/"):
        response.headers["Cache-Control"] = "no-store"
