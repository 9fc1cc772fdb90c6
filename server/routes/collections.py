"""Knowledge bases: ``/v1/collections`` (list, create, delete), their documents (upload, list, delete) and jobs.

Reading needs a key with the ``read`` role on the collection, changing it the ``write`` role
(:mod:`server.access`). Uploads are ``multipart/form-data`` with the files in fields named
``files``; each upload or deletion is a background job (:mod:`server.jobs`) followed with
``GET /v1/jobs/{id}``. What a collection is and how a job publishes: :mod:`server.knowledge`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, StrictStr
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from server.errors import ApiError
from server.knowledge import Collection
from server.pipelines import read_current
from server.service import App, Service, authorize

router = APIRouter(tags=["collections"], dependencies=[Depends(authorize)])


class CreateCollection(BaseModel):
    """``POST /v1/collections``: a new, empty collection with a served config as its template."""

    model_config = ConfigDict(extra="forbid")

    name: StrictStr
    config: StrictStr | None = None


def describe(app: Service, col: Collection) -> dict[str, Any]:
    documents, chunks = app.knowledge.counts(col)
    return {
        "name": col.name,
        "config": col.config,
        "default": col.name == app.knowledge.default,
        "managed": col.managed,
        "documents": documents,
        "chunks": chunks,
        "index_version": read_current(col.index_path),
        "created_at": col.created_at,
    }


@router.get("/v1/collections")
def list_collections(app: App, request: Request) -> dict[str, Any]:
    """The collections this key may read (served configs' indexes first, the default first of all)."""
    grant = request.state.grant
    cols = [c for c in app.knowledge.collections() if grant.allows(c.name, "read")]
    return {"default": app.knowledge.default, "collections": [describe(app, c) for c in cols]}


@router.post("/v1/collections", status_code=201)
def create_collection(body: CreateCollection, app: App, request: Request) -> dict[str, Any]:
    """Create an empty collection (``config``: the served config it is built and queried with)."""
    app.require(request, body.name, "write")
    return describe(app, app.knowledge.create(body.name, body.config))


@router.get("/v1/collections/{name}")
def get_collection(name: str, app: App, request: Request) -> dict[str, Any]:
    app.require(request, name, "read")
    col = app.knowledge.get(name)
    return {**describe(app, col), "jobs": [j.to_dict() for j in app.knowledge.jobs(name)[-20:]]}


@router.delete("/v1/collections/{name}")
def delete_collection(name: str, app: App, request: Request) -> dict[str, Any]:
    """Delete a created collection: its index, documents and jobs (only what the server wrote)."""
    app.require(request, name, "write")
    out = app.knowledge.delete(name)
    app.pipelines.detach(name)
    return out


@router.get("/v1/collections/{name}/documents")
def list_documents(name: str, app: App, request: Request) -> dict[str, Any]:
    """The collection's documents: id, source, format, pages, chunks, indexed_at, state."""
    app.require(request, name, "read")
    return {"collection": name, "documents": app.knowledge.documents(name)}


@router.post("/v1/collections/{name}/documents", status_code=202)
async def upload_documents(name: str, app: App, request: Request, response: Response) -> dict[str, Any]:
    """Add documents (multipart ``files``, several at once): staged, then ingested by a job.

    202 with the job (follow ``GET /v1/jobs/{id}``); 200 with ``job: null`` when every file is a duplicate.
    """
    app.require(request, name, "write")
    app.knowledge.managed(name)  # 404 / 409 before the body is read
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise ApiError(415, "unsupported_media_type", "send the files as multipart/form-data, in fields named 'files'")
    limit = app.settings.max_upload_files
    try:
        form = await request.form(max_files=limit, max_fields=limit + 10)
    except ClientDisconnect:
        raise ApiError(400, "invalid_multipart", "the client went away before the upload was complete") from None
    except HTTPException as exc:
        if exc.status_code == 413:
            raise
        detail = str(exc.detail)
        if "Too many files" in detail:
            raise ApiError(413, "too_many_files", f"more than {limit} files in one request (server.max_upload_files)"
                           ) from None
        raise ApiError(400, "invalid_multipart", f"the multipart body cannot be read: {detail}") from None
    try:
        uploads = [(f.filename, f.file) for key, f in form.multi_items()
                   if key == "files" and isinstance(f, UploadFile)]
        strays = [key for key, value in form.multi_items() if key != "files" or not isinstance(value, UploadFile)]
        if strays and not uploads:
            raise ApiError(422, "invalid_request", f"no files: send them in fields named 'files' (got {strays[:5]})")
        job, files = await run_in_threadpool(app.knowledge.stage_upload, name, uploads)
    finally:
        await form.close()
    if job is None:
        response.status_code = 200
    return {"collection": name, "job": job.to_dict() if job is not None else None, "files": files}


@router.delete("/v1/collections/{name}/documents/{doc_id:path}", status_code=202)
def delete_document(name: str, doc_id: str, app: App, request: Request) -> dict[str, Any]:
    """Remove one document; its chunks leave the index in the version the job publishes."""
    app.require(request, name, "write")
    return {"collection": name, "job": app.knowledge.delete_document(name, doc_id).to_dict()}


@router.get("/v1/jobs/{job_id}")
def get_job(job_id: str, app: App, request: Request) -> dict[str, Any]:
    """An ingestion job: state (queued, running, done, failed), stage, progress, each file's outcome."""
    job = app.knowledge.job(job_id)
    app.require(request, job.collection, "read")
    return job.to_dict()
