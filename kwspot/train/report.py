"""What evaluation prints and draws: clip and stream reports, the config snippet, plots."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from kwspot.errors import KwspotError
from kwspot.paths import cannot_write_in, not_a_file, shown


class ResultConsole(Console):
    """rich's Console on stdout; a reader that goes away (``| head``) ends the command as in any other: rich
    would exit with status 1, this raises BrokenPipeError for ``kwspot.cli.main`` (status 0)."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError


def print_clip_report(report: dict[str, Any], console: Console) -> None:
    n_labels, n_keywords = len(report["labels"]), len([x for x in report["labels"] if not x.startswith("_")])
    console.print(f"{report['n']} clips: {n_labels}-way accuracy [bold]{report['accuracy_12']:.4f}[/], "
                  f"{n_keywords}-way {report['accuracy_10']:.4f}, balanced {report['balanced_accuracy']:.4f}")
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


def check_plot(path: Path) -> None:
    """Before any work: matplotlib is there, and ``path`` is a .png that can be written."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise KwspotError("--plot needs matplotlib: pip install matplotlib") from None
    if path.suffix.lower() != ".png":
        raise KwspotError(f"--plot {shown(path)}: name a .png file")
    if path.is_dir() or (path.exists() and not path.is_file()):
        raise KwspotError(f"--plot {shown(path)}: {not_a_file(path, 'PNG')}")
    if why := cannot_write_in(path.parent):
        raise KwspotError(f"--plot {shown(path)}: cannot write in {shown(path.parent)} ({why})")


def _save(fig: Any, path: Path) -> None:
    try:
        fig.savefig(path, dpi=120, format="png")
    except OSError as exc:
        raise KwspotError(f"--plot {shown(path)}: cannot write ({exc.strerror or exc})") from None
    print(f"wrote {shown(path)}", file=sys.stderr)


def plot_confusion(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conf = np.array(report["confusion"], dtype=float)
    norm = conf / np.maximum(conf.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    labels = report["labels"]
    ax.set_xticks(range(len(labels)), labels, rotation=60)
    ax.set_yticks(range(len(labels)), labels)
    for i in range(len(labels)):
        for j in range(len(labels)):
            if conf[i, j]:
                ax.text(j, i, int(conf[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("prediction")
    ax.set_ylabel("truth")
    ax.set_title(f"{len(labels)}-way accuracy {report['accuracy_12']:.3f}")
    fig.tight_layout()
    _save(fig, path)


def print_stream_report(result: dict[str, Any], console: Console) -> None:
    w = result["words"]
    lat = f"{w['latency_median_s']:.2f} s" if w["latency_median_s"] is not None else "n/a"
    console.print(f"[bold]{result['split']} stream[/]: {w['seconds'] / 60:.1f} min, {w['keywords']} keywords, "
                  f"{w['other_words']} other words"
                  + (f", events checked by the verifier {result['verifier']}" if result.get("verifier") else ""))
    console.print(f"  recall [bold]{w['recall']:.4f}[/], false accepts {w['false_accepts']} "
                  f"({w['fa_per_hour']:.1f}/hour, {w['fa_per_keyword']:.2%} of keywords) {w['fa_kinds']}, "
                  f"median latency {lat} after the word")
    if "speech" in result:
        s = result["speech"]
        console.print(f"  continuous speech: {s['seconds'] / 60:.1f} min, {s['false_accepts']} false accepts "
                      f"({s['fa_per_hour']:.1f}/hour)")
    table = Table(title="DET sweep (one threshold for all keywords; false accepts over all audio)")
    for col in ("threshold", "recall", "miss", "FA", "FA/hour"):
        table.add_column(col, justify="right")
    for r in result["sweep"]:
        table.add_row(f"{r['threshold']:.2f}", f"{r['recall']:.4f}", f"{1 - r['recall']:.4f}",
                      str(r["false_accepts"]), f"{r['fa_per_hour']:.1f}")
    console.print(table)
    if "target" in result:
        t = result["target"]
        console.print(f"thresholds for at most {t['fa_per_hour']:g} false accepts an hour: "
                      f"recall {t['result']['recall']:.4f}, {t['result']['fa_per_hour']:.1f} FA/hour")
        console.print(config_snippet(t["thresholds"]), markup=False)


def config_snippet(thresholds: dict[str, float]) -> str:
    """The lines to paste into config.yaml for these per-keyword thresholds (they load as written)."""
    return "# config.yaml\ndetector:\n  thresholds: {" + ", ".join(
        f"{_yaml_key(k)}: {v:.2f}" for k, v in thresholds.items()) + "}\n"


def _yaml_key(word: str) -> str:
    """A plain word as it is; anything YAML would read otherwise (``1``, ``#x``, ``a, b``) in quotes."""
    return word if re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", word) else json.dumps(word)


def plot_det(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    fa = [max(r["fa_per_hour"], 0.1) for r in rows]
    ax.plot(fa, [1 - r["recall"] for r in rows], marker="o", ms=3)
    for r, x in zip(rows, fa, strict=True):
        if round(r["threshold"] * 100) % 10 == 0:
            ax.annotate(f"{r['threshold']:.1f}", (x, 1 - r["recall"]), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("false accepts per hour")
    ax.set_ylabel("miss rate")
    ax.set_title("DET curve")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
