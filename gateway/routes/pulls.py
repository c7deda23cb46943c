"""Pulls from the Hugging Face hub into the supervisor's model store (admin), as `supervisor ctl pull` does them:

POST   /api/v1/models/pull             {"repo": "org/name[@revision]", "revision", "name", "quantize", "q_bits",
                                        "q_group_size", "dtype", "force", "stream" (default true)}: server-sent
                                        events `progress` while it runs, then `done`, `failed` or `cancelled`
                                        (each the pull's progress: state, files with bytes done, commit, ...);
                                        with "stream": false, the final progress (502 `pull_failed` if it failed)
GET    /api/v1/models/pulls            every pull since the supervisor started
DELETE /api/v1/models/pulls/{pull_id}  cancel one; pulling again resumes it

The supervisor runs the pull; a client that disconnects stops watching it, not the pull.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.auth import require_admin
from gateway.errors import APIError
from gateway.request_body import decode_request
from gateway.sse import EventStreamResponse, sse_event
from protocol import ErrorCode
from protocol.store import CancelPull, ConvertOptions, Pull, PullProgress, PullState, PullStatus

POLL_SECONDS = 0.5
HEARTBEAT_SECONDS = 5.0  # a progress event at least this often, changed or not (a conversion shows no bytes)


class PullRequest(msgspec.Struct, kw_only=True):
    repo: Annotated[str, Meta(min_length=3, max_length=200)]
    revision: str | None = None
    name: str | None = None
    quantize: bool = False
    q_bits: int = 4
    q_group_size: int = 64
    dtype: str | None = None
    force: bool = False
    stream: bool = True
    host: str | None = None  # a fleet's host whose store it goes into; None: this machine's (the first host)


def as_dict(progress: PullProgress) -> dict:
    return msgspec.to_builtins(progress) | {"bytes_done": progress.bytes_done, "bytes_total": progress.bytes_total}


async def pull_model(request: Request) -> Response:
    require_admin(request, "pull models")
    body = decode_request(await request.body(), PullRequest)
    repo, _, revision = body.repo.partition("@")
    options = ConvertOptions(quantize=body.quantize, q_bits=body.q_bits, q_group_size=body.q_group_size,
                             dtype=body.dtype)  # fmt: skip
    supervisor = request.app.state.hosts.home(body.host).client
    timeout = request.app.state.settings.connect_timeout
    revision = body.revision or revision or None
    call = lambda call_id: Pull(  # noqa: E731
        call_id=call_id, repo=repo, revision=revision, name=body.name, convert=options, force=body.force
    )
    started = await supervisor.call(call, timeout)
    progress = started.pulls[0]

    async def poll(pull_id: str) -> PullProgress:
        await asyncio.sleep(POLL_SECONDS)
        reply = await supervisor.call(lambda call_id: PullStatus(call_id=call_id, pull_id=pull_id), timeout)
        return reply.pulls[0]

    if not body.stream:
        while not progress.finished:
            progress = await poll(progress.pull_id)
        if progress.state != PullState.DONE:
            raise APIError(ErrorCode.PULL_FAILED, f"pull of {progress.repo} {progress.state}: {progress.message}")
        return JSONResponse(as_dict(progress))

    async def events(progress: PullProgress) -> AsyncIterator[bytes]:
        sent, last = None, 0.0
        loop = asyncio.get_running_loop()
        while True:
            if progress.finished:
                yield sse_event(progress.state, as_dict(progress))
                return
            if progress != sent or loop.time() - last >= HEARTBEAT_SECONDS:
                yield sse_event("progress", as_dict(progress))
                sent, last = progress, loop.time()
            progress = await poll(progress.pull_id)

    return EventStreamResponse(events(progress), on_close=lambda: None)


async def list_pulls(request: Request) -> JSONResponse:
    require_admin(request, "pull models")
    state = request.app.state
    supervisor = state.hosts.home(request.query_params.get("host")).client
    reply = await supervisor.call(lambda call_id: PullStatus(call_id=call_id), state.settings.connect_timeout)
    return JSONResponse({"pulls": [as_dict(p) for p in reply.pulls]})


async def cancel_pull(request: Request) -> JSONResponse:
    require_admin(request, "pull models")
    state, pull_id = request.app.state, request.path_params["pull_id"]
    reply = await state.hosts.home(request.query_params.get("host")).client.call(
        lambda call_id: CancelPull(call_id=call_id, pull_id=pull_id), state.settings.connect_timeout
    )
    return JSONResponse(as_dict(reply.pulls[0]))
