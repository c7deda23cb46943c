"""The stack as a platform service: a systemd unit (Linux) or a launchd property list (macOS) that runs
`scripts/start_server.sh prod --foreground` from this checkout and restarts it when it fails.

Only text is made here (`ctl service` writes, removes and prints it): a user unit by default, which runs while
its user is logged in (`loginctl enable-linger` keeps it running without), or a system one. Settings come from
the checkout's `.env`, which start_server.sh reads itself (and the systemd unit names as its environment file).
"""

from __future__ import annotations

import os
import plistlib
import pwd
import shutil
from dataclasses import dataclass
from pathlib import Path

NAME = "mlx-llm-server"
LABEL = "org.mlx-llm-server"  # launchd's label
PLATFORMS = {"linux": "systemd", "macos": "launchd"}
STOP_SECONDS = 60  # how long the platform waits for a graceful stop: the workers drain within it


@dataclass(frozen=True)
class Service:
    """Where a service definition goes and what it says."""

    platform: str  # "linux" or "macos"
    system: bool  # a system-wide service instead of one of the user's
    checkout: Path
    home: Path

    @property
    def path(self) -> Path:
        if self.platform == "macos":
            folder = Path("/Library/LaunchDaemons") if self.system else self.home / "Library/LaunchAgents"
            return folder / f"{LABEL}.plist"
        if self.system:
            return Path("/etc/systemd/system") / f"{NAME}.service"
        config = Path(os.environ.get("XDG_CONFIG_HOME") or self.home / ".config")
        return config / "systemd/user" / f"{NAME}.service"

    @property
    def command(self) -> list[str]:
        return [str(self.checkout / "scripts/start_server.sh"), "prod", "--foreground"]

    @property
    def owner(self) -> str:
        """The checkout's owner: a system service runs as that user, not as root."""
        return pwd.getpwuid(self.checkout.stat().st_uid).pw_name

    def search_path(self) -> str:
        """PATH for the service: where uv is now first (a service starts with a bare PATH), then the usual."""
        folders = [str(Path(found).parent)] if (found := shutil.which("uv")) else []
        folders += ["/opt/homebrew/bin", "/usr/local/bin"] if self.platform == "macos" else ["/usr/local/bin"]
        folders += ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
        return ":".join(dict.fromkeys(folders))

    def render(self) -> str:
        return self._plist() if self.platform == "macos" else self._unit()

    def _unit(self) -> str:
        lines = [
            "[Unit]",
            "Description=MLX LLM Server (supervisor, gateway and model workers)",
            "After=network-online.target",
            "Wants=network-online.target",
            "",
            "[Service]",
            "Type=simple",
            f"WorkingDirectory={self.checkout}",
            f"EnvironmentFile=-{self.checkout / '.env'}",  # '-': only if present
            f'Environment="PATH={self.search_path()}"',
            f"ExecStart={' '.join(_quoted(a) for a in self.command)}",
            "Restart=on-failure",
            "RestartSec=5",
            f"TimeoutStopSec={STOP_SECONDS}",
            *([f"User={self.owner}"] if self.system else []),
            "",
            "[Install]",
            f"WantedBy={'multi-user.target' if self.system else 'default.target'}",
        ]
        return "\n".join(lines) + "\n"

    def _plist(self) -> str:
        # launchd opens it before the script runs (run/ may not exist yet); run/server.log has the same lines.
        log = str(Path("/Library/Logs" if self.system else self.home / "Library/Logs") / f"{NAME}.log")
        plist = {
            "Label": LABEL,
            "ProgramArguments": ["/bin/bash", *self.command],
            "WorkingDirectory": str(self.checkout),
            "EnvironmentVariables": {"PATH": self.search_path()},
            "RunAtLoad": True,
            "KeepAlive": {"SuccessfulExit": False},  # restarted when it fails, not after a clean stop
            "ThrottleInterval": 5,
            "ExitTimeOut": STOP_SECONDS,
            "StandardOutPath": log,
            "StandardErrorPath": log,
            **({"UserName": self.owner} if self.system else {}),
        }
        return plistlib.dumps(plist).decode()

    def start_commands(self) -> list[list[str]]:
        if self.platform == "macos":
            domain = "system" if self.system else f"gui/{os.getuid()}"
            return [["launchctl", "bootstrap", domain, str(self.path)]]
        scope = [] if self.system else ["--user"]
        return [["systemctl", *scope, "daemon-reload"], ["systemctl", *scope, "enable", "--now", f"{NAME}.service"]]

    def stop_commands(self, installed: bool = True) -> list[list[str]]:
        """Stop it and keep it from starting again: while its file is there, or (installed=False) once it is gone
        (systemd still knows the unit until its daemon-reload)."""
        if self.platform == "macos":
            domain = "system" if self.system else f"gui/{os.getuid()}"
            return [["launchctl", "bootout", f"{domain}/{LABEL}"]]
        scope = [] if self.system else ["--user"]
        if installed:
            return [["systemctl", *scope, "disable", "--now", f"{NAME}.service"]]
        return [["systemctl", *scope, "stop", f"{NAME}.service"], ["systemctl", *scope, "daemon-reload"]]

    def remove(self) -> list[Path]:
        """Delete the file, and on systemd the links `enable` made to it (what `disable` removes)."""
        links = list(self.path.parent.glob(f"*.wants/{self.path.name}")) if self.platform == "linux" else []
        for path in [*links, self.path]:
            path.unlink()
        return [self.path, *links]


def _quoted(argument: str) -> str:
    """An ExecStart argument, in double quotes when it holds a space (systemd's own quoting)."""
    return f'"{argument}"' if " " in argument else argument
