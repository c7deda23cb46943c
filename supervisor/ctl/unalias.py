"""Remove an alias added at run time (`ctl alias`); the config file's aliases stay until the file changes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from protocol.ctl import AliasTable, RemoveAlias

if TYPE_CHECKING:
    from supervisor.daemon import Supervisor

REQUEST = RemoveAlias


def add_arguments(parser) -> None:
    parser.add_argument("alias", help="an alias added with `ctl alias`")


def run(client, args, out) -> int:
    client.call(lambda call_id: RemoveAlias(call_id=call_id, alias=args.alias))
    print(f"{args.alias} removed", file=out)
    return 0


async def execute(supervisor: Supervisor, call: RemoveAlias) -> AliasTable:
    names = supervisor.fleet.config.names
    names.remove(call.alias)
    return AliasTable(call_id=call.call_id, aliases=names.entries())
