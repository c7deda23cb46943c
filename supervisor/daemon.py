"""`supervisor run`: the long-lived process that owns the fleet.

ROUTER sockets on one asyncio loop: the ctl socket (gateways and the operator CLI send calls, each answered
with the same call_id) and the workers socket (each worker's DEALER, identified by its instance id, sends
Hello/Ready/LoadFailed/Pong and receives Welcome/Refused/Ping). Both live in the private run directory; a
malformed or wrong-length multipart message on any socket is dropped with a log line and never stops its loop.
A fleet's host (supervisor/host.py) also serves ctl calls on TCP, as a CURVE server that lets in only the
config's host_clients; its ipc:// ctl socket stays for the operator on the machine itself.
"""

from __future__ import annotations

import asyncio
import fcntl
import itertools
import logging
import os
import signal
import time
from pathlib import Path

import zmq
import zmq.asyncio

from protocol import PROTOCOL_VERSION, DecodeError, ErrorCode, encode, salvage_id
from protocol.control import Hello, LoadFailed, Ping, Pong, Ready, Refused, Welcome, from_worker_decoder
from protocol.ctl import CallFailed, call_decoder
from protocol.curve import AllowList, secure_server
from protocol.launch import advertised, ctl_endpoint, workers_endpoint
from protocol.launcher import exit_with_launcher
from protocol.run_dir import bind_private, private_run_dir
from supervisor.config import Config
from supervisor.ctl import HANDLERS
from supervisor.fleet import Fleet, FleetError
from supervisor.guest_ranks import GuestRanks
from supervisor.host import Host
from supervisor.model_names import NameRefused
from supervisor.orphans import WorkerRegistry
from supervisor.pulls import Pulls
from supervisor.worker_process import WorkerProcess

log = logging.getLogger("supervisor")


class Supervisor:
    def __init__(self, config: Config, run_dir: Path, host: Host | None = None):
        self.config = config
        self.run_dir = run_dir
        self.host = host
        self.host_name = host.name if host else ""
        self.ctl_endpoint, self.workers_endpoint = ctl_endpoint(run_dir), workers_endpoint(run_dir)
        self.registry = WorkerRegistry(run_dir)
        self.fleet = Fleet(config, str(run_dir), self.workers_endpoint, self.registry, host)
        self.fleet.pinger = self._ping
        # Ranks this host runs for models sharded over hosts whose rank 0 is on another (a fleet's host only).
        self.guests = GuestRanks(self.fleet, host) if host else None
        self.pulls = Pulls(config)  # downloads into the model store (`ctl pull`), one child process each
        self.started = time.monotonic()
        self._ctx = zmq.asyncio.Context()
        self._pending_pings: dict[str, asyncio.Future[Pong]] = {}
        self._ping_ids = itertools.count()
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, self._stopping.set)
        exit_with_launcher()  # a SIGTERM to this process once whatever launched the stack is gone
        for pid in self.registry.sweep():
            log.warning("stopped orphan worker pid %d left by a previous supervisor", pid)
        ctl = self._ctx.socket(zmq.ROUTER)
        self._workers = self._ctx.socket(zmq.ROUTER)
        sockets = [ctl, self._workers]
        allow = None
        if self.host is not None:
            allow = AllowList(self._ctx, self.host.ctl_allowed, f"host {self.host.name}")
            sockets.append(remote := self._ctx.socket(zmq.ROUTER))
            secure_server(remote, self.host.keys)
            remote.bind(self.host.bind)
        for sock in sockets:
            sock.setsockopt(zmq.LINGER, 500)
        bind_private(self._workers, self.workers_endpoint)
        bind_private(ctl, self.ctl_endpoint)
        where = f"host {self.host.name}, ctl at {self.host.bind} (CURVE) and " if self.host else "ctl at "
        log.info("supervisor pid %d: %s%s, %d models here", os.getpid(), where, self.ctl_endpoint,
                 len(self.fleet.slots))  # fmt: skip
        loops = [
            *(asyncio.create_task(self._serve_ctl(sock)) for sock in sockets if sock is not self._workers),
            asyncio.create_task(self._serve_workers()),
            asyncio.create_task(self._heartbeat()),
            *([asyncio.create_task(self.guests.watch())] if self.guests else []),
        ]
        self._spawn(self.fleet.auto_load())
        await self._stopping.wait()
        log.info("stopping: unloading every model")
        await asyncio.gather(
            self.fleet.stop_all(), self.pulls.stop_all(), *([self.guests.stop_all()] if self.guests else [])
        )
        for task in loops:
            task.cancel()
        for sock in sockets:
            sock.close()
        if allow is not None:
            allow.stop()
        self._ctx.term()

    def guest_ranks(self) -> GuestRanks:
        """For other hosts' calls about their models' ranks here; FleetError on a supervisor outside a fleet."""
        if self.guests is None:
            raise FleetError(
                ErrorCode.INVALID_REQUEST, "this supervisor is not a fleet's host: it runs no other host's ranks"
            )
        return self.guests

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- ctl calls ---------------------------------------------------------------------------------------

    async def _serve_ctl(self, sock: zmq.asyncio.Socket) -> None:
        decoder = call_decoder()
        while True:
            frames = await sock.recv_multipart()
            if len(frames) != 2:
                log.error("malformed ctl message dropped: %d frames, expected 2", len(frames))
                continue
            identity, frame = frames
            try:
                call = decoder.decode(frame)
            except DecodeError as exc:
                call_id = salvage_id(frame, "call_id") or ""
                reply = CallFailed(call_id=call_id, code=ErrorCode.MALFORMED_FRAME, message=str(exc))
                await sock.send_multipart([identity, encode(reply)])
                continue
            if call.protocol_version != PROTOCOL_VERSION:
                await sock.send_multipart([identity, encode(self._mismatch(call))])
                continue
            self._spawn(self._answer(sock, identity, call))  # a long load must not hold up other calls

    def _mismatch(self, call) -> CallFailed:
        who = f"host {self.host_name}'s supervisor" if self.host_name else "this supervisor"
        text = f"the caller speaks protocol version {call.protocol_version}, {who} speaks {PROTOCOL_VERSION}"
        log.warning("refused a %s call: %s", type(call).__name__, text)
        return CallFailed(call_id=call.call_id, code=ErrorCode.PROTOCOL_MISMATCH, message=text)

    async def _answer(self, sock: zmq.asyncio.Socket, identity: bytes, call) -> None:
        """Run the call's handler (supervisor/ctl/<command>.py) and send its reply, or the failure as data."""
        try:
            reply = await HANDLERS[type(call)](self, call)
        except FleetError as exc:
            reply = CallFailed(call_id=call.call_id, code=exc.code, message=str(exc), retryable=exc.retryable)
        except NameRefused as exc:
            reply = CallFailed(call_id=call.call_id, code=exc.code, message=str(exc))
        except Exception:  # the exception's text is for the log: a gateway passes the reply's message to clients
            log.exception("ctl call %r failed", call)
            message = f"The supervisor failed on this call; its log has the details ({type(call).__name__})"
            reply = CallFailed(call_id=call.call_id, code=ErrorCode.INTERNAL, message=message)
        await sock.send_multipart([identity, encode(reply)])

    # -- workers ----------------------------------------------------------------------------------------

    async def _serve_workers(self) -> None:
        decoder = from_worker_decoder()
        while True:
            frames = await self._workers.recv_multipart()
            if len(frames) != 2:
                log.error("malformed message on the workers socket dropped: %d frames, expected 2", len(frames))
                continue
            identity, frame = frames
            try:
                message = decoder.decode(frame)
            except DecodeError as exc:
                log.error("malformed frame from worker %r ignored: %s", identity, exc)
                continue
            try:
                await self._from_worker(identity, message)
            except Exception:  # one bad message must not stop the loop every worker's heartbeat goes through
                log.exception("handling %s from worker %r failed", type(message).__name__, identity)

    async def _from_worker(self, identity: bytes, message) -> None:
        match message:
            case Hello():
                await self._on_hello(identity, message)
            case Ready() | LoadFailed():
                worker = self.fleet.by_instance.get(message.instance_id)
                if worker is not None:
                    (worker.on_ready if isinstance(message, Ready) else worker.on_load_failed)(message)
            case Pong():
                self.fleet.on_pong(message)
                future = self._pending_pings.pop(message.call_id, None)
                if future is not None and not future.done():
                    future.set_result(message)

    async def _on_hello(self, identity: bytes, hello: Hello) -> None:
        worker = self.fleet.by_instance.get(hello.instance_id)
        if hello.protocol_version != PROTOCOL_VERSION:
            text = f"worker speaks protocol version {hello.protocol_version}, this supervisor speaks {PROTOCOL_VERSION}"
            why = dict(instance_id=hello.instance_id, code=ErrorCode.PROTOCOL_MISMATCH, message=text)
            await self._workers.send_multipart([identity, encode(Refused(**why))])
            if worker is not None:
                worker.on_load_failed(LoadFailed(**why))
            return
        if worker is None:
            log.warning("hello from unknown worker %s (pid %d) ignored", hello.instance_id, hello.pid)
            return
        worker.identity = identity
        # Where it bound (a tcp port of the system's choosing on a fleet host), as gateways reach it.
        worker.endpoint = advertised(hello.endpoint, self.host.endpoint) if self.host else hello.endpoint
        await self._workers.send_multipart([identity, encode(Welcome(instance_id=hello.instance_id))])

    async def _ping(self, worker: WorkerProcess, timeout: float) -> Pong | None:
        identity = worker.identity
        if identity is None:
            return None
        call_id = f"p{next(self._ping_ids)}"
        future = asyncio.get_running_loop().create_future()
        self._pending_pings[call_id] = future
        await self._workers.send_multipart([identity, encode(Ping(call_id=call_id))])
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return None
        finally:
            self._pending_pings.pop(call_id, None)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.config.settings.heartbeat_seconds)
            try:
                await self.fleet.housekeeping()
            except Exception:
                log.exception("housekeeping failed")


def hold_pidfile(run_dir: Path) -> int:
    """One supervisor per run directory: a second one would steal the first one's sockets."""
    fd = os.open(run_dir / "supervisor.pid", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.read(fd, 32).decode().strip() or "?"
        raise SystemExit(f"another supervisor (pid {other}) already runs in {run_dir}") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def run(config: Config, run_dir: Path, host: Host | None = None) -> None:
    try:
        private_run_dir(run_dir)
    except PermissionError as exc:
        raise SystemExit(f"supervisor: {exc}") from None
    hold_pidfile(run_dir)
    asyncio.run(Supervisor(config, run_dir, host).serve())
