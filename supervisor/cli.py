"""The `supervisor` console script: `supervisor run` (the daemon) and `supervisor ctl <command>`.

In a fleet, `supervisor run --host NAME` serves as the config's host NAME, and `ctl ... --host NAME` (or `--all`
for ps, memory and status) calls that host over TCP with the caller's own key pair ($MLX_FLEET_KEY).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from protocol.curve import HOST_KEY_ENV, KEY_FILE_ENV, own_key_pair, public_key
from protocol.launch import DEFAULT_RUN_DIR, LOG_LEVEL_ENV, RUN_DIR_ENV, ctl_endpoint
from supervisor.ctl import COMMANDS, PER_HOST_VIEWS
from supervisor.ctl.format import show, styled
from supervisor.ctl_client import CtlClient, CtlError, SupervisorUnreachable
from supervisor.host import HOST_ENV

DEFAULT_CONFIG = os.environ.get("MLX_SERVER_CONFIG", "configs/models.yaml")
OFFLINE = ("import", "keygen", "service")  # commands that need no supervisor


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="supervisor", description="MLX LLM Server supervisor")
    parser.add_argument(
        "--run-dir", default=os.environ.get(RUN_DIR_ENV, DEFAULT_RUN_DIR), help=f"sockets and pid file (${RUN_DIR_ENV})"
    )
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="models config ($MLX_SERVER_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the supervisor daemon")
    run.add_argument("--config", default=argparse.SUPPRESS, help="models config ($MLX_SERVER_CONFIG)")
    run.add_argument("--host", default=os.environ.get(HOST_ENV), help=f"which of the config's hosts (${HOST_ENV})")
    run.add_argument("--key", default=os.environ.get(HOST_KEY_ENV), help=f"the host's key pair file (${HOST_KEY_ENV})")
    ctl = sub.add_parser("ctl", help="operator commands against a running supervisor")
    ctl_sub = ctl.add_subparsers(dest="ctl_command", required=True)
    for name, module in COMMANDS.items():
        doc = (module.__doc__ or "").strip()
        command = ctl_sub.add_parser(name, help=doc.splitlines()[0], description=doc)
        module.add_arguments(command)
        if name not in OFFLINE:
            command.add_argument("--host", help="a host of the config's fleet, over TCP (default: this machine's)")
            command.add_argument("--config", default=argparse.SUPPRESS, help="the config listing the hosts")
        if name in PER_HOST_VIEWS:
            command.add_argument("--all", action="store_true", help="every host of the config's fleet, in turn")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run_dir = Path(args.run_dir).resolve()
    if args.command == "run":
        return _run(args, run_dir)
    if args.ctl_command in OFFLINE:
        return COMMANDS[args.ctl_command].run(None, args, sys.stdout)
    try:
        targets = _targets(args, run_dir)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    code = 0
    for i, (name, client) in enumerate(targets):
        if len(targets) > 1:
            print(("\n" if i else "") + f"host {name} ({client.endpoint})", flush=True)
        code = max(code, _call(args, client))
    return code


def _run(args, run_dir: Path) -> int:
    from supervisor.config import load_config
    from supervisor.daemon import run
    from supervisor.host import host_of

    logging.basicConfig(
        level=os.environ.get(LOG_LEVEL_ENV, "INFO").upper(),
        format="%(asctime)s supervisor %(levelname)s %(message)s",
    )
    try:
        config = load_config(args.config, args.host)
        host = host_of(config, args.key)
    except ValueError as exc:
        print(f"supervisor: bad config: {exc}", file=sys.stderr)
        return 2
    run(config, run_dir, host)
    return 0


def _targets(args, run_dir: Path) -> list[tuple[str | None, CtlClient]]:
    """The supervisors a ctl command goes to: this machine's (ipc://), or the fleet's hosts it names."""
    if not args.host and not getattr(args, "all", False):
        return [(None, CtlClient(ctl_endpoint(run_dir)))]
    from supervisor.config import load_config

    config = load_config(args.config)
    if not config.hosts:
        raise ValueError(f"{args.config} lists no hosts")
    if args.host and args.host not in config.hosts:
        raise ValueError(f"no host {args.host!r} in {args.config} (hosts: {', '.join(config.hosts)})")
    own = own_key_pair()
    if own is None:
        raise ValueError(f"calling a host needs this client's key pair: set ${KEY_FILE_ENV} (`supervisor ctl keygen`)")
    hosts = [config.hosts[args.host]] if args.host else list(config.hosts.values())
    return [(h.name, CtlClient(h.endpoint, curve=(own, public_key(h.public_key, config.base_dir)))) for h in hosts]


def _call(args, client: CtlClient) -> int:
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
