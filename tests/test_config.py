import pytest

from protocol.launch import EngineSettings, LlamaCppSettings
from supervisor.config import load_config
from worker.backends import ModelToLoad, load_engine


def write(tmp_path, text):
    path = tmp_path / "models.yaml"
    path.write_text(text)
    return path


def test_resolves_ids_aliases_and_the_default(tmp_path):
    config = load_config(
        write(
            tmp_path,
            "model_store: store\nmodels:\n"
            "  - {id: a, aliases: [first], source: local-a}\n"
            "  - {id: b, source: org/repo, memory_gb: 2}\n"
            "  - {id: c, source: ./dir, draft_model: first}\n"
            "  - {id: d, source: local-d, draft_model: ./small}\n",
        )
    )
    assert config.resolve("first").id == "a"
    assert config.resolve("").id == "a"  # no model named: the first one
    assert config.resolve("zzz") is None
    assert config.source_of(config.models["a"]) == str(tmp_path / "store" / "local-a")
    assert config.source_of(config.models["b"]) == "org/repo"  # a hub repo id, for mlx-lm to fetch
    assert config.source_of(config.models["c"]) == str(tmp_path / "dir")
    # A draft names a configured model (its source is used) or a source of its own.
    assert config.draft_source_of(config.models["c"]) == str(tmp_path / "store" / "local-a")
    assert config.draft_source_of(config.models["d"]) == str(tmp_path / "small")
    assert config.draft_source_of(config.models["a"]) is None


def test_a_gguf_model_may_be_a_bundled_file_with_a_draft(tmp_path):
    config = load_config(
        write(
            tmp_path,
            "models:\n  - {id: g, source: 'bundled:smollm2-135m-instruct', type: gguf, draft_model: ./small.gguf,"
            " llama_cpp: {parallel: 2, threads: 1}}\n",
        )
    )
    spec = config.models["g"]
    assert config.source_of(spec).endswith("SmolLM2-135M-Instruct.Q4_1.gguf")  # the packaged file, not a copy
    assert config.draft_source_of(spec) == str(tmp_path / "small.gguf")
    assert spec.llama_cpp == LlamaCppSettings(parallel=2, threads=1)


def test_a_standalone_gguf_worker_refuses_the_mlx_engines_settings_before_starting_llama_server(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"")
    with pytest.raises(ValueError, match=r"engine\.kv_bits: MLX engine settings"):
        load_engine(ModelToLoad(str(gguf), "gguf"), EngineSettings(kv_bits=8))


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("models:\n  - {id: a, source: x, memroy_gb: 3}\n", "memroy_gb"),
        ("models:\n  - {id: a, source: x}\n  - {id: b, source: y, aliases: [a]}\n", "used twice"),
        ("models:\n  - {id: a, source: x, type: music}\n", "not supported"),
        ("models:\n  - {id: a, source: x, llama_cpp: {parallel: 2}}\n", "type gguf only"),
        ("models:\n  - {id: a, source: x.gguf, type: gguf, llama_cpp: {parallel: 0}}\n", "at least 1"),
        ("models:\n  - {id: a, source: x.gguf, type: gguf, llama_cpp: {stream_interval_ms: -5}}\n", "between 0"),
        ("models:\n  - {id: a, source: x.gguf, type: gguf, engine: {kv_bits: 4}}\n", "engine.kv_bits: MLX engine"),
        ("models:\n  - {id: a, source: x.gguf, type: gguf, engine: {prompt_cache_dir: /c}}\n", "prompt_cache_dir"),
        ("models:\n  - {id: a, source: org/repo}\n", "set memory_gb"),
        ("memory_budget_gb: 0\nmodels:\n  - {id: a, source: x}\n", "memory_budget_gb"),
        ("models: []\n", "no models"),
        ("default_model: nope\nmodels:\n  - {id: a, source: x}\n", "default_model"),
        ("models: [\n", "models.yaml"),
        ("models:\n  - {id: a, source: x, draft_model: org/small}\n", "its draft"),
        ("models:\n  - {id: a, source: x, engine: {num_draft_tokens: 0}}\n", "num_draft_tokens"),
        ("models:\n  - {id: a, source: x, type: embedding, draft_model: b}\n", "llm and gguf only"),
        ("fallback_model: nope\nmodels:\n  - {id: a, source: x}\n", "fallback_model"),
        ("defaults: {temperature: 3}\nmodels:\n  - {id: a, source: x}\n", "temperature 3"),
        ("presets: {p: {max_tokens: 0}}\nmodels:\n  - {id: a, source: x}\n", "max_tokens 0"),
        ("presets: {p: {temprature: 1}}\nmodels:\n  - {id: a, source: x}\n", "temprature"),
        ("models:\n  - {id: a, source: x, defaults: {top_p: 0}}\n", "top_p 0"),
    ],
)
def test_bad_configs_are_refused_with_the_reason(tmp_path, text, complaint):
    with pytest.raises(ValueError, match=complaint):
        load_config(write(tmp_path, text))


def test_names_resolve_in_the_seeds_order_alias_wildcard_tier(tmp_path):
    config = load_config(
        write(
            tmp_path,
            "claude_tiers: {haiku: small, sonnet: b}\nmodels:\n"
            "  - {id: a, aliases: [small, 'gpt-*'], source: x}\n"
            "  - {id: b, aliases: ['claude-3-*'], source: y}\n"
            "  - {id: c, aliases: ['claude-opus-*', 'claude-3-5-haiku-20241022'], source: z}\n",
        )
    )
    assert config.resolve("claude-3-5-haiku-20241022").id == "c"  # an alias first
    assert config.resolve("claude-3-haiku-20240307").id == "b"  # then a wildcard, before the haiku tier
    assert config.resolve("claude-haiku-4-5").id == "a"  # then a tier, by the alias it names
    assert config.resolve("claude-sonnet-4-5-20250929").id == "b"
    assert config.resolve("claude-opus-4-1").id == "c"
    assert config.resolve("gpt-4o").id == "a"
    assert config.resolve("gpt") is None and config.resolve("llama") is None
    assert "known: a, b, c" in config.why_unknown("llama")


def test_the_fallback_model_answers_unknown_names_only_when_asked(tmp_path):
    config = load_config(
        write(
            tmp_path,
            "fallback_model: second\nmodels:\n  - {id: a, source: x}\n  - {id: b, aliases: [second], source: y}\n",
        )
    )
    assert config.resolve("llama") is None
    assert config.resolve("llama", fallback=True).id == "b"
    assert config.resolve("a", fallback=True).id == "a"
    assert config.allows(config.models["a"], ["llama"]) is False  # an allowed list never falls back


def test_an_unrouted_claude_tier_says_which_tiers_exist(tmp_path):
    config = load_config(write(tmp_path, "claude_tiers: {sonnet: a}\nmodels:\n  - {id: a, source: x}\n"))
    assert config.resolve("claude-sonnet-4-5").id == "a"
    assert config.resolve("claude-opus-4-1") is None
    assert (
        config.why_unknown("claude-opus-4-1") == "no local model serves the Claude opus tier (configured tiers: sonnet)"
    )
    assert "names no Claude tier" in config.why_unknown("claude-instant-1")


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("claude_tiers: {gigantic: a}\nmodels:\n  - {id: a, source: x}\n", "unknown tier"),
        ("claude_tiers: {opus: nope}\nmodels:\n  - {id: a, source: x}\n", "claude_tiers.opus"),
        ("models:\n  - {id: a, source: x, aliases: ['c-*']}\n  - {id: b, source: y, aliases: ['c-*']}\n", "used twice"),
    ],
)
def test_bad_routing_config_is_refused(tmp_path, text, complaint):
    with pytest.raises(ValueError, match=complaint):
        load_config(write(tmp_path, text))
