"""`supervisor ctl service install|uninstall`: the systemd unit and the launchd plist it writes for this checkout,
checked by the platforms' own tools where they exist (systemd-analyze verify, plutil -lint), and parsed always."""

from __future__ import annotations

import configparser
import os
import plistlib
import pwd
import shutil
import subprocess
import sys

from tests.harness import ROOT

UNIT = "mlx-llm-server.service"
START = f"{ROOT}/scripts/start_server.sh prod --foreground"


def ctl_service(home, *args: str, path: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "XDG_CONFIG_HOME"} | {"HOME": str(home)}
    if path is not None:
        env["PATH"] = path
    return subprocess.run(
        [sys.executable, "-m", "supervisor", "ctl", "service", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def parse_unit(text: str) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str  # systemd's keys are case-sensitive
    unit.read_string(text)
    return unit


def verify_unit(path) -> None:
    """systemd's own check, where systemd is installed: no error and no warning."""
    if shutil.which("systemd-analyze") is None:
        return
    checked = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0 and not checked.stderr.strip(), checked.stderr


def test_a_user_unit_is_written_verified_and_removed_without_starting_anything(tmp_path):
    shown = ctl_service(tmp_path, "install", "--print", "--platform", "linux")
    assert shown.returncode == 0, shown.stderr
    unit = parse_unit(shown.stdout)
    service = unit["Service"]
    assert service["ExecStart"] == START and service["WorkingDirectory"] == str(ROOT)
    assert service["Restart"] == "on-failure" and service["Type"] == "simple"
    assert service["EnvironmentFile"] == f"-{ROOT}/.env"  # '-': read if present
    assert "User" not in service and unit["Install"]["WantedBy"] == "default.target"
    assert not (tmp_path / ".config").exists()  # --print writes nothing

    installed = ctl_service(tmp_path, "install", "--platform", "linux")
    path = tmp_path / ".config/systemd/user" / UNIT
    assert installed.returncode == 0, installed.stderr
    assert path.read_text() == shown.stdout
    assert "systemctl --user enable --now" in installed.stdout  # said how to start it, and did not
    verify_unit(path)

    wants = path.parent / "default.target.wants"  # what `systemctl --user enable` would have made
    wants.mkdir()
    (wants / UNIT).symlink_to(path)
    removed = ctl_service(tmp_path, "uninstall", "--platform", "linux")
    assert removed.returncode == 0, removed.stderr
    assert not path.exists() and not (wants / UNIT).is_symlink()
    assert f"systemctl --user stop {UNIT}" in removed.stdout
    again = ctl_service(tmp_path, "uninstall", "--platform", "linux")
    assert again.returncode == 0 and "not installed" in again.stdout


def test_a_system_unit_runs_as_the_checkouts_owner(tmp_path):
    shown = ctl_service(tmp_path, "install", "--system", "--print", "--platform", "linux")
    unit = parse_unit(shown.stdout)
    assert unit["Service"]["User"] == pwd.getpwuid(ROOT.stat().st_uid).pw_name
    assert unit["Install"]["WantedBy"] == "multi-user.target" and unit["Service"]["ExecStart"] == START
    path = tmp_path / UNIT
    path.write_text(shown.stdout)
    verify_unit(path)


def test_now_enables_and_starts_it_through_systemctl(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    (bin_dir / "systemctl").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')  # records what it was asked
    (bin_dir / "systemctl").chmod(0o755)
    path = f"{bin_dir}:{os.environ['PATH']}"
    assert ctl_service(tmp_path, "install", "--now", "--platform", "linux", path=path).returncode == 0
    assert calls.read_text().splitlines() == ["--user daemon-reload", f"--user enable --now {UNIT}"]
    assert ctl_service(tmp_path, "uninstall", "--now", "--platform", "linux", path=path).returncode == 0
    assert calls.read_text().splitlines()[2:] == [f"--user disable --now {UNIT}", "--user daemon-reload"]
    assert not (tmp_path / ".config/systemd/user" / UNIT).exists()


def test_a_launchd_plist_is_written_and_removed(tmp_path):
    installed = ctl_service(tmp_path, "install", "--platform", "macos")
    assert installed.returncode == 0, installed.stderr
    path = tmp_path / "Library/LaunchAgents/org.mlx-llm-server.plist"
    plist = plistlib.loads(path.read_bytes())
    assert plist["Label"] == "org.mlx-llm-server"
    assert plist["ProgramArguments"] == ["/bin/bash", f"{ROOT}/scripts/start_server.sh", "prod", "--foreground"]
    assert plist["WorkingDirectory"] == str(ROOT) and plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False}  # restarted when it fails
    assert plist["StandardOutPath"] == str(tmp_path / "Library/Logs/mlx-llm-server.log")
    if shutil.which("uv"):  # launchd starts it with a bare PATH: uv's folder comes first
        assert plist["EnvironmentVariables"]["PATH"].split(":")[0] == os.path.dirname(shutil.which("uv"))
    assert "launchctl bootstrap gui/" in installed.stdout
    if shutil.which("plutil"):
        linted = subprocess.run(["plutil", "-lint", str(path)], capture_output=True, text=True)
        assert linted.returncode == 0, linted.stdout
    removed = ctl_service(tmp_path, "uninstall", "--platform", "macos")
    assert removed.returncode == 0 and not path.exists() and "launchctl bootout gui/" in removed.stdout
