"""The live front end (file, stdin, streaming resampler) gives what training's gives."""

import os

import numpy as np
import pytest
import soundfile

from kwspot.errors import KwspotError
from kwspot.frontend import SAMPLE_RATE, StreamResampler, fit_window, load_audio, resample
from kwspot.sources import FileSource, StdinSource


def chirp(rate: int, seconds: float = 2.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.3 * np.sin(2 * np.pi * (200 + 800 * t) * t)).astype(np.float32)


def drain(source) -> np.ndarray:
    blocks = []
    while (block := source.read(1.0)) is not None:
        blocks.append(block)
    source.close()
    return np.concatenate(blocks)


@pytest.mark.parametrize("rate", [8000, 16000, 44100, 48000])
def test_streaming_resampler_equals_one_shot(rate):
    x = chirp(rate)
    rs = StreamResampler(rate)
    pieces = [rs.process(block) for block in np.array_split(x, 37)[:-1]]
    pieces.append(rs.process(np.array_split(x, 37)[-1], last=True))
    np.testing.assert_allclose(np.concatenate(pieces), resample(x, rate), atol=1e-6)


@pytest.mark.parametrize("rate", [16000, 44100, 48000])
def test_file_source_gives_training_front_end_windows(tmp_path, rate):
    path = tmp_path / f"chirp_{rate}.wav"
    soundfile.write(path, np.stack([chirp(rate), chirp(rate)], axis=1), rate, subtype="PCM_16")  # stereo
    offline = load_audio(path)
    assert offline.size == 2 * SAMPLE_RATE
    live = drain(FileSource(path, realtime=False, block_ms=20))
    np.testing.assert_allclose(live[: offline.size], offline, atol=1e-6)
    assert np.all(live[offline.size :] == 0) and live.size == offline.size + SAMPLE_RATE


def test_different_capture_rates_reach_the_same_8k_signal(tmp_path):
    at16, at48 = resample(chirp(16000), 16000), resample(chirp(48000), 48000)
    assert np.max(np.abs(at16 - at48)[100:-100]) < 0.01


def test_stdin_source_decodes_s16le_like_a_wav(tmp_path):
    x = chirp(16000)
    pcm = (x * 32767).astype("<i2")
    path = tmp_path / "x.wav"
    soundfile.write(path, pcm, 16000, subtype="PCM_16")
    r, w = os.pipe()
    with os.fdopen(w, "wb") as writer:
        writer.write(pcm.tobytes()[:-1])  # an odd byte count must not break it
    with os.fdopen(r, "rb") as reader:
        live = drain(StdinSource(16000, block_ms=30, stream=reader))
    offline = load_audio(path)
    edge = 64  # the dropped last sample changes only the resampler's final few outputs
    np.testing.assert_allclose(live[: offline.size - edge], offline[:-edge], atol=1e-3)


def test_fit_window_pads_short_and_centres_long():
    short = np.ones(100, np.float32)
    out = fit_window(short, 1000)
    assert out.size == 1000 and out[450:550].sum() == 100 and out.sum() == 100
    long = np.zeros(5000, np.float32)
    long[3000:3200] = 1
    out = fit_window(long, 1000)
    assert out.size == 1000 and out.sum() == 200


def test_a_path_that_leads_nowhere_says_why(tmp_path):
    """Not "no such file" for everything: a loop of links, a dangling link, a file used as a folder."""
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    (tmp_path / "dangling.wav").symlink_to(tmp_path / "gone.wav")
    (tmp_path / "plain").write_text("x")
    for path, why in [(tmp_path / "a", "cannot reach an audio file there (Too many levels of symbolic links)"),
                      (tmp_path / "dangling.wav", "a symbolic link to nothing, no audio file"),
                      (tmp_path / "plain" / "x.wav", "cannot reach an audio file there (Not a directory)"),
                      (tmp_path / "absent.wav", "no such audio file")]:
        with pytest.raises(KwspotError) as err:
            load_audio(path)
        assert str(err.value) == f"{path}: {why}"


def test_unreadable_files_are_named(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF1234WAVEjunkjunk")
    with pytest.raises(KwspotError, match="bad.wav: not a readable audio file") as err:
        load_audio(bad)
    assert "b'" not in str(err.value) and str(err.value).count("bad.wav") == 1  # named once, as text
    with pytest.raises(KwspotError, match="no such audio file"):
        FileSource(tmp_path / "missing.flac")
    empty = tmp_path / "empty.wav"
    soundfile.write(empty, np.zeros(0, np.float32), 16000)
    with pytest.raises(KwspotError, match="holds no samples"):
        load_audio(empty)


def test_count_nonfinite_counts_nan_and_inf_and_passes_huge_finite_samples():
    from kwspot.frontend import count_nonfinite

    x = np.zeros(1000, np.float32)
    assert count_nonfinite(x) == 0
    assert count_nonfinite(np.zeros(0, np.float32)) == 0
    x[[3, 10, 500]] = [np.nan, np.inf, -np.inf]
    assert count_nonfinite(x) == 3
    huge = np.full(1000, 3e38, np.float32)  # finite samples whose squares overflow float32
    assert count_nonfinite(huge) == 0
    assert count_nonfinite(np.full((10, 2), np.nan, np.float32)) == 20  # frames x channels
