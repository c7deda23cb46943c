"""List every alias: the config file's and those added at run time (`ctl alias`), with the model each names."""

from __future__ import annotations

from typing import TYPE_CHECKING

from protocol.ctl import AliasTable, ListAliases
from supervisor.ctl.format import json_flag, print_json, show, table

if TYPE_CHECKING:
    from supervisor.daemon import Supervisor

REQUEST = ListAliases


def add_arguments(parser) -> None:
    json_flag(parser)


def run(client, args, out) -> int:
    reply = client.call(lambda call_id: ListAliases(call_id=call_id))
    if args.json:
        return print_json(reply, out)
    rows = [[e.alias, e.model, "run time" if e.runtime else "config"] for e in reply.aliases]
    show(out, table(["ALIAS", "MODEL", "FROM"], rows))
    return 0


async def execute(supervisor: Supervisor, call: ListAliases) -> AliasTable:
    return AliasTable(call_id=call.call_id, aliases=supervisor.fleet.config.names.entries())
