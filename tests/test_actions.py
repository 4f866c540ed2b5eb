"""Actions: commands run per keyword, off the caller's thread, bounded, timed out, logged."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from clips import command_stream, pcm16
from daemon import Daemon, write_config

from conftest import assert_one_line_error, run_kwspot, wait_for
from kwspot.errors import KwspotError
from kwspot.events import Event
from kwspot.frontend import SAMPLE_RATE
from kwspot.sinks.actions import Action, ActionsSink, parse_actions

PY = sys.executable


@pytest.fixture
def logs(caplog):
    caplog.set_level(logging.DEBUG, logger="kwspot")
    return caplog


def py(code: str) -> tuple[str, ...]:
    return (PY, "-c", code)


def test_the_command_gets_the_event_on_stdin_and_in_its_environment(tmp_path):
    out = tmp_path / "out.json"
    code = (
        "import json, os, sys; e = json.loads(sys.stdin.read());"
        "e['env'] = [os.environ['KWSPOT_KEYWORD'], os.environ['KWSPOT_SCORE']];"
        f"open({str(out)!r}, 'w').write(json.dumps(e))"
    )
    sink = ActionsSink([Action("stop", py(code))])
    event = Event("stop", 0.9731, 12.4)
    sink.emit(event)
    sink.close()
    got = json.loads(out.read_text())
    assert got.pop("env") == ["stop", "0.9731"]
    assert got == event.to_dict()


def test_keyword_and_star_choose_the_commands(tmp_path):
    log = tmp_path / "ran"
    append = "import os; open({!r}, 'a').write('{} ' + os.environ['KWSPOT_KEYWORD'] + '\\n')"
    sink = ActionsSink([
        Action("stop", py(append.format(str(log), "stop-action"))),
        Action("*", py(append.format(str(log), "any-action"))),
    ], max_running=1)
    for word in ("go", "stop", "yes"):
        sink.emit(Event(word, 0.9, 1.0))
    sink.close()
    assert sorted(log.read_text().splitlines()) == ["any-action go", "any-action stop", "any-action yes",
                                                   "stop-action stop"]


def test_no_shell_unless_asked(tmp_path, logs):
    os.chdir(tmp_path)
    literal = ActionsSink([Action("*", ("echo", "$KWSPOT_KEYWORD; touch pwned"))])
    literal.emit(Event("go", 0.9, 1.0))
    literal.close()
    assert "$KWSPOT_KEYWORD; touch pwned" in logs.text and not (tmp_path / "pwned").exists()
    shell = ActionsSink([Action("*", ("echo said $KWSPOT_KEYWORD > said.txt",), shell=True)])
    shell.emit(Event("go", 0.9, 1.0))
    shell.close()
    assert (tmp_path / "said.txt").read_text() == "said go\n"


def test_output_and_failure_go_to_the_log(logs):
    sink = ActionsSink([Action("*", py("import sys; print('hello'); print('oops', file=sys.stderr); sys.exit(3)"))])
    sink.emit(Event("up", 0.9, 1.0))
    sink.close()
    assert "hello" in logs.text and "oops" in logs.text and "exited with status 3" in logs.text


def gate(tmp_path: Path) -> tuple[str, ...]:
    """A command that marks its start, waits for tmp_path/open, then marks its end."""
    code = (
        "import os, time, pathlib\n"
        f"d, k = pathlib.Path({str(tmp_path)!r}), os.environ['KWSPOT_T']\n"
        "(d / ('start-' + k)).touch()\n"
        "while not (d / 'open').exists():\n"
        "    time.sleep(0.01)\n"
        "(d / ('end-' + k)).touch()\n"
    )
    return py(code)


def test_at_most_n_at_a_time_and_a_bounded_queue(tmp_path, logs):
    sink = ActionsSink([Action("*", gate(tmp_path))], max_running=2, queue=3)
    for i in range(7):  # 2 run, 3 wait, 2 are dropped; none of this waits for a command
        sink.emit(Event("go", 0.9, float(i)))
    wait_for(lambda: len(list(tmp_path.glob("start-*"))) == 2, 30, "two commands to start")
    assert sink.dropped == 2 and "dropped" in logs.text
    assert sink.running() == 2 and len(list(tmp_path.glob("start-*"))) == 2
    (tmp_path / "open").touch()
    sink.close(wait_s=30)
    assert len(list(tmp_path.glob("end-*"))) == 5 and sink.started == 5


def test_a_slow_command_does_not_hold_back_the_next_event(tmp_path):
    """The first command sleeps 10 s; the next event's command starts while it is still asleep."""
    first, done, second = tmp_path / "first", tmp_path / "first-done", tmp_path / "second"
    sleeper = py(f"import time, pathlib; pathlib.Path({str(first)!r}).touch(); time.sleep(10); "
                 f"pathlib.Path({str(done)!r}).touch()")
    sink = ActionsSink([Action("stop", sleeper), Action("go", py(f"open({str(second)!r}, 'w')"))])
    sink.emit(Event("stop", 0.9, 1.0))
    wait_for(first.exists, 30, "the sleeper to start")
    sink.emit(Event("go", 0.9, 2.0))
    wait_for(second.exists, 30, "the next command")
    assert not done.exists()  # the sleeper is still asleep
    sink.close(wait_s=0)


def test_a_timeout_kills_the_whole_process_group(tmp_path, logs):
    pid_file = tmp_path / "pid"
    sink = ActionsSink([Action("*", (f"sleep 60 & echo $! > {pid_file}; wait",), shell=True)], timeout_s=0.5)
    sink.emit(Event("off", 0.9, 1.0))
    wait_for(lambda: "killed after 0.5 s" in logs.text, 30, "the timeout")
    grandchild = int(pid_file.read_text())
    wait_for(lambda: not Path(f"/proc/{grandchild}").exists() or "Z" in Path(f"/proc/{grandchild}/stat").read_text()
             .split()[2], 10, "the background sleep to die too")
    sink.close()


def test_close_kills_what_is_still_running(tmp_path, logs):
    sink = ActionsSink([Action("*", gate(tmp_path))])
    sink.emit(Event("go", 0.9, 1.0))
    wait_for(lambda: sink.running() == 1, 30, "the command to start")
    sink.close(wait_s=0.1)
    assert sink.running() == 0 and "1 action still running at exit killed" in logs.text


def test_a_command_that_vanished_is_logged_and_the_next_still_runs(tmp_path, logs):
    tool = tmp_path / "tool"
    tool.write_text("#!/bin/sh\necho ran\n")
    tool.chmod(0o755)
    sink = ActionsSink([Action("*", (str(tool),))], max_running=1)
    tool.unlink()
    sink.emit(Event("go", 0.9, 1.0))
    wait_for(lambda: "cannot run it" in logs.text, 30, "the error")
    tool.write_text("#!/bin/sh\necho ran\n")
    tool.chmod(0o755)
    sink.emit(Event("go", 0.9, 2.0))
    sink.close()
    assert "ran" in logs.text


@pytest.mark.parametrize(
    "raw, culprit",
    [
        ([["echo"]], "must map"),
        ({"stop": "echo hi"}, "actions.stop"),
        ({"stop": []}, "actions.stop"),
        ({"stop": ["no-such-program-kwspot"]}, "no-such-program-kwspot"),
        ({"stop": {"command": ["echo"], "shell": "yes"}}, "actions.stop.shell"),
        ({"stop": {"command": ["echo", "a"], "shell": True}}, "one string"),
        ({"stop": {"cmd": ["echo"]}}, "'cmd'"),
    ],
)
def test_bad_actions_name_the_key(raw, culprit):
    with pytest.raises(KwspotError, match=culprit):
        parse_actions(raw)


def test_parse_actions():
    actions = parse_actions({"stop": ["echo", "hi"], "*": {"command": "echo $KWSPOT_KEYWORD", "shell": True}})
    assert actions == [Action("stop", ("echo", "hi")), Action("*", ("echo $KWSPOT_KEYWORD",), shell=True)]


# ---- the daemon: `kwspot listen` with actions ---------------------------------------------------------------------


@pytest.mark.slow
def test_an_action_sleeping_10_s_does_not_delay_the_next_event(tmp_path, speech_commands):
    words, spans, audio = command_stream(speech_commands, tmp_path / "stream.wav")
    half = int((spans[9][1] + spans[10][0]) / 2 * SAMPLE_RATE)
    pause = pcm16(np.zeros(int(1.5 * SAMPLE_RATE), np.float32))
    trace = tmp_path / "trace"
    daemon = Daemon("--format", "jsonl", "--exec", f'echo "start $KWSPOT_T" >> {trace}; sleep 10; echo end >> {trace}')
    daemon.feed(pcm16(audio[:half]) + pause)
    wait_for(lambda: daemon.events and trace.exists(), 60, "an event and its action")
    before = len(daemon.events)
    daemon.feed(pcm16(audio[half:]) + pause)
    wait_for(lambda: len(daemon.events) > before, 60, "the next event")
    assert "end" not in trace.read_text()  # the first action is still asleep
    assert daemon.finish() == 0, daemon.log
    lines = trace.read_text().splitlines()
    started = sorted(float(line.split()[1]) for line in lines if line.startswith("start"))
    ended, events = lines.count("end"), daemon.events
    # four at a time (actions_max_running), in the order of the events; the rest waited and were not run
    assert started == [e["t"] for e in events[: min(len(events), 4 + ended)]]
    assert f"{len(started) - ended} actions still running at exit killed" in daemon.log
    assert f"{len(events) - len(started)} waiting actions not run" in daemon.log and "Traceback" not in daemon.log


def test_config_actions_per_keyword(tmp_path, speech_commands):
    words, spans, audio = command_stream(speech_commands, tmp_path / "stream.wav", per_word=1)
    ran = tmp_path / "ran"
    config = write_config(tmp_path / "config.yaml", actions={
        "go": [PY, "-c", f"import os; open({str(ran)!r}, 'a').write(os.environ['KWSPOT_KEYWORD'] + '\\n')"],
    })
    result = run_kwspot("listen", "--config", str(config), "--input", str(tmp_path / "stream.wav"), "--fast")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    gos = [e for e in events if e["keyword"] == "go"]
    assert gos and len(events) > len(gos), events
    assert ran.read_text().splitlines() == ["go"] * len(gos)


def test_an_action_for_a_word_the_model_lacks_gives_one_line(tmp_path):
    config = write_config(tmp_path / "config.yaml", actions={"okay_nabu": ["true"]})
    result = run_kwspot("listen", "--config", str(config), "--input", "-", input="", timeout=60)
    assert_one_line_error(result, "sinks.actions.okay_nabu", "no such keyword")
    config = write_config(tmp_path / "config.yaml", actions={"stop": ["no-such-program-kwspot"]})
    result = run_kwspot("listen", "--config", str(config), "--input", "-", input="", timeout=60)
    assert_one_line_error(result, "sinks.actions.stop", "no-such-program-kwspot")


def test_a_reload_swaps_the_actions_without_waiting_for_running_ones(tmp_path):
    from kwspot.config import DEFAULTS
    from kwspot.sinks import SinkContext, build_sinks, close_sinks, reconcile
    from kwspot.sinks.actions import check_actions

    ctx = SinkContext("test", tty=False, keywords=("go", "stop"))
    actions = check_actions("sinks.actions", {"go": list(gate(tmp_path))})
    old = {**DEFAULTS["sinks"], "console": False, "actions": actions}
    sinks = build_sinks(old, ctx)
    sinks["actions"].emit(Event("go", 0.9, 1.0))
    wait_for(lambda: list(tmp_path.glob("start-*")), 30, "the old action to start")
    marker = tmp_path / "new"
    new = {**old, "actions": check_actions("sinks.actions", {"go": [PY, "-c", f"open({str(marker)!r}, 'w')"]})}
    sinks = reconcile(sinks, old, new, ctx)  # returns while the old action still waits for its gate
    assert not list(tmp_path.glob("end-*"))
    sinks["actions"].emit(Event("go", 0.9, 2.0))
    wait_for(marker.exists, 30, "the new action")
    (tmp_path / "open").touch()
    wait_for(lambda: list(tmp_path.glob("end-*")), 30, "the old action to finish in the background")
    close_sinks(sinks)
