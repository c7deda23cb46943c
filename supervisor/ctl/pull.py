"""Pull a model from the Hugging Face hub (HF_ENDPOINT where the supervisor runs) into the model store: REPO or
REPO@REVISION (a branch, tag or commit), optionally converted (--quantize, --dtype), under NAME (default: the
repo's name). Shows a progress bar per file and overall; the revision's commit is pinned in the store. Ctrl-C
cancels; pulling again resumes. Prints the config lines that serve the model."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from protocol.store import CancelPull, Pull, PullProgress, Pulls, PullState, PullStatus
from supervisor.ctl.convert_options import add_convert_arguments, convert_options
from supervisor.ctl.format import filesize, json_flag, print_json, show, styled

if TYPE_CHECKING:
    from supervisor.daemon import Supervisor

REQUEST = Pull
POLL_SECONDS = 0.25


def add_arguments(parser) -> None:
    parser.add_argument("repo", help="org/name on the hub, optionally @revision")
    parser.add_argument("name", nargs="?", help="its directory in the store (default: the repo's name)")
    add_convert_arguments(parser)
    parser.add_argument("--force", action="store_true", help="replace a model of that name in the store")
    json_flag(parser)


def run(client, args, out) -> int:
    repo, _, revision = args.repo.partition("@")
    call = lambda call_id: Pull(  # noqa: E731
        call_id=call_id, repo=repo, revision=revision or None, name=args.name, convert=convert_options(args),
        force=args.force,
    )  # fmt: skip
    progress = client.call(call).pulls[0]
    try:
        progress = _follow(client, progress, out, bars=not args.json)
    except KeyboardInterrupt:
        client.call(lambda call_id: CancelPull(call_id=call_id, pull_id=progress.pull_id))
        show(out, styled("cancelled", f"cancelled {progress.pull_id}: pulling {args.repo} again resumes it"))
        return 130
    if args.json:
        print_json(progress, out)
    elif progress.state == PullState.DONE:
        show(out, *done_lines(progress))
    else:
        show(out, styled("failed", f"pull of {progress.repo} failed: {progress.message}"))
    return 0 if progress.state == PullState.DONE else 1


def _follow(client, progress: PullProgress, out, bars: bool) -> PullProgress:
    """Poll the supervisor until the pull ends: rich bars on a terminal, a line per finished step elsewhere."""
    console = Console(file=out)

    def poll(p: PullProgress) -> PullProgress:
        time.sleep(POLL_SECONDS)
        return client.call(lambda call_id: PullStatus(call_id=call_id, pull_id=p.pull_id)).pulls[0]

    if not bars:
        while not progress.finished:
            progress = poll(progress)
        return progress
    if not console.is_terminal:
        return _follow_plainly(progress, poll, out)
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, console=console) as shown:
        overall = shown.add_task("total", total=None)
        tasks: dict[str, int] = {}
        while not progress.finished:
            for f in progress.files:
                if f.path not in tasks:
                    tasks[f.path] = shown.add_task(f"  {f.path}", total=f.size)
                shown.update(tasks[f.path], completed=f.done)
            description = f"[bold]{progress.name}[/] {progress.state}"
            if progress.state == PullState.CONVERTING:
                description += f": {progress.message}"
            shown.update(overall, total=progress.bytes_total or None, completed=progress.bytes_done,
                         description=description)  # fmt: skip
            progress = poll(progress)
    return progress


def _follow_plainly(progress: PullProgress, poll, out) -> PullProgress:
    """For a log or a pipe: each state once, and each file as it completes."""
    said_state, said_files = None, set()
    while True:
        if progress.state != said_state and not progress.finished:
            show(out, f"{progress.state} {progress.repo}" + (f": {progress.message}" if progress.message else ""))
            said_state = progress.state
        for f in progress.files:
            if f.done >= f.size and f.path not in said_files:
                overall = f"{filesize(progress.bytes_done)} of {filesize(progress.bytes_total)}"
                show(out, f"  {f.path} {filesize(f.size)}  ({overall})")
                said_files.add(f.path)
        if progress.finished:
            return progress
        progress = poll(progress)


def done_lines(p: PullProgress) -> list[str]:
    model_id = p.name.lower()
    return [
        f"pulled {p.repo}@{p.revision} (commit {(p.commit or '?')[:12]}) into {p.path}: {filesize(p.bytes_total)}",
        "to serve it, add it to the models in your config (the supervisor reads the file when it starts):",
        f"  - id: {model_id}",
        f"    source: {p.name}",
    ]


async def execute(supervisor: Supervisor, call: Pull) -> Pulls:
    return Pulls(call_id=call.call_id, pulls=[await supervisor.pulls.start(call)])
