"""The `supervisor` console script: `supervisor run` (the daemon) and `supervisor ctl <command>`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from protocol.launch import DEFAULT_RUN_DIR, LOG_LEVEL_ENV, RUN_DIR_ENV, ctl_endpoint
from supervisor.ctl import COMMANDS
from supervisor.ctl.format import show, styled
from supervisor.ctl_client import CtlClient, CtlError, SupervisorUnreachable

DEFAULT_CONFIG = os.environ.get("MLX_SERVER_CONFIG", "configs/models.yaml")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="supervisor", description="MLX LLM Server supervisor")
    parser.add_argument(
        "--run-dir", default=os.environ.get(RUN_DIR_ENV, DEFAULT_RUN_DIR), help=f"sockets and pid file (${RUN_DIR_ENV})"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the supervisor daemon")
    run.add_argument("--config", default=DEFAULT_CONFIG, help="models config ($MLX_SERVER_CONFIG)")
    ctl = sub.add_parser("ctl", help="operator commands against a running supervisor")
    ctl_sub = ctl.add_subparsers(dest="ctl_command", required=True)
    for name, module in COMMANDS.items():
        doc = (module.__doc__ or "").strip()
        module.add_arguments(ctl_sub.add_parser(name, help=doc.splitlines()[0], description=doc))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run_dir = Path(args.run_dir).resolve()
    if args.command == "run":
        from supervisor.config import load_config
        from supervisor.daemon import run

        logging.basicConfig(
            level=os.environ.get(LOG_LEVEL_ENV, "INFO").upper(),
            format="%(asctime)s supervisor %(levelname)s %(message)s",
        )
        try:
            config = load_config(args.config)
        except ValueError as exc:
            print(f"supervisor: bad config: {exc}", file=sys.stderr)
            return 2
        run(config, run_dir)
        return 0
    client = CtlClient(ctl_endpoint(run_dir))
    try:
        return COMMANDS[args.ctl_command].run(client, args, sys.stdout)
    except CtlError as exc:
        show(sys.stderr, styled("failed", f"error: {exc}"))
        return 1
    except SupervisorUnreachable as exc:
        show(sys.stderr, styled("failed", f"error: {exc}"))
        return 3


if __name__ == "__main__":
    sys.exit(main())
