"""What a request's model name and sampling fields become, as a client and an operator see it: the fallback
model for unknown names, aliases added at run time (kept across a restart), sampling defaults and presets (the
request's own fields win), and the ctl views that show them."""

from __future__ import annotations

import json
import re

import httpx
import openai
import pytest
from openai import OpenAI

from protocol import ErrorCode
from supervisor.config import load_config
from supervisor.fleet import Fleet, FleetError
from supervisor.orphans import WorkerRegistry

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(store_server):
    return OpenAI(base_url=f"{store_server.url}/v1", api_key="unused", max_retries=0, timeout=180)


def test_an_unknown_name_goes_to_the_fallback_model_which_names_itself(client):
    reply = client.chat.completions.create(model="gpt-4o", messages=QUESTION, max_tokens=2)
    assert reply.model == "other"  # the model that answered, not the name asked for


def test_without_a_fallback_model_an_unknown_name_is_not_found(tmp_path):
    config = tmp_path / "models.yaml"
    config.write_text("models:\n  - {id: a, source: x}\n  - {id: b, source: y}\n")
    fleet = Fleet(load_config(config), str(tmp_path), "ipc://unused", WorkerRegistry(tmp_path))
    with pytest.raises(FleetError) as unknown:
        fleet.slot("gpt-4o", fallback=True)
    assert unknown.value.code == ErrorCode.MODEL_NOT_FOUND
    config.write_text("fallback_model: b\nmodels:\n  - {id: a, source: x}\n  - {id: b, source: y}\n")
    fleet = Fleet(load_config(config), str(tmp_path), "ipc://unused", WorkerRegistry(tmp_path))
    assert fleet.slot("gpt-4o", fallback=True).spec.id == "b"
    with pytest.raises(FleetError) as unknown:  # a service that may not use the fallback model: still not found
        fleet.slot("gpt-4o", allowed=["a"], fallback=True)
    assert unknown.value.code == ErrorCode.MODEL_NOT_FOUND
    with pytest.raises(FleetError):  # operator commands never fall back: `ctl unload typo` unloads nothing
        fleet.slot("gpt-4o")


def test_a_preset_and_the_models_defaults_fill_what_the_request_leaves_out(store_server, client):
    # The model's defaults: 6 tokens (and greedy, from the global defaults).
    plain = client.chat.completions.create(model="smollm2", messages=QUESTION)
    assert plain.choices[0].finish_reason == "length" and plain.usage.completion_tokens == 6
    # The preset over them: 3 tokens; the request's own max_tokens over both.
    preset = {"extra_body": {"preset": "brief"}}
    brief = client.chat.completions.create(
        model="smollm2", messages=QUESTION, extra_headers={"X-Request-ID": "brief-1"}, **preset
    )
    assert brief.choices[0].finish_reason == "length" and brief.usage.completion_tokens == 3
    assert plain.choices[0].message.content.startswith(brief.choices[0].message.content)  # greedy: the same start
    own = client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=5, **preset)
    assert own.usage.completion_tokens == 5
    # The effective parameters are logged with the request id.
    lines = [json.loads(line) for line in store_server.log_text().splitlines() if '"request_id": "brief-1"' in line]
    (logged,) = [line for line in lines if line["msg"].startswith("sampling for")]
    assert logged["preset"] == "brief" and logged["sampling"]["max_tokens"] == 3
    assert logged["sampling"]["temperature"] == 0 and logged["model"] == "smollm2"


def test_a_presets_system_prompt_goes_first_unless_the_request_brings_one(client):
    def prompt_tokens(**kwargs) -> int:
        return client.chat.completions.create(model="smollm2", max_tokens=1, **kwargs).usage.prompt_tokens

    explicit = [{"role": "system", "content": "Answer in one word."}, *QUESTION]
    assert prompt_tokens(messages=QUESTION, extra_body={"preset": "terse"}) == prompt_tokens(messages=explicit)
    own = [{"role": "system", "content": "Be brief."}, *QUESTION]
    assert prompt_tokens(messages=own, extra_body={"preset": "terse"}) == prompt_tokens(messages=own)


def test_an_unknown_preset_is_a_400_that_names_the_presets(client):
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="smollm2", messages=QUESTION, extra_body={"preset": "verbose"})
    assert "unknown preset 'verbose' (presets: brief, terse)" in str(refused.value)


def aliases_of(server, model_id: str) -> list[str]:
    models = httpx.get(f"{server.url}/v1/models", timeout=30).json()["data"]
    return next(m["aliases"] for m in models if m["id"] == model_id)


def test_aliases_added_at_run_time_route_requests_and_survive_a_restart(store_server, client):
    base = f"{store_server.url}/api/v1/aliases"
    added = httpx.post(base, json={"alias": "gpt-4*", "model": "tiny"}, timeout=30)
    assert added.status_code == 201 and added.json() == {"alias": "gpt-4*", "model": "smollm2", "runtime": True}
    # The alias wins over the fallback model (`other`) that answered this name before.
    assert client.chat.completions.create(model="gpt-4o-mini", messages=QUESTION, max_tokens=2).model == "smollm2"
    assert aliases_of(store_server, "smollm2") == ["tiny", "gpt-4*"]

    # ctl shows it: a table without escape codes when not on a terminal, and JSON for scripts.
    ps = store_server.ctl("ps")
    assert ps.returncode == 0 and "\x1b" not in ps.stdout
    assert re.search(r"^smollm2\s+ready\s.*\stiny, gpt-4\*$", ps.stdout, re.MULTILINE), ps.stdout
    report = json.loads(store_server.ctl("ps", "--json").stdout)
    assert {m["id"]: m["aliases"] for m in report["models"]}["smollm2"] == ["tiny", "gpt-4*"]
    assert report["memory"]["budget_bytes"] == 4 * 1024**3

    store_server.restart()
    assert aliases_of(store_server, "smollm2") == ["tiny", "gpt-4*"]
    listed = httpx.get(base, timeout=30).json()["aliases"]
    assert {"alias": "gpt-4*", "model": "smollm2", "runtime": True} in listed
    assert {"alias": "tiny", "model": "smollm2", "runtime": False} in listed

    removed = httpx.delete(f"{base}/gpt-4*", timeout=30)
    assert removed.status_code == 200 and aliases_of(store_server, "smollm2") == ["tiny"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "says"),
    [
        ("POST", "", {"alias": "tiny", "model": "other"}, 409, "'tiny' is a name of smollm2 in the config file"),
        ("POST", "", {"alias": "other", "model": "smollm2"}, 409, "'other' is a name of other in the config file"),
        ("POST", "", {"alias": "new", "model": "nope"}, 404, "no configured model is named 'nope'"),
        ("POST", "", {"alias": "has space", "model": "other"}, 400, "printable characters without spaces"),
        ("DELETE", "/tiny", None, 409, "edit the file to remove it"),
        ("DELETE", "/never-added", None, 404, "no alias 'never-added' was added at run time"),
    ],
)
def test_aliases_that_cannot_be_are_refused_with_the_reason(store_server, method, path, body, status, says):
    reply = httpx.request(method, f"{store_server.url}/api/v1/aliases{path}", json=body, timeout=30)
    assert reply.status_code == status and says in reply.json()["error"]["message"]
