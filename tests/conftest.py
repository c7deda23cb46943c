from __future__ import annotations

import hashlib
import secrets
from collections import Counter
from dataclasses import dataclass

import pytest
from openai import OpenAI

from supervisor.model_import import import_model
from tests import harness
from tests.fleet_harness import Fleet
from tests.harness import LOG_ARCHIVE, RedisServer, Server, write_config
from tests.hub_server import HubServer
from tests.thinking_model import build_thinking_copy
from tests.tiny_vlm import build_tiny_qwen2_vl
from tests.tools import require_tool

MODEL = "smollm2-135m-instruct"
EMBEDDER = "all-minilm-l6-v2"
VLM = "tiny-vlm"
THINKER = "smollm2-thinking"  # the bundled model under a chat template that opens a <think> block
CONTEXT = 2048  # small, so context-length errors are cheap to provoke


@pytest.fixture(scope="session")
def model_store(tmp_path_factory):
    """The bundled models (the GGUF, the embedding model) imported once per session into a temporary store."""
    store = tmp_path_factory.mktemp("store")
    import_model(f"bundled:{MODEL}", MODEL, store)
    import_model(f"bundled:{EMBEDDER}", EMBEDDER, store)
    build_tiny_qwen2_vl(store / VLM, tokenizer_src=store / MODEL)  # no real vision model can be fetched here
    build_thinking_copy(store / MODEL, store / THINKER)
    return store


@pytest.fixture(scope="session")
def server_config(tmp_path_factory, model_store):
    return write_config(
        tmp_path_factory.mktemp("config") / "models.yaml",
        model_store,
        [
            {"id": "smollm2", "aliases": ["tiny"], "source": MODEL, "context_length": CONTEXT, "memory_gb": 0.3},
            {"id": "broken", "source": "no-such-model-directory"},
            # One decode slot: shows that an aborted stream hands its slot over at once.
            {"id": "solo", "source": MODEL, "context_length": CONTEXT, "engine": {"decode_concurrency": 1}},
            # Speculative decoding with the bundled model as its own draft (no smaller model is bundled).
            {"id": "spec", **SHARED, "draft_model": "smollm2", "engine": {"num_draft_tokens": 2}},
            # The gateway's default for embeddings and rerank requests that name no model.
            {"id": EMBEDDER, "aliases": ["minilm"], "source": EMBEDDER, "type": "embedding"},
            {"id": VLM, "source": VLM, "type": "vlm", "context_length": 256},
            {"id": "thinker", "source": THINKER, "context_length": CONTEXT, "memory_gb": 0.3},
        ],
        crash_limit=100,  # tests across modules kill smollm2's worker on purpose; test_recovery tests the limit
        claude_tiers={"haiku": "tiny"},  # sonnet and opus stay unrouted: requests for them are not found
    )


@pytest.fixture(scope="session")
def server(server_config):
    srv = Server(server_config).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def client(server):
    return OpenAI(base_url=f"{server.url}/v1", api_key="not-needed", max_retries=0, timeout=120)


SHARED = {"source": MODEL, "context_length": CONTEXT, "memory_gb": 0.3}
BUDGET_GB = 0.75  # fits two of the 0.3 GB models, not three


@pytest.fixture(scope="session")
def budget_server(tmp_path_factory, model_store):
    """Three models sharing the bundled weights under different ids, a budget that fits two, `c` evicted after
    the others (priority 1); `ttl` unloads itself when idle; `huge` can never fit. More than one crash in five
    minutes marks a model failed."""
    config = write_config(
        tmp_path_factory.mktemp("budget") / "models.yaml",
        model_store,
        [
            {"id": "a", **SHARED},
            {"id": "b", **SHARED},
            {"id": "c", **SHARED, "priority": 1},
            {"id": "ttl", **SHARED, "idle_ttl_seconds": 2},
            {"id": "huge", **SHARED, "memory_gb": 5},
        ],
        memory_budget_gb=BUDGET_GB,
        heartbeat_seconds=0.5,
        max_wait_seconds=90,
        crash_limit=1,
        shutdown_grace_seconds=60,  # an unload drains what is in flight, however slow a loaded machine decodes
    )
    srv = Server(config)
    srv.env["MLX_SERVER_CPU_TUNING"] = "off"  # 4-bit weights as loaded: resident stays under the 0.3 GB estimate
    yield srv.start()
    srv.stop()


@pytest.fixture(scope="session")
def tight_server(tmp_path_factory, model_store):
    """Room for one model, a short wait for memory, a short heartbeat timeout, frequent SSE keepalives."""
    config = write_config(
        tmp_path_factory.mktemp("tight") / "models.yaml",
        model_store,
        [{"id": "x", **SHARED}, {"id": "y", **SHARED}],
        memory_budget_gb=0.5,
        heartbeat_seconds=0.5,
        heartbeat_timeout_seconds=15,
        max_wait_seconds=3,
    )
    srv = Server(config)
    srv.env["GATEWAY_KEEPALIVE_SECONDS"] = "0.5"
    srv.env["MLX_SERVER_CPU_TUNING"] = "off"
    yield srv.start()
    srv.stop()


# -- the managed store: pulls from a local hub, presets and defaults, a fallback model, aliases ----------------

PULLED = "smollm2-pulled"  # what the pull tests name the bundled model pulled back from the local hub


@pytest.fixture(scope="session")
def hub():
    """A local Hugging Face hub (tests/hub_server.py); HF_ENDPOINT points a store server's pulls at it."""
    server = HubServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def store_server(tmp_path_factory, model_store, hub):
    """A store of its own that pulls from the local hub, `pulled` configured before it is pulled, sampling
    defaults (greedy everywhere, 6 tokens for smollm2) and presets, and `other` as the fallback model."""
    store = tmp_path_factory.mktemp("pull-store")
    bundled = {"source": str(model_store / MODEL), "context_length": CONTEXT, "memory_gb": 0.3}
    config = write_config(
        tmp_path_factory.mktemp("store-config") / "models.yaml",
        store,
        [
            {"id": "smollm2", "aliases": ["tiny"], **bundled, "defaults": {"max_tokens": 6}},
            {"id": "other", **bundled},
            {"id": "pulled", "source": PULLED, "context_length": CONTEXT, "memory_gb": 0.3},
        ],
        fallback_model="other",
        defaults={"temperature": 0},
        presets={"brief": {"max_tokens": 3}, "terse": {"system_prompt": "Answer in one word."}},
    )
    srv = Server(config)
    srv.env |= {"HF_ENDPOINT": hub.url, "HF_HOME": str(store / ".hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    srv.store = store
    yield srv.start()
    srv.stop()


# -- the secured server: services, keys, Redis, JWT ----------------------------------------------------------

# Every key, token and secret the tests hand to a server; none may appear in any server log of the run.
TEST_SECRETS: list[str] = []
# Sent as message content by tests (test_log_hygiene.py): it may reach a model, never a log line.
CONTENT_MARKER = "zebra-" + secrets.token_hex(6) + "-quartz"


def secret(prefix: str) -> str:
    value = prefix + secrets.token_urlsafe(24)
    TEST_SECRETS.append(value)
    return value


def pytest_runtest_setup(item):
    """`@pytest.mark.needs_tool("redis-server")`: skipped without it on a laptop, failed in CI (tests/tools.py)."""
    for mark in item.iter_markers("needs_tool"):
        require_tool(*mark.args)


def pytest_terminal_summary(terminalreporter):
    """One line: how many tests skipped, and why (pytest's -ra lists each one)."""
    reasons = Counter()
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        reasons[reason.removeprefix("Skipped: ")] += 1
    if reasons:
        why = "; ".join(f"{n} x {reason}" for reason, n in reasons.most_common())
        terminalreporter.write_line(f"skipped {sum(reasons.values())}: {why}", yellow=True)


def pytest_sessionfinish(session, exitstatus):
    """Fail the run if a process a test started outlived it (naming it), or if any server log of the run holds a
    test key, a token or the content marker."""
    writer = session.config.get_terminal_writer()
    left = harness.left_running()
    if left:
        writer.line("PROCESSES LEFT RUNNING BY THE TESTS (now killed):", red=True)
        for process in left:
            writer.line(f"  {harness.describe(process)}", red=True)
            harness.kill(process)
        session.exitstatus = 1
    if not LOG_ARCHIVE.exists():
        return
    text = LOG_ARCHIVE.read_text(errors="replace")
    LOG_ARCHIVE.unlink()
    leaked = [s[:8] + "..." for s in TEST_SECRETS if s in text]
    if CONTENT_MARKER in text:
        leaked.append("message content")
    if leaked:
        writer.line(f"SECRETS IN SERVER LOGS: {leaked}", red=True)
        session.exitstatus = 1


@pytest.fixture(scope="session")
def redis_server():
    require_tool("redis-server")
    server = RedisServer().start()
    yield server
    server.cleanup()


@dataclass
class Keys:
    vista: str  # sha256 in the config; may use smollm2 (named by its alias), default smollm2
    fork: str  # API_KEYS; may use coder only, its default
    ops: str  # the variable the config names (key_env); admin, any model
    metered: str  # 5 requests per minute (the rate-limit test's own: other tests must not spend it)
    fuzzed: str  # 5 requests per minute, for the fuzz test's 429s
    thrifty: str  # 20 tokens per minute
    jwt_secret: str


@pytest.fixture(scope="session")
def keys() -> Keys:
    return Keys(
        vista=secret("vista_"),
        fork=secret("fork_"),
        ops=secret("ops_"),
        metered=secret("metered_"),
        fuzzed=secret("fuzzed_"),
        thrifty=secret("thrifty_"),
        jwt_secret=secret("jwt-secret-"),
    )


SECURE_BODY_LIMIT = 64 * 1024


@pytest.fixture(scope="session")
def secure_config(tmp_path_factory, model_store, keys):
    return write_config(
        tmp_path_factory.mktemp("secure") / "models.yaml",
        model_store,
        [
            {"id": "smollm2", "aliases": ["tiny"], **SHARED},
            {"id": "coder", **SHARED},
            {"id": "short", **SHARED, "context_length": 512},  # cheap to fill: for trimming long sessions
            {"id": "thinker", **SHARED, "source": THINKER},
        ],
        services=[
            {
                "name": "vista",
                "default_model": "smollm2",
                "allowed_models": ["tiny"],  # an alias: allowed is checked after resolution
                "key_sha256": [hashlib.sha256(keys.vista.encode()).hexdigest()],
            },
            {"name": "fork", "default_model": "coder", "allowed_models": ["coder"]},
            {"name": "ops", "admin": True, "key_env": "OPS_KEYS", "reasoning_field": "reasoning"},
            {"name": "metered", "rate_limits": {"requests_per_minute": 5}},
            {"name": "fuzzed", "rate_limits": {"requests_per_minute": 5}},
            {"name": "thrifty", "default_model": "smollm2", "rate_limits": {"tokens_per_minute": 20}},
        ],
        gateway={
            "cors_origins": ["https://dashboard.example"],
            "trusted_hosts": ["127.0.0.1", "localhost", "*.example.com"],
            "max_body_bytes": SECURE_BODY_LIMIT,
        },
    )


@pytest.fixture(scope="session")
def secure_server(secure_config, keys, redis_server):
    """Keys for five services (from a hash, API_KEYS and a named variable), Redis sessions and rate limits, JWT."""
    srv = Server(secure_config)
    srv.env |= {
        "API_KEYS": f"fork:{keys.fork},metered:{keys.metered},fuzzed:{keys.fuzzed},thrifty:{keys.thrifty}",
        "OPS_KEYS": keys.ops,
        "REDIS_URL": redis_server.url,
        "JWT_SECRET": keys.jwt_secret,
    }
    yield srv.start()
    srv.stop()


# -- a fleet: hosts a and b over TCP + CURVE, one gateway in front of both ------------------------------------

FLEET_BUDGET_GB = 0.75  # per host: two of the 0.3 GB models, not three


@pytest.fixture(scope="session")
def fleet(tmp_path_factory, model_store):
    """Two supervisors on this machine as hosts a and b, one gateway. `chat` and `spare` may run on either host,
    `minilm` on b only (as whisper on the voice host)."""
    fleet = Fleet(
        tmp_path_factory.mktemp("fleet"),
        model_store,
        [
            {"id": "chat", "aliases": ["tiny"], **SHARED},
            {"id": "spare", **SHARED},
            {"id": "minilm", "source": EMBEDDER, "type": "embedding", "memory_gb": 0.3, "hosts": ["b"]},
        ],
        memory_budget_gb=FLEET_BUDGET_GB,
        heartbeat_seconds=0.5,
        max_wait_seconds=60,
        crash_limit=100,
    )
    TEST_SECRETS.extend(fleet.secrets())  # no host's or gateway's secret key may appear in any log
    yield fleet.start()
    fleet.stop()
