"""Quality benchmark on the TESTING material only: one table per model, with the event count behind every figure.

    .venv/bin/python bench/quality.py --model models/kwspot.tflite [--model models/workshop.tflite ...]
        [--data ../shared/speech_commands] [--speech ../shared/librispeech_negatives]
        [--phrases ../shared/wake_phrases] [--json runs/quality.json] [--min-pause-ms MS]

Rows (each at the thresholds in the model's sidecar, through the daemon's own
ring buffer, model call and detector: :func:`kwspot.pipeline.stream_probabilities`
and :func:`kwspot.train.scoring.replay` / :func:`kwspot.train.scoring.score`; the
keywords are the model's, from its sidecar):

- clip accuracy over all classes and among the keywords, and per-class recall on the testing list;
- command streams: every testing-list command once, 1.5-3.5 s apart, over the
  held-out part of the background noise at 20, 10 and 5 dB SNR, and clean;
- false accepts on: every other (non-keyword) word of the testing list once,
  over noise at 20/10/5 dB; the testing share of ``wake_phrases`` (split by
  the same file-name hash as training); the testing speakers of
  ``librispeech_negatives``; espeak-ng sentences without any command;
- recall on espeak-ng voices (not the voices used in training) saying the commands;
- the same two rows for flite's voice ``slt``, which training never uses (a second synthesiser);
- commands over other talk: every testing-list command once over a bed of the testing speakers of
  ``librispeech_negatives`` at 10 dB SNR (a room with a conversation or a TV on);
- LiteRT time per window (median, 1 thread) and multiply-accumulates (from the sidecar).

A model whose sidecar names a verifier (second stage) is measured with it, as the daemon runs it
(``--verifier off`` measures the first stage alone); its events are checked on each stream's audio by
:class:`kwspot.verifier.SignalVerifier`, and the table says how many checks it made.

Numpy and LiteRT only (espeak-ng and flite for the synthetic rows, each skipped without its synthesiser).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kwspot import UNKNOWN, modelfile
from kwspot.argtypes import Number, NumberList
from kwspot.detector import DetectorSettings
from kwspot.errors import KwspotError
from kwspot.frontend import SAMPLE_RATE, WINDOW_SAMPLES
from kwspot.model import Model
from kwspot.pipeline import hop_levels, stream_probabilities
from kwspot.train.data import (
    Dataset,
    clip_windows,
    load_long,
    phrase_files,
    scan,
    speech_files,
    to_float,
)
from kwspot.train.espeak import espeak_takes
from kwspot.train.evaluate import clip_report
from kwspot.train.flite import BENCH_VOICES as FLITE_BENCH_VOICES
from kwspot.train.flite import flite_takes
from kwspot.train.scoring import replay, score
from kwspot.train.streams import Stream, build_stream
from kwspot.train.synth import speak
from kwspot.verifier import SignalVerifier, Verifier

SNRS = ("20", "10", "5", "clean")
# voices that training never uses (kwspot.train.espeak.VOICES are the training voices)
BENCH_VOICES = ("en-us-nyc", "en-gb-x-gbclan+f1", "en-gb-x-gbcwmd+m7", "en-us+f5", "en-gb-scotland+m2", "en-029+f2")
SENTENCES = (
    "the weather will be warm and sunny all week",
    "please bring me a glass of water from the kitchen",
    "my sister lives in a small town near the sea",
    "we had pasta with tomato sauce for dinner",
    "the children played in the garden until dark",
    "he forgot his keys at the office again",
    "can you tell me what time the train leaves",
    "the meeting has been moved to thursday morning",
    "she reads a book every night before sleeping",
    "there is a new bakery across the street",
    "the dog barked at the mail carrier",
    "i think we should paint the kitchen blue",
    "the football match was cancelled because of rain",
    "my phone battery is almost empty",
    "they built a bridge over the river last year",
    "the music was too loud at the party",
    "please remember to water the plants",
    "our neighbours have three cats and a parrot",
    "the soup needs a little more salt",
    "we watched a film about whales and dolphins",
    "this coffee tastes better than yesterday",
    "the library closes early during the holidays",
    "he wants to learn the piano this winter",
    "the price of bread has risen again",
)


@dataclass
class Row:
    """One figure of the table: its value and the counts behind it."""

    name: str
    value: str
    counts: str


def rate(events: int, seconds: float) -> float:
    """Events an hour."""
    return events / (seconds / 3600.0) if seconds > 0 else float("nan")


def fa_row(name: str, result: dict[str, Any]) -> Row:
    """False accepts an hour of a scored stream, with the count and the hours behind it."""
    fa, s = result["false_accepts"], result["seconds"]
    return Row(name, f"{rate(fa, s):.1f} FA/h", f"{fa} in {s / 3600:.2f} h")


def recall_row(name: str, result: dict[str, Any]) -> Row:
    """Recall and false accepts an hour of a scored stream of commands."""
    hits, n, fa, s = result["hits"], result["keywords"], result["false_accepts"], result["seconds"]
    value = f"{100 * hits / n:.1f}% / {rate(fa, s):.1f} FA/h" if n else "n/a"
    return Row(name, value, f"{hits}/{n} hit, {fa} FA in {s / 3600:.2f} h")


def concatenate(parts: list[np.ndarray], gap_s: float = 1.0) -> np.ndarray:
    """Recordings end to end with ``gap_s`` of silence between them (and before the first)."""
    gap = np.zeros(int(gap_s * SAMPLE_RATE), np.float32)
    pieces = [gap]
    for p in parts:
        pieces += [np.asarray(p, np.float32), gap]
    return np.concatenate(pieces)


def synth_windows(engine: str, texts: list[str], voices: tuple[str, ...], seed: int, per_voice: int = 1,
                  fit: bool = True) -> list[np.ndarray] | None:
    """``texts`` spoken by each voice (``per_voice`` random speeds/pitches each), cached; None without the engine."""
    if shutil.which(engine) is None:
        return None
    if engine == "flite":
        takes = flite_takes(texts, voices, per_voice, seed)
    else:
        takes = espeak_takes(texts, voices, per_voice, seed, rates=(120, 190), pitches=(30, 70))
    return speak(engine, takes, fit=fit, needed_by="bench/quality.py")


@dataclass
class Material:
    """The testing streams, built once and shared by every model."""

    commands: dict[str, Stream]
    other_words: Stream
    phrases: Stream | None
    speech: Stream | None
    tts_sentences: Stream | None
    tts_commands: Stream | None
    talk: Stream | None = None  # the commands over other talk (10 dB SNR)
    flite_sentences: Stream | None = None
    flite_commands: Stream | None = None


def material(data: Dataset, speech_dir: Path | None, phrases_dir: Path | None, seed: int,
             split: str = "testing") -> Material:
    clips = data.clips[split]
    windows = clip_windows([c.path for c in clips])
    noise = load_long(data.noise_files, "eval")
    kw = [i for i, c in enumerate(clips) if c.label in data.keywords]
    other = [i for i, c in enumerate(clips) if c.label == UNKNOWN]
    commands = {}
    for k, snr in enumerate(SNRS):
        rng = np.random.default_rng(seed + k)
        order = rng.permutation(kw)
        items = [(to_float(windows[i]), clips[i].label) for i in order]
        commands[snr] = build_stream(items, noise, rng, None if snr == "clean" else (float(snr),))
    rng = np.random.default_rng(seed + 10)
    other_words = build_stream([(to_float(windows[i]), UNKNOWN) for i in rng.permutation(other)], noise, rng)
    phrases = Stream(concatenate(load_long(phrase_files(phrases_dir, split)))) if phrases_dir else None
    speech = Stream(concatenate(load_long(speech_files(speech_dir, split)), 0.5)) if speech_dir else None
    tts_sentences, tts_commands = synthetic_streams("espeak-ng", BENCH_VOICES, data.keywords, noise, seed)
    flite_sentences, flite_commands = synthetic_streams("flite", FLITE_BENCH_VOICES, data.keywords, noise, seed + 40,
                                                        takes=6, sentence_takes=3)
    talk = None
    if speech_dir:
        rng = np.random.default_rng(seed + 30)
        items = [(to_float(windows[i]), clips[i].label) for i in rng.permutation(kw)]
        talk = build_stream(items, load_long(speech_files(speech_dir, split)), rng, (TALK_SNR_DB,))
    return Material(commands, other_words, phrases, speech, tts_sentences, tts_commands, talk, flite_sentences,
                    flite_commands)


def synthetic_streams(engine: str, voices: tuple[str, ...], keywords: tuple[str, ...], noise: list[np.ndarray],
                      seed: int, takes: int = 3, sentence_takes: int = 1) -> tuple[Stream | None, Stream | None]:
    """Sentences without commands, and the commands (``takes`` a voice) in a stream: held-out synthetic voices."""
    sentences = synth_windows(engine, list(SENTENCES), voices, seed, per_voice=sentence_takes, fit=False)
    spoken = synth_windows(engine, list(keywords), voices, seed, per_voice=takes)
    if sentences is None or spoken is None:
        return None, None
    labels = [k for k in keywords for _ in voices for _ in range(takes)]
    rng = np.random.default_rng(seed + 20)
    order = rng.permutation(len(spoken))
    commands = build_stream([(to_float(spoken[i]), labels[i]) for i in order], noise, rng, None)
    return Stream(concatenate([to_float(x) for x in sentences], 0.7)), commands


TALK_SNR_DB = 10.0
STREAMS = ("other_words", "phrases", "speech", "tts_sentences", "tts_commands", "flite_sentences",
           "flite_commands", "talk")


def model_outputs(model: Model, mat: Material) -> dict[str, tuple[Stream, np.ndarray, np.ndarray, np.ndarray]]:
    """Each stream with the model's probabilities and the hop levels (run once, replayed per setting)."""
    streams = {f"cmd_{snr}": s for snr, s in mat.commands.items()}
    streams.update({k: getattr(mat, k) for k in STREAMS if getattr(mat, k) is not None})
    return {k: (s, *stream_probabilities(model, s.audio), hop_levels(s.audio)) for k, s in streams.items()}


def replay_scored(labels: list[str], out: tuple[Stream, np.ndarray, np.ndarray, np.ndarray],
                  settings: DetectorSettings, verifier: Verifier | None = None) -> dict[str, Any]:
    """Score one stream through the daemon's detector (and its verifier, if any)."""
    stream, t, p, levels = out
    signal = SignalVerifier(verifier, stream.audio) if verifier is not None else None
    events = replay(labels, t, p, settings, signal.accepts if signal is not None else None,
                    levels=levels if settings.min_pause_ms > 0 else None)
    r = score(stream.words, events, stream.seconds, modelfile.keywords_of(labels))
    r["checks"] = signal.checks if signal is not None else 0
    r["events"] = events
    return r


def ms_per_window(model: Model, n: int = 300) -> float:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((n, WINDOW_SAMPLES)) * 0.05).astype(np.float32)
    for w in x[:20]:
        model.predict(w)
    times = []
    for w in x:
        t0 = time.perf_counter()
        model.predict(w)
        times.append(time.perf_counter() - t0)
    return 1000.0 * float(np.median(times))


def measure(model_path: Path, data: Dataset, mat: Material, pauses: list[float] | None = None,
            split: str = "testing", use_verifier: bool = True) -> list[dict[str, Any]]:
    """One result per gate setting (default: the sidecar's ``detector.min_pause_ms``, else off)."""
    model = Model(model_path, threads=1)
    spec = model.file.verifier if use_verifier else None
    verifier = Verifier(spec.head, spec.thresholds, spec.threshold) if spec is not None else None
    det = dict(model.meta.get("detector") or {})
    pauses = pauses or [float(det.get("min_pause_ms", 0.0))]
    clips = clip_report(model, data, split)
    outputs = model_outputs(model, mat)
    ms, macs = ms_per_window(model), (model.meta.get("macs") or {}).get("total")
    return [evaluate(model, model_path, outputs, clips, pause, split, verifier) | {"ms_per_window": ms, "macs": macs}
            for pause in pauses]


def evaluate(model: Model, model_path: Path, outputs: dict[str, Any], clips: dict[str, Any], pause: float,
             split: str, verifier: Verifier | None = None) -> dict[str, Any]:
    settings = DetectorSettings(0.8, model.thresholds or None, min_pause_ms=pause)
    out: dict[str, Any] = {"model": str(model_path), "split": split, "thresholds": model.thresholds,
                           "min_pause_ms": pause, "clips": clips,
                           "verifier": verifier.head.path.name if verifier is not None else None}
    out["streams"] = {snr: replay_scored(model.labels, outputs[f"cmd_{snr}"], settings, verifier) for snr in SNRS}
    for name in STREAMS:
        if name in outputs:
            out[name] = replay_scored(model.labels, outputs[name], settings, verifier)
    out["bytes"] = model_path.stat().st_size
    return out


def rows(r: dict[str, Any]) -> list[Row]:
    c = r["clips"]
    n = c["n"]
    labels = c["labels"]
    keywords = modelfile.keywords_of(labels)
    n_kw = sum(c["per_class"][k]["support"] for k in keywords)
    out = [Row(f"clip accuracy {len(labels)}-way", f"{100 * c['accuracy_12']:.1f}%",
               f"{round(c['accuracy_12'] * n)}/{n} clips"),
           Row(f"clip accuracy {len(keywords)}-way", f"{100 * c['accuracy_10']:.1f}%",
               f"{round(c['accuracy_10'] * n_kw)}/{n_kw} clips")]
    for label in labels:
        pc = c["per_class"][label]
        hits = round(pc["recall"] * pc["support"])
        out.append(Row(f"  recall {label}", f"{100 * pc['recall']:.1f}%", f"{hits}/{pc['support']}"))
    for snr, s in r["streams"].items():
        out.append(recall_row(f"commands {'clean' if snr == 'clean' else snr + ' dB SNR'}: recall / FA/h", s))
    split = r.get("split", "testing")
    lat = [s["latency_median_s"] for s in r["streams"].values() if s.get("latency_median_s") is not None]
    if lat:
        hits = sum(s["hits"] for s in r["streams"].values())
        out.append(Row("median latency after the word (median of the four streams)", f"{np.median(lat):.2f} s",
                       f"{hits} hits"))
    labels = {"other_words": f"other words of the {split} list, each once (20/10/5 dB)",
              "phrases": f"wake phrases, {split} share", "speech": f"continuous speech, {split} speakers",
              "tts_sentences": "espeak-ng sentences without commands",
              "flite_sentences": "flite sentences without commands (held-out voice)"}
    for key, name in labels.items():
        if key in r:
            out.append(fa_row(name, r[key]))
    if "tts_commands" in r:
        out.append(recall_row("espeak-ng voices saying the commands: recall / FA/h", r["tts_commands"]))
    if "flite_commands" in r:
        out.append(recall_row("flite voice saying the commands (held out): recall / FA/h", r["flite_commands"]))
    if "talk" in r:
        out.append(recall_row(f"commands over other talk ({split} speakers, {TALK_SNR_DB:g} dB SNR): recall / FA/h",
                              r["talk"]))
    out.append(Row("LiteRT time per window (1 thread, median)", f"{r['ms_per_window']:.3f} ms", "300 windows"))
    if r.get("verifier"):
        cmd = list(r["streams"].values())
        checks, hours = sum(s["checks"] for s in cmd), sum(s["seconds"] for s in cmd) / 3600
        out.append(Row("verifier checks an hour on the command streams", f"{checks / hours:.0f}",
                       f"{checks} checks in {hours:.2f} h"))
    macs = r.get("macs")
    out.append(Row("multiply-accumulates per window", f"{macs / 1e6:.2f} M" if macs else "n/a", "sidecar"))
    out.append(Row("model file", f"{r['bytes'] / 1024:.0f} KiB", ""))
    return out


def markdown(r: dict[str, Any]) -> str:
    second = f"verifier {r['verifier']}" if r.get("verifier") else "no verifier"
    lines = [f"`{r['model']}` ({r['split']} material; sidecar thresholds; min_pause_ms {r['min_pause_ms']:g}; "
             f"{second})", "",
             "| figure | value | counts |", "|---|---|---|"]
    lines += [f"| {row.name} | {row.value} | {row.counts} |" for row in rows(r)]
    return "\n".join(lines)


def top_false_accepts(r: dict[str, Any], key: str) -> str:
    """Which keywords fired where nothing was said (for reading the table)."""
    if key not in r:
        return ""
    counts: dict[str, int] = {}
    for kw, _ in r[key]["events"]:
        counts[kw] = counts.get(kw, 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


def add_material_arguments(parser: argparse.ArgumentParser) -> None:
    """The models to measure and where the material lives (``../shared`` by default)."""
    parser.add_argument("--model", type=Path, action="append", required=True)
    parser.add_argument("--data", type=Path, default=Path("../shared/speech_commands"))
    parser.add_argument("--speech", type=Path, default=Path("../shared/librispeech_negatives"))
    parser.add_argument("--phrases", type=Path, default=Path("../shared/wake_phrases"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_material_arguments(parser)
    parser.add_argument("--min-pause-ms", default=None, type=NumberList(0, 10000),
                        help="isolated-command gate, comma separated for several tables (default: the sidecar's "
                             "detector setting, else off)")
    parser.add_argument("--split", default="testing", choices=("testing", "validation"),
                        help="validation: for choosing settings; the table of record is testing")
    parser.add_argument("--seed", type=Number(0, 2**32 - 1, integer=True), default=0)
    parser.add_argument("--verifier", default="on", choices=("on", "off"),
                        help="off: leave out the verifier a sidecar names (the first stage alone)")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    for p in args.model:
        if not p.is_file():
            print(f"quality: error: {p}: no such model file", file=sys.stderr)
            return 2
    for flag, folder in (("--speech", args.speech), ("--phrases", args.phrases)):
        if folder != parser.get_default(flag[2:]) and not folder.is_dir():  # the default may be absent: rows left out
            print(f"quality: error: {flag} {folder}: no such folder", file=sys.stderr)
            return 2
    try:
        keywords = [modelfile.read(p).keywords for p in args.model]
        pauses = [float(x) for x in args.min_pause_ms.split(",")] if args.min_pause_ms else None
    except (KwspotError, ValueError) as exc:
        print(f"quality: error: {exc}", file=sys.stderr)
        return 2
    built: dict[tuple[str, ...], tuple[Dataset, Material]] = {}  # material per set of keywords
    results = []
    for path, words in zip(args.model, keywords, strict=True):
        if words not in built:
            data = scan(args.data, keywords=words)
            built[words] = data, material(data, args.speech if args.speech.is_dir() else None,
                                          args.phrases if args.phrases.is_dir() else None, args.seed, args.split)
        data, mat = built[words]
        try:
            measured = measure(path, data, mat, pauses, args.split, args.verifier == "on")
        except KwspotError as exc:
            print(f"quality: error: {exc}", file=sys.stderr)
            return 2
        for r in measured:
            results.append(r)
            print(markdown(r))
            for key in ("other_words", "phrases", "speech", "tts_sentences", "flite_sentences"):
                if key in r:
                    print(f"  false accepts on {key}: {top_false_accepts(r, key) or 'none'}")
            print(flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        slim = [{k: ({kk: vv for kk, vv in v.items() if kk != "events"} if isinstance(v, dict) else v)
                 for k, v in r.items()} for r in results]
        for r in slim:
            r["streams"] = {snr: {k: v for k, v in s.items() if k != "events"} for snr, s in r["streams"].items()}
        args.json.write_text(json.dumps(slim, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
