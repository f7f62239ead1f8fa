"""The Message Batches API routes, with Anthropic's paths, shapes and status codes.

Batch objects are encoded straight to JSON bytes (the routes are polled hundreds of times a
second); the response models below are for the OpenAPI document. ``results_url`` is the
absolute URL of the batch's results once it ended, built from ``public_url`` when the
server sits behind a proxy, else from the request's Host when the host policy trusts it
(:mod:`batchrun.server.hosts`), else from the address the connection came in on: never
from a Host a client made up.
"""

from __future__ import annotations

import re
import tempfile
from typing import IO, Annotated, Any, Literal

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.requests import ClientDisconnect

from batchrun.export.batch_object import BatchObject
from batchrun.records import BatchSummary
from batchrun.server.bodies import MAX_BATCH_REQUESTS, MAX_BODY_BYTES
from batchrun.server.errors import ApiError
from batchrun.server.hosts import HostPolicy, host_name, request_host
from batchrun.server.keys import ServerKeys, request_owner
from batchrun.server.service import BatchService

# A batch id as batchrun and Anthropic make them; anything else is unknown without a look.
BATCH_ID = re.compile(r"msgbatch_[A-Za-z0-9]{1,100}")
# A body is kept in memory up to this size, then in a temporary file.
SPOOL_MEMORY_BYTES = 8 * 1024 * 1024
DEFAULT_LIMIT = 20
MAX_LIMIT = 1000
JSON = "application/json"
# At module level: FastAPI resolves the routes' annotations in this module's namespace.
BatchId = Annotated[str, Path(description="a message batch id (msgbatch_...)")]


class RequestModel(BaseModel):
    custom_id: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    params: dict[str, Any] = Field(description="a Messages API request body")


class BatchPage(BaseModel):
    data: list[BatchObject]
    has_more: bool
    first_id: str | None
    last_id: str | None


class DeletedBatch(BaseModel):
    id: str
    type: Literal["message_batch_deleted"] = "message_batch_deleted"


class ErrorObject(BaseModel):
    type: str
    message: str


class ErrorResponse(BaseModel):
    type: Literal["error"] = "error"
    error: ErrorObject
    request_id: str | None


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 404, 413)
}


class Api:
    """The routes, bound to one service and one set of keys."""

    def __init__(
        self,
        service: BatchService,
        keys: ServerKeys,
        *,
        public_url: str | None = None,
        hosts: HostPolicy | None = None,
    ) -> None:
        self.service = service
        self.keys = keys
        self.public_url = public_url.rstrip("/") if public_url else None
        self.hosts = hosts or HostPolicy.of(authenticated=keys.required, public_url=public_url)
        self.router = APIRouter(prefix="/v1/messages/batches", responses=_ERRORS)
        self._routes()

    def owner(self, request: Request) -> str | None:
        """The key id the request is made with (None without authentication); 401 if the
        server needs a key and this is not one of its keys."""
        return request_owner(self.keys, request.headers)

    def batch_object(self, request: Request, batch: BatchSummary) -> BatchObject:
        """The batch object, with the absolute ``results_url`` once it ended."""
        item = BatchObject.from_summary(batch)
        if batch.processing_status == "ended":
            item.results_url = f"{self.base_url(request)}/v1/messages/batches/{batch.id}/results"
        return item

    def base_url(self, request: Request) -> str:
        """Where clients reach this server: ``public_url``, else the request's Host if the
        policy trusts it, else the address the connection came in on."""
        if self.public_url:
            return self.public_url
        host = request_host(request.scope)
        if self.hosts.trusts(host_name(host) if host is not None else None):
            return str(request.base_url).rstrip("/")
        server = request.scope.get("server")
        root = str(request.scope.get("root_path", "")).rstrip("/")
        if not server:
            return root
        address, port = str(server[0]), server[1]
        shown = f"[{address}]" if ":" in address else address
        return f"{request.url.scheme}://{shown}{f':{port}' if port else ''}{root}"

    def batch_json(self, request: Request, batch: BatchSummary) -> Response:
        """:meth:`batch_object` as the response."""
        return Response(
            self.batch_object(request, batch).model_dump_json().encode(), media_type=JSON
        )

    def _routes(self) -> None:
        router = self.router

        # The body is read streaming, not by FastAPI; its schema is given for the document.
        create_body = {
            "requestBody": {
                "required": True,
                "content": {
                    JSON: {
                        "schema": {
                            "type": "object",
                            "required": ["requests"],
                            "properties": {
                                "requests": {
                                    "type": "array",
                                    "minItems": 1,
                                    "maxItems": MAX_BATCH_REQUESTS,
                                    "items": RequestModel.model_json_schema(),
                                }
                            },
                        }
                    }
                },
            }
        }

        @router.post(
            "",
            response_model=BatchObject,
            summary="Create a Message Batch",
            openapi_extra=create_body,
        )
        async def create(
            request: Request,
            batchrun_endpoint: Annotated[
                str | None,
                Header(description="the endpoint or pool that sends it (default the server's)"),
            ] = None,
        ) -> Response:
            owner = self.owner(request)
            body = await _spooled_body(request)
            try:
                batch = await self.service.create(owner, body, endpoint=batchrun_endpoint)
            finally:
                body.close()
            return self.batch_json(request, batch)

        @router.get("", response_model=BatchPage, summary="List Message Batches")
        async def list_batches(
            request: Request,
            limit: Annotated[int, Query(description="batches per page, 1 to 1000")] = (
                DEFAULT_LIMIT
            ),
            before_id: Annotated[str | None, Query(description="the page just newer")] = None,
            after_id: Annotated[str | None, Query(description="the page just older")] = None,
        ) -> Response:
            owner = self.owner(request)
            if not 1 <= limit <= MAX_LIMIT:
                raise ApiError(400, f"limit: must be from 1 to {MAX_LIMIT}, not {limit}")
            for name, value in (("before_id", before_id), ("after_id", after_id)):
                if value is not None and not BATCH_ID.fullmatch(value):
                    raise ApiError(400, f"{name}: {value[:80]!r} is not a message batch id")
            batches, more = await self.service.page(
                owner, limit=limit, before_id=before_id, after_id=after_id
            )
            data = [self.batch_object(request, batch) for batch in batches]
            page = BatchPage(
                data=data,
                has_more=more,
                first_id=data[0].id if data else None,
                last_id=data[-1].id if data else None,
            )
            return Response(page.model_dump_json().encode(), media_type=JSON)

        @router.get("/{message_batch_id}", response_model=BatchObject, summary="Retrieve")
        async def retrieve(request: Request, message_batch_id: BatchId) -> Response:
            owner = self.owner(request)
            batch = await self.service.get(owner, _checked(message_batch_id))
            return self.batch_json(request, batch)

        @router.post("/{message_batch_id}/cancel", response_model=BatchObject, summary="Cancel")
        async def cancel(request: Request, message_batch_id: BatchId) -> Response:
            owner = self.owner(request)
            batch = await self.service.cancel(owner, _checked(message_batch_id))
            return self.batch_json(request, batch)

        @router.delete("/{message_batch_id}", response_model=DeletedBatch, summary="Delete")
        async def delete(request: Request, message_batch_id: BatchId) -> Response:
            owner = self.owner(request)
            batch_id = _checked(message_batch_id)
            await self.service.delete(owner, batch_id)
            return Response(DeletedBatch(id=batch_id).model_dump_json().encode(), media_type=JSON)

        @router.get(
            "/{message_batch_id}/results",
            summary="Retrieve Message Batch results (JSONL)",
            response_class=StreamingResponse,
            responses={200: {"content": {"application/x-jsonl": {}}}},
        )
        async def results(
            request: Request,
            message_batch_id: BatchId,
            partial: Annotated[
                bool, Query(description="batchrun's extension: the finished requests so far")
            ] = False,
        ) -> StreamingResponse:
            owner = self.owner(request)
            chunks = await self.service.results(owner, _checked(message_batch_id), partial=partial)
            return StreamingResponse(chunks, media_type="application/x-jsonl")


def _checked(batch_id: str) -> str:
    """``batch_id`` if it has a batch id's shape; 404 at once otherwise."""
    if not BATCH_ID.fullmatch(batch_id):
        raise ApiError(404, f"no message batch {batch_id[:80]!r}")
    return batch_id


async def _spooled_body(request: Request) -> IO[bytes]:
    """The request body in a spooled temporary file, positioned at its start: 413 as soon as
    it is known to pass MAX_BODY_BYTES, 400 for a body that is not JSON by its type."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != JSON:
        shown = kind[:80] or "none"
        raise ApiError(
            400, f"content-type must be application/json (the body is JSON), not {shown}"
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _too_large()
    body = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)  # noqa: SIM115
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise _too_large()
            body.write(chunk)
    except ClientDisconnect:
        body.close()
        raise ApiError(400, "the body was cut short (the client went away)") from None
    except BaseException:
        body.close()
        raise
    if size == 0:
        body.close()
        raise ApiError(400, 'the body is empty; send {"requests": [...]}')
    body.seek(0)
    return body


def _too_large() -> ApiError:
    return ApiError(
        413,
        f"the body is larger than {MAX_BODY_BYTES:,} bytes, the most one batch may be; split "
        "the requests into several batches",
    )
