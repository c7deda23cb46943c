"""The dashboard in headless Chromium (Debian's, driven by Playwright), against the real server.

An operator enters a key, loads the model from the page, chats with streamed output, and sees the model's
memory; pulls a model from the hub and watches it arrive. The screenshot goes to DASHBOARD_SCREENSHOT when set
(docs/dashboard.png in the README comes from it), else next to the test's temporary files.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import httpx
import pytest

from tests.conftest import MODEL
from tests.tiny_llama import build_tiny_llama
from tests.tools import require_tool

pytestmark = pytest.mark.needs_tool("chromium")
KEY = "sk-dashboard-test-key"


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=require_tool("chromium"), headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.mark.timeout(240)
def test_operator_loads_a_model_chats_and_sees_its_memory(server, browser, tmp_path):
    from playwright.sync_api import expect

    httpx.post(f"{server.url}/api/v1/models/smollm2/unload", json={}, timeout=60).raise_for_status()
    page = browser.new_page(viewport={"width": 1280, "height": 1500})
    sent_keys, keyed = set(), []  # the Authorization of every API call made after the key was entered

    def note(request) -> None:
        if keyed and request.resource_type == "fetch":
            sent_keys.add(request.headers.get("authorization"))

    page.on("request", note)
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server.url)
    expect(page.locator("h1")).to_have_text("MLX LLM Server")

    page.fill("#api-key", KEY)
    page.click("#save-key")
    keyed.append(True)
    expect(page.locator("#key-state")).to_have_text("key set")
    row = page.locator('#models tr[data-model="smollm2"]')
    expect(row.locator(".state")).to_have_text("stopped", timeout=15_000)

    row.locator("button.load").click()
    expect(row.locator(".state")).to_have_text("ready", timeout=120_000)
    expect(row.locator(".memory")).to_contain_text(re.compile(r"resident 0\.[0-9]*[1-9]"), timeout=15_000)
    expect(page.locator("#memory-text")).to_contain_text("GB budget")
    assert float(page.locator("#memory-used").evaluate("e => parseFloat(e.style.width)")) > 0
    # What readiness says, the page says ("degraded" once another test has tried the `broken` model).
    status = httpx.get(f"{server.url}/api/v1/health/ready", timeout=30).json()["status"]
    expect(page.locator("#readiness")).to_have_text(status, timeout=10_000)
    # What `supervisor ctl status` (and so `./scripts/manage.sh status`) says, the page says.
    pid = re.search(r"smollm2: ready, pid (\d+), pong", server.ctl("status").stdout).group(1)
    expect(row.locator(".pid")).to_have_text(pid)

    page.select_option("#chat-model", "smollm2")
    page.fill("#chat-max-tokens", "24")
    # Count how often the answer's text changes while it streams in.
    page.evaluate("""() => {
        window.updates = 0;
        new MutationObserver(() => { window.updates += 1; })
            .observe(document.getElementById('chat-output'), {childList: true, characterData: true, subtree: true});
    }""")
    page.fill("#chat-input", "What is the capital of France?")
    page.click("#chat-send")
    expect(page.locator("#chat-log .assistant")).to_contain_text("Paris", timeout=120_000)
    assert page.evaluate("window.updates") >= 3, "the answer arrived in one piece, not streamed"
    expect(page.locator("#chat-stats")).to_contain_text("tokens in")
    expect(page.locator("#chat-error")).to_have_text("")

    # The call shows up in the activity log and the live figures, as every poll shows what the server says.
    expect(page.locator("#activity tbody tr").first).to_contain_text("What is the capital of France?", timeout=10_000)
    expect(page.locator("#live-tps")).not_to_have_text("\u2013", timeout=10_000)  # the placeholder dash
    expect(page.locator("#system")).to_contain_text("MLX")
    expect(page.locator("#api-examples")).to_contain_text("/v1/chat/completions")

    shot = Path(os.environ.get("DASHBOARD_SCREENSHOT") or tmp_path / "dashboard.png")
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert sent_keys == {f"Bearer {KEY}"}, f"every call carries the key, got {sent_keys}"
    assert errors == []
    page.close()


@pytest.mark.timeout(240)
def test_operator_pulls_a_model_from_the_page_and_watches_it_arrive(store_server, hub, browser, model_store, tmp_path):
    from playwright.sync_api import expect

    build_tiny_llama(tmp_path / "dash-llama", model_store / MODEL)
    hub.add_repo("test-org/dash-llama", tmp_path / "dash-llama")
    page = browser.new_page(viewport={"width": 1280, "height": 1500})
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(store_server.url)
    page.fill("#pull-repo", "test-org/dash-llama")
    page.click("#pull-start")
    expect(page.locator("#pull-state")).to_contain_text("dash-llama: done", timeout=180_000)
    weights = page.locator('#pull-files li[data-file="model.safetensors"]')
    expect(weights).to_contain_text("model.safetensors")
    assert weights.locator(".used").evaluate("e => e.style.width") == "100%"
    assert (store_server.store / "dash-llama" / "model.safetensors").is_file()
    expect(page.locator("#pull-error")).to_have_text("")
    assert errors == []
    page.close()
