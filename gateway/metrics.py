"""Prometheus metrics: what this gateway measured itself, plus the supervisor's view read at scrape time.

Request, latency and token metrics live in prometheus-client's default registry. With several gateway processes
on one host, set PROMETHEUS_MULTIPROC_DIR (an empty directory, the same for all of them, before they start):
prometheus-client then keeps each process's values in files there and any gateway's /metrics sums them all.
Without it each process reports only its own requests, and each must be scraped on its own port.

The supervisor's figures (memory, budget, loads, evictions, crashes, queue depth per worker) are one value per
host, not per gateway: they are fetched with a ListModels call to every host when /metrics is scraped and
exposed once, each with a `host` label (the config's host name in a fleet, "local" on a single host).
"""

from __future__ import annotations

import os

import msgspec
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import APIError
from protocol.ctl import ListModels, ModelList

NS = "mlx_server"
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
TPS_BUCKETS = (1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500)

REQUESTS = Counter(
    "http_requests", "HTTP requests answered", ["route", "method", "status", "service", "model"], namespace=NS
)
LATENCY = Histogram(
    "http_request_duration_seconds",
    "From request to the last byte of the answer (streams included)",
    ["route", "service", "model"],
    namespace=NS,
    buckets=LATENCY_BUCKETS,
)
IN_PROGRESS = Gauge(
    "http_requests_in_progress", "Requests being answered by the gateways", namespace=NS, multiprocess_mode="livesum"
)
TTFT = Histogram(
    "time_to_first_token_seconds",
    "From request to the first generated token (model load and queueing included)",
    ["service", "model"],
    namespace=NS,
    buckets=LATENCY_BUCKETS,
)
PROMPT_TOKENS = Counter("prompt_tokens", "Prompt tokens processed", ["service", "model"], namespace=NS)
CACHED_TOKENS = Counter("cached_prompt_tokens", "Prompt tokens served from the prompt cache", ["model"], namespace=NS)
COMPLETION_TOKENS = Counter("completion_tokens", "Tokens generated", ["service", "model"], namespace=NS)
TOKENS_PER_SECOND = Histogram(
    "generation_tokens_per_second",
    "Decode speed of each request, first to last token (rate(completion_tokens) gives the aggregate)",
    ["model"],
    namespace=NS,
    buckets=TPS_BUCKETS,
)
AUDIO_SECONDS = Counter(
    "audio_seconds", "Seconds of audio transcribed or spoken", ["service", "model", "direction"], namespace=NS
)
REAL_TIME_FACTOR = Histogram(
    "audio_real_time_factor",
    "Per speech request: the model's processing time per second of audio (below 1 is faster than real time)",
    ["model", "direction"],
    namespace=NS,
    buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 5, 10),
)
# Admission (gateway/middleware/admission.py): generation requests holding a slot, and waiting for one.
LIVE = {"namespace": NS, "multiprocess_mode": "livesum"}
ADMITTED = Gauge("admission_in_flight", "Generation requests in flight", ["service"], **LIVE)
QUEUED = Gauge("admission_queued", "Generation requests waiting for a slot", ["service"], **LIVE)
GENERATION_ERRORS = Counter(
    "generation_errors", "Generations that ended with an error event or status", ["model", "code"], namespace=NS
)


def observe(record) -> None:
    """Count one finished request (a telemetry.RequestRecord)."""
    service, model, route = record.service, record.model or "", record.route
    REQUESTS.labels(route, record.method, str(record.status), service, model).inc()
    LATENCY.labels(route, service, model).observe(record.duration)
    if record.ttft is not None:
        TTFT.labels(service, model).observe(record.ttft)
    if record.prompt_tokens or record.completion_tokens:
        PROMPT_TOKENS.labels(service, model).inc(record.prompt_tokens)
        COMPLETION_TOKENS.labels(service, model).inc(record.completion_tokens)
        CACHED_TOKENS.labels(model).inc(record.cached_tokens)
    if record.decode_tps is not None:
        TOKENS_PER_SECOND.labels(model).observe(record.decode_tps)
    if record.audio_seconds:
        AUDIO_SECONDS.labels(service, model, record.audio_direction).inc(record.audio_seconds)
        REAL_TIME_FACTOR.labels(model, record.audio_direction).observe(record.real_time_factor)
    if record.error:
        GENERATION_ERRORS.labels(model, record.error).inc()


def _supervisor_families(answers: list[tuple[str, ModelList | None]]) -> list:
    """The hosts' figures, from each host's ListModels reply (None: it did not answer)."""
    up = GaugeMetricFamily(f"{NS}_supervisor_up", "1 if the host's supervisor answered this scrape", labels=["host"])
    memory_kinds = (
        ("budget", "Memory the models may hold"),
        ("used", "Charged to models whose worker runs"),
        ("reserved", "Granted to loads whose worker is not started yet"),
        ("free", "Budget left"),
    )
    budget = {
        name: GaugeMetricFamily(f"{NS}_memory_{name}_bytes", text, labels=["host"]) for name, text in memory_kinds
    }
    state = GaugeMetricFamily(
        f"{NS}_model_state", "1 for the state each model is in", labels=["host", "model", "state"]
    )
    memory = GaugeMetricFamily(
        f"{NS}_worker_memory_bytes",
        "Per model: charged (to the budget), resident, and the worker's MLX/KV/prompt-cache figures",
        labels=["host", "model", "kind"],
    )
    in_flight = GaugeMetricFamily(f"{NS}_worker_in_flight", "Requests generating or queued", labels=["host", "model"])
    queued = GaugeMetricFamily(
        f"{NS}_worker_queue_depth", "Requests waiting to start generating", labels=["host", "model"]
    )
    loads = CounterMetricFamily(f"{NS}_model_loads", "Workers that became ready", labels=["host", "model"])
    evictions = CounterMetricFamily(f"{NS}_model_evictions", "Models evicted to make room", labels=["host", "model"])
    crashes = CounterMetricFamily(f"{NS}_worker_crashes", "Workers that exited unasked", labels=["host", "model"])
    for host, reply in answers:
        up.add_metric([host], 0 if reply is None else 1)
        if reply is None:
            continue
        if reply.memory is not None:
            for name, value in (
                ("budget", reply.memory.budget_bytes),
                ("used", reply.memory.used_bytes),
                ("reserved", reply.memory.reserved_bytes),
                ("free", reply.memory.free_bytes),
            ):
                budget[name].add_metric([host], value)
        for m in reply.models:
            state.add_metric([host, m.id, m.state], 1)
            if m.pid is not None:
                memory.add_metric([host, m.id, "charged"], m.charged_bytes)
                memory.add_metric([host, m.id, "resident"], m.memory_bytes)
                if m.worker_memory is not None:  # rss, mlx_active/peak/cache, kv_cache, prompt_cache
                    for field, value in msgspec.structs.asdict(m.worker_memory).items():
                        memory.add_metric([host, m.id, field.removesuffix("_bytes")], value)
                in_flight.add_metric([host, m.id], m.in_flight)
                queued.add_metric([host, m.id], m.queued)
            loads.add_metric([host, m.id], m.loads)
            evictions.add_metric([host, m.id], m.evictions)
            crashes.add_metric([host, m.id], m.crashes)
    if all(reply is None for _, reply in answers):
        return [up]
    return [up, *budget.values(), state, memory, in_flight, queued, loads, evictions, crashes]


class _Fixed:
    """A collector that yields metric families computed beforehand (collect() cannot await the supervisor)."""

    def __init__(self, families: list):
        self._families = families

    def collect(self):
        return iter(self._families)


def _own_registry() -> CollectorRegistry:
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


async def metrics(request: Request) -> Response:
    """GET /metrics: the Prometheus text format (with `gateway.metrics_key` configured, for that key or an
    admin's)."""
    request.app.state.metrics_keys.admit(request.headers)
    answers = await request.app.state.hosts.ask_all(lambda call_id: ListModels(call_id=call_id), 2.0)
    # A host that did not answer is reported as mlx_server_supervisor_up 0; the gateway's own metrics still count.
    answers = [(link.name, None if isinstance(reply, APIError) else reply) for link, reply in answers]
    host = CollectorRegistry()
    host.register(_Fixed(_supervisor_families(answers)))
    body = generate_latest(_own_registry()) + generate_latest(host)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def process_exited() -> None:
    """Multiprocess mode: drop this process's live gauges (in-progress requests) as it stops."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(os.getpid())
