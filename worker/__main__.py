"""`python -m worker`: serve one model over ZeroMQ until told to stop or orphaned."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import uuid
from pathlib import Path

from protocol.control import MODEL_TYPES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    parser.add_argument("--model-id", required=True, help="the id clients use for this model")
    parser.add_argument("--source", required=True, help="model directory or Hugging Face repo id")
    parser.add_argument("--model-type", default="llm", choices=MODEL_TYPES, help="which backend serves it")
    parser.add_argument("--endpoint", help="data-plane address to bind (default: ipc under --run-dir)")
    parser.add_argument("--run-dir", default=os.environ.get("MLX_SERVER_RUN_DIR", "run"))
    parser.add_argument("--supervisor", help="the supervisor's worker socket; omit to run standalone")
    parser.add_argument("--context-length", type=int, help="override the model's declared context")
    parser.add_argument("--instance-id", default=None, help="set by the supervisor for each spawn")
    parser.add_argument(
        "--exit-with-stdin",
        action="store_true",
        help="exit when stdin reaches EOF: the supervisor holds the other end of that pipe, "
        "so the worker goes when its supervisor goes, however it died",
    )
    parser.add_argument("--shutdown-grace", type=float, default=10.0, help="seconds to drain on SIGTERM")
    engine = parser.add_argument_group("engine")
    engine.add_argument("--decode-concurrency", type=int, default=16, help="sequences decoding in one batch")
    engine.add_argument("--prefill-concurrency", type=int, default=4, help="prompts processed together")
    engine.add_argument("--prefill-step-size", type=int, default=512, help="prompt tokens per step (chunked prefill)")
    engine.add_argument(
        "--prompt-cache-mb", type=int, default=512, help="prompt prefix cache + live KV caches; 0 turns it off"
    )
    engine.add_argument("--draft-source", help="draft model (directory or repo id) for speculative decoding")
    engine.add_argument("--num-draft-tokens", type=int, default=3, help="tokens the draft proposes per round")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO").upper(),
        format=f"%(asctime)s worker[{args.model_id}] %(levelname)s %(message)s",
    )
    if args.endpoint is None:
        run_dir = Path(args.run_dir).resolve()
        run_dir.mkdir(parents=True, exist_ok=True)
        args.endpoint = f"ipc://{run_dir}/worker-{args.model_id}.sock"
    args.instance_id = args.instance_id or uuid.uuid4().hex[:12]
    from worker.cpu_tuning import preload_blas

    preload_blas()  # before anything imports mlx.core: MLX binds its BLAS symbols when it loads
    from worker.process import run

    code = run(args)
    logging.shutdown()
    # The lifeline thread is blocked reading stdin and cannot be interrupted; a normal interpreter
    # shutdown would abort on its buffer lock. Everything worth flushing has been flushed above.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
