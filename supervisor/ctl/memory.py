"""Show the memory budget: budget, used, reserved for loads starting, free; then each model's share: what the
budget charges it (its estimate while loading, then the larger of estimate and resident), what it holds."""

from protocol.ctl import ListModels
from supervisor.ctl.format import json_flag, memory_view, print_json, show


def add_arguments(parser) -> None:
    json_flag(parser)


def run(client, args, out) -> int:
    reply = client.call(lambda call_id: ListModels(call_id=call_id))  # answered by list_models.py
    if args.json:
        return print_json(reply, out)
    show(out, *memory_view(reply))
    return 0
