"""Finding input devices through sounddevice (PortAudio), with clear errors."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path
from types import ModuleType
from typing import Any

from kwspot.errors import KwspotError

NO_DEVICE_HELP = (
    "no audio input device found: plug in a microphone (or start your sound server), "
    "pick one with --device (see `kwspot devices`), or read audio with --input FILE"
)


def import_sounddevice() -> ModuleType:
    """Import sounddevice, turning a missing PortAudio into a one-line error."""
    try:
        import sounddevice
    except OSError:
        raise KwspotError(
            "the PortAudio library is missing: install it (Debian: sudo apt-get install libportaudio2)"
        ) from None
    except Exception as exc:
        if type(exc).__name__ != "PortAudioError":  # sounddevice's, not importable before: Pa_Initialize failed
            raise
        raise KwspotError(f"PortAudio cannot start ({str(exc)[:120]}); is the ALSA configuration "
                          "(~/.asoundrc, /etc/asound.conf) broken?") from None
    release_alsa_plugins()
    return sounddevice


def release_alsa_plugins() -> None:
    """Unload the ALSA plugins PortAudio loaded only to list devices (a52, jack, speex, ...: 11 MiB here).

    PortAudio opens every ALSA device once when it starts; alsa-lib keeps their plugin libraries (and
    theirs: libavcodec, ...) loaded until its global configuration is freed, which is what PortAudio
    itself does when it terminates. Freeing it now drops those not in use; opening a stream later
    re-reads the configuration and loads just the plugin that stream needs.
    """
    global _asound
    if _asound is None:
        try:
            _asound = ctypes.CDLL(ctypes.util.find_library("asound") or "libasound.so.2")
        except OSError:
            _asound = False
    if _asound:
        _asound.snd_config_update_free_global()


_asound: Any = None


def pulse_socket_paths(env: dict[str, str]) -> list[Path]:
    """Where a local PulseAudio (or pipewire-pulse) server puts its socket: the user's, then the system's."""
    runtime = env.get("PULSE_RUNTIME_PATH") or (env.get("XDG_RUNTIME_DIR") and f"{env['XDG_RUNTIME_DIR']}/pulse")
    return [*([Path(runtime, "native")] if runtime else []), Path("/run/pulse/native")]


def audio_landscape(env: dict[str, str] | None = None) -> tuple:
    """What PortAudio would find if it started again: the ALSA device nodes and the sound servers' sockets.

    Restarting PortAudio costs about 12 KB of memory it never gives back (alsa-lib), so a retry restarts it
    only when this changed (a device plugged in, a sound server started or restarted).
    """
    env = os.environ if env is None else env
    try:
        nodes = tuple(sorted(os.listdir("/dev/snd")))
    except OSError:
        nodes = ()
    runtime = env.get("XDG_RUNTIME_DIR")
    identities = []
    for path in [*pulse_socket_paths(env), *([Path(runtime, "pipewire-0")] if runtime else [])]:
        try:
            stat = path.stat()
            identities.append((str(path), stat.st_ino, stat.st_mtime_ns))
        except OSError:
            pass
    return nodes, tuple(identities)


def input_devices() -> list[dict[str, Any]]:
    """All devices with input channels, each with its PortAudio index."""
    sd = import_sounddevice()
    try:
        devices = sd.query_devices()
    except sd.PortAudioError as exc:
        raise KwspotError(f"cannot list audio devices ({exc})") from None
    return [dict(d) for d in devices if d["max_input_channels"] > 0]


def default_input_index() -> int | None:
    sd = import_sounddevice()
    index = sd.default.device[0]
    if index is None or index < 0:
        try:
            index = sd.query_devices(kind="input")["index"]
        except (sd.PortAudioError, ValueError):
            return None
    return int(index)


def resolve_device(device: int | str | None) -> dict[str, Any]:
    """The input device meant by an index, a part of a name, or None (the default)."""
    devices = input_devices()
    if device is None:
        index = default_input_index()
        matches = [d for d in devices if d["index"] == index]
        if not matches:
            raise KwspotError(NO_DEVICE_HELP)
        return matches[0]
    if isinstance(device, int) or (isinstance(device, str) and device.isdecimal()):
        matches = [d for d in devices if d["index"] == int(device)]
        if not matches:
            raise KwspotError(f"audio device {device}: no input device has that index (see `kwspot devices`)")
        return matches[0]
    matches = [d for d in devices if device.lower() in d["name"].lower()]
    if not matches:
        raise KwspotError(f"audio device {device!r}: no input device name contains it (see `kwspot devices`)")
    exact = [d for d in matches if d["name"].lower() == device.lower()]
    if len(matches) > 1 and len(exact) != 1:
        names = "; ".join(f"{d['index']}: {d['name']}" for d in matches)
        raise KwspotError(f"audio device {device!r} matches several input devices ({names}): be more precise")
    return exact[0] if exact else matches[0]


def describe_devices() -> list[str]:
    """One line per input device: marker, index, name, channels, default rate."""
    default = default_input_index()
    lines = []
    for d in input_devices():
        mark = "*" if d["index"] == default else " "
        lines.append(
            f"{mark} {d['index']:>3}  {d['name']}  ({d['max_input_channels']} ch, {d['default_samplerate']:.0f} Hz)"
        )
    return lines
