"""A hostile user's second round: closed or full standard streams, pipes, odd audio, places, model files.

Each case runs the real program where the defect showed there; bad input ends in one line
``kwspot: error: ...`` and exit 2, and what can run (a closed stderr only loses the log) runs.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
from test_hostile import assert_exit_2, run, stopped_after, text, tone

from conftest import kwspot_cmd
from kwspot import devices, modelfile
from kwspot.errors import KwspotError
from kwspot.frontend import MAX_CHANNELS, block_frames, load_audio, refuse_far_outside
from kwspot.model import Model, bundled_model_path
from kwspot.train.data import cache_dir
from kwspot.train.report import ResultConsole


def assert_stream_error(result: subprocess.CompletedProcess, needle: str) -> str:
    """Exit 2, no traceback, and the last stderr line (after the daemon's "listening on") the error."""
    err = text(result.stderr)
    assert result.returncode == 2 and "Traceback" not in err, (result.returncode, err)
    last = err.strip().splitlines()[-1]
    assert last.startswith("kwspot: error: ") and needle in last, last
    return last


# ---- standard streams ---------------------------------------------------------------------------------


def test_a_closed_stderr_only_loses_the_log(tmp_path):
    wav = tone(tmp_path / "in.wav")
    predicted = run("predict", str(wav), capture_output=False, stdout=subprocess.PIPE, preexec_fn=lambda: os.close(2))
    assert predicted.returncode == 0 and b"in.wav\t" in predicted.stdout, predicted
    listened = run("listen", "--input", str(wav), "--fast", "--format", "jsonl", capture_output=False,
                   stdout=subprocess.PIPE, preexec_fn=lambda: os.close(2))
    assert listened.returncode == 0, listened


def test_a_closed_stdout_is_refused_where_the_results_go_there(tmp_path):
    result = run("predict", str(tone(tmp_path / "in.wav")), preexec_fn=lambda: os.close(1))
    assert_exit_2(result, "stdout is closed; kwspot predict prints its results there")


def test_a_full_disk_on_stdout_is_one_line(tmp_path):
    with open("/dev/full", "wb") as full:
        result = run("predict", str(tone(tmp_path / "in.wav")), capture_output=False, stdout=full,
                     stderr=subprocess.PIPE)
    assert_exit_2(result, "stdout: No space left on device")


def test_a_reader_that_leaves_a_rich_report_ends_it_as_any_other():
    """rich would exit with status 1; main turns BrokenPipeError into status 0."""
    with pytest.raises(BrokenPipeError):
        ResultConsole().on_broken_pipe()


def test_an_ignored_sigint_stays_ignored(tmp_path):
    """A background job of a shell script inherits SIGINT ignored; kwspot keeps it so (SIGTERM still stops)."""
    wav = tone(tmp_path / "in.wav", seconds=30.0, rate=8000)
    env = {**os.environ, "KWSPOT_CONFIG": "", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(kwspot_cmd("listen", "--input", str(wav), "--format", "jsonl"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        assert b"listening on" in proc.stderr.readline()
        proc.send_signal(signal.SIGINT)
        time.sleep(1.0)
        assert proc.poll() is None
        proc.terminate()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


# ---- pipes ------------------------------------------------------------------------------------------------


def test_raw_pcm_on_a_fifo_takes_its_rate_from_the_flag(tmp_path):
    fifo = tmp_path / "audio.fifo"
    os.mkfifo(fifo)
    pcm = np.zeros(2 * 8000, "<i2").tobytes()  # 2 s at 8 kHz; read at 16 kHz it would be 1 s
    writer = threading.Thread(target=lambda: fifo.write_bytes(pcm))
    writer.start()
    result = run("listen", "--input", str(fifo), "--rate", "8000", "--format", "jsonl")
    writer.join(timeout=10)
    assert result.returncode == 0 and stopped_after(text(result.stderr)) == "3.0 s of audio", result.stderr


def test_a_wav_on_a_fifo_stops_cleanly_while_its_writer_is_silent(tmp_path):
    """The decoder thread, blocked on the pipe at exit, holds no resampler for nanobind to report leaked."""
    fifo = tmp_path / "audio.fifo"
    os.mkfifo(fifo)
    wav = tone(tmp_path / "in.wav", seconds=1.0, rate=16000).read_bytes()

    def writer() -> None:
        with fifo.open("wb") as out:
            out.write(wav[:44] + wav[44:] * 3)
            out.flush()
            time.sleep(8)

    threading.Thread(target=writer, daemon=True).start()
    env = {**os.environ, "KWSPOT_CONFIG": ""}
    proc = subprocess.Popen(kwspot_cmd("listen", "--input", str(fifo), "--format", "jsonl"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = []
    while not any("WAV stream, 16000 Hz" in line for line in lines):
        lines.append(proc.stderr.readline())
        assert lines[-1], lines
    proc.send_signal(signal.SIGINT)
    err = "".join(lines) + proc.communicate(timeout=30)[1]
    assert proc.returncode == 0 and "leaked" not in err and "Traceback" not in err, err


def test_a_write_only_stdin_is_refused(tmp_path):
    with (tmp_path / "out").open("wb") as write_only:
        result = run("listen", "--input", "-", "--format", "jsonl", stdin=write_only)
    assert_exit_2(result, "stdin is open for writing only")


@pytest.mark.parametrize("head, needle", [
    (b"RIFF", "(Format not recognised.)"),
    (b"fLaC", "unreadable audio stream ("),
])
def test_a_broken_container_on_a_pipe_is_told_in_libsndfile_words_only(head, needle):
    garbage = head + np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    line = assert_stream_error(run("listen", "--input", "-", "--format", "jsonl", input=garbage), needle)
    assert "Error opening" not in line and "object at" not in line, line


@pytest.mark.parametrize("fmt, name", [("AIFF", "AIFF"), ("CAF", "CAF"), ("W64", "Wave64")])
def test_containers_libsndfile_cannot_stream_are_refused_by_name(tmp_path, fmt, name):
    path = tmp_path / "in.bin"
    soundfile.write(path, np.zeros(8000, np.float32), 8000, format=fmt, subtype="PCM_16")
    result = run("listen", "--input", "-", "--format", "jsonl", input=path.read_bytes())
    assert_stream_error(result, f"{name} is not supported on a pipe")


# ---- audio far out of scale, too many channels --------------------------------------------------------


def float_wav(path: Path, samples: np.ndarray) -> Path:
    soundfile.write(path, samples.astype(np.float32), 8000, subtype="FLOAT")
    return path


def test_infinite_samples_are_not_called_large():
    refuse_far_outside("x.wav", np.array([np.inf, -np.inf, np.nan, 0.5], np.float32))  # the callers count these
    with pytest.raises(KwspotError, match=r"x.wav: samples far outside \[-1, 1\] \(1 of magnitude over 1000\)"):
        refuse_far_outside("x.wav", np.array([np.inf, 1e6], np.float32))


def test_every_audio_path_refuses_samples_far_over_full_scale(tmp_path):
    loud = np.full(16000, 0.1, np.float32)
    loud[100:200] = 1e30
    path = float_wav(tmp_path / "loud.wav", loud)
    with pytest.raises(KwspotError, match="loud.wav: samples far outside"):
        load_audio(path)  # training and evaluation clips
    assert_stream_error(run("listen", "--input", "-", "--format", "jsonl", input=path.read_bytes()),
                        "stdin: samples far outside")
    assert_exit_2(run("predict", str(path)), "loud.wav: samples far outside")


def test_more_channels_than_a_room_recording_are_refused(tmp_path):
    path = tmp_path / "wide.wav"
    soundfile.write(path, np.zeros((800, MAX_CHANNELS + 1), np.float32), 8000, subtype="PCM_16")
    assert_exit_2(run("predict", str(path)), f"wide.wav: {MAX_CHANNELS + 1} channels")
    assert_stream_error(run("listen", "--input", "-", "--format", "jsonl", input=path.read_bytes()),
                        f"{MAX_CHANNELS + 1} channels")


def test_a_block_holds_about_the_same_samples_whatever_the_channels():
    assert block_frames(48000, 1, 1.0) == 48000
    assert block_frames(48000, 8, 1.0) == 6000
    assert block_frames(8000, 64, 0.001) == 1


# ---- names and places ---------------------------------------------------------------------------------


def test_a_relative_socket_in_a_deleted_folder_is_one_line(tmp_path):
    gone = tmp_path / "gone"
    gone.mkdir()
    wav = tone(tmp_path / "in.wav")

    def enter_and_delete() -> None:
        os.chdir(gone)
        os.rmdir(gone)

    result = run("listen", "--input", str(wav), "--fast", "--socket", "rel.sock", preexec_fn=enter_and_delete)
    assert_exit_2(result, "rel.sock: cannot create socket: the current folder no longer exists")


def test_a_flag_error_names_the_flag_not_a_config(tmp_path):
    line = assert_exit_2(run("listen", "--device", "\t", "--format", "jsonl"), "kwspot: error: --device must be")
    assert "config" not in line, line


def test_a_device_named_by_a_digit_that_is_not_a_number_is_a_name(monkeypatch):
    monkeypatch.setattr(devices, "input_devices", lambda: [{"index": 0, "name": "USB mic"}])
    with pytest.raises(KwspotError, match="audio device '²': no input device name contains it"):
        devices.resolve_device("²")
    assert devices.resolve_device("０")["name"] == "USB mic"  # a fullwidth zero is the index 0


def test_an_empty_home_is_no_cache_folder(monkeypatch):
    monkeypatch.delenv("KWSPOT_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # the XDG spec: ignored
    monkeypatch.setenv("HOME", "/home/someone")
    assert cache_dir() == Path("/home/someone/.cache/kwspot")
    monkeypatch.setenv("HOME", "")
    with pytest.raises(KwspotError, match=r"\$HOME is ''; set KWSPOT_CACHE"):
        cache_dir()
    monkeypatch.setenv("XDG_CACHE_HOME", "/var/cache/me")
    assert cache_dir() == Path("/var/cache/me/kwspot")



# ---- model files ------------------------------------------------------------------------------------------


def test_a_model_that_gives_nan_on_some_window_is_refused_there(monkeypatch):
    """Checked on every window, not only on the silent one at load: a NaN is no score to obey or to drop."""
    model = Model(bundled_model_path())
    real = model._interpreter.get_tensor
    monkeypatch.setattr(model._interpreter, "get_tensor", lambda index: real(index) * np.float32("nan"))
    with pytest.raises(KwspotError, match="model gives scores that are not probabilities \\(e.g. nan\\)"):
        model.predict(np.zeros(model.window_samples, np.float32))


def test_a_stream_survives_a_window_the_model_gives_nan(monkeypatch, caplog):
    """Listening (and stream evaluation, the same Pipeline) takes such a window as no detection, and says so."""
    from kwspot.detector import Detector, DetectorSettings
    from kwspot.pipeline import Pipeline

    model = Model(bundled_model_path())
    real, calls = model._interpreter.get_tensor, []

    def nan_once(index):
        calls.append(index)
        return real(index) * (np.float32("nan") if len(calls) == 5 else np.float32(1))

    monkeypatch.setattr(model._interpreter, "get_tensor", nan_once)
    pipeline = Pipeline(model, Detector(model.labels, DetectorSettings()), 0.1)
    with caplog.at_level("WARNING"):
        pipeline.feed(np.zeros(8000 * 3, np.float32))
    assert pipeline.hops == 30 and pipeline.bad_windows == 1
    assert "not probabilities (e.g. nan): window taken as no detection (1 such so far)" in caplog.text


def test_a_sidecar_write_that_fails_leaves_no_temporary_file(tmp_path, monkeypatch):
    model = tmp_path / "m.tflite"
    shutil.copy(bundled_model_path(), model)
    meta = modelfile.read(bundled_model_path()).meta

    def full(src: str, dst: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(modelfile.os, "replace", full)
    with pytest.raises(KwspotError, match="m.json: cannot write the model sidecar \\(No space left on device\\)"):
        modelfile.write(model, meta)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tflite"]


# ---- the command line -------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, flag", [
    (["listen", "--config", ""], "--config"),
    (["listen", "--input="], "--input"),
    (["evaluate", "--data", ""], "--data"),  # type=Path would read it as "."
    (["events", "--socket", ""], "--socket"),
    (["predict", "a.wav", ""], ""),
])
def test_an_empty_value_is_refused_not_taken_for_missing(argv, flag):
    line = assert_exit_2(run(*argv))
    assert line == (f"kwspot: error: {flag}: empty value" if flag else
                    "kwspot: error: an empty argument (an unset variable?)") + " (see kwspot --help)", line


@pytest.mark.parametrize("name", ["z" * 64, "a\x01b", ""])
def test_a_zeroconf_name_mdns_cannot_carry_is_one_line(name):
    result = run("wyoming", "--uri", "tcp://127.0.0.1:0", "--zeroconf", name, timeout=30)
    assert_exit_2(result, "--zeroconf")


def test_a_broken_alsa_configuration_is_one_line(tmp_path):
    (tmp_path / ".asoundrc").write_text("pcm.x { type\n")
    result = run("devices", env={"HOME": str(tmp_path)})
    assert_exit_2(result, "PortAudio cannot start", "ALSA configuration")


def test_a_path_with_control_characters_is_shown_escaped():
    from kwspot.paths import shown

    assert shown("/tmp/a\x1b[31mb\nc") == "/tmp/a\\x1b[31mb\\nc"  # no terminal escape, no second log line
    assert shown("/tmp/été") == "/tmp/été"


def test_a_whole_number_range_is_told_in_whole_numbers():
    line = assert_exit_2(run("evaluate", "--data", "d", "--seed", "-1"))
    assert "between 0 and 4294967295, not -1" in line, line


def test_a_sidecar_behind_a_link_is_written_through_it(tmp_path):
    """--save-thresholds on a model whose sidecar is a link (a shared models folder): the target changes, the
    link stays a link."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shutil.copy(bundled_model_path(), tmp_path / "m.tflite")
    shutil.copy(modelfile.sidecar_path(bundled_model_path()), shared / "m.json")
    (tmp_path / "m.json").symlink_to(shared / "m.json")
    modelfile.save_thresholds(tmp_path / "m.tflite", {"yes": 0.42})
    assert (tmp_path / "m.json").is_symlink()
    assert modelfile.read(tmp_path / "m.tflite").thresholds["yes"] == 0.42
    assert sorted(p.name for p in shared.iterdir()) == ["m.json"]


def test_labels_may_be_any_language_but_carry_no_control_characters():
    assert modelfile.label_ok("ça") and modelfile.label_ok("on-off") and modelfile.label_ok("می\u200cخواهم")
    assert not any(modelfile.label_ok(x) for x in ("st\nop", "a\x1b[31m", "st#op", "a/b", "x+y", "\ud800"))


@pytest.mark.parametrize("argv", [
    ["listen", "--exec=logger -t kw key=", "--config", "/nonexistent/kw.yaml"],  # a value that ends in "="
    ["predict", "--", ""],  # after "--", the user's arguments as given
])
def test_values_that_merely_end_in_an_equals_sign_are_not_empty(argv):
    result = run(*argv)
    assert "empty" not in text(result.stderr), result.stderr


def test_a_name_with_a_newline_cannot_forge_a_second_error_or_log_line(tmp_path):
    forged = "x\nkwspot: error: forged \x1b[31m"
    line = assert_exit_2(run("evaluate", "--data", str(tmp_path / forged)))
    assert "\\nkwspot: error: forged \\x1b[31m" in line, line
    wav = tone(tmp_path / "in.wav")
    result = run("listen", "--input", str(wav), "--fast", "--format", "jsonl", "--config", str(tmp_path / forged))
    assert len(text(result.stderr).strip().splitlines()) == 1 and "\x1b" not in text(result.stderr)
