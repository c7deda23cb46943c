"""Show every configured model: state, worker pid, memory (charged to the budget and resident), uptime, idle time,
in-flight requests, how it computes and its aliases, under a line with the budget, what is used and what is free."""

from protocol.ctl import Status
from supervisor.ctl.format import json_flag, print_json, ps_view, show


def add_arguments(parser) -> None:
    json_flag(parser)


def run(client, args, out) -> int:
    report = client.call(lambda call_id: Status(call_id=call_id))  # answered by status.py
    if args.json:
        return print_json(report, out)
    show(out, *ps_view(report))
    return 0
