"""Side-by-side report of models on the testing list: ``python -m kwspot.train.report --data DIR MODEL...``.

For each model (at the thresholds in its sidecar): clip accuracy 12-way and
10-way, a stream of all testing-list words over noise (20/10/5 dB SNR), the
same stream clean, an hour of the other words only, and continuous speech
(the testing share of ``--speech``). Numpy and LiteRT only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from kwspot.detector import DetectorSettings
from kwspot.evaluate import clip_report
from kwspot.model import Model
from kwspot.pipeline import stream_probabilities
from kwspot.streams import replay, score, stream_for
from kwspot.train.data import scan


def measure(model_path: Path, data_dir: Path, speech: list[Path], seed: int = 0) -> dict[str, Any]:
    model = Model(model_path)
    data = scan(data_dir)
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
    for name, words, snr, minutes in (("noisy", "all", "20,10,5", 0.0), ("clean", "all", "clean", 0.0),
                                      ("other_words_hour", "unknown", "20,10,5", 60.0)):
        args = argparse.Namespace(words=words, snr=snr, minutes=minutes, other_words_minutes=0.0,
                                  speech=speech if name == "noisy" else [], cache=None)
        stream, talk = stream_for(data, "testing", args, np.random.default_rng(seed))
        t, p = stream_probabilities(model, stream.audio)
        r = score(stream.words, replay(model.labels, t, p, settings), stream.seconds)
        out[name] = {k: r[k] for k in ("seconds", "keywords", "other_words", "recall", "false_accepts", "fa_per_hour",
                                       "fa_per_keyword", "fa_kinds", "latency_median_s")}
        if len(talk.audio):
            t, p = stream_probabilities(model, talk.audio)
            s = score([], replay(model.labels, t, p, settings), talk.seconds)
            out["speech"] = {k: s[k] for k in ("seconds", "false_accepts", "fa_per_hour")}
    return out


def markdown(rows: list[dict[str, Any]]) -> str:
    def pct(x: float | None) -> str:
        return "n/a" if x is None or x != x else f"{100 * x:.1f}%"

    lines = ["| | " + " | ".join(f"`{r['arch']}`" for r in rows) + " |", "|---" * (len(rows) + 1) + "|"]
    spec = [
        ("clip accuracy, 12-way", lambda r: pct(r["accuracy_12"])),
        ("clip accuracy, 10-way", lambda r: pct(r["accuracy_10"])),
        ("stream over noise (20/10/5 dB): recall", lambda r: pct(r["noisy"]["recall"])),
        ("stream over noise: false accepts/hour (% of keywords)",
         lambda r: f"{r['noisy']['fa_per_hour']:.1f} ({pct(r['noisy']['fa_per_keyword'])})"),
        ("clean stream: recall", lambda r: pct(r["clean"]["recall"])),
        ("clean stream: false accepts/hour", lambda r: f"{r['clean']['fa_per_hour']:.1f}"),
        ("median latency after the word (noisy stream)", lambda r: f"{r['noisy']['latency_median_s']:.2f} s"),
        ("an hour of other words over noise: false accepts", lambda r: f"{r['other_words_hour']['false_accepts']}"),
        ("continuous speech: false accepts/hour",
         lambda r: f"{r['speech']['fa_per_hour']:.1f} ({r['speech']['false_accepts']} in "
                   f"{r['speech']['seconds'] / 60:.1f} min)" if "speech" in r else "n/a"),
        ("multiply-accumulates per window", lambda r: f"{r['macs'] / 1e6:.2f} M" if r["macs"] else "n/a"),
        ("parameters", lambda r: f"{r['params']:,}" if r["params"] else "n/a"),
        ("LiteRT size", lambda r: f"{r['bytes'] / 1024:.0f} KiB"),
        ("LiteRT time per window (1 thread)",
         lambda r: f"{r['ms_per_window']:.2f} ms" if r["ms_per_window"] else "n/a"),
    ]
    for name, cell in spec:
        lines.append(f"| {name} | " + " | ".join(cell(r) for r in rows) + " |")
    return "\n".join(lines)


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
