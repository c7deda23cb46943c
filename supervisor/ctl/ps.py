"""Show every configured model: state, worker pid, memory (charged to the budget and resident), uptime, idle
time, in-flight requests and how it computes, under a line with the budget, what is used and what is free."""

from protocol.ctl import Status
from supervisor.ctl.format import budget_line, duration, gigabytes, table


def add_arguments(parser) -> None:
    pass


def run(client, args, out) -> int:
    report = client.call(lambda call_id: Status(call_id=call_id))  # answered by status.py
    if report.memory is not None:
        print(budget_line(report.memory), file=out)
    rows = [
        [
            m.id + (" (pinned)" if m.pinned else ""),
            m.state + ("" if m.alive in (None, True) else " (no pong)"),
            str(m.pid or "-"),
            gigabytes(m.charged_bytes),
            gigabytes(m.memory_bytes),
            duration(m.uptime_seconds),
            duration(m.idle_seconds),
            str(m.in_flight) if m.pid else "-",
            m.compute or "-",
        ]
        for m in report.models
    ]
    headers = ["MODEL", "STATE", "PID", "CHARGED", "RESIDENT", "UPTIME", "IDLE", "IN-FLIGHT", "COMPUTE"]
    print(table(headers, rows), file=out)
    return 0
