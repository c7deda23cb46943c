"""The OpenAPI document (/openapi.json) and its page (/docs), then property-based API testing from it
(schemathesis; tests/api_fuzz.py) against a live server with a real worker: valid and invalid requests on every
route, as an admin service whose answers are held to two tokens. No answer is a 5xx, every answer matches the
document (errors in their dialect's shape), and no worker crashed (the supervisor's crash counters are
unchanged). bench/fuzz.py runs longer."""

from __future__ import annotations

import re

import httpx
import msgspec
import pytest

from gateway.dialects.anthropic.schema import MessagesRequest
from gateway.dialects.chat.schema import ChatCompletionRequest
from tests import api_fuzz
from tests.conftest import EMBEDDER, SHARED, secret
from tests.harness import Server, write_config
from tests.tools import require_tool

# Valid and invalid cases per operation (two for those that run the model): about 1,100 requests in all.
EXAMPLES, GENERATING = 10, 2
# Pulling reaches for a model hub, which tests cannot reach; test_ctl_commands pulls from a local one.
SKIP = frozenset({"POST /api/v1/models/pull"})
REF = "#/components/schemas/{name}"


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory, model_store):
    key = secret("fuzz_")
    config = write_config(
        tmp_path_factory.mktemp("fuzz") / "models.yaml",
        model_store,
        [
            {"id": "smollm2", **SHARED, "context_length": 512},
            {"id": EMBEDDER, "source": EMBEDDER, "type": "embedding"},
        ],
        services=[{"name": "fuzz", "admin": True, "default_model": "smollm2", "limits": {"max_tokens": 2}}],
    )
    srv = Server(config)
    srv.env["API_KEYS"] = f"fuzz:{key}"
    srv.start()
    srv.key = key
    yield srv
    srv.stop()


def document(server: Server) -> dict:
    response = httpx.get(f"{server.url}/openapi.json", timeout=30)  # no key: the API's description is public
    response.raise_for_status()
    return response.json()


def test_the_document_covers_every_route_with_the_schemas_the_gateway_validates_with(fuzz_server):
    doc = document(fuzz_server)
    assert doc["openapi"].startswith("3.1")
    ops = {(method.upper(), path): op for path, methods in doc["paths"].items() for method, op in methods.items()}
    for path, method in [
        ("/v1/chat/completions", "POST"),
        ("/anthropic/v1/messages", "POST"),
        ("/api/v1/sessions/{session_id}", "DELETE"),
        ("/api/v1/aliases/{alias}", "DELETE"),
        ("/v1/files", "POST"),
        ("/openapi.json", "GET"),
    ]:
        assert (method, path) in ops, (method, path)
    assert len(ops) >= 70  # every route of the app, both base URLs

    chat = ops["POST", "/v1/chat/completions"]
    assert chat["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ChatCompletionRequest"
    }
    schemas = doc["components"]["schemas"]
    _, expected = msgspec.json.schema_components([ChatCompletionRequest, MessagesRequest], ref_template=REF)
    assert schemas["ChatCompletionRequest"] == expected["ChatCompletionRequest"]
    assert schemas["MessagesRequest"] == expected["MessagesRequest"]
    assert {"parameters", "responses"} <= chat.keys() and chat.get("security") is None  # the document's default
    assert doc["security"] == [{"bearer": []}, {"apiKey": []}]
    assert ops["GET", "/health"]["security"] == []
    upload = ops["POST", "/v1/files"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert upload["properties"]["file"] == {"type": "string", "format": "binary"}
    # Errors in the shape of the dialect that owns the path.
    assert chat["responses"]["400"] == {"$ref": "#/components/responses/OpenAIError"}
    assert ops["POST", "/v1/messages"]["responses"]["429"] == {"$ref": "#/components/responses/AnthropicError"}
    session = ops["GET", "/api/v1/sessions/{session_id}"]
    [param] = session["parameters"]
    assert param == {"name": "session_id", "in": "path", "required": True, "schema": {"type": "string"}}


@pytest.mark.needs_tool("chromium")
def test_the_docs_page_renders_the_document_without_reaching_outside(fuzz_server):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=require_tool("chromium"), headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            urls, errors = [], []
            page.on("request", lambda request: urls.append(request.url))
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{fuzz_server.url}/docs")
            chat = page.locator("details", has_text="/v1/chat/completions").first
            expect(chat).to_be_visible(timeout=15_000)
            chat.locator("summary").click()
            expect(chat.locator("pre")).to_contain_text('"messages"')  # the body's schema, $refs resolved
            page.fill("#filter", "count_tokens")
            expect(page.locator("details:visible")).to_have_count(2)
        finally:
            browser.close()
    assert not errors
    assert urls and all(url.startswith(fuzz_server.url) for url in urls), urls
    html = httpx.get(f"{fuzz_server.url}/docs", timeout=30).text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # nothing from a CDN


def crashes(server: Server) -> dict[str, int]:
    return {model_id: info.crashes for model_id, info in server.models().items() if model_id}


@pytest.mark.timeout(600)
def test_generated_requests_get_no_5xx_and_match_the_document(fuzz_server):
    headers = {"Authorization": f"Bearer {fuzz_server.key}"}
    before = crashes(fuzz_server)
    report = api_fuzz.run(fuzz_server.url, headers, EXAMPLES, GENERATING, skip=SKIP)
    print(report.summary())
    assert not report.findings, "\n".join(map(api_fuzz.describe, report.findings[:20]))
    assert report.cases >= 1000, report.summary()
    assert not any(status >= 500 for status in report.statuses)
    assert crashes(fuzz_server) == before
