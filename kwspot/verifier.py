"""Second stage: confirm or veto a candidate event with a pretrained speech embedding and a small head.

The first-stage model runs every hop; the verifier runs only when the detector
proposes an event. It takes the last ``window_s`` seconds of 8 kHz audio,
resamples them to 16 kHz (soxr, :func:`kwspot.frontend.resample`), and runs
openWakeWord's front end: a mel model (32 bands, 60-3800 Hz, 10 ms frames)
and Google's speech_embedding model (one 96-dim embedding per 76 frames,
every 16 frames: five for 1.5 s). Both ``.tflite`` files come from the installed
``pyopen-wakeword`` package (Apache-2.0) and run on LiteRT. A small MLP
(``NAME.verifier.npz`` beside the model, named by its sidecar) maps the
flattened embeddings to one probability per label (``_unknown_`` and the
keywords); the event stands when its keyword's probability reaches the
verifier threshold. Numpy in, verdict out; no audio I/O.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

import numpy as np

from kwspot.errors import KwspotError
from kwspot.frontend import SAMPLE_RATE, resample

EMBEDDING_RATE = 16000  # what openWakeWord's mel model takes
INT16_SCALE = 32767.0  # it takes int16-scaled floats
MEL_FRAMES = 76  # mel frames per embedding (775 ms)
MEL_STEP = 16  # frames between embeddings (160 ms; openWakeWord takes 8, neighbours differ little)
EMBEDDING_DIM = 96
PACKAGE = "pyopen_wakeword"
MEL_FILE, EMBEDDING_FILE = "melspectrogram.tflite", "embedding_model.tflite"


def embedding_files() -> tuple[Path, Path]:
    """The mel and embedding ``.tflite`` files shipped in ``pyopen-wakeword``."""
    try:
        folder = resources.files(PACKAGE) / "models"
    except ModuleNotFoundError:
        raise KwspotError("the model's verifier needs pyopen-wakeword (pip install 'kwspot[verifier]'), "
                          "or set detector.verifier: off") from None
    paths = (Path(str(folder / MEL_FILE)), Path(str(folder / EMBEDDING_FILE)))
    for path in paths:
        if not path.is_file():
            raise KwspotError(f"{path}: missing from the installed pyopen-wakeword")
    return paths


class Embedder:
    """8 kHz audio of a fixed length -> (n, 96) speech embeddings."""

    def __init__(self, window_samples: int, threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        from kwspot.model import _quiet_stderr

        mel_path, emb_path = embedding_files()
        self.window_samples = int(window_samples)
        self.input_samples = self.window_samples * EMBEDDING_RATE // SAMPLE_RATE
        with _quiet_stderr():
            self._mel = Interpreter(model_path=str(mel_path), num_threads=threads)
            self._mel.resize_tensor_input(self._mel.get_input_details()[0]["index"], [1, self.input_samples])
            self._mel.allocate_tensors()
            self._emb = Interpreter(model_path=str(emb_path), num_threads=threads)
            self._emb.allocate_tensors()
        self._mel_in = self._mel.get_input_details()[0]["index"]
        self._mel_out = self._mel.get_output_details()[0]["index"]
        self._emb_in = self._emb.get_input_details()[0]["index"]
        self._emb_out = self._emb.get_output_details()[0]["index"]
        self.n_embeddings = len(self._starts(self.mels(np.zeros(self.window_samples, np.float32))))

    @staticmethod
    def _starts(mels: np.ndarray) -> range:
        return range(0, len(mels) - MEL_FRAMES + 1, MEL_STEP)

    def mels(self, audio: np.ndarray) -> np.ndarray:
        """(frames, 32) mel features of one window, scaled as the embedding model expects."""
        x = resample(np.asarray(audio, np.float32), SAMPLE_RATE, EMBEDDING_RATE) * INT16_SCALE
        self._mel.set_tensor(self._mel_in, x.reshape(1, self.input_samples))
        self._mel.invoke()
        return self._mel.get_tensor(self._mel_out).reshape(-1, 32) / 10.0 + 2.0

    def embed(self, audio: np.ndarray) -> np.ndarray:
        """(n_embeddings, 96) embeddings of exactly ``window_samples`` samples of 8 kHz audio."""
        audio = np.asarray(audio, np.float32).ravel()
        if audio.size != self.window_samples:
            raise ValueError(f"expected {self.window_samples} samples, got {audio.size}")
        mels = self.mels(audio)
        out = np.empty((self.n_embeddings, EMBEDDING_DIM), np.float32)
        for i, start in enumerate(self._starts(mels)):
            self._emb.set_tensor(self._emb_in, mels[start : start + MEL_FRAMES].reshape(1, MEL_FRAMES, 32, 1))
            self._emb.invoke()
            out[i] = self._emb.get_tensor(self._emb_out).ravel()
        return out


MAX_WINDOW_S = 10.0  # the verifier's audio window; the bundled head takes 1.5 s
MAX_HEAD_BYTES = 64 << 20  # a verifier head's arrays, unpacked (the bundled one: under 1 MiB)


class Head:
    """A small MLP in a ``.npz``: ``labels``, ``window_s``, ``mean``/``std`` of the features, ``w0, b0, w1, b1, ...``.

    Input: the flattened embeddings of one window; ReLU between layers; softmax at the end.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            loaded = np.load(self.path, allow_pickle=False)
            if not isinstance(loaded, np.lib.npyio.NpzFile):
                raise ValueError("an .npy array, not an .npz archive")
            with loaded as f:
                if sum(info.file_size for info in f.zip.infolist()) > MAX_HEAD_BYTES:
                    raise ValueError(f"over {MAX_HEAD_BYTES >> 20} MiB unpacked")
                arrays = {k: f[k] for k in f.files}
        except FileNotFoundError:
            raise KwspotError(f"{self.path}: verifier head missing") from None
        except (OSError, ValueError, EOFError, MemoryError, zipfile.BadZipFile) as exc:
            raise KwspotError(f"{self.path}: unreadable verifier head ({str(exc):.80})") from None
        try:
            self.labels = tuple(str(x) for x in np.atleast_1d(arrays["labels"]))
            self.window_s = float(np.asarray(arrays["window_s"]).reshape(-1)[0]) if arrays["window_s"].size else 0.0
            self.mean = arrays["mean"].astype(np.float32)
            self.std = arrays["std"].astype(np.float32)
            n = sum(1 for k in arrays if k[0] == "w" and k[1:].isdigit())
            self.layers = [(arrays[f"w{i}"].astype(np.float32), arrays[f"b{i}"].astype(np.float32)) for i in range(n)]
        except KeyError as exc:
            raise KwspotError(f"{self.path}: verifier head lacks {exc}") from None
        except (ValueError, TypeError) as exc:
            raise KwspotError(f"{self.path}: verifier head holds values of the wrong type ({str(exc):.60})") from None
        dims = [self.mean.size] + [w.shape[-1] if w.ndim else -1 for w, _ in self.layers]
        ok = self.layers and all(w.shape == (a, b) and bias.shape == (b,)
                                 for (w, bias), a, b in zip(self.layers, dims[:-1], dims[1:], strict=True))
        if not ok or dims[-1] != len(self.labels) or self.std.shape != self.mean.shape:
            raise KwspotError(f"{self.path}: verifier head layers do not fit together")
        if not 0.5 <= self.window_s <= MAX_WINDOW_S:  # NaN fails too
            raise KwspotError(f"{self.path}: verifier head window_s must be 0.5 to {MAX_WINDOW_S:g} s, "
                              f"not {self.window_s:g}")
        values = (self.mean, self.std, *(x for layer in self.layers for x in layer))
        arrays_ok = all(np.isfinite(a).all() for a in values)
        if not arrays_ok or not (self.std > 0).all():
            raise KwspotError(f"{self.path}: verifier head holds NaN, infinite or non-positive std values")

    @property
    def features(self) -> int:
        return int(self.mean.size)

    def probs(self, features: np.ndarray) -> np.ndarray:
        """Probabilities over ``labels`` for a (features,) or (batch, features) array."""
        x = (np.asarray(features, np.float32) - self.mean) / self.std
        for i, (w, b) in enumerate(self.layers):
            x = x @ w + b
            if i < len(self.layers) - 1:
                x = np.maximum(x, 0.0)
        x = x - x.max(axis=-1, keepdims=True)
        e = np.exp(x)
        return e / e.sum(axis=-1, keepdims=True)


class Verifier:
    """``check(audio, keyword) -> (accepted, score)`` on the last ``window_s`` seconds of 8 kHz audio."""

    def __init__(self, head: str | Path | Head, thresholds: Mapping[str, float] | None = None,
                 threshold: float = 0.5, threads: int = 1, embedder: Embedder | None = None) -> None:
        self.head = head if isinstance(head, Head) else Head(head)
        self.window_samples = round(self.head.window_s * SAMPLE_RATE)
        self.embedder = embedder or Embedder(self.window_samples, threads)
        if self.embedder.n_embeddings * EMBEDDING_DIM != self.head.features:
            raise KwspotError(f"{self.head.path}: verifier head takes {self.head.features} features, "
                              f"the embedding gives {self.embedder.n_embeddings * EMBEDDING_DIM}")
        self.thresholds = dict(thresholds or {})
        self.threshold = threshold

    def threshold_of(self, keyword: str) -> float:
        return self.thresholds.get(keyword, self.threshold)

    def last(self, audio: np.ndarray) -> np.ndarray:
        """The newest ``window_samples`` of ``audio``, zeros in front if it is shorter."""
        audio = np.asarray(audio, np.float32).ravel()[-self.window_samples :]
        return np.pad(audio, (self.window_samples - audio.size, 0))

    def scores(self, audio: np.ndarray) -> np.ndarray:
        """Probabilities over the head's labels for the newest window of ``audio``."""
        return self.head.probs(self.embedder.embed(self.last(audio)).ravel())

    def score(self, audio: np.ndarray, keyword: str) -> float:
        if keyword not in self.head.labels:
            return 1.0  # a keyword the head does not know is not vetoed
        return float(self.scores(audio)[self.head.labels.index(keyword)])

    def check(self, audio: np.ndarray, keyword: str) -> tuple[bool, float]:
        """Whether the event for ``keyword`` stands, and the verifier's probability for it."""
        s = self.score(audio, keyword)
        return s >= self.threshold_of(keyword), s


class SignalVerifier:
    """A verifier over a whole recorded 8 kHz signal, for replay: scores by event time, each computed once.

    The window checked for an event at ``t`` seconds is the ``window_samples``
    before sample ``round(t * 8000)``, zeros before the start: what the
    pipeline's second ring holds when its detector fires at ``t``.
    """

    def __init__(self, verifier: Verifier, audio: np.ndarray) -> None:
        self.verifier = verifier
        self.audio = np.asarray(audio, np.float32).ravel()
        self._scores: dict[int, np.ndarray] = {}

    @property
    def checks(self) -> int:
        """Distinct windows judged so far (the daemon judges each event once)."""
        return len(self._scores)

    def scores_at(self, t: float) -> np.ndarray:
        end = round(t * SAMPLE_RATE)
        if end not in self._scores:
            self._scores[end] = self.verifier.scores(self.audio[max(0, end - self.verifier.window_samples) : end])
        return self._scores[end]

    def score(self, keyword: str, t: float) -> float:
        labels = self.verifier.head.labels
        return float(self.scores_at(t)[labels.index(keyword)]) if keyword in labels else 1.0

    def accepts(self, keyword: str, t: float) -> bool:
        """The verdict ``Pipeline`` gives an event for ``keyword`` at ``t``."""
        return self.score(keyword, t) >= self.verifier.threshold_of(keyword)
