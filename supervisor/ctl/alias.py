"""Give a configured model one more name (a wildcard pattern such as 'gpt-4*' too), from now on and after restarts:
kept in the model store. Adding an alias that exists re-points it. Requests resolve a name in the seeds' order:
id or alias, wildcard, Claude tier, then the fallback model."""

from __future__ import annotations

from typing import TYPE_CHECKING

from protocol import ErrorCode
from protocol.ctl import AddAlias, AliasTable
from supervisor.fleet import FleetError

if TYPE_CHECKING:
    from supervisor.daemon import Supervisor

REQUEST = AddAlias


def add_arguments(parser) -> None:
    parser.add_argument("alias", help="the new name (quote a pattern: 'gpt-4*')")
    parser.add_argument("model", help="id or alias of a configured model")


def run(client, args, out) -> int:
    client.call(lambda call_id: AddAlias(call_id=call_id, alias=args.alias, model=args.model))
    print(f"{args.alias} -> {args.model}", file=out)
    return 0


async def execute(supervisor: Supervisor, call: AddAlias) -> AliasTable:
    config = supervisor.fleet.config
    target = config.resolve(call.model)
    if target is None:
        raise FleetError(ErrorCode.MODEL_NOT_FOUND, f"no configured model is named '{call.model}'")
    config.names.add(call.alias, target.id)
    return AliasTable(call_id=call.call_id, aliases=config.names.entries())
