"""``GET /``: the web page (``server/static``)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from server.errors import ApiError

STATIC = Path(__file__).resolve().parent.parent / "static"

router = APIRouter()


@router.get("/", include_in_schema=False)
def page():
    index = STATIC / "index.html"
    if not index.is_file():
        raise ApiError(404, "not_found", "no web page installed (server/static/index.html)")
    return FileResponse(index)
