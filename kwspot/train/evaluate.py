"""``kwspot evaluate``: clip accuracy on a list, or detection quality on a generated stream.

Needs only the LiteRT runtime (no TensorFlow). Clip mode reads every listed
clip through the daemon's front end and reports 12-way and 10-way accuracy,
balanced accuracy, per-class precision/recall and the confusion matrix.
Stream mode (:mod:`kwspot.streams`) runs the daemon's own pipeline code.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from kwspot import KEYWORDS, LABELS
from kwspot.errors import KwspotError
from kwspot.model import Model, bundled_model_path
from kwspot.train.data import Dataset, clip_windows, scan, to_float


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path, help="Speech Commands layout folder")
    parser.add_argument("--list", default="testing_list.txt", help="clip list to score (default testing_list.txt); "
                        "validation_list.txt scores the validation split")
    parser.add_argument("--model", type=Path, default=None, help="model .tflite (default: the bundled model)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--plot", type=Path, default=None, help="write a PNG (confusion matrix, or DET curve)")
    parser.add_argument("--cache", type=Path, default=None, help="decoded-audio cache (default ~/.cache/kwspot)")
    from kwspot.streams import add_stream_arguments

    add_stream_arguments(parser)


def split_of_list(name: str) -> str:
    return "validation" if Path(name).name.startswith("validation") else "testing"


def run(args: argparse.Namespace) -> int:
    model = Model(args.model or bundled_model_path())
    data = scan(args.data, args.list if split_of_list(args.list) == "testing" else "testing_list.txt")
    split = split_of_list(args.list)
    if args.plot is not None:
        _need_matplotlib()
    if getattr(args, "stream", False):
        from kwspot.streams import run_stream

        return run_stream(model, data, split, args)
    if not data.clips[split]:
        raise KwspotError(f"{args.list}: lists no clips found under {args.data}")
    report = clip_report(model, data, split, args.cache)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_clip_report(report, Console())
    if args.plot is not None:
        plot_confusion(report, args.plot)
    return 0


def clip_report(model: Model, data: Dataset, split: str, cache: Path | None = None) -> dict[str, Any]:
    """Accuracy figures of ``model`` on one split's clips (padded/cut to one second)."""
    clips = data.clips[split]
    windows = clip_windows([c.path for c in clips], cache)
    y = np.array([LABELS.index(c.label) for c in clips])
    probs = np.stack([model.predict(to_float(w)) for w in windows])
    order = [model.labels.index(label) for label in LABELS]
    return metrics(probs[:, order], y)


def metrics(probs: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Clip metrics from probabilities in LABELS order and integer labels."""
    pred = np.argmax(probs, axis=1)
    n = len(LABELS)
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (y, pred), 1)
    kw = np.array([LABELS.index(k) for k in KEYWORDS])
    is_kw = np.isin(y, kw)
    pred10 = kw[np.argmax(probs[:, kw], axis=1)]
    per_class = {}
    for i, label in enumerate(LABELS):
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
        "labels": list(LABELS),
        "confusion": confusion.tolist(),
    }


def print_clip_report(report: dict[str, Any], console: Console) -> None:
    console.print(f"{report['n']} clips: 12-way accuracy [bold]{report['accuracy_12']:.4f}[/], "
                  f"10-way {report['accuracy_10']:.4f}, balanced {report['balanced_accuracy']:.4f}")
    table = Table(title="confusion matrix (rows: truth, columns: prediction)")
    table.add_column("truth")
    short = [label.strip("_")[:5] for label in report["labels"]]
    for s in short:
        table.add_column(s, justify="right")
    table.add_column("recall", justify="right")
    table.add_column("precision", justify="right")
    for label, row in zip(report["labels"], report["confusion"], strict=True):
        pc = report["per_class"][label]
        cells = [f"[bold]{v}[/]" if i == report["labels"].index(label) else (str(v) if v else "·")
                 for i, v in enumerate(row)]
        table.add_row(label, *cells, f"{pc['recall']:.3f}", f"{pc['precision']:.3f}")
    console.print(table)


def _need_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise KwspotError("--plot needs matplotlib: pip install matplotlib") from None


def plot_confusion(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conf = np.array(report["confusion"], dtype=float)
    norm = conf / np.maximum(conf.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(LABELS)), LABELS, rotation=60)
    ax.set_yticks(range(len(LABELS)), LABELS)
    for i in range(len(LABELS)):
        for j in range(len(LABELS)):
            if conf[i, j]:
                ax.text(j, i, int(conf[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("prediction")
    ax.set_ylabel("truth")
    ax.set_title(f"12-way accuracy {report['accuracy_12']:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}", file=sys.stderr)
