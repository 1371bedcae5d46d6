"""The demo's terminal view: every twin, live (rich), or plain lines when not a terminal."""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

__all__ = ["DemoView", "Event"]

_STYLE = {"set": "cyan", "converged": "green", "rejected": "yellow", "error": "red"}


@dataclass(frozen=True, slots=True)
class Event:
    kind: str
    text: str


class DemoView:
    """Shows notes, twin tables and events; ``live`` redraws in place with rich."""

    def __init__(self, live: bool) -> None:
        self.live = live
        self._events: deque[tuple[float, Event]] = deque(maxlen=10)
        self._states: dict[str, Any] = {}
        self._started = time.monotonic()
        self._live: Any = None
        self._console: Any = None
        if live:
            from rich.console import Console

            self._console = Console()

    # ---- plain output ---------------------------------------------------------
    def note(self, text: str) -> None:
        if self._console is not None:
            self._console.print(f"[bold]mapperkit demo[/bold] {text}")
        else:
            print(f"demo: {text}", flush=True)

    def commands(self, url: str, devices: list[str]) -> None:
        first = devices[0] if devices else "default/DEVICE"
        lines = [
            "try from another terminal while it runs:",
            f"  mapperkit twin devices --broker {url}",
            f"  mapperkit twin get {first} --broker {url}",
            f"  mapperkit twin watch --broker {url}",
            f"  mapperkit twin query \"state = 'online' AND has_delta = false\" --broker {url}",
            f"  mapperkit twin set default/thermostat-living-room setpoint=22 --broker {url}",
        ]
        for line in lines:
            self.note(line)

    def event(self, event: Event) -> None:
        self._events.append((time.monotonic() - self._started, event))
        if self._live is None:
            print(f"demo: {event.kind}: {event.text}", flush=True)

    # ---- the live view -------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        if not self.live:
            yield
            return
        from rich.live import Live

        with Live(
            self._render(), console=self._console, refresh_per_second=4, transient=False
        ) as live:
            self._live = live
            try:
                yield
            finally:
                live.update(self._render())
                self._live = None

    def update(self, states: dict[str, Any]) -> None:
        self._states = dict(states)
        if self._live is not None:
            self._live.update(self._render())

    def _render(self) -> Any:
        from rich.columns import Columns
        from rich.console import Group
        from rich.panel import Panel
        from rich.table import Table
        from rich.text import Text

        tables = []
        for device, state in sorted(self._states.items()):
            colour = "green" if state.state in ("online", "ok") else "red"
            table = Table(
                title=f"[bold]{device}[/bold] [{colour}]{state.state}[/{colour}] v{state.version}",
                title_justify="left",
                width=62,
                show_edge=False,
                pad_edge=False,
            )
            table.add_column("property", max_width=16, no_wrap=True)
            table.add_column("reported", max_width=14, no_wrap=True)
            table.add_column("desired", max_width=12, no_wrap=True)
            table.add_column("ack", max_width=14, no_wrap=True)
            for name, twin in sorted(state.twins.items()):
                actual = str((twin.get("actual") or {}).get("value", ""))
                expected = str((twin.get("expected") or {}).get("value", ""))
                pending = bool(expected) and expected != actual
                ack = twin.get("ack") or {}
                status = str(ack.get("status", ""))
                table.add_row(
                    name,
                    actual,
                    Text(("→ " if pending else "") + expected, style="yellow" if pending else ""),
                    Text(status, style="green" if status == "applied" else "yellow"),
                )
            tables.append(table)
        events = Text()
        for at, event in self._events:
            events.append(f"{at:5.1f}s {event.kind:<9} ", style=_STYLE.get(event.kind, ""))
            events.append(event.text + "\n")
        legend = Text("→ desired value not reported yet (delta)   Ctrl-C stops", style="dim")
        return Group(Columns(tables, padding=(1, 3)), Panel(events, title="events"), legend)

    def summary(self, outcome: Any, *, check: bool) -> None:
        online = sum(1 for ok in outcome.online.values() if ok)
        converged = sum(1 for ok in outcome.converged.values() if ok)
        lines = [
            f"devices online: {online}/{len(outcome.online)}",
            f"desired values converged: {converged}/{len(outcome.converged)}",
            f"invalid value rejected: {outcome.rejected or 'no'}",
        ]
        if check:
            lines.append("check: " + ("passed" if outcome.ok else "FAILED"))
        for line in lines:
            print(f"demo: {line}", flush=True)
