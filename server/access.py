"""Who may do what: the server's API keys, each with a role on some collections.

Two kinds of key, both read from the environment when the server starts (never from a file):

* the single key of ``server.api_key_env`` (``RAG_API_KEY``), as before: every route, every collection,
  reading and writing;
* ``server.api_keys``: per-collection keys, each ``{key_env, role, collections}``. ``read`` allows the
  query routes (ask, search, chat, documents and jobs listings); ``write`` also allows uploads,
  deletions and creating or deleting collections. ``collections: ["*"]`` means every collection.

With no key set at all, the server is open (bound to 127.0.0.1 by default). A request whose bearer
token is no key is a 401; a key used outside its collections or role is a 403.
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

from fastapi import Request

from pipeline.config import ServerParams
from server.errors import ApiError

logger = logging.getLogger(__name__)

ROLES = ("read", "write")


@dataclass(frozen=True)
class Grant:
    """What one request's key allows: a role on some collections (``None``: all of them)."""

    role: str
    collections: frozenset[str] | None = None
    label: str = "key"

    def allows(self, collection: str | None, role: str) -> bool:
        if ROLES.index(role) > ROLES.index(self.role):
            return False
        return self.collections is None or (collection is not None and collection in self.collections)


OPEN = Grant("write", None, "no key needed")


class Access:
    """The keys of one server (see the module docstring)."""

    def __init__(self, settings: ServerParams, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        self.master_env = settings.api_key_env
        self.master = environ.get(settings.api_key_env) or None
        self.keys: list[tuple[bytes, Grant]] = []
        for entry in settings.api_keys:
            value = environ.get(entry.key_env)
            if not value:
                logger.warning("server.api_keys: $%s is not set, so that key does not exist", entry.key_env)
                continue
            collections = None if "*" in entry.collections else frozenset(entry.collections)
            self.keys.append((value.encode(), Grant(entry.role, collections, f"${entry.key_env}")))
        if settings.api_keys and not self.keys and self.master is None:
            logger.warning("server.api_keys names keys but none is set: the server is open to every request")

    @property
    def open(self) -> bool:
        return self.master is None and not self.keys

    def grant(self, request: Request) -> Grant:
        """The request's grant; 401 when keys are set and its bearer token is none of them."""
        if self.open:
            return OPEN
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token_bytes = token.strip().encode()
        if scheme.lower() == "bearer" and token_bytes:
            if self.master is not None and hmac.compare_digest(token_bytes, self.master.encode()):
                return Grant("write", None, f"${self.master_env}")
            for value, grant in self.keys:
                if hmac.compare_digest(token_bytes, value):
                    return grant
        raise ApiError(401, "unauthorized", "missing or wrong API key: send 'Authorization: Bearer <key>'",
                       {"WWW-Authenticate": "Bearer"})

    @staticmethod
    def require(grant: Grant, collection: str | None, role: str) -> None:
        """403 unless ``grant`` allows ``role`` on ``collection``."""
        if not grant.allows(collection, role):
            where = f"collection {collection!r}" if collection is not None else "every collection"
            raise ApiError(403, "forbidden", f"this API key ({grant.label}, role {grant.role}) may not "
                           f"{'change' if role == 'write' else 'read'} {where}")
