"""How the ctl commands print, in one place: through rich, aligned tables and lines coloured by state on a terminal;
the same text without escape codes when the output is not a terminal (a pipe, a file, NO_COLOR set); JSON with
`--json`, for scripts. The views of `ps`, `memory` and `status` live here, so every command shows a model alike.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from typing import TextIO

import msgspec
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

GB = 1024**3

# A state's colour wherever it is shown: models' (protocol.ctl.ModelState) and pulls' (protocol.store.PullState).
STATE_STYLES = {
    "ready": "green",
    "done": "green",
    "starting": "yellow",
    "stopping": "yellow",
    "resolving": "yellow",
    "downloading": "cyan",
    "converting": "cyan",
    "failed": "bold red",
    "stopped": "dim",
    "cancelled": "dim",
}


def json_flag(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON (for scripts) instead of a table")


def print_json(reply, out: TextIO) -> int:
    """A reply as JSON: its fields, without the call's id and the wire tag."""
    data = {k: v for k, v in msgspec.to_builtins(reply).items() if k not in ("call_id", "type")}
    print(json.dumps(data, indent=2), file=out)
    return 0


def show(out: TextIO, *items: RenderableType | str) -> None:
    """Print lines and tables: styled on a terminal (a table wider than it is not cut short: the terminal wraps it);
    plain, with no trailing blanks, anywhere else."""
    terminal = Console(file=out, highlight=False, soft_wrap=True)
    if terminal.is_terminal:
        for item in items:
            item = Text(item) if isinstance(item, str) else item
            width = max(terminal.width, terminal.measure(item, options=terminal.options.update_width(10_000)).maximum)
            Console(file=out, highlight=False, soft_wrap=True, width=width, force_terminal=True,
                    color_system=terminal.color_system).print(item)  # fmt: skip
        return
    buffer = io.StringIO()
    plain = Console(file=buffer, width=10_000, color_system=None, highlight=False, soft_wrap=True)
    for item in items:
        plain.print(Text(item) if isinstance(item, str) else item)
    out.write("".join(line.rstrip() + "\n" for line in buffer.getvalue().splitlines()))


def styled(state: str, text: str | None = None) -> Text:
    """`text` (default: the state itself) in the colour of `state`."""
    return Text(text if text is not None else state, style=STATE_STYLES.get(state, ""))


def table(headers: list[str], rows: Iterable[list[str | Text]]) -> Table:
    grid = Table(box=None, pad_edge=False, show_edge=False, header_style="bold", padding=(0, 2, 0, 0))
    for header in headers:
        grid.add_column(header, no_wrap=True)
    for row in rows:
        grid.add_row(*(cell if isinstance(cell, Text) else Text(str(cell)) for cell in row))
    return grid


def gigabytes(n: int) -> str:
    return f"{n / GB:.2f} GB" if n else "-"


def filesize(n: int) -> str:
    """Bytes as a person reads them (decimal units, as download tools show them)."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def budget_line(memory) -> str:
    """One line for a BudgetInfo; reserved only when a load holds some."""
    reserved = f", {memory.reserved_bytes / GB:.2f} GB reserved" if memory.reserved_bytes else ""
    return (
        f"memory budget {memory.budget_bytes / GB:.2f} GB: {memory.used_bytes / GB:.2f} GB used{reserved}, "
        f"{memory.free_bytes / GB:.2f} GB free"
    )


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


# -- the views of ps, memory and status -------------------------------------------------------------------


def ps_view(report) -> list[RenderableType | str]:
    """A StatusReport as `ctl ps` shows it: the budget line, then one row per configured model (a sharded model's
    ranks in a column of their own, shown where a model is sharded)."""
    models = [*report.models, *report.guest_ranks]
    sharded = any(m.shard_mode for m in models)
    rows = [
        [
            m.id + (" (pinned)" if m.pinned else ""),
            styled(m.state, m.state + ("" if m.alive in (None, True) else " (no pong)")),
            ",".join(f"{r.pid}@{r.host}" if r.host else str(r.pid) for r in m.ranks) or str(m.pid or "-"),
            gigabytes(m.charged_bytes),
            gigabytes(m.memory_bytes),
            duration(m.uptime_seconds),
            duration(m.idle_seconds),
            str(m.in_flight) if m.pid else "-",
            m.compute or "-",
            *([ranks_cell(m)] if sharded else []),
            ", ".join(m.aliases) or "-",
        ]
        for m in models
    ]
    headers = ["MODEL", "STATE", "PID", "CHARGED", "RESIDENT", "UPTIME", "IDLE", "IN-FLIGHT", "COMPUTE"]
    headers += ["RANKS", "ALIASES"] if sharded else ["ALIASES"]
    budget = [budget_line(report.memory)] if report.memory is not None else []
    return [*budget, table(headers, rows)]


def ranks_cell(m) -> str:
    """A sharded model's ranks: where each runs and what it holds (rank 0's first); "-" for one process."""
    if not m.ranks:
        return f"{m.shard_mode}, not running" if m.shard_mode else "-"
    each = " | ".join(f"r{r.rank}@{r.host or 'here'} {gigabytes(r.memory_bytes)}" for r in m.ranks)
    return f"{len(m.ranks)} {m.shard_mode}: {each}"


def memory_view(reply) -> list[RenderableType | str]:
    """A ModelList as `ctl memory` shows it: the budget line, then each model's share (and other hosts' ranks')."""
    rows = [
        [
            m.id,
            styled(m.state, f"ranks for host {m.ranks_for}" if m.ranks_for else m.state),
            gigabytes(m.charged_bytes),
            gigabytes(m.memory_bytes),
            gigabytes(m.memory_estimate_bytes),
            "yes" if m.pinned else "no",
            str(m.priority),
        ]
        for m in [*reply.models, *reply.guest_ranks]
    ]
    headers = ["MODEL", "STATE", "CHARGED", "RESIDENT", "ESTIMATE", "PINNED", "PRIORITY"]
    return [budget_line(reply.memory), table(headers, rows)]


def status_view(report) -> list[RenderableType | str]:
    """A StatusReport as `ctl status` shows it: the supervisor, the budget, each loaded worker's ping."""
    loaded = [m for m in report.models if m.pid]
    lines: list[RenderableType | str] = [
        f"supervisor pid {report.pid}, up {duration(report.uptime_seconds)}, protocol v{report.protocol_version}"
    ]
    if report.memory is not None:
        lines.append(budget_line(report.memory))
    lines.append(f"models: {len(loaded)} loaded of {len(report.models)} configured")
    for m in loaded:
        ping = styled(m.state, f"pong in {m.ping_ms:.1f} ms") if m.alive else styled("failed", "NO PONG")
        lines.append(Text.assemble(f"  {m.id}: ", styled(m.state), f", pid {m.pid}, ", ping))
    lines += [Text.assemble(f"  {m.id}: ", styled("failed"), f": {m.last_error}") for m in report.models
              if m.state == "failed"]  # fmt: skip
    lines += [f"  {m.id}: ranks {', '.join(str(r.rank) for r in m.ranks)} for host {m.ranks_for}, pids "
              f"{', '.join(str(r.pid) for r in m.ranks)}" for m in report.guest_ranks]  # fmt: skip
    return lines
