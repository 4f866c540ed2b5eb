"""The bench scripts' own flags: every numeric one declares its range, and a bad value is an argparse error."""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys

import pytest

from conftest import REPO
from kwspot.argtypes import Number, NumberList

SCRIPTS = sorted(p.stem for p in (REPO / "bench").glob("*.py") if p.stem != "common")
REQUIRED = {"quality": ["--model=m.tflite"], "gate": ["--model=m.tflite"]}  # what each needs besides the flag


class _Parsed(Exception):
    pass


def bench_parser(name: str, monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    """The parser ``bench/NAME.py`` builds in its main(), caught when main() asks it to parse."""
    sys.path.insert(0, str(REPO / "bench"))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO / "bench"))
    caught: list[argparse.ArgumentParser] = []

    def catch(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        caught.append(self)
        raise _Parsed

    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", catch)
        with pytest.raises(_Parsed):
            module.main()
    return caught[0]


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_numeric_bench_flag_declares_its_range_and_refuses_nonsense(name, monkeypatch, capsys):
    parser = bench_parser(name, monkeypatch)
    options = [a for a in parser._actions if a.option_strings]
    assert [a.option_strings for a in options if a.type in (int, float)] == []
    for action in options:
        if not isinstance(action.type, (Number, NumberList)):
            continue
        flag = max(action.option_strings, key=len)
        for value in ("nan", "-1e30", "abc"):
            with pytest.raises(SystemExit) as exit_:
                parser.parse_args([f"{flag}={value}", *REQUIRED.get(name, [])])
            assert exit_.value.code == 2
            assert f"argument {flag}" in capsys.readouterr().err.splitlines()[-1]


def test_the_bench_scripts_have_numeric_flags_to_check(monkeypatch):
    ranged = {name: sum(isinstance(a.type, (Number, NumberList)) for a in bench_parser(name, monkeypatch)._actions)
              for name in SCRIPTS}
    assert all(ranged[name] for name in ("listen", "latency", "soak", "reference", "inference", "wyoming_load"))
    assert sum(ranged.values()) >= 20


@pytest.mark.parametrize("name,flag", [("listen", "--seconds=-5"), ("wyoming_load", "--clients=1.5,4"),
                                       ("gate", "--thresholds=sidecar,2")])
def test_a_bad_bench_value_ends_in_an_argparse_error_not_a_traceback(name, flag):
    run = subprocess.run([sys.executable, str(REPO / "bench" / f"{name}.py"), flag, *REQUIRED.get(name, [])],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr and f"error: argument {flag.split('=')[0]}" in run.stderr, run.stderr


@pytest.mark.parametrize("name", ["gate", "verifier", "reference", "quality"])
def test_a_missing_model_is_one_line_not_a_traceback(name, tmp_path):
    run = subprocess.run([sys.executable, str(REPO / "bench" / f"{name}.py"), "--model", str(tmp_path / "none.tflite"),
                          *REQUIRED.get(name, [])], capture_output=True, text=True, timeout=120, cwd=REPO)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    assert lines[0].endswith("none.tflite: no such model file"), lines


@pytest.mark.parametrize("name, args, needle", [
    ("quality", ["--model", "models/kwspot.tflite", "--speech", "/nonexistent"],
     "--speech /nonexistent: no such folder"),
    ("listen", ["--baseline", "/nonexistent"], "--baseline /nonexistent: no kwspot package in it"),
])
def test_a_folder_given_but_missing_is_refused_not_left_out(name, args, needle):
    run = subprocess.run([sys.executable, str(REPO / "bench" / f"{name}.py"), *args], capture_output=True, text=True,
                         timeout=120, cwd=REPO)
    assert run.returncode == 2 and needle in run.stderr and "Traceback" not in run.stderr, run.stderr
