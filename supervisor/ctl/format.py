"""Plain-text rendering shared by the ctl commands."""

from __future__ import annotations

GB = 1024**3


def gigabytes(n: int) -> str:
    return f"{n / GB:.2f} GB" if n else "-"


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


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    lines = [headers, *rows]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines)
