"""Train the verifier head: ``python -m kwspot.train.verifier --data ../shared/speech_commands --out models/kwspot``.

The embeddings of 1.5 s windows ending where events fire
(:mod:`kwspot.train.verifier_data`) feed a small MLP (one hidden ReLU
layer, softmax over ``_unknown_`` and the keywords), trained in numpy with
Adam, class-balanced, deterministic per seed. It is written as
``OUT.verifier.npz`` and named in ``OUT.json`` (the model's sidecar), with a
verifier threshold of 0.5 for every keyword until ``bench/verifier.py
--save`` picks them on the validation streams.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from kwspot import UNKNOWN
from kwspot.argtypes import Number
from kwspot.config import DEFAULTS
from kwspot.errors import exit_status
from kwspot.modelfile import read, save_verifier, sidecar_path
from kwspot.train.data import scan
from kwspot.train.export import stem_file
from kwspot.train.verifier_data import WINDOW_S, split_embeddings


def stack(groups: dict[str, tuple[np.ndarray, list[str]]], labels: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """All groups as (n, features) float32 and label indices (labels outside ``labels`` count as unknown)."""
    index = {label: i for i, label in enumerate(labels)}
    x = np.concatenate([g[0].reshape(len(g[0]), -1) for g in groups.values()]).astype(np.float32)
    y = np.array([index.get(label, 0) for g in groups.values() for label in g[1]], np.int64)
    return x, y


def init(sizes: list[int], rng: np.random.Generator) -> list[np.ndarray]:
    params = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        params += [rng.standard_normal((a, b)).astype(np.float32) * np.float32(np.sqrt(2.0 / a)),
                   np.zeros(b, np.float32)]
    return params


def forward(params: list[np.ndarray], x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Logits and the inputs of every layer."""
    acts = [x]
    n = len(params) // 2
    for i in range(n):
        x = x @ params[2 * i] + params[2 * i + 1]
        if i < n - 1:
            x = np.maximum(x, 0.0)
            acts.append(x)
    return x, acts


def fit(x: np.ndarray, y: np.ndarray, n_classes: int, hidden: int = 128, epochs: int = 40, lr: float = 1e-3,
        batch: int = 256, weight_decay: float = 1e-4, dropout: float = 0.2, seed: int = 0) -> list[np.ndarray]:
    """An MLP on standardised features; class-balanced cross-entropy, Adam, input dropout."""
    rng = np.random.default_rng(seed)
    params = init([x.shape[1], hidden, n_classes], rng)
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    counts = np.bincount(y, minlength=n_classes).astype(np.float32)
    class_w = np.where(counts > 0, len(y) / (n_classes * np.maximum(counts, 1)), 0).astype(np.float32)
    step = 0
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(order), batch):
            ix = order[start : start + batch]
            xb = x[ix]
            if dropout:
                xb = xb * (rng.random(xb.shape, dtype=np.float32) >= dropout) / np.float32(1 - dropout)
            logits, acts = forward(params, xb)
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            w = class_w[y[ix]]
            grad = p
            grad[np.arange(len(ix)), y[ix]] -= 1.0
            grad *= (w / w.sum())[:, None]
            grads = [np.zeros_like(q) for q in params]
            for i in reversed(range(len(params) // 2)):
                grads[2 * i] = acts[i].T @ grad + weight_decay * params[2 * i]
                grads[2 * i + 1] = grad.sum(axis=0)
                if i:
                    grad = (grad @ params[2 * i].T) * (acts[i] > 0)
            step += 1
            for j, g in enumerate(grads):
                m[j] = 0.9 * m[j] + 0.1 * g
                v[j] = 0.999 * v[j] + 0.001 * g * g
                params[j] -= lr * (m[j] / (1 - 0.9**step)) / (np.sqrt(v[j] / (1 - 0.999**step)) + 1e-8)
    return params


def probs(params: list[np.ndarray], x: np.ndarray) -> np.ndarray:
    logits, _ = forward(params, x)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def report(name: str, p: np.ndarray, y: np.ndarray, labels: tuple[str, ...]) -> str:
    """Accuracy, and for positives the share scoring >= 0.5 on their keyword; for negatives the share below."""
    pos = y > 0
    kept = float(np.mean(p[pos, y[pos]] >= 0.5)) if pos.any() else float("nan")
    rejected = float(np.mean(p[~pos, 1:].max(axis=1) < 0.5)) if (~pos).any() else float("nan")
    acc = float(np.mean(p.argmax(axis=1) == y))
    return (f"{name:16s} n={len(y):6d} accuracy {acc:.3f}  positives kept@0.5 {kept:.3f} ({int(pos.sum())})  "
            f"negatives rejected@0.5 {rejected:.3f} ({int((~pos).sum())})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kwspot.train.verifier", description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, type=Path, help="Speech Commands layout folder")
    parser.add_argument("--out", required=True, type=Path, help="model path without suffix, e.g. models/kwspot")
    parser.add_argument("--speech", type=Path, default=None, help="continuous speech without keywords "
                        "(default: librispeech_negatives beside --data)")
    parser.add_argument("--wake-phrases", type=Path, default=None, help="wake phrase folders "
                        "(default: wake_phrases beside --data)")
    parser.add_argument("--copies", type=Number(1, 100, integer=True), default=1,
                        help="noisy copies of each keyword clip")
    parser.add_argument("--no-espeak", action="store_true", help="leave out espeak-ng words and commands")
    parser.add_argument("--hidden", type=Number(1, 4096, integer=True), default=128)
    parser.add_argument("--epochs", type=Number(1, 100000, integer=True), default=40)
    parser.add_argument("--seed", type=Number(0, 2**32 - 1, integer=True), default=0)
    parser.add_argument("--workers", type=Number(1, 256, integer=True), default=2,
                        help="processes computing embeddings")
    parser.add_argument("--cache", type=Path, default=None, help="embedding cache (default ~/.cache/kwspot)")
    parser.add_argument("--candidates", action="store_true",
                        help="also train on the first stage's own events (the model at --out) on streams")
    parser.add_argument("--min-pause-ms", type=Number(0, 2000), default=DEFAULTS["detector"]["min_pause_ms"],
                        help="the first stage's isolated-command gate for --candidates (default: config.yaml's)")
    return exit_status(run, parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    model_path = stem_file(args.out, ".tflite")
    keywords = read(model_path).keywords
    labels = (UNKNOWN, *keywords)
    data = scan(args.data, keywords=keywords)
    speech = args.speech or args.data.parent / "librispeech_negatives"
    wake = args.wake_phrases or args.data.parent / "wake_phrases"
    speech = speech if speech.is_dir() else None

    def embeddings(split: str) -> dict[str, tuple[np.ndarray, list[str]]]:
        return split_embeddings(data, split, speech, wake, args.copies, not args.no_espeak, args.seed,
                                args.workers, args.cache, log=lambda s: print(s, file=sys.stderr, flush=True),
                                first_stage=model_path if args.candidates else None, pause_ms=args.min_pause_ms)

    train, val = embeddings("train"), embeddings("validation")
    x, y = stack(train, labels)
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-3
    params = fit((x - mean) / std, y, len(labels), hidden=args.hidden, epochs=args.epochs, seed=args.seed)
    for name, group in val.items():
        gx, gy = stack({name: group}, labels)
        print(report(name, probs(params, (gx - mean) / std), gy, labels))
    head = args.out.with_name(args.out.name + ".verifier.npz")
    arrays = {"labels": np.array(labels), "window_s": np.float32(WINDOW_S), "mean": mean, "std": std}
    arrays.update({f"{'wb'[i % 2]}{i // 2}": p for i, p in enumerate(params)})
    np.savez(head, **arrays)
    save_verifier(model_path, head.name, 0.5, {})
    print(f"wrote {head} ({head.stat().st_size // 1024} KiB) and named it in {sidecar_path(model_path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
