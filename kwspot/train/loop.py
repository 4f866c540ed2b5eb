"""The training loop: balanced epochs built on the fly, rich progress, early stopping, CSV log."""

from __future__ import annotations

import csv
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from kwspot.train import require_tensorflow
from kwspot.train.augment import FIRST_KEYWORD, AugmentSettings, Sources, epoch_plan, make_batch

if TYPE_CHECKING:
    from kwspot.train.distill import Teachers


@dataclass
class LoopSettings:
    epochs: int = 40
    batch: int = 64
    lr: float = 2e-3
    patience: int = 15
    seed: int = 0
    max_minutes: float = 0.0  # stop after this much wall clock (0: no limit)
    label_smoothing: float = 0.0  # share of each target spread evenly over all labels
    mixup: float = 0.0  # alpha of the Beta(alpha, alpha) mixing weights of mixup (0: off)
    worst_of: int = 1  # draws of each negative window, of which the one most like a command is trained on
    ema: float = 0.0  # decay of the moving average of the weights that is validated and kept (0: the raw weights)


class WeightAverage:
    """An exponential moving average of a model's weights, updated after every batch (``kwspot train --ema``).

    The average is what each epoch validates and what training keeps; the optimiser goes on from the raw
    weights. The decay grows from 0.1 towards ``decay`` over the first updates ((1 + n) / (10 + n)), so
    that the first weights, drawn at random, do not linger in it.
    """

    def __init__(self, model: Any, decay: float) -> None:
        self.decay = decay
        self.weights = [np.array(w, copy=True) for w in model.get_weights()]
        self.updates = 0

    def update(self, model: Any) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for average, w in zip(self.weights, model.get_weights(), strict=True):
            average *= d
            average += (1.0 - d) * w

    @contextmanager
    def applied(self, model: Any) -> Iterator[None]:
        """The model holds the average inside the block, its own weights again after it."""
        raw = model.get_weights()
        model.set_weights(self.weights)
        try:
            yield
        finally:
            model.set_weights(raw)


def train(
    model: Any,
    src: Sources,
    val: tuple[np.ndarray, np.ndarray],
    aug: AugmentSettings,
    loop: LoopSettings,
    log_path: Path,
    console: Console,
    teachers: Teachers | None = None,
) -> dict[str, Any]:
    """Fit ``model`` in place, keeping the weights of the best validation epoch (soft targets with ``teachers``)."""
    tf = require_tensorflow()
    import keras

    keras.utils.set_random_seed(loop.seed)
    tf.config.experimental.enable_op_determinism()
    loss = "categorical_crossentropy" if soft_targets(loop, teachers) else "sparse_categorical_crossentropy"
    model.compile(optimizer=keras.optimizers.Adam(loop.lr), loss=loss)
    started = time.monotonic()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    partial = log_path.with_name(log_path.name + ".partial")  # the previous run's log stays until this one ends
    try:
        best, best_weights, epoch = _run_epochs(model, src, val, aug, loop, partial, console, teachers, started)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, log_path)
    model.set_weights(best_weights)
    best["epochs_run"] = epoch - 1 if best.get("interrupted") else epoch
    best["minutes"] = round((time.monotonic() - started) / 60, 1)
    return best


def _run_epochs(model: Any, src: Sources, val: tuple[np.ndarray, np.ndarray], aug: AugmentSettings, loop: LoopSettings,
                log_path: Path, console: Console, teachers: Teachers | None,
                started: float) -> tuple[dict[str, Any], list[np.ndarray], int]:
    """The epochs, each logged to ``log_path`` (CSV); (best epoch's figures, its weights, the last epoch)."""
    best: dict[str, Any] = {"val_accuracy": -1.0, "epoch": 0}
    best_weights = model.get_weights()
    stale = 0
    rng = np.random.default_rng(loop.seed)
    average = WeightAverage(model, loop.ema) if loop.ema else None
    with log_path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["epoch", "lr", "loss", "accuracy", "val_loss", "val_accuracy", "seconds"])
        for epoch in range(1, loop.epochs + 1):
            t0 = time.monotonic()
            lr = loop.lr * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / loop.epochs))
            model.optimizer.learning_rate.assign(lr)
            try:
                loss, acc = _epoch(model, src, aug, loop, rng, epoch, console, teachers, average)
                with average.applied(model) if average else nullcontext():
                    val_loss, val_acc = evaluate_arrays(model, *val)
                    weights = model.get_weights() if val_acc > best["val_accuracy"] else None
            except KeyboardInterrupt:
                if not best["epoch"]:
                    raise  # nothing learnt yet: nothing to keep
                console.print(f"interrupted in epoch {epoch}: keeping epoch {best['epoch']}, the best so far "
                              "(Ctrl-C again to leave without writing it)")
                best["interrupted"] = True
                break
            seconds = time.monotonic() - t0
            writer.writerow([epoch, f"{lr:.6g}", f"{loss:.4f}", f"{acc:.4f}", f"{val_loss:.4f}", f"{val_acc:.4f}",
                             f"{seconds:.1f}"])
            fh.flush()
            mark = ""
            if weights is not None:
                best = {"val_accuracy": val_acc, "val_loss": val_loss, "epoch": epoch}
                best_weights = weights
                stale, mark = 0, " [green]best[/]"
            else:
                stale += 1
            console.print(f"epoch {epoch:3d}  loss {loss:.4f}  acc {acc:.4f}  val_loss {val_loss:.4f}  "
                          f"val_acc {val_acc:.4f}  {seconds:.0f}s{mark}")
            if stale >= loop.patience:
                console.print(f"early stop: no better validation accuracy for {loop.patience} epochs")
                break
            if loop.max_minutes and time.monotonic() - started > loop.max_minutes * 60:
                console.print(f"stopping: time limit of {loop.max_minutes:g} minutes reached")
                break
    return best, best_weights, epoch


def _epoch(model: Any, src: Sources, aug: AugmentSettings, loop: LoopSettings, rng: np.random.Generator,
           epoch: int, console: Console, teachers: Teachers | None,
           average: WeightAverage | None = None) -> tuple[float, float]:
    plan = epoch_plan(src, aug, rng)
    steps = math.ceil(len(plan) / loop.batch)
    losses, correct = [], 0
    columns = (TextColumn(f"epoch {epoch}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[info]}"))
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("train", total=steps, info="")
        for step in range(steps):
            rows = plan[step * loop.batch : (step + 1) * loop.batch]
            x, y = make_batch(src, rows, aug, rng)
            if loop.worst_of > 1:
                x = worst_negatives(model, src, rows, x, aug, loop.worst_of, rng)
            x, target = batch_targets(x, y, model.output_shape[-1], loop, rng, teachers)
            loss = float(np.asarray(model.train_on_batch(x, target)).ravel()[0])
            if average is not None:
                average.update(model)
            losses.append(loss)
            if step % 20 == 0:
                correct += int((np.argmax(model.predict_on_batch(x), axis=1) == y).sum())
            progress.update(task, advance=1, info=f"loss {np.mean(losses[-50:]):.3f}")
    sampled = sum(len(plan[s * loop.batch : (s + 1) * loop.batch]) for s in range(0, steps, 20))
    return float(np.mean(losses)), correct / max(sampled, 1)


def worst_negatives(model: Any, src: Sources, rows: np.ndarray, x: np.ndarray, aug: AugmentSettings, draws: int,
                    rng: np.random.Generator) -> np.ndarray:
    """The batch with each negative window (``_silence_``, ``_unknown_``) replaced by the worst of ``draws``.

    A stream costs a false accept if any of its windows fires, so a negative is drawn ``draws`` times
    (other offset, other cut of the speech, other noise) and the draw the model now takes most for a
    keyword is kept: the training sees the window the detector would. Positives stay as drawn.
    """
    negative = np.flatnonzero(rows[:, 2] < FIRST_KEYWORD)
    if not len(negative):
        return x
    candidates = np.stack([x[negative]] + [make_batch(src, rows[negative], aug, rng)[0] for _ in range(draws - 1)])
    flat = candidates.reshape(-1, candidates.shape[-1])
    keyword_score = np.asarray(model.predict_on_batch(flat))[:, FIRST_KEYWORD:].max(axis=1)
    worst = keyword_score.reshape(draws, len(negative)).argmax(axis=0)
    x = x.copy()
    x[negative] = candidates[worst, np.arange(len(negative))]
    return x


def soft_targets(loop: LoopSettings, teachers: Teachers | None) -> bool:
    """Whether training goes towards soft targets (a distribution per window) rather than integer labels."""
    return teachers is not None or loop.label_smoothing > 0 or loop.mixup > 0


def batch_targets(x: np.ndarray, y: np.ndarray, n_labels: int, loop: LoopSettings, rng: np.random.Generator,
                  teachers: Teachers | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The batch and what to train it towards: the integer labels, or soft targets where asked.

    Soft targets, in this order: the one-hot label smoothed by ``loop.label_smoothing``; mixup (each
    window mixed with another of the batch, weight max(l, 1 - l) for l ~ Beta(alpha, alpha), so that its
    own label dominates, and the targets mixed alike); the teachers' probabilities of the window as
    mixed. Without any of them, no random number is drawn (earlier recipes reproduce).
    """
    if not soft_targets(loop, teachers):
        return x, y
    target = np.eye(n_labels, dtype=np.float32)[y]
    if loop.label_smoothing > 0:
        target = (1.0 - loop.label_smoothing) * target + loop.label_smoothing / n_labels
    if loop.mixup > 0:
        weight = rng.beta(loop.mixup, loop.mixup, size=(len(y), 1)).astype(np.float32)
        weight = np.maximum(weight, 1.0 - weight)
        other = rng.permutation(len(y))
        x = weight * x + (1.0 - weight) * x[other]
        target = weight * target + (1.0 - weight) * target[other]
    if teachers is not None:
        target = teachers.targets(x, target)
    return x, target


def predict_arrays(model: Any, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """Keras probabilities for a (n, samples) array."""
    out = [np.asarray(model.predict_on_batch(x[i : i + batch])) for i in range(0, len(x), batch)]
    return np.concatenate(out) if out else np.zeros((0, model.output_shape[-1]), np.float32)


def evaluate_arrays(model: Any, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Mean cross-entropy and accuracy."""
    probs = predict_arrays(model, x)
    loss = float(-np.mean(np.log(np.maximum(probs[np.arange(len(y)), y], 1e-7))))
    return loss, float(np.mean(np.argmax(probs, axis=1) == y))
