"""The prompt cache on disk, as an operator sees it: a long prefix outlives its worker's unload and load, and a
damaged cache file is skipped, never served."""

from __future__ import annotations

import pytest
from openai import OpenAI

from tests.conftest import MODEL
from tests.harness import Server, write_config

# About 2,000 tokens of a system prompt shared by every request below.
PREFIX = "You answer questions about this atlas. " + " ".join(
    f"Fact {i}: river {i} flows north into lake {i * 7 % 13}." for i in range(125)
)


@pytest.fixture(scope="module")
def disk_server(tmp_path_factory, model_store):
    cache_dir = tmp_path_factory.mktemp("prompt-cache")
    config = write_config(
        tmp_path_factory.mktemp("disk") / "models.yaml",
        model_store,
        [
            {
                "id": "atlas",
                "source": MODEL,
                "context_length": 4096,
                "memory_gb": 0.5,
                "engine": {"prompt_cache_dir": str(cache_dir), "prompt_cache_disk_mb": 1024},
            }
        ],
        shutdown_grace_seconds=60,  # the drain writes the cache; a loaded machine writes slowly
    )
    server = Server(config).start()
    try:
        yield server, cache_dir
    finally:
        server.stop()


def ask(server: Server, question: str):
    client = OpenAI(base_url=f"{server.url}/v1", api_key="not-needed", max_retries=0, timeout=1000)
    messages = [{"role": "system", "content": PREFIX}, {"role": "user", "content": question}]
    return client.chat.completions.create(model="atlas", messages=messages, temperature=0, max_tokens=8)


def cached_tokens(reply) -> int:
    details = reply.usage.prompt_tokens_details
    return (details.cached_tokens or 0) if details else 0


def reload(server: Server) -> None:
    for command in ("unload", "load"):
        result = server.ctl(command, "atlas")
        assert result.returncode == 0, result.stderr


@pytest.mark.timeout(1200)  # one cold 2,000-token prefill: minutes on a busy 2-core machine
def test_a_long_prefix_outlives_unload_and_a_truncated_file_is_skipped_with_a_log_line(disk_server):
    server, cache_dir = disk_server
    cold = ask(server, "Which river flows into lake 3?")
    assert cold.usage.prompt_tokens >= 2000 and cached_tokens(cold) < 100

    reload(server)  # the drain wrote the prompt cache; the new worker read its index
    files = sorted(cache_dir.rglob("*.safetensors"))
    assert files and not [f for f in files if ".partial" in f.name]
    warm = ask(server, "Which river flows into lake 5?")
    assert warm.choices[0].message.content
    assert cached_tokens(warm) >= 1900, warm.usage
    assert "restored a" in server.log_text()

    assert server.ctl("unload", "atlas").returncode == 0
    files = sorted(cache_dir.rglob("*.safetensors"), key=lambda f: f.stat().st_mtime)
    assert len(files) >= 2  # the first answer's entry, restored, and the second's, written at this drain
    damaged = files[-1]
    with damaged.open("r+b") as f:
        f.truncate(damaged.stat().st_size // 2)
    assert server.ctl("load", "atlas").returncode == 0  # the index is read as the worker starts
    assert f"prompt cache file {damaged.name} skipped and removed: its size is not" in server.log_text()
    assert not damaged.exists()
    after = ask(server, "Which river flows into lake 7?")  # served by an intact file
    assert after.choices[0].message.content
    assert cached_tokens(after) >= 1900, after.usage


def test_entries_the_memory_tier_evicts_go_to_disk_and_serve_the_next_request(model_store, tmp_path):
    from protocol.generation import ChatMessage, Finished, GenerateRequest, SamplingParams
    from protocol.launch import EngineSettings
    from tests.harness import wait_until
    from worker.batch_engine import BatchEngine
    from worker.model_loader import load_model

    # 1 MB holds no entry beside a live KV cache: every entry is evicted as it is stored, so written to disk.
    options = EngineSettings(prompt_cache_mb=1, prompt_cache_dir=str(tmp_path), prefill_step_size=256)
    engine = BatchEngine(load_model(str(model_store / MODEL), context_length=2048), options)
    system = PREFIX[:800]  # about 200 tokens

    def usage(question: str):
        messages = [ChatMessage(role="system", content=system), ChatMessage(role="user", content=question)]
        engine.submit(GenerateRequest(request_id=question, messages=messages, sampling=SamplingParams(max_tokens=4)))
        events = []
        while engine.busy:
            engine.step(events.append)
        return next(e for e in events if isinstance(e, Finished)).usage

    first = usage("Which river flows into lake 3?")
    assert engine.cache_bytes()[1] == 0  # nothing stayed in memory
    assert wait_until(lambda: len(list(tmp_path.rglob("*.safetensors"))) >= 1, timeout=60)
    second = usage("Which river flows into lake 5?")
    assert second.cached_tokens >= first.prompt_tokens - 20, (first, second)


# -- the disk tier on its own: KV states of a two-layer cache, no model ------------------------------------------


def kv_state(tokens: int, seed: int) -> list:
    import mlx.core as mx
    from mlx_lm.models.cache import KVCache

    mx.random.seed(seed)
    layers = []
    for _ in range(2):
        layer = KVCache()
        layer.update_and_fetch(mx.random.normal((1, 2, tokens, 8)), mx.random.normal((1, 2, tokens, 8)))
        layers.append(layer)
    mx.eval([c.state for c in layers])
    return layers


def test_the_disk_tier_keeps_its_budget_reads_its_index_and_skips_what_it_cannot_use(tmp_path, caplog):
    import mlx.core as mx

    from worker.disk_cache import DiskCache

    disk = DiskCache(tmp_path, budget_bytes=150_000, identity="a" * 64, layers=2)
    a, b, c = [list(range(100)), list(range(100)) + [7] * 50, [5] * 120]
    for n, tokens in enumerate((a, b, c)):
        state = kv_state(len(tokens), seed=n)
        disk.save(tokens, state, sum(x.nbytes for x in state), limit_pending=1 << 30)
        assert disk.flush(60)
    # Each file holds a 256-token KV buffer (64 KB): the budget keeps the two newest.
    assert len(disk) == 2 and disk.usable_prefix([*a, 1]) == (disk.key(b), 100)

    again = DiskCache(tmp_path, budget_bytes=150_000, identity="a" * 64, layers=2)  # a new worker: the index
    assert sorted(e.tokens for e in again._entries.values()) == sorted([b, c])
    key, length = again.usable_prefix(b)  # the whole prompt is cached: all but its last token
    assert (key, length) == (again.key(b), len(b) - 1)
    tokens, state = again.restore(key)
    expected = kv_state(len(b), seed=1)
    assert tokens == b and state[0].offset == len(b)
    assert mx.array_equal(state[1].state[0][..., : len(b), :], expected[1].state[0][..., : len(b), :])

    other = DiskCache(tmp_path, budget_bytes=150_000, identity="b" * 64, layers=2)  # another model's folder
    assert len(other) == 0 and len(DiskCache(tmp_path, 150_000, "a" * 64, layers=2)) == 2
    path = again._entries[again.key(c)].path
    path.write_bytes(path.read_bytes()[:-10])
    with caplog.at_level("WARNING", logger="worker.disk_cache"):
        third = DiskCache(tmp_path, budget_bytes=150_000, identity="a" * 64, layers=2)
    assert len(third) == 1 and not path.exists()
    assert f"{path.name} skipped and removed: its size is not" in caplog.text


def test_a_state_written_under_other_kv_settings_is_a_miss_kept_for_a_worker_of_those_settings(tmp_path, caplog):
    from worker.disk_cache import DiskCache, kv_settings

    def tier(bits: int | None, group_size: int = 64) -> DiskCache:
        return DiskCache(tmp_path, 1 << 20, "a" * 64, layers=2, kv=kv_settings(bits, group_size))

    tokens = list(range(100))
    eight = tier(8)
    state = kv_state(len(tokens), seed=0)
    eight.save(tokens, state, sum(x.nbytes for x in state), limit_pending=1 << 30)
    assert eight.flush(60) and eight.usable_prefix(tokens) == (eight.key(tokens), 99)

    with caplog.at_level("DEBUG", logger="worker.disk_cache"):
        for other in (tier(4), tier(None), tier(8, group_size=32)):  # a worker restarted with other kv settings
            assert other.usable_prefix(tokens) == (None, 0)
            assert len(other) == 1  # kept, and counted in the folder's budget
    assert "not offered: written at KV bits=8,group_size=64, not bits=4,group_size=64" in caplog.text
    again = tier(8)  # back to kv_bits 8: served again
    assert again.usable_prefix([*tokens, 1]) == (again.key(tokens), 100)
    tokens_back, restored = again.restore(again.key(tokens))
    assert tokens_back == tokens and restored[0].offset == len(tokens)
