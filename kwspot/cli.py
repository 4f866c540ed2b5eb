"""The ``kwspot`` command: parse arguments, dispatch, turn errors into one line."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from kwspot import __version__
from kwspot.argtypes import Number
from kwspot.errors import KwspotError

log = logging.getLogger("kwspot")


def _add_listen(sub: argparse._SubParsersAction) -> None:
    from kwspot.sinks.socket import default_socket_path

    p = sub.add_parser("listen", help="listen and report spoken commands")
    p.add_argument("--config", metavar="FILE", help="config file (default: $KWSPOT_CONFIG, /etc/kwspot, ~/.config)")
    src = p.add_argument_group("audio")
    src.add_argument("--device", "-d", metavar="ID", help="input device: index or part of its name")
    src.add_argument("--rate", "-r", type=Number(1000, 384000, integer=True), metavar="HZ",
                     help="capture rate (default: the device's; stdin 16000)")
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
    _add_logging(p)


def _add_logging(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="default: info")
    p.add_argument("--log-format", choices=["auto", "plain", "time"], help="plain = no timestamps (systemd)")


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line ``kwspot: error: ...`` (exit 2) like every other error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        where = self.prog.removeprefix("kwspot").strip()
        text = f"{where + ': ' if where else ''}{message} (see {self.prog} --help)"
        self.exit(2, f"kwspot: error: {' '.join(text.split())}\n")


LIVE_COMMANDS = ("listen", "devices", "events", "predict")  # train and evaluate import rich and the training code


def build_parser(offline_options: bool = True) -> argparse.ArgumentParser:
    """The whole command line; without ``offline_options``, train and evaluate are listed but take no options
    (the daemon then never imports their modules: 8 MiB of RSS here)."""
    parser = OneLineParser(prog="kwspot", description="Real-time spotter for ten spoken commands.")
    parser.add_argument("--version", action="version", version=f"kwspot {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_listen(sub)
    sub.add_parser("devices", help="list audio input devices and their default rates")
    from kwspot import client

    client.add_arguments(sub.add_parser("events", help="print events from a running daemon's socket"))
    p = sub.add_parser("predict", help="classify one-second clips")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--json", action="store_true", help="one JSON object per file")
    p.add_argument("--model", "-m", metavar="FILE")
    train_parser = sub.add_parser("train", help="train a model (needs kwspot[train])")
    evaluate_parser = sub.add_parser("evaluate", help="measure a model on clips or long streams")
    if offline_options:
        from kwspot import evaluate
        from kwspot.train import command as train

        train.add_arguments(train_parser)
        evaluate.add_arguments(evaluate_parser)
    return parser


def _needs_offline_options(argv: list[str]) -> bool:
    """True unless the command (the first word not starting with '-') is one of the live ones."""
    command = next((a for a in argv if not a.startswith("-")), None)
    return command not in LIVE_COMMANDS


def run_listen(args: argparse.Namespace) -> int:
    from kwspot.config import load_config, override
    from kwspot.listen import Listener, ListenRequest
    from kwspot.logs import setup_logging

    settings, path = load_config(args.config)
    override(settings, "audio.device", args.device)
    override(settings, "audio.rate", args.rate if args.input != "-" else None)
    override(settings, "model.path", args.model)
    override(settings, "detector.threshold", args.threshold)
    override(settings, "sinks.socket", args.socket)
    override(settings, "logging.level", args.log_level)
    override(settings, "logging.format", args.log_format)
    if args.format == "jsonl":
        settings["sinks"]["jsonl"] = True
    if args.format == "console":
        settings["sinks"]["console"] = True
    if args.no_console or args.format == "jsonl":
        settings["sinks"]["console"] = False
    if args.fast and not (args.input and args.input != "-"):
        raise KwspotError("--fast needs --input FILE")
    setup_logging(settings["logging"]["level"], settings["logging"]["format"])
    log.debug("config: %s", path or "built-in defaults")
    request = ListenRequest(
        input=args.input, fast=args.fast, stdin_rate=args.rate or 16000,
        config_path=args.config, cli_threshold=args.threshold is not None,
    )
    return Listener(request, settings).run()


def run(args: argparse.Namespace) -> int:
    from kwspot.logs import setup_logging

    if args.command == "listen":
        return run_listen(args)
    setup_logging(getattr(args, "log_level", None) or "info", "auto")
    if args.command == "devices":
        from kwspot.devices import describe_devices

        lines = describe_devices()
        print("\n".join(lines) if lines else "no input devices found")
        return 0
    if args.command == "events":
        from kwspot import client

        return client.run(args)
    if args.command == "predict":
        from kwspot.predict import main_predict

        return main_predict(args.model, args.files, args.json)
    if args.command == "train":
        from kwspot.train import command as train

        return train.run(args)
    from kwspot import evaluate

    return evaluate.run(args)


def main(argv: list[str] | None = None) -> int:
    try:
        words = sys.argv[1:] if argv is None else argv
        code = run(build_parser(_needs_offline_options(words)).parse_args(argv))
    except KwspotError as exc:
        print(f"kwspot: error: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:
        # The reader of our stdout went away: nothing more to say.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    sources = sys.modules.get("kwspot.sources")
    if sources is not None and sources.MicSource.hung:
        # PortAudio is stuck in a call that never returns; its exit hook would hang too.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
