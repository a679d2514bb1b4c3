"""Assembling the portal from the configuration, for ``phigate run`` (inside each gateway
worker) and ``phigate portal run`` (alone, e.g. on a DMZ host that shares only the store)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable

from aiohttp import web

from gateway.audit import AuditLog
from gateway.config import Config

from .mail import Composer, Submitter
from .model import PortalStore, StoreError
from .rewrite import PortalRewriter
from .store import open_store
from .web import Portal

PURGE_INTERVAL = 3600.0


class PortalService:
    """The store, the rewriter the delivery worker uses, and the web server."""

    def __init__(self, config: Config, audit: AuditLog,
                 clock: Callable[[], float] = time.time,
                 store: PortalStore | None = None) -> None:
        self.config = config
        self.audit = audit
        self.clock = clock
        self.store = store if store is not None else open_store(config.portal.store)
        self.composer = Composer(config.portal, config.organisation, config.hostname)
        self.rewriter = PortalRewriter(self.store, self.composer, config.portal.base_url,
                                       config.portal.expire, clock)
        submit = config.portal.submit
        self.web = Portal(config.portal, self.store, audit, self.composer,
                          Submitter(submit.host, submit.port, config.hostname), clock)
        self._runner: web.AppRunner | None = None
        self._purger: asyncio.Task[None] | None = None

    async def serve(self, sock: socket.socket) -> None:
        """Serve the web app on an already bound socket (shared by the gateway's workers)."""
        self._runner = web.AppRunner(self.web.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.SockSite(self._runner, sock, shutdown_timeout=5.0).start()

    def start_purger(self) -> None:
        self._purger = asyncio.create_task(self._purge_loop())

    def purge(self) -> int:
        count = self.store.purge(self.clock())
        self.audit.emit("portal.purged", {"count": count, "event.outcome": "success"})
        return count

    async def _purge_loop(self) -> None:
        while True:
            with contextlib.suppress(StoreError):
                await asyncio.to_thread(self.purge)
            await asyncio.sleep(PURGE_INTERVAL)

    async def stop(self) -> None:
        if self._purger is not None:
            self._purger.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
        self.store.close()
