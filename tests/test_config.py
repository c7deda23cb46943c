import pytest

from supervisor.config import load_config


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


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("models:\n  - {id: a, source: x, memroy_gb: 3}\n", "memroy_gb"),
        ("models:\n  - {id: a, source: x}\n  - {id: b, source: y, aliases: [a]}\n", "used twice"),
        ("models:\n  - {id: a, source: x, type: tts}\n", "not supported"),
        ("models:\n  - {id: a, source: org/repo}\n", "set memory_gb"),
        ("memory_budget_gb: 0\nmodels:\n  - {id: a, source: x}\n", "memory_budget_gb"),
        ("models: []\n", "no models"),
        ("default_model: nope\nmodels:\n  - {id: a, source: x}\n", "default_model"),
        ("models: [\n", "models.yaml"),
        ("models:\n  - {id: a, source: x, draft_model: org/small}\n", "its draft"),
        ("models:\n  - {id: a, source: x, engine: {num_draft_tokens: 0}}\n", "num_draft_tokens"),
        ("models:\n  - {id: a, source: x, type: embedding, draft_model: b}\n", "llm only"),
    ],
)
def test_bad_configs_are_refused_with_the_reason(tmp_path, text, complaint):
    with pytest.raises(ValueError, match=complaint):
        load_config(write(tmp_path, text))
