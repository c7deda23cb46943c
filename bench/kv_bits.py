"""What a quantized KV cache (engine.kv_bits) buys and costs: streams per KV budget, decode speed, perplexity.

    uv run python bench/kv_bits.py [--budget-mb 1024] [--context 1024] [--tokens 48] [--rounds 2]

In-process, the bundled model, the engine the worker runs, kv_bits off (unset) / 8 / 4 side by side:
  streams    concurrent streams of --context tokens whose KV caches fit in --budget-mb, from the bytes the batch
             really holds for 8 such streams (goal at 8 bits: >= 1.8x the unquantized count)
  decode     generated tokens/s of 8 streams decoding --tokens each, the three settings interleaved over
             --rounds rounds, median (goal at 8 bits: >= 0.9x unquantized)
  ppl        the model's perplexity on a fixed public-domain text read in 32-token chunks, each attending to
             the cache of all before it (so every score passes through the quantized cache)
Prints only; nothing is asserted.
"""

# ruff: noqa: E402  (OpenBLAS must be loaded before anything imports mlx.core, as the worker does)

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker.cpu_tuning import preload_blas

preload_blas()  # as the worker does, before MLX loads: on a Linux CPU the weights then compute in float32

import mlx.core as mx
from mlx_lm.models.cache import BatchKVCache

from bench.inprocess import bundled_model, decode_rate
from protocol.errors import ErrorCode
from protocol.generation import ChatMessage, GenerateRequest, SamplingParams
from protocol.launch import MB, EngineSettings
from worker.batch_engine import BatchEngine
from worker.quantized_cache import BatchQuantizedKVCache

BITS = (None, 8, 4)
TEXT = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of foolishness, "
    "it was the epoch of belief, it was the epoch of incredulity, it was the season of Light, it was the season of "
    "Darkness, it was the spring of hope, it was the winter of despair, we had everything before us, we had nothing "
    "before us, we were all going direct to Heaven, we were all going direct the other way. "
    "When in the Course of human events, it becomes necessary for one people to dissolve the political bands which "
    "have connected them with another, and to assume among the powers of the earth, the separate and equal station "
    "to which the Laws of Nature and of Nature's God entitle them, a decent respect to the opinions of mankind "
    "requires that they should declare the causes which impel them to the separation. We hold these truths to be "
    "self-evident, that all men are created equal, that they are endowed by their Creator with certain unalienable "
    "Rights, that among these are Life, Liberty and the pursuit of Happiness. "
    "Call me Ishmael. Some years ago, never mind how long precisely, having little or no money in my purse, and "
    "nothing particular to interest me on shore, I thought I would sail about a little and see the watery part of "
    "the world. It is a way I have of driving off the spleen, and regulating the circulation."
)


def name(bits: int | None) -> str:
    """Unquantized KV is in the model's compute dtype: 16-bit on Apple Silicon, float32 where a Linux CPU has
    dequantized the weights (worker/cpu_tuning.py), so there the ratios are against 32-bit."""
    return f"{bits}-bit" if bits else "off"


def settings(bits: int | None) -> EngineSettings:
    return EngineSettings(decode_concurrency=8, prefill_step_size=256, prompt_cache_mb=0, kv_bits=bits)


def requests(tag: str, n: int, tokens: int, words: int = 0) -> list[GenerateRequest]:
    filler = " ".join(f"item{j}" for j in range(words))
    return [
        GenerateRequest(
            request_id=f"{tag}{i}",
            messages=[ChatMessage(role="user", content=f"{filler} Write a note about city number {i}.")],
            sampling=SamplingParams(temperature=0, max_tokens=tokens),
        )
        for i in range(n)
    ]


def kv_bytes_per_stream(loaded, bits: int | None, context: int) -> float:
    """The batch's KV bytes for 8 streams of about `context` prompt tokens, per stream, once they decode."""
    engine = BatchEngine(loaded, settings(bits))
    for request in requests("s", 8, 4, words=context // 3):
        engine.submit(request)
    while engine.busy and not engine.in_flight:
        engine.step(lambda event: None)
    held = engine.cache_bytes()[0]
    engine.abort_all(lambda event: None, ErrorCode.ABORTED, "measured")
    return held / 8


def perplexity(model, bits: int | None, tokens: list[int], chunk: int = 32) -> float:
    layers = len(model.layers)
    if bits is None:
        cache = [BatchKVCache([0]) for _ in range(layers)]
    else:
        cache = [BatchQuantizedKVCache([0], bits=bits) for _ in range(layers)]
    nll, scored = 0.0, 0
    for start in range(0, len(tokens) - 1, chunk):
        inputs = tokens[start : start + chunk]
        targets = mx.array(tokens[start + 1 : start + 1 + len(inputs)])
        logits = model(mx.array(inputs)[None], cache=cache)[0, : len(targets)].astype(mx.float32)
        nll += (mx.logsumexp(logits, axis=-1) - mx.take_along_axis(logits, targets[:, None], -1)[:, 0]).sum().item()
        scored += len(targets)
    return math.exp(nll / scored)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-mb", type=int, default=1024, help="the KV budget streams must fit in")
    parser.add_argument("--context", type=int, default=1024, help="prompt tokens per stream for the streams count")
    parser.add_argument("--tokens", type=int, default=48, help="tokens each of the 8 streams decodes")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the decode measurement")
    args = parser.parse_args()

    with bundled_model() as loaded:
        per_stream = {bits: kv_bytes_per_stream(loaded, bits, args.context) for bits in BITS}
        rates: dict = {bits: [] for bits in BITS}
        for _ in range(args.rounds):
            for bits in BITS:
                engine = BatchEngine(loaded, settings(bits))
                rates[bits].append(decode_rate(engine, requests("d", 8, args.tokens)))
        tokens = loaded.tokenizer.encode(TEXT)
        ppl = {bits: perplexity(loaded.model, bits, tokens) for bits in BITS}

    base_streams = args.budget_mb * MB // per_stream[None]
    base_rate = statistics.median(rates[None])
    print(f"KV budget {args.budget_mb} MB, streams of ~{args.context} prompt tokens; decode: 8 streams x "
          f"{args.tokens} tokens, median of {args.rounds}; perplexity over {len(tokens)} tokens")  # fmt: skip
    print(f"kv off: the model's compute dtype ({loaded.model.layers[0].self_attn.o_proj.weight.dtype} here)")
    print("kv      KV/stream   streams  vs off   decode tok/s  vs off   perplexity  vs off")
    for bits in BITS:
        streams, rate = int(args.budget_mb * MB // per_stream[bits]), statistics.median(rates[bits])
        print(f"{name(bits):<7} {per_stream[bits] / MB:7.2f} MB {streams:9d} {streams / base_streams:7.2f}x "
              f"{rate:14.1f} {rate / base_rate:7.2f}x {ppl[bits]:12.3f} {ppl[bits] - ppl[None]:+7.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
