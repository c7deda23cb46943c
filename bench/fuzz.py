"""Fuzz: a longer schemathesis run than the test suite's, from the server's own /openapi.json.

    uv run python bench/fuzz.py [--examples 50] [--generating 10] [--processes 2] [--seed N]

Starts its own server (supervisor, gateway, workers for SmolLM2-135M and all-MiniLM-L6-v2) in a temporary
directory, with one admin service whose answers are held to a few tokens (limits.max_tokens), then sends up to
--examples valid and as many invalid requests to every operation of the document (--generating to those that
run the model), each checked for a 5xx and against the document (error bodies in their dialect's shape).
Prints the cases, their statuses, the slowest operations, every finding, and the supervisor's crash counters
before and after (goal: 0 findings, 0 crashes). Without --seed the cases are the same every run. Pulls are left
out (they reach for a model hub). Prints only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from supervisor.model_import import import_model
from tests import api_fuzz
from tests.harness import Server, write_config

MODEL, EMBEDDER, KEY = "smollm2-135m-instruct", "all-minilm-l6-v2", "fuzz_bench-key-not-secret"


def crashes(server: Server) -> dict[str, int]:
    return {model_id: info.crashes for model_id, info in server.models().items() if model_id}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=50, help="valid and invalid cases per operation")
    parser.add_argument("--generating", type=int, default=10, help="the same, for operations that run the model")
    parser.add_argument("--processes", type=int, default=2, help="fuzzing processes (the worker batches)")
    parser.add_argument("--seed", type=int, default=None, help="a Hypothesis seed (default: the same cases)")
    parser.add_argument("--max-tokens", type=int, default=4, help="the service's ceiling on tokens per answer")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        store = Path(tmp) / "store"
        import_model(f"bundled:{MODEL}", MODEL, store)
        import_model(f"bundled:{EMBEDDER}", EMBEDDER, store)
        models = [
            {"id": "smollm2", "source": MODEL, "context_length": 512},
            {"id": EMBEDDER, "source": EMBEDDER, "type": "embedding"},
        ]
        service = {"name": "fuzz", "admin": True, "default_model": "smollm2", "limits": {"max_tokens": args.max_tokens}}
        server = Server(write_config(Path(tmp) / "models.yaml", store, models, services=[service]))
        server.env["API_KEYS"] = f"fuzz:{KEY}"
        server.start()
        try:
            before = crashes(server)
            report = api_fuzz.run(
                server.url,
                {"Authorization": f"Bearer {KEY}"},
                args.examples,
                args.generating,
                skip=frozenset({"POST /api/v1/models/pull"}),
                seed=args.seed,
                processes=args.processes,
            )
            after = crashes(server)
        finally:
            server.stop()
    print(report.summary())
    print("slowest operations:")
    for label, seconds in report.seconds_per_operation.most_common(8):
        print(f"  {seconds:6.1f}s {report.per_operation[label]:5d} cases  {label}")
    print(f"findings: {len(report.findings)}")
    for finding in report.findings:
        print("  " + api_fuzz.describe(finding))
    print(f"worker crashes: before {before}, after {after} ({sum(after.values()) - sum(before.values())} new)")


if __name__ == "__main__":
    main()
