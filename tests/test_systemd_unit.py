"""The systemd unit: `systemd-analyze verify` finds nothing wrong, and it agrees with the daemon and client."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kwspot.sinks.socket import default_socket_path

SYSTEMD = Path(__file__).resolve().parents[1] / "systemd"
UNIT = SYSTEMD / "kwspot.service"
WYOMING_UNIT = SYSTEMD / "kwspot-wyoming.service"
SYSUSERS = SYSTEMD / "kwspot.sysusers.conf"


def directives(text: str) -> dict[str, list[str]]:
    """Key -> values (a key may repeat), ignoring comments and sections."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;[":
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def installed_copy(tmp_path: Path, unit: Path = UNIT) -> Path:
    """The unit with its programs pointing at executables that exist here (verify checks them)."""
    kwspot = Path(sys.executable).with_name("kwspot")
    text = unit.read_text().replace("/opt/kwspot/venv/bin/kwspot", str(kwspot if kwspot.exists() else sys.executable))
    if not Path("/bin/kill").exists():
        text = text.replace("/bin/kill", shutil.which("kill") or sys.executable)
    copy = tmp_path / unit.name
    copy.write_text(text)
    return copy


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed (Debian: systemd)")
@pytest.mark.parametrize("source", [UNIT, WYOMING_UNIT], ids=lambda p: p.name)
def test_systemd_analyze_verify(tmp_path: Path, source: Path) -> None:
    unit = installed_copy(tmp_path, source)
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60)
    # verify exits 0 even for unknown keys or bad values, only printing them: any line about our unit is a failure
    about_us = [line for line in (r.stdout + r.stderr).splitlines() if unit.name in line]
    assert r.returncode == 0 and not about_us, r.stdout + r.stderr


def test_unit_agrees_with_the_daemon_and_client() -> None:
    d = directives(UNIT.read_text())
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"]
    assert d["User"] == ["kwspot"] and d["SupplementaryGroups"] == ["audio"]
    assert d["RuntimeDirectory"] == ["kwspot"] and d["Restart"] == ["on-failure"]
    assert float(d["WatchdogSec"][0]) > 0
    argv = shlex.split(d["ExecStart"][0])
    assert argv[1] == "listen" and "--no-console" in argv
    assert argv[argv.index("--log-format") + 1] == "plain"
    socket_arg = Path(argv[argv.index("--socket") + 1])
    # under the unit, systemd sets RUNTIME_DIRECTORY=/run/kwspot: the default path is the unit's path,
    # and a user's `kwspot events` (which does not see that variable) looks there too
    env = {"RUNTIME_DIRECTORY": f"/run/{d['RuntimeDirectory'][0]}"}
    saved = {k: os.environ.pop(k, None) for k in ("KWSPOT_SOCKET", "RUNTIME_DIRECTORY")}
    try:
        os.environ.update(env)
        assert default_socket_path() == socket_arg
    finally:
        os.environ.pop("RUNTIME_DIRECTORY", None)
        os.environ.update({k: v for k, v in saved.items() if v is not None})
    for hardening in ("NoNewPrivileges", "PrivateTmp", "ProtectKernelTunables", "ProtectKernelModules"):
        assert d[hardening] == ["yes"], hardening
    assert d["ProtectSystem"] == ["strict"] and d["ProtectHome"] == ["yes"]
    assert d["DevicePolicy"] == ["closed"] and d["DeviceAllow"] == ["char-alsa rw"]
    assert "MemoryDenyWriteExecute" not in d, "breaks sounddevice's cffi callback (see the unit's comment)"


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers not installed")
def test_sysusers_creates_user_in_audio_group(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (etc / "group").write_text("root:x:0:\naudio:x:29:\n")
    for name in ("shadow", "gshadow"):
        (etc / name).touch()
    r = subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", "-"],
        stdin=SYSUSERS.open(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    if r.returncode != 0 and os.geteuid() != 0:
        pytest.skip(f"systemd-sysusers --root needs root here: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr
    assert any(line.startswith("kwspot:") for line in (etc / "passwd").read_text().splitlines())
    audio = next(line for line in (etc / "group").read_text().splitlines() if line.startswith("audio:"))
    assert "kwspot" in audio.split(":")[3].split(",")


def test_wyoming_unit_agrees_with_the_server() -> None:
    from kwspot.cli import build_parser
    from kwspot.wyoming_server import check_uri

    d = directives(WYOMING_UNIT.read_text())
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"] and float(d["WatchdogSec"][0]) > 0
    assert d["User"] == ["kwspot"] and "SupplementaryGroups" not in d  # no audio device: audio comes over TCP
    argv = shlex.split(d["ExecStart"][0])
    args = build_parser(argv[1:]).parse_args(argv[1:])
    assert args.command == "wyoming" and args.log_format == "plain"
    check_uri(args.uri, args.zeroconf)
    assert args.uri.startswith("tcp://")
    assert {"AF_INET", "AF_INET6", "AF_UNIX"} <= set(d["RestrictAddressFamilies"][0].split())
    assert d["PrivateDevices"] == ["yes"] and d["MemoryDenyWriteExecute"] == ["yes"]
    for hardening in ("NoNewPrivileges", "PrivateTmp", "ProtectKernelTunables", "ProtectKernelModules"):
        assert d[hardening] == ["yes"], hardening
