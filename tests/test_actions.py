"""Actions: commands run per keyword, off the caller's thread, bounded, timed out, logged."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from clips import command_stream, pcm16
from daemon import Daemon, write_config

from conftest import assert_one_line_error, run_kwspot, wait_for
from kwspot.errors import KwspotError
from kwspot.events import Event
from kwspot.frontend import SAMPLE_RATE
from kwspot.sinks.actions import MAX_LINE_CHARS, MAX_LOGGED_LINES, Action, ActionsSink, parse_actions

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


@pytest.mark.parametrize("keyword, in_env", [("\udce9t\u00e9", b"\xe9t\xc3\xa9"), ("a\ud800b", b"a\\ud800b")])
def test_a_keyword_no_locale_encodes_still_runs_the_action(tmp_path, keyword, in_env):
    """A label undecodable bytes came from gets them back; a lone surrogate arrives escaped, and close() is quick."""
    out = tmp_path / "env"
    sink = ActionsSink([Action("*", py(f"import os; open({str(out)!r}, 'wb').write(os.environb[b'KWSPOT_KEYWORD'])"))])
    sink.emit(Event(keyword, 0.9, 1.0))
    sink.close()
    assert out.read_bytes() == in_env and sink.started == 1


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


def action_lines(logs) -> list[str]:
    """What the actions printed, as logged (their labels cut off)."""
    return [r.args[1] for r in logs.records if r.msg == "action %s: %s"]


def test_output_without_newlines_is_read_in_bounded_blocks(logs):
    """40 MB in one line: the first MAX_LINE_CHARS characters are logged, the rest never held in memory."""
    code = "import sys\nfor _ in range(640): sys.stdout.buffer.write(b'a' * 65536)\nprint('\\rnext\\r\\nlast')"
    sink = ActionsSink([Action("*", py(code))])
    tracemalloc.start()
    try:
        sink.emit(Event("up", 0.9, 1.0))
        sink.close(wait_s=60)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4_000_000, peak
    assert action_lines(logs)[:3] == ["a" * MAX_LINE_CHARS, "next", "last"]


def test_at_most_so_many_lines_are_logged(logs):
    sink = ActionsSink([Action("*", py(f"for i in range({MAX_LOGGED_LINES + 20}): print(i)"))])
    sink.emit(Event("up", 0.9, 1.0))
    sink.close()
    assert action_lines(logs) == [str(i) for i in range(MAX_LOGGED_LINES)]
    assert logs.text.count("(more output not logged)") == 1


def test_output_is_logged_without_terminal_escapes(logs):
    sink = ActionsSink([Action("*", py("print('\\x1b]0;owned\\x07 done')"))])
    sink.emit(Event("up", 0.9, 1.0))
    sink.close()
    assert action_lines(logs) == ["\\x1b]0;owned\\x07 done"]


def setsid_child(pid_file: Path) -> tuple[str, ...]:
    """A command whose child leaves the process group, keeps stdout open and sleeps 30 s; so does the command."""
    code = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n"
            f"    open({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(30)\n")
    return py(code)


@pytest.mark.parametrize("timeout_s, wait_s", [(0.5, 5.0), (30.0, 0.1)])
def test_a_child_that_left_the_process_group_holds_neither_the_worker_nor_close(tmp_path, logs, timeout_s, wait_s):
    """The timeout (or close) ends the action at once, though its setsid child still holds stdout."""
    pid_file = tmp_path / "pid"
    sink = ActionsSink([Action("*", setsid_child(pid_file))], timeout_s=timeout_s)
    sink.emit(Event("up", 0.9, 1.0))
    try:
        wait_for(lambda: pid_file.exists() and pid_file.read_text(), 30, "the child to leave the group")
        if timeout_s < 1:
            wait_for(lambda: sink.running() == 0, 10, "the worker to finish at the timeout")
            assert "killed after 0.5 s (timeout_s)" in logs.text
        start = time.monotonic()
        sink.close(wait_s=wait_s)
        assert time.monotonic() - start < 3
        assert sink.running() == 0
    finally:
        os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_the_children_of_a_command_go_with_it_at_the_timeout(tmp_path, logs):
    """The command exits at once, its background child keeps the output open: killed at timeout_s, as documented."""
    pid_file = tmp_path / "pid"
    sink = ActionsSink([Action("*", ("sh", "-c", f"sleep 77 & echo $! > {pid_file}; echo started"))], timeout_s=1.0)
    sink.emit(Event("up", 0.9, 1.0))
    wait_for(lambda: "exited with status 0, but its children still held its output after 1 s (timeout_s): killed"
             in logs.text, 20, "the timeout")
    child = int(pid_file.read_text())
    wait_for(lambda: not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2],
             10, "the child to be killed")
    sink.close()
    assert "started" in action_lines(logs)


def test_a_command_killed_by_a_signal_is_said_so(logs):
    sink = ActionsSink([Action("*", py("import os, signal; os.kill(os.getpid(), signal.SIGKILL)"))])
    sink.emit(Event("up", 0.9, 1.0))
    sink.close()
    assert "killed by signal 9 (SIGKILL)" in logs.text and "status -9" not in logs.text


def test_a_command_that_cannot_start_does_not_hold_close(tmp_path, logs):
    """close() is told at once when a command fails to start, not after its wait_s."""
    tool = tmp_path / "tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    sink = ActionsSink([Action("*", (str(tool),))], max_running=1, queue=100)
    tool.unlink()
    for i in range(50):  # close() comes while they still wait: the last failure must wake it
        sink.emit(Event("go", 0.9, float(i)))
    start = time.monotonic()
    sink.close(wait_s=10)
    assert time.monotonic() - start < 5 and logs.text.count("cannot run it") == 50


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
        ({"stop": ["echo", "x" * 200_000]}, "longer than 131071 bytes"),
        ({"stop": {"command": "echo " + "x" * 200_000, "shell": True}}, "longer than 131071 bytes"),
        ({"stop": ["echo", *["x" * 100_000] * 40]}, "bytes execve takes"),
        ({"stop": ["echo", "\ud800"]}, "cannot be passed"),
        ({"stop": {"command": "echo \ud800", "shell": True}}, "cannot be passed"),
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
    config = write_config(tmp_path / "config.yaml", actions={"stop": {"command": "echo " + "x" * 200_000,
                                                                      "shell": True}})
    result = run_kwspot("listen", "--config", str(config), "--input", "-", input="", timeout=60)
    assert_one_line_error(result, "sinks.actions.stop", "longer than 131071 bytes")


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
