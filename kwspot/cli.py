"""The ``kwspot`` command: parse arguments, dispatch, turn errors into one line."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from kwspot import MAX_RATE, MIN_RATE, __version__, interrupt, stdio
from kwspot.argtypes import Number, command_line
from kwspot.errors import KwspotError
from kwspot.paths import printable

log = logging.getLogger("kwspot")


def _add_listen(p: argparse.ArgumentParser) -> None:
    from kwspot.sinks.socket import default_socket_path

    p.add_argument("--config", metavar="FILE", help="config file (default: $KWSPOT_CONFIG, /etc/kwspot, ~/.config)")
    src = p.add_argument_group("audio")
    src.add_argument("--device", "-d", metavar="ID", help="input device: index or part of its name")
    src.add_argument("--backend", choices=["auto", "pulse", "portaudio"],
                     help="capture through PulseAudio/PipeWire or PortAudio (default auto: the sound server "
                     "for the default input when one runs)")
    src.add_argument("--rate", "-r", type=Number(MIN_RATE, MAX_RATE, integer=True), metavar="HZ",
                     help="capture rate (default: the device's), or the rate of raw PCM on stdin or a FIFO (16000)")
    src.add_argument("--input", "-i", metavar="FILE", help="read a WAV/FLAC file, or '-' for raw S16_LE mono on stdin")
    src.add_argument("--fast", action="store_true", help="with --input FILE: as fast as possible, not real time")
    det = p.add_argument_group("model and detector")
    det.add_argument("--model", "-m", metavar="FILE", help="a .tflite model with its .json sidecar")
    det.add_argument("--threshold", type=Number(0.0, 1.0), metavar="P", help="one threshold for every keyword (0 to 1)")
    out = p.add_argument_group("output")
    out.add_argument("--format", choices=["console", "jsonl"], help="console view, or JSON lines on stdout")
    out.add_argument(
        "--socket", nargs="?", const=str(default_socket_path()), metavar="PATH",
        help=f"serve events as JSON lines on a unix socket (default path: {default_socket_path()})",
    )
    out.add_argument("--no-console", action="store_true", help="no console view, even on a terminal")
    out.add_argument("--exec", metavar="CMD", type=command_line,
                     help="run the shell command CMD for every event (event JSON on stdin, $KWSPOT_KEYWORD, "
                          "$KWSPOT_SCORE); replaces sinks.actions")
    _add_logging(p)


def _add_logging(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="default: info")
    p.add_argument("--log-format", choices=["auto", "plain", "time"], help="plain = no timestamps (systemd)")


def _add_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--json", action="store_true", help="one JSON object per file")
    p.add_argument("--model", "-m", metavar="FILE")


def _lazy(module: str, name: str) -> Callable[..., Any]:
    """``module.name``, imported only when called: ``listen`` never loads the offline package."""
    return lambda *args: getattr(importlib.import_module(module), name)(*args)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line ``kwspot: error: ...`` (exit 2) like every other error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        where = self.prog.removeprefix("kwspot").strip()
        text = f"{where + ': ' if where else ''}{message} (see {self.prog} --help)"
        self.exit(2, f"kwspot: error: {printable(' '.join(text.split()))}\n")


def run_listen(args: argparse.Namespace) -> int:
    from kwspot.listen import Listener, ListenRequest, StoppedDuringStart
    from kwspot.logs import setup_logging
    from kwspot.pipe_source import is_pipe_like
    from kwspot.settings import listen_flags, resolve

    if args.fast and not (args.input and args.input != "-"):
        raise KwspotError("--fast needs --input FILE")
    if args.input and (args.device is not None or args.backend):
        flag = "--device" if args.device is not None else "--backend"
        raise KwspotError(f"{flag} chooses how to capture, but --input {args.input} is the audio: give one of them")
    if args.input and args.input != "-" and args.rate and not is_pipe_like(args.input):
        raise KwspotError(f"--rate is for capture or raw PCM on a pipe; --input {args.input} says its own rate")
    flags = listen_flags(args)
    settings, path = resolve(args.config, flags)
    setup_logging(settings["logging"]["level"], settings["logging"]["format"])
    log.debug("config: %s", path or "built-in defaults")
    request = ListenRequest(input=args.input, fast=args.fast, stdin_rate=args.rate or 16000,
                            config_path=args.config, flags=flags)
    try:
        listener = Listener(request, settings, path)
    except StoppedDuringStart as stop:
        return stop.code
    return listener.run()


def run_devices(args: argparse.Namespace) -> int:
    from kwspot.devices import describe_devices
    from kwspot.libpulse import server_answers
    from kwspot.pulse_source import choose_backend
    from kwspot.sources import guarded

    lines = guarded(describe_devices, "listing the audio devices", 10.0)
    print("\n".join(lines) if lines else "no input devices found")
    if choose_backend("auto", None) == "pulse" and server_answers():
        print("(a PulseAudio/PipeWire server runs: `kwspot listen` without --device captures its default source "
              "directly; --backend portaudio uses the devices above)")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from kwspot.predict import main_predict

    return main_predict(args.model, args.files, args.json)


Subcommand = tuple[str, Callable[[argparse.ArgumentParser], None] | None, Callable[[argparse.Namespace], int]]
SUBCOMMANDS: dict[str, Subcommand] = {
    "listen": ("listen and report spoken commands", _add_listen, run_listen),
    "devices": ("list audio input devices and their default rates", None, run_devices),
    "events": ("print events from a running daemon's socket",
               _lazy("kwspot.client", "add_arguments"), _lazy("kwspot.client", "run")),
    "wyoming": ("serve keyword detection to Home Assistant (Wyoming protocol)",
                _lazy("kwspot.wyoming_server", "add_arguments"), _lazy("kwspot.wyoming_server", "run")),
    "predict": ("classify one-second clips", _add_predict, run_predict),
    "train": ("train a model (needs kwspot[train])",
              _lazy("kwspot.train.command", "add_arguments"), _lazy("kwspot.train.command", "run")),
    "evaluate": ("measure a model on clips or long streams",
                 _lazy("kwspot.train.evaluate", "add_arguments"), _lazy("kwspot.train.evaluate", "run")),
}


def build_parser(argv: list[str] | None = None, every: bool = False) -> argparse.ArgumentParser:
    """The parser; only the subcommand named in ``argv`` gets its options (and imports their module),
    or all of them with ``every`` (the tests that check every flag)."""
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = OneLineParser(prog="kwspot", description="Real-time keyword spotter.")
    parser.add_argument("--version", action="version", version=f"kwspot {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (text, add_arguments, _) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=text)
        if add_arguments is not None and (every or name == chosen):
            add_arguments(p)
    return parser


PRINTS_RESULTS = frozenset({"devices", "predict", "evaluate", "events"})  # their results go to stdout


def run(args: argparse.Namespace) -> int:
    from kwspot.logs import setup_logging

    if args.command in PRINTS_RESULTS and sys.stdout is None:
        raise KwspotError(f"stdout is closed; kwspot {args.command} prints its results there")
    if args.command != "listen":
        setup_logging(getattr(args, "log_level", None) or "info", "auto")
    return SUBCOMMANDS[args.command][2](args)


def refuse_empty_values(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """A command-line error for an empty value (``--config ""``, a path made of an unset variable): argparse
    takes it, ``type=Path`` reads it as ".", and other options as not given."""
    for before, token in zip(["kwspot", *argv], argv, strict=False):
        if before == "--":
            return  # what follows is the user's, as given
        flag, eq, value = token.partition("=")
        if token == "" or (token.startswith("--") and eq and not value):
            flag = flag if token else (before if before.startswith("-") else "")
            parser.error(f"{flag}: empty value" if flag else "an empty argument (an unset variable?)")


def main(argv: list[str] | None = None) -> int:
    interrupt.install()
    stdio.fill_closed_fds()
    stdio.tag_stdout()
    try:
        parser = build_parser(argv)
        refuse_empty_values(parser, sys.argv[1:] if argv is None else argv)
        code = run(parser.parse_args(argv))
        if sys.stdout is not None:
            sys.stdout.flush()  # a full disk is told here, not by the interpreter at exit
    except KwspotError as exc:
        stdio.say(f"kwspot: error: {exc}")
        code = 2
    except stdio.StdoutFailed as exc:
        stdio.silence_stdout()
        stdio.say(f"kwspot: error: stdout: {exc.strerror}")
        code = 2
    except KeyboardInterrupt:
        code = 130
    except ImportError as exc:
        if not isinstance(exc.__cause__, KeyboardInterrupt):
            raise
        code = 130  # Ctrl-C while an extension module initialised (nanobind's, e.g. soxr, re-raise it so)
    except BrokenPipeError:  # the reader of our stdout went away: nothing more to say
        stdio.silence_stdout()
        code = 0
    sources = sys.modules.get("kwspot.sources")
    if sources is not None and sources.LiveSource.hung:
        # The sound system is stuck in a call that never returns: its exit hooks would hang too, and the
        # objects that call holds would be reported as leaked.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
