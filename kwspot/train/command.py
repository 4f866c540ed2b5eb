"""``kwspot train``: data folder in, LiteRT model + sidecar + model card + epoch log out."""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import logging
import os
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import numpy as np
from rich.console import Console

from kwspot import KEYWORDS, UNKNOWN, modelfile
from kwspot.argtypes import Number, NumberRange
from kwspot.errors import KwspotError
from kwspot.frontend import WINDOW_SAMPLES, load_audio
from kwspot.paths import NAME_MAX, cannot_write_in, checked, not_a_file, shown
from kwspot.train.augment import AugmentSettings, Sources, epoch_plan, fixed_set, make_batch
from kwspot.train.data import (
    NOISE_DIR,
    Dataset,
    clip_windows,
    load_long,
    phrase_files,
    scan,
    speech_files,
    writable_cache,
)
from kwspot.train.espeak import ALL_VOICES, VOICES, training_voices
from kwspot.train.export import stem_file
from kwspot.train.loop import LoopSettings
from kwspot.train.models import check_options

log = logging.getLogger("kwspot")

SNR_RANGE = NumberRange(-30.0, 60.0)  # --snr-db: the dB range background noise is mixed at

ARCH_DEFAULTS = {
    "default": {"batch": 64, "lr": 2e-3},
    "dstcn": {"batch": 64, "lr": 2e-3},
    "workshop": {"batch": 32, "lr": 1e-3},
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path, help="Speech Commands layout folder (WAV or FLAC)")
    parser.add_argument("--out", required=True, type=Path,
                        help="output stem, e.g. models/mine -> mine.tflite/.json/.md/.csv")
    parser.add_argument("--keywords", type=keyword_list, default=KEYWORDS, metavar="WORD,...",
                        help="the words the model fires on: word folders of --data (default: the ten commands)")
    parser.add_argument("--arch", default="default", choices=sorted(ARCH_DEFAULTS))
    parser.add_argument("--width", type=Number(0.25, 8.0), default=1.0, metavar="W",
                        help="channels times W (default and dstcn architectures): capacity at about W^2 the cost")
    parser.add_argument("--epochs", type=Number(1, 100000, integer=True), default=40)
    parser.add_argument("--seed", type=Number(0, 2**32 - 1, integer=True), default=0)
    parser.add_argument("--batch", type=Number(1, 65536, integer=True), default=None,
                        help="batch size (default 64; workshop 32)")
    parser.add_argument("--lr", type=Number(1e-9, 10.0), default=None, help="peak learning rate, cosine decay")
    parser.add_argument("--patience", type=Number(1, 100000, integer=True), default=15,
                        help="early stopping: epochs without a better validation accuracy")
    parser.add_argument("--negatives", action="append", type=Path, default=[], metavar="DIR",
                        help="continuous speech without the keywords (repeatable); its windows become _unknown_")
    parser.add_argument("--espeak-negatives", action="store_true",
                        help="add other words (many near misses) spoken by espeak-ng as _unknown_")
    parser.add_argument("--espeak-positives", type=Number(0, 100000, integer=True), default=0, metavar="N",
                        help="the keywords said by the voices of --espeak-negatives, N per voice, as positives")
    parser.add_argument("--espeak-voices", type=Number(1, len(ALL_VOICES), integer=True), default=len(VOICES),
                        metavar="N", help=f"how many espeak-ng voices speak them (default {len(VOICES)}, "
                                          f"at most {len(ALL_VOICES)})")
    parser.add_argument("--flite", type=Number(0, 100000, integer=True), default=0, metavar="N",
                        help="a second synthesiser: flite's voices say the other words of --espeak-negatives "
                             "(twice a voice) as _unknown_ and the keywords, N per voice, as positives")
    parser.add_argument("--phrases", action="append", type=Path, default=[], metavar="DIR",
                        help="folder of folders of short recordings of other speech (e.g. wake_phrases); the "
                             "training share (file-name hash) becomes _unknown_")
    parser.add_argument("--balance-words", action="store_true",
                        help="draw other-word clips word by word, not clip by clip")
    parser.add_argument("--channel-aug", type=Number(0.0, 1.0), default=0.0, metavar="P",
                        help="share of examples sent through a random room/microphone (reverb, EQ, level)")
    parser.add_argument("--babble", type=Number(0.0, 1.0), default=0.0, metavar="P",
                        help="share of noisy examples whose noise is continuous speech of --negatives (keywords "
                             "said over other talk), at 5-25 dB SNR")
    parser.add_argument("--speed", type=Number(0.0, 1.0), default=0.0, metavar="P",
                        help="share of word examples played 0.85-1.15 times as fast (tempo and pitch together)")
    parser.add_argument("--hard-negatives", type=Path, action="append", default=[], metavar="NPY",
                        help="mined windows (python -m kwspot.train.mine) to train on as _unknown_")
    parser.add_argument("--teacher", type=Path, action="append", default=[], metavar="MODEL",
                        help="distil from this trained .tflite (repeatable: the teachers are averaged)")
    parser.add_argument("--distill-weight", type=Number(0.0, 1.0), default=0.5, metavar="W",
                        help="share of the teachers' probabilities in each target, the rest the label (default 0.5)")
    parser.add_argument("--label-smoothing", type=Number(0.0, 0.5), default=0.0, metavar="E",
                        help="train towards (1 - E) * the label + E spread evenly over all labels (default 0: off)")
    parser.add_argument("--mixup", type=Number(0.0, 10.0), default=0.0, metavar="ALPHA",
                        help="mix each window with another of its batch, weight max(l, 1 - l) with l drawn from "
                             "Beta(ALPHA, ALPHA), and their targets alike (e.g. 0.2; default 0: off)")
    parser.add_argument("--ema", type=Number(0.0, 0.99999), default=0.0, metavar="DECAY",
                        help="validate and keep a moving average of the weights, updated every batch with this "
                             "decay (e.g. 0.999; 0: the raw weights)")
    parser.add_argument("--worst-of", type=Number(1, 16, integer=True), default=1, metavar="K",
                        help="draw each negative window K times and train on the draw the model takes most for a "
                             "command, as a stream's worst window (default 1: off)")
    parser.add_argument("--no-fragments", action="store_true", help="do not train on keyword halves as _unknown_")
    parser.add_argument("--specaugment", action="store_true", help="mask log-mel bands and frames while training")
    parser.add_argument("--warp", type=Number(0.0, 0.3), default=0.0, metavar="A",
                        help="vocal tract length perturbation: each training window's frequencies scaled by a "
                             "factor drawn from 1-A..1+A (e.g. 0.1; pitch and timing kept)")
    parser.add_argument("--noise-prob", type=Number(0.0, 1.0), default=0.8,
                        help="share of examples mixed with background noise")
    parser.add_argument("--snr-db", type=SNR_RANGE, default=(0.0, 25.0), metavar="LOW,HIGH",
                        help="signal-to-noise ratios (dB) the background noise is mixed at, drawn uniformly "
                             "(default 0,25; a negative LOW needs the = form: --snr-db=-5,25)")
    parser.add_argument("--unknown-ratio", type=Number(0.0, 100.0), default=2.0,
                        help="_unknown_ examples per epoch, relative to one keyword class")
    parser.add_argument("--max-minutes", type=Number(0.0, 525600.0), default=0.0,
                        help="stop training after this wall clock")
    parser.add_argument("--cache", type=Path, default=None, help="decoded-audio cache (default ~/.cache/kwspot)")


def keyword_list(text: str) -> tuple[str, ...]:
    """``--keywords eight,stop`` -> ("eight", "stop"): distinct folder names, none starting with ``_``."""
    words = tuple(w.strip() for w in text.split(","))
    bad = [w for w in words
           if not w or w.startswith(("_", ".")) or not modelfile.label_ok(w) or len(os.fsencode(w)) > NAME_MAX]
    if bad or len(set(words)) != len(words):
        raise argparse.ArgumentTypeError(f"expected distinct word folder names such as eight,stop, not {text[:60]!r}")
    return words


def run(args: argparse.Namespace) -> int:

    _check_out(args.out)  # bad input fails fast, before TensorFlow loads and long before the model is written
    try:
        check_options(args.arch, args.width, args.warp)
    except ValueError as exc:
        raise KwspotError(str(exc)) from None
    with _claim(args.out, writable_cache(args.cache)):
        return _train(args)


def _claim(out: Path, cache: Path) -> IO[bytes]:
    """An exclusive lock on the output stem while training runs: a second ``kwspot train`` into it is refused
    (both would write the same four files, the epoch logs interleaved). The system drops it when the process ends."""
    path = cache / f"train-{hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:16]}.lock"
    try:
        lock = open(path, "wb")  # noqa: SIM115 - returned open: the caller holds it for the whole run
    except OSError as exc:
        raise KwspotError(f"{shown(path)}: cannot make the training lock ({exc.strerror or exc})") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise KwspotError(f"{shown(out)}: another kwspot train is writing this model now") from None
    return lock


def _train(args: argparse.Namespace) -> int:
    from kwspot.train import require_tensorflow

    data = scan(args.data, keywords=args.keywords)
    if data.missing_keywords():
        raise KwspotError(f"{args.data}: no clips for keyword(s) {', '.join(data.missing_keywords())}")
    if not data.clips["train"]:
        raise KwspotError(f"{args.data}: no training clips (everything is in the validation or testing list)")
    if not data.clips["validation"]:
        raise KwspotError(f"{args.data}: no validation clips (training keeps the epoch that does best on them; "
                          "name some in validation_list.txt)")
    if data.untrained_keywords():
        raise KwspotError(f"{args.data}: no training clips for keyword(s) {', '.join(data.untrained_keywords())}")
    if args.babble and not args.negatives:
        raise KwspotError("--babble mixes speech under the words: it needs --negatives DIR (continuous speech)")
    for folder in args.negatives:
        speech_files(folder)
    for folder in args.phrases:
        phrase_files(folder)
    for path in args.hard_negatives:
        _load_windows(path)
    from kwspot.train.distill import Teachers

    teachers = Teachers(args.teacher, data.labels, args.distill_weight, WINDOW_SAMPLES) if args.teacher else None
    require_tensorflow()
    from kwspot.train import export, loop, models

    console = Console(stderr=True)
    arch = ARCH_DEFAULTS[args.arch]
    aug = AugmentSettings(noise_prob=args.noise_prob, unknown_ratio=args.unknown_ratio,
                          fragments=not args.no_fragments, balance_words=args.balance_words,
                          channel_prob=args.channel_aug, babble_prob=args.babble, snr_db=args.snr_db,
                          speed_prob=args.speed)
    settings = LoopSettings(epochs=args.epochs, batch=args.batch or arch["batch"], lr=args.lr or arch["lr"],
                            patience=args.patience, seed=args.seed, max_minutes=args.max_minutes,
                            label_smoothing=args.label_smoothing, mixup=args.mixup, worst_of=args.worst_of,
                            ema=args.ema)
    console.print(f"[bold]{args.data}[/]: " + ", ".join(f"{s} {len(data.clips[s])}" for s in data.clips))
    train_src = _sources(data, "train", args, console)
    if args.noise_prob and not any(len(n) >= WINDOW_SAMPLES for n in train_src.noise):
        log.warning("%s: no background noise of 1 s or more in %s/: training without noise, whatever "
                    "--noise-prob says", shown(args.data), NOISE_DIR)
    extra, extra_labels = [], []
    if args.espeak_negatives:
        from kwspot.train.espeak import espeak_clips

        extra.append(espeak_clips(seed=args.seed, voices=training_voices(args.espeak_voices)))
        extra_labels.append(np.full(len(extra[-1]), data.labels.index(UNKNOWN)))
        console.print(f"espeak-ng negatives: {len(extra[-1])} clips")
    if args.espeak_positives:
        from kwspot.train.espeak import espeak_commands

        windows, words = espeak_commands(data.keywords, args.espeak_positives, seed=args.seed,
                                         voices=training_voices(args.espeak_voices))
        extra.append(windows)
        extra_labels.append(np.array([data.labels.index(w) for w in words]))
        console.print(f"espeak-ng positives: {len(windows)} clips")
    if args.flite:
        from kwspot.train.flite import flite_clips, flite_commands

        extra.append(flite_clips(seed=args.seed))
        extra_labels.append(np.full(len(extra[-1]), data.labels.index(UNKNOWN)))
        windows, words = flite_commands(data.keywords, args.flite, seed=args.seed)
        extra.append(windows)
        extra_labels.append(np.array([data.labels.index(w) for w in words]))
        console.print(f"flite: {len(extra[-2])} negatives, {len(windows)} positives")
    n_hard = 0
    for path in args.hard_negatives:
        extra.append(_load_windows(path))
        extra_labels.append(np.full(len(extra[-1]), data.labels.index(UNKNOWN)))
        n_hard += len(extra[-1])
        console.print(f"hard negatives: {len(extra[-1])} windows from {path}")
    if extra:
        train_src = Sources(train_src.clips, train_src.labels, train_src.noise, train_src.speech,
                            np.concatenate(extra), np.concatenate(extra_labels), train_src.words, train_src.phrases,
                            n_hard)
    val_src = _sources(data, "validation", args, console)
    clip_windows([c.path for c in data.clips["testing"]], args.cache)  # a bad testing clip fails now, not after
    val = fixed_set(val_src, AugmentSettings(noise_prob=0.5, snr_db=(5.0, 20.0), gain_db=(-6.0, 6.0),
                                             fragments=aug.fragments), seed=1234)
    console.print(f"validation set: {len(val[1])} windows; speech files {len(train_src.speech)} train, "
                  f"{len(val_src.speech)} validation")

    model = models.build(args.arch, seed=args.seed, specaugment=args.specaugment, n_labels=len(data.labels),
                         width=args.width, warp=args.warp)
    rng = np.random.default_rng(args.seed + 1)
    plan = epoch_plan(train_src, aug, rng)[:2048]
    models.set_normalisation(model, [make_batch(train_src, plan[i : i + 256], aug, rng)[0]
                                     for i in range(0, len(plan), 256)])
    out: Path = args.out
    best = loop.train(model, train_src, val, aug, settings, stem_file(out, ".csv"), console, teachers)
    macs = models.count_macs(model)
    meta: dict[str, Any] = {
        "labels": list(data.labels),
        "arch": args.arch,
        "params": int(model.count_params()),
        "macs": macs,
        "trained": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "training": {**vars(args), "batch": settings.batch, "lr": settings.lr, **best},
        "data_counts": {s: data.counts(s) for s in data.clips},
    }
    meta["training"] = {k: (str(v) if isinstance(v, Path) else [str(p) for p in v] if isinstance(v, (list, tuple))
                            else v) for k, v in meta["training"].items() if k != "func"}
    info = export.export(model, out, val[0], val[1], meta)
    tflite = stem_file(out, ".tflite")
    console.print(f"wrote {tflite} ({info['format']}, {info['bytes']} bytes, "
                  f"{info['ms_per_window']} ms/window)")
    from kwspot.model import Model
    from kwspot.train.card import write_card
    from kwspot.train.evaluate import clip_report

    lite = Model(tflite)
    metrics = {split: clip_report(lite, data, split, args.cache) for split in ("validation", "testing")
               if data.clips[split]}
    for split, m in metrics.items():
        console.print(f"{split}: {len(data.labels)}-way {m['accuracy_12']:.4f}  "
                      f"keywords only {m['accuracy_10']:.4f}  "
                      f"balanced {m['balanced_accuracy']:.4f}  ({m['n']} clips)")
    meta["export"] = info
    meta["clip_metrics"] = {s: {k: m[k] for k in ("n", "accuracy_12", "accuracy_10", "balanced_accuracy")}
                            for s, m in metrics.items()}
    sidecar = {**lite.file.meta, **meta}
    modelfile.write(tflite, sidecar)
    write_card(stem_file(out, ".md"), sidecar, metrics, host=platform.processor() or platform.machine())
    console.print(f"wrote {', '.join(str(stem_file(out, s)) for s in ('.json', '.md', '.csv'))}")
    return 0


OUTPUTS = (".tflite", ".json", ".csv", ".md")  # what training writes beside the --out stem


def _check_out(out: Path) -> None:
    """The output stem: a name the system takes, in a folder that exists (made here) and can be written."""
    out = checked(out, "output")
    if out.is_dir():
        raise KwspotError(f"{shown(out)}: a directory; --out is a file stem such as models/mine")
    checked(stem_file(out, ".tflite"), "output")  # the longest name written
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KwspotError(f"{shown(out.parent)}: cannot make the output folder ({exc.strerror or exc})") from None
    if why := cannot_write_in(out.parent):
        raise KwspotError(f"{shown(out.parent)}: output folder not writable ({why})")
    for suffix in OUTPUTS:
        target = stem_file(out, suffix)
        if os.path.lexists(target) and not target.is_file():  # found now, not after an hour of training
            raise KwspotError(f"{shown(target)}: {not_a_file(target, 'output')}")


def _load_windows(path: Path) -> np.ndarray:
    if not path.is_file():  # a FIFO would block the load for ever, a device feed it garbage
        raise KwspotError(f"{shown(path)}: {not_a_file(path, 'hard negatives')}")
    try:
        windows = np.load(path, mmap_mode="r")  # mapped: only the checks below read it before training
    except (OSError, ValueError) as exc:
        raise KwspotError(f"{path}: unreadable hard negatives ({str(exc)[:80]})") from None
    if not isinstance(windows, np.ndarray) or windows.shape[1:] != (8000,) or windows.dtype != np.int16:
        raise KwspotError(f"{path}: hard negatives must be int16 windows of shape (n, 8000)")
    return windows


def _sources(data: Dataset, split: str, args: argparse.Namespace, console: Console) -> Sources:
    clips = data.clips[split]
    windows = clip_windows([c.path for c in clips], args.cache, progress=True)
    labels = data.label_indices(split)
    noise = load_long(data.noise_files, "train" if split == "train" else "eval")
    speech: list[np.ndarray] = []
    for folder in args.negatives:
        speech += load_long(speech_files(folder, split), "all")
    phrases: list[np.ndarray] = []
    if split == "train":
        for folder in getattr(args, "phrases", []):
            phrases += [load_audio(f) for f in phrase_files(folder, split)]
        if phrases:
            console.print(f"phrases: {len(phrases)} recordings of other speech ({split} share)")
    return Sources(windows, labels, noise, speech, words=[c.word for c in clips], phrases=phrases)
