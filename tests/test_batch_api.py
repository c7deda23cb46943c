"""The Files and Batch APIs through the real server, with the openai SDK: upload, create, poll to completed, the
output file (one line per request, with its custom_id) and the error file (a malformed line, a wrong URL); an
interactive request during a batch goes ahead of the batch's waiting lines; cancel; a gateway restart mid-batch
resumes it without running a completed line again; batches and files in Redis, and another service's ids."""

from __future__ import annotations

import io
import json
import re
from collections import Counter

import httpx
import openai
import pytest

from tests.harness import wait_until


def line(custom_id: str, model: str, content: str, max_tokens: int = 8, url: str = "/v1/chat/completions") -> str:
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body | {"temperature": 0}})


def submit(client: openai.OpenAI, lines: list[str], endpoint: str = "/v1/chat/completions"):
    upload = client.files.create(file=("requests.jsonl", io.BytesIO("\n".join(lines).encode())), purpose="batch")
    return client.batches.create(input_file_id=upload.id, endpoint=endpoint, completion_window="24h")


def finished(client: openai.OpenAI, batch_id: str, timeout: float = 240):
    done = ("completed", "failed", "cancelled")
    assert wait_until(lambda: client.batches.retrieve(batch_id).status in done, timeout=timeout, interval=0.3)
    return client.batches.retrieve(batch_id)


def lines_of(client: openai.OpenAI, file_id: str) -> list[dict]:
    return [json.loads(raw) for raw in client.files.content(file_id).text.splitlines()]


def sdk(url: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)


def test_a_batch_runs_to_completed_with_an_output_and_an_error_file(client):
    lines = [line(f"q{i}", "smollm2", f"What is {i} + {i}?") for i in range(3)]
    lines.insert(1, "{this is not json")
    lines.append(line("elsewhere", "smollm2", "Hi", url="/v1/completions"))
    lines.append(line("q0", "smollm2", "A custom_id used twice"))
    batch = submit(client, lines)
    assert batch.status == "validating" and batch.request_counts.total == 6 and batch.endpoint == "/v1/chat/completions"
    batch = finished(client, batch.id)
    assert batch.status == "completed" and batch.completed_at >= batch.created_at
    assert (batch.request_counts.completed, batch.request_counts.failed) == (3, 3)
    output = lines_of(client, batch.output_file_id)
    assert [o["custom_id"] for o in output] == ["q0", "q1", "q2"]  # in input order, one line each
    for o in output:
        assert o["response"]["status_code"] == 200 and o["error"] is None
        assert o["response"]["body"]["object"] == "chat.completion" and o["response"]["body"]["choices"][0]["message"]
    errors = lines_of(client, batch.error_file_id)
    assert [e["custom_id"] for e in errors] == [None, "elsewhere", "q0"]
    assert "not valid JSON" in errors[0]["error"]["message"] and "Line 2" in errors[0]["error"]["message"]
    assert "endpoint" in errors[1]["error"]["message"] and "earlier line" in errors[2]["error"]["message"]
    assert batch.id in [b.id for b in client.batches.list().data]
    assert client.files.retrieve(batch.output_file_id).purpose == "batch_output"


def test_bad_batch_requests(client, server):
    upload = client.files.create(file=("r.jsonl", io.BytesIO(line("a", "smollm2", "Hi").encode())), purpose="batch")
    for body, status, param in [
        ({"input_file_id": upload.id, "endpoint": "/v1/images"}, 400, "endpoint"),
        ({"input_file_id": "file-0123", "endpoint": "/v1/chat/completions"}, 404, "file_id"),
        ({"input_file_id": upload.id, "endpoint": "/v1/chat/completions", "completion_window": "1h"}, 400, None),
    ]:
        reply = httpx.post(f"{server.url}/v1/batches", json=body, timeout=30)
        assert reply.status_code == status, reply.text
        assert param is None or reply.json()["error"]["param"] == param
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("x.bin", io.BytesIO(b"\xff\xfe")), purpose="batch")
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("r.jsonl", io.BytesIO(b"{}")), purpose="fine-tune")
    client.files.delete(upload.id)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(upload.id)
    assert httpx.get(f"{server.url}/v1/batches/batch_0123", timeout=30).status_code == 404


def test_an_interactive_request_goes_ahead_of_the_waiting_lines_then_cancel(client):
    # `solo` decodes one sequence at a time: the batch's lines queue in its worker, behind whatever runs.
    total = 8
    batch = submit(client, [line(f"l{i}", "solo", f"Count to {i + 5}.", max_tokens=16) for i in range(total)])
    assert wait_until(lambda: client.batches.retrieve(batch.id).request_counts.completed >= 1, timeout=180)
    before = client.batches.retrieve(batch.id).request_counts.completed
    stream = client.chat.completions.create(
        model="solo", messages=[{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0, stream=True
    )
    next(c for c in stream if c.choices and c.choices[0].delta.content)
    at_first_token = client.batches.retrieve(batch.id).request_counts.completed
    for _ in stream:
        pass
    # Only the line decoding when it arrived (and one finishing meanwhile) went first; the rest of the batch waited.
    assert at_first_token <= before + 2 < total
    client.batches.cancel(batch.id)
    assert client.batches.retrieve(batch.id).status in ("cancelling", "cancelled")
    batch = finished(client, batch.id)
    assert batch.status == "cancelled" and batch.cancelled_at
    assert batch.request_counts.completed < total
    assert len(lines_of(client, batch.output_file_id)) == batch.request_counts.completed
    with pytest.raises(openai.BadRequestError):
        client.batches.cancel(batch.id)  # finished: nothing to cancel


def test_a_gateway_restart_resumes_the_batch_without_running_a_completed_line_again(server, tmp_path):
    data = {"MLX_SERVER_DATA_DIR": str(tmp_path)}  # this test's gateways only: the session's does not see it
    first = server.spawn_gateway(**data).wait_ready()
    total = 6
    batch = submit(
        sdk(first.url), [line(f"r{i}", "solo", f"Name {i + 2} fruits.", max_tokens=12) for i in range(total)]
    )
    assert wait_until(lambda: sdk(first.url).batches.retrieve(batch.id).request_counts.completed >= 2, timeout=180)
    first.stop()
    second = server.spawn_gateway(**data).wait_ready()
    client = sdk(second.url)
    stopped_at = client.batches.retrieve(batch.id)
    assert stopped_at.status == "in_progress" and stopped_at.request_counts.completed < total
    counts = finished(client, batch.id).request_counts
    assert (counts.completed, counts.failed) == (total, 0)
    output = lines_of(client, client.batches.retrieve(batch.id).output_file_id)
    assert [o["custom_id"] for o in output] == [f"r{i}" for i in range(total)]
    finishes = Counter(re.findall(rf"x-request-id ({batch.id}-\d+)\] finished", server.log_text()))
    assert sorted(finishes) == [f"{batch.id}-{i}" for i in range(total)] and set(finishes.values()) == {1}


def test_batches_and_files_in_redis_belong_to_their_service(secure_server, keys):
    vista, fork = sdk(secure_server.url, keys.vista), sdk(secure_server.url, keys.fork)
    batch = submit(vista, [line(f"v{i}", "smollm2", "Say hi.", max_tokens=4) for i in range(2)])
    batch = finished(vista, batch.id)
    assert batch.status == "completed" and batch.request_counts.completed == 2
    assert [o["custom_id"] for o in lines_of(vista, batch.output_file_id)] == ["v0", "v1"]
    for call in (
        lambda: fork.batches.retrieve(batch.id),
        lambda: fork.batches.cancel(batch.id),
        lambda: fork.files.retrieve(batch.input_file_id),
        lambda: fork.files.content(batch.output_file_id),
        lambda: fork.batches.create(
            input_file_id=batch.input_file_id, endpoint="/v1/chat/completions", completion_window="24h"
        ),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert batch.id not in [b.id for b in fork.batches.list().data]
