"""The terminal view: a live status line, and one line per event (rich is loaded only when it is built)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from kwspot.checks import choice
from kwspot.events import Event
from kwspot.sinks import SinkContext, SinkSettings, SinkSpec, Status


class ConsoleSink:
    """Prints events above a live line showing input level, top class and counters."""

    def __init__(self, source: str, console: Any = None) -> None:
        from rich.console import Console
        from rich.live import Live
        from rich.text import Text

        self.console = console or Console()
        self.console.print(f"[bold]kwspot[/] listening on {source}  (Ctrl-C to stop)")
        self._live = Live(Text(""), console=self.console, refresh_per_second=8, transient=True)
        self._live.start()

    def emit(self, event: Event) -> None:
        clock = datetime.now().strftime("%H:%M:%S")
        self._live.console.print(
            f"{clock}  [bold green]{event.keyword:<6}[/]  score {event.score:.2f}  at {event.t:8.2f} s"
        )

    def status(self, status: Status) -> None:
        """Update the live line (called after every block of audio)."""
        from rich.text import Text

        filled = int(max(0.0, min(1.0, (status.level_db + 60.0) / 60.0)) * 20)
        line = Text()
        line.append("level ")
        line.append("█" * filled + "·" * (20 - filled), style="cyan")
        line.append(f" {status.level_db:6.1f} dBFS   top {status.top_label:<9} {status.top_score:4.2f}")
        if status.problems:
            line.append(f"   {status.problems}", style="yellow")
        self._live.update(line)

    def close(self) -> None:
        self._live.stop()


def _build(cfg: SinkSettings, ctx: SinkContext) -> ConsoleSink | None:
    wanted = cfg["console"]
    if wanted is True or (wanted == "auto" and ctx.tty and not cfg["jsonl"]):
        return ConsoleSink(ctx.source)
    return None


SPEC = SinkSpec("console", {"console": ("auto", choice("auto", True, False))}, _build,
                reloadable=False, wants_status=True)
