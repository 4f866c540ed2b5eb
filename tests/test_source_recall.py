"""The bundled model hears the commands from every source of positives, not only Speech Commands' channel.

A source used only for negatives teaches a shortcut (synthetic voice = unknown);
these tests ask the bundled model for its recall on each source's own commands.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import SPEECH_COMMANDS
from kwspot.frontend import fit_window, load_audio
from kwspot.model import Model, bundled_model_path

VOICES = ("en-us-nyc", "en-gb-x-gbclan+f1", "en-us+f5")  # not among the voices used in training


@pytest.fixture(scope="module")
def model() -> Model:
    return Model(bundled_model_path())


def heard(model: Model, audio: np.ndarray) -> str:
    probs = model.predict(fit_window(audio))
    return model.labels[int(np.argmax(probs))]


def test_espeak_voices_saying_the_commands_are_heard(model: Model, tmp_path: Path):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (Debian: apt-get install espeak-ng)")
    right = 0
    for voice in VOICES:
        for word in model.keywords:
            wav = tmp_path / f"{word}.wav"
            subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", str(wav), word], check=True)
            audio = load_audio(wav)
            right += heard(model, audio / max(float(np.max(np.abs(audio))), 1e-6) * 0.5) == word
    assert right >= 0.7 * len(VOICES) * len(model.keywords), f"{right} of {len(VOICES) * len(model.keywords)} heard"


def test_a_flite_voice_never_trained_on_saying_the_commands_is_heard(model: Model, tmp_path: Path):
    """A second synthesiser, made another way than espeak-ng (a recorded speaker), in its held-out voice."""
    if shutil.which("flite") is None:
        pytest.skip("flite is not installed (Debian: apt-get install flite)")
    from kwspot.train.flite import BENCH_VOICES

    right, said = 0, 0
    for voice in BENCH_VOICES:
        for word in model.keywords:
            for stretch, pitch in ((0.9, 110), (1.0, 170), (1.2, 140)):
                wav = tmp_path / f"{word}.wav"
                subprocess.run(["flite", "-voice", voice, "--setf", f"duration_stretch={stretch}", "--setf",
                                f"int_f0_target_mean={pitch}", "-t", word, "-o", str(wav)], check=True)
                audio = load_audio(wav)
                right += heard(model, audio / max(float(np.max(np.abs(audio))), 1e-6) * 0.5) == word
                said += 1
    assert right >= 0.6 * said, f"{right} of {said} heard"


def test_speech_commands_testing_clips_are_heard(model: Model):
    lst = SPEECH_COMMANDS / "testing_list.txt"
    if not lst.is_file():
        pytest.skip(f"Speech Commands data not found at {SPEECH_COMMANDS}")
    names = [n for n in lst.read_text().split() if n.split("/")[0] in model.keywords][::8]
    right = sum(heard(model, load_audio(SPEECH_COMMANDS / n)) == n.split("/")[0] for n in names)
    assert right >= 0.9 * len(names), f"{right} of {len(names)} heard"
