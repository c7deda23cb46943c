"""Local sockets: the run directory is 0700 and its ipc sockets 0600, and a malformed or wrong-length multipart
message on any ZeroMQ socket (supervisor ctl and workers ROUTERs, worker data ROUTER and control DEALER, the
gateway's DEALERs) is dropped with a log line: the next valid message on it is answered."""

from __future__ import annotations

import asyncio
import os
import queue
import shutil
import stat
import threading
from pathlib import Path

import pytest
import zmq
import zmq.asyncio

from gateway.errors import APIError
from gateway.supervisor_client import SupervisorClient
from gateway.worker_client import WorkerClient
from protocol import PROTOCOL_VERSION, encode
from protocol.control import Hello, Ping, Refused, from_worker_decoder, to_worker_decoder
from protocol.ctl import CallFailed, ListModels, Located, Status, call_decoder, reply_decoder
from protocol.generation import (
    Abort,
    Finished,
    GenerateRequest,
    SamplingParams,
    TextChunk,
    Usage,
    worker_outbound_decoder,
)
from protocol.run_dir import private_run_dir
from supervisor.ctl_client import CtlClient
from tests.harness import Server, short_run_dir, wait_until
from worker.data_plane import DataPlane
from worker.supervisor_link import SupervisorLink

GARBAGE = [[b"\x00", b"two frames"], [b"a", b"b", b"c"], [b"\xc1not msgpack"]]  # as a peer's DEALER sends them


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def dealer(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 60_000)  # a generous deadline: a reply that never comes fails the test
    sock.connect(endpoint)
    return sock


def test_the_run_directory_is_private_and_a_shared_one_is_refused(tmp_path):
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)
    assert mode(private_run_dir(loose)) == 0o700
    assert mode(private_run_dir(tmp_path / "new" / "run")) == 0o700
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp: tightening it would break every other user of it
    with pytest.raises(PermissionError, match="shared"):
        private_run_dir(shared)
    assert mode(shared) == 0o1777


def test_supervisor_and_worker_sockets_are_private_and_survive_garbage(server_config):
    base = short_run_dir()
    run_dir = base / "run"
    run_dir.mkdir(mode=0o755)
    run_dir.chmod(0o755)  # as `mkdir -p` leaves it under the usual umask
    srv = Server(server_config, run_dir=run_dir)
    srv.start_supervisor()
    ctx = zmq.Context()
    try:
        assert wait_until(lambda: (run_dir / "supervisor.sock").exists(), timeout=60)
        assert srv.ctl("load", "smollm2").returncode == 0
        assert mode(run_dir) == 0o700
        for name in ("supervisor.sock", "supervisor-workers.sock", "worker-smollm2.sock", "supervisor.pid"):
            assert mode(run_dir / name) == 0o600, name

        ctl = dealer(ctx, f"ipc://{run_dir}/supervisor.sock")
        for frames in GARBAGE:
            ctl.send_multipart(frames)
        reply = reply_decoder().decode(ctl.recv())  # the one-frame garbage is answered, under no call id
        assert isinstance(reply, CallFailed) and reply.code == "malformed_frame"
        ctl.send(encode(ListModels(call_id="after-garbage")))
        assert reply_decoder().decode(ctl.recv()).call_id == "after-garbage"

        workers = dealer(ctx, f"ipc://{run_dir}/supervisor-workers.sock")
        for frames in GARBAGE:
            workers.send_multipart(frames)
        hello = Hello(protocol_version=PROTOCOL_VERSION + 1, model_id="x", instance_id="impostor", pid=1, endpoint="")
        workers.send(encode(hello))
        assert isinstance(to_worker_decoder().decode(workers.recv()), Refused)

        data = dealer(ctx, f"ipc://{run_dir}/worker-smollm2.sock")
        for frames in GARBAGE:
            data.send_multipart(frames)
        assert worker_outbound_decoder().decode(data.recv()).code == "malformed_frame"
        request = GenerateRequest(request_id="r", prompt="1, 2, 3,", sampling=SamplingParams(max_tokens=2))
        data.send(encode(request))
        event = None
        while not isinstance(event, Finished):  # each recv waits up to RCVTIMEO, then fails the test
            event = worker_outbound_decoder().decode(data.recv())
        assert event.request_id == "r" and event.usage.completion_tokens == 2

        status = CtlClient(f"ipc://{run_dir}/supervisor.sock").call(lambda call_id: Status(call_id=call_id))
        [model] = [m for m in status.models if m.id == "smollm2"]
        assert model.alive  # its pongs still reach the supervisor's workers loop
        assert "malformed ctl message dropped" in srv.log_text()
        assert "malformed message on the workers socket dropped" in srv.log_text()
        assert "malformed message from the gateway dropped" in srv.log_text()
    finally:
        ctx.destroy(linger=0)
        srv.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_worker_supervisor_link_drops_garbage_and_hands_on_pings(tmp_path):
    """The worker's supervisor link alone, against a stand-in supervisor: no model needed."""
    ctx = zmq.Context()
    endpoints = short_run_dir()
    supervisor = ctx.socket(zmq.ROUTER)
    supervisor.setsockopt(zmq.RCVTIMEO, 30_000)
    supervisor.bind(f"ipc://{endpoints}/sup.sock")
    inbox: queue.Queue = queue.Queue(maxsize=2)
    hello = Hello(protocol_version=PROTOCOL_VERSION, model_id="m", instance_id="i", pid=os.getpid(), endpoint="")
    link = SupervisorLink(ctx, f"ipc://{endpoints}/sup.sock", inbox, hello, threading.Event())
    link.start()
    try:
        identity, frame = supervisor.recv_multipart()
        assert from_worker_decoder().decode(frame) == hello  # sent at once, before any model loads
        for frames in GARBAGE:
            supervisor.send_multipart([identity, *frames])
        supervisor.send_multipart([identity, encode(Ping(call_id="p1"))])
        assert inbox.get(timeout=30) == Ping(call_id="p1")
        assert link.is_alive()
    finally:
        link.closing.set()
        link.join(timeout=10)
        ctx.destroy(linger=0)
        shutil.rmtree(endpoints, ignore_errors=True)


def read(data: DataPlane, count: int) -> list:
    got: list = []
    for _ in range(20):  # a minute at most: what never comes fails the test
        if len(got) >= count:
            break
        got += data.read(3_000)
    return got


def test_worker_data_socket_answers_garbage_and_duplicates_and_routes_events_back():
    """The worker's data socket alone, as the generation thread uses it: a private ipc file, malformed frames and a
    request_id already in flight answered at once, each event to the gateway that sent its request."""
    ctx = zmq.Context()
    endpoints = short_run_dir()
    data = DataPlane(ctx, f"ipc://{endpoints}/w.sock", None, "m")
    try:
        assert mode(Path(f"{endpoints}/w.sock")) == 0o600
        first, second = dealer(ctx, data.endpoint), dealer(ctx, data.endpoint)
        first.send_multipart([b"a", b"b"])  # two frames from a DEALER: three at the ROUTER, dropped
        first.send(b"\xc1not msgpack")
        first.send(encode(GenerateRequest(request_id="r1", prompt="hi")))
        assert [(type(m).__name__, m.request_id) for m in read(data, 1)] == [("GenerateRequest", "r1")]
        second.send(encode(GenerateRequest(request_id="r2", prompt="hi")))
        second.send(encode(GenerateRequest(request_id="r1", prompt="again")))
        second.send(encode(Abort(request_id="r2")))
        got = read(data, 2)
        assert [(type(m).__name__, m.request_id) for m in got] == [("GenerateRequest", "r2"), ("Abort", "r2")]
        decoder = worker_outbound_decoder()
        malformed = decoder.decode(first.recv())
        assert malformed.code == "malformed_frame"
        duplicate = decoder.decode(second.recv())
        assert (duplicate.request_id, duplicate.code) == ("r1", "invalid_request")
        done = Finished(request_id="r1", finish_reason="stop", usage=Usage(prompt_tokens=1, completion_tokens=0))
        chunk = TextChunk(request_id="r1", text="Hi", completion_tokens=1)
        other = TextChunk(request_id="r2", text="Yo", completion_tokens=1)
        data.send(chunk)
        data.send(other)
        data.send(done)
        assert not first.poll(200)  # events wait for the flush at the end of the step
        data.flush()
        # One message per gateway, a frame per event in order: r1's to the socket that sent r1.
        assert [decoder.decode(frame) for frame in first.recv_multipart()] == [chunk, done]
        assert [decoder.decode(frame) for frame in second.recv_multipart()] == [other]
        data.send(done)  # r1's route ended with its last event: a second one goes nowhere
        data.flush()
        assert not first.poll(200)
        assert data.read(0) == []
    finally:
        data.close()
        ctx.destroy(linger=0)
        shutil.rmtree(endpoints, ignore_errors=True)


def with_peer(scenario) -> None:
    """Run `scenario(ctx, peer, endpoint)` on an asyncio context, `peer` a ROUTER bound at `endpoint`."""
    endpoints = short_run_dir()

    async def run():
        ctx = zmq.asyncio.Context()
        peer = ctx.socket(zmq.ROUTER)
        endpoint = f"ipc://{endpoints}/peer.sock"
        peer.bind(endpoint)
        try:
            await scenario(ctx, peer, endpoint)
        finally:
            peer.close(linger=0)
            ctx.term()

    try:
        asyncio.run(run())
    finally:
        shutil.rmtree(endpoints, ignore_errors=True)


def test_gateway_dealers_drop_garbage_and_take_the_next_reply():
    async def scenario(ctx, peer, endpoint):
        client = SupervisorClient(ctx, endpoint)
        call = asyncio.ensure_future(client.call(lambda call_id: ListModels(call_id=call_id), timeout=30))
        identity, frame = await peer.recv_multipart()
        call_id = call_decoder().decode(frame).call_id
        for frames in GARBAGE:
            await peer.send_multipart([identity, *frames])
        await peer.send_multipart([identity, encode(CallFailed(call_id=call_id, code="not_found", message="!"))])
        with pytest.raises(APIError, match="!"):
            await call
        client.close()

        located = Located(call_id="c", model_id="m", endpoint=endpoint, instance_id="i")
        worker = WorkerClient(ctx, located, silence_timeout=30)
        stream = await worker.open(GenerateRequest(request_id="g", prompt="hi"), connect_timeout=30)
        identity, _ = await peer.recv_multipart()
        for frames in GARBAGE:
            await peer.send_multipart([identity, *frames])
        done = Finished(request_id="g", finish_reason="stop", usage=Usage(prompt_tokens=1, completion_tokens=0))
        # One message, a frame per event (as a worker's step sends them): an undecodable frame is dropped alone.
        await peer.send_multipart([identity, b"\xc1not msgpack", encode(done)])
        assert await stream.next() == done
        worker.close()

    with_peer(scenario)


def test_a_silent_worker_ends_the_stream_with_a_timeout_and_a_talking_one_does_not():
    async def scenario(ctx, peer, endpoint):
        located = Located(call_id="c", model_id="m", endpoint=endpoint, instance_id="i")
        worker = WorkerClient(ctx, located, silence_timeout=0.5)
        talking = await worker.open(GenerateRequest(request_id="t", prompt="hi"), connect_timeout=30)
        silent = await worker.open(GenerateRequest(request_id="s", prompt="hi"), connect_timeout=30)
        identity, _ = await peer.recv_multipart()
        await peer.recv_multipart()
        loop = asyncio.get_running_loop()
        started = loop.time()
        for i in range(8):  # a token every 0.2s for 1.6s: longer than the timeout, no gap as long
            chunk = TextChunk(request_id="t", text=str(i), completion_tokens=i + 1)
            await peer.send_multipart([identity, encode(chunk)])
            assert await talking.next() == chunk
            last = loop.time()
            await asyncio.sleep(0.2)
        failure = await silent.next()  # waited on only now: its worker has said nothing since it was sent
        assert (failure.code, loop.time() - started < 5) == ("timeout", True)
        assert "sent nothing for" in failure.message
        assert (await talking.next()).code == "timeout"  # now it too stays silent past the timeout
        assert loop.time() - last >= 0.5  # a timeout counts from the last event heard
        worker.close()

    with_peer(scenario)
