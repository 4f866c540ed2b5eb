"""The architectures: ``workshop`` (the reference), ``default`` (log-mel + residual Conv1D) and ``dstcn``
(log-mel + depthwise-separable dilated residual blocks: deeper and wider context for fewer MACs).

Both take the raw 8 kHz window, float32 (batch, 8000), as the daemon feeds
it; the default model carries its own log-mel front end, built from ops
that LiteRT runs natively (STFT as RFFT2D, a mel matrix, log).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kwspot import LABELS
from kwspot.features import LogMelSpec, hz_to_mel
from kwspot.frontend import SAMPLE_RATE, WINDOW_SAMPLES
from kwspot.train import require_tensorflow

ARCHS = ("default", "dstcn", "workshop")
FRAME, HOP, FFT, MELS = 256, 80, 256, 40
FMIN, FMAX, FLOOR = 20.0, SAMPLE_RATE / 2, 1e-6  # mel band edges (Hz) and the floor under log()
MEL_CHUNK = 7  # 129 x 7 = 903 < 1024 weights: dynamic-range quantisation leaves the front end in float32
FRAMES = 1 + (WINDOW_SAMPLES - FRAME) // HOP


def logmel_layer_class() -> type:
    tf = require_tensorflow()
    import keras

    class LogMel(keras.layers.Layer):
        """Raw window -> per-band normalised log-mel (frames, 40), all inside the model."""

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            mel = tf.signal.linear_to_mel_weight_matrix(MELS, FFT // 2 + 1, SAMPLE_RATE, FMIN, FMAX)
            self._chunks = [tf.constant(mel[:, i : i + MEL_CHUNK]) for i in range(0, MELS, MEL_CHUNK)]
            self.mean = self.add_weight(shape=(MELS,), initializer="zeros", trainable=False, name="mean")
            self.std = self.add_weight(shape=(MELS,), initializer="ones", trainable=False, name="std")

        def features(self, x: Any) -> Any:
            spec = tf.signal.stft(x, FRAME, HOP, FFT)
            power = tf.math.square(tf.math.real(spec)) + tf.math.square(tf.math.imag(spec))
            mel = tf.concat([tf.tensordot(power, c, axes=1) for c in self._chunks], axis=-1)
            return tf.math.log(mel + FLOOR)

        def call(self, x: Any) -> Any:
            return (self.features(x) - self.mean) / self.std

        def compute_output_shape(self, input_shape: Any) -> tuple:
            return (input_shape[0], FRAMES, MELS)

    return LogMel


def specmask_layer_class() -> type:
    require_tensorflow()
    import keras

    class SpecMask(keras.layers.Layer):
        """SpecAugment while training: two frequency bands and two time spans set to the mean; identity after."""

        def __init__(self, seed: int = 0, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.seed_generator = keras.random.SeedGenerator(seed)

        def _mask(self, batch: Any, length: int, widest: int) -> Any:
            ops = keras.ops
            pos = ops.arange(length)[None, :]
            masked = ops.zeros((batch, length), dtype="bool")
            for _ in range(2):
                width = keras.random.randint((batch, 1), 0, widest + 1, seed=self.seed_generator)
                start = keras.random.randint((batch, 1), 0, length, seed=self.seed_generator)
                masked = ops.logical_or(masked, ops.logical_and(pos >= start, pos < start + width))
            return masked

        def call(self, x: Any, training: bool | None = None) -> Any:
            if not training:
                return x
            ops = keras.ops
            batch = ops.shape(x)[0]
            drop = ops.logical_or(self._mask(batch, MELS, 5)[:, None, :], self._mask(batch, FRAMES, 8)[:, :, None])
            return ops.where(drop, ops.zeros_like(x), x)

    return SpecMask


def warp_layer_class() -> type:
    require_tensorflow()
    import keras

    class BandWarp(keras.layers.Layer):
        """Vocal tract length perturbation while training; identity after.

        Each window's spectrum is read at frequencies scaled by its own factor, drawn from
        [1 - amount, 1 + amount]: the mel band centred at f takes the value the window has at f / factor
        (interpolated between bands), as a speaker with a shorter or longer vocal tract would say it.
        Pitch and timing stay as they were (``--speed`` changes all three together).
        """

        def __init__(self, amount: float = 0.1, seed: int = 0, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.amount = amount
            self.seed_generator = keras.random.SeedGenerator(seed + 7)
            lo, hi = hz_to_mel(FMIN), hz_to_mel(FMAX)
            self._step = (hi - lo) / (MELS + 1)
            self._mel_lo = lo
            self._centres = _mel_to_hz(lo + self._step * np.arange(1, MELS + 1)).astype(np.float32)

        def call(self, x: Any, training: bool | None = None) -> Any:
            if not training or not self.amount:
                return x
            ops = keras.ops
            batch = ops.shape(x)[0]
            factor = keras.random.uniform((batch, 1), 1.0 - self.amount, 1.0 + self.amount, seed=self.seed_generator)
            mel = 1127.0 * ops.log(1.0 + (ops.convert_to_tensor(self._centres)[None, :] / factor) / 700.0)
            pos = ops.clip((mel - self._mel_lo) / self._step - 1.0, 0.0, MELS - 1.0)  # fractional band index
            low = ops.cast(ops.floor(pos), "int32")
            high = ops.minimum(low + 1, MELS - 1)
            weight = (pos - ops.cast(low, pos.dtype))[:, None, :]
            shape = ops.shape(x)
            below = ops.take_along_axis(x, ops.broadcast_to(low[:, None, :], shape), axis=-1)
            above = ops.take_along_axis(x, ops.broadcast_to(high[:, None, :], shape), axis=-1)
            return below * (1.0 - weight) + above * weight

    return BandWarp


def _mel_to_hz(mel: Any) -> Any:
    return 700.0 * (np.exp(np.asarray(mel, np.float64) / 1127.0) - 1.0)


def build(arch: str, seed: int = 0, specaugment: bool = False, n_labels: int = len(LABELS),
          width: float = 1.0, warp: float = 0.0) -> Any:
    """A Keras model for ``arch`` with ``n_labels`` outputs; ``specaugment`` masks log-mel bands and frames
    while training; ``warp`` scales each training window's frequencies by up to that share either way
    (:func:`warp_layer_class`); ``width`` multiplies the channels of the log-mel architectures (capacity, at
    about ``width`` squared the MACs)."""
    require_tensorflow()
    import keras

    check_options(arch, width, warp)
    keras.utils.set_random_seed(seed)
    if arch == "workshop":
        return _workshop(keras, n_labels)
    if arch == "default":
        return _default(keras, n_labels, specaugment, seed, width, warp)
    if arch == "dstcn":
        return _dstcn(keras, n_labels, specaugment, seed, width, warp)
    raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHS)}")


def check_options(arch: str, width: float, warp: float = 0.0) -> None:
    """ValueError, naming the flag, unless ``arch`` can be built ``width`` times as wide and with a band warp
    (the workshop architecture can do neither)."""
    if arch == "workshop" and width != 1.0:
        raise ValueError("--width: the workshop architecture has one width (use --arch default or dstcn)")
    if arch == "workshop" and warp:
        raise ValueError("--warp: the workshop architecture has no log-mel front end to warp (use --arch default "
                         "or dstcn)")


def _workshop(keras: Any, n_labels: int) -> Any:
    layers = keras.layers
    inp = keras.Input((WINDOW_SAMPLES,), name="audio")
    x = layers.Reshape((WINDOW_SAMPLES, 1))(inp)
    for filters in (8, 16, 32, 64):
        x = layers.Conv1D(filters, 11, activation="relu")(x)
        x = layers.MaxPooling1D(4)(x)
        x = layers.Dropout(0.3)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(256, activation="relu")(x)
    x = layers.Dense(128, activation="relu")(x)
    out = layers.Dense(n_labels, activation="softmax", name="probs")(x)
    return keras.Model(inp, out, name="workshop")


def _log_mel_model(keras: Any, name: str, body: Any, n_labels: int, specaugment: bool, seed: int,
                   warp: float = 0.0) -> Any:
    """Raw window -> log-mel (-> band warp, SpecAugment while training) -> ``body`` -> pooling, dropout, softmax."""
    layers = keras.layers
    inp = keras.Input((WINDOW_SAMPLES,), name="audio")
    x = logmel_layer_class()(name="logmel")(inp)
    if warp:
        x = warp_layer_class()(amount=warp, seed=seed, name="bandwarp")(x)
    if specaugment:
        x = specmask_layer_class()(seed=seed, name="specaugment")(x)
    x = layers.Dropout(0.3)(layers.GlobalAveragePooling1D()(body(layers, x)))
    out = layers.Dense(n_labels, activation="softmax", name="probs")(x)
    return keras.Model(inp, out, name=name)


def _default(keras: Any, n_labels: int, specaugment: bool = False, seed: int = 0, width: float = 1.0,
             warp: float = 0.0) -> Any:
    narrow, wide = _channels(96, width), _channels(128, width)

    def body(layers: Any, x: Any) -> Any:
        x = _conv_bn(layers, x, narrow, 5, stride=2)
        x = _residual(layers, x, narrow, 1)
        x = _conv_bn(layers, x, wide, 3, stride=2)
        x = _residual(layers, x, wide, 1)
        return _residual(layers, x, wide, 2)

    return _log_mel_model(keras, "default", body, n_labels, specaugment, seed, warp)


def _dstcn(keras: Any, n_labels: int, specaugment: bool = False, seed: int = 0, width: float = 1.0,
           warp: float = 0.0) -> Any:
    """Eight depthwise-separable residual blocks, dilations 1-8 twice: ~1.2 s of context in 8 M MACs."""
    channels = _channels(128, width)

    def body(layers: Any, x: Any) -> Any:
        x = _conv_bn(layers, x, channels, 5, stride=2)
        for dilation in (1, 2, 4, 8, 1, 2, 4, 8):
            y = layers.DepthwiseConv1D(5, dilation_rate=dilation, padding="same", use_bias=False)(x)
            y = layers.ReLU()(layers.BatchNormalization()(y))
            y = _conv_bn(layers, y, channels, 1, relu=False)
            x = layers.ReLU()(layers.Add()([x, y]))
        return x

    return _log_mel_model(keras, "dstcn", body, n_labels, specaugment, seed, warp)


def _channels(base: int, width: float) -> int:
    """``base`` channels times ``width``, rounded to a multiple of 8 (at least 8)."""
    return max(8, int(round(base * width / 8)) * 8)


def _conv_bn(layers: Any, x: Any, filters: int, kernel: int, stride: int = 1, dilation: int = 1, relu: bool = True):
    x = layers.Conv1D(filters, kernel, strides=stride, dilation_rate=dilation, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    return layers.ReLU()(x) if relu else x


def _residual(layers: Any, x: Any, filters: int, dilation: int) -> Any:
    y = _conv_bn(layers, x, filters, 3, dilation=dilation)
    y = _conv_bn(layers, y, filters, 3, dilation=dilation, relu=False)
    return layers.ReLU()(layers.Add()([x, y]))


def feature_network(model: Any) -> tuple[Any, LogMelSpec] | None:
    """For a model with the in-graph ``logmel`` layer: the network after it (normalised features in) and the
    front end it expects, which the runtime computes in numpy (:mod:`kwspot.features`). None otherwise."""
    import keras

    try:
        layer = model.get_layer("logmel")
    except ValueError:
        return None
    spec = LogMelSpec(frame=FRAME, hop=HOP, fft=FFT, mels=MELS, fmin=FMIN, fmax=float(FMAX), floor=FLOOR,
                      mean=tuple(float(x) for x in np.asarray(layer.mean)),
                      std=tuple(float(x) for x in np.asarray(layer.std)))
    return keras.Model(layer.output, model.output, name=f"{model.name}_features"), spec


def set_normalisation(model: Any, batches: list[np.ndarray]) -> None:
    """Per-band mean and std of the log-mel features over some training windows."""
    try:
        layer = model.get_layer("logmel")
    except ValueError:
        return
    feats = np.concatenate([np.asarray(layer.features(b)).reshape(-1, MELS) for b in batches])
    layer.mean.assign(feats.mean(axis=0).astype(np.float32))
    layer.std.assign(np.maximum(feats.std(axis=0), 1e-3).astype(np.float32))


def count_macs(model: Any) -> dict[str, int]:
    """Multiply-accumulates per window: the network's conv/dense layers and the log-mel front end."""
    import keras

    net = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.DepthwiseConv1D):
            net += int(layer.output.shape[1]) * int(np.prod(layer.kernel.shape))
        elif isinstance(layer, keras.layers.Conv1D):
            kernel = layer.kernel.shape
            net += int(layer.output.shape[1]) * int(np.prod(kernel))
        elif isinstance(layer, keras.layers.Dense):
            net += int(np.prod(layer.kernel.shape))
    front = 0
    if any(layer.name == "logmel" for layer in model.layers):
        fft = int(2 * FFT * np.log2(FFT))  # real MACs of a radix-2 FFT, roughly
        front = FRAMES * (FRAME + fft + 2 * (FFT // 2 + 1) + (FFT // 2 + 1) * MELS)
    return {"network": net, "front_end": front, "total": net + front}
