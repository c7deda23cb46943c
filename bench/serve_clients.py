"""The systems bench/serve.py compares, behind one interface: stream, aggregate, prefix_ttft."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.harness import terminate

CONCURRENCY = (1, 4, 8, 16)  # streams at once, for the aggregate figures
ANIMALS = ["dragon", "fox", "whale", "owl", "badger", "otter", "heron", "lynx"]
SKILLS = ["bake bread", "sail a boat"]
STORIES = [f"Write a long story about a {a} who learns to {s}." for s in SKILLS for a in ANIMALS]  # 16 prompts


def story(i: int) -> list[dict]:
    return [{"role": "user", "content": STORIES[i % len(STORIES)]}]


def long_prefix() -> str:
    """About 2,000 tokens of system prompt, salted so that no system has seen it before."""
    colours = ["red", "green", "blue", "amber", "violet"]
    notes = [f"Note {i}: the {colours[i % 5]} lamp number {i} belongs to room {i % 17}." for i in range(120)]
    return f"Session {uuid.uuid4().hex}. You are an archivist. " + " ".join(notes)


def prefix_messages(prefix: str, question: str) -> list[dict]:
    return [{"role": "system", "content": prefix}, {"role": "user", "content": question}]


def single_stream(target, tokens: int) -> dict:
    r = target.stream(story(0), tokens)
    stamps = r["stamps"]
    return {"ttft_s": stamps[0] - r["start"], "decode_tps": (len(stamps) - 1) / (stamps[-1] - stamps[0])}


class HTTPTarget:
    """An OpenAI-compatible server: mlx_lm.server or this one.

    Called as a service calls it: one client whose connections are kept open. A client made per request costs
    about 26 ms of CPU here, most of it loading CA certificates with the GIL held, so eight streams started at
    once reached the server spread over some 200 ms, and the bench measured its own start-up."""

    def __init__(self, name: str, url: str, model: str):
        self.name, self.url, self.model = name, url, model
        self.client = httpx.Client(timeout=900, limits=httpx.Limits(max_connections=max(CONCURRENCY)))

    def stream(self, messages: list[dict], max_tokens: int) -> dict:
        body = {
            "model": self.model,
            "messages": messages,
            "temperature": 0,
            "max_tokens": max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        start, stamps, usage = time.perf_counter(), [], None
        request = self.client.build_request("POST", f"{self.url}/v1/chat/completions", json=body)
        try:
            response = self.client.send(request, stream=True)
        except httpx.RemoteProtocolError:
            # llama-server closes a kept-alive connection after 100 requests (cpp-httplib's count), and one sent as
            # it closes gets no answer: sent again on a new one, as the OpenAI SDK would; `start` stays.
            response = self.client.send(request, stream=True)
        try:
            response.raise_for_status()
            for line in response.iter_lines():
                if not line.startswith("data: {"):
                    continue
                event = json.loads(line[6:])
                usage = event.get("usage") or usage
                if event.get("choices") and event["choices"][0].get("delta", {}).get("content"):
                    stamps.append(time.perf_counter())
        finally:
            response.close()
        tokens = usage["completion_tokens"] if usage else len(stamps)
        return {"start": start, "end": time.perf_counter(), "stamps": stamps, "tokens": tokens, "usage": usage}

    def aggregate(self, n: int, tokens: int) -> float:
        with ThreadPoolExecutor(n) as pool:
            runs = list(pool.map(lambda i: self.stream(story(i), tokens), range(n)))
        return sum(r["tokens"] for r in runs) / (max(r["end"] for r in runs) - min(r["start"] for r in runs))

    def prefix_ttft(self) -> tuple[float, float, int]:
        prefix = long_prefix()
        cold = self.stream(prefix_messages(prefix, "Which room holds lamp 7?"), 1)
        warm = self.stream(prefix_messages(prefix, "Which room holds lamp 9?"), 1)
        prompt_tokens = (cold["usage"] or {}).get("prompt_tokens", 0)
        return cold["stamps"][0] - cold["start"], warm["stamps"][0] - warm["start"], prompt_tokens


class PeerServer(HTTPTarget):
    """`python -m mlx_lm.server --model DIR`, started and stopped by pid."""

    def __init__(self, name: str, model_dir: Path, port: int, openblas: bool):
        super().__init__(name, f"http://127.0.0.1:{port}", str(model_dir))
        env = dict(os.environ)
        if openblas:
            env["LD_PRELOAD"] = "libopenblas.so.0"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlx_lm.server", "--model", str(model_dir), "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    @classmethod
    def attach(cls, name: str, url: str, model: str) -> HTTPTarget:
        return HTTPTarget(name, url, model)

    def __enter__(self) -> PeerServer:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    self.stream(story(0), 4)  # loads the model and warms it up
                    return self
            except httpx.TransportError:
                time.sleep(0.5)
        self.__exit__()
        raise RuntimeError(f"{self.name} did not start")

    def __exit__(self, *_) -> None:
        self.client.close()
        terminate(self.proc, grace=20)


class LlamaServerByHand(PeerServer):
    """llama.cpp's llama-server started by hand on the GGUF file, with the flags this server's gguf worker gives it."""

    def __init__(self, name: str, gguf: Path, port: int, context_length: int, llama):
        from protocol.launch import EngineSettings
        from worker.llama_server import binary_path, server_args

        HTTPTarget.__init__(self, name, f"http://127.0.0.1:{port}", "model")
        flags = server_args(str(gguf), "127.0.0.1", context_length, llama, EngineSettings(), None)  # the worker's
        args = [*flags, "--port", str(port)]
        self.proc = subprocess.Popen([str(binary_path()), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class InProcess:
    """mlx-lm called directly: stream_generate for one stream, BatchGenerator for many."""

    def __init__(self, model_dir: Path):
        import psutil
        from mlx_lm import load

        from worker.cpu_tuning import tune_model

        model, self.tokenizer = load(str(model_dir))
        self.model, self.compute = tune_model(model, psutil.virtual_memory().total)
        self.name = "in-process"
        self.stream(story(0), 4)  # warm-up

    def _prompt(self, messages: list[dict]) -> list[int]:
        return list(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True))

    def stream(self, messages: list[dict], max_tokens: int, prompt=None, prompt_cache=None) -> dict:
        from mlx_lm import stream_generate

        prompt = prompt if prompt is not None else self._prompt(messages)
        start, stamps = time.perf_counter(), []
        for _ in stream_generate(self.model, self.tokenizer, prompt, max_tokens=max_tokens, prompt_cache=prompt_cache):
            stamps.append(time.perf_counter())
        return {"start": start, "end": time.perf_counter(), "stamps": stamps, "tokens": len(stamps)}

    def aggregate(self, n: int, tokens: int) -> float:
        from mlx_lm.generate import BatchGenerator

        generator = BatchGenerator(
            self.model, stop_tokens=[[t] for t in self.tokenizer.eos_token_ids], completion_batch_size=16
        )
        start, produced = time.perf_counter(), 0
        generator.insert([self._prompt(story(i)) for i in range(n)], max_tokens=[tokens] * n)
        while responses := generator.next_generated():
            produced += len(responses)
        elapsed = time.perf_counter() - start
        generator.close()
        return produced / elapsed

    def prefix_ttft(self) -> tuple[float, float, int]:
        import mlx.core as mx
        from mlx_lm.models.cache import make_prompt_cache

        prefix = long_prefix()
        cold_prompt = self._prompt(prefix_messages(prefix, "Which room holds lamp 7?"))
        warm_prompt = self._prompt(prefix_messages(prefix, "Which room holds lamp 9?"))
        shared = next(i for i, (a, b) in enumerate(zip(cold_prompt, warm_prompt, strict=False)) if a != b)
        cold = self.stream([], 1, prompt=cold_prompt)
        cache = make_prompt_cache(self.model)  # the prefix's KV state, as a prompt cache would hold it
        for i in range(0, shared, 512):
            self.model(mx.array(warm_prompt[i : min(i + 512, shared)])[None], cache=cache)
            mx.eval([c.state for c in cache])
        warm = self.stream([], 1, prompt=warm_prompt[shared:], prompt_cache=copy.deepcopy(cache))
        return cold["stamps"][0] - cold["start"], warm["stamps"][0] - warm["start"], len(cold_prompt)

    def close(self) -> None:
        del self.model
