"""Side-by-side report of models on the testing list: ``python -m kwspot.train.compare --data DIR MODEL...``.

For each model (at the thresholds in its sidecar): clip accuracy over all
classes and over the keywords, a stream of all testing-list words over
noise (20/10/5 dB SNR), the same stream clean, an hour of the other words
only, and continuous speech (the testing share of ``--speech``). Prints a
Markdown table. Numpy and LiteRT only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from kwspot.detector import DetectorSettings
from kwspot.model import Model
from kwspot.train.data import scan
from kwspot.train.evaluate import clip_report, probabilities
from kwspot.train.report import markdown
from kwspot.train.scoring import replay, score
from kwspot.train.streams import StreamSpec, split_streams


def measure(model_path: Path, data_dir: Path, speech: list[Path], seed: int = 0) -> dict[str, Any]:
    model = Model(model_path)
    data = scan(data_dir, keywords=model.keywords)
    meta = model.meta
    clips = clip_report(model, data, "testing")
    settings = DetectorSettings(0.8, model.thresholds or None)
    out: dict[str, Any] = {
        "model": str(model_path), "arch": meta.get("arch"), "params": meta.get("params"),
        "macs": (meta.get("macs") or {}).get("total"), "ms_per_window": (meta.get("export") or {}).get("ms_per_window"),
        "bytes": model_path.stat().st_size, "thresholds": model.thresholds,
        "accuracy_12": clips["accuracy_12"], "accuracy_10": clips["accuracy_10"],
        "balanced_accuracy": clips["balanced_accuracy"],
    }
    noisy = (20.0, 10.0, 5.0)
    for name, spec in (("noisy", StreamSpec("all", noisy, speech=tuple(speech))), ("clean", StreamSpec("all", None)),
                       ("other_words_hour", StreamSpec("unknown", noisy, minutes=60.0))):
        stream, talk = split_streams(data, "testing", spec, np.random.default_rng(seed))
        t, p = probabilities(model, stream, 0.1)
        r = score(stream.words, replay(model.labels, t, p, settings), stream.seconds, model.keywords)
        out[name] = {k: r[k] for k in ("seconds", "keywords", "other_words", "recall", "false_accepts", "fa_per_hour",
                                       "fa_per_keyword", "fa_kinds", "latency_median_s")}
        if len(talk.audio):
            t, p = probabilities(model, talk, 0.1)
            s = score([], replay(model.labels, t, p, settings), talk.seconds, model.keywords)
            out["speech"] = {k: s[k] for k in ("seconds", "false_accepts", "fa_per_hour")}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--speech", type=Path, action="append", default=[])
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    parser.add_argument("models", type=Path, nargs="+")
    args = parser.parse_args(argv)
    rows = [measure(m, args.data, args.speech) for m in args.models]
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, default=float) + "\n")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
