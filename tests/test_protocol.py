"""The wire: round trips, malformed frames rejected at the boundary, version mismatch refused."""

from __future__ import annotations

import msgspec
import pytest
import zmq

from protocol import PROTOCOL_VERSION, DecodeError, encode, salvage_id
from protocol.control import (
    Hello,
    MemoryReport,
    Ping,
    Pong,
    Ready,
    Refused,
    from_worker_decoder,
    to_worker_decoder,
)
from protocol.ctl import (
    AddAlias,
    AliasEntry,
    AliasTable,
    CallFailed,
    EnsureLoaded,
    Located,
    ModelInfo,
    ModelList,
    call_decoder,
    reply_decoder,
)
from protocol.embedding import Embeddings, EmbedRequest, RerankRequest, RerankScores
from protocol.generation import (
    Abort,
    ChatMessage,
    Finished,
    GenerateRequest,
    GenerationError,
    SamplingDefaults,
    SamplingParams,
    TextChunk,
    TokenLogprob,
    ToolCall,
    ToolChoice,
    ToolSpec,
    TopLogprob,
    Usage,
    worker_inbound_decoder,
    worker_outbound_decoder,
)
from protocol.store import ConvertOptions, FileProgress, Pull, PullProgress, Pulls, StoredModel, StoreList

MEMORY_FIELDS = dict(mlx_active_bytes=1, mlx_peak_bytes=2, mlx_cache_bytes=3, rss_bytes=4)
MEMORY = MemoryReport(**MEMORY_FIELDS)
LOGPROB = TokenLogprob(token=" Paris", logprob=-0.1, top_logprobs=[TopLogprob(token=" Rome", logprob=-3.0)])

ROUND_TRIPS = [
    (
        worker_inbound_decoder(),
        GenerateRequest(
            request_id="r1",
            messages=[ChatMessage(role="user", content="hi")],
            sampling=SamplingParams(temperature=0.2, top_p=0.9, max_tokens=5, stop=["\n"], seed=7),
        ),
    ),
    (worker_inbound_decoder(), GenerateRequest(request_id="r2", prompt="once upon")),
    (
        worker_inbound_decoder(),
        GenerateRequest(
            request_id="r4", messages=[ChatMessage(role="user", content="?", images=[b"\x89PNG", b"\xff"])]
        ),
    ),
    (worker_inbound_decoder(), EmbedRequest(request_id="e1", inputs=["a", "b"], dimensions=128)),
    (worker_inbound_decoder(), RerankRequest(request_id="k1", query="q", documents=["a", "b"])),
    (worker_outbound_decoder(), Embeddings(request_id="e1", dimensions=2, vectors=b"\0" * 16, prompt_tokens=4)),
    (
        worker_outbound_decoder(),
        RerankScores(request_id="k1", scores=[0.5, -0.1], prompt_tokens=6, method="bi-encoder"),
    ),
    (worker_inbound_decoder(), Abort(request_id="r1")),
    (
        worker_inbound_decoder(),
        GenerateRequest(
            request_id="r3",
            prompt="once upon",
            sampling=SamplingParams(top_k=40, min_p=0.05, repetition_penalty=1.1, logprobs=True, top_logprobs=3),
        ),
    ),
    (
        worker_inbound_decoder(),
        GenerateRequest(
            request_id="r4",
            messages=[
                ChatMessage(role="assistant", tool_calls=[ToolCall(id="c1", name="f", arguments='{"a": 1}')]),
                ChatMessage(role="tool", content="42", tool_call_id="c1", name="f", images=[b"\x89PNG"]),
            ],
            tools=[ToolSpec(name="f", description="d", parameters={"type": "object"})],
            tool_choice=ToolChoice(mode="required", name="f"),
            json_schema={"type": "object", "properties": {"a": {"type": "integer"}}},
            count_only=True,
        ),
    ),
    (worker_outbound_decoder(), TextChunk(request_id="r1", text="Par", completion_tokens=1)),
    (
        worker_outbound_decoder(),
        TextChunk(
            request_id="r1",
            text="",
            completion_tokens=9,
            tool_calls=[ToolCall(id="c2", name="f", arguments="{}")],
            prompt_tokens=12,
            cached_tokens=4,
        ),
    ),
    (
        worker_outbound_decoder(),
        Finished(
            request_id="r1",
            finish_reason="stop",
            stop_sequence="END",
            usage=Usage(prompt_tokens=3, completion_tokens=2),
        ),
    ),
    (
        worker_outbound_decoder(),
        TextChunk(
            request_id="r1",
            text=" Paris",
            completion_tokens=2,
            logprobs=[LOGPROB],
        ),
    ),
    (
        worker_outbound_decoder(),
        Finished(request_id="r1", finish_reason="stop", usage=Usage(prompt_tokens=3, completion_tokens=2)),
    ),
    (
        worker_outbound_decoder(),
        Finished(
            request_id="r1",
            finish_reason="length",
            usage=Usage(prompt_tokens=30, completion_tokens=2, cached_tokens=9),
        ),
    ),
    (worker_outbound_decoder(), GenerationError(request_id="r1", code="worker_crashed", message="x", retryable=True)),
    (from_worker_decoder(), Hello(protocol_version=1, model_id="m", instance_id="i", pid=1, endpoint="ipc://x")),
    (
        from_worker_decoder(),
        Ready(instance_id="i", memory=MEMORY, context_length=8, load_seconds=0.5, device="cpu", mlx_version="0"),
    ),
    (
        from_worker_decoder(),
        Ready(
            instance_id="i",
            memory=MemoryReport(**MEMORY_FIELDS, kv_cache_bytes=5, prompt_cache_bytes=6),
            context_length=8,
            load_seconds=0.5,
            device="cpu",
            mlx_version="0",
            compute="cpu: openblas, float32",
        ),
    ),
    (from_worker_decoder(), Pong(call_id="c", instance_id="i", memory=MEMORY, in_flight=1, queued=0)),
    (to_worker_decoder(), Ping(call_id="c")),
    (to_worker_decoder(), Refused(instance_id="i", code="protocol_mismatch", message="no")),
    (call_decoder(), EnsureLoaded(call_id="c", model="tiny")),
    (reply_decoder(), Located(call_id="c", model_id="m", endpoint="ipc://x", instance_id="i")),
    (
        reply_decoder(),
        ModelList(
            call_id="c",
            models=[
                ModelInfo(
                    id="m",
                    aliases=["a"],
                    type="llm",
                    source="s",
                    state="ready",
                    context_length=8,
                    memory_estimate_bytes=1,
                    pid=3,
                )
            ],
        ),
    ),
    (reply_decoder(), CallFailed(call_id="c", code="model_not_found", message="no such model")),
    (call_decoder(), EnsureLoaded(call_id="c", model="tiny", preset="brief")),
    (
        reply_decoder(),
        Located(
            call_id="c",
            model_id="m",
            endpoint="ipc://x",
            instance_id="i",
            defaults=SamplingDefaults(temperature=0.0, max_tokens=3, stop=["END"], system_prompt="Be brief."),
        ),
    ),
    (call_decoder(), AddAlias(call_id="c", alias="gpt-4*", model="tiny")),
    (reply_decoder(), AliasTable(call_id="c", aliases=[AliasEntry(alias="gpt-4*", model="m", runtime=True)])),
    (call_decoder(), Pull(call_id="c", repo="org/x", revision="v1", convert=ConvertOptions(quantize=True, q_bits=8))),
    (
        reply_decoder(),
        Pulls(
            call_id="c",
            pulls=[
                PullProgress(
                    pull_id="pull-1",
                    repo="org/x",
                    revision="main",
                    name="x",
                    state="downloading",
                    commit="a" * 40,
                    files=[FileProgress(path="model.safetensors", size=9, done=4)],
                )
            ],
        ),
    ),
    (reply_decoder(), StoreList(call_id="c", store="/s", models=[StoredModel(name="x", size_bytes=9, partial=True)])),
]


@pytest.mark.parametrize(("decoder", "message"), ROUND_TRIPS, ids=lambda x: type(x).__name__)
def test_round_trip(decoder, message):
    assert decoder.decode(encode(message)) == message


def test_the_wire_carries_the_tag_not_the_class_name():
    raw = msgspec.msgpack.decode(encode(Abort(request_id="r")))
    assert raw == {"type": "abort", "request_id": "r"}


@pytest.mark.parametrize(
    "frame",
    [
        b"\xc1not msgpack",
        msgspec.msgpack.encode({"type": "no-such-message", "request_id": "r"}),
        msgspec.msgpack.encode({"type": "generate", "request_id": 5}),
        msgspec.msgpack.encode({"type": "finished", "request_id": "r"}),  # valid, but not for this socket
        msgspec.msgpack.encode(["generate", "r"]),
    ],
)
def test_malformed_frames_are_rejected(frame):
    with pytest.raises(DecodeError):
        worker_inbound_decoder().decode(frame)


def test_salvage_id_reads_the_id_from_a_rejected_frame():
    frame = msgspec.msgpack.encode({"type": "generate", "request_id": "abc", "prompt": 12})
    assert salvage_id(frame, "request_id") == "abc"
    assert salvage_id(b"\xc1", "request_id") is None


def test_newer_fields_are_ignored_by_older_peers():
    frame = msgspec.msgpack.encode({"type": "abort", "request_id": "r", "added_in_v2": True})
    assert worker_inbound_decoder().decode(frame) == Abort(request_id="r")


def exchange(endpoint: str, frame: bytes) -> bytes:
    """Send one frame on a fresh DEALER and return the one reply."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send(frame)
        assert sock.poll(10_000), f"no answer from {endpoint}"
        return sock.recv()
    finally:
        sock.close()


def test_supervisor_refuses_a_worker_speaking_another_version(server):
    hello = Hello(protocol_version=PROTOCOL_VERSION + 1, model_id="smollm2", instance_id="x", pid=1, endpoint="ipc://x")
    reply = to_worker_decoder().decode(exchange(f"ipc://{server.run_dir}/supervisor-workers.sock", encode(hello)))
    assert isinstance(reply, Refused)
    assert reply.code == "protocol_mismatch"
    assert f"version {PROTOCOL_VERSION + 1}" in reply.message


def test_supervisor_answers_a_malformed_call_with_its_call_id(server):
    frame = msgspec.msgpack.encode({"type": "ensure_loaded", "call_id": "c9", "model": ["not", "a", "str"]})
    reply = reply_decoder().decode(exchange(f"ipc://{server.run_dir}/supervisor.sock", frame))
    assert isinstance(reply, CallFailed)
    assert reply.call_id == "c9" and reply.code == "malformed_frame"


def test_worker_answers_a_malformed_request_with_its_request_id(server, client):
    client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Hi"}], max_tokens=1)
    frame = msgspec.msgpack.encode({"type": "generate", "request_id": "r7", "sampling": {"temperature": "hot"}})
    reply = worker_outbound_decoder().decode(exchange(f"ipc://{server.run_dir}/worker-smollm2.sock", frame))
    assert isinstance(reply, GenerationError)
    assert reply.request_id == "r7" and reply.code == "malformed_frame"
    assert "temperature" in reply.message
