"""One spawned worker process as the supervisor sees it: how to start it, what it reported, how to stop it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time

import psutil

from protocol import ErrorCode
from protocol.control import LoadFailed, MemoryReport, Ready
from protocol.launch import WorkerLaunch, worker_argv
from supervisor import remote_ranks
from supervisor.config import ShardSpec
from supervisor.host import Host
from supervisor.peer_client import PeerError
from supervisor.sharding import rank_launches, ranks_on, ring_hosts

log = logging.getLogger("supervisor.worker")
FOLLOWER_GRACE = 1.0  # seconds a sharded model's other ranks have to exit of themselves once rank 0 has


class WorkerStartError(RuntimeError):
    def __init__(self, code: ErrorCode, message: str):
        super().__init__(message)
        self.code = code


class WorkerProcess:
    def __init__(self, launch: WorkerLaunch, proc: asyncio.subprocess.Process):
        self.launch = launch
        self.model_id = launch.model_id
        self.endpoint = launch.data_endpoint
        self.instance_id = launch.instance_id
        self.proc = proc
        self.pid = proc.pid
        self.started_at = time.monotonic()
        self.ready: asyncio.Future[Ready] = asyncio.get_running_loop().create_future()
        self.memory: MemoryReport | None = None
        self.context_length: int | None = None
        self.compute = ""  # what the worker chose to compute with (Ready.compute)
        self.vocab_size: int | None = None  # Ready.vocab_size
        self.in_flight = 0
        self.queued = 0  # of in_flight, waiting for the generation thread
        self.pong_at = 0.0  # monotonic time of the last Ready or Pong: proof the generation loop turns
        self.identity: bytes | None = None  # its control socket's ZeroMQ identity, learnt from Hello
        self.wedged = False  # killed for answering no ping: a request may have caused it
        # A sharded model's other ranks (supervisor/sharding.py): they live and die with this one, rank 0. Each a
        # LocalRank, or a RemoteRank on another host (supervisor/remote_ranks.py): pid, host, wait(), kill(), ended.
        self.followers: list = []
        self.rank_exits: list[str] = []  # how each rank ended, in the order the supervisor saw them end
        self._ending_followers = False  # rank 0 is gone: the followers still running are stopped with it
        self._peers: tuple | None = None  # (this host, the shard, the ring) until start_peers has run
        self.exited = asyncio.ensure_future(self._all_exited())

    @classmethod
    async def spawn(
        cls, launch: WorkerLaunch, shard: ShardSpec | None = None, host: Host | None = None
    ) -> WorkerProcess:
        """Start the worker for `launch`; for a sharded model, one process per rank of this host, rank 0 the worker
        (with shard.hosts, the other hosts' ranks follow in `start_peers`; `host`: this one)."""
        if shard is None:
            return cls(launch, await start_process(launch))
        try:
            if shard.hosts:
                ring = await remote_ranks.reserve_ring(host, launch.model_id, shard)
            else:
                ring = ring_hosts(shard.address, shard.ranks) if shard.backend == "ring" else []
        except PeerError as exc:
            raise WorkerStartError(exc.code, str(exc)) from None
        launches = rank_launches(launch, shard, ring, ranks_on(shard, host.name if shard.hosts else ""))
        worker = cls(launches[0], await start_process(launches[0]))
        try:
            for rank_launch in launches[1:]:
                worker._follow(LocalRank(rank_launch.shard.rank, await start_process(rank_launch)))
        except OSError:
            worker.kill()
            await worker.exited
            raise
        if shard.hosts:
            worker._peers = (host, shard, ring)
        return worker

    async def start_peers(self) -> None:
        """A model sharded over hosts: have the other hosts' supervisors start their ranks (they may first evict
        models there). Called once rank 0 is known to the supervisor, whose Hello must not be missed meanwhile;
        WorkerStartError if a host cannot (no room in its budget) or does not answer (the caller kills the rest)."""
        if self._peers is None:
            return
        (host, shard, ring), self._peers = self._peers, None
        try:
            for remote in await remote_ranks.start_peers(host, self.launch, shard, ring):
                self._follow(remote)
        except PeerError as exc:
            raise WorkerStartError(exc.code, str(exc)) from None

    def _follow(self, follower) -> None:
        self.followers.append(follower)
        if not self.alive:  # rank 0 ended while its followers started: they would wait for it forever
            self.kill()
        asyncio.ensure_future(follower.wait()).add_done_callback(lambda _: self._on_rank_exit(follower))

    @property
    def pids(self) -> list[int]:
        """Every rank's process id on this host, rank 0 first."""
        return [self.pid, *(p.pid for p in self.followers if not p.host)]

    @property
    def rank_failure(self) -> str | None:
        """A sharded model's end, rank by rank ("rank 1 (pid 12) killed by SIGKILL, then rank 0 ..."); None for a
        model in one process."""
        return ", then ".join(self.rank_exits) or None

    async def _all_exited(self) -> int:
        """Rank 0's exit code, once every rank is gone: rank 0 gone, the others are stopped with it."""
        code = await self.proc.wait()
        if not self.followers:
            return code
        self.rank_exits.append(f"rank 0 (pid {self.pid}) {describe_exit(code)}")
        # A follower that died first (its exit not yet seen), or of rank 0's end, exits on its own: seen so, it
        # tells what happened; those still running after the grace are stopped.
        await asyncio.wait([asyncio.ensure_future(p.wait()) for p in self.followers], timeout=FOLLOWER_GRACE)
        self._ending_followers = True
        for follower in self.followers:
            follower.kill()
        await asyncio.gather(*(p.wait() for p in self.followers))
        return code

    def _on_rank_exit(self, follower) -> None:
        if self._ending_followers:
            return  # stopped with rank 0
        where = f" on host {follower.host}" if follower.host else ""
        self.rank_exits.append(f"rank {follower.rank} (pid {follower.pid}{where}) {follower.ended}")
        if self.alive:  # a follower went first: the model cannot step without it
            log.error("%s: %s: stopping every rank", self.model_id, self.rank_exits[-1])
            self.kill()

    def on_ready(self, message: Ready) -> None:
        self.memory = message.memory
        self.context_length = message.context_length
        self.pong_at = time.monotonic()
        self.compute = message.compute
        self.vocab_size = message.vocab_size
        if not self.ready.done():
            self.ready.set_result(message)

    def on_load_failed(self, message: LoadFailed) -> None:
        if not self.ready.done():
            self.ready.set_exception(WorkerStartError(message.code, message.message))

    def on_exit(self) -> None:
        if not self.ready.done():
            code = self.proc.returncode
            self.ready.set_exception(
                WorkerStartError(
                    ErrorCode.MODEL_LOAD_FAILED,
                    f"worker exited during start-up ({self.rank_failure or describe_exit(code)})",
                )
            )

    @property
    def uptime(self) -> float:
        return time.monotonic() - self.started_at

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    async def stop(self, grace: float) -> int | None:
        """SIGTERM to the process group, up to `grace` seconds to drain, then SIGKILL. Returns the exit code."""
        if self.alive:
            self._signal_group(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(self.exited), grace)
            except TimeoutError:
                log.warning("worker %s (pid %d) ignored SIGTERM for %.0fs: SIGKILL", self.model_id, self.pid, grace)
                self._signal_group(signal.SIGKILL)
        await self.exited
        self._signal_group(signal.SIGKILL)  # anything the worker started goes with it
        return self.proc.returncode

    def kill(self) -> None:
        _signal_group(self.pid, signal.SIGKILL)
        for follower in self.followers:
            follower.kill()

    def _signal_group(self, sig: int) -> None:
        _signal_group(self.pid, sig)


class LocalRank:
    """A rank > 0 of a sharded model, a process of this host."""

    host = ""  # this one

    def __init__(self, rank: int, proc: asyncio.subprocess.Process):
        self.rank, self.proc, self.pid = rank, proc, proc.pid

    async def wait(self) -> int:
        return await self.proc.wait()

    def kill(self) -> None:
        _signal_group(self.pid, signal.SIGKILL)

    @property
    def ended(self) -> str | None:
        """How it ended; None while it runs."""
        return None if self.proc.returncode is None else describe_exit(self.proc.returncode)

    @property
    def memory_bytes(self) -> int:
        try:
            return psutil.Process(self.pid).memory_info().rss
        except psutil.Error:  # gone or going: its exit is handled as the model's
            return 0


async def start_process(launch: WorkerLaunch) -> asyncio.subprocess.Process:
    # Own process group: stopping it reaches anything the worker started. stdin is the lifeline pipe.
    proc = await asyncio.create_subprocess_exec(
        *worker_argv(launch), stdin=asyncio.subprocess.PIPE, start_new_session=True
    )
    rank = f" rank {launch.shard.rank} of {launch.shard.ranks}" if launch.shard else ""
    log.info("spawned worker for %s%s: pid %d", launch.model_id, rank, proc.pid)
    return proc


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


KILLED_FROM_OUTSIDE = frozenset({signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


def faulted(returncode: int | None) -> bool:
    """Did the process end itself (an error exit, a fault signal), rather than being killed by another process
    (SIGKILL, as the OOM killer sends; SIGTERM, SIGINT, SIGHUP)?"""
    return returncode is not None and (returncode >= 0 or -returncode not in KILLED_FROM_OUTSIDE)


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exit code {returncode}"
