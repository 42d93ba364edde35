"""Which cycles a session runs: the plan's numbers not yet done, in order."""

from __future__ import annotations


class CycleSource:
    """Cycle numbers 1..N not yet done, handed out in order, in constant memory: a plan
    of any size starts at once (only the done set of a resumed night is held)."""

    def __init__(self, total: int, done: frozenset[int]) -> None:
        self.total = total
        self.done = done
        self._next = 1

    @property
    def remaining(self) -> int:
        return self.total - sum(1 for c in self.done if 1 <= c <= self.total)

    def next(self) -> int | None:
        while self._next <= self.total and self._next in self.done:
            self._next += 1
        if self._next > self.total:
            return None
        cycle, self._next = self._next, self._next + 1
        return cycle
