"""A second synthesiser, ``flite`` (``kwspot train --flite N``): other voices, made another way.

espeak-ng's voices are all one formant synthesiser; a model trained on them
alone can still take any other synthetic voice for ``_unknown_``. flite's
voices are recorded speakers (diphones and statistical parametric voices).
Each of its training voices says the near misses and common words of
:mod:`kwspot.train.espeak` as negatives and the keywords as positives, at
random duration stretch and mean pitch, so that neither side of a label is
this synthesiser's alone. ``slt`` is kept out of training for the benchmark.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kwspot.train.espeak import NEAR_MISSES, OTHER_WORDS
from kwspot.train.synth import Take, speak

VOICES = ("kal", "kal16", "awb", "rms")  # kal16 is kal's speaker recorded anew at 16 kHz
BENCH_VOICES = ("slt",)  # never used in training
NEGATIVE_TAKES = 2  # takes of each other word per voice
NEEDED_BY = "--flite"


def flite_takes(words: Sequence[str], voices: Sequence[str], takes: int, seed: int) -> list[Take]:
    """Each word said ``takes`` times by each voice, 0.8-1.3 times as long and at 85-220 Hz mean pitch."""
    rng = np.random.default_rng(seed)
    return [Take(w.replace("-", " "), v, round(float(rng.uniform(0.8, 1.3)), 3), int(rng.integers(85, 221)))
            for w in words for v in voices for _ in range(takes)]


def flite_clips(seed: int = 0, voices: Sequence[str] = VOICES) -> np.ndarray:
    """Int16 one-second windows of the near misses and common words, ``NEGATIVE_TAKES`` a voice."""
    takes = flite_takes((*NEAR_MISSES, *OTHER_WORDS), voices, NEGATIVE_TAKES, seed)
    return np.stack(speak("flite", takes, needed_by=NEEDED_BY))


def flite_commands(keywords: Sequence[str], per_voice: int, seed: int = 0,
                   voices: Sequence[str] = VOICES) -> tuple[np.ndarray, list[str]]:
    """The keywords, ``per_voice`` takes each by every voice: int16 windows and their keyword."""
    takes = flite_takes(keywords, voices, per_voice, seed + 1)
    labels = [k for k in keywords for _ in voices for _ in range(per_voice)]  # flite_takes' order; "-" kept
    return np.stack(speak("flite", takes, needed_by=NEEDED_BY)), labels
