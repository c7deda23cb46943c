"""A model sharded over several worker processes with mx.distributed: every rank holds a part of it, and every
forward pass is a collective, so every rank must make the same model calls in the same order.

Rank 0 is the worker gateways talk to; it runs the batch engine as any worker does, through `LeaderEngine`,
which notes each call that changes the engine's work (a request admitted, an abort) and, before each step,
broadcasts those notes to the other ranks. A `Follower` (ranks > 0) replays them on its own engine and takes the
same step. The engines are deterministic given the same calls (the same requests, the same random seed, the same
cache decisions: tensor-parallel ranks hold equal shares of the KV cache), so mlx-lm's BatchGenerator batches a
sharded model as it batches any other. The broadcast is an all_sum of a byte frame to which only rank 0
contributes; no transport of our own. A rank that dies or hangs stalls the others in their next collective: the
supervisor sees the exit (or the missed pings) and stops every rank.
"""

from __future__ import annotations

import json
import logging
import os
import random
import tempfile
import time

import mlx.core as mx
import msgspec
import numpy as np

from protocol.errors import ErrorCode
from protocol.generation import GenerateRequest
from protocol.launch import ShardLaunch
from worker.backends import EngineFailed
from worker.model_loader import LoadedModel, context_length_of

log = logging.getLogger("worker.lockstep")
FRAME_BYTES = 4096  # one all_sum carries a turn this long; a longer one (a long prompt) takes a second
LENGTH_BYTES = 4


class Admit(msgspec.Struct, tag="admit"):
    request: GenerateRequest


class AbortOne(msgspec.Struct, tag="abort"):
    request_id: str
    code: ErrorCode
    reason: str


class AbortAll(msgspec.Struct, tag="abort_all"):
    code: ErrorCode
    reason: str


class Turn(msgspec.Struct):
    """What rank 0 did to its engine since its last step; a step follows."""

    calls: list[Admit | AbortOne | AbortAll]


_turn_decoder = msgspec.msgpack.Decoder(Turn)


def join_group(shard: ShardLaunch) -> mx.distributed.Group:
    """Join the model's group from the environment mlx.launch would give this rank (MLX_RANK, MLX_HOSTFILE for
    ring, and the config's `shard.env` for jaccl or mpi)."""
    os.environ.update(shard.env)
    os.environ["MLX_RANK"] = str(shard.rank)
    hostfile = None
    if shard.backend == "ring":
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(shard.ring_hosts, f)
        hostfile = os.environ["MLX_HOSTFILE"] = f.name
    try:
        started = time.perf_counter()
        group = mx.distributed.init(strict=True, backend=shard.backend)
    finally:
        if hostfile:
            os.unlink(hostfile)  # read by init
    if group.size() != shard.ranks or group.rank() != shard.rank:
        raise RuntimeError(f"joined as rank {group.rank()} of {group.size()}, not {shard.rank} of {shard.ranks}")
    took = time.perf_counter() - started
    log.info("rank %d of %d joined (%s) in %.1fs", shard.rank, shard.ranks, shard.backend, took)
    return group


def load_sharded(source: str, context_length: int | None, shard: ShardLaunch, group) -> LoadedModel:
    """This rank's part of the model, by mlx-lm's sharded_load (which ends with a barrier: every rank has loaded)."""
    from mlx_lm.utils import sharded_load

    started = time.perf_counter()
    tensor, pipeline = (group, None) if shard.mode == "tensor" else (None, group)
    model, tokenizer, config = sharded_load(source, pipeline, tensor, return_config=True)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        context_length=context_length_of(config, tokenizer, context_length),
        load_seconds=time.perf_counter() - started,
        compute=f"{shard.mode}-parallel over {shard.ranks} ranks ({shard.backend})",
        config=config,
        source=source,
    )


def load_sharded_engine(source: str, context_length: int | None, shard: ShardLaunch, options):
    """(LeaderEngine or Follower, loaded model) for this rank."""
    from worker.batch_engine import BatchEngine

    group = join_group(shard)
    loaded = load_sharded(source, context_length, shard, group)
    engine = BatchEngine(loaded, options)
    # Samplers draw from MLX's global random state: every rank starts it alike, so they draw alike.
    seed = random.getrandbits(31) if group.rank() == 0 else 0
    mx.random.seed(int(_all_sum(group, np.array([seed], np.int32))[0]))
    return (LeaderEngine(engine, group) if group.rank() == 0 else Follower(engine, group)), loaded


def _all_sum(group, values: np.ndarray) -> np.ndarray:
    summed = mx.distributed.all_sum(mx.array(values), group=group, stream=mx.cpu)
    return np.array(summed)


def all_present(group) -> bool:
    """Whether every rank took part in this collective. MLX's ring does not raise when a peer has died: the
    dead rank's share of a sum is simply missing, so every rank adds 1 and the total says who was there."""
    return int(_all_sum(group, np.ones(1, np.int32))[0]) == group.size()


def broadcast(group, payload: bytes | None) -> bytes:
    """Rank 0's `payload` on every rank (the others pass None): an all_sum to which only rank 0 adds."""
    frame = np.zeros(FRAME_BYTES, np.uint8)
    if payload is not None:
        head = len(payload).to_bytes(LENGTH_BYTES, "little") + payload[: FRAME_BYTES - LENGTH_BYTES]
        frame[: len(head)] = np.frombuffer(head, np.uint8)
    got = _all_sum(group, frame)
    length = int.from_bytes(got[:LENGTH_BYTES].tobytes(), "little")
    data = got[LENGTH_BYTES : LENGTH_BYTES + length].tobytes()
    if (rest := length - len(data)) > 0:
        more = np.zeros(rest, np.uint8)
        if payload is not None:
            more[:] = np.frombuffer(payload[len(data) :], np.uint8)
        data += _all_sum(group, more).tobytes()
    return data


class LeaderEngine:
    """Rank 0's engine: the batch engine, with every call that changes its work sent to the other ranks."""

    def __init__(self, engine, group):
        self._engine = engine
        self._group = group
        self._calls: list[Admit | AbortOne | AbortAll] = []

    def __getattr__(self, name):  # busy, in_flight, queued, cache_bytes, vocab_size, persist: the engine's own
        return getattr(self._engine, name)

    def submit(self, request) -> bool:
        self._calls.append(Admit(request))
        return self._engine.submit(request)

    def abort(self, request_id: str, emit, code=ErrorCode.ABORTED, reason="aborted by the client") -> bool:
        self._calls.append(AbortOne(request_id, code, reason))
        return self._engine.abort(request_id, emit, code, reason)

    def abort_all(self, emit, code: ErrorCode, reason: str) -> None:
        self._calls.append(AbortAll(code, reason))
        self._engine.abort_all(emit, code, reason)

    def step(self, emit) -> None:
        calls, self._calls = self._calls, []
        broadcast(self._group, msgspec.msgpack.encode(Turn(calls=calls)))
        events = []
        self._engine.step(events.append)
        if not all_present(self._group):
            # A lost rank's share of every collective is missing, so this step's tokens are garbage: none is sent.
            raise EngineFailed(f"a rank of this sharded model is gone ({self._group.size()} ranks were joined)")
        for event in events:
            emit(event)


def _discard(event) -> None:
    """A follower's events: rank 0 sends the same ones to the gateway."""


class Follower:
    """A rank > 0: replays rank 0's turns on its own engine, forever (the supervisor ends it)."""

    def __init__(self, engine, group):
        self._engine = engine
        self._group = group

    def run(self) -> None:
        while True:
            try:
                turn = _turn_decoder.decode(broadcast(self._group, None))
            except Exception as exc:  # the ring broke: rank 0 is gone (stopped, or crashed)
                log.warning("lost rank 0 (%s): exiting", exc)
                return
            for call in turn.calls:
                try:
                    self._replay(call)
                except Exception:  # rank 0 contained the same failure for that request
                    log.exception("replaying %s failed", type(call).__name__)
            try:
                self._engine.step(_discard)
            except Exception:  # rank 0's step failed alike: it aborts every request, which comes next
                log.exception("engine step failed")
            if not all_present(self._group):
                log.warning("lost rank 0 or another rank: exiting")
                return

    def _replay(self, call) -> None:
        if isinstance(call, Admit):
            self._engine.submit(call.request)
        elif isinstance(call, AbortOne):
            self._engine.abort(call.request_id, _discard, call.code, call.reason)
        else:
            self._engine.abort_all(_discard, call.code, call.reason)


def run_follower(launch) -> int:
    """A rank > 0 as a process: load its part, then follow rank 0 until the supervisor stops it. It has no sockets
    of ours and no state to save, so SIGTERM ends it at once (Python's default); it goes with its supervisor when
    the stdin lifeline closes."""
    import sys
    import threading

    from worker.backends import ModelToLoad, load_engine
    from worker.memory import bound_memory

    if launch.exit_with_stdin:

        def lifeline() -> None:
            while sys.stdin.buffer.read(4096):
                pass
            log.warning("supervisor gone (lifeline closed): exiting")
            os._exit(1)

        threading.Thread(target=lifeline, name="lifeline", daemon=True).start()
    logging.getLogger("worker.sequence").setLevel(logging.WARNING)  # rank 0 logs each request's end
    model = ModelToLoad(launch.source, launch.model_type, launch.context_length, None, launch.shard)
    follower, loaded = load_engine(model, launch.engine)
    bound_memory(launch.memory_charge_bytes, launch.engine.prompt_cache_bytes)
    log.info("rank %d following rank 0 (%s, loaded in %.1fs)", launch.shard.rank, loaded.compute, loaded.load_seconds)
    follower.run()
    return 1  # it returns only when rank 0 is gone
