"""Runtime commands never load the offline package (kwspot.train) or TensorFlow."""

from __future__ import annotations

import subprocess
import sys

import pytest

OFFLINE = ("kwspot.train", "tensorflow", "keras")

PROBE = """
import sys
from kwspot.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("\\n".join(sorted(m for m in sys.modules if m.startswith(("kwspot", "tensorflow", "keras")))))
"""


@pytest.mark.parametrize("argv", [
    ["listen", "--help"],
    ["events", "--help"],
    ["predict", "--help"],
    ["--help"],
    ["listen", "--input", "{wav}", "--fast", "--format", "jsonl"],
    ["predict", "{wav}"],
])
def test_runtime_commands_never_import_offline_code(argv, tmp_path):
    import numpy as np
    import soundfile

    wav = tmp_path / "quiet.wav"
    soundfile.write(wav, np.zeros(8000, np.float32), 8000)
    args = [a.replace("{wav}", str(wav)) for a in argv]
    result = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120,
                            env={"KWSPOT_CONFIG": "", "PATH": "/usr/bin:/bin"})
    loaded = result.stdout.split()
    assert "kwspot.cli" in loaded, result.stderr
    assert not [m for m in loaded if m.startswith(OFFLINE)], loaded


def test_importtime_of_listen_help_shows_no_offline_module():
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "kwspot", "listen", "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line]
    assert "kwspot.cli" in imported
    assert not [m for m in imported if m.startswith(OFFLINE)]


def test_evaluate_still_finds_its_options():
    result = subprocess.run([sys.executable, "-m", "kwspot", "evaluate", "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and "--target-fa-per-hour" in result.stdout
