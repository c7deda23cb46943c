"""Is the supervisor up, and does every loaded worker answer a ping through its generation loop?"""

from protocol.ctl import Status
from supervisor.ctl.format import budget_line, duration


def add_arguments(parser) -> None:
    pass


def run(client, args, out) -> int:
    report = client.call(lambda call_id: Status(call_id=call_id))
    loaded = [m for m in report.models if m.pid]
    print(
        f"supervisor pid {report.pid}, up {duration(report.uptime_seconds)}, protocol v{report.protocol_version}",
        file=out,
    )
    if report.memory is not None:
        print(budget_line(report.memory), file=out)
    print(f"models: {len(loaded)} loaded of {len(report.models)} configured", file=out)
    unhealthy = [m for m in loaded if m.alive is False]
    for m in loaded:
        ping = f"pong in {m.ping_ms:.1f} ms" if m.alive else "NO PONG"
        print(f"  {m.id}: {m.state}, pid {m.pid}, {ping}", file=out)
    for m in report.models:
        if m.state == "failed":
            print(f"  {m.id}: failed: {m.last_error}", file=out)
    return 1 if unhealthy else 0
