"""Data-plane sinks: where readings go besides the twin (a Device's ``pushMethod``).

A sink is a :class:`Reporter` subclass registered in the ``mapper_sdk.reporters``
entry-point group under its kind (``mqtt``, ``http``, ``redis``, ``mysql``,
``influxdb2``, ``otel`` ...). The mapper creates one instance per distinct
configuration (devices sharing a target share a connection), hands it batches
of readings per device per report, and runs its :meth:`Reporter.run` loop.
"""

from .base import (
    REPORTER_GROUP,
    Item,
    Reporter,
    ReporterContext,
    ReporterStats,
    push_targets,
)

__all__ = [
    "REPORTER_GROUP",
    "Item",
    "Reporter",
    "ReporterContext",
    "ReporterStats",
    "push_targets",
]
