"""List the pulls since the supervisor started (or one, by its id): state, progress, what they pull where."""

from __future__ import annotations

from typing import TYPE_CHECKING

from protocol.store import Pulls, PullStatus
from supervisor.ctl.format import duration, filesize, json_flag, print_json, show, styled, table

if TYPE_CHECKING:
    from supervisor.daemon import Supervisor

REQUEST = PullStatus


def add_arguments(parser) -> None:
    parser.add_argument("pull_id", nargs="?", help="one pull (default: all)")
    json_flag(parser)


def run(client, args, out) -> int:
    reply = client.call(lambda call_id: PullStatus(call_id=call_id, pull_id=args.pull_id))
    if args.json:
        return print_json(reply, out)
    rows = [
        [
            p.pull_id,
            f"{p.repo}@{p.revision}",
            p.name,
            styled(p.state),
            f"{filesize(p.bytes_done)} of {filesize(p.bytes_total)}" if p.files else "-",
            duration(p.seconds),
            p.message or "-",
        ]
        for p in reply.pulls
    ]
    show(out, table(["PULL", "REPO", "NAME", "STATE", "PROGRESS", "TIME", "MESSAGE"], rows))
    return 0


async def execute(supervisor: Supervisor, call: PullStatus) -> Pulls:
    return Pulls(call_id=call.call_id, pulls=supervisor.pulls.status(call.pull_id))
