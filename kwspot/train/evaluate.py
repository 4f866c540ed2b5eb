"""``kwspot evaluate``: clip accuracy on a list, or detection quality on a generated stream.

Needs only the LiteRT runtime (no TensorFlow). Clip mode reads every listed
clip through the daemon's front end and reports accuracy over all classes
and over the keywords alone, balanced accuracy, per-class precision/recall
and the confusion matrix. Stream mode builds a stream
(:mod:`kwspot.train.streams`), runs the daemon's own pipeline over it
(:func:`kwspot.pipeline.stream_probabilities`) and scores it
(:mod:`kwspot.train.scoring`). The words are the model's: its sidecar says
which labels are keywords, and the data folder is read accordingly.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from kwspot import SILENCE, UNKNOWN
from kwspot.argtypes import Number, NumberList
from kwspot.detector import DetectorSettings
from kwspot.errors import KwspotError
from kwspot.frontend import SAMPLE_RATE
from kwspot.model import Model, bundled_model_path
from kwspot.modelfile import save_thresholds, sidecar_path
from kwspot.paths import cannot_write_in, shown
from kwspot.pipeline import hop_levels
from kwspot.predict import json_text
from kwspot.train.data import NOISE_DIR, Dataset, clip_windows, scan, to_float, writable_cache
from kwspot.train.scoring import Verdict, pick_thresholds, replay, score, sweep
from kwspot.train.streams import Stream, StreamSpec, parse_snrs, split_streams

log = logging.getLogger("kwspot")

# The whole stream is built in memory: float32 at 8 kHz is 1.9 MB a minute, and building it (pieces, noise bed,
# gains, mix) peaks near six copies, about 12 MB a minute. 240 minutes of each kind, plus the split's own
# clips, stay within a few GB.
MAX_STREAM_MINUTES = 240.0


class _SnrGiven(argparse.Action):
    """--snr, remembering that it was given (not given, a data folder without noise measures clean streams)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        namespace.snr_given = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path, help="Speech Commands layout folder")
    parser.add_argument("--list", default="testing_list.txt", help="clip list to score (default testing_list.txt); "
                        "validation_list.txt scores the validation split")
    parser.add_argument("--model", type=Path, default=None, help="model .tflite (default: the bundled model)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--plot", type=Path, default=None, help="write a PNG (confusion matrix, or DET curve)")
    parser.add_argument("--cache", type=Path, default=None, help="decoded-audio cache (default ~/.cache/kwspot)")
    g = parser.add_argument_group("stream mode")
    g.add_argument("--stream", action="store_true", help="score detection on a generated stream of the listed clips")
    stream_only: list[argparse.Action] = []

    def add(*names: str, **kwargs: Any) -> None:
        stream_only.append(g.add_argument(*names, **kwargs))

    add("--snr", default="20,10,5", type=NumberList(-50.0, 100.0, ("clean",)), action=_SnrGiven,
        help="SNRs in dB for the words, comma separated, or 'clean' (not given: clean where the data folder "
             "has no _background_noise_/)")
    add("--words", default="all", choices=("all", "keywords", "unknown"), help="which listed clips to speak")
    add("--minutes", type=Number(0.0, MAX_STREAM_MINUTES), default=0.0,
        help="repeat the clips until the stream is this long")
    add("--other-words-minutes", type=Number(0.0, MAX_STREAM_MINUTES), default=0.0,
        help="append this many minutes of the split's other (non-keyword) words, repeated")
    add("--speech", action="append", type=Path, default=[], metavar="DIR",
        help="continuous speech with none of the keywords (its split's files): false accepts on speech")
    add("--threshold", type=Number(0.0, 1.0), default=None,
        help="one threshold for all keywords (default: model's)")
    add("--target-fa-per-hour", type=Number(0.0, 36000.0), default=None,
        help="choose per-keyword thresholds meeting this false-accept rate (all audio of the stream)")
    add("--save-thresholds", action="store_true",
        help="write the chosen thresholds into the model's sidecar")
    add("--verifier", default="auto", choices=("auto", "off"),
        help="auto: check every event with the model's verifier, as listen does (default); off: do not")
    add("--seed", type=Number(0, 2**32 - 1, integer=True), default=0, help="stream seed")
    add("--hop-ms", type=Number(10.0, 1000.0), default=100.0)
    add("--smoothing-hops", type=Number(1, 50, integer=True), default=DetectorSettings.smoothing_hops)
    add("--min-consecutive", type=Number(1, 50, integer=True), default=DetectorSettings.min_consecutive)
    add("--refractory-s", type=Number(0.0, 60.0), default=DetectorSettings.refractory_s)
    add("--min-pause-ms", type=Number(0.0, 2000.0), default=DetectorSettings.min_pause_ms,
        help="isolated-command gate: quiet this long before and after a command (0: off)")
    add("--phrases", action="append", type=Path, default=[], metavar="DIR",
        help="folder of folders of short recordings without keywords (the split's share, by file-name "
             "hash), appended to the continuous speech")
    # what each flag holds when not given (a string default is parsed by its type, as argparse does)
    parser.set_defaults(stream_only=tuple(
        (a.option_strings[0], a.dest, a.type(a.default) if isinstance(a.default, str) and a.type else a.default)
        for a in stream_only))


def split_of_list(name: str, data: Path) -> str:
    """"validation" for the data folder's own ``validation_list.txt`` (that split is scored), else "testing":
    any other list, whatever its name, is read as the testing list."""
    path = Path(name) if Path(name).is_absolute() else data / name
    own = data / "validation_list.txt"
    return "validation" if path.name == own.name and path.resolve() == own.resolve() else "testing"


def run(args: argparse.Namespace) -> int:
    from kwspot.train import report

    if args.save_thresholds and not (args.stream and args.target_fa_per_hour is not None):
        raise KwspotError("--save-thresholds needs --stream and --target-fa-per-hour")
    given = [flag for flag, dest, default in args.stream_only if getattr(args, dest) != default]
    if given and not args.stream:
        raise KwspotError(f"{given[0]} is a stream-mode option: add --stream (clips are scored without it)")
    writable_cache(args.cache)
    model = Model(args.model or bundled_model_path())
    if not args.stream:
        need_clip_labels(model)
    if args.save_thresholds and (why := cannot_write_in(model.path.parent)):
        raise KwspotError(f"{shown(model.path.parent)}: not writable ({why}), so --save-thresholds could not save "
                          "(copy the model)")
    split = split_of_list(args.list, args.data)
    data = scan(args.data, args.list if split == "testing" else "testing_list.txt", keywords=model.keywords)
    if args.plot is not None:
        report.check_plot(args.plot)
    if args.stream:
        result, rows = stream_result(model, data, split, args)
        if args.json:
            print(json_text(result, indent=2))
        else:
            report.print_stream_report(result, report.ResultConsole())
        if args.plot is not None:
            report.plot_det(rows, args.plot)
        return 0
    if not data.clips[split]:
        there = (args.data / args.list).is_file() or Path(args.list).is_file()
        raise KwspotError(f"{args.list}: lists no clips found under {args.data}" if there else
                          f"{args.list}: no such clip list (in {args.data} or here)")
    result = clip_report(model, data, split, args.cache)
    if args.json:
        print(json_text(result, indent=2))
    else:
        report.print_clip_report(result, report.ResultConsole())
    if args.plot is not None:
        report.plot_confusion(result, args.plot)
    return 0


def need_clip_labels(model: Model) -> None:
    """Clip mode maps the data's ``_silence_`` and ``_unknown_`` clips to the model's labels of those names."""
    if SILENCE not in model.labels or UNKNOWN not in model.labels:
        raise KwspotError(f"{shown(sidecar_path(model.path))}: evaluate needs the labels {SILENCE} and {UNKNOWN}")


def clip_report(model: Model, data: Dataset, split: str, cache: Path | None = None) -> dict[str, Any]:
    """Accuracy figures of ``model`` on one split's clips (padded/cut to one second)."""
    clips = data.clips[split]
    windows = clip_windows([c.path for c in clips], cache)
    y = data.label_indices(split)
    probs = np.stack([model.predict(to_float(w)) for w in windows]) if len(clips) else np.zeros((0, len(model.labels)))
    order = [model.labels.index(label) for label in data.labels]
    return metrics(probs[:, order], y, data.labels)


def metrics(probs: np.ndarray, y: np.ndarray, labels: tuple[str, ...]) -> dict[str, Any]:
    """Clip metrics from probabilities in ``labels`` order and integer labels.

    ``accuracy_12``: over all classes (12 for the ten commands); ``accuracy_10``: on keyword clips, among keywords.
    """
    pred = np.argmax(probs, axis=1)
    n = len(labels)
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (y, pred), 1)
    kw = np.array([i for i, label in enumerate(labels) if not label.startswith("_")])
    is_kw = np.isin(y, kw)
    pred10 = kw[np.argmax(probs[:, kw], axis=1)] if len(y) else pred
    per_class = {}
    for i, label in enumerate(labels):
        support = int(confusion[i].sum())
        predicted = int(confusion[:, i].sum())
        per_class[label] = {
            "precision": float(confusion[i, i] / predicted) if predicted else 0.0,
            "recall": float(confusion[i, i] / support) if support else 0.0,
            "support": support,
        }
    present = [r["recall"] for r in per_class.values() if r["support"]]
    return {
        "n": int(len(y)),
        "accuracy_12": float(np.mean(pred == y)) if len(y) else 0.0,
        "accuracy_10": float(np.mean(pred10[is_kw] == y[is_kw])) if is_kw.any() else 0.0,
        "balanced_accuracy": float(np.mean(present)) if present else 0.0,
        "per_class": per_class,
        "labels": list(labels),
        "confusion": confusion.tolist(),
    }


def stream_spec(args: argparse.Namespace) -> StreamSpec:
    if args.minutes < 0 or args.other_words_minutes < 0:
        raise KwspotError("--minutes and --other-words-minutes must be 0 or more")
    return StreamSpec(words=args.words, snrs=parse_snrs(args.snr), minutes=args.minutes,
                      other_words_minutes=args.other_words_minutes, speech=tuple(args.speech),
                      phrases=tuple(getattr(args, "phrases", ())), cache=args.cache)


def probabilities(model: Model, stream: Stream, hop_s: float) -> tuple[np.ndarray, np.ndarray]:
    """(t, probs) of the daemon's pipeline over a stream; empty for a stream shorter than a window."""
    from kwspot.pipeline import stream_probabilities

    if len(stream.audio) < model.window_samples:
        return np.zeros(0), np.zeros((0, len(model.labels)), np.float32)
    return stream_probabilities(model, stream.audio, hop_s)


def stream_result(model: Model, data: Dataset, split: str,
                  args: argparse.Namespace) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Build the split's streams, score them, sweep thresholds; (result, sweep rows)."""
    if args.hop_ms <= 0:
        raise KwspotError("--hop-ms must be more than 0")
    if getattr(args, "min_pause_ms", 0.0) < 0:
        raise KwspotError("--min-pause-ms must be 0 or more")
    spec = stream_spec(args)
    if not getattr(args, "snr_given", False) and not data.noise_files:  # asked for: an error (split_streams)
        log.warning("%s: no %s/ recordings: the streams are clean", shown(data.root), NOISE_DIR)
        spec = replace(spec, snrs=None)
    words, speech = split_streams(data, split, spec, np.random.default_rng(args.seed))
    if getattr(args, "save_thresholds", False) and not any(w.label in model.keywords for w in words.words):
        raise KwspotError(f"--save-thresholds: the {split} stream holds no keyword (--words {args.words}), "
                          "so there are no thresholds to choose")
    hop = args.hop_ms / 1000.0
    t_w, p_w = probabilities(model, words, hop)
    t_s, p_s = probabilities(model, speech, hop)
    base = DetectorSettings(args.threshold if args.threshold is not None else 0.8,
                            None if args.threshold is not None else model.thresholds or None,
                            args.smoothing_hops, args.min_consecutive, args.refractory_s,
                            getattr(args, "min_pause_ms", 0.0))
    gated = base.min_pause_ms > 0
    l_w = hop_levels(words.audio, hop)[: len(t_w)] if gated else None
    l_s = hop_levels(speech.audio, hop)[: len(t_s)] if gated else None
    kws = model.keywords
    result: dict[str, Any] = {"split": split, "settings": {"threshold": base.threshold,
                                                         "thresholds": dict(base.thresholds or {})}}
    # the sweep treats the speech as more stream, 10 s after the words: one FA rate over all audio
    gap = np.zeros(round(10.0 * SAMPLE_RATE), np.float32)
    verdict = stream_verdict(model, np.concatenate((words.audio, gap, speech.audio)), args.verifier)
    speech_verdict = None if verdict is None else (lambda kw, t: verdict(kw, t + words.seconds + 10.0))
    result["verifier"] = model.file.verifier.head.name if verdict is not None else None
    result["words"] = score(words.words, replay(model.labels, t_w, p_w, base, verdict, levels=l_w),
                            words.seconds, kws)
    if len(t_s):
        result["speech"] = score([], replay(model.labels, t_s, p_s, base, speech_verdict, levels=l_s),
                                 speech.seconds, kws)
    times = np.concatenate((t_w, t_s + words.seconds + 10.0)) if len(t_s) else t_w
    probs = np.concatenate((p_w, p_s)) if len(t_s) else p_w
    levels = l_w
    if gated and len(t_s) and len(t_w):  # the gate hears the ten seconds of silence between the two streams
        n_gap = int(round(10.0 / hop))
        times = np.concatenate((t_w, t_w[-1] + hop * np.arange(1, n_gap + 1), t_s + words.seconds + 10.0))
        probs = np.concatenate((p_w, np.tile(_silence_row(model.labels), (n_gap, 1)), p_s))
        levels = np.concatenate((l_w, np.full(n_gap, -120.0), l_s))
    elif gated and len(t_s):
        levels = np.concatenate((l_w, l_s))
    total_s = words.seconds + speech.seconds
    rows = sweep(model.labels, times, probs, words.words, total_s, base, verdict=verdict, levels=levels)
    result["sweep"] = [{k: r[k] for k in ("threshold", "recall", "fa_per_hour", "false_accepts")} for r in rows]
    if args.target_fa_per_hour is not None:
        chosen = pick_thresholds(rows, args.target_fa_per_hour)
        settings = replace(base, threshold=0.8, thresholds=chosen)
        reached = score(words.words, replay(model.labels, times, probs, settings, verdict, levels=levels), total_s, kws)
        result["target"] = {"fa_per_hour": args.target_fa_per_hour, "thresholds": chosen, "result": _brief(reached)}
        if args.save_thresholds:
            save_thresholds(model.path, chosen)
    return result, rows


def stream_verdict(model: Model, audio: np.ndarray, mode: str = "auto") -> Verdict | None:
    """The verdict of the model's verifier on ``audio`` (memoised per event time), or None without one."""
    spec = model.file.verifier
    if spec is None or mode == "off":
        return None
    from kwspot.verifier import SignalVerifier, Verifier

    return SignalVerifier(Verifier(spec.head, spec.thresholds, spec.threshold), audio).accepts


def _silence_row(labels: list[str]) -> np.ndarray:
    """What the model says in silence: all on ``_silence_``, or on no label for a model without one."""
    row = np.zeros(len(labels), np.float32)
    if SILENCE in labels:
        row[labels.index(SILENCE)] = 1.0
    return row


def _brief(r: dict[str, Any]) -> dict[str, Any]:
    return {k: r[k] for k in ("recall", "false_accepts", "fa_per_hour", "fa_per_keyword", "fa_kinds",
                              "latency_median_s")}
