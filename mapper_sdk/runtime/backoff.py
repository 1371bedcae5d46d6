"""Exponential backoff with jitter, for reconnects."""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """Delays that double from ``initial`` to ``maximum``, each scaled by a random
    factor in ``[1 - jitter, 1 + jitter]`` so that many devices that failed
    together do not retry together.
    """

    def __init__(
        self,
        initial: float = 0.5,
        maximum: float = 30.0,
        factor: float = 2.0,
        jitter: float = 0.5,
        rng: random.Random | None = None,
    ) -> None:
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.jitter = jitter
        self._rng = rng or random.Random()
        self.attempts = 0

    def next(self) -> float:
        """The delay before the next attempt."""
        base = min(self.initial * self.factor**self.attempts, self.maximum)
        self.attempts += 1
        return base * (1 - self.jitter + 2 * self.jitter * self._rng.random())

    def reset(self) -> None:
        self.attempts = 0
