"""Show the memory budget: budget, used, reserved for loads starting, free; then each model's share: what the
budget charges it (its estimate while loading, then the larger of estimate and resident), what it holds."""

from protocol.ctl import ListModels
from supervisor.ctl.format import budget_line, gigabytes, table


def add_arguments(parser) -> None:
    pass


def run(client, args, out) -> int:
    reply = client.call(lambda call_id: ListModels(call_id=call_id))  # answered by list_models.py
    print(budget_line(reply.memory), file=out)
    rows = [
        [
            m.id,
            m.state,
            gigabytes(m.charged_bytes),
            gigabytes(m.memory_bytes),
            gigabytes(m.memory_estimate_bytes),
            "yes" if m.pinned else "no",
            str(m.priority),
        ]
        for m in reply.models
    ]
    print(table(["MODEL", "STATE", "CHARGED", "RESIDENT", "ESTIMATE", "PINNED", "PRIORITY"], rows), file=out)
    return 0
