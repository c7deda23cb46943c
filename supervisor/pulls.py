"""The pulls a supervisor runs: each a child process (supervisor/model_pull.py) whose progress it reads and keeps,
for `ctl pull`, POST /api/v1/models/pull and the dashboard to ask after. One pull per store name at a time; the
last finished ones are kept for those who ask late. A pull cancelled, or cut short because the supervisor stops,
leaves its download directory for the next pull of that name to resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import sys
from collections import OrderedDict

import msgspec

from protocol import ErrorCode
from protocol.store import Pull, PullProgress, PullState
from supervisor.config import Config
from supervisor.fleet import FleetError
from supervisor.model_pull import PullError, check_options, default_name
from supervisor.model_store import StoreError, check_name

log = logging.getLogger("supervisor.pulls")

KEEP_FINISHED = 20
LINE_LIMIT = 4 * 1024 * 1024  # one progress line lists every file of the repo


class PullJob:
    def __init__(self, progress: PullProgress):
        self.progress = progress
        self.proc: asyncio.subprocess.Process | None = None  # once spawned
        self.cancelled = False
        self.watcher: asyncio.Task | None = None

    def cancel(self) -> None:
        self.cancelled = True
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()


class Pulls:
    def __init__(self, config: Config):
        self.config = config
        self.jobs: OrderedDict[str, PullJob] = OrderedDict()
        self._ids = itertools.count(1)

    async def start(self, call: Pull) -> PullProgress:
        name = call.name or default_name(call.repo)
        try:
            check_name(name)
            check_options(call.convert)
        except (StoreError, PullError) as exc:
            raise FleetError(ErrorCode.INVALID_REQUEST, str(exc)) from None
        if call.repo.count("/") != 1 or call.repo.startswith("/") or call.repo.endswith("/"):
            raise FleetError(ErrorCode.INVALID_REQUEST, f"'{call.repo}' is not a hub repo id (org/name)")
        if self.is_pulling(name):
            raise FleetError(ErrorCode.CONFLICT, f"a pull into '{name}' is already running")
        if (self.config.store / name).exists() and not call.force:
            raise FleetError(ErrorCode.CONFLICT, f"the store already holds '{name}' (pull with force to replace it)")
        pull_id = f"pull-{next(self._ids)}"
        argv = ["--store", str(self.config.store), "--name", name, "--pull-id", pull_id]
        argv += ["--options", msgspec.json.encode(call.convert).decode()]
        argv += ["--revision", call.revision] if call.revision else []
        argv += ["--force"] if call.force else []
        progress = PullProgress(pull_id=pull_id, repo=call.repo, revision=call.revision or "main", name=name,
                                state=PullState.RESOLVING)  # fmt: skip
        job = self.jobs[pull_id] = PullJob(progress)  # the name is taken before the first await
        self._forget_old()
        self.config.store.mkdir(parents=True, exist_ok=True)
        try:
            job.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "supervisor.model_pull", call.repo, *argv,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, limit=LINE_LIMIT,
            )  # fmt: skip
        except OSError as exc:
            job.progress = msgspec.structs.replace(progress, state=PullState.FAILED, message=f"not started: {exc}")
            raise
        if job.cancelled:  # cancelled while it was being spawned
            job.proc.terminate()
        job.watcher = asyncio.create_task(self._follow(job))
        log.info("pulling %s@%s into %s (%s, pid %d)", call.repo, progress.revision, name, pull_id, job.proc.pid)
        return progress

    def status(self, pull_id: str | None) -> list[PullProgress]:
        if pull_id is None:
            return [job.progress for job in self.jobs.values()]
        return [self._job(pull_id).progress]

    def cancel(self, pull_id: str) -> PullProgress:
        job = self._job(pull_id)
        if not job.progress.finished:
            job.cancel()
        return job.progress

    def is_pulling(self, name: str) -> bool:
        return any(job.progress.name == name and not job.progress.finished for job in self.jobs.values())

    async def stop_all(self) -> None:
        for job in self.jobs.values():
            if not job.progress.finished:
                job.cancel()
        await asyncio.gather(*(job.watcher for job in self.jobs.values() if job.watcher), return_exceptions=True)

    def _job(self, pull_id: str) -> PullJob:
        if pull_id not in self.jobs:
            raise FleetError(ErrorCode.NOT_FOUND, f"no pull '{pull_id}' (pulls: {', '.join(self.jobs) or 'none'})")
        return self.jobs[pull_id]

    async def _follow(self, job: PullJob) -> None:
        """Keep the job's latest progress until it exits; then settle how it ended."""
        decoder = msgspec.json.Decoder(PullProgress)
        async for line in job.proc.stdout:
            with contextlib.suppress(msgspec.DecodeError):
                job.progress = decoder.decode(line)
        code = await job.proc.wait()
        if job.cancelled:
            job.progress = msgspec.structs.replace(
                job.progress, state=PullState.CANCELLED, message="cancelled: pulling it again resumes the download"
            )
        elif not job.progress.finished:
            job.progress = msgspec.structs.replace(
                job.progress, state=PullState.FAILED, message=f"the pull process exited with code {code}"
            )
        p = job.progress
        level = logging.INFO if p.state == PullState.DONE else logging.WARNING
        log.log(level, "pull %s of %s into %s: %s %s", p.pull_id, p.repo, p.name, p.state, p.message)

    def _forget_old(self) -> None:
        finished = [pull_id for pull_id, job in self.jobs.items() if job.progress.finished]
        for pull_id in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            del self.jobs[pull_id]
