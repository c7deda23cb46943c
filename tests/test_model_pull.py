"""Pulling models from a Hugging Face hub into the store, as an operator does it: `supervisor ctl pull` (and
POST /api/v1/models/pull) against a local hub (tests/hub_server.py) serving repos built from the bundled model.
Then `ctl models` lists them and `ctl rm` removes one, not while a running model uses it."""

from __future__ import annotations

import json

import httpx
import pytest
from openai import OpenAI

from supervisor.model_pull import ALLOW_PATTERNS
from tests.conftest import MODEL, PULLED
from tests.tiny_llama import build_tiny_llama

REPO = "test-org/smollm2"
CUT_AT = 30_000_000  # bytes of model.safetensors sent before the hub drops the connection once


def stored(server) -> dict:
    listing = server.ctl("models", "--json")
    assert listing.returncode == 0, listing.stderr
    return {m["name"]: m for m in json.loads(listing.stdout)["models"]}


def test_the_pull_fetches_the_files_mlx_lm_fetches():
    from mlx_lm.utils import DEFAULT_ALLOW_PATTERNS

    assert list(ALLOW_PATTERNS) == DEFAULT_ALLOW_PATTERNS


@pytest.mark.timeout(600)
def test_an_interrupted_pull_resumes_and_the_pulled_model_answers(store_server, hub, model_store):
    commit = hub.add_repo(REPO, model_store / MODEL)
    # First pull: the weights' connection drops once mid-file (resumed in place with a Range request), and one
    # file fails outright, so the pull fails and leaves no model under its name.
    hub.cut_once[f"{REPO}/model.safetensors"] = CUT_AT
    hub.fail_once.add(f"{REPO}/tokenizer.json")
    failed = store_server.ctl("pull", REPO, PULLED, timeout=300)
    assert failed.returncode == 1 and "pull of test-org/smollm2 failed" in failed.stdout, failed.stdout + failed.stderr
    assert not (store_server.store / PULLED).exists()
    assert stored(store_server)[PULLED]["partial"] is True
    resumed_at = [int(r.removeprefix("bytes=").rstrip("-")) for r in hub.gets(REPO, "model.safetensors") if r]
    assert resumed_at and 0 < resumed_at[0] <= CUT_AT  # the dropped connection resumed where it stopped

    # Second pull: only what the first did not finish is fetched again.
    weights_fetched = len(hub.gets(REPO, "model.safetensors"))
    pulled = store_server.ctl("pull", f"{REPO}@main", PULLED, timeout=300)
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    assert len(hub.gets(REPO, "model.safetensors")) == weights_fetched and len(hub.gets(REPO, "tokenizer.json")) == 2
    out = pulled.stdout
    assert "  tokenizer.json 3.5 MB" in out and f"(commit {commit[:12]})" in out
    assert f"  - id: {PULLED}\n    source: {PULLED}" in out  # the config lines that serve it
    assert "\x1b" not in out  # not a terminal: plain text

    entry = stored(store_server)[PULLED]
    assert entry | {"size_bytes": 0, "added": ""} == {
        "name": PULLED, "size_bytes": 0, "source": f"hf:{REPO}", "revision": "main", "commit": commit,
        "quantization": "4-bit, group 32", "used_by": ["pulled"], "added": "", "partial": False,
    }  # fmt: skip
    assert entry["size_bytes"] > 100_000_000

    # The model configured under that source answers from what was pulled.
    client = OpenAI(base_url=f"{store_server.url}/v1", api_key="unused", max_retries=0, timeout=180)
    reply = client.chat.completions.create(
        model="pulled", messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=24
    )
    assert "Paris" in reply.choices[0].message.content and reply.model == "pulled"

    # A pulled model in use cannot be removed; once unloaded it can.
    refused = store_server.ctl("rm", PULLED)
    assert refused.returncode == 1 and "in use by running model(s) pulled" in refused.stderr
    assert (store_server.store / PULLED / "model.safetensors").exists()
    assert store_server.ctl("unload", "pulled").returncode == 0
    removed = store_server.ctl("rm", PULLED)
    assert removed.returncode == 0 and "removed smollm2-pulled" in removed.stdout
    assert "configured models still name it" in removed.stdout
    assert not (store_server.store / PULLED).exists() and PULLED not in stored(store_server)


@pytest.mark.timeout(300)
def test_a_pull_over_http_quantizes_and_streams_its_progress(store_server, hub, model_store, tmp_path):
    build_tiny_llama(tmp_path / "tiny-llama", model_store / MODEL, dtype="float16")
    hub.add_repo("test-org/tiny-llama", tmp_path / "tiny-llama")
    hub.throttle["test-org/tiny-llama/model.safetensors"] = 2_000_000  # seconds of download: progress in between
    body = {"repo": "test-org/tiny-llama", "name": "tiny-q4", "quantize": True, "q_bits": 4, "q_group_size": 32}
    events = []
    with httpx.stream("POST", f"{store_server.url}/api/v1/models/pull", json=body, timeout=240) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: ")))
    kinds = [e["type"] for e in events]
    assert kinds[-1] == "done" and set(kinds[:-1]) == {"progress"}
    partway = [e for e in events if e["state"] == "downloading" and 0 < e["bytes_done"] < e["bytes_total"]]
    assert partway, kinds  # progress arrived while the bytes did
    assert any(e["state"] == "converting" and "quantizing to 4 bits, group 32" in e["message"] for e in events)
    done = events[-1]
    config = json.loads((store_server.store / "tiny-q4" / "config.json").read_text())
    assert config["quantization"]["bits"] == 4 and config["quantization"]["group_size"] == 32
    assert done["path"] == str(store_server.store / "tiny-q4") and done["bytes_done"] == done["bytes_total"]
    assert stored(store_server)["tiny-q4"]["quantization"] == "4-bit, group 32"
    metadata = json.loads((store_server.store / "tiny-q4" / ".store.json").read_text())
    assert metadata["convert"] == {"quantize": True, "q_bits": 4, "q_group_size": 32, "dtype": None}

    from mlx_lm import generate, load

    model, tokenizer = load(str(store_server.store / "tiny-q4"))
    assert isinstance(generate(model, tokenizer, "Hello", max_tokens=2), str)  # it loads and runs


def test_a_cancelled_pull_leaves_no_model_and_its_download_for_the_next(store_server, hub, model_store, tmp_path):
    build_tiny_llama(tmp_path / "slow-llama", model_store / MODEL)
    hub.add_repo("test-org/slow-llama", tmp_path / "slow-llama")
    hub.throttle["test-org/slow-llama/model.safetensors"] = 200_000  # half a minute: cancelled long before
    base = f"{store_server.url}/api/v1/models"
    states = []
    with httpx.stream("POST", f"{base}/pull", json={"repo": "test-org/slow-llama"}, timeout=120) as response:
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line.removeprefix("data: "))
            states.append(event["state"])
            if event["state"] == "downloading" and event["bytes_done"] > 0 and "cancelling" not in states:
                states.append("cancelling")
                assert httpx.delete(f"{base}/pulls/{event['pull_id']}", timeout=30).status_code == 200
    assert states[-1] == "cancelled" and "cancelling" in states
    assert not (store_server.store / "slow-llama").exists() and stored(store_server)["slow-llama"]["partial"]
    removed = store_server.ctl("rm", "slow-llama")  # what it downloaded goes too
    assert removed.returncode == 0 and not (store_server.store / ".pull-slow-llama").exists()


def test_pulls_refuse_what_they_cannot_do(store_server, hub):
    base = f"{store_server.url}/api/v1/models"
    bad = httpx.post(f"{base}/pull", json={"repo": "test-org/x", "quantize": True, "q_bits": 7}, timeout=30)
    assert bad.status_code == 400 and "q_bits must be one of" in bad.json()["error"]["message"]
    missing = httpx.post(f"{base}/pull", json={"repo": "test-org/nope", "stream": False}, timeout=60)
    assert missing.status_code == 502 and missing.json()["error"]["code"] == "pull_failed"
    assert "RepositoryNotFoundError" in missing.json()["error"]["message"]
    pulls = httpx.get(f"{base}/pulls", timeout=10).json()["pulls"]
    assert pulls[-1]["repo"] == "test-org/nope" and pulls[-1]["state"] == "failed"
    assert not (store_server.store / "nope").exists()
    (store_server.store / "taken").mkdir(exist_ok=True)
    taken = store_server.ctl("pull", "test-org/tiny-llama", "taken")
    assert taken.returncode == 1 and "already holds 'taken'" in taken.stderr
