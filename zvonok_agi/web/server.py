"""The admin API's server: an aiohttp site on loopback by default, with the outbox's publisher
running beside it (what was left at start, changes Redis missed while it was away)."""

from __future__ import annotations

import asyncio

import structlog
from aiohttp import web

from ..config import is_loopback
from ..numbers.service import NumbersService
from ..tasks import cancel_and_wait
from .app import make_app

log = structlog.get_logger(__name__)


class AdminServer:
    """`async with AdminServer(service, token=...) as server:` serves at `server.url`."""

    def __init__(
        self,
        service: NumbersService,
        *,
        token: str,
        host: str = "127.0.0.1",
        port: int = 0,
        max_body: int = 64 * 1024,
        allow_remote: bool = False,
        region: str = "RU",
    ) -> None:
        if not allow_remote and not is_loopback(host):
            raise ValueError(f"admin API: {host!r} is not a loopback address (allow_remote)")
        self.service = service
        self.host = host
        self.port = port
        self._runner = web.AppRunner(make_app(service, token, max_body, region), access_log=None)
        self._publisher: asyncio.Task[None] | None = None

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
        log.info("admin API listening", url=self.url)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await cancel_and_wait(self._publisher)
        await self._runner.cleanup()
