"""Words and sentences spoken by a speech synthesiser (espeak-ng or flite), as cached 8 kHz int16 audio.

One ``Take`` is a text said by one voice at one rate and pitch. The engines
differ in how they are asked (espeak-ng: words a minute and a 0-99 pitch;
flite: a duration stretch and a mean F0 in Hz), not in what comes back:
audio peak-normalised to 0.5 through the daemon's own front end, fitted to
one window or kept whole.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from kwspot.errors import KwspotError
from kwspot.frontend import fit_window, load_audio
from kwspot.train.data import cache_dir, to_int16

ENGINES = ("espeak-ng", "flite")


class Take(NamedTuple):
    """``text`` said by ``voice`` at ``rate`` (espeak-ng: words a minute; flite: duration stretch) and ``pitch``."""

    text: str
    voice: str
    rate: float
    pitch: float


def engine_path(engine: str, needed_by: str) -> str:
    """The synthesiser's executable, or a one-line error naming what needs it."""
    exe = shutil.which(engine)
    if exe is None:
        raise KwspotError(f"{needed_by} needs {engine} on PATH (Debian: apt-get install {engine})")
    return exe


def _argv(engine: str, exe: str, take: Take, wav: Path) -> list[str]:
    if engine == "espeak-ng":
        return [exe, "-v", take.voice, "-s", f"{take.rate:g}", "-p", f"{take.pitch:g}", "-w", str(wav), take.text]
    return [exe, "-voice", take.voice, "--setf", f"duration_stretch={take.rate:.3f}",
            "--setf", f"int_f0_target_mean={take.pitch:.0f}", "-t", take.text, "-o", str(wav)]


def speak(engine: str, takes: Sequence[Take], *, needed_by: str, fit: bool = True) -> list[np.ndarray]:
    """Int16 audio of every take (one 1 s window each when ``fit``), cached on disk by the takes themselves;
    ``needed_by`` names what asked for the synthesiser in the error when it is missing."""
    if engine not in ENGINES:
        raise ValueError(f"unknown speech synthesiser {engine!r}")
    exe = engine_path(engine, needed_by)
    key = hashlib.sha1(repr((engine, list(takes), fit)).encode()).hexdigest()[:16]
    target = cache_dir() / f"{engine}-{key}.npz"
    if target.is_file():
        with np.load(target) as z:
            return [z[k] for k in sorted(z.files, key=int)]
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "take.wav"
        for take in takes:
            done = subprocess.run(_argv(engine, exe, take, wav), capture_output=True)
            if done.returncode != 0:
                raise KwspotError(f"{engine} failed on voice {take.voice!r}: "
                                  f"{done.stderr.decode(errors='replace').strip()[:200]}")
            audio = load_audio(wav)
            audio = audio / max(float(np.max(np.abs(audio))), 1e-6) * 0.5
            out.append(to_int16(fit_window(audio) if fit else audio))
    target.parent.mkdir(parents=True, exist_ok=True)
    np.savez(target, **{str(i): a for i, a in enumerate(out)})
    return out
