"""Other words spoken by ``espeak-ng``, as extra ``_unknown_`` clips (``kwspot train --espeak-negatives``).

Many are near misses of the keywords (``yet``, ``know``, ``cup``, ``town``,
``lift``, ``write``, ``own``, ``of``, ``top``, ``goal``): the words a
spotter must learn to let pass. Each word is spoken by several voices at
several speeds and pitches (:mod:`kwspot.train.synth` renders and caches them).
The word lists serve every synthesiser (:mod:`kwspot.train.flite` too).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kwspot.train.synth import Take, speak

NEAR_MISSES = (
    "yet yeah yell yep chess guess less mess says "
    "know now snow nose note oh go-ahead nah "
    "cup pup us but hup op "
    "town brown gown dawn done dun clown round "
    "lift loft laughed lived leaf let's lest "
    "write ride bright fight light night white rite "
    "own an in one won gone con don "
    "of often oft awful "
    "top stock step stuff stab spot shop "
    "goal though show low slow ghost grow "
).split()
OTHER_WORDS = (
    "the a and to it that this was for with as his they at be from have or by not what all were when we "
    "there can your which their said if do will each about how many then them these some her would make "
    "like him into time has look two more see number way could people my than first water been call who "
    "find long day did get come made may part over new sound take only little work place year back give "
    "most very after thing our just name good sentence man think say great where help through much before "
    "line too mean old any same tell boy follow came want also around form three small set put end does "
    "another well large must big even such because turn here why ask went men read need land different "
    "home move try kind hand picture again change play spell air away animal house point page letter mother "
    "answer found study still learn should america world seven eight nine zero happy marvin sheila bird cat "
    "dog bed tree wow visual forward backward"
).split()
VOICES = ("en-us", "en-gb", "en-us+f3", "en-gb-scotland+f2", "en-029+m3", "en-gb-x-rp+f4")  # the default six
# further training voices (``--espeak-voices`` up to 40): none of the voices bench/quality.py holds out, and none of
# its three held-out accents (New York, Lancaster, West Midlands)
MORE_VOICES = ("en-us+m2", "en+m4", "en-gb-x-rp+m6", "en-029+f4", "en-us+klatt", "en+croak", "en-us+Andy",
               "en+Annie", "en-us+steph", "en-gb-scotland+m5", "en-us+grandma", "en+robert", "en-029+max",
               "en-gb-x-rp+f1",
               "en-us+m3", "en-us+f1", "en-029+m1", "en-gb-scotland+f4", "en-gb-x-rp+m7", "en+klatt2",
               "en-us+klatt4", "en-us+Alicia", "en+Michael", "en-us+Storm", "en-029+Lee", "en-us+travis",
               "en+shelby", "en-gb-scotland+norbert", "en-us+victor", "en-us+Denis", "en+iven3", "en-us+john",
               "en-gb-x-rp+m3", "en-us+whisper")
ALL_VOICES = VOICES + MORE_VOICES


def training_voices(n: int = len(VOICES)) -> tuple[str, ...]:
    """The first ``n`` training voices."""
    return ALL_VOICES[:n]


def espeak_clips(words: tuple[str, ...] | list[str] | None = None, seed: int = 0,
                 voices: Sequence[str] = VOICES) -> np.ndarray:
    """Int16 one-second windows of ``words`` (default: near misses and common words), several voices each."""
    takes = espeak_takes(list(words or (*NEAR_MISSES, *OTHER_WORDS)), voices, 1, seed)
    return np.stack(speak("espeak-ng", takes, needed_by="--espeak-negatives/--espeak-positives"))


def espeak_takes(words: Sequence[str], voices: Sequence[str], takes: int, seed: int,
                 rates: tuple[int, int] = (110, 200), pitches: tuple[int, int] = (25, 75)) -> list[Take]:
    """Each word said ``takes`` times by each voice, at random words a minute and pitch (half-open ranges)."""
    rng = np.random.default_rng(seed)
    return [Take(w.replace("-", " "), v, int(rng.integers(*rates)), int(rng.integers(*pitches)))
            for w in words for v in voices for _ in range(takes)]


def espeak_commands(keywords: Sequence[str], per_voice: int = 4, seed: int = 0,
                    voices: Sequence[str] = VOICES) -> tuple[np.ndarray, list[str]]:
    """The keywords said by the same voices, at the same kinds of speed and pitch, as the negatives.

    Used as positives (``kwspot train --espeak-positives``), so that a synthetic voice is
    no sign of ``_unknown_``. Returns int16 windows and their keyword.
    """
    words = [k for k in keywords for _ in range(per_voice)]
    return espeak_clips(words, seed=seed + 1, voices=voices), [w for w in words for _ in voices]
