"""What does constrained decoding cost? The same batch of greedy generations free and under a JSON schema.

    uv run python bench/structured.py [--streams 4] [--tokens 32] [--rounds 3]

In-process BatchEngine on the bundled model: `streams` requests decoded together, first unconstrained, then
each with a JSON schema enforced by the llguidance logits processor (a token mask computed per sequence per
step, and one host sync to read the token just sampled). The two alternate round by round so drift in machine
speed hits both alike. Reported: generated tokens per second, and the ratio constrained / free (the baseline).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.inprocess import bundled_model, decode_rate
from protocol.generation import ChatMessage, GenerateRequest, SamplingParams
from protocol.launch import EngineSettings
from worker.batch_engine import BatchEngine

SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "chapters": {"type": "array", "items": {"type": "string"}},
        "rating": {"type": "integer", "minimum": 1, "maximum": 5},
    },
    "required": ["title", "chapters", "rating"],
}


def batch(engine: BatchEngine, streams: int, tokens: int, schema: dict | None) -> float:
    """Generated tokens per second for `streams` requests decoded together."""
    requests = [
        GenerateRequest(
            request_id=f"r{i}",
            messages=[ChatMessage(role="user", content=f"Describe book number {i} about dragons as JSON.")],
            # Either side may end before `tokens` (a complete JSON value ends the constrained ones):
            # the rate counts what was generated.
            sampling=SamplingParams(temperature=0, max_tokens=tokens),
            json_schema=schema,
        )
        for i in range(streams)
    ]
    return decode_rate(engine, requests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with bundled_model() as loaded:
        # No prompt cache: each round pays the same prefill on both sides.
        engine = BatchEngine(loaded, EngineSettings(prompt_cache_mb=0))
        batch(engine, 1, 4, SCHEMA)  # warm-up: compiles, and builds llguidance's tokenizer once
        free, constrained = [], []
        for _ in range(args.rounds):
            free.append(batch(engine, args.streams, args.tokens, None))
            constrained.append(batch(engine, args.streams, args.tokens, SCHEMA))
    f, c = statistics.median(free), statistics.median(constrained)
    print(f"{args.streams} streams x {args.tokens} tokens, median of {args.rounds} rounds (includes prefill)")
    print(f"  free (baseline)  {f:7.1f} tok/s")
    print(f"  json_schema      {c:7.1f} tok/s   {c / f:.2f}x")


if __name__ == "__main__":
    main()
