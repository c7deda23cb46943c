"""Install or uninstall the stack as a platform service: a systemd unit on Linux (a user unit; --system for
/etc/systemd/system), a launchd plist on macOS (~/Library/LaunchAgents; --system for /Library/LaunchDaemons).
It runs `scripts/start_server.sh prod --foreground` from this checkout, with its .env, restarted on failure.
Nothing is started or stopped unless --now; --print shows the file without writing it. Works without a running
supervisor."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from supervisor.service_units import PLATFORMS, Service

CHECKOUT = Path(__file__).resolve().parents[2]


def add_arguments(parser) -> None:
    parser.add_argument("action", choices=["install", "uninstall"])
    parser.add_argument("--system", action="store_true", help="a system-wide service (needs root) instead of a user's")
    parser.add_argument("--now", action="store_true", help="also start it (install) or stop it (uninstall)")
    parser.add_argument("--print", action="store_true", help="print the file instead of writing or removing it")
    parser.add_argument(
        "--platform",
        choices=sorted(PLATFORMS),
        default="macos" if sys.platform == "darwin" else "linux",
        help="linux (systemd) or macos (launchd); default: this machine's",
    )


def _shown(commands: list[list[str]]) -> str:
    return "\n".join("  " + " ".join(c) for c in commands)


def _run(commands: list[list[str]], out, strict: bool = True) -> int:
    """Run each command, saying so; the first failure ends them (strict) or is only reported."""
    for command in commands:
        print("$ " + " ".join(command), file=out)
        try:
            done = subprocess.run(command, capture_output=True, text=True)
            failure = f"exited with {done.returncode}: {done.stderr.strip()}" if done.returncode else None
        except OSError as exc:
            failure = str(exc)
        if failure and strict:
            print(f"error: {command[0]} {failure}", file=out)
            return 1
        if failure:
            print(f"warning: {command[0]} {failure}", file=out)
    return 0


def run(client, args, out) -> int:
    service = Service(platform=args.platform, system=args.system, checkout=CHECKOUT, home=Path.home())
    if args.print:
        print(service.render(), end="", file=out)
        return 0
    try:
        return (_install if args.action == "install" else _uninstall)(service, args.now, out)
    except PermissionError:
        print(f"error: cannot write {service.path}: a --system service needs root (sudo)", file=out)
        return 1


def _install(service: Service, now: bool, out) -> int:
    service.path.parent.mkdir(parents=True, exist_ok=True)
    service.path.write_text(service.render())
    print(f"wrote {service.path} ({PLATFORMS[service.platform]})", file=out)
    if now:
        return _run(service.start_commands(), out)
    print(f"start it (and at every boot or login) with:\n{_shown(service.start_commands())}", file=out)
    if service.platform == "linux" and not service.system:
        print("a user unit stops when you log out unless lingering is on:  loginctl enable-linger", file=out)
    return 0


def _uninstall(service: Service, now: bool, out) -> int:
    if not service.path.exists():
        print(f"not installed: {service.path} does not exist", file=out)
        return 0
    if now:
        _run(service.stop_commands(), out, strict=False)  # it may not be running: remove it all the same
    for path in service.remove():
        print(f"removed {path}", file=out)
    if now:
        return _run(service.stop_commands(installed=False)[1:], out)  # systemd forgets it (launchd: nothing)
    print(f"if it is running, stop it with:\n{_shown(service.stop_commands(installed=False))}", file=out)
    return 0
