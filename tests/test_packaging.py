"""A plain `pip install .` (a wheel, not an editable install) carries the bundled model and finds it."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_carries_the_model_and_its_sidecar(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )
    if result.returncode != 0 and "No matching distribution" in result.stderr:
        pytest.skip(f"cannot fetch the build backend: {result.stderr.strip().splitlines()[-1]}")
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("kwspot-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("kwspot/models/kwspot.tflite", "kwspot/models/kwspot.json", "kwspot/models/MODEL_CARD.md",
                 "kwspot/cli.py", "kwspot/sinks/socket.py", "kwspot/train/command.py"):
        assert name in names, sorted(names)
    assert not any("speech_commands" in n or n.endswith((".wav", ".flac")) for n in names)

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = "from kwspot.model import Model, bundled_model_path; p = bundled_model_path(); print(p, Model(p).labels)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                            env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert str(site) in result.stdout and "_silence_" in result.stdout
