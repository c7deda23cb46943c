"""`python -m worker`: serve one model over ZeroMQ until told to stop or orphaned.

The supervisor starts it with `--launch '<json>'` (protocol/launch.py); standalone, the flags below build the
same WorkerLaunch, and a flag left out keeps the struct's default.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import typing
from pathlib import Path

import msgspec

from protocol.control import MODEL_TYPES
from protocol.launch import (
    DEFAULT_RUN_DIR,
    LAUNCH_FLAG,
    LOG_LEVEL_ENV,
    RUN_DIR_ENV,
    EngineSettings,
    LlamaCppSettings,
    WorkerLaunch,
    decode_launch,
    new_instance_id,
    run_dir_from_env,
    worker_endpoint,
)
from protocol.run_dir import private_run_dir


def build_parser() -> argparse.ArgumentParser:
    # A flag left out is absent from the namespace, so the struct's default applies (and shows in the help).
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__, argument_default=argparse.SUPPRESS)
    defaults = {f.name: f.default for f in msgspec.structs.fields(WorkerLaunch)}

    def flag(group, name: str, help: str, dest: str | None = None, **kwargs) -> None:
        default = defaults.get(dest or name.removeprefix("--").replace("-", "_"), msgspec.NODEFAULT)
        shown = "" if default in (msgspec.NODEFAULT, None, False) else f" (default: {default})"
        if kwargs.get("action") != "store_true" and "choices" not in kwargs:
            kwargs.setdefault("metavar", name.removeprefix("--").replace("-", "_").upper())
        group.add_argument(name, dest=dest, help=help + shown, **kwargs)

    parser.add_argument(LAUNCH_FLAG, help="the whole WorkerLaunch as JSON (how the supervisor starts a worker)")
    flag(parser, "--model-id", "the id clients use for this model")
    flag(parser, "--source", "model directory or Hugging Face repo id")
    flag(parser, "--model-type", "which backend serves it", choices=MODEL_TYPES)
    flag(parser, "--endpoint", "data-plane address to bind (default: ipc under --run-dir)", dest="data_endpoint")
    parser.add_argument("--run-dir", help=f"where the default endpoint goes (${RUN_DIR_ENV} or ./{DEFAULT_RUN_DIR})")
    flag(parser, "--supervisor", "the supervisor's worker socket; omit to run standalone", dest="supervisor_endpoint")
    flag(parser, "--context-length", "override the model's declared context", type=int)
    flag(parser, "--instance-id", "set by the supervisor for each spawn")
    flag(
        parser,
        "--exit-with-stdin",
        "exit when stdin reaches EOF: the supervisor holds the other end of that pipe, "
        "so the worker goes when its supervisor goes, however it died",
        action="store_true",
    )
    flag(parser, "--shutdown-grace", "seconds to drain on SIGTERM", type=float)
    engine = parser.add_argument_group("engine")
    flag(engine, "--draft-source", "draft model (directory or repo id) for speculative decoding")
    _struct_flags(engine, EngineSettings)
    _struct_flags(parser.add_argument_group("llama.cpp (type gguf)"), LlamaCppSettings)
    return parser


def _struct_flags(group, struct: type[msgspec.Struct]) -> None:
    """A flag per field of `struct`, typed and described by its annotation."""
    for field in msgspec.structs.fields(struct):
        kind, meta = typing.get_args(field.type)
        kind = (typing.get_args(kind) or (kind,))[0]  # an optional setting (int | None) is given as its type
        name = f"--{field.name.replace('_', '-')}"
        group.add_argument(name, type=kind, help=f"{meta.description} (default: {field.default})")


def parse_launch(argv: list[str] | None = None) -> WorkerLaunch:
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    try:
        if "launch" in args:
            return decode_launch(args["launch"])
        if "model_id" not in args or "source" not in args:
            parser.error(f"--model-id and --source are required (or {LAUNCH_FLAG})")
        fields = {name: value for name, value in args.items() if name in WorkerLaunch.__struct_fields__}
        engine = {name: value for name, value in args.items() if name in EngineSettings.__struct_fields__}
        llama_cpp = {name: value for name, value in args.items() if name in LlamaCppSettings.__struct_fields__}
        fields.setdefault("instance_id", new_instance_id())
        if "data_endpoint" not in fields:
            run_dir = Path(args["run_dir"]).resolve() if "run_dir" in args else run_dir_from_env()
            private_run_dir(run_dir)
            fields["data_endpoint"] = worker_endpoint(run_dir, fields["model_id"])
        return msgspec.convert(fields | {"engine": engine, "llama_cpp": llama_cpp}, WorkerLaunch)
    except ValueError as exc:  # msgspec's errors name the field
        parser.error(str(exc))


def rank_of(launch: WorkerLaunch) -> str:
    """How a sharded model's rank shows in its log lines (" r1"); nothing for a model in one process."""
    return f" r{launch.shard.rank}" if launch.shard else ""


def main(argv: list[str] | None = None) -> int:
    launch = parse_launch(argv)
    logging.basicConfig(
        level=os.environ.get(LOG_LEVEL_ENV, "INFO").upper(),
        format=f"%(asctime)s worker[{launch.model_id}{rank_of(launch)}] %(levelname)s %(message)s",
    )
    from worker.cpu_tuning import preload_blas

    preload_blas()  # before anything imports mlx.core: MLX binds its BLAS symbols when it loads
    if launch.shard is not None and launch.shard.rank > 0:
        from worker.lockstep import run_follower as run
    else:
        from worker.process import run

    code = run(launch)
    logging.shutdown()
    # The lifeline thread is blocked reading stdin and cannot be interrupted; a normal interpreter
    # shutdown would abort on its buffer lock. Everything worth flushing has been flushed above.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
