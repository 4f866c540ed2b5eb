"""The numpy log-mel front end: what the training graph computes, and the same features when it reuses frames."""

from __future__ import annotations

import numpy as np
import pytest

from kwspot.features import LogMelFrontEnd, LogMelSpec, mel_matrix
from kwspot.frontend import SAMPLE_RATE, WINDOW_SAMPLES

SPEC = LogMelSpec(frame=256, hop=80, fft=256, mels=40, fmin=20.0, fmax=4000.0, floor=1e-6,
                  mean=tuple(np.linspace(-8, -2, 40)), std=tuple(np.linspace(1, 3, 40)))


def speechy(seconds: float, seed: int = 0) -> np.ndarray:
    """Noise with bursts of tones: frames that differ from each other, as speech does."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    bursts = np.sin(2 * np.pi * 300 * t * (1 + 0.5 * np.sin(t))) * (np.sin(2 * np.pi * 1.3 * t) > 0.3)
    return (0.3 * bursts + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def windows(audio: np.ndarray, hop: int) -> list[np.ndarray]:
    return [audio[s - WINDOW_SAMPLES : s] for s in range(WINDOW_SAMPLES, len(audio) + 1, hop)]


@pytest.mark.parametrize("hop", [800, 400, 160, 100])  # whole frames (10, 5, 2) and not (100 samples)
def test_reusing_frames_gives_the_features_of_a_fresh_computation(hop):
    audio = speechy(3.0)
    streaming = LogMelFrontEnd(SPEC, WINDOW_SAMPLES, SAMPLE_RATE)
    for window in windows(audio, hop):
        fresh = LogMelFrontEnd(SPEC, WINDOW_SAMPLES, SAMPLE_RATE)(window)
        assert fresh.shape == (97, 40)
        np.testing.assert_allclose(streaming(window), fresh, rtol=0, atol=1e-5)
    if hop % SPEC.hop == 0:
        assert streaming.reused_frames > 0.8 * 97 * (len(windows(audio, hop)) - 1)
    else:
        assert streaming.reused_frames == 0


def test_a_window_that_jumped_or_changed_is_computed_afresh():
    audio = speechy(4.0, seed=1)
    front = LogMelFrontEnd(SPEC, WINDOW_SAMPLES, SAMPLE_RATE)
    front(audio[:8000])
    jumped = audio[16000:24000]  # no overlap with the last window
    np.testing.assert_allclose(front(jumped), LogMelFrontEnd(SPEC, 8000, SAMPLE_RATE)(jumped), atol=1e-5)
    edited = audio[16800:24800].copy()
    edited[100] += 0.5  # overlaps the last window except for one sample
    np.testing.assert_allclose(front(edited), LogMelFrontEnd(SPEC, 8000, SAMPLE_RATE)(edited), atol=1e-5)


def test_the_numpy_front_end_matches_the_training_graph():
    pytest.importorskip("tensorflow", reason="the training extra (TensorFlow) is not installed")
    import tensorflow as tf

    from kwspot.train.models import FMAX, FMIN, logmel_layer_class

    mel = tf.signal.linear_to_mel_weight_matrix(40, 129, SAMPLE_RATE, FMIN, FMAX).numpy()
    np.testing.assert_allclose(mel_matrix(129, 40, SAMPLE_RATE, FMIN, FMAX), mel, atol=1e-5)
    layer = logmel_layer_class()(name="logmel")
    layer.build((None, WINDOW_SAMPLES))
    layer.mean.assign(np.asarray(SPEC.mean, dtype=np.float32))
    layer.std.assign(np.asarray(SPEC.std, dtype=np.float32))
    audio = speechy(2.0, seed=2)
    for window in (audio[:8000], audio[8000:], np.zeros(8000, np.float32)):
        graph = layer(window[None]).numpy()[0]
        ours = LogMelFrontEnd(SPEC, WINDOW_SAMPLES, SAMPLE_RATE)(window)
        np.testing.assert_allclose(ours, graph, atol=2e-3)


def test_a_batch_of_unrelated_windows_gets_the_same_probabilities_as_one_at_a_time():
    """``Model.predict_batch`` (the front end over many windows at once, as training's teachers use it)."""
    from kwspot.model import Model, bundled_model_path

    windows = np.random.default_rng(4).normal(0, 0.05, (5, 8000)).astype(np.float32)
    windows[2] = 0.0
    one_by_one = np.stack([Model(bundled_model_path()).predict(w) for w in windows])  # fresh: no frame reuse
    np.testing.assert_allclose(Model(bundled_model_path()).predict_batch(windows), one_by_one, atol=1e-6)
