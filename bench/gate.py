"""The isolated-command gate alone: recall and false accepts with ``min_pause_ms`` swept, on VALIDATION material.

    .venv/bin/python bench/gate.py --model models/kwspot.tflite [--pauses 0,100,200,300] [--thresholds sidecar,0.6]

The model runs once over each stream (validation-list commands at 20/10/5 dB and
clean, the validation list's other words once, the validation share of the wake
phrases, continuous speech of the validation AND training speakers of
``librispeech_negatives``: the gate learns nothing, so training speakers are fair
here and give it more speech to be judged on); then the daemon's detector is
replayed for each threshold setting and pause. Never the testing material.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from common import run_main
from quality import add_material_arguments, concatenate, material, model_outputs, replay_scored

from kwspot.argtypes import NumberList
from kwspot.detector import DetectorSettings
from kwspot.model import Model
from kwspot.pipeline import hop_levels, stream_probabilities
from kwspot.train.data import load_long, scan, speech_files
from kwspot.train.streams import Stream


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_material_arguments(parser)
    parser.add_argument("--pauses", default="0,100,150,200,300", type=NumberList(0, 10000))
    parser.add_argument("--thresholds", default="sidecar,0.6", type=NumberList(0.0, 1.0, item_words=("sidecar",)),
                        help="'sidecar' or a uniform threshold, comma separated")
    args = parser.parse_args(argv)
    built = {}  # validation material per set of keywords (the model's)
    train_speech = Stream(concatenate(load_long(speech_files(args.speech, "train")), 0.5))
    print("| model | thresholds | pause ms | recall 20/10/5/clean dB (hits) | FA on command streams | "
          "FA other words | FA phrases | FA speech (val+train) |")
    print("|---|---|---|---|---|---|---|---|")
    for path in args.model:
        model = Model(path)
        if model.keywords not in built:
            built[model.keywords] = material(scan(args.data, keywords=model.keywords), args.speech, args.phrases, 0,
                                             "validation")
            built[model.keywords].tts_sentences = built[model.keywords].tts_commands = None
        mat = built[model.keywords]
        outputs = model_outputs(model, mat)
        outputs["train_speech"] = (train_speech, *stream_probabilities(model, train_speech.audio),
                                   hop_levels(train_speech.audio))
        for th in args.thresholds.split(","):
            base = DetectorSettings(0.8, model.thresholds or None) if th == "sidecar" else DetectorSettings(float(th))
            for pause in (float(p) for p in args.pauses.split(",")):
                settings = replace(base, min_pause_ms=pause)
                r = {k: replay_scored(model.labels, o, settings) for k, o in outputs.items()}
                cmd = [r[f"cmd_{s}"] for s in ("20", "10", "5", "clean")]
                hits = "/".join(str(c["hits"]) for c in cmd)
                fa_cmd = sum(c["false_accepts"] for c in cmd)
                h_cmd = sum(c["seconds"] for c in cmd) / 3600
                speech_fa = r["speech"]["false_accepts"] + r["train_speech"]["false_accepts"]
                speech_h = (r["speech"]["seconds"] + r["train_speech"]["seconds"]) / 3600
                print(f"| {path.name} | {th} | {pause:g} | {hits} of {cmd[0]['keywords']} each | "
                      f"{fa_cmd} in {h_cmd:.2f} h | {r['other_words']['false_accepts']} in "
                      f"{r['other_words']['seconds'] / 3600:.2f} h | {r['phrases']['false_accepts']} in "
                      f"{r['phrases']['seconds'] / 3600:.2f} h | {speech_fa} in {speech_h:.2f} h |", flush=True)
    return 0


if __name__ == "__main__":
    run_main(main)
