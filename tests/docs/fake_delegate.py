"""A stand-in for a simulator's ``cli`` module, for the pass-through tests of clidoc."""

from __future__ import annotations

from typing import Any


def register(sims: Any) -> None:
    """Add the ``widget`` parser, as ``simulators.<name>.cli.register`` does."""
    parser = sims.add_parser(
        "widget", help="a widget simulator", description="Serve a simulated widget."
    )
    parser.add_argument("--port", type=int, default=5020, help="TCP port (default %(default)s)")
