"""One model sharded over two worker processes with mx.distributed (ring over 127.0.0.1): it answers as the same
model in one process does, token for token; a rank that dies takes every rank down and the next request starts
them again; unload frees every rank. The model is a tiny random-weight Llama with head counts 2 ranks divide."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
from openai import OpenAI

from supervisor.config import load_config
from tests.conftest import MODEL
from tests.harness import Server, gone, killed_mid_stream, wait_until, write_config
from tests.tiny_llama import build_tiny_llama

PROMPTS = ["Hello", "Tell me about the sea.", "Count to five."]


@pytest.fixture(scope="module")
def store(tmp_path_factory, model_store):
    # An untied head: random weights tied to the embedding mostly repeat the prompt's last token.
    build_tiny_llama(model_store / "shardable-llama", model_store / MODEL, tie_word_embeddings=False)
    return model_store


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, store):
    config = write_config(
        tmp_path_factory.mktemp("sharded") / "models.yaml",
        store,
        [
            {"id": "whole", "source": "shardable-llama", "memory_gb": 0.3},
            {"id": "halves", "source": "shardable-llama", "shard": {"ranks": 2, "mode": "tensor"}},
        ],
        crash_limit=10,
    )
    srv = Server(config).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(sharded):
    return OpenAI(base_url=f"{sharded.url}/v1", api_key="unused", max_retries=0, timeout=180)


def ask(client: OpenAI, model: str, prompt: str, **options) -> str:
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=16, **options
    )
    return reply.choices[0]


def ranks(server: Server, model_id: str) -> list[psutil.Process]:
    return [psutil.Process(r.pid) for r in server.models()[model_id].ranks]


def test_sharded_greedy_output_equals_the_whole_model_token_for_token(sharded, client):
    whole = [ask(client, "whole", p, temperature=0, logprobs=True) for p in PROMPTS]
    # Concurrently: the sequences share one batch on both ranks.
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        halves = list(pool.map(lambda p: ask(client, "halves", p, temperature=0, logprobs=True), PROMPTS))
    for one, two in zip(whole, halves, strict=True):
        assert [t.token for t in two.logprobs.content] == [t.token for t in one.logprobs.content]
        assert two.message.content == one.message.content
    info = sharded.models()["halves"]
    assert [r.rank for r in info.ranks] == [0, 1] and info.pid == info.ranks[0].pid
    assert all(r.memory_bytes > 0 for r in info.ranks)
    ps = sharded.ctl("ps")
    assert ps.returncode == 0, ps.stderr
    [row] = [line for line in ps.stdout.splitlines() if line.startswith("halves")]
    assert "2 tensor" in row and f"{info.ranks[0].pid},{info.ranks[1].pid}" in row


def test_sharded_streaming_stop_sequences_and_seeded_sampling(sharded, client):
    full = ask(client, "halves", PROMPTS[1], temperature=0).message.content
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    stream = client.chat.completions.create(
        model="halves", messages=[{"role": "user", "content": PROMPTS[1]}], max_tokens=16, temperature=0,
        stop=[stop], stream=True,
    )  # fmt: skip
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full[: full.index(stop)]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    # The prompt cache: the same prompt again starts from the cached prefix, on every rank alike.
    again = client.chat.completions.create(
        model="halves", messages=[{"role": "user", "content": PROMPTS[1]}], max_tokens=16, temperature=0
    )
    assert again.usage.prompt_tokens_details.cached_tokens > 0
    assert again.choices[0].message.content == full
    # Sampling draws alike on every rank, so the ranks stay in step; a seed makes it repeatable.
    first, second = (ask(client, "halves", PROMPTS[0], temperature=0.9, seed=7).message.content for _ in range(2))
    assert first == second
    assert (
        ask(client, "halves", PROMPTS[2], temperature=0).message.content
        == ask(client, "whole", PROMPTS[2], temperature=0).message.content
    )


def test_killing_rank_1_mid_stream_stops_every_rank_and_the_next_request_starts_them_again(sharded, client):
    ask(client, "halves", PROMPTS[0], temperature=0)
    before = ranks(sharded, "halves")
    crashes = sharded.models()["halves"].crashes
    error = killed_mid_stream(client, "halves", PROMPTS[1], before[1])
    assert error is not None and error.code == "worker_crashed"
    assert wait_until(lambda: all(gone(p) for p in before), timeout=30), "a rank outlived the one killed"
    # The processes gone, the supervisor may not have seen the exit yet: the crash is counted once it has.
    assert wait_until(lambda: sharded.models()["halves"].crashes > crashes, timeout=30)
    info = sharded.models()["halves"]
    assert info.crashes == crashes + 1  # the model crashed once, not once per rank
    assert f"rank 1 (pid {before[1].pid}) killed by SIGKILL" in info.last_error
    assert ask(client, "halves", PROMPTS[0], temperature=0).message.content
    assert len(ranks(sharded, "halves")) == 2


def test_unload_stops_every_rank_and_returns_their_memory(sharded, client):
    ask(client, "halves", PROMPTS[0], temperature=0)
    processes = ranks(sharded, "halves")
    used, charged = sharded.models()[""].used_bytes, sharded.models()["halves"].charged_bytes
    result = sharded.ctl("unload", "halves")
    assert result.returncode == 0, result.stderr
    assert all(gone(p) for p in processes)
    info = sharded.models()["halves"]
    assert info.state == "stopped" and info.ranks == [] and info.charged_bytes == 0
    assert sharded.models()[""].used_bytes == used - charged


@pytest.mark.parametrize(
    ("shard", "message"),
    [
        ({"ranks": 1}, "at least 2 ranks"),
        ({"ranks": 2, "mode": "pipeline"}, "no pipeline sharding for 'llama'"),
        ({"ranks": 3}, "num_attention_heads is 4, which 3 ranks cannot divide"),
        ({"ranks": 2, "backend": "tcp"}, "shard.backend 'tcp' is not one of ring, jaccl, mpi"),
        ({"ranks": 2, "hosts": ["b"]}, "shard.hosts names hosts, but the config lists no hosts"),
    ],
)
def test_a_shard_that_cannot_work_is_refused_with_the_reason(tmp_path, store, shard, message):
    model = {"id": "m", "source": "shardable-llama", "shard": shard, "engine": {"prompt_cache_mb": 0}}
    config = write_config(tmp_path / "models.yaml", store, [model])
    with pytest.raises(ValueError, match=message):
        load_config(config)
