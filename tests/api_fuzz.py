"""Property-based requests from the server's own OpenAPI document (schemathesis), against a live server: every
operation gets valid (positive) and invalid (negative) cases; each answer is checked for a 5xx and against the
document (an error body in its dialect's shape). Failures are collected, not raised, so one run reports them all.
tests/test_openapi_fuzz.py runs a short run in the suite; bench/fuzz.py a longer one."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as with_seed
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.errors import FailureGroup
from schemathesis.specs.openapi.checks import response_schema_conformance

CHECKS = [not_a_server_error, response_schema_conformance]


@dataclass
class Finding:
    operation: str
    status: int
    body: str
    message: str


@dataclass
class Report:
    cases: int = 0
    statuses: Counter = field(default_factory=Counter)
    per_operation: Counter = field(default_factory=Counter)
    seconds_per_operation: Counter = field(default_factory=Counter)
    findings: list[Finding] = field(default_factory=list)
    seconds: float = 0.0

    def merge(self, other: Report) -> None:
        self.cases += other.cases
        self.statuses += other.statuses
        self.per_operation += other.per_operation
        self.seconds_per_operation += other.seconds_per_operation
        self.findings += other.findings

    def summary(self) -> str:
        statuses = ", ".join(f"{s}: {n}" for s, n in sorted(self.statuses.items()))
        return f"{self.cases} cases over {len(self.per_operation)} operations in {self.seconds:.0f}s; {statuses}"


def load(base_url: str):
    return schemathesis.openapi.from_url(f"{base_url}/openapi.json")


# Operations that run the model: each valid case costs a generation (or a prompt's prefill), the rest are cheap.
GENERATING = tuple(
    f"POST {base}{path}"
    for base in ("/v1", "/api/v1", "/anthropic/v1")
    for path in ("/chat/completions", "/completions", "/responses", "/messages")
)


def run(
    base_url: str,
    headers: dict[str, str],
    examples: int,
    generating: int,
    skip=frozenset(),
    seed: int | None = None,
    processes: int = 2,
) -> Report:
    """Up to `examples` positive and as many negative cases per operation (`generating` for those that run the
    model; fewer where an operation has fewer distinct inputs), in `processes` processes that share the
    operations out (the worker batches what arrives together; Hypothesis is not shared across threads);
    operations whose label ("POST /v1/...") is in `skip` are left out. Without a `seed` the cases are the same
    every run."""
    labels = sorted(op.label for result in load(base_url).get_all_operations() if (op := result.ok()).label not in skip)
    shares = [labels[i::processes] for i in range(processes)]
    report = Report()
    started = time.monotonic()
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: forking pytest's threads is unsafe
    with ProcessPoolExecutor(processes, mp_context=context) as pool:
        args = [(base_url, headers, examples, generating, share, seed) for share in shares]
        for part in pool.map(_run_share, *zip(*args, strict=True)):
            report.merge(part)
    report.seconds = time.monotonic() - started
    return report


def _run_share(base_url, headers, examples, generating, labels, seed) -> Report:
    report = Report()
    for operation in load(base_url).get_all_operations():
        operation = operation.ok()
        if operation.label not in labels:
            continue
        count = generating if operation.label.startswith(GENERATING) else examples
        began = time.monotonic()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            with contextlib.suppress(Unsatisfiable):  # nothing of it can be made invalid (no body, no parameters)
                _run_operation(operation, mode, base_url, headers, count, seed, report)
        report.seconds_per_operation[operation.label] += time.monotonic() - began
    return report


def _run_operation(operation, mode, base_url, headers, examples, seed, report: Report) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=examples,
        phases=[Phase.generate],  # no shrinking: a finding is reported as generated, and the run stays short
        database=None,
        deadline=None,
        derandomize=seed is None,
        suppress_health_check=list(HealthCheck),
    )
    def one(case) -> None:
        response = case.call(base_url=base_url, headers=headers, timeout=120)
        finding = None
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except FailureGroup as group:
            message = "; ".join(str(getattr(f, "title", f)) for f in group.exceptions)
            finding = Finding(operation.label, response.status_code, response.text[:300], message)
        report.cases += 1
        report.statuses[response.status_code] += 1
        report.per_operation[operation.label] += 1
        if finding:
            report.findings.append(finding)

    (one if seed is None else with_seed(seed)(one))()


def describe(finding: Finding) -> str:
    try:
        body = json.dumps(json.loads(finding.body))[:300]
    except ValueError:
        body = finding.body
    return f"{finding.operation} -> {finding.status}: {finding.message}\n    {body}"
