"""Capped exponential backoff, shared by reconnecting readers and retrying writers."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays ``initial, initial*factor, ...`` capped at ``maximum``; :meth:`reset` on success.

    Pure state: the caller sleeps (usually on a shutdown event, so a stop is never delayed).
    """

    initial_s: float = 0.5
    maximum_s: float = 5.0
    factor: float = 2.0
    attempts: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.initial_s <= 0 or self.maximum_s < self.initial_s or self.factor < 1:
            raise ValueError(
                f"backoff needs 0 < initial ({self.initial_s}) <= maximum ({self.maximum_s}) "
                f"and factor ({self.factor}) >= 1"
            )

    def next_delay(self) -> float:
        """The delay before the next attempt; each call counts one failed attempt."""
        delay = min(self.maximum_s, self.initial_s * self.factor**self.attempts)
        self.attempts += 1
        return delay

    def reset(self) -> None:
        """The operation succeeded: the next failure starts from ``initial`` again."""
        self.attempts = 0

    def schedule(self, n: int) -> list[float]:
        """The first ``n`` delays of a fresh backoff with these parameters (docs, tests)."""
        fresh = Backoff(self.initial_s, self.maximum_s, self.factor)
        return [fresh.next_delay() for _ in range(n)]
