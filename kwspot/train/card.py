"""The model card: what a model was trained on, how, and how well it does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kwspot.errors import KwspotError
from kwspot.paths import shown, write_atomic


def write_card(path: Path, meta: dict[str, Any], metrics: dict[str, dict[str, Any]], host: str = "") -> None:
    """Write a Markdown model card next to the model."""
    t = meta["training"]
    labels = meta["labels"]
    lines = [
        f"# Model card: {path.stem} ({meta['arch']})",
        "",
        f"Trained {meta['trained']} by `kwspot train` on `{t['data']}`"
        + (f" with negatives from {', '.join(f'`{n}`' for n in t['negatives'])}" if t.get("negatives") else "")
        + ".",
        "",
        "## Classes",
        "",
        ", ".join(f"`{label}`" for label in labels),
        "",
        "## Data (clips per class and split; speaker-disjoint lists, `_silence_` clips split by hash)",
        "",
        "| split | " + " | ".join(labels) + " | total |",
        "|---" * (len(labels) + 2) + "|",
    ]
    for split, counts in meta["data_counts"].items():
        lines.append(f"| {split} | " + " | ".join(str(counts[x]) for x in labels) + f" | {sum(counts.values())} |")
    e = meta["export"]
    lines += [
        "",
        "## Model",
        "",
        f"- architecture `{meta['arch']}`, {meta['params']:,} parameters, "
        f"{meta['macs']['total'] / 1e6:.2f} M multiply-accumulates per window "
        f"(network {meta['macs']['network'] / 1e6:.2f} M, front end {meta['macs']['front_end'] / 1e6:.2f} M)",
        f"- LiteRT {e['format']}, {e['bytes']:,} bytes, {e['ms_per_window']} ms per window "
        f"(median, 1 thread{', ' + host if host else ''})",
        f"- validation accuracy (fixed augmented validation set): float32 {e['val_accuracy_float32']}, "
        f"quantised {e['val_accuracy_quantised']}",
        "",
        "## Clip accuracy (LiteRT model)",
        "",
        "| split | clips | 12-way | 10-way | balanced |",
        "|---|---|---|---|---|",
    ]
    for split, m in metrics.items():
        lines.append(f"| {split} | {m['n']} | {m['accuracy_12']:.4f} | {m['accuracy_10']:.4f} | "
                     f"{m['balanced_accuracy']:.4f} |")
    if "testing" in metrics:
        lines += ["", "Per class on the testing list:", "", "| class | precision | recall | clips |",
                  "|---|---|---|---|"]
        for label, row in metrics["testing"]["per_class"].items():
            lines.append(f"| {label} | {row['precision']:.3f} | {row['recall']:.3f} | {row['support']} |")
    lines += [
        "",
        "## Training settings",
        "",
        f"epochs run {t.get('epochs_run')} of {t['epochs']} (best epoch {t.get('epoch')}, val accuracy "
        f"{t.get('val_accuracy', 0):.4f}), batch {t['batch']}, Adam, peak lr {t['lr']} with cosine decay, seed "
        f"{t['seed']}, noise probability {t['noise_prob']}, unknown ratio {t['unknown_ratio']}, keyword fragments "
        f"{'off' if t['no_fragments'] else 'on'}, SpecAugment {'on' if t.get('specaugment') else 'off'}, "
        + (f"band warp {t['warp']}, " if t.get("warp") else "") + "espeak-ng "
        f"negatives {'on' if t.get('espeak_negatives') else 'off'}, espeak-ng positives "
        f"{t.get('espeak_positives') or 0} a voice, {t.get('espeak_voices') or 6} espeak-ng voices, "
        f"flite positives {t.get('flite') or 0} a voice, "
        f"phrases {', '.join(t.get('phrases') or []) or 'none'}, "
        f"other words balanced {'per word' if t.get('balance_words') else 'per clip'}, channel augmentation "
        f"{t.get('channel_aug') or 0}, speech under the words {t.get('babble') or 0}, "
        f"hard negatives {', '.join(t.get('hard_negatives') or []) or 'none'}, "
        + (f"distilled from {', '.join(t['teacher'])} (weight {t.get('distill_weight')}), " if t.get("teacher") else "")
        + (f"weights averaged (decay {t['ema']}), " if t.get("ema") else "")
        + f"{t.get('minutes')} minutes.",
        "",
    ]
    try:
        write_atomic(path, "\n".join(lines).encode())
    except OSError as exc:
        raise KwspotError(f"{shown(path)}: cannot write the model card ({exc.strerror or exc})") from None
