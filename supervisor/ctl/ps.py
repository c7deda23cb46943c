"""Show every configured model: state, worker pid, memory, uptime, in-flight requests, how it computes."""

from protocol.ctl import Status
from supervisor.ctl.format import duration, gigabytes, table


def add_arguments(parser) -> None:
    pass


def run(client, args, out) -> int:
    report = client.call(lambda call_id: Status(call_id=call_id))
    rows = [
        [
            m.id,
            m.state + ("" if m.alive in (None, True) else " (no pong)"),
            str(m.pid or "-"),
            gigabytes(m.memory_bytes),
            duration(m.uptime_seconds),
            str(m.in_flight) if m.pid else "-",
            m.compute or "-",
        ]
        for m in report.models
    ]
    print(table(["MODEL", "STATE", "PID", "MEMORY", "UPTIME", "IN-FLIGHT", "COMPUTE"], rows), file=out)
    return 0
