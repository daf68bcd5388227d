"""The admin API's server: an aiohttp site on loopback by default, with the outbox's publisher
running beside it (what was left at start, changes Redis missed while it was away), and the
copying of the dialers' number-health events into the audit log."""

from __future__ import annotations

import asyncio

import structlog
from aiohttp import web

from ..access.users import Users
from ..config import is_loopback
from ..numbers.publisher import UNAVAILABLE
from ..numbers.service import NumbersService
from ..tasks import LoopErrors, cancel_and_wait, run_every
from .app import make_app
from .auth import Access

log = structlog.get_logger(__name__)

HEALTH_AUDIT_INTERVAL = 10.0  # seconds between copies of number-health events to the audit log


class AdminServer:
    """`async with AdminServer(service, token=...) as server:` serves at `server.url`.

    `users` signs people in (by default: on the service's store, with default limits);
    `https`: the page is reached over HTTPS (a TLS proxy in front), so the session cookie is
    Secure; `address_header`: the header in which that proxy names the client (for the limit
    on failed sign-ins), else the socket's peer is the client."""

    def __init__(
        self,
        service: NumbersService,
        *,
        token: str,
        users: Users | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        max_body: int = 64 * 1024,
        allow_remote: bool = False,
        https: bool = False,
        address_header: str = "",
        region: str = "RU",
    ) -> None:
        if not allow_remote and not is_loopback(host):
            raise ValueError(f"admin API: {host!r} is not a loopback address (allow_remote)")
        self.service = service
        self.users = users or Users(service.store)
        self.host = host
        self.port = port
        access = Access(self.users, token, https=https, address_header=address_header)
        self._runner = web.AppRunner(make_app(service, self.users, access, max_body, region),
                                     access_log=None)
        self._publisher: asyncio.Task[None] | None = None
        self._health_audit: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def __aenter__(self) -> AdminServer:
        await self._runner.setup()
        try:
            site = web.TCPSite(self._runner, self.host, self.port)
            await site.start()
        except BaseException:
            await self._runner.cleanup()
            raise
        self.port = self._runner.addresses[0][1]
        if publisher := self.service.publisher:
            self._publisher = asyncio.create_task(publisher.run(), name="admin-publish")
            self._health_audit = asyncio.create_task(
                run_every(HEALTH_AUDIT_INTERVAL, self.service.audit_health_events,
                          LoopErrors("health-audit", expected=UNAVAILABLE)),
                name="admin-health-audit",
            )
        log.info("admin API listening", url=self.url)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await cancel_and_wait(self._publisher, self._health_audit)
        await self._runner.cleanup()
