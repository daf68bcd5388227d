"""Who calls the admin API, and what they may reach.

Two credentials: the operator's bearer token (staff: every account; for scripts and the API
without the CLI) and a signed-in user's session cookie (a customer: their own account; staff:
every account). What each operation allows is declared in the OpenAPI document (`x-access`):
`public` (no credentials), `user` (anyone signed in), `account` (a customer for their own
account, whose handler scopes every call to it; staff for any), `staff`.

A cookie is a credential the browser sends by itself, so a change made with one must prove it
comes from the page: the session's CSRF token in `X-CSRF-Token` (a page of another site cannot
read it), and an `Origin` (and `Sec-Fetch-Site`) of this site when the browser sends them. The
cookie is also SameSite=Strict, HttpOnly, and Secure when the page is served over HTTPS; the
token alone would do, SameSite and the Origin check stop the same attack again in browsers or
setups where one of them fails. Signing in checks the Origin too (a forged sign-in would put
the victim in the attacker's account).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from aiohttp import web

from ..access.users import Session, Users
from ..numbers.rules import Refused
from .openapi import DOCUMENT

COOKIE = "zvonok_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Caller:
    actor: str  # who, in the audit log: "api" (the token), "customer:<login>", "staff:<login>"
    account: str | None  # a customer's account; None: staff, every account
    session: Session | None = None  # None: the bearer token

    @property
    def staff(self) -> bool:
        return self.account is None


OPERATOR = Caller("api", None)
CALLER = web.RequestKey("caller", Caller)


def access_of(request: web.Request) -> str | None:
    """The operation's `x-access` in the document; None where no operation matched."""
    resource = request.match_info.route.resource
    path = resource.canonical if resource is not None else ""
    operation = DOCUMENT["paths"].get(path, {}).get(request.method.lower())
    return operation.get("x-access") if operation else None


def caller(request: web.Request) -> Caller:
    return request[CALLER]


class Access:
    def __init__(
        self,
        users: Users,
        token: str,
        *,
        https: bool = False,
        address_header: str = "",
    ) -> None:
        if not token:
            raise ValueError("the admin API needs a token")
        self.users = users
        self.token = token.encode()
        self.https = https
        self.address_header = address_header

    @web.middleware
    async def middleware(self, request: web.Request, handler) -> web.StreamResponse:
        if not request.path.startswith("/api/"):
            return await handler(request)
        access = access_of(request)
        if access == "public":
            return await handler(request)
        found = await self._caller(request)
        if found is None:
            raise Refused(
                "unauthorized", "sign in, or send the admin token: Authorization: Bearer …"
            )
        if found.session is not None and request.method not in SAFE_METHODS:
            self.check_origin(request)
            given = request.headers.get(CSRF_HEADER, "")
            if not hmac.compare_digest(given.encode(), found.session.csrf.encode()):
                raise Refused("bad_csrf", f"a change needs the session's {CSRF_HEADER} header")
        if access == "staff" and not found.staff:
            raise Refused("forbidden", "this is for the service's staff")
        request[CALLER] = found
        return await handler(request)

    async def _caller(self, request: web.Request) -> Caller | None:
        header = request.headers.get("Authorization")
        if header is not None:
            scheme, _, given = header.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                given.strip().encode(), self.token
            ):
                raise Refused("unauthorized", "wrong admin token")
            return OPERATOR
        cookie = request.cookies.get(COOKIE)
        session = await self.users.session(cookie) if cookie else None
        if session is None:
            return None
        return Caller(session.user.actor, session.user.account, session)

    def check_origin(self, request: web.Request) -> None:
        """Refuses a request a browser says comes from another site."""
        site = request.headers.get("Sec-Fetch-Site")
        origin = request.headers.get("Origin")
        scheme = "https" if self.https else request.scheme
        if (site is not None and site not in ("same-origin", "none")) or (
            origin is not None and origin != f"{scheme}://{request.host}"
        ):
            raise Refused("bad_origin", "this request comes from another site")

    def address(self, request: web.Request) -> str:
        """The client's address: the socket's peer, or what the proxy in front says."""
        if self.address_header:
            forwarded = request.headers.get(self.address_header, "").split(",")[-1].strip()
            if forwarded:
                return forwarded[:64]
        return request.remote or ""

    def start_session(self, response: web.StreamResponse, session: Session) -> None:
        response.set_cookie(
            COOKIE,
            session.token,
            path="/",
            httponly=True,
            samesite="Strict",
            secure=self.https,
            max_age=int(self.users.lifetime),
        )

    def end_session(self, response: web.StreamResponse) -> None:
        response.del_cookie(COOKIE, path="/", httponly=True, samesite="Strict", secure=self.https)
