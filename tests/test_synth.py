"""Speech synthesisers as training material: flite's voices, the shared renderer and its cache."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from kwspot.errors import KwspotError
from kwspot.train import flite, synth
from kwspot.train.synth import Take

needs_flite = pytest.mark.skipif(shutil.which("flite") is None, reason="flite not installed (apt-get install flite)")


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KWSPOT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@needs_flite
def test_every_flite_voice_is_a_voice_of_its_own_and_the_benchmark_voice_is_never_trained_on(tmp_path: Path):
    """flite falls back to its default voice, silently, for a name it does not know: each must sound different."""
    sounds = set()
    for voice in flite.VOICES + flite.BENCH_VOICES:
        subprocess.run(["flite", "-voice", voice, "-t", "stop", "-o", str(tmp_path / "v.wav")], check=True)
        sounds.add((tmp_path / "v.wav").read_bytes())
    assert len(sounds) == len(flite.VOICES) + len(flite.BENCH_VOICES)
    assert not set(flite.BENCH_VOICES) & set(flite.VOICES)


@needs_flite
def test_flite_commands_are_one_second_windows_of_speech_labelled_by_what_was_said():
    windows, words = flite.flite_commands(("yes", "go"), per_voice=2, seed=0, voices=("kal", "awb"))
    assert windows.shape == (8, 8000) and windows.dtype == np.int16
    assert words == ["yes"] * 4 + ["go"] * 4
    _, words = flite.flite_commands(("turn-on",), per_voice=1, seed=0, voices=("kal",))
    assert words == ["turn-on"]  # the keyword as the model names it, though flite is asked to say "turn on"
    peaks = np.abs(windows.astype(np.int32)).max(axis=1)
    assert np.all(np.abs(peaks - 0.5 * 32767) < 0.02 * 32767), peaks  # every take normalised to half scale
    # four takes of a word differ (random stretch and pitch), and "yes" is longer than "go" on average
    assert len({w.tobytes() for w in windows}) == 8
    spoken = (np.abs(windows.astype(np.float32)) > 0.05 * 32767).sum(axis=1)
    assert spoken[:4].mean() > spoken[4:].mean()


@needs_flite
def test_takes_vary_stretch_and_pitch_within_their_ranges_and_repeat_with_the_seed():
    takes = flite.flite_takes(["stop"] * 50, ("kal",), 1, seed=3)
    assert all(0.8 <= t.rate <= 1.3 and 85 <= t.pitch <= 220 for t in takes)
    assert len({(t.rate, t.pitch) for t in takes}) > 40
    assert takes == flite.flite_takes(["stop"] * 50, ("kal",), 1, seed=3)


@needs_flite
def test_speak_keeps_what_it_rendered_and_does_not_run_the_synthesiser_again(monkeypatch: pytest.MonkeyPatch,
                                                                            own_cache: Path):
    takes = [Take("left", "kal", 1.0, 120), Take("right", "awb", 1.1, 100)]
    first = synth.speak("flite", takes, fit=False, needed_by="test")
    assert len(list(own_cache.glob("flite-*.npz"))) == 1

    def no_run(*args, **kwargs):
        raise AssertionError("the synthesiser ran again")

    monkeypatch.setattr(synth.subprocess, "run", no_run)
    again = synth.speak("flite", takes, fit=False, needed_by="test")
    assert [a.tobytes() for a in again] == [a.tobytes() for a in first]
    assert len(first[0]) != 8000  # fit=False keeps the whole take


def test_a_missing_synthesiser_is_one_line_naming_the_option_and_the_package(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(synth.shutil, "which", lambda name: None)
    with pytest.raises(KwspotError, match=r"^--flite needs flite on PATH \(Debian: apt-get install flite\)$"):
        flite.flite_clips()


def test_a_synthesiser_that_fails_is_one_line_naming_the_voice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    fake = tmp_path / "flite"
    fake.write_text("#!/bin/sh\necho 'cannot open voice' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setattr(synth.shutil, "which", lambda name: str(fake))
    with pytest.raises(KwspotError, match=r"^flite failed on voice 'kal': cannot open voice$"):
        synth.speak("flite", [Take("up", "kal", 1.0, 100)], needed_by="test")
