"""How many threads one stream's products get, chosen by timing (:class:`ThreadTuner`).

One stream of a wide model splits each product's rows between numba's threads
(``Product.THREADS``, every reduced precision): a parallel region per product, several
per character.  On an idle machine that is up to twice one thread's speed; when another
process holds a core, every region waits for a thread the system has put aside, and
measured 0.05-0.4x one thread's speed.  So the sampler runs its steps in pieces and
times them: pieces of :data:`PIECE` steps with the faster choice, and now and then a
short piece of :data:`PROBE` steps with the other, less often while it keeps losing.
Every product element is the same dot whichever thread computes it, and the
generation kernel continues exactly across calls, so the choice changes the speed
only, never a number.
"""
from __future__ import annotations

import time

#: steps of a piece run with the faster choice
PIECE = 64
#: steps of a piece that tries the other choice
PROBE = 8
#: the most pieces between two tries of the slower choice
MAX_WAIT = 128


class ThreadTuner:
    """Chooses between ``threads`` and 1 thread by the seconds per step each last took."""

    def __init__(self, threads: int):
        self.choices = (int(threads), 1)
        self.cost: dict[int, float] = {}        # threads -> seconds per step, last piece
        self.wait = 0                           # pieces before the slower one is tried
        self.backoff = 4

    def _next(self, left: int) -> tuple[int, int]:
        """(threads, steps) of the next piece."""
        for th in self.choices:
            if th not in self.cost:
                return th, min(left, PROBE)
        best = min(self.choices, key=lambda th: self.cost[th])
        if self.wait <= 0:
            self.wait = self.backoff
            self.backoff = min(2 * self.backoff, MAX_WAIT)
            return self.choices[1] if best == self.choices[0] else self.choices[0], \
                min(left, PROBE)
        self.wait -= 1
        return best, min(left, PIECE)

    def _record(self, threads: int, steps: int, seconds: float) -> None:
        before = min(self.cost, key=self.cost.get) if len(self.cost) == 2 else None
        self.cost[threads] = seconds / steps
        if before is not None and min(self.cost, key=self.cost.get) != before:
            self.backoff = 4                    # the other one won: try back soon

    def run(self, call, forced, targets, out_ids, out_lp) -> None:
        """``call(threads, forced, targets, n_forced_left, t0, out_ids, out_lp)`` over
        the steps of ``out_ids`` (1, S) in pieces; ``forced``/``targets`` (1, >= n)."""
        S = out_ids.shape[1]
        t = 0
        while t < S:
            th, k = self._next(S - t)
            t0 = time.perf_counter()
            call(th, forced[:, t:], targets[:, t:], t, out_ids[:, t:t + k],
                 out_lp[:, t:t + k])
            self._record(th, k, time.perf_counter() - t0)
            t += k


__all__ = ["MAX_WAIT", "PIECE", "PROBE", "ThreadTuner"]
