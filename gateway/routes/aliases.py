"""Aliases added at run time (admin): the supervisor resolves names, so it keeps them (in the model store, across
restarts); these routes are its ctl calls over HTTP.

GET    /api/v1/aliases            every alias: {"aliases": [{"alias", "model", "runtime"}]} (the config's too)
POST   /api/v1/aliases            {"alias", "model"}: name a configured model one more way (201); re-points one
DELETE /api/v1/aliases/{alias}    remove an alias added at run time
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.auth import require_admin
from gateway.request_body import decode_request
from gateway.supervisor_client import HostDown
from protocol.ctl import AddAlias, ListAliases, RemoveAlias


class NewAlias(msgspec.Struct, kw_only=True):
    alias: Annotated[str, Meta(min_length=1, max_length=128)]
    model: Annotated[str, Meta(min_length=1)]


def _table(reply) -> dict:
    return {"aliases": msgspec.to_builtins(reply.aliases)}


async def every_host(state, make_call):
    """A change of names goes to every host (a fleet's hosts resolve names alike): refused while one is down,
    so no host is left with other names; this machine's reply, or the first failure."""
    down = [link.name for link in state.hosts.links if not link.up]
    if state.hosts.fleet and down:
        raise HostDown(f"host {', '.join(down)} is down: aliases change on every host at once, try again when it is up")
    answers = await state.hosts.ask_all(make_call, state.settings.connect_timeout)
    for _, reply in answers:
        if isinstance(reply, Exception):
            raise reply
    return answers[0][1]


async def list_aliases(request: Request) -> JSONResponse:
    require_admin(request, "manage aliases")
    state = request.app.state
    home = state.hosts.home().client
    reply = await home.call(lambda call_id: ListAliases(call_id=call_id), state.settings.connect_timeout)
    return JSONResponse(_table(reply))


async def add_alias(request: Request) -> JSONResponse:
    require_admin(request, "manage aliases")
    state, new = request.app.state, decode_request(await request.body(), NewAlias)
    reply = await every_host(state, lambda call_id: AddAlias(call_id=call_id, alias=new.alias, model=new.model))
    added = next(e for e in reply.aliases if e.alias == new.alias and e.runtime)
    return JSONResponse(msgspec.to_builtins(added), status_code=201)


async def remove_alias(request: Request) -> JSONResponse:
    require_admin(request, "manage aliases")
    state, alias = request.app.state, request.path_params["alias"]
    remove = lambda call_id: RemoveAlias(call_id=call_id, alias=alias)  # noqa: E731
    await every_host(state, remove)
    return JSONResponse({"alias": alias, "deleted": True})
