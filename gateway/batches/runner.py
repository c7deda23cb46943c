"""Running batches: one background task per batch, in the gateway that holds the batch's lease.

`Batches` (one per gateway, on `app.state.batches`) looks for unfinished batches that no gateway runs: a new one
at once (the route wakes it), one whose gateway stopped as soon as its lease is free (at once for a clean stop,
within LEASE_SECONDS for a crash). It runs each with `BatchRun`, at most `max_in_flight` lines at a time over all
its batches. A line is admitted within its service's rate limits (a spent limit waits, it does not fail the
line), sent at priority -1 (interactive requests go ahead of it in the worker's queue), and its result recorded
before it counts as done; a resumed batch skips the recorded lines. Cancelling stops new lines and aborts the
ones in flight; what completed still reaches the output file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

from gateway.auth import LOCAL, Service
from gateway.batches import lines
from gateway.batches.files import FileStore
from gateway.batches.state import LEASE_SECONDS, BatchStore
from gateway.core.caller import Caller
from gateway.errors import APIError
from gateway.redis_store import StoreUnavailable
from protocol import ErrorCode

log = logging.getLogger("gateway.batches")
POLL_SECONDS = 2.0  # how often a gateway looks for batches to run (a new one wakes it at once)
WATCH_SECONDS = 1.0  # how often a running batch looks for a cancel, and (every few) renews its lease
BATCH_PRIORITY = -1


class Batches:
    def __init__(self, state, store: BatchStore, files: FileStore, max_in_flight: int):
        self.state, self.store, self.files = state, store, files
        self.owner = uuid.uuid4().hex  # this gateway, as a lease holder
        self.slots = asyncio.Semaphore(max_in_flight)
        self._running: dict[str, asyncio.Task] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._look())

    def wake(self) -> None:
        self._wake.set()

    async def _look(self) -> None:
        while True:
            try:
                for batch_id in await self.store.active():
                    if batch_id not in self._running and await self.store.lease(batch_id, self.owner):
                        self._running[batch_id] = asyncio.create_task(self._run(batch_id))
            except StoreUnavailable as exc:
                log.warning("batches: the store is unreachable (%s); looking again in %.0fs", exc, POLL_SECONDS)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_SECONDS)
            self._wake.clear()

    async def _run(self, batch_id: str) -> None:
        try:
            await BatchRun(self, batch_id).run()
        except asyncio.CancelledError:
            raise
        except Exception:  # the batch stays unfinished: a later look (here or elsewhere) resumes it
            log.exception("batch %s stopped", batch_id)
        finally:
            self._running.pop(batch_id, None)
            with contextlib.suppress(StoreUnavailable):
                await self.store.release(batch_id, self.owner)

    def service(self, name: str) -> Service:
        return self.state.services.get(name) or (LOCAL if name == LOCAL.name else Service(name=name))

    async def close(self) -> None:
        """The gateway stops: its batches stop too (their leases freed, so another gateway resumes them)."""
        tasks = [t for t in (self._task, *self._running.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class BatchRun:
    def __init__(self, batches: Batches, batch_id: str):
        self.batches, self.store, self.batch_id = batches, batches.store, batch_id
        self.in_flight: set[asyncio.Task] = set()
        self.stopping = asyncio.Event()  # cancelled, or the lease lost

    async def run(self) -> None:
        found = await self.store.load(self.batch_id)
        if found is None:
            return
        name, self.batch = found
        self.service = self.batches.service(name)
        try:
            data = await asyncio.to_thread(self.batches.files.content, name, self.batch["input_file_id"])
        except APIError:
            return await self._save(status="failed", failed_at=int(time.time()), errors=_errors("input file gone"))
        todo = lines.parse(data, self.batch["endpoint"])
        done = await self.store.results(self.batch_id)
        self.counts = {"total": len(todo), "completed": 0, "failed": 0}
        for record in done.values():
            self.counts["completed" if lines.succeeded(record) else "failed"] += 1
        if self.batch["status"] == "validating":
            await self._save(status="in_progress", in_progress_at=int(time.time()))
        watcher = asyncio.create_task(self._watch())
        try:
            for line in todo:
                if line.index in done:
                    continue
                await self.batches.slots.acquire()
                if self.stopping.is_set():
                    self.batches.slots.release()
                    break
                task = asyncio.create_task(self._line(line))
                self.in_flight.add(task)
                task.add_done_callback(self.in_flight.discard)
            await asyncio.gather(*self.in_flight, return_exceptions=True)  # the watcher cancels them on a stop
        finally:
            watcher.cancel()
            for task in list(self.in_flight):
                task.cancel()
            await asyncio.gather(*self.in_flight, return_exceptions=True)
        if await self.store.cancelled(self.batch_id) is not None:
            await self._finish("cancelled")
        elif self.stopping.is_set():
            log.warning("batch %s: lease lost; another gateway goes on with it", self.batch_id)
        else:
            await self._finish("completed")

    async def _line(self, line: lines.Line) -> None:
        try:
            caller = Caller(service=self.service, trace_id=f"{self.batch_id}-{line.index}", priority=BATCH_PRIORITY)
            if line.body is not None:
                await self._admitted()
            record = await lines.run(self.batches.state, caller, self.batch["endpoint"], line)
            if await self.store.record(self.batch_id, line.index, record):
                self.counts["completed" if lines.succeeded(record) else "failed"] += 1
                await self._save()
        finally:
            self.batches.slots.release()

    async def _admitted(self) -> None:
        """Count the line against its service's rate limits, waiting while they are spent."""
        while True:
            try:
                await self.batches.state.limiter.admit(self.service)
                return
            except APIError as exc:
                if exc.code != ErrorCode.RATE_LIMITED:
                    raise
                await asyncio.sleep(float(exc.headers.get("Retry-After", 1)))

    async def _watch(self) -> None:
        """Stop on a cancel; renew the lease (losing it stops the run: another gateway holds the batch)."""
        ticks = 0
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            ticks += 1
            cancelled = await self.store.cancelled(self.batch_id) is not None
            renew = ticks % max(1, int(LEASE_SECONDS / 3 / WATCH_SECONDS)) == 0
            if cancelled or (renew and not await self.store.lease(self.batch_id, self.batches.owner)):
                self.stopping.set()
                for task in list(self.in_flight):
                    task.cancel()  # their generations are aborted; their slots free at once
                return

    async def _finish(self, status: str) -> None:
        """Write the output and error files (in input order), then the batch's final state. Safe to repeat: the
        files' ids come from the batch's, so a finish cut short and done again writes the same files."""
        results = await self.store.results(self.batch_id)
        if status == "completed" and len(results) < self.counts["total"]:  # a record was lost (the store failed)
            raise RuntimeError(f"{self.counts['total'] - len(results)} lines have no recorded result")
        await self._save(status="finalizing", finalizing_at=int(time.time()))
        ok = b"".join(lines.output_line(results[i]) for i in sorted(results) if lines.succeeded(results[i]))
        bad = b"".join(lines.output_line(results[i]) for i in sorted(results) if not lines.succeeded(results[i]))
        name = self.service.name
        files = {}
        for kind, data in (("output", ok), ("error", bad)):
            if data:
                file_id = f"file-{self.batch_id.removeprefix('batch_')}-{kind}"
                filename = f"{self.batch_id}_{kind}.jsonl"
                await asyncio.to_thread(self.batches.files.add, name, data, filename, "batch_output", file_id)
                files[f"{kind}_file_id"] = file_id
        await self._save(status=status, **files, **{f"{status}_at": int(time.time())})
        log.info("batch %s %s: %s", self.batch_id, status, self.counts)

    async def _save(self, **fields) -> None:
        counts = getattr(self, "counts", None)
        self.batch = self.batch | fields | ({"request_counts": dict(counts)} if counts else {})
        await self.store.save(self.service.name, self.batch)


def _errors(message: str) -> dict:
    return {"object": "list", "data": [{"code": "invalid_input_file", "message": message, "param": None, "line": None}]}
