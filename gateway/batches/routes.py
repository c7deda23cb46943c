"""The Files and Batch APIs' routes (under /v1 and /api/v1), in OpenAI's shapes; errors are OpenAI's.

POST /files (multipart: file, purpose "batch"), GET /files, GET /files/{id}, GET /files/{id}/content,
DELETE /files/{id}; POST /batches, GET /batches, GET /batches/{id}, POST /batches/{id}/cancel.
Every file and batch belongs to the service that made it; another service's id is a 404.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Annotated, Literal

import msgspec
from msgspec import Meta
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.batches.files import FileStore
from gateway.batches.files import not_found as file_not_found
from gateway.batches.lines import ENDPOINTS, MAX_LINES, parse
from gateway.batches.state import ACTIVE, BatchStore
from gateway.dialects.dialect import BASE_PATHS, Dialect
from gateway.errors import APIError
from gateway.pagination import page
from gateway.redis_store import using
from gateway.request_body import decode_request
from protocol import ErrorCode

COMPLETION_WINDOW = 24 * 3600


class BatchRequest(msgspec.Struct, kw_only=True):
    input_file_id: str
    endpoint: Literal[tuple(ENDPOINTS)]  # type: ignore[valid-type]
    completion_window: Literal["24h"] = "24h"
    metadata: Annotated[dict[str, str], Meta(max_length=16)] | None = None


def _invalid(message: str, param: str | None = None) -> APIError:
    return APIError(ErrorCode.INVALID_REQUEST, message, param=param)


def _service(request: Request) -> str:
    return request.state.service.name


def _files(request: Request) -> FileStore:
    return request.app.state.files


def _batches(request: Request) -> BatchStore:
    return request.app.state.batch_store


async def upload(request: Request) -> Response:
    async with request.form(max_files=1, max_fields=4) as form:
        upload, purpose = form.get("file"), form.get("purpose")
        if not isinstance(upload, UploadFile):
            raise _invalid("Send the file as multipart/form-data field 'file'", "file")
        if purpose != "batch":
            raise _invalid("Only files of purpose 'batch' can be uploaded here", "purpose")
        data = await upload.read()
        filename = upload.filename or "upload.jsonl"
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise _invalid("A batch file is JSON Lines text (UTF-8)", "file") from None
    count = sum(1 for line in text.splitlines() if line.strip())
    if not 0 < count <= MAX_LINES:
        raise _invalid(f"A batch file holds 1 to {MAX_LINES} lines; this one holds {count}", "file")
    obj = await asyncio.to_thread(_files(request).add, _service(request), data, filename, purpose)
    return JSONResponse(obj)


async def list_files(request: Request) -> Response:
    files = _files(request).list(_service(request), request.query_params.get("purpose"))
    return JSONResponse({"object": "list", "data": files, "has_more": False})


async def get_file(request: Request) -> Response:
    file_id = request.path_params["file_id"]
    obj = _files(request).get(_service(request), file_id)
    if obj is None:
        raise file_not_found(file_id)
    return JSONResponse(obj)


async def file_content(request: Request) -> Response:
    data = await asyncio.to_thread(_files(request).content, _service(request), request.path_params["file_id"])
    return Response(data, media_type="application/octet-stream")


async def delete_file(request: Request) -> Response:
    file_id = request.path_params["file_id"]
    if not _files(request).delete(_service(request), file_id):
        raise file_not_found(file_id)
    return JSONResponse({"id": file_id, "object": "file", "deleted": True})


async def create_batch(request: Request) -> Response:
    req = decode_request(await request.body(), BatchRequest)
    service = _service(request)
    source = _files(request).get(service, req.input_file_id)
    if source is None:
        raise file_not_found(req.input_file_id)
    if source["purpose"] != "batch":
        raise _invalid(f"The file {req.input_file_id} is not a batch input file", "input_file_id")
    data = await asyncio.to_thread(_files(request).content, service, req.input_file_id)
    now = int(time.time())
    batch = {
        "id": f"batch_{uuid.uuid4().hex}",
        "object": "batch",
        "endpoint": req.endpoint,
        "errors": None,
        "input_file_id": req.input_file_id,
        "completion_window": req.completion_window,
        "status": "validating",
        "output_file_id": None,
        "error_file_id": None,
        "created_at": now,
        "in_progress_at": None,
        "expires_at": now + COMPLETION_WINDOW,
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "request_counts": {"total": len(parse(data, req.endpoint)), "completed": 0, "failed": 0},
        "metadata": req.metadata,
    }
    await using(_batches(request).save(service, batch), "batch")
    request.app.state.batches.wake()
    return JSONResponse(batch)


async def _batch(request: Request) -> dict:
    """The caller's batch, as it stands (`cancelling` from the moment a cancel was asked for)."""
    store, batch_id = _batches(request), request.path_params["batch_id"]
    batch = await using(store.get(_service(request), batch_id), "batch")
    if batch is None:
        raise APIError(ErrorCode.NOT_FOUND, f"No such batch: {batch_id}", param="batch_id")
    if batch["status"] in ACTIVE and (asked := await using(store.cancelled(batch_id), "batch")) is not None:
        batch |= {"status": "cancelling", "cancelling_at": asked}
    return batch


async def get_batch(request: Request) -> Response:
    return JSONResponse(await _batch(request))


async def cancel_batch(request: Request) -> Response:
    batch = await _batch(request)
    if batch["status"] not in ACTIVE:
        raise _invalid(f"The batch is {batch['status']}: only an unfinished batch can be cancelled", "batch_id")
    await using(_batches(request).cancel(batch["id"]), "batch")
    return JSONResponse(await _batch(request))


async def list_batches(request: Request) -> Response:
    """The caller's batches, newest first: `limit` (1 to 100, default 20) after the batch `after`."""
    batches = await using(_batches(request).list(_service(request)), "batch")
    return JSONResponse(page(batches, request.query_params))


def _routes() -> list[Route]:
    table = [
        ("/files", upload, "POST"),
        ("/files", list_files, "GET"),
        ("/files/{file_id:str}", get_file, "GET"),
        ("/files/{file_id:str}", delete_file, "DELETE"),
        ("/files/{file_id:str}/content", file_content, "GET"),
        ("/batches", create_batch, "POST"),
        ("/batches", list_batches, "GET"),
        ("/batches/{batch_id:str}", get_batch, "GET"),
        ("/batches/{batch_id:str}/cancel", cancel_batch, "POST"),
    ]
    return [Route(f"{base}{path}", handler, methods=[method]) for base in BASE_PATHS for path, handler, method in table]


DIALECT = Dialect(name="openai-batch", routes=_routes())
