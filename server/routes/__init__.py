"""The HTTP routes, one module per group; each route is a few lines calling :class:`server.service.Service`.

Adding a route is one module with an ``APIRouter`` named ``router``, listed in :data:`ROUTERS`.
"""

from __future__ import annotations

from server.routes import ask, chat, collections, health, models, page, rerank

ROUTERS = (health.router, models.router, ask.router, chat.router, rerank.router, collections.router, page.router)

__all__ = ["ROUTERS"]
