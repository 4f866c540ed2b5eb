"""The terminal view: a live status line, and one line per event."""

from __future__ import annotations

from datetime import datetime

from rich.console import Console
from rich.live import Live
from rich.text import Text

from kwspot.events import Event


class ConsoleSink:
    """Prints events above a live line showing input level, top class and counters."""

    def __init__(self, source: str, console: Console | None = None) -> None:
        self.console = console or Console()
        self.console.print(f"[bold]kwspot[/] listening on {source}  (Ctrl-C to stop)")
        self._live = Live(Text(""), console=self.console, refresh_per_second=8, transient=True)
        self._live.start()

    def emit(self, event: Event) -> None:
        clock = datetime.now().strftime("%H:%M:%S")
        self._live.console.print(
            f"{clock}  [bold green]{event.keyword:<6}[/]  score {event.score:.2f}  at {event.t:8.2f} s"
        )

    def status(self, level_db: float, top_label: str, top_score: float, problems: str = "") -> None:
        """Update the live line (called every hop)."""
        filled = int(max(0.0, min(1.0, (level_db + 60.0) / 60.0)) * 20)
        line = Text()
        line.append("level ")
        line.append("█" * filled + "·" * (20 - filled), style="cyan")
        line.append(f" {level_db:6.1f} dBFS   top {top_label:<9} {top_score:4.2f}")
        if problems:
            line.append(f"   {problems}", style="yellow")
        self._live.update(line)

    def close(self) -> None:
        self._live.stop()
