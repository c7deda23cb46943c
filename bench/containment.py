"""What do the containment guards cost? The same batch decoded with the engine's guards and without them.

    uv run python bench/containment.py [--streams 8] [--tokens 32] [--rounds 3]

In-process BatchEngine on the bundled model. Half the streams are greedy (one shared sampler: mlx-lm samples
them in one batched call, through one shared guard), half seeded with a repetition penalty (a sampler and a
logits processor of their own: the per-sequence path, each through its guard). The baseline is the same engine
with the guards taken out (the raw samplers and processors handed to mlx-lm, no check after the step). The two
alternate round by round so drift in machine speed hits both alike. Reported: generated tokens per second, and
the ratio guarded / raw, which should be 1.00 within noise.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import worker.batch_engine
from bench.inprocess import bundled_model, decode_rate
from protocol.generation import ChatMessage, GenerateRequest, SamplingParams
from protocol.launch import EngineSettings
from worker.batch_engine import BatchEngine


@contextlib.contextmanager
def unguarded(engine: BatchEngine):
    """The engine as it was before containment: samplers and processors go to mlx-lm as they are."""
    saved = worker.batch_engine.guard_processors, worker.batch_engine.tripped
    worker.batch_engine.guard_processors, worker.batch_engine.tripped = (lambda p: p), (lambda guards: None)
    engine._guarded = lambda sampler: sampler
    try:
        yield engine
    finally:
        worker.batch_engine.guard_processors, worker.batch_engine.tripped = saved
        del engine._guarded


def batch(engine: BatchEngine, streams: int, tokens: int) -> float:
    """Generated tokens per second for `streams` requests decoded together."""
    requests = []
    for i in range(streams):
        seeded = dict(temperature=0.8, seed=i, repetition_penalty=1.1) if i % 2 else dict(temperature=0)
        message = ChatMessage(role="user", content=f"Tell story number {i} about a dragon.")
        sampling = SamplingParams(max_tokens=tokens, **seeded)
        requests.append(GenerateRequest(request_id=f"r{i}", messages=[message], sampling=sampling))
    return decode_rate(engine, requests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with bundled_model() as loaded:
        # No prompt cache: each round pays the same prefill on both sides.
        engine = BatchEngine(loaded, EngineSettings(prompt_cache_mb=0))
        batch(engine, 2, 4)  # warm-up
        raw, guarded = [], []
        for _ in range(args.rounds):
            with unguarded(engine):
                raw.append(batch(engine, args.streams, args.tokens))
            guarded.append(batch(engine, args.streams, args.tokens))
    r, g = statistics.median(raw), statistics.median(guarded)
    print(f"{args.streams} streams x {args.tokens} tokens, median of {args.rounds} rounds (includes prefill)")
    print(f"  raw (baseline)  {r:7.1f} tok/s")
    print(f"  guarded         {g:7.1f} tok/s   {g / r:.2f}x")


if __name__ == "__main__":
    main()
