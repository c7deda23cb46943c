"""Cancel a running pull (by the id `ctl pulls` shows). What it downloaded stays hidden in the store, so pulling
the same model again resumes it; `ctl rm NAME` removes it instead."""

from __future__ import annotations

from typing import TYPE_CHECKING

from protocol.store import CancelPull, Pulls

if TYPE_CHECKING:
    from supervisor.daemon import Supervisor

REQUEST = CancelPull


def add_arguments(parser) -> None:
    parser.add_argument("pull_id")


def run(client, args, out) -> int:
    reply = client.call(lambda call_id: CancelPull(call_id=call_id, pull_id=args.pull_id))
    print(f"{reply.pulls[0].pull_id} ({reply.pulls[0].name}): cancelling", file=out)
    return 0


async def execute(supervisor: Supervisor, call: CancelPull) -> Pulls:
    return Pulls(call_id=call.call_id, pulls=[supervisor.pulls.cancel(call.pull_id)])
