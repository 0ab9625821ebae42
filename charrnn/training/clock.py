"""The clock of one training invocation: the --max-time budget, the signals that stop a
run after its current step, and the terminal progress bar."""
from __future__ import annotations

import contextlib
import os
import signal
import time

from .. import console
from ..errors import trap


@contextlib.contextmanager
def signals_deferred():
    """Hold SIGINT and SIGTERM back (they stay pending) until the block ends; then the
    usual handlers run.  Only in the main thread, where signals are handled."""
    import threading

    sigs = {signal.SIGINT, signal.SIGTERM}
    if threading.current_thread() is not threading.main_thread() or \
            not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class Signals:
    """SIGINT/SIGTERM set a flag; the loop saves and stops after the current step."""

    def __init__(self):
        self.received: int | None = None
        self._old = {}

    def _handler(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt     # a second Ctrl-C: stop now
        self.received = signum

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                old = trap(s, self._handler)
            except ValueError:           # not the main thread (tests): no handlers
                continue
            if old is not None:
                self._old[s] = old
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


class Clock:
    """The --max-time budget of one invocation, counted from the first training step.

    The loop stops while there is still time for one more step, the final validation
    pass and the saves, each estimated from what it cost so far in this run (the first
    validation pass is timed on one window before the first step)."""

    # room for the machine to get slower between a measurement and the end of the run
    SAFETY = 1.5

    def __init__(self, max_time: float, val_chars: int, step_chars: int):
        # CHARRNN_TEST_TIME_SCALE=K divides the budget by K, so that the tests can run
        # the README's own cron line (--max-time 50m) night after night in seconds.
        max_time /= float(os.environ.get("CHARRNN_TEST_TIME_SCALE", "") or 1)
        self.max_time = max_time
        self.start = time.monotonic()
        self.deadline = self.start + max_time if max_time else None
        self.val_chars, self.step_chars = val_chars, step_chars
        self.step = 0.0                 # recent seconds per step (moving average)
        self.eval: float | None = None  # seconds of a validation pass (recent, pessimistic)
        self.save = 0.0                 # seconds of the slowest save so far

    def step_done(self, seconds: float) -> None:
        self.step = seconds if self.step == 0 else 0.8 * self.step + 0.2 * seconds

    def eval_done(self, seconds: float) -> None:
        self.eval = seconds if self.eval is None else max(seconds, 0.5 * self.eval)

    def save_done(self, seconds: float) -> None:
        self.save = max(self.save, seconds)

    def timed_save(self, save, *args) -> None:
        """``save(*args)``, counted among the saves the budget keeps room for."""
        t0 = time.monotonic()
        save(*args)
        self.save_done(time.monotonic() - t0)

    def _eval_estimate(self) -> float:
        if self.eval is not None:
            return self.eval
        if self.val_chars < 2 or self.step == 0:
            return 0.0
        return self.val_chars / self.step_chars * self.step

    def out_of_time(self) -> bool:
        if self.deadline is None:
            return False
        reserve = self.step + self._eval_estimate() + 3 * self.save       # best, latest, publish
        return time.monotonic() + self.SAFETY * reserve >= self.deadline

    def no_room_after_eval(self) -> bool:
        """Whether, after the evaluation about to start, there would be no time left
        for another step and the final evaluation: then this one is the final one."""
        if self.deadline is None:
            return False
        ev = self._eval_estimate()
        reserve = self.step + 2 * ev + 3 * self.save
        return time.monotonic() + self.SAFETY * reserve >= self.deadline

    def past_deadline(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline


class Bar:
    """The terminal progress bar of a training run: seconds of --max-time, or
    iterations (with a total when the run's length is known)."""

    def __init__(self, tq, by_time: bool):
        self.tq, self.by_time = tq, by_time

    def advance(self, iteration: int, clock: Clock) -> None:
        if self.by_time:
            n = min(self.tq.total, int(time.monotonic() - clock.start))
            if n > self.tq.n:
                self.tq.update(n - self.tq.n)
        else:
            self.tq.update(1)

    def postfix(self, text: str) -> None:
        self.tq.set_postfix_str(text, refresh=False)

    def write(self, line: str) -> None:
        console.log(line, bar=self.tq)

    def close(self) -> None:
        self.tq.close()


def progress_bar(tcfg, batches_per_epoch: int, iteration: int, clock: Clock) -> Bar | None:
    """A terminal bar: seconds of --max-time, else iterations out of the run's length
    when it is known (--max-iters, the epoch cap), else a plain counter; None when
    stderr is no terminal."""
    from ..model.schedule import total_iterations

    if tcfg.max_time:
        tq = console.progress(total=max(1, round(clock.max_time)), desc="train", unit="s")
    else:
        total = total_iterations(tcfg, batches_per_epoch)
        tq = console.progress(total=total, desc="train", unit="it",
                              initial=iteration if total else 0)
    return None if tq is None else Bar(tq, by_time=bool(tcfg.max_time))
